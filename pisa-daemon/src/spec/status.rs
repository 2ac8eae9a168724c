//! What nodes made of claims: the agent's `ClaimStatus` (rendered by every
//! report), the claim's aggregate status (`QoSClaimStatus`, written by the
//! elected aggregator) and the deprecated per-node entries it replaces.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ClaimKey;

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
    /// The key itself (its names shared), written as `namespace/name`.
    #[serde(serialize_with = "as_text")]
    pub claim: ClaimKey,
    pub phase: Phase,
    pub message: String,
    pub class_id: Option<u32>,
    pub observed_generation: Option<i64>,
    pub mode: Option<&'static str>,
    pub rate_bytes: Option<u64>,
    pub ceil_bytes: Option<u64>,
    pub priority: Option<&'static str>,
    /// Client prefixes in force for the claim on this node.
    pub client_prefixes: usize,
}

/// What the nodes made of the claim: counts over the nodes' reports,
/// written by the one elected aggregator (`QoSNodeReport`s hold each
/// node's view), so the object does not grow with the cluster.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QoSClaimStatus {
    /// The claim's metadata.generation the counts describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes that enforce this generation of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_applied: Option<u32>,
    /// Nodes that rejected it (their report's message says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_failed: Option<u32>,
    /// Nodes that accepted it but do not enforce it yet, or still report an
    /// older generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_pending: Option<u32>,
    /// Nodes whose report names the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_reporting: Option<u32>,
    /// `Ready` (every reporting node enforces this generation) and
    /// `Degraded` (some node rejected it; the message names up to five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<ClaimCondition>,
    /// Deprecated: one entry per node, written by releases before the
    /// per-node reports. No longer written; the aggregator clears it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

/// A condition of the claim, shaped like metav1.Condition.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// `Ready` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word: why the status is what it is.
    pub reason: String,
    /// Details for people: counts, and the failing nodes.
    #[serde(default)]
    pub message: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// One node's view of the claim (deprecated: see `QoSNodeReport`).
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
    /// The kernel class (the HTB leaf <group>:<id in hex>; the `class` metric label).
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

fn as_text<S: serde::Serializer>(key: &ClaimKey, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(key)
}
