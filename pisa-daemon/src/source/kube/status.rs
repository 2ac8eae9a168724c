//! This node's entry of each claim's status, written with server-side
//! apply under this node's own field manager.

use std::collections::BTreeMap;

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    Client,
};
use serde::Serialize;

use super::claim_resource;
use crate::spec::{ClaimKey, ClaimStatus, NodeStatus, Phase, QoSClaimStatus, API_VERSION, KIND};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("writing the status of claim {claim}: {source}")]
    Status {
        claim: ClaimKey,
        #[source]
        source: kube::Error,
    },
}

/// A server-side-apply body of the status subresource: the CRD's own
/// status types (`spec::QoSClaimStatus`), so the body cannot drift from
/// the schema the API server validates it against.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusApply {
    api_version: &'static str,
    kind: &'static str,
    status: QoSClaimStatus,
}

/// This node's status entry as a server-side-apply body. Only the fields
/// this node owns are sent.
pub fn status_patch(node: &str, status: &ClaimStatus, transition: &str) -> StatusApply {
    StatusApply {
        api_version: API_VERSION,
        kind: KIND,
        status: QoSClaimStatus {
            nodes: vec![NodeStatus {
                node: node.to_owned(),
                phase: status.phase.into(),
                message: status.message.clone(),
                observed_generation: status.observed_generation,
                class_id: status.class_id,
                last_transition_time: Some(transition.to_owned()),
            }],
        },
    }
}

/// The field manager of one node: each node owns only its own entry.
/// (A single shared manager would make every node's apply delete the other
/// nodes' entries.)
pub fn field_manager(node: &str) -> String {
    format!("pisa-daemon-{node}")
}

/// Writes changed status entries of this node.
pub struct StatusWriter {
    client: Client,
    node: String,
    /// What was last written per claim, and when its phase last changed.
    written: BTreeMap<ClaimKey, (StatusApply, Phase, String)>,
}

impl StatusWriter {
    pub fn new(client: Client, node: String) -> Self {
        Self {
            client,
            node,
            written: BTreeMap::new(),
        }
    }

    /// Patches every claim whose entry changed; forgets deleted claims.
    pub async fn write(
        &mut self,
        statuses: &BTreeMap<ClaimKey, ClaimStatus>,
        now: &str,
    ) -> Vec<KubeError> {
        self.written.retain(|key, _| statuses.contains_key(key));
        let mut errors = Vec::new();
        for (key, status) in statuses {
            let transition = match self.written.get(key) {
                Some((_, phase, at)) if *phase == status.phase => at.clone(),
                _ => now.to_string(),
            };
            let body = status_patch(&self.node, status, &transition);
            if self
                .written
                .get(key)
                .is_some_and(|(last, _, _)| *last == body)
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &claim_resource());
            let params = PatchParams::apply(&field_manager(&self.node)).force();
            match api
                .patch_status(&key.name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    self.written
                        .insert(key.clone(), (body, status.phase, transition));
                }
                Err(source) => errors.push(KubeError::Status {
                    claim: key.clone(),
                    source,
                }),
            }
        }
        errors
    }
}

/// Now, as the RFC 3339 UTC timestamp Kubernetes conditions carry
/// (`2026-11-21T04:12:04Z`: whole seconds, as `metav1.Time` serialises).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
