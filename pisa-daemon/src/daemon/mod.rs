//! The node agent's control loop, as a library: a claim source in,
//! reconciles out, retried with backoff, until told to stop.
//!
//! One task owns reconciling. It reads the source, updates the agent and
//! converges the kernel, then waits for the next trigger:
//! - the source changed (a file edit, a watch event);
//! - `Control::Reload` (SIGHUP in the binary);
//! - a retry falling due after a failed reconcile or a failed status write;
//! - the periodic resync, which looks up followed interfaces again (a Pod
//!   route the CNI added late).
//!
//! The loop is generic over the `Dataplane` and the `ClaimSource`, so its
//! tests drive it with a fake kernel and a fake source under paused time.

mod backoff;
mod error;
mod held_file;
mod http;
mod identity_task;
mod memory;
mod node;
mod state_file;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

pub use backoff::Backoff;
pub use error::{Reason, ReconcileError};
pub use held_file::{HeldFile, HeldFileError};
pub use node::{run_node, ApiConfig, NodeConfig, NodeError};
pub use state_file::StateFile;
use tokio::{sync::mpsc, time::Instant};
use tracing::{error, info, warn};

use crate::{
    kernel::Dataplane,
    metrics::Metrics,
    reconcile::agent::Agent,
    report::{NodeReport, ReadErrors},
    source::ClaimSource,
    spec::units::format_rate,
    spec::{ClaimKey, ClaimStatus, Phase},
};

/// The agent, shared by the loop (which changes it), the API and the
/// metrics collector (which read it).
pub type SharedAgent<D> = Arc<Mutex<Agent<D>>>;

/// Retries of a failed reconcile or status write: 0.2 s doubling to 30 s.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often followed interfaces are looked up again without an event.
pub const RESYNC: Duration = Duration::from_secs(5);

/// What the loop can be told from outside (signals, in the binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Read the source again and reconcile (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT). Pinned kernel state stays in force.
    Shutdown,
}

/// The control loop over dataplane `D` and claim source `S`.
pub struct Daemon<D: Dataplane, S: ClaimSource> {
    agent: SharedAgent<D>,
    source: S,
    /// The operator's interfaces (`--iface`): failing to attach one fails
    /// the reconcile.
    required: BTreeSet<String>,
    /// The source's interfaces as last looked up (Pods); `None`: it
    /// follows none.
    followed: Option<BTreeSet<String>>,
    /// Followed interfaces that could not be attached last time.
    left_out: BTreeSet<String>,
    metrics: Arc<Metrics>,
    state_file: Option<StateFile>,
    /// Where the claims held at their last good version are kept for the
    /// next run.
    held_file: Option<HeldFile>,
    /// The last reconcile's error (text, reason), republished with counters.
    last_error: Option<(String, String)>,
    /// What the state file last showed of the counters that move between
    /// reconciles (`identity_mark`): the resync rewrites it only when they
    /// moved (10,000 claims are a 3 MB file).
    state_mark: Option<IdentityMark>,
    retry: Backoff,
    status_retry: Backoff,
    resync: Duration,
    /// Interfaces the last report found oversubscribed: a change is
    /// logged once, not at every reconcile.
    oversubscribed: BTreeSet<String>,
}

impl<D: Dataplane, S: ClaimSource> Daemon<D, S> {
    pub fn new(agent: SharedAgent<D>, source: S, metrics: Arc<Metrics>) -> Self {
        let required = agent
            .lock()
            .map(|agent| agent.ifaces.clone())
            .unwrap_or_default();
        Self {
            agent,
            source,
            required,
            followed: None,
            left_out: BTreeSet::new(),
            metrics,
            state_file: None,
            held_file: None,
            last_error: None,
            state_mark: None,
            retry: Backoff::new(RETRY_MIN, RETRY_MAX),
            status_retry: Backoff::new(RETRY_MIN, RETRY_MAX),
            resync: RESYNC,
            oversubscribed: BTreeSet::new(),
        }
    }

    /// Publishes the daemon's state to this file after every reconcile and
    /// at every resync (for `pisa-daemon status`).
    pub fn with_state_file(mut self, state_file: StateFile) -> Self {
        self.state_file = Some(state_file);
        self
    }

    /// Writes the claims held at their last good version to this file
    /// whenever they change, for the next run (`HeldFile::restore`).
    pub fn with_held_file(mut self, held_file: HeldFile) -> Self {
        self.held_file = Some(held_file);
        self
    }

    /// Looks up followed interfaces this often without an event.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Runs until `Control::Shutdown` or until `control` closes.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        self.refresh_followed();
        self.reconcile().await;
        let mut resync = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = [self.retry.due_at(), self.status_retry.due_at()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                command = control.recv() => match command {
                    Some(Control::Reload) => {
                        info!("reloading claims");
                        self.refresh_followed();
                        self.reconcile().await;
                    }
                    Some(Control::Shutdown) | None => break,
                },
                () = self.source.changed() => {
                    self.refresh_followed();
                    self.reconcile().await;
                }
                () = sleep_until(retry_at) => self.reconcile().await,
                _ = resync.tick() => {
                    if self.refresh_followed() {
                        self.reconcile().await;
                    } else {
                        // Counters (SQL identity's) move between reconciles.
                        self.refresh_state_file();
                    }
                }
            }
        }
        info!("stopping; pinned kernel state stays in force (`pisa-daemon cleanup` removes it)");
    }

    /// Looks up the source's followed interfaces again. Whether a reconcile
    /// is due: they changed, or some could not be attached last time.
    fn refresh_followed(&mut self) -> bool {
        let Some(found) = self.source.followed_interfaces() else {
            return false;
        };
        let changed = self.followed.as_ref() != Some(&found);
        self.followed = Some(found);
        changed || !self.left_out.is_empty()
    }

    /// One reconcile, then the statuses published to the source.
    async fn reconcile(&mut self) {
        let Some((statuses, freed_much)) = self.reconcile_locked() else {
            return;
        };
        let errors = self.source.publish(&statuses).await;
        // Returned only once the report and the statuses are gone too: at
        // 10,000 claims they are MiB of their own, and trimming before
        // they were freed left 9.5 MiB resident for good.
        drop(statuses);
        if freed_much {
            memory::return_freed_heap();
        }
        if errors.is_empty() {
            self.status_retry.succeeded();
            return;
        }
        let retry_in = self.status_retry.failed(Instant::now());
        for error in &errors {
            warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "status not written");
        }
    }

    /// One reconcile under the agent's lock; the claims' statuses and
    /// whether it took the full path over claims read again (which frees
    /// a parse and a plan of every claim), or `None` if the agent is
    /// unusable.
    fn reconcile_locked(&mut self) -> Option<(BTreeMap<ClaimKey, ClaimStatus>, bool)> {
        let started = std::time::Instant::now();
        let Ok(mut agent) = self.agent.lock() else {
            error!("agent lock poisoned");
            return None;
        };
        self.metrics.reconcile_runs.inc();
        if let Some(followed) = &self.followed {
            let left_out = agent.set_interfaces(&self.required, followed);
            for (iface, error) in &left_out {
                warn!(%iface, %error, "cannot attach to a Pod interface; left out until the next change or resync");
                self.metrics.count_reconcile_error(Reason::Attach.label());
            }
            self.left_out = left_out.into_iter().map(|(iface, _)| iface).collect();
        }
        let mut reread = false;
        let quick_before = agent.quick_updates;
        let result = match self.source.read() {
            Ok(Some(sources)) => {
                reread = true;
                agent.update(&sources);
                for message in &agent.source_errors {
                    warn!(%message, "claim source error");
                }
                for status in agent.statuses.values() {
                    if status.phase == Phase::Invalid {
                        warn!(claim = %status.claim, message = %status.message, "invalid claim");
                    }
                }
                let (valid, invalid) = agent.validity();
                self.metrics.set_claims(valid, invalid);
                agent.reconcile().map_err(ReconcileError::from)
            }
            // No claim source: only keep the interfaces attached; classes
            // and rules already pinned are left exactly as they are.
            Ok(None) => agent.attach_only().map_err(ReconcileError::from),
            Err(error) => Err(ReconcileError::from(error)),
        };
        let quick = agent.quick_updates > quick_before;
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(ops) => {
                if *ops > 0 {
                    info!(
                        ops,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        // Class-only edits, applied without planning every claim.
                        quick,
                        "reconciled"
                    );
                }
                self.retry.succeeded();
            }
            Err(error) => {
                let reason = error.reason();
                self.metrics.count_reconcile_error(reason.label());
                let retry_in = self.retry.failed(Instant::now());
                error!(%error, reason = reason.label(), retry_in_ms = retry_in.as_millis() as u64,
                       "reconcile failed");
            }
        }
        if let Some(held_file) = &mut self.held_file {
            held_file.save_if_changed(&agent);
        }
        self.last_error = result
            .as_ref()
            .err()
            .map(|e| (e.to_string(), e.reason().label().to_owned()));
        // One report for the state file and the claims' statuses.
        let report = match &self.state_file {
            Some(state_file) => {
                let report = state_file.report(&agent);
                state_file.write(&report, self.last_error.clone());
                self.state_mark = Some(identity_mark(&agent));
                report
            }
            None => NodeReport::read(&agent, &[], &ReadErrors::default()),
        };
        note_oversubscription(&mut self.oversubscribed, &report);
        // A quick edit frees MiB too at 10,000 claims (the source's new
        // documents, the statuses, the report): measured, ten quick edits
        // untrimmed took the daemon from 42.7 to 56.6 MiB resident.
        Some((report.claims, reread))
    }
}

impl<D: Dataplane, S: ClaimSource> Daemon<D, S> {
    /// Rewrites the state file if SQL identity's counts moved since it was
    /// last written; nothing else changes between reconciles.
    fn refresh_state_file(&mut self) {
        let (Some(state_file), Ok(agent)) = (&self.state_file, self.agent.lock()) else {
            return;
        };
        let mark = identity_mark(&agent);
        if self.state_mark.as_ref() == Some(&mark) {
            return;
        }
        state_file.publish(&agent, self.last_error.clone());
        self.state_mark = Some(mark);
    }
}

/// The connection starts SQL identity handled, and the kernel's side of
/// them (`None` when it cannot be read: then only the first changes it).
type IdentityMark = (u64, Option<Vec<u64>>);

fn identity_mark<D: Dataplane>(agent: &Agent<D>) -> IdentityMark {
    (
        agent.identity.node.values().sum(),
        agent.dp.sql_stats().ok(),
    )
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs an interface once when the classes' rates come to add up to more
/// than its link, and once when they no longer do; `known` holds the
/// interfaces the last report found oversubscribed.
fn note_oversubscription(known: &mut BTreeSet<String>, report: &NodeReport) {
    let now: BTreeSet<String> = report.oversubscribed().map(str::to_owned).collect();
    for iface in now.difference(known) {
        let link = report.link_rates.get(iface).map_or(0, |link| link.bytes);
        warn!(
            %iface,
            guaranteed = %format_rate(report.guaranteed_bytes),
            link = %format_rate(link),
            "oversubscribed: the classes' rates add up to more than the link, so not every \
             guarantee can hold while all classes are busy"
        );
    }
    for iface in known.difference(&now) {
        info!(%iface, "no longer oversubscribed");
    }
    *known = now;
}
