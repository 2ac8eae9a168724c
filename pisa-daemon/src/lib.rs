//! Pisa-Daemon, the node agent of Pisanix: turns QoS claims into eBPF tc
//! programs and maps that classify and shape database traffic.
//!
//! `kernel` is the only module that touches aya or netlink.

// Errors here carry their context (claim, field, value, interface) by
// value and only travel on cold paths; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

pub mod api;
#[cfg(test)]
mod architecture;
pub mod daemon;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod source;
pub mod spec;
pub mod state;
pub mod tags;
