//! The loop against a fake kernel and a fake source, under paused time:
//! timings (debounce, backoff) are exact, and nothing sleeps for real.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
};

use super::*;
use crate::{
    kernel::FakeDataplane,
    metrics::KernelCollector,
    source::{ClaimSource, SourceError},
    spec::{load_documents, Limits, SourceSnapshot},
};

const LIMITS: Limits = Limits {
    max_classes: 100,
    edt_available: false,
    pod_selectors: false,
};

/// A claim on its own endpoint (10.0.0.<first letter>).
fn claim(name: &str, rate: &str) -> String {
    let host = name.bytes().next().unwrap_or(0);
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}}}\n\
         spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}}}\n    \
         endpoints: [{{host: 10.0.0.{host}, port: 5432}}]\n---\n"
    )
}

/// What the fake source holds; the test changes it, the loop reads it.
#[derive(Default)]
struct SourceState {
    yaml: String,
    unreadable: bool,
    followed: Option<BTreeSet<String>>,
    /// Publishes that fail before one succeeds.
    publish_failures: usize,
    published: Vec<BTreeMap<ClaimKey, ClaimStatus>>,
}

#[derive(Clone, Default)]
struct FakeSource {
    state: Arc<Mutex<SourceState>>,
    changed: Arc<Notify>,
}

impl FakeSource {
    fn edit(&self, change: impl FnOnce(&mut SourceState)) {
        change(&mut self.state.lock().unwrap());
    }

    /// Changes the source and says so, as a watch event or a file edit does.
    fn change(&self, change: impl FnOnce(&mut SourceState)) {
        self.edit(change);
        self.changed.notify_one();
    }
}

impl ClaimSource for FakeSource {
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError> {
        let state = self.state.lock().unwrap();
        if state.unreadable {
            return Err(SourceError::NotFound {
                path: "claims.yaml".into(),
            });
        }
        Ok(Some(vec![SourceSnapshot {
            name: "claims.yaml".into(),
            documents: load_documents("claims.yaml", &state.yaml),
        }]))
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        let changed = self.changed.clone();
        async move { changed.notified().await }
    }

    fn followed_interfaces(&mut self) -> Option<BTreeSet<String>> {
        self.state.lock().unwrap().followed.clone()
    }

    fn publish(
        &mut self,
        statuses: &BTreeMap<ClaimKey, ClaimStatus>,
    ) -> impl Future<Output = Vec<String>> + Send {
        let mut state = self.state.lock().unwrap();
        state.published.push(statuses.clone());
        let errors = if state.publish_failures > 0 {
            state.publish_failures -= 1;
            vec!["500 Internal Server Error".to_owned()]
        } else {
            Vec::new()
        };
        std::future::ready(errors)
    }
}

struct Harness {
    agent: SharedAgent<FakeDataplane>,
    source: FakeSource,
    metrics: Arc<Metrics>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl Harness {
    /// Starts the loop over `yaml`, with `--iface eth0`.
    fn start(yaml: &str, prepare: impl FnOnce(&mut SourceState, &mut FakeDataplane)) -> Self {
        let source = FakeSource::default();
        let mut dp = FakeDataplane::default();
        source.edit(|state| {
            state.yaml = yaml.to_owned();
            prepare(state, &mut dp);
        });
        let agent = Arc::new(Mutex::new(Agent::new(
            dp,
            ["eth0".to_owned()].into(),
            LIMITS,
        )));
        let metrics = Arc::new(Metrics::new(Box::new(KernelCollector::new(
            agent.clone(),
            crate::report::ReadErrors::default(),
        ))));
        let (control, commands) = mpsc::channel(4);
        let daemon = Daemon::new(agent.clone(), source.clone(), metrics.clone());
        let task = tokio::spawn(daemon.run(commands));
        Self {
            agent,
            source,
            metrics,
            control,
            task,
        }
    }

    /// The rates of the classes in the kernel, by claim name.
    fn rates(&self) -> BTreeMap<String, u64> {
        let agent = self.agent.lock().unwrap();
        agent
            .plan
            .classes
            .values()
            .map(|p| {
                let rate = agent.dp.classes[&p.spec.class_id].rate_bytes;
                (p.claim.name.to_string(), rate)
            })
            .collect()
    }

    fn with_dp<T>(&self, f: impl FnOnce(&mut FakeDataplane) -> T) -> T {
        f(&mut self.agent.lock().unwrap().dp)
    }

    fn status(&self, name: &str) -> ClaimStatus {
        self.agent.lock().unwrap().statuses[&ClaimKey::new("default", name)].clone()
    }

    fn errors(&self, reason: Reason) -> u64 {
        self.metrics
            .reconcile_errors
            .get_or_create(&vec![("reason".into(), reason.label().into())])
            .get()
    }

    fn runs(&self) -> u64 {
        self.metrics.reconcile_runs.get()
    }
}

fn rates(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, r)| (n.to_string(), *r)).collect()
}

/// Lets the loop run for `ms` of (paused, so exact) time.
async fn after_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_source_change_reaches_the_kernel_and_touches_only_its_class() {
    let h = Harness::start(&(claim("a", "10mbit") + &claim("b", "20mbit")), |_, _| {});
    after_ms(10).await;
    assert_eq!(h.rates(), rates(&[("a", 1_250_000), ("b", 2_500_000)]));
    assert_eq!(h.status("a").phase, Phase::Applied);
    h.with_dp(|dp| dp.log.clear());

    h.source
        .change(|s| s.yaml = claim("a", "30mbit") + &claim("b", "20mbit"));
    after_ms(10).await;
    assert_eq!(h.rates(), rates(&[("a", 3_750_000), ("b", 2_500_000)]));
    let log = h.with_dp(|dp| dp.log.clone());
    assert_eq!(log.len(), 1, "one class changed in place: {log:?}");
    assert!(log[0].starts_with("put_class "), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_source_keeps_the_claims_in_force_and_is_retried() {
    let h = Harness::start(&claim("a", "10mbit"), |_, _| {});
    after_ms(10).await;
    h.source.change(|s| s.unreadable = true);
    after_ms(10).await;
    assert_eq!(
        h.rates(),
        rates(&[("a", 1_250_000)]),
        "the claims in force stay"
    );
    assert_eq!(h.errors(Reason::Source), 1);
    // Retried by itself (backoff), and recovers once readable.
    h.source.edit(|s| {
        s.unreadable = false;
        s.yaml = claim("a", "20mbit");
    });
    after_ms(250).await;
    assert_eq!(h.rates(), rates(&[("a", 2_500_000)]));
    assert_eq!(h.errors(Reason::Source), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_claim_keeps_its_last_good_version() {
    let h = Harness::start(&(claim("a", "10mbit") + &claim("b", "1mbit")), |_, _| {});
    after_ms(10).await;
    h.source
        .change(|s| s.yaml = claim("a", "10mps") + &claim("b", "2mbit"));
    after_ms(10).await;
    assert_eq!(
        h.rates(),
        rates(&[("a", 1_250_000), ("b", 250_000)]),
        "a keeps 10mbit, b moves"
    );
    let a = h.status("a");
    assert_eq!(a.phase, Phase::Invalid);
    assert!(a.message.contains("unknown unit `mps`"), "{}", a.message);
    assert!(a.message.contains("the last good version stays in force"));
    // An invalid claim is not a failed reconcile: nothing to retry.
    assert_eq!(Reason::ALL.map(|r| h.errors(r)), [0; 6]);
}

#[tokio::test(start_paused = true)]
async fn a_kernel_error_is_retried_with_doubling_backoff_until_it_recovers() {
    // eth0 does not exist (yet): every attach fails.
    let h = Harness::start(&claim("a", "10mbit"), |_, dp| {
        dp.vanished.insert("eth0".into());
    });
    after_ms(700).await;
    assert!(h.errors(Reason::Interface) >= 2, "retried by itself");
    let a = h.status("a");
    assert_eq!(a.phase, Phase::Pending);
    assert!(
        a.message.contains("kernel update failed, retrying"),
        "{}",
        a.message
    );
    // The interface appears; the next retry converges and stops retrying.
    h.with_dp(|dp| dp.vanished.clear());
    after_ms(30_000).await;
    assert_eq!(h.status("a").phase, Phase::Applied);
    assert_eq!(h.rates(), rates(&[("a", 1_250_000)]));
    let runs = h.runs();
    after_ms(60_000).await;
    assert_eq!(h.runs(), runs, "no retries once recovered");
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_between_retries() {
    let h = Harness::start(&claim("a", "10mbit"), |_, dp| {
        dp.vanished.insert("eth0".into());
    });
    let start = tokio::time::Instant::now();
    let mut failures = Vec::new();
    for at_ms in [100, 300, 700, 1500, 3100] {
        tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
        failures.push(h.errors(Reason::Interface));
    }
    // Failed at 0 ms; retried at 200, 600, 1400 and 3000 ms.
    assert_eq!(failures, [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_followed_interface_that_vanishes_is_left_out_and_the_rest_converges() {
    let h = Harness::start(&claim("a", "10mbit"), |s, dp| {
        s.followed = Some(["veth-a".to_owned(), "veth-b".to_owned()].into());
        dp.vanished.insert("veth-b".into());
    });
    after_ms(10).await;
    let ifaces = h.with_dp(|dp| dp.ifaces.clone());
    assert_eq!(ifaces, ["eth0".to_owned(), "veth-a".to_owned()].into());
    assert_eq!(h.status("a").phase, Phase::Applied);
    assert_eq!(h.errors(Reason::Attach), 1);
    // The resync tries it again while it is left out...
    after_ms(RESYNC.as_millis() as u64).await;
    assert_eq!(h.errors(Reason::Attach), 2);
    // ...and once its Pod is gone, it is no longer wanted.
    h.source
        .edit(|s| s.followed = Some(["veth-a".to_owned()].into()));
    after_ms(RESYNC.as_millis() as u64).await;
    assert_eq!(h.errors(Reason::Attach), 2);
    // veth-a goes too: detached on the next resync.
    h.source.edit(|s| s.followed = Some(BTreeSet::new()));
    after_ms(RESYNC.as_millis() as u64).await;
    let ifaces = h.with_dp(|dp| dp.ifaces.clone());
    assert_eq!(ifaces, ["eth0".to_owned()].into());
}

#[tokio::test(start_paused = true)]
async fn reload_reads_the_source_again_without_a_change_event() {
    let h = Harness::start(&claim("a", "10mbit"), |_, _| {});
    after_ms(10).await;
    // Edited without an event (a change the poll would miss): SIGHUP.
    h.source.edit(|s| s.yaml = claim("a", "40mbit"));
    after_ms(1000).await;
    assert_eq!(h.rates(), rates(&[("a", 1_250_000)]));
    h.control.send(Control::Reload).await.unwrap();
    after_ms(10).await;
    assert_eq!(h.rates(), rates(&[("a", 5_000_000)]));
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_loop_and_leaves_the_kernel_state() {
    let h = Harness::start(&claim("a", "10mbit"), |_, _| {});
    after_ms(10).await;
    h.control.send(Control::Shutdown).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), h.task)
        .await
        .expect("the loop stops")
        .expect("the loop does not panic");
    let agent = h.agent.lock().unwrap();
    assert_eq!(agent.dp.classes.len(), 1, "kernel state stays in force");
    assert!(agent.dp.ifaces.contains("eth0"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_status_write_is_retried_with_backoff() {
    let h = Harness::start(&claim("a", "10mbit"), |s, _| s.publish_failures = 2);
    after_ms(10).await;
    assert_eq!(h.source.state.lock().unwrap().published.len(), 1);
    after_ms(200).await;
    assert_eq!(h.source.state.lock().unwrap().published.len(), 2);
    after_ms(400).await;
    {
        let state = h.source.state.lock().unwrap();
        assert_eq!(state.published.len(), 3, "retried until written");
        let last = &state.published[2][&ClaimKey::new("default", "a")];
        assert_eq!(last.phase, Phase::Applied);
    }
    let runs = h.runs();
    after_ms(60_000).await;
    assert_eq!(h.runs(), runs, "nothing more to retry");
}
