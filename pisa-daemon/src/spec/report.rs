//! `QoSNodeReport`: what one node made of every claim, written only by that
//! node's daemon and read only by the elected status aggregator. Keeping
//! each node's view in its own small object is what lets the claim's
//! status stay the same size on 10 nodes and on 5,000, and keeps a node's
//! writes off every other node's watch.
//!
//! The report is observed state, yet it lives in `spec` with no status
//! subresource, like a `Lease`: it has exactly one writer and no desired
//! state to separate from, and one server-side apply creates or updates it
//! in a single request.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::NodePhase;

/// One node's report of the claims it holds (`QoSNodeReport`, named after
/// the node, in the daemon's namespace, owned by its Node so the report of
/// a deleted node goes with it).
// clippy reads each `printcolumn(type_ = …)` as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, CustomResource, JsonSchema)]
#[kube(
    group = "core.database-mesh.io",
    version = "v1alpha1",
    kind = "QoSNodeReport",
    root = "QoSNodeReportResource",
    plural = "qosnodereports",
    namespaced,
    shortname = "qnr",
    category = "pisanix",
    doc = "QoSNodeReport: what one node's Pisa-Daemon made of every QoSClaim.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Claims",
        type_ = "integer",
        description = "Claims the node holds",
        json_path = ".spec.counts.claims"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        description = "Claims the node rejected",
        json_path = ".spec.counts.failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QoSNodeReportSpec {
    /// The node (`spec.nodeName` of the daemon's pod).
    pub node: String,
    /// How many claims the node holds, and how many it rejected.
    pub counts: ReportCounts,
    /// One entry per claim the node holds, sorted by claim.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["claim"]))]
    pub claims: Vec<ReportedClaim>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ReportCounts {
    pub claims: u32,
    pub failed: u32,
}

/// What the node made of one claim. Kept small (about 60 bytes): the
/// message is sent only when the claim is not applied.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportedClaim {
    /// `namespace/name`.
    pub claim: String,
    /// The claim's metadata.generation this entry describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Applied, Invalid or Pending.
    pub phase: NodePhase,
    /// Why, when not Applied: every validation error, or what is awaited.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
