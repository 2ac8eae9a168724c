//! Client Pods by label: each claim's `clients[].podSelector` (with its
//! `namespaceSelector`, or the claim's own namespace) resolved to the Pod
//! IPs the cluster-wide Pod watch holds now. Every Pod or Namespace change
//! wakes the loop, so a new client Pod is shaped at the next reconcile.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::spec::{LabelSelector, QoSClaim, SourceSnapshot};

/// Fills `resolved` of every Pod selector in the snapshot's claims.
pub fn resolve_clients(
    snapshot: &mut SourceSnapshot,
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
) {
    let Ok(documents) = &mut snapshot.documents else {
        return;
    };
    let namespace_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            Some((name, ns.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    for document in documents.iter_mut() {
        if let Ok(claim) = &mut document.result {
            resolve_claim(Arc::make_mut(claim), pods, &namespace_labels);
        }
    }
}

fn resolve_claim(
    claim: &mut QoSClaim,
    pods: &[Arc<Pod>],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) {
    let own_namespace = claim
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    for selector in claim.spec.traffic_qos.clients.iter_mut().flatten() {
        let Some(pod_selector) = &selector.pod_selector else {
            continue;
        };
        let in_namespace = |ns: &str| match &selector.namespace_selector {
            None => ns == own_namespace,
            Some(by_label) => namespace_labels
                .get(ns)
                .is_some_and(|labels| by_label.matches(labels)),
        };
        let mut addresses: Vec<IpAddr> = pods
            .iter()
            .filter(|pod| in_namespace(pod.metadata.namespace.as_deref().unwrap_or_default()))
            .filter(|pod| selects(pod_selector, pod))
            .flat_map(|pod| pod_ips(pod))
            .collect();
        addresses.sort();
        addresses.dedup();
        selector.resolved = Some(addresses);
    }
}

fn selects(selector: &LabelSelector, pod: &Pod) -> bool {
    let empty = BTreeMap::new();
    selector.matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
}

/// A running Pod's own addresses: none for host-network Pods (their address
/// is the node's, shared with everything else on it) or finished ones.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if host_network || finished {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.as_ref()?.parse::<IpAddr>().ok()));
    }
    ips
}
