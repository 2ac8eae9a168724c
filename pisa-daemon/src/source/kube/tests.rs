//! The kube source against a mocked API server at the HTTP boundary
//! (tower-test): realistic list and watch bodies, ADDED/MODIFIED/DELETED
//! and BOOKMARK events, `410 Gone` and the relist, and the server-side
//! apply of this node's status asserted field by field.

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::{
    source::mock_api::{event, eventually, full, mock_client, Handle},
    spec::{ClaimKey, ClaimStatus, Phase},
};

type EventSender = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

fn claim(name: &str, rate: &str, rv: &str, endpoints: bool) -> Value {
    let mut traffic = json!({"name": name, "qos_group": {"rate": rate}});
    if endpoints {
        traffic["endpoints"] = json!([{"host": "10.0.0.5", "port": 3306}]);
    }
    json!({
        "apiVersion": "core.database-mesh.io/v1alpha1",
        "kind": "QoSClaim",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": rv, "generation": 1,
            "creationTimestamp": "2026-11-21T04:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {"trafficQoS": traffic},
    })
}

fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "core.database-mesh.io/v1alpha1",
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": rv},
        "items": items,
    })
}

fn virtual_database() -> Value {
    json!({
        "apiVersion": "core.database-mesh.io/v1alpha1",
        "kind": "VirtualDatabase",
        "metadata": {"name": "catalogue", "namespace": "shop", "resourceVersion": "5"},
        "spec": {"services": [{
            "name": "catalogue",
            "databaseMySQL": {"host": "10.0.0.6", "port": 3306, "user": "root", "db": "catalogue"},
            "trafficStrategy": "catalogue",
            "qosClaim": "bound",
        }]},
    })
}

/// What the mock server saw and hands back to the test.
struct Server {
    /// Query strings of the claim LIST requests, in order.
    lists: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// One sender per claim WATCH request: the test streams events into it.
    watches: tokio::sync::mpsc::UnboundedReceiver<(String, EventSender)>,
}

/// Serves claim lists from `claim_lists` (one per LIST), a VirtualDatabase
/// list, and watches that stay open until the test ends them.
fn serve(mut handle: Handle, mut claim_lists: VecDeque<Value>) -> Server {
    let (list_tx, lists) = tokio::sync::mpsc::unbounded_channel();
    let (watch_tx, watches) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut idle_watches = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            assert_eq!(request.method(), http::Method::GET, "{path}");
            let watching = query.contains("watch=true");
            if path.ends_with("/virtualdatabases") {
                if watching {
                    let (tx, rx) = futures::channel::mpsc::unbounded();
                    idle_watches.push(tx);
                    respond.send_response(Response::new(StreamBody::new(rx).boxed_unsync()));
                } else {
                    respond.send_response(Response::new(full(list(
                        "VirtualDatabase",
                        "5",
                        vec![virtual_database()],
                    ))));
                }
            } else {
                assert_eq!(path, "/apis/core.database-mesh.io/v1alpha1/qosclaims");
                if watching {
                    let (tx, rx) = futures::channel::mpsc::unbounded();
                    let _ = watch_tx.send((query, tx));
                    respond.send_response(Response::new(StreamBody::new(rx).boxed_unsync()));
                } else {
                    let _ = list_tx.send(query);
                    let body = claim_lists
                        .pop_front()
                        .expect("no more LIST responses prepared");
                    respond.send_response(Response::new(full(body)));
                }
            }
        }
    });
    Server { lists, watches }
}

/// Claim name -> rate, as the agent would load them.
fn rates(source: &KubeSource) -> BTreeMap<String, String> {
    source
        .snapshot()
        .into_iter()
        .map(|s| {
            let doc = s.documents.expect("loadable")[0]
                .result
                .clone()
                .expect("valid claim");
            (
                doc.metadata.name.clone(),
                doc.spec.traffic_qos.qos_group.rate.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn list_then_watch_events_then_410_relists() {
    let (client, handle) = mock_client();
    let mut server = serve(
        handle,
        VecDeque::from([
            list("QoSClaim", "10", vec![claim("alpha", "10mbit", "9", true)]),
            list(
                "QoSClaim",
                "20",
                vec![
                    claim("alpha", "30mbit", "18", true),
                    claim("gamma", "5mbit", "19", true),
                ],
            ),
        ]),
    );
    let changed = Arc::new(Notify::new());
    let source = KubeSource::start(&client, &[], changed.clone());

    assert_eq!(server.lists.recv().await.unwrap(), "&limit=500");
    let (query, events) = server.watches.recv().await.unwrap();
    assert_eq!(
        query,
        "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=10"
    );
    eventually("the listed claim", || rates(&source).len() == 1).await;
    assert!(source.ready());

    events
        .unbounded_send(event("ADDED", claim("beta", "20mbit", "11", true)))
        .unwrap();
    eventually("ADDED", || rates(&source).contains_key("beta")).await;
    events
        .unbounded_send(event("MODIFIED", claim("alpha", "15mbit", "12", true)))
        .unwrap();
    eventually("MODIFIED", || rates(&source)["alpha"] == "15mbit").await;
    events
        .unbounded_send(event(
            "BOOKMARK",
            json!({"apiVersion": "core.database-mesh.io/v1alpha1", "kind": "QoSClaim",
                   "metadata": {"resourceVersion": "13"}}),
        ))
        .unwrap();
    events
        .unbounded_send(event("DELETED", claim("beta", "20mbit", "14", true)))
        .unwrap();
    eventually("DELETED", || !rates(&source).contains_key("beta")).await;

    // The history is gone: the server says 410, the watcher relists.
    events
        .unbounded_send(event(
            "ERROR",
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "Expired", "message": "too old resource version: 13 (15)",
                   "code": 410}),
        ))
        .unwrap();
    assert_eq!(server.lists.recv().await.unwrap(), "&limit=500");
    eventually("the relisted state", || {
        rates(&source)
            == BTreeMap::from([
                ("alpha".to_string(), "30mbit".to_string()),
                ("gamma".to_string(), "5mbit".to_string()),
            ])
    })
    .await;
    let (query, _events) = server.watches.recv().await.unwrap();
    assert!(query.ends_with("&resourceVersion=20"), "{query}");
}

#[tokio::test]
async fn a_claim_without_endpoints_takes_its_virtual_database_endpoints() {
    let (client, handle) = mock_client();
    let mut server = serve(
        handle,
        VecDeque::from([list(
            "QoSClaim",
            "10",
            vec![claim("bound", "10mbit", "9", false)],
        )]),
    );
    let source = KubeSource::start(&client, &[], Arc::new(Notify::new()));
    let _ = server.lists.recv().await;
    eventually("the claim and its VirtualDatabase", || {
        source.snapshot().first().is_some_and(|s| {
            s.documents.as_ref().is_ok_and(|docs| {
                docs[0].result.as_ref().is_ok_and(|c| {
                    c.spec.traffic_qos.endpoints.as_ref().is_some_and(|e| {
                        e.len() == 1
                            && e[0].host.as_deref() == Some("10.0.0.6")
                            && e[0].port == Some(3306)
                    })
                })
            })
        })
    })
    .await;
}

#[test]
fn a_bad_object_becomes_an_invalid_document_not_a_broken_list() {
    let mut bad = claim("typo", "10mbit", "9", true);
    bad["spec"]["trafficQoS"]["prioritty"] = json!("guaranteed");
    let object: DynamicObject = serde_json::from_value(bad).unwrap();
    let source = claim_source(&object, &[]);
    assert_eq!(source.name, "kube:shop/typo");
    let error = source.documents.unwrap()[0].result.clone().unwrap_err();
    assert!(error.to_string().contains("prioritty"), "{error}");
}

fn status(phase: Phase, generation: i64, message: &str) -> ClaimStatus {
    ClaimStatus {
        claim: ClaimKey::new("", ""),
        phase,
        message: message.into(),
        class_id: Some(7),
        observed_generation: Some(generation),
        mode: None,
        rate_bytes: None,
        ceil_bytes: None,
        priority: None,
        client_prefixes: 0,
    }
}

#[test]
fn the_node_report_holds_one_small_entry_per_claim_with_messages_only_where_not_applied() {
    let statuses = BTreeMap::from([
        (
            ClaimKey::new("shop", "alpha"),
            status(Phase::Applied, 3, "class 7 in force"),
        ),
        (
            ClaimKey::new("shop", "typo"),
            status(
                Phase::Invalid,
                1,
                "spec.trafficQoS.qos_group.rate `1mps`: unknown unit",
            ),
        ),
    ]);
    assert_eq!(
        serde_json::to_value(node_report("node-a", &statuses)).unwrap(),
        json!({
            "node": "node-a",
            "counts": {"claims": 2, "failed": 1},
            "claims": [
                {"claim": "shop/alpha", "generation": 3, "phase": "Applied"},
                {"claim": "shop/typo", "generation": 1, "phase": "Invalid",
                 "message": "spec.trafficQoS.qos_group.rate `1mps`: unknown unit"},
            ],
        })
    );
}

#[tokio::test]
async fn the_report_is_applied_with_its_node_as_owner_and_only_when_it_changes() {
    let (client, mut handle) = mock_client();
    let mut writer = ReportWriter::new(client, "node-a".into(), "pisa-system".into());
    let mut statuses = BTreeMap::from([(
        ClaimKey::new("shop", "alpha"),
        status(
            Phase::Invalid,
            2,
            "spec.trafficQoS.qos_group.rate `1mps`: unknown unit",
        ),
    )]);
    let server = tokio::spawn(async move {
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/nodes/node-a");
        respond.send_response(Response::new(full(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "uid": "uid-node-a", "resourceVersion": "3"},
        }))));
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/core.database-mesh.io/v1alpha1/namespaces/pisa-system/qosnodereports/node-a"
        );
        assert_eq!(
            request.uri().query(),
            Some("&force=true&fieldManager=pisa-daemon")
        );
        assert_eq!(
            request.headers()[http::header::CONTENT_TYPE],
            "application/apply-patch+yaml"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["apiVersion"], "core.database-mesh.io/v1alpha1");
        assert_eq!(body["kind"], "QoSNodeReport");
        assert_eq!(body["metadata"]["name"], "node-a");
        assert_eq!(body["metadata"]["namespace"], "pisa-system");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["uid"]),
            (&json!("Node"), &json!("node-a"), &json!("uid-node-a"))
        );
        let entry = &body["spec"]["claims"][0];
        assert_eq!(entry["claim"], "shop/alpha");
        assert_eq!(entry["phase"], "Invalid");
        assert_eq!(entry["generation"], 2);
        assert!(entry["message"].as_str().unwrap().contains("1mps"));
        let mut stored = body.clone();
        stored["metadata"]["uid"] = json!("uid-report");
        stored["metadata"]["resourceVersion"] = json!("40");
        respond.send_response(Response::new(full(stored)));
        handle
    });
    assert!(
        writer.write(&statuses).await.unwrap(),
        "the first report is written"
    );
    let mut handle = server.await.unwrap();
    // Unchanged: no request at all (the owner is not looked up again).
    assert!(!writer.write(&statuses).await.unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), handle.next_request())
            .await
            .is_err(),
        "an unchanged report must not be written again"
    );
    // A failed write is an error naming the report, and is tried again.
    statuses.insert(ClaimKey::new("shop", "beta"), status(Phase::Applied, 1, ""));
    let server = tokio::spawn(async move {
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(
            Response::builder()
                .status(500)
                .body(full(json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "etcdserver: request timed out", "reason": "InternalError",
                    "code": 500,
                })))
                .unwrap(),
        );
        let (request, respond) = handle.next_request().await.unwrap();
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["spec"]["counts"], json!({"claims": 2, "failed": 1}));
        respond.send_response(Response::new(full(body)));
    });
    let error = writer.write(&statuses).await.unwrap_err().to_string();
    assert!(
        error.starts_with("writing the QoSNodeReport pisa-system/node-a: "),
        "{error}"
    );
    assert!(
        writer.write(&statuses).await.unwrap(),
        "retried after the failure"
    );
    server.await.unwrap();
}

#[test]
fn status_times_are_whole_second_rfc3339_utc() {
    let now = now_rfc3339();
    let parsed: jiff::Timestamp = now.parse().expect("RFC 3339");
    assert_eq!(now.len(), "2026-11-21T03:50:00Z".len(), "{now}");
    assert!(now.ends_with('Z'), "{now}");
    assert_eq!(parsed.subsec_nanosecond(), 0);
}
