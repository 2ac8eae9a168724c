//! Pisa-Daemon, the node agent of Pisanix: turns QoS claims into eBPF tc
//! programs and maps that classify and shape database traffic.
//!
//! `kernel` is the only module that touches aya or netlink.

pub mod kernel;
pub mod plan;
pub mod reconcile;
pub mod spec;
