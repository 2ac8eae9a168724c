//! Debian kernel packages for the test matrix: downloaded and unpacked
//! into `target/vm/kernels`, never installed on the host.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::shell::{capture, output, workspace};

/// A kernel of the matrix, by the name `cargo xtask test --kernel` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Debian 12's own kernel: no TCX, so the daemon attaches with netlink
    /// (clsact + cls_bpf); sch_fq and fq_codel as modules.
    V6_1,
    /// Debian 12's 6.12 from bookworm-security: TCX, and sch_fq to enforce
    /// EDT departure times.
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// The meta-package that names the newest image of the series. The
    /// versioned package moves with security updates, so it is resolved
    /// from this on every run.
    fn meta_package(self) -> &'static str {
        // The cloud flavour: a third of the generic one's size, and it
        // boots faster; it has virtiofs (not 9p) to share the host root.
        match self {
            Series::V6_1 => "linux-image-cloud-amd64",
            Series::V6_12 => "linux-image-6.12-cloud-amd64",
        }
    }

    pub fn parse(name: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// An unpacked kernel package: `boot/vmlinuz-<version>` and its modules.
pub struct Kernel {
    pub root: PathBuf,
    pub version: String,
}

impl Kernel {
    pub fn image(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

pub fn cache_dir() -> PathBuf {
    workspace().join("target/vm")
}

/// Downloads (once per version) and unpacks the series' kernel.
pub fn fetch(series: Series) -> Result<Kernel> {
    let meta = series.meta_package();
    let depends = output("apt-cache", &["depends", meta]).with_context(|| {
        format!("resolving {meta}: is the Debian bookworm-security archive in apt's sources?")
    })?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|dep| {
            dep.starts_with("linux-image-")
                && dep.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .with_context(|| format!("{meta} depends on no versioned linux-image package:\n{depends}"))?
        .to_owned();
    let version = package["linux-image-".len()..].to_owned();
    let root = cache_dir().join("kernels").join(&package);
    let done = root.join(".unpacked");
    if !done.exists() {
        unpack(&package, &version, &root)?;
        std::fs::write(&done, b"").context("marking the kernel unpacked")?;
    }
    let kernel = Kernel { root, version };
    if !kernel.image().exists() {
        bail!("{package} has no {}", kernel.image().display());
    }
    Ok(kernel)
}

fn unpack(package: &str, version: &str, root: &Path) -> Result<()> {
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    std::fs::create_dir_all(root)?;
    eprintln!("kernels: downloading {package}");
    let download = std::process::Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(&debs)
        .output()
        .context("running apt-get download")?;
    if !download.status.success() {
        bail!(
            "apt-get download {package} failed: {}",
            String::from_utf8_lossy(&download.stderr)
        );
    }
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let unpacked = capture("dpkg", &["-x", &path_str(&deb)?, &path_str(root)?])?;
    if !unpacked.status.success() {
        bail!(
            "dpkg -x {}: {}",
            deb.display(),
            String::from_utf8_lossy(&unpacked.stderr)
        );
    }
    // Debian's image packages ship no modules.dep; modprobe needs it.
    output("depmod", &["-b", &path_str(root)?, version])?;
    Ok(())
}

pub fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
