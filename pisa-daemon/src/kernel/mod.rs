//! The only module that touches aya and netlink: loading the embedded eBPF
//! object, pinning, attaching to interfaces, reading and writing maps.

mod apply;
mod attach;
mod batch;
pub mod bpffs;
pub mod caps;
mod clients;
mod dataplane;
mod error;
#[cfg(test)]
mod fake;
pub mod features;
pub mod htb;
mod htb_groups;
pub mod iface;
pub mod kernel_log;
mod loader;
mod maps;
mod netlink;
pub mod pinned;
mod qdisc;
mod resize;
pub mod route;
pub mod sql_events;
mod tags;
mod tc_filters;

pub use attach::{AttachMode, Attachment};
pub use bpffs::PinLayout;
pub use dataplane::{Dataplane, Features, FlowTagWrite};
#[cfg(test)]
pub use fake::FakeDataplane;
// The shared vocabulary, re-exported where kernel code and its tests expect it.
pub use crate::model::{
    default_burst, ClassSpec, ClientPrefix, LinkRate, LinkRateSource, LinkRates, Protocol,
    RuleMatch, RuleTarget, ShapingMode, Side,
};
pub use error::KernelError;
pub use loader::Kernel;

/// The eBPF object, built by `build.rs` from `pisa-daemon-ebpf` and embedded
/// so the binary is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PISA_EBPF_OBJECT"));
