//! `cargo xtask test`: the whole suite, in the order that fails fastest.

use anyhow::{bail, Result};

use crate::{
    setup,
    shell::{cmd, is_root},
};

pub fn run(filter: Option<&str>, no_setup: bool) -> Result<()> {
    if !is_root() {
        // The integration tests attach programs and build namespaces; they
        // must not be silently skipped, so refuse up front.
        bail!("the test suite needs root (CAP_BPF, CAP_NET_ADMIN, netns): run it as root");
    }
    if !no_setup {
        setup::run_setup_steps()?;
    }
    cmd("cargo", &["fmt", "--all", "--check"])?;
    cmd(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "pisa-daemon-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cmd(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "pisa-daemon-ebpf",
            "--lib",
            "--bins",
        ],
    )?;
    let mut args = vec![
        "test",
        "--package",
        "pisa-daemon",
        "--test",
        "*",
        "--",
        "--test-threads=1",
    ];
    if let Some(filter) = filter {
        args.push(filter);
    }
    cmd("cargo", &args)?;
    eprintln!("xtask test: all passed");
    Ok(())
}
