//! `pisa-daemon tag` / `untag`: what the SQL proxy does, from a shell.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use clap::ValueEnum;
use pisa_daemon::api::{
    client::{connect, ApiTarget},
    pb,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FlowProtocol {
    Tcp,
    Udp,
}

/// The connection, as its client side sees it.
#[derive(Debug, clap::Args)]
pub struct FlowArgs {
    /// Client end, IP:PORT (IPv6 as [ADDR]:PORT).
    #[arg(long, value_name = "IP:PORT")]
    src: SocketAddr,
    /// Server (database) end, IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    dst: SocketAddr,
    #[arg(long, value_enum, default_value_t = FlowProtocol::Tcp)]
    protocol: FlowProtocol,
}

impl FlowArgs {
    fn tuple(&self) -> pb::FlowTuple {
        pb::FlowTuple {
            src_ip: self.src.ip().to_string(),
            src_port: self.src.port().into(),
            dst_ip: self.dst.ip().to_string(),
            dst_port: self.dst.port().into(),
            protocol: match self.protocol {
                FlowProtocol::Tcp => pb::Protocol::Tcp,
                FlowProtocol::Udp => pb::Protocol::Udp,
            } as i32,
        }
    }
}

/// A gRPC error as the CLI reports it: the code, then the daemon's message.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn tag(
    target: &ApiTarget,
    flow: &FlowArgs,
    claim: Option<String>,
    class: Option<u32>,
    ttl: u32,
) -> Result<bool> {
    let target_class = match (claim, class) {
        (Some(claim), _) => {
            let (namespace, name) = claim.split_once('/').ok_or_else(|| {
                anyhow!("--claim `{claim}`: give NAMESPACE/NAME, e.g. shop/catalogue")
            })?;
            pb::tag_flow_request::Target::Claim(pb::ClaimRef {
                namespace: namespace.into(),
                name: name.into(),
            })
        }
        (None, Some(id)) => pb::tag_flow_request::Target::ClassId(id),
        (None, None) => return Err(anyhow!("give --claim NS/NAME or --class ID")),
    };
    let mut client = connect(target).await?;
    let response = client
        .tag_flow(pb::TagFlowRequest {
            flow: Some(flow.tuple()),
            target: Some(target_class),
            ttl_seconds: ttl,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "tagged {:?} {} -> {} with class {} for {ttl}s (generation {})",
        flow.protocol, flow.src, flow.dst, response.class_id, response.generation
    );
    Ok(true)
}

pub async fn untag(target: &ApiTarget, flow: &FlowArgs) -> Result<bool> {
    let mut client = connect(target).await?;
    let response = client
        .untag_flow(pb::UntagFlowRequest {
            flow: Some(flow.tuple()),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if response.removed {
        println!("untagged {:?} {} -> {}", flow.protocol, flow.src, flow.dst);
    } else {
        println!(
            "{:?} {} -> {} had no tag",
            flow.protocol, flow.src, flow.dst
        );
    }
    Ok(response.removed)
}
