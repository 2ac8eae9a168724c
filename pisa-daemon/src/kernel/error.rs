//! Errors of the kernel module. Each says what went wrong *and what to do*,
//! because the person reading it is an operator on a node, not a developer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "interface `{iface}` does not exist in this network namespace; \
         check the name with `ip link show` (pod veths appear when the pod starts)"
    )]
    InterfaceNotFound { iface: String },

    #[error(
        "interface name `{iface}` is invalid: {reason}; \
         valid names are 1-15 bytes without '/', whitespace or NUL"
    )]
    InvalidInterfaceName { iface: String, reason: &'static str },

    #[error(
        "bpffs root `{path}` is not on a bpf filesystem (found filesystem magic {magic:#x}); \
         mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --bpffs a directory under a bpffs mount"
    )]
    NotBpffs { path: PathBuf, magic: i64 },

    #[error(
        "missing capabilities {missing:?}: loading and attaching tc programs needs \
         CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8) and CAP_NET_ADMIN; \
         run as root or grant them (the DaemonSet adds BPF, NET_ADMIN, PERFMON)"
    )]
    MissingCapabilities { missing: Vec<&'static str> },

    #[error(
        "interface `{iface}` already has `{name}` (program id {prog_id}) attached, \
         and it was not made by this daemon's bpffs root `{root}`; another Pisa-Daemon (or another \
         --bpffs root) owns it: run `pisa-daemon cleanup --bpffs <its root>`, or detach it with \
         `{detach}`"
    )]
    ForeignProgram {
        iface: String,
        name: String,
        prog_id: u32,
        root: PathBuf,
        /// The command that detaches it by hand (TCX link or tc filter).
        detach: String,
    },

    #[error(
        "interface `{iface}` has a root qdisc `{kind}` (handle {handle:#x}) that Pisa-Daemon did \
         not create; refusing to replace it. Remove it (`tc qdisc del dev {iface} root`) or leave \
         this interface to its owner"
    )]
    ForeignQdisc {
        iface: String,
        kind: String,
        handle: u32,
    },

    #[error(
        "class {class_id} uses mode `edt`, which needs the sch_fq qdisc, and this kernel has none \
         (CONFIG_NET_SCH_FQ); use mode `htb` or `police` on this node"
    )]
    EdtNeedsFq { class_id: u32 },

    #[error(
        "class {class_id} uses mode `{mode}` but interface `{iface}` already paces with `{other}`; \
         one interface holds either an HTB tree or sch_fq at its root, not both"
    )]
    ModeConflict {
        class_id: u32,
        mode: &'static str,
        other: &'static str,
        iface: String,
    },

    #[error("interface `{iface}`: {action} failed: {source}")]
    Netlink {
        iface: String,
        action: &'static str,
        #[source]
        source: super::netlink::NetlinkError,
    },

    #[error("loading the embedded eBPF object failed: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },

    #[error("program `{program}`: {action} failed: {source}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("attaching `pisa_tc_egress` at egress of `{iface}` failed: {source}")]
    Attach {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("the eBPF object has no program `{program}` (the embedded object is inconsistent with this binary)")]
    ProgramMissing { program: &'static str },

    #[error(
        "the eBPF object has no map `{map}` (the embedded object is inconsistent with this binary)"
    )]
    MapMissing { map: &'static str },

    #[error("map `{map}`: {action} failed: {source}")]
    Map {
        map: &'static str,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    #[error(
        "the kernel's flow-tag table is full ({capacity} connection directions); \
         untag connections or wait for tags to expire"
    )]
    FlowTagsFull { capacity: u32 },

    #[error("pinning `{path}` failed: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },

    #[error("link for interface `{iface}`: {action} failed: {source}")]
    Link {
        iface: String,
        action: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },

    #[error("{action} `{path}` failed: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
