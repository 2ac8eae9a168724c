//! The Pod watch against a mocked API server at the HTTP boundary
//! (tower-test), with Pod bodies as a kubelet-managed node reports them.

use http::Response;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

use super::*;
use crate::source::mock_api::{event, eventually, full, mock_client};

/// A Pod as the API server returns it. `ips` empty: not yet given one.
fn pod(name: &str, node: &str, phase: &str, ips: &[&str], rv: &str) -> Value {
    let mut status = json!({
        "phase": phase,
        "hostIP": "192.168.49.2",
        "hostIPs": [{"ip": "192.168.49.2"}],
        "startTime": "2026-11-21T04:00:00Z",
        "qosClass": "Burstable",
        "conditions": [{"type": "Ready", "status": "True",
                        "lastTransitionTime": "2026-11-21T04:00:05Z"}],
    });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": rv, "creationTimestamp": "2026-11-21T04:00:00Z",
            "labels": {"app": "catalogue"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "catalogue-7d4b9c", "uid": "rs-1",
                                 "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update",
                               "apiVersion": "v1", "subresource": "status"}],
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "mysql:8.0",
                            "ports": [{"containerPort": 3306, "protocol": "TCP"}]}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": status,
    })
}

fn host_network(mut pod: Value) -> Value {
    pod["spec"]["hostNetwork"] = json!(true);
    pod
}

#[tokio::test]
async fn only_this_nodes_pods_with_their_own_network_are_followed() {
    let (client, mut handle) = mock_client();
    let changed = Arc::new(Notify::new());
    let source = PodSource::start(&client, "node-a", changed.clone());

    // The LIST, filtered by node; the server ignores the filter (as a
    // misbehaving proxy might) and returns every node's Pods.
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.uri().path(), "/api/v1/pods");
    assert_eq!(
        request.uri().query(),
        Some("&fieldSelector=spec.nodeName%3Dnode-a&limit=500")
    );
    let list = json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "100"},
        "items": [
            pod("db-0", "node-a", "Running", &["10.244.1.7", "fd00:10:244:1::7"], "90"),
            pod("db-elsewhere", "node-b", "Running", &["10.244.2.9"], "91"),
            host_network(pod("agent", "node-a", "Running", &["192.168.49.2"], "92")),
            pod("starting", "node-a", "Pending", &[], "93"),
            pod("batch", "node-a", "Succeeded", &["10.244.1.8"], "94"),
        ],
    });
    respond.send_response(Response::new(full(list)));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(
        request.uri().query(),
        Some(
            "&watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3Dnode-a\
             &allowWatchBookmarks=true&resourceVersion=100"
        )
    );
    let (events, stream) = futures::channel::mpsc::unbounded();
    respond.send_response(Response::new(StreamBody::new(stream).boxed_unsync()));

    eventually("the listed Pods", || !source.pods().is_empty()).await;
    assert!(source.ready());
    assert_eq!(
        source.pods(),
        vec![NodePod {
            name: "shop/db-0".into(),
            ips: vec![
                "10.244.1.7".parse().unwrap(),
                "fd00:10:244:1::7".parse().unwrap()
            ],
        }]
    );

    // The starting Pod gets its address; a Pod of another node changes.
    events
        .unbounded_send(event(
            "MODIFIED",
            pod("starting", "node-a", "Running", &["10.244.1.9"], "101"),
        ))
        .unwrap();
    events
        .unbounded_send(event(
            "MODIFIED",
            pod("db-elsewhere", "node-b", "Running", &["10.244.2.10"], "102"),
        ))
        .unwrap();
    eventually("the Pod that got an address", || source.pods().len() == 2).await;
    let names: Vec<String> = source.pods().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["shop/db-0", "shop/starting"]);

    // The first Pod goes away.
    events
        .unbounded_send(event(
            "DELETED",
            pod("db-0", "node-a", "Running", &["10.244.1.7"], "103"),
        ))
        .unwrap();
    eventually("the deleted Pod gone", || source.pods().len() == 1).await;
    assert_eq!(source.pods()[0].name, "shop/starting");
}

fn node_pod_of(name: &str, ips: &[&str]) -> NodePod {
    NodePod {
        name: name.into(),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
    }
}

#[test]
fn pods_map_to_the_interfaces_their_addresses_are_routed_to() {
    let pods = [
        node_pod_of("shop/db-0", &["10.244.1.7"]),
        node_pod_of("shop/web-0", &["10.244.1.8"]),
        node_pod_of("shop/web-1", &["10.244.1.9", "fd00::9"]),
        node_pod_of("shop/odd", &["10.9.9.9"]),
        node_pod_of("shop/gone", &["10.244.1.66"]),
    ];
    let found = pod_interfaces(&pods, |ip| match ip.to_string().as_str() {
        "10.244.1.7" => Ok(Route::Direct {
            iface: "cali1a2b3c".into(),
        }),
        // A bridged CNI: both Pods sit behind the bridge.
        "10.244.1.8" | "10.244.1.9" | "fd00::9" => Ok(Route::Direct {
            iface: "cni0".into(),
        }),
        "10.9.9.9" => Ok(Route::Gateway {
            iface: "eth0".into(),
        }),
        _ => Err(RouteError::NoInterface { ip }),
    });
    assert_eq!(
        found.interfaces,
        BTreeMap::from([
            ("cali1a2b3c".to_string(), vec!["shop/db-0".to_string()]),
            (
                "cni0".to_string(),
                vec!["shop/web-0".to_string(), "shop/web-1".to_string()]
            ),
        ])
    );
    assert_eq!(found.skipped.len(), 2, "{:?}", found.skipped);
    assert!(found.skipped[0].contains("shop/odd (10.9.9.9): routed through a gateway on eth0"));
    assert!(found.skipped[1].contains("shop/gone") && found.skipped[1].contains("10.244.1.66"));
}

#[test]
fn a_pod_without_a_spec_or_status_is_not_followed() {
    let mut bare = pod("bare", "node-a", "Running", &["10.244.1.7"], "1");
    bare.as_object_mut().unwrap().remove("status");
    let bare: Pod = serde_json::from_value(bare).unwrap();
    assert_eq!(node_pod(&bare, "node-a"), None);
    let mut garbled = pod("garbled", "node-a", "Running", &["not-an-ip"], "1");
    garbled["status"]["podIP"] = json!("not-an-ip");
    let garbled: Pod = serde_json::from_value(garbled).unwrap();
    assert_eq!(node_pod(&garbled, "node-a"), None);
}
