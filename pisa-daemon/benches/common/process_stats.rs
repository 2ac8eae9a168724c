//! What the benches read of a running daemon (the integration tests
//! need none of it, so it lives here, not in `tests/support`).

use crate::support::ChildGuard;

/// The child's pid (0 once it was reaped).
pub fn pid_of(guard: &ChildGuard) -> u32 {
    guard
        .child
        .as_ref()
        .map(std::process::Child::id)
        .unwrap_or(0)
}

/// Resident memory of the child, KiB (`VmRSS`).
pub fn rss_kib(guard: &ChildGuard) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", pid_of(guard)))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
