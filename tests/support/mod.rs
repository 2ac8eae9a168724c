//! Shared fixtures for the root integration tests, one job per module:
//!
//! - `host`: root and tool checks, unique names, commands, temp dirs;
//! - `net`: network namespaces, veths and the routed two-namespace topology;
//! - `process`: child processes killed on drop, their stderr kept;
//! - `wait`: the one way to wait for a condition (deadline + what it waited for);
//! - `traffic`: iperf3 and the kernel's own byte counters;
//! - `daemon`: the daemon binary, its bpffs root, its API socket, bpftool;
//! - `db`: PostgreSQL in a namespace behind a shared link, pgbench and bulk COPY;
//! - `packet`: crafted packets for BPF_PROG_TEST_RUN.
//!
//! Every namespace, veth, pin and child is removed by an RAII guard even when
//! the test panics. A missing tool or missing root is a test failure, never a
//! skip. Tests check the daemon from the outside with `ip`, `tc`, `bpftool`
//! and `iperf3`, as an operator would.

pub mod daemon;
pub mod db;
pub mod host;
pub mod net;
pub mod packet;
pub mod process;
pub mod traffic;
pub mod wait;

pub use daemon::*;
pub use host::*;
pub use net::*;
pub use process::*;
pub use traffic::*;
pub use wait::*;
