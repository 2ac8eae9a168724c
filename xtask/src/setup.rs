//! `cargo xtask setup`: the recipe of `../shared/TOOLCHAIN.md`, idempotent.
//! Each step checks first and does nothing when the machine is already right.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::shell::{capture, cmd, is_root, output};

/// Debian packages the build, the tests and the demo need.
pub const PACKAGES: &[&str] = &[
    // eBPF toolchain: rustc 1.96 with LLVM 22 and std sources for build-std.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Kernel tools the tests use to check the daemon from outside.
    "bpftool",
    "iproute2",
    "iperf3",
    "procps",
    "iputils-ping",
    "util-linux",
    // promtool checks the live /metrics; Prometheus itself scrapes in tests.
    "prometheus",
    "curl",
    // Real databases for the protection test and `bench db`: PostgreSQL
    // (pgbench, psql), MariaDB and sysbench.
    "postgresql",
    "mariadb-server",
    "sysbench",
    // A certificate for the PostgreSQL server of the TLS identity test.
    "openssl",
    // The kernel matrix: QEMU (TCG) boots Debian's 6.1 and 6.12 kernels with
    // a busybox initramfs; kmod and xz-utils read their modules.
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    // A Python any user can run, for the third-party clients in tests/
    // (pyenv's Python lives under /root, which other users cannot enter).
    "python3",
    "python3-venv",
];

/// Where the tests' Python environment lives (world-readable).
pub const TEST_VENV: &str = "/opt/pisa-test-venv";

/// PyPI packages of the test clients, pinned so that every machine runs
/// the same generated stubs and validators.
pub const PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.76.0",
    "grpcio-tools==1.76.0",
    "grpcio-reflection==1.76.0",
    "kubernetes-validate==1.33.1",
    "jsonschema==4.26.0",
    "PyYAML==6.0.3",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run_setup_steps() -> Result<()> {
    if !is_root() {
        bail!("setup installs Debian packages and mounts bpffs: run it as root");
    }
    apt_packages(PACKAGES)?;
    test_venv()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

pub fn run() -> Result<()> {
    run_setup_steps()?;
    eprintln!("setup: done");
    Ok(())
}

fn installed(package: &str) -> bool {
    capture("dpkg-query", &["-W", "-f=${Status}", package])
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    let status = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", missing.join(" "));
    }
    Ok(())
}

/// The tests' Python environment, built with Debian's python3 so that a
/// non-root user can run it too (the socket-permission test needs that).
fn test_venv() -> Result<()> {
    let python = format!("{TEST_VENV}/bin/python3");
    let check = capture(
        &python,
        &["-m", "pip", "freeze", "--disable-pip-version-check"],
    )
    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    .unwrap_or_default();
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .copied()
        .filter(|p| !check.lines().any(|l| l.eq_ignore_ascii_case(p)))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: {TEST_VENV} has {}", PYTHON_PACKAGES.join(" "));
        return Ok(());
    }
    if !Path::new(&python).exists() {
        cmd("/usr/bin/python3", &["-m", "venv", TEST_VENV])?;
    }
    eprintln!("setup: installing {} into {TEST_VENV}", missing.join(" "));
    let mut args = vec!["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    args.extend(PYTHON_PACKAGES.iter().copied());
    cmd(&python, &args)
}

fn cargo_bin(tool: &str) -> String {
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    format!("{home}/bin/{tool}")
}

fn bpf_linker() -> Result<()> {
    let linker = cargo_bin("bpf-linker");
    let current = capture(&linker, &["--version"])
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    if current == format!("bpf-linker {BPF_LINKER_VERSION}") {
        eprintln!("setup: {current} present");
        return Ok(());
    }
    // Without --locked, as in TOOLCHAIN.md: the resolver then picks
    // dependency versions that fit this machine's rustc.
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (2-4 minutes)");
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("PATH", path)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        line.split_whitespace().nth(1) == Some("/sys/fs/bpf") && line.contains(" bpf ")
    });
    if mounted {
        eprintln!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    }
    cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

/// Builds the daemon in release mode; its build script builds the eBPF
/// object with Debian's rustc and embeds it.
pub fn build_release() -> Result<()> {
    cmd("cargo", &["build", "--release", "--package", "pisa-daemon"])?;
    let object = output(
        "find",
        &[
            "target/bpf/bpfel-unknown-none/release",
            "-maxdepth",
            "1",
            "-name",
            "pisa-daemon-ebpf",
        ],
    )?;
    eprintln!(
        "built target/release/pisa-daemon (embeds {})",
        object.trim()
    );
    Ok(())
}
