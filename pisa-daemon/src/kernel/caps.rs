//! Capability preflight: a missing capability is reported by name before
//! any syscall fails with a bare EPERM.

use super::KernelError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from `/proc/self/status`.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn missing_from(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Errors with the names of the capabilities that loading and attaching need.
pub fn ensure_capabilities() -> Result<(), KernelError> {
    // If /proc is unreadable, let the syscalls speak for themselves.
    let Some(caps) = effective_caps() else {
        return Ok(());
    };
    let missing = missing_from(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KernelError::MissingCapabilities { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_caps_are_named() {
        assert_eq!(missing_from(0), vec!["CAP_BPF", "CAP_NET_ADMIN"]);
        assert_eq!(missing_from(1 << CAP_NET_ADMIN), vec!["CAP_BPF"]);
        assert!(missing_from((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)).is_empty());
        assert!(missing_from((1 << CAP_NET_ADMIN) | (1 << CAP_BPF)).is_empty());
    }
}
