//! The Pods running on this node. Their IPs are how the daemon finds the
//! host-side interfaces (veths) to attach to while they run, and to let go
//! of when they leave.
//!
//! Only this node's Pods are watched (field selector `spec.nodeName`), and
//! the node is checked again on every object: a proxy or server that ignores
//! the selector must not make this node attach for Pods elsewhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::Api,
    runtime::{reflector, watcher},
    Client, ResourceExt,
};
use tokio::sync::Notify;

use super::kube::{spawn_reflector, store_ready};
use crate::kernel::route::{Route, RouteError};

/// A Pod of this node that has its own network namespace and an address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodePod {
    /// `namespace/name`, for logs.
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// The field selector that limits the watch to `node`'s Pods.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

pub struct PodSource {
    store: reflector::Store<Pod>,
    node: String,
}

impl PodSource {
    /// Starts watching the Pods of `node` in all namespaces.
    pub fn start(client: &Client, node: &str, changed: Arc<Notify>) -> Self {
        let api: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&node_selector(node));
        let (_, writer) = reflector::store();
        let store = spawn_reflector(api, config, writer, changed, "Pod");
        Self {
            store,
            node: node.to_owned(),
        }
    }

    /// Whether the first list has arrived (before it, an empty store would
    /// detach every Pod interface).
    pub fn ready(&self) -> bool {
        store_ready(&self.store)
    }

    /// This node's Pods as they are now, sorted by name.
    pub fn pods(&self) -> Vec<NodePod> {
        let mut pods: Vec<NodePod> = self
            .store
            .state()
            .iter()
            .filter_map(|pod| node_pod(pod, &self.node))
            .collect();
        pods.sort();
        pods
    }
}

/// `pod` as a Pod whose interfaces this node follows, or `None` when it
/// has none to follow: it runs elsewhere, shares the host's network (its
/// traffic already crosses the node's interfaces), has finished (its
/// sandbox is gone), or has no address yet.
pub fn node_pod(pod: &Pod, node: &str) -> Option<NodePod> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut addresses: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    if addresses.is_empty() {
        addresses.extend(status.pod_ip.as_deref());
    }
    let mut ips: Vec<IpAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    Some(NodePod {
        name: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        ips,
    })
}

/// The host interfaces this node's Pods sit behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInterfaces {
    /// Interface -> the Pods behind it (several on a bridge).
    pub interfaces: BTreeMap<String, Vec<String>>,
    /// Addresses that led to no interface to attach, and why (a route not
    /// yet installed by the CNI, or one through a gateway).
    pub skipped: Vec<String>,
}

impl PodInterfaces {
    pub fn names(&self) -> BTreeSet<String> {
        self.interfaces.keys().cloned().collect()
    }
}

/// Finds each Pod address's interface with `route_to` (the kernel's route
/// lookup in the daemon). Only directly connected routes count: a gateway
/// in between means the address is not on this host.
pub fn pod_interfaces(
    pods: &[NodePod],
    mut route_to: impl FnMut(IpAddr) -> Result<Route, RouteError>,
) -> PodInterfaces {
    let mut found = PodInterfaces::default();
    for pod in pods {
        for ip in &pod.ips {
            match route_to(*ip) {
                Ok(Route::Direct { iface }) => {
                    let pods = found.interfaces.entry(iface).or_default();
                    if !pods.contains(&pod.name) {
                        pods.push(pod.name.clone());
                    }
                }
                Ok(Route::Gateway { iface }) => found.skipped.push(format!(
                    "pod {} ({ip}): routed through a gateway on {iface}, so not on this host",
                    pod.name
                )),
                Ok(Route::NotUnicast) => found.skipped.push(format!(
                    "pod {} ({ip}): an address of this host, not behind a pod interface",
                    pod.name
                )),
                Err(error) => found.skipped.push(format!("pod {}: {error}", pod.name)),
            }
        }
    }
    found
}

/// This node's Pods and the interfaces they were last found behind.
pub struct FollowedPods {
    source: PodSource,
    found: PodInterfaces,
}

impl FollowedPods {
    pub fn new(source: PodSource) -> Self {
        Self {
            source,
            found: PodInterfaces::default(),
        }
    }

    pub fn ready(&self) -> bool {
        self.source.ready()
    }

    /// Looks up every Pod's interface again and returns the interfaces.
    /// Pods whose address leads nowhere yet (the CNI may add the route
    /// after the IP is reported) are looked up again next time. If routes
    /// cannot be looked up at all, the interfaces stay as they were.
    pub fn lookup(&mut self) -> BTreeSet<String> {
        let pods = self.source.pods();
        let found = match crate::kernel::route::RouteLookup::open() {
            Ok(mut lookup) => pod_interfaces(&pods, |ip| lookup.route_to(ip)),
            Err(error) => {
                tracing::warn!(%error, "cannot look up Pod routes; keeping the Pod interfaces as they were");
                return self.found.names();
            }
        };
        for (iface, pods) in &found.interfaces {
            if !self.found.interfaces.contains_key(iface) {
                tracing::info!(%iface, ?pods, "following Pod interface");
            }
        }
        for (iface, pods) in &self.found.interfaces {
            if !found.interfaces.contains_key(iface) {
                tracing::info!(%iface, ?pods, "Pod interface no longer followed");
            }
        }
        for reason in found
            .skipped
            .iter()
            .filter(|r| !self.found.skipped.contains(r))
        {
            tracing::info!(%reason, "Pod address not followed");
        }
        self.found = found;
        self.found.names()
    }
}

#[cfg(test)]
mod tests;
