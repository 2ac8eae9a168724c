use super::*;
use crate::{
    kernel::FakeDataplane,
    spec::{load_documents, Limits, Phase, SourceSnapshot},
};

fn agent_with_one_claim() -> Agent<FakeDataplane> {
    let limits = Limits {
        max_classes: 10,
        edt_available: false,
        pod_selectors: false,
    };
    let mut agent = Agent::new(FakeDataplane::default(), ["eth0".into()].into(), limits);
    let claim = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
                 metadata: {name: orders, namespace: shop}\nspec:\n  trafficQoS:\n    \
                 name: orders\n    qos_group: {rate: 10mbit, ceil: 20mbit}\n    \
                 priority: guaranteed\n    \
                 endpoints: [{host: 10.0.0.5, port: 5432}]\n";
    agent.update(&[SourceSnapshot {
        name: "c.yaml".into(),
        documents: load_documents("c.yaml", claim),
    }]);
    agent.reconcile().unwrap();
    agent
}

#[test]
fn a_class_in_force_is_reported_with_its_claim_its_rates_and_its_counters() {
    let mut agent = agent_with_one_claim();
    let id = agent.plan.classes.keys().next().copied().unwrap();
    agent.dp.stats.insert(
        id,
        ClassStats {
            bytes: 1500,
            packets: 1,
            ..Default::default()
        },
    );
    let report = NodeReport::read(&agent, &CounterMap::ALL, &ReadErrors::default());
    assert_eq!(report.classes.len(), 1);
    let class = &report.classes[0];
    assert_eq!(class.claim, ClaimKey::new("shop", "orders"));
    assert_eq!(class.rate_bytes, 1_250_000);
    assert_eq!(class.ceil_bytes, 2_500_000);
    assert_eq!(class.priority_name, "guaranteed");
    assert_eq!(
        class.rules.len(),
        2,
        "direction both: requests and responses"
    );
    assert_eq!(class.counters.map(|c| c.bytes), Some(1500));
    assert_eq!(
        report.claims[&ClaimKey::new("shop", "orders")].phase,
        Phase::Applied
    );
    assert!(report.counters.failed.is_empty());
}

#[test]
fn counters_not_asked_for_are_not_read() {
    let agent = agent_with_one_claim();
    let report = NodeReport::read(&agent, &[], &ReadErrors::default());
    assert!(report.classes[0].counters.is_none());
    assert!(report.counters.reasons.is_none() && report.counters.sql.is_none());
}

#[test]
fn a_failed_read_is_counted_once_per_report_and_never_becomes_zeros() {
    let mut agent = agent_with_one_claim();
    agent.dp.fail_stats = true;
    let errors = ReadErrors::default();
    let shared = errors.clone();
    let report = NodeReport::read(&agent, &CounterMap::ALL, &errors);
    assert!(
        report.classes[0].counters.is_none(),
        "no zeros for a failed read"
    );
    assert_eq!(report.counters.failed, vec![CounterMap::ClassStats]);
    assert!(report.counters.reasons.is_some(), "other maps still read");
    NodeReport::read(&agent, &[CounterMap::ClassStats], &errors);
    let counts: BTreeMap<CounterMap, u64> = shared.counts().into_iter().collect();
    assert_eq!(
        counts[&CounterMap::ClassStats],
        2,
        "every clone shares the count"
    );
    assert_eq!(counts[&CounterMap::ReasonStats], 0);
}
