//! The node-local gRPC API (`proto/pisa/v1/pisa.proto`): flow tags for the
//! SQL proxy, classes and counters for tools. The service is thin: it
//! converts messages and calls the agent; the rules live in `tags`
//! and `spec`.

pub mod client;
pub mod convert;
pub mod server;
pub mod service;

/// Generated from `proto/pisa/v1/pisa.proto` by `build.rs`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("pisa.v1");

    /// The encoded descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pisa_v1_descriptor.bin"));
}

/// Default Unix socket of the API.
pub const DEFAULT_SOCKET: &str = "/run/pisa/pisa.sock";
