//! The status Lease and the aggregator with several daemons at once,
//! against the in-process stand-in API server of the status simulation
//! (`pisa-daemon/benches/common/apiserver.rs`): exactly one candidate leads,
//! a follower takes over only after the holder has stopped renewing for a
//! whole lease, and when the leading aggregator goes, another one takes
//! over and keeps the claims' status current. No root needed: no kernel.

#[path = "../pisa-daemon/benches/common/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::time::{Duration, Instant};

use apiserver::ApiServer;
use pisa_daemon::{
    source::kube::{Aggregator, KubeSource, LeaderLease, ReportWriter},
    spec::{ClaimKey, ClaimStatus, Phase},
};
use serde_json::{json, Value};

const NS: &str = "pisa-system";
const LEASE: Duration = Duration::from_secs(1);

fn lease(server: &ApiServer) -> Value {
    server
        .object("leases", NS, "pisa-status")
        .expect("the Lease exists")
}

#[tokio::test]
async fn one_candidate_leads_and_another_takes_over_only_after_a_whole_lease() {
    let server = ApiServer::default();
    let client = server.client();
    let mut a = LeaderLease::new(client.clone(), NS, "pisa-status", "node-a").with_duration(LEASE);
    let mut b = LeaderLease::new(client.clone(), NS, "pisa-status", "node-b").with_duration(LEASE);
    // Both race for a Lease that does not exist yet: one create wins.
    let (led_a, led_b) = tokio::join!(a.try_lead(), b.try_lead());
    let (led_a, led_b) = (led_a.expect("a"), led_b.expect("b"));
    assert!(led_a ^ led_b, "exactly one leads: a {led_a}, b {led_b}");
    let (mut holder, mut other, holder_name) = if led_a {
        (a, b, "node-a")
    } else {
        (b, a, "node-b")
    };
    assert_eq!(lease(&server)["spec"]["holderIdentity"], holder_name);

    // The holder renews; the other follows as long as it sees renewals.
    for _ in 0..4 {
        tokio::time::sleep(LEASE / 2).await;
        assert!(holder.try_lead().await.unwrap(), "the holder renews");
        assert!(
            !other.try_lead().await.unwrap(),
            "a renewed Lease is not taken"
        );
    }
    assert_eq!(lease(&server)["spec"]["leaseTransitions"], 0);

    // The holder stops renewing: the other waits a whole lease from when it
    // first saw the last renewal, then takes over.
    assert!(!other.try_lead().await.unwrap());
    let stopped = Instant::now();
    while !other.try_lead().await.unwrap() {
        assert!(stopped.elapsed() < LEASE * 3, "never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stopped.elapsed() >= LEASE,
        "took over after {:?}",
        stopped.elapsed()
    );
    let taken = lease(&server);
    assert_ne!(taken["spec"]["holderIdentity"], holder_name);
    assert_eq!(taken["spec"]["leaseTransitions"], 1);
    // The old holder comes back: it sees another holder and follows.
    assert!(!holder.try_lead().await.unwrap());
    assert!(!holder.leading());
}

fn claim(rate: &str) -> Value {
    json!({
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"trafficQoS": {"name": "orders", "qos_group": {"rate": rate},
                                "endpoints": [{"host": "10.0.0.5", "port": 5432}]}},
    })
}

fn statuses(generation: i64, phase: Phase) -> std::collections::BTreeMap<ClaimKey, ClaimStatus> {
    let key = ClaimKey::new("shop", "orders");
    let status = ClaimStatus {
        claim: key.clone(),
        phase,
        message: "m".into(),
        class_id: Some(1),
        observed_generation: Some(generation),
        mode: None,
        rate_bytes: None,
        ceil_bytes: None,
        priority: None,
        client_prefixes: 0,
    };
    [(key, status)].into()
}

async fn claim_status_where(server: &ApiServer, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = server
            .object("qosclaims", "shop", "orders")
            .map(|c| c["status"].clone())
            .unwrap_or_default();
        if check(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn when_the_leading_aggregator_goes_another_keeps_the_status_current() {
    let server = ApiServer::default();
    let mut old = claim("10mbit");
    // An earlier release's per-node entry: the aggregate clears it.
    old["status"] = json!({"nodes": [{"node": "node-a", "phase": "Applied"}]});
    server.put("qosclaims", "shop", "orders", old);
    let client = server.client();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let claims = KubeSource::start(&client, &[], changed.clone());
    while !claims.ready() {
        changed.notified().await;
    }
    let settle = Duration::from_millis(100);
    let start = |node: &str| {
        tokio::spawn(
            Aggregator::new(client.clone(), NS, node, claims.claim_stores())
                .with_timing(LEASE, settle)
                .run(),
        )
    };
    let first = start("node-a");
    let mut reports: Vec<ReportWriter> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| ReportWriter::new(client.clone(), n.to_string(), NS.into()))
        .collect();
    for report in &mut reports {
        report.write(&statuses(1, Phase::Applied)).await.unwrap();
    }
    claim_status_where(&server, "3 nodes applied", |s| {
        s["nodesApplied"] == 3 && s["conditions"][0]["status"] == "True"
    })
    .await;
    let status = server.object("qosclaims", "shop", "orders").unwrap()["status"].clone();
    assert!(
        status.get("nodes").is_none(),
        "legacy entries cleared: {status}"
    );
    assert_eq!(lease(&server)["spec"]["holderIdentity"], "node-a");

    // A second aggregator starts: it follows. With nothing changing, the
    // leader keeps its Lease by renewing alone, and nobody writes status.
    let second = start("node-b");
    let written = server.counters().by_verb.get("patch").copied();
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(lease(&server)["spec"]["holderIdentity"], "node-a");
    assert_eq!(lease(&server)["spec"]["leaseTransitions"], 0);
    assert_eq!(server.counters().by_verb.get("patch").copied(), written);

    // The leader goes (its daemon stops). The claim changes; node-c
    // rejects the new generation, the others apply it.
    first.abort();
    server.put("qosclaims", "shop", "orders", claim("20mbit"));
    reports[0]
        .write(&statuses(2, Phase::Applied))
        .await
        .unwrap();
    reports[1]
        .write(&statuses(2, Phase::Applied))
        .await
        .unwrap();
    reports[2]
        .write(&statuses(2, Phase::Invalid))
        .await
        .unwrap();
    claim_status_where(&server, "the new leader's aggregate", |s| {
        s["observedGeneration"] == 2 && s["nodesApplied"] == 2 && s["nodesFailed"] == 1
    })
    .await;
    let taken = lease(&server);
    assert_eq!(taken["spec"]["holderIdentity"], "node-b");
    assert_eq!(taken["spec"]["leaseTransitions"], 1);
    let status = server.object("qosclaims", "shop", "orders").unwrap()["status"].clone();
    assert_eq!(status["conditions"][1]["type"], "Degraded");
    assert_eq!(status["conditions"][1]["status"], "True");
    assert!(
        status["conditions"][1]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rejected on node-c: ")),
        "{status}"
    );
    second.abort();
}
