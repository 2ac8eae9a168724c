//! Prometheus metrics. Kernel counters are read from the per-CPU maps at
//! scrape time (a collector), so they are never stale and cost nothing
//! between scrapes. Labels come only from bounded sets: namespace, claim,
//! class, interface, direction, reason, validity.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};

use crate::{
    kernel::Dataplane,
    reconcile::agent::Agent,
    report::{ClassReport, CounterMap, NodeReport, ReadErrors},
};
use pisa_daemon_common::reason;

type Labels = Vec<(String, String)>;
/// One class metric: name, help, and how to read it from a sample.
type ClassMetric = (&'static str, &'static str, fn(&ClassReport) -> u64);
/// One class counter: name, help, and how to read it from the counters.
type CounterMetric = (
    &'static str,
    &'static str,
    fn(&pisa_daemon_common::ClassStats) -> u64,
);

/// Metrics the agent updates itself.
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_runs: Counter,
    pub reconcile_errors: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub claims: Family<Labels, Gauge>,
}

impl Metrics {
    pub fn new(collector: Box<dyn Collector>) -> Self {
        let mut registry = Registry::default();
        let reconcile_runs = Counter::default();
        registry.register(
            "pisa_reconcile_runs",
            "Reconcile runs (claims to kernel), successful or not",
            reconcile_runs.clone(),
        );
        let reconcile_errors = Family::<Labels, Counter>::default();
        registry.register(
            "pisa_reconcile_errors",
            "Failed reconcile runs by reason (source, interface, netlink, map, attach, kernel)",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "pisa_reconcile_duration_seconds",
            "Time one reconcile run took",
            reconcile_duration.clone(),
        );
        let claims = Family::<Labels, Gauge>::default();
        registry.register(
            "pisa_agent_claims",
            "Claims by validity (valid, invalid) in the last update",
            claims.clone(),
        );
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        registry.register("pisa_build_info", "Build information", build_info);
        registry.register_collector(collector);
        Self {
            registry,
            reconcile_runs,
            reconcile_errors,
            reconcile_duration,
            claims,
        }
    }

    /// Counts a failed reconcile (or a failed part of one) under `reason`.
    pub fn count_reconcile_error(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// Shows every reason at 0 from the start, so that `increase()` sees the
    /// first failure and dashboards have a series while all is well.
    pub fn declare_reconcile_error_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            self.reconcile_errors
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc_by(0);
        }
    }

    pub fn set_claims(&self, valid: usize, invalid: usize) {
        for (validity, count) in [("valid", valid), ("invalid", invalid)] {
            self.claims
                .get_or_create(&vec![("validity".into(), validity.into())])
                .set(count as i64);
        }
    }

    /// OpenMetrics text (what Prometheus asks for first).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics: `promtool check metrics`, curl, older scrapers.
    pub fn encode_classic(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_classic(&self.encode()?))
    }
}

/// OpenMetrics names a counter family without `_total` in HELP/TYPE; the
/// classic format names it like its samples. Also drops `# UNIT`/`# EOF`,
/// which the classic format does not have.
pub fn openmetrics_to_classic(text: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Renders a `NodeReport` (read at scrape time, under the agent's lock
/// for the map reads only) as series. A counter read that failed leaves
/// its series out of that scrape (Prometheus then sees them stale, not a
/// counter reset to zero); the report counted it, and
/// `pisa_metrics_read_errors_total{map}` shows the count.
pub struct KernelCollector<D: Dataplane + Send + 'static> {
    agent: Arc<Mutex<Agent<D>>>,
    read_errors: ReadErrors,
}

impl<D: Dataplane + Send + 'static> KernelCollector<D> {
    pub fn new(agent: Arc<Mutex<Agent<D>>>, read_errors: ReadErrors) -> Self {
        Self { agent, read_errors }
    }
}

impl<D: Dataplane + Send + 'static> std::fmt::Debug for KernelCollector<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCollector")
    }
}

fn class_labels(class: &ClassReport) -> Labels {
    vec![
        ("namespace".into(), class.claim.namespace.to_string()),
        ("claim".into(), class.claim.name.to_string()),
        ("class".into(), class.class_id.to_string()),
        ("mode".into(), class.mode.name().into()),
    ]
}

impl<D: Dataplane + Send + 'static> Collector for KernelCollector<D> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = {
            let Ok(agent) = self.agent.lock() else {
                return Ok(());
            };
            NodeReport::read(&agent, &CounterMap::ALL, &self.read_errors)
        };

        let gauges: [ClassMetric; 2] = [
            (
                "pisa_class_rate_bytes_per_second",
                "Configured guaranteed rate of the class, bytes per second on the wire",
                |c| c.rate_bytes,
            ),
            (
                "pisa_class_ceil_bytes_per_second",
                "Configured ceiling of the class, bytes per second on the wire",
                |c| c.ceil_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for class in &report.classes {
                ConstGauge::new(value(class) as i64)
                    .encode(family.encode_family(&class_labels(class))?)?;
            }
        }
        let counters: [CounterMetric; 4] = [
            (
                "pisa_class_bytes",
                "Bytes the class let through, as skb->len at tc egress before the qdisc \
                 (a GSO packet counts one set of headers)",
                |c| c.bytes,
            ),
            ("pisa_class_packets", "Packets the class let through", |c| {
                c.packets
            }),
            (
                "pisa_class_drops",
                "Packets the class dropped (police, EDT horizon)",
                |c| c.drops,
            ),
            (
                "pisa_class_delayed",
                "Packets sent with a future departure time (EDT)",
                |c| c.delayed,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for class in &report.classes {
                let Some(stats) = &class.counters else {
                    continue;
                };
                ConstCounter::new(value(stats))
                    .encode(family.encode_family(&class_labels(class))?)?;
            }
        }

        let reasons = report.counters.reasons.as_deref().unwrap_or_default();
        for (name, help, fail_open) in [
            (
                "pisa_dataplane_unmatched_packets",
                "Packets the program passed unshaped because no class claims them, by reason",
                false,
            ),
            (
                "pisa_dataplane_failopen_packets",
                "Packets the program could not parse and passed (fail open), by reason",
                true,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (index, count) in reasons.iter().enumerate() {
                if reason::is_fail_open(index as u32) != fail_open {
                    continue;
                }
                let labels: Labels = vec![("reason".into(), reason::NAMES[index].into())];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }

        {
            let mut family = encoder.encode_descriptor(
                "pisa_interface_attached",
                "1 for each interface the classifier is attached to",
                None,
                MetricType::Gauge,
            )?;
            for name in &report.interfaces {
                let labels: Labels = vec![("interface".into(), name.clone())];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "pisa_interface_link_rate_bytes",
                "Link rate (bytes/s) of each attached interface: its HTB root's rate and ceil; \
                 source is interface (--link-rate IFACE=RATE), flag (a bare --link-rate), \
                 device (the speed it reports) or fallback (10gbit)",
                None,
                MetricType::Gauge,
            )?;
            for (name, rate) in &report.link_rates {
                let labels: Labels = vec![
                    ("interface".into(), name.clone()),
                    ("source".into(), rate.source.name().into()),
                ];
                ConstGauge::new(rate.bytes as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "pisa_interface_guaranteed_rate_bytes",
                "The classes' rates added up (bytes/s), on each attached interface (every class \
                 applies on every interface); above pisa_interface_link_rate_bytes the link is \
                 oversubscribed and not every guarantee can hold at once",
                None,
                MetricType::Gauge,
            )?;
            for name in report.link_rates.keys() {
                let labels: Labels = vec![("interface".into(), name.clone())];
                ConstGauge::new(i64::try_from(report.guaranteed_bytes).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let ifaces = report.counters.interfaces.clone().unwrap_or_default();
        for (name, help, bytes) in [
            (
                "pisa_interface_packets",
                "Packets seen at the hook, per interface and direction",
                false,
            ),
            (
                "pisa_interface_bytes",
                "Bytes seen at the hook, per interface and direction",
                true,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (iface, stats) in &ifaces {
                let labels: Labels = vec![
                    ("interface".into(), iface.clone()),
                    ("direction".into(), "egress".into()),
                ];
                let value = if bytes { stats.bytes } else { stats.packets };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        encode_identity(&mut encoder, &report)?;
        encode_flow_tags(&mut encoder, &report)?;
        let mut family = encoder.encode_descriptor(
            "pisa_metrics_read_errors",
            "Reads of a kernel counter map that failed (their series were left out), by map",
            None,
            MetricType::Counter,
        )?;
        for (map, errors) in self.read_errors.counts() {
            let labels: Labels = vec![("map".into(), map.name().into())];
            ConstCounter::new(errors).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The flow-tag table: how full it is, and live tags evicted to make room.
fn encode_flow_tags(
    encoder: &mut DescriptorEncoder,
    report: &NodeReport,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in [
        (
            "pisa_flow_tags",
            "Connections tagged (by the proxy or SQL identity) and in force",
            report.active_tags,
        ),
        (
            "pisa_flow_tags_capacity",
            "Connections the flow-tag table holds (--max-flow-tags)",
            report.tag_capacity,
        ),
    ] {
        let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value as i64).encode(family)?;
    }
    let mut family = encoder.encode_descriptor(
        "pisa_flow_tags_evicted",
        "Live flow tags evicted to make room in a full table, by who had tagged them",
        None,
        MetricType::Counter,
    )?;
    let evictions = report.tag_evictions;
    for (origin, count) in [("proxy", evictions.proxy), ("sql", evictions.sql)] {
        let labels: Labels = vec![("origin".into(), origin.into())];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// SQL identity and client selectors: what became of connection starts
/// (every outcome declared, so a rate of 0 is visible), per claim, the
/// kernel's side, the start-to-tag latency, and client prefixes per claim.
fn encode_identity(
    encoder: &mut DescriptorEncoder,
    report: &NodeReport,
) -> Result<(), std::fmt::Error> {
    use crate::identity::Outcome;
    let identity = &report.identity;
    let mut family = encoder.encode_descriptor(
        "pisa_sql_identity_connections",
        "Connection starts (and closes) SQL identity handled, by outcome",
        None,
        MetricType::Counter,
    )?;
    for outcome in Outcome::ALL {
        let labels: Labels = vec![("outcome".into(), outcome.label().into())];
        let count = identity.node.get(&outcome).copied().unwrap_or(0);
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "pisa_sql_identity_claim_connections",
        "Connection starts to a claim's endpoints, by what SQL identity made of them",
        None,
        MetricType::Counter,
    )?;
    for (claim, counts) in &identity.claims {
        for (outcome, count) in counts {
            let labels: Labels = vec![
                ("namespace".into(), claim.namespace.to_string()),
                ("claim".into(), claim.name.to_string()),
                ("outcome".into(), outcome.label().into()),
            ];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
    }
    if let Some(kernel) = &report.counters.sql {
        let mut family = encoder.encode_descriptor(
            "pisa_sql_identity_kernel_events",
            "What the program did with connection starts and closes (starts_sent, \
             closes_sent) and those it let pass unread (throttled, ring_full, unreadable)",
            None,
            MetricType::Counter,
        )?;
        for (name, count) in pisa_daemon_common::sql_reason::NAMES.iter().zip(kernel) {
            let labels: Labels = vec![("reason".into(), (*name).into())];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
    }
    if let Some(summary) = &identity.latency_us {
        let mut family = encoder.encode_descriptor(
            "pisa_sql_identity_tag_latency_seconds",
            "From the program seeing a connection start to its tag being in place, over the \
             last identified connections, by quantile",
            None,
            MetricType::Gauge,
        )?;
        for (quantile, us) in [
            ("0.5", summary.p50),
            ("0.99", summary.p99),
            ("1", summary.max),
        ] {
            let labels: Labels = vec![("quantile".into(), quantile.into())];
            ConstGauge::new(us / 1e6).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "pisa_claim_client_prefixes",
        "Client prefixes a claim's client selectors put in force on this node",
        None,
        MetricType::Gauge,
    )?;
    for (claim, count) in &report.client_prefixes {
        let labels: Labels = vec![
            ("namespace".into(), claim.namespace.to_string()),
            ("claim".into(), claim.name.to_string()),
        ];
        ConstGauge::new(*count as i64).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::FakeDataplane, spec::Limits};

    fn metrics_over(dp: FakeDataplane) -> (Metrics, Arc<Mutex<Agent<FakeDataplane>>>) {
        let limits = Limits {
            max_classes: 10,
            edt_available: false,
            pod_selectors: false,
        };
        let agent = Arc::new(Mutex::new(Agent::new(dp, ["eth0".into()].into(), limits)));
        let claim = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
                     metadata: {name: db}\nspec:\n  trafficQoS:\n    name: db\n    \
                     qos_group: {rate: 10mbit}\n    endpoints: [{host: 10.0.0.5, port: 5432}]\n";
        {
            let mut agent = agent.lock().unwrap();
            agent.update(&[crate::spec::SourceSnapshot {
                name: "c.yaml".into(),
                documents: crate::spec::load_documents("c.yaml", claim),
            }]);
            agent.reconcile().unwrap();
        }
        let metrics = Metrics::new(Box::new(KernelCollector::new(
            agent.clone(),
            ReadErrors::default(),
        )));
        (metrics, agent)
    }

    #[test]
    fn a_failed_counter_read_leaves_the_series_out_and_is_counted_never_zeros() {
        let (metrics, agent) = metrics_over(FakeDataplane::default());
        let healthy = metrics.encode_classic().unwrap();
        assert!(healthy.contains("pisa_class_bytes_total{"), "{healthy}");
        assert!(healthy.contains("pisa_metrics_read_errors_total{map=\"CLASS_STATS\"} 0"));

        agent.lock().unwrap().dp.fail_stats = true;
        let failed = metrics.encode_classic().unwrap();
        assert!(
            !failed.contains("pisa_class_bytes_total{"),
            "no counter may read 0 for a failed read:\n{failed}"
        );
        assert!(
            failed.contains("pisa_class_rate_bytes_per_second{"),
            "configuration is still known"
        );
        assert!(
            failed.contains("pisa_metrics_read_errors_total{map=\"CLASS_STATS\"} 1"),
            "{failed}"
        );
    }

    #[test]
    fn classic_format_names_counter_families_like_their_samples() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\nx_bytes_total{a=\"1\"} 5\n\
                  # HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_classic(om),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total{a=\"1\"} 5\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
