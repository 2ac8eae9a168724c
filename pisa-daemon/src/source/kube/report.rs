//! This node's `QoSNodeReport`: what it made of every claim, applied with
//! one server-side apply whenever that changes. The report is owned by the
//! node's `Node` object, so the garbage collector removes the report of a
//! deleted node and no heartbeat writes are needed.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    api::{Api, Patch, PatchParams},
    Client,
};
use serde::Serialize;

use crate::spec::{
    ClaimKey, ClaimStatus, Phase, QoSNodeReportSpec, ReportCounts, ReportedClaim, API_VERSION,
};

/// The one field manager of reports: each report has a single writer.
pub const REPORT_FIELD_MANAGER: &str = "pisa-daemon";
pub const REPORT_KIND: &str = "QoSNodeReport";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("writing the QoSNodeReport {namespace}/{node}: {source}")]
    Report {
        namespace: String,
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// A server-side-apply body of a report: the CRD's own spec type, so the
/// body cannot drift from the schema the API server checks it against.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportApply {
    api_version: &'static str,
    kind: &'static str,
    metadata: ReportMeta,
    spec: QoSNodeReportSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportMeta {
    name: String,
    namespace: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    owner_references: Vec<OwnerReference>,
}

/// The report of `node` for these statuses: one entry per claim, sorted,
/// with a message only where the claim is not applied (an applied claim's
/// message is the same on every node and would only add bytes).
pub fn node_report(node: &str, statuses: &BTreeMap<ClaimKey, ClaimStatus>) -> QoSNodeReportSpec {
    let claims: Vec<ReportedClaim> = statuses
        .iter()
        .map(|(key, status)| ReportedClaim {
            claim: key.to_string(),
            generation: status.observed_generation,
            phase: status.phase.into(),
            message: match status.phase {
                Phase::Applied => String::new(),
                Phase::Invalid | Phase::Pending => status.message.clone(),
            },
        })
        .collect();
    let failed = statuses
        .values()
        .filter(|s| s.phase == Phase::Invalid)
        .count();
    QoSNodeReportSpec {
        node: node.to_owned(),
        counts: ReportCounts {
            claims: u32::try_from(claims.len()).unwrap_or(u32::MAX),
            failed: u32::try_from(failed).unwrap_or(u32::MAX),
        },
        claims,
    }
}

/// Writes this node's report when it changed.
pub struct ReportWriter {
    client: Client,
    node: String,
    namespace: String,
    /// The Node as owner, once it could be read (a report written before
    /// that is written again with it).
    owner: Option<OwnerReference>,
    written: Option<ReportApply>,
}

impl ReportWriter {
    pub fn new(client: Client, node: String, namespace: String) -> Self {
        Self {
            client,
            node,
            namespace,
            owner: None,
            written: None,
        }
    }

    /// Applies the report if it differs from the last one written. Returns
    /// whether a request was made.
    pub async fn write(
        &mut self,
        statuses: &BTreeMap<ClaimKey, ClaimStatus>,
    ) -> Result<bool, KubeError> {
        if self.owner.is_none() {
            self.owner = self.node_owner().await;
        }
        let body = ReportApply {
            api_version: API_VERSION,
            kind: REPORT_KIND,
            metadata: ReportMeta {
                name: self.node.clone(),
                namespace: self.namespace.clone(),
                owner_references: self.owner.clone().into_iter().collect(),
            },
            spec: node_report(&self.node, statuses),
        };
        if self.written.as_ref() == Some(&body) {
            return Ok(false);
        }
        let api: Api<crate::spec::QoSNodeReportResource> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams::apply(REPORT_FIELD_MANAGER).force();
        api.patch(&self.node, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| KubeError::Report {
                namespace: self.namespace.clone(),
                node: self.node.clone(),
                source,
            })?;
        self.written = Some(body);
        Ok(true)
    }

    /// This node's `Node` as an owner reference. Without it (no Node of
    /// that name, or no right to read it) the report is still written, but
    /// outlives a deleted node until removed by hand; that is logged.
    async fn node_owner(&self) -> Option<OwnerReference> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get(&self.node).await {
            Ok(node) => Some(OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node.clone(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..OwnerReference::default()
            }),
            Err(error) => {
                tracing::warn!(node = %self.node, %error,
                    "cannot read this node's Node object: its QoSNodeReport is written without an owner");
                None
            }
        }
    }
}
