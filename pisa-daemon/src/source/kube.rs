//! The Kubernetes source: QoSClaims (in all namespaces, or the ones given)
//! and Pisanix VirtualDatabases, held by reflectors (here); their binding
//! (`binding`); this node's `QoSNodeReport`, written with server-side apply
//! (`report`); the claims' aggregate status, written by the one daemon
//! holding the status Lease (`lease`, `aggregate`, `aggregator`); and the
//! whole as one `ClaimSource` with this node's Pods (`node`).
//!
//! Claims are watched as untyped objects and handed to the same loader and
//! validator as claim files, so a bad object becomes an `Invalid` status
//! with a precise message instead of breaking the whole list.

mod aggregate;
mod aggregator;
mod binding;
mod clients;
mod lease;
mod node;
mod report;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{reflector, watcher, WatchStreamExt},
    Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

pub use aggregate::{claim_status, tally, Tally};
pub use aggregator::{Aggregator, Pass, AGGREGATE_SETTLE, STATUS_LEASE};
pub use binding::{bind_endpoints, claim_source};
pub use lease::{LeaderLease, LEASE_DURATION, RENEW_EVERY};
pub use node::{KubeArgs, KubeClaimSource, KubeConnectError};
pub use report::{node_report, KubeError, ReportWriter, REPORT_FIELD_MANAGER};

use crate::spec::{QoSClaimResource, SourceSnapshot};

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
    /// Every Pod and Namespace of the cluster, for client Pod selectors:
    /// watched from the first claim that has one (a cluster without such
    /// claims pays for no cluster-wide Pod watch on every node). Until
    /// their first list, selectors resolve to no Pods (for about a second
    /// the clients fall to the endpoint's class).
    client_pods: std::sync::OnceLock<(reflector::Store<Pod>, reflector::Store<Namespace>)>,
    client: Client,
    changed: Arc<Notify>,
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
        Self {
            claims,
            databases,
            client_pods: std::sync::OnceLock::new(),
            client: client.clone(),
            changed,
        }
    }

    /// The cluster's Pods and Namespaces, watched from the first call on.
    fn client_pods(&self) -> &(reflector::Store<Pod>, reflector::Store<Namespace>) {
        self.client_pods.get_or_init(|| {
            tracing::info!(
                "a claim selects client Pods: watching the cluster's Pods and Namespaces"
            );
            let pods = spawn_reflector(
                Api::<Pod>::all(self.client.clone()),
                watcher::Config::default(),
                reflector::store::Writer::default(),
                self.changed.clone(),
                "Pod (clients)",
            );
            let namespaces = spawn_reflector(
                Api::<Namespace>::all(self.client.clone()),
                watcher::Config::default(),
                reflector::store::Writer::default(),
                self.changed.clone(),
                "Namespace",
            );
            (pods, namespaces)
        })
    }

    /// The claim reflectors' stores, for the status aggregator.
    pub fn claim_stores(&self) -> Vec<reflector::Store<DynamicObject>> {
        self.claims.clone()
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
        let selects_pods = claims.iter().any(|claim| {
            claim.data["spec"]["trafficQoS"]["clients"]
                .as_array()
                .is_some_and(|c| c.iter().any(|s| !s["podSelector"].is_null()))
        });
        let (pods, namespaces) = if selects_pods {
            let (pods, namespaces) = self.client_pods();
            (pods.state(), namespaces.state())
        } else {
            (Vec::new(), Vec::new())
        };
        claims
            .iter()
            .map(|claim| {
                let mut source = claim_source(claim, &databases);
                clients::resolve_clients(&mut source, &pods, &namespaces);
                source
            })
            .collect()
    }
}

/// Now, as the RFC 3339 UTC timestamp Kubernetes conditions carry
/// (`2026-11-21T04:12:04Z`: whole seconds, as `metav1.Time` serialises).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
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

#[cfg(test)]
mod tests;
