//! This node's entry of each claim's status, written with server-side
//! apply under this node's own field manager.

use std::collections::BTreeMap;

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    Client,
};
use serde_json::{json, Value};

use super::claim_resource;
use crate::spec::{ClaimKey, ClaimStatus, Phase, API_VERSION, KIND};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("writing the status of claim {claim}: {source}")]
    Status {
        claim: ClaimKey,
        #[source]
        source: kube::Error,
    },
}

/// This node's status entry as a server-side-apply body. Only the fields
/// this node owns are sent.
pub fn status_patch(node: &str, status: &ClaimStatus, transition: &str) -> Value {
    let mut entry = json!({
        "node": node,
        "phase": format!("{:?}", status.phase),
        "message": status.message,
        "lastTransitionTime": transition,
    });
    if let Some(generation) = status.observed_generation {
        entry["observedGeneration"] = json!(generation);
    }
    if let Some(class_id) = status.class_id {
        entry["classId"] = json!(class_id);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": {"nodes": [entry]},
    })
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
    written: BTreeMap<ClaimKey, (Value, Phase, String)>,
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
