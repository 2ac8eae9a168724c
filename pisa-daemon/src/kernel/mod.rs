//! The only module that touches aya and netlink: loading the embedded eBPF
//! object, pinning, attaching to interfaces, reading and writing maps.

mod attach;
pub mod bpffs;
pub mod caps;
mod error;
pub mod iface;
mod loader;
pub mod pinned;

pub use attach::{AttachMode, Attachment};
pub use bpffs::PinLayout;
pub use error::KernelError;
pub use loader::Kernel;

/// The eBPF object, built by `build.rs` from `pisa-daemon-ebpf` and embedded
/// so the binary is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PISA_EBPF_OBJECT"));
