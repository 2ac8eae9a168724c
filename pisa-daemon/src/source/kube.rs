//! The Kubernetes source: QoSClaims (in all namespaces, or the ones given)
//! and Pisanix VirtualDatabases, held by reflectors; and this node's entry
//! of each claim's status, written back with server-side apply.
//!
//! Claims are watched as untyped objects and handed to the same loader and
//! validator as claim files, so a bad object becomes an `Invalid` status
//! with a precise message instead of breaking the whole list.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Client, Resource,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::{
    reconcile::agent::{ClaimStatus, Phase, SourceSnapshot},
    spec::{load_documents, ClaimKey, QoSClaimResource, API_VERSION, KIND},
};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("writing the status of claim {claim}: {source}")]
    Status {
        claim: ClaimKey,
        #[source]
        source: kube::Error,
    },
}

/// Pisanix's VirtualDatabase, which binds claims to databases.
pub fn virtual_database_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("core.database-mesh.io", "v1alpha1", "VirtualDatabase");
    ApiResource::from_gvk_with_plural(&gvk, "virtualdatabases")
}

pub fn claim_resource() -> ApiResource {
    ApiResource::erase::<QoSClaimResource>(&())
}

/// Reflectors over claims and VirtualDatabases. Every change (including a
/// relist after `410 Gone`, which the watcher performs itself) wakes
/// `changed`; watch errors are retried with exponential backoff.
pub struct KubeSource {
    claims: Vec<reflector::Store<DynamicObject>>,
    databases: Vec<reflector::Store<DynamicObject>>,
}

impl KubeSource {
    /// Starts the watches. `namespaces` empty means all namespaces.
    pub fn start(client: &Client, namespaces: &[String], changed: Arc<Notify>) -> Self {
        let apis = |resource: &ApiResource| -> Vec<Api<DynamicObject>> {
            if namespaces.is_empty() {
                vec![Api::all_with(client.clone(), resource)]
            } else {
                namespaces
                    .iter()
                    .map(|ns| Api::namespaced_with(client.clone(), ns, resource))
                    .collect()
            }
        };
        let claim_type = claim_resource();
        let database_type = virtual_database_resource();
        let claims = apis(&claim_type)
            .into_iter()
            .map(|api| reflect(api, claim_type.clone(), changed.clone(), "QoSClaim"))
            .collect();
        let databases = apis(&database_type)
            .into_iter()
            .map(|api| {
                reflect(
                    api,
                    database_type.clone(),
                    changed.clone(),
                    "VirtualDatabase",
                )
            })
            .collect();
        Self { claims, databases }
    }

    /// Whether every watch has listed once (before that, an empty store
    /// would look like "all claims deleted").
    pub fn ready(&self) -> bool {
        self.claims.iter().chain(&self.databases).all(store_ready)
    }

    /// The claims as they are now, one source per object, with endpoints
    /// from bound VirtualDatabases filled in.
    pub fn snapshot(&self) -> Vec<SourceSnapshot> {
        let databases: Vec<Arc<DynamicObject>> =
            self.databases.iter().flat_map(|s| s.state()).collect();
        let mut claims: Vec<Arc<DynamicObject>> =
            self.claims.iter().flat_map(|s| s.state()).collect();
        claims.sort_by_key(|c| (c.metadata.namespace.clone(), c.metadata.name.clone()));
        claims
            .iter()
            .map(|claim| claim_source(claim, &databases))
            .collect()
    }
}

pub(crate) fn store_ready<K>(store: &reflector::Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some()
}

fn reflect(
    api: Api<DynamicObject>,
    resource: ApiResource,
    changed: Arc<Notify>,
    kind: &'static str,
) -> reflector::Store<DynamicObject> {
    let writer = reflector::store::Writer::new(resource);
    spawn_reflector(api, watcher::Config::default(), writer, changed, kind)
}

/// Runs the watch of `api` into `writer` in the background and returns the
/// store it fills. Every change (including a relist after `410 Gone`, which
/// the watcher performs itself) wakes `changed`; watch errors are retried
/// with exponential backoff. Managed fields are dropped before storing:
/// nothing here reads them and they are often the bulk of an object.
pub(crate) fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    kind: &'static str,
) -> reflector::Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let reader = writer.as_reader();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(kind, %error, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}

/// One claim object as a source for the agent: the object is rendered back
/// to YAML and loaded exactly like a claim file.
pub fn claim_source(claim: &DynamicObject, databases: &[Arc<DynamicObject>]) -> SourceSnapshot {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let origin = format!("kube:{namespace}/{name}");
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": claim.metadata.generation,
        },
    });
    if let Some(spec) = claim.data.get("spec") {
        object["spec"] = spec.clone();
    }
    bind_endpoints(&mut object, databases);
    // A JSON value always renders as YAML; an empty text would load as no
    // claim, which validation then reports.
    let text = serde_yaml::to_string(&object).unwrap_or_default();
    let documents = load_documents(&origin, &text);
    SourceSnapshot {
        name: origin,
        documents,
    }
}

/// Pisanix's binding: a claim without endpoints takes the
/// `databaseMySQL.host`/`port` of every VirtualDatabase service in its
/// namespace whose `qosClaim` names it.
pub fn bind_endpoints(claim: &mut Value, databases: &[Arc<DynamicObject>]) {
    let traffic = &claim["spec"]["trafficQoS"];
    let has_endpoints = traffic["endpoints"]
        .as_array()
        .is_some_and(|e| !e.is_empty());
    if has_endpoints {
        return;
    }
    let namespace = claim["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = claim["metadata"]["name"].as_str().unwrap_or_default();
    let endpoints: Vec<Value> = databases
        .iter()
        .filter(|db| db.metadata.namespace.as_deref() == Some(namespace))
        .flat_map(|db| {
            db.data["spec"]["services"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|service| service["qosClaim"].as_str() == Some(name))
        .filter_map(|service| {
            let mysql = &service["databaseMySQL"];
            let host = mysql["host"].as_str()?;
            let mut endpoint = json!({"host": host});
            if let Some(port) = mysql["port"].as_i64() {
                endpoint["port"] = json!(port);
            }
            Some(endpoint)
        })
        .collect();
    if !endpoints.is_empty() {
        if let Some(traffic) = claim["spec"]["trafficQoS"].as_object_mut() {
            traffic.insert("endpoints".into(), Value::Array(endpoints));
        }
    }
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

/// RFC 3339 UTC (`2026-11-21T04:12:04Z`) of a Unix time in seconds.
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let rem = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
