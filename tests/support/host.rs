//! The test host: root and tool checks, unique names, running commands.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, netns); run `cargo xtask test` as root"
    );
}

/// Fails loudly when an external tool is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).exists());
    assert!(found, "`{tool}` is not installed; run `cargo xtask setup`");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (IFNAMSIZ - 1)
/// for prefixes of up to 7: the pid and the call number are written in base
/// 36, so a whole suite in one process (hundreds of calls) still fits.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{prefix}{}x{}",
        base36(std::process::id() % 1_679_616), // 36^4
        base36(n)
    );
    assert!(name.len() <= 15, "name {name} too long");
    name
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A /24 subnet octet unique to this process and call, so parallel test
/// binaries never share addresses.
pub fn unique_octet() -> u8 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (((std::process::id() + n * 7) % 200) + 20) as u8
}

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting `{program}`: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (for teardown).
pub fn sh_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads a number from a sysfs/procfs file.
pub fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
