//! The root integration suite, one test binary: the real daemon, the real
//! kernel, real traffic and real tools checking from the outside.
//!
//! One binary rather than one per file: one link on a 2-core machine
//! instead of nine, one place for the shared fixtures (`support`), and one
//! process that `cargo xtask test --repeat N` reruns to find flakiness.
//! Tests run one at a time (`--test-threads=1`): they share the host's
//! routing, iperf3 ports and CPU, and timing figures need a quiet machine.

mod support;

mod agent;
mod api;
mod attach;
mod cli;
mod db;
mod identity;
mod kube;
mod manifests;
mod observability;
mod program;
mod shaping;
mod status_election;
