//! Kernel feature probes. Each answers from what the running kernel
//! exposes, without changing any interface.

use std::path::Path;

use super::{AttachMode, Features};

pub fn probe() -> Features {
    Features {
        tcx: AttachMode::probe() == AttachMode::Tcx,
        sch_fq: qdisc_available("sch_fq"),
        fq_codel: qdisc_available("sch_fq_codel"),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
    }
}

/// A qdisc module (`sch_fq`, `sch_fq_codel`) is usable when it is loaded,
/// built in, or installed as a module the kernel can load on demand
/// (qdisc creation autoloads `sch_<kind>`).
fn qdisc_available(module: &str) -> bool {
    let loaded = std::fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.starts_with(&format!("{module} "))))
        .unwrap_or(false);
    if loaded || Path::new("/sys/module").join(module).exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let modules = Path::new("/lib/modules").join(release.trim());
    let builtin = std::fs::read_to_string(modules.join("modules.builtin"))
        .map(|b| b.lines().any(|l| l.ends_with(&format!("/{module}.ko"))))
        .unwrap_or(false);
    let module = ["", ".xz", ".zst", ".gz"].iter().any(|ext| {
        modules
            .join(format!("kernel/net/sched/{module}.ko{ext}"))
            .exists()
    });
    builtin || module
}
