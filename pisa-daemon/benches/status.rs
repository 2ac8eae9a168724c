//! `cargo xtask bench status`: Kubernetes status at scale, simulated. One
//! in-process stand-in API server (`common/apiserver.rs`) and N simulated
//! node agents (N = 100, 1,000, 5,000; no veths, no kernel), measuring
//! what one claim change costs the API server in each design, side by side
//! in the same run:
//!
//! - **per-node entries** (releases before this one): every node applies
//!   its own entry of the claim's `status.nodes[]`, and every node watches
//!   every claim;
//! - **reports + aggregate** (this release): every node applies its own
//!   `QoSNodeReport` with the daemon's `ReportWriter`, and the daemon's
//!   `Aggregator` (holding the real Lease) tallies them into the claim's
//!   status; every node still watches every claim.
//!
//! Per claim change: requests, bytes written, watch events delivered and
//! their bytes, and the largest object. The nodes' claim watches are
//! counted watchers (charged every event, nothing sent); the aggregator's
//! watches of claims and reports are real `kube` watch streams.
//!
//! `-- --nodes 100,1000` limits the sizes.

#[path = "common/apiserver.rs"]
mod apiserver;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use apiserver::{claim_status_path, ApiServer, Counters};
use pisa_daemon::{
    source::kube::{Aggregator, KubeSource, ReportWriter},
    spec::{ClaimKey, ClaimStatus, Phase},
};
use serde_json::{json, Value};

/// Claims on every node: each report holds this many entries.
const CLAIMS: usize = 100;
const NAMESPACE: &str = "shop";
const DAEMON_NAMESPACE: &str = "pisa-system";
/// Nodes see a change at different times: their writes are spread evenly
/// over this window, as the reconciles of a real cluster are.
const SPREAD: Duration = Duration::from_secs(2);

fn claim_name(index: usize) -> String {
    format!("claim-{index:03}")
}

/// A claim as a user writes it: about 1 KB with kubectl's annotation.
fn claim_object(index: usize, rate: &str) -> Value {
    let name = claim_name(index);
    json!({
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "shop"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                        format!("{{\"apiVersion\":\"core.database-mesh.io/v1alpha1\",\"kind\":\"QoSClaim\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{NAMESPACE}\"}},\"spec\":{{\"trafficQoS\":{{\"name\":\"{name}\",\"qos_group\":{{\"rate\":\"{rate}\",\"ceil\":\"100mbit\"}},\"endpoints\":[{{\"host\":\"10.96.{index}.10\",\"port\":5432}}],\"priority\":\"guaranteed\"}}}}}}")}},
        "spec": {"trafficQoS": {
            "name": name,
            "qos_group": {"rate": rate, "ceil": "100mbit"},
            "endpoints": [{"host": format!("10.96.{index}.10"), "port": 5432}],
            "priority": "guaranteed",
        }},
    })
}

fn node_name(index: usize) -> String {
    format!("node-{index:05}")
}

/// What a node made of every claim: all applied, at these generations.
fn statuses(generations: &[i64]) -> BTreeMap<ClaimKey, ClaimStatus> {
    generations
        .iter()
        .enumerate()
        .map(|(index, generation)| {
            let key = ClaimKey::new(NAMESPACE, claim_name(index));
            let status = ClaimStatus {
                claim: key.clone(),
                phase: Phase::Applied,
                message: format!("class {} in force", index + 1),
                class_id: Some(index as u32 + 1),
                observed_generation: Some(*generation),
                mode: Some("htb"),
                rate_bytes: Some(1_250_000),
                ceil_bytes: Some(12_500_000),
                priority: Some("guaranteed"),
                client_prefixes: 0,
            };
            (key, status)
        })
        .collect()
}

/// The legacy design's body: one node's entry of `status.nodes[]`, as the
/// previous release's `StatusWriter` applied it.
fn legacy_entry(node: &str, generation: i64) -> Value {
    json!({
        "apiVersion": "core.database-mesh.io/v1alpha1",
        "kind": "QoSClaim",
        "status": {"nodes": [{
            "node": node, "phase": "Applied", "message": "class 1 in force",
            "observedGeneration": generation, "classId": 1,
            "lastTransitionTime": "2026-12-03T21:00:00Z",
        }]},
    })
}

struct Row {
    design: &'static str,
    nodes: usize,
    delta: Counters,
    largest: usize,
    converged: Duration,
}

/// Per-node entries: the claim starts with every node's entry (seeded, not
/// timed), then the change: every node applies its entry again.
async fn legacy(nodes: usize) -> Row {
    let server = ApiServer::default();
    server.add_counted_watchers("qosclaims", nodes as u64);
    let mut object = claim_object(0, "10mbit");
    object["status"]["nodes"] = (0..nodes)
        .map(|n| legacy_entry(&node_name(n), 1)["status"]["nodes"][0].clone())
        .collect();
    server.put("qosclaims", NAMESPACE, &claim_name(0), object);
    let before = server.counters();
    let start = Instant::now();
    server.put(
        "qosclaims",
        NAMESPACE,
        &claim_name(0),
        claim_object(0, "20mbit"),
    );
    let path = claim_status_path(NAMESPACE, &claim_name(0));
    let writes = (0..nodes).map(|n| {
        let server = server.clone();
        let path = path.clone();
        async move {
            tokio::time::sleep(SPREAD * n as u32 / nodes as u32).await;
            let body = legacy_entry(&node_name(n), 2);
            let code = server
                .send(
                    http::Method::PATCH,
                    &path,
                    "application/apply-patch+yaml",
                    &body,
                )
                .await;
            assert!(code.is_success(), "legacy apply: {code}");
        }
    });
    futures::future::join_all(writes).await;
    Row {
        design: "per-node entries",
        nodes,
        delta: server.counters().since(&before),
        largest: server.largest("qosclaims"),
        converged: start.elapsed(),
    }
}

/// Reports + aggregate: every node's report exists and the aggregate has
/// settled; then the change: every node's `ReportWriter` writes again, and
/// the aggregator tallies until the claim shows all N nodes at the new
/// generation, and then a renewal period more (to count any trailing
/// writes).
async fn reports(nodes: usize) -> Row {
    let server = ApiServer::default();
    // Every node but the aggregator's watches claims; the aggregator's own
    // claim watch is the real one below.
    server.add_counted_watchers("qosclaims", nodes as u64 - 1);
    for index in 0..CLAIMS {
        server.put(
            "qosclaims",
            NAMESPACE,
            &claim_name(index),
            claim_object(index, "10mbit"),
        );
    }
    let client = server.client();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let claims = KubeSource::start(&client, &[], changed.clone());
    while !claims.ready() {
        changed.notified().await;
    }
    let aggregator = Aggregator::new(
        client.clone(),
        DAEMON_NAMESPACE,
        &node_name(0),
        claims.claim_stores(),
    );
    let aggregating = tokio::spawn(aggregator.run());

    let mut writers: Vec<ReportWriter> = (0..nodes)
        .map(|n| ReportWriter::new(client.clone(), node_name(n), DAEMON_NAMESPACE.into()))
        .collect();
    let mut generations = vec![1_i64; CLAIMS];
    for chunk in writers.chunks_mut(256) {
        let now = statuses(&generations);
        futures::future::join_all(chunk.iter_mut().map(|w| w.write(&now))).await;
    }
    wait_for_aggregate(&server, nodes, 1).await;
    // Let trailing writes of the first convergence pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = server.counters();
    let start = Instant::now();
    server.put(
        "qosclaims",
        NAMESPACE,
        &claim_name(0),
        claim_object(0, "20mbit"),
    );
    generations[0] = 2;
    let now = statuses(&generations);
    let writes = writers.iter_mut().enumerate().map(|(n, writer)| {
        let now = &now;
        async move {
            tokio::time::sleep(SPREAD * n as u32 / nodes as u32).await;
            let written = writer.write(now).await.expect("a report write");
            assert!(written, "the changed report must be written");
        }
    });
    futures::future::join_all(writes).await;
    wait_for_aggregate(&server, nodes, 2).await;
    let converged = start.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let delta = server.counters().since(&before);
    aggregating.abort();
    Row {
        design: "reports + aggregate",
        nodes,
        delta,
        largest: server
            .largest("qosclaims")
            .max(server.largest("qosnodereports")),
        converged,
    }
}

/// Waits (up to 2 minutes) until claim 0's status shows all `nodes` at
/// `generation`.
async fn wait_for_aggregate(server: &ApiServer, nodes: usize, generation: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = server
            .object("qosclaims", NAMESPACE, &claim_name(0))
            .map(|c| c["status"].clone())
            .unwrap_or_default();
        if status["observedGeneration"] == generation && status["nodesApplied"] == nodes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the aggregate never reached {nodes} nodes at generation {generation}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .map(|list| {
            list.split(',')
                .map(|n| {
                    n.parse()
                        .expect("--nodes: a comma-separated list of counts")
                })
                .collect()
        })
        .unwrap_or_else(|| vec![100, 1000, 5000])
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();
    for nodes in sizes() {
        eprintln!("simulating {nodes} nodes: per-node entries");
        rows.push(legacy(nodes).await);
        eprintln!("simulating {nodes} nodes: reports + aggregate");
        rows.push(reports(nodes).await);
    }
    println!("## Kubernetes status at scale (simulated)\n");
    println!(
        "One claim's spec changed, applied by every node. {CLAIMS} claims; node writes spread \
         over {} s. Stand-in API server in process; the nodes' claim watches are counted \
         watchers, the aggregator's watches are real.\n",
        SPREAD.as_secs()
    );
    println!(
        "| nodes | design | requests (by verb) | bytes written | watch events delivered | \
         bytes delivered | largest object | change → status |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let verbs = row
            .delta
            .by_verb
            .iter()
            .map(|(verb, count)| format!("{verb} {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {} | {} ({verbs}) | {} | {} | {} | {} | {:.1} s |",
            row.nodes,
            row.design,
            row.delta.requests,
            human_bytes(row.delta.bytes_written),
            row.delta.events,
            human_bytes(row.delta.event_bytes),
            human_bytes(row.largest as u64),
            row.converged.as_secs_f64(),
        );
    }
}
