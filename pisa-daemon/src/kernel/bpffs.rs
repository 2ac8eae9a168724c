//! The pinned layout under the bpffs root. Paths are named so an operator
//! can guess them from `bpftool` output alone:
//!
//! ```text
//! <root>/programs/pisa_tc_egress      the classifier
//! <root>/maps/<MAP_NAME>              every map, by its kernel name
//! <root>/programs/pisa_tc_ingress     the ingress observer (SQL identity)
//! <root>/links/<iface>-egress         one TCX link per interface and hook
//! <root>/links/<iface>-ingress
//! ```

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::KernelError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

/// Default root, as in the design: `/sys/fs/bpf/pisa`.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/pisa";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn programs_dir(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.programs_dir().join(name)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("{iface}-egress"))
    }

    /// The ingress observer's link (SQL identity); pinned beside the egress one.
    pub fn ingress_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("{iface}-ingress"))
    }

    /// Interface names that have a pinned egress link, from the file names.
    pub fn pinned_egress_links(&self) -> Result<Vec<String>, KernelError> {
        let dir = self.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io("reading", dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| KernelError::io("reading", &dir, e))?;
            if let Some(iface) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix("-egress"))
            {
                names.push(iface.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Checks the root is (or would be created) on bpffs, then creates the
    /// directories. Refusing early avoids pinning into tmpfs, where pins
    /// silently fail to survive and restarts would detach traffic shaping.
    pub fn prepare(&self) -> Result<(), KernelError> {
        ensure_bpffs(&self.root)?;
        for dir in [self.programs_dir(), self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| KernelError::io("creating", &dir, e))?;
        }
        Ok(())
    }
}

/// Errors unless `path` (or, when it does not exist yet, its closest existing
/// ancestor) lives on a bpf filesystem.
pub fn ensure_bpffs(path: &Path) -> Result<(), KernelError> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let magic = fs_magic(probe)?;
    if magic != BPF_FS_MAGIC {
        return Err(KernelError::NotBpffs {
            path: path.to_path_buf(),
            magic,
        });
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Result<i64, KernelError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        KernelError::io(
            "checking filesystem of",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"),
        )
    })?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-parameter.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(KernelError::io(
            "checking filesystem of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(stat.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths_are_guessable_from_names() {
        let layout = PinLayout::new("/sys/fs/bpf/pisa");
        assert_eq!(
            layout.map("CLASS_STATS"),
            PathBuf::from("/sys/fs/bpf/pisa/maps/CLASS_STATS")
        );
        assert_eq!(
            layout.egress_link("eth0"),
            PathBuf::from("/sys/fs/bpf/pisa/links/eth0-egress")
        );
        assert_eq!(
            layout.program("pisa_tc_egress"),
            PathBuf::from("/sys/fs/bpf/pisa/programs/pisa_tc_egress")
        );
    }

    #[test]
    fn ensure_bpffs_rejects_tmp_with_actionable_message() {
        let err = ensure_bpffs(Path::new("/tmp/not-bpffs/pisa")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/tmp/not-bpffs/pisa"), "{msg}");
        assert!(msg.contains("mount -t bpf bpf /sys/fs/bpf"), "{msg}");
    }
}
