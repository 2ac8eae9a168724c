//! The previous release, built from git: what a node runs before it is
//! upgraded. The upgrade test starts it, lets it pin its state, and checks
//! that this build takes that state over without letting go of traffic.
//!
//! Built from the commit's own sources (`git archive`) into its own target
//! directory, once; later runs find the binary and skip the build.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::shell::workspace;

/// The last release that landed before selectors (client and SQL
/// identity) changed the pinned layout's meaning.
pub const PREVIOUS_RELEASE: &str = "240d1e1d87669e126599d29d38a56bc62b59a095";

/// Where the tests look for it (`PISA_PREVIOUS_DAEMON` overrides).
pub fn binary() -> PathBuf {
    workspace().join("target/previous/pisa-daemon")
}

/// Builds the previous release's daemon unless it is there already.
pub fn build() -> Result<PathBuf> {
    let out = binary();
    let stamp = out.with_extension("commit");
    if out.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(PREVIOUS_RELEASE) {
        eprintln!("previous release: {} (built)", out.display());
        return Ok(out);
    }
    let base = workspace().join("target/previous");
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!(
        "previous release: building {PREVIOUS_RELEASE} in {}",
        src.display()
    );
    let archive = std::process::Command::new("git")
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .current_dir(workspace())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting git archive")?;
    let status = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(&src)
        .stdin(archive.stdout.context("git archive's output")?)
        .status()
        .context("starting tar")?;
    if !status.success() {
        bail!("unpacking {PREVIOUS_RELEASE} failed (is the clone's history complete?)");
    }
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--package", "pisa-daemon"])
        .env("CARGO_TARGET_DIR", base.join("build"))
        .current_dir(&src)
        .status()
        .context("starting cargo")?;
    if !status.success() {
        bail!("building the previous release failed: {status}");
    }
    std::fs::copy(base.join("build/release/pisa-daemon"), &out)
        .with_context(|| format!("copying to {}", out.display()))?;
    std::fs::write(&stamp, PREVIOUS_RELEASE)?;
    eprintln!("previous release: {}", out.display());
    Ok(out)
}
