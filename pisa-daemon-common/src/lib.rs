//! Types shared by the kernel program (`pisa-daemon-ebpf`) and the node agent
//! (`pisa-daemon`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, so that the
//! layout is the same on both sides and BTF describes every byte. The layouts
//! are asserted at compile time at the bottom of each module: a change that
//! moves a field breaks the build instead of silently corrupting a pinned map.
#![no_std]

pub mod htb_tree;
pub mod maps;
pub mod names;
pub mod pacing;

pub use maps::*;
