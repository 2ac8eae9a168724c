//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+), which
//! aya does not wrap: one syscall for many entries of a hash map. A proxy
//! tagging thousands of connections, or a sweep of a million expired
//! tags, would otherwise pay a syscall per map entry (about a third of the
//! daemon's time when the table fills, measured with perf).

use std::os::fd::RawFd;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a batch call did: how many entries it processed before `error`.
#[derive(Debug)]
pub(super) struct BatchOutcome {
    pub(super) done: usize,
    pub(super) error: Option<std::io::Error>,
}

/// Writes `keys[i] -> values[i]` for every i, in order, stopping at the
/// first failure. `K` and `V` must be the map's key and value layouts.
pub(super) fn update<K: Copy, V: Copy>(fd: RawFd, keys: &[K], values: &[V]) -> BatchOutcome {
    debug_assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    call(BPF_MAP_UPDATE_BATCH, &mut attr, keys.len())
}

/// Deletes `keys` in order, stopping at the first failure (a missing key
/// fails with `ENOENT`; the caller skips it and goes on).
pub(super) fn delete<K: Copy>(fd: RawFd, keys: &[K]) -> BatchOutcome {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    call(BPF_MAP_DELETE_BATCH, &mut attr, keys.len())
}

fn call(command: libc::c_long, attr: &mut BatchAttr, len: usize) -> BatchOutcome {
    if len == 0 {
        return BatchOutcome {
            done: 0,
            error: None,
        };
    }
    // SAFETY: `attr` points at `len` keys (and values) that outlive the
    // call; the kernel reads them and writes only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        BatchOutcome {
            done: len,
            error: None,
        }
    } else {
        BatchOutcome {
            done: (attr.count as usize).min(len),
            error: Some(std::io::Error::last_os_error()),
        }
    }
}

/// Whether a batch error says the kernel has no batch operations for this
/// map (before 5.6): the caller falls back to one entry at a time.
pub(super) fn unsupported(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::ENOSYS)
    )
}
