//! `QoSClaim.status`: one entry per node. Each node's daemon writes only its
//! own entry, with server-side apply under its own field manager, so nodes
//! never overwrite each other (the list is a map keyed by `node`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What this node made of a claim: the agent decides it, every report
/// (Kubernetes status, state file, API, logs) renders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// In force in the kernel.
    Applied,
    /// Rejected; the message says why (a last good state may still apply).
    Invalid,
    /// Accepted but not (yet) in force: no endpoints, or the kernel refused.
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimStatus {
    pub claim: String,
    pub phase: Phase,
    pub message: String,
    pub class_id: Option<u32>,
    pub observed_generation: Option<i64>,
    pub mode: Option<String>,
    pub rate_bytes: Option<u64>,
    pub ceil_bytes: Option<u64>,
    pub priority: Option<String>,
    /// Client prefixes in force for the claim on this node.
    pub client_prefixes: usize,
}

/// What the nodes made of the claim, written by each node's Pisa-Daemon.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct QoSClaimStatus {
    /// What each node made of the claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

/// One node's view of the claim.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node (`spec.nodeName` of the daemon's pod).
    pub node: String,
    /// Applied (in force in the kernel), Invalid (rejected; a last good
    /// version may still be in force, see message) or Pending (accepted but
    /// not in force: no endpoints yet, or the kernel update is retried).
    pub phase: NodePhase,
    /// Why: every validation error (field, value, reason), or what is in force.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The claim's metadata.generation this entry describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The kernel class (HTB class 5150:<id in hex>; the `class` metric label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_id: Option<u32>,
    /// When `phase` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Applied, Invalid or Pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum NodePhase {
    Applied,
    Invalid,
    Pending,
}

impl From<Phase> for NodePhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Applied => Self::Applied,
            Phase::Invalid => Self::Invalid,
            Phase::Pending => Self::Pending,
        }
    }
}
