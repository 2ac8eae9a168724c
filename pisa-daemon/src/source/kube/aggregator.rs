//! The status aggregator: every daemon runs it, and only the holder of the
//! `pisa-status` Lease acts. The holder watches the nodes' reports (nobody
//! else does), tallies them per claim (`aggregate`) and writes a claim's
//! status only when its aggregate changed, at most once a settle period.
//! So a change applied by N nodes costs N small report writes and a few
//! status writes, not N writes into an object every node watches.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    runtime::{reflector, watcher},
    Client,
};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    aggregate::{claim_status, tally},
    claim_resource,
    lease::{LeaderLease, RENEW_EVERY},
    now_rfc3339, spawn_reflector, store_ready,
};
use crate::spec::{ClaimKey, QoSClaimStatus, QoSNodeReportResource};

/// The Lease the aggregators compete for, in the daemon's namespace.
pub const STATUS_LEASE: &str = "pisa-status";
/// How long a burst of report changes may settle before a pass; also the
/// most often one claim's status is written.
pub const AGGREGATE_SETTLE: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub claims: usize,
    pub written: usize,
    pub failed: usize,
}

/// One daemon's aggregator: its Lease, and (while leading) the reports.
pub struct Aggregator {
    client: Client,
    namespace: String,
    claims: Vec<reflector::Store<DynamicObject>>,
    lease: LeaderLease,
    reports: OnceLock<reflector::Store<QoSNodeReportResource>>,
    reports_changed: Arc<Notify>,
    /// What this aggregator last wrote per claim: the watch may not have
    /// brought its own write back yet.
    written: BTreeMap<ClaimKey, QoSClaimStatus>,
    last_renewal: Option<Instant>,
    renew_every: Duration,
    settle: Duration,
}

impl Aggregator {
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        claims: Vec<reflector::Store<DynamicObject>>,
    ) -> Self {
        Self {
            lease: LeaderLease::new(client.clone(), namespace, STATUS_LEASE, identity),
            client,
            namespace: namespace.to_owned(),
            claims,
            reports: OnceLock::new(),
            reports_changed: Arc::new(Notify::new()),
            written: BTreeMap::new(),
            last_renewal: None,
            renew_every: RENEW_EVERY,
            settle: AGGREGATE_SETTLE,
        }
    }

    /// A shorter lease (renewed three times in its duration, as the
    /// default 15 s one is every 5 s) and settle period, for tests.
    pub fn with_timing(mut self, lease: Duration, settle: Duration) -> Self {
        self.lease = self.lease.with_duration(lease);
        self.renew_every = lease / 3;
        self.settle = settle;
        self
    }

    pub fn leading(&self) -> bool {
        self.lease.leading()
    }

    /// Runs until the task is dropped: renews or contends for the Lease
    /// every few seconds, and while leading makes a pass after each settled
    /// burst of report changes (and at each renewal, which also catches
    /// claim changes that moved no report).
    pub async fn run(mut self) {
        loop {
            self.renew_if_due().await;
            if self.leading() {
                self.pass().await;
            }
            tokio::select! {
                () = self.reports_changed.notified() => tokio::time::sleep(self.settle).await,
                () = tokio::time::sleep(self.renew_every) => {}
            }
        }
    }

    /// Contends for or renews the Lease if the last attempt is older than
    /// the renewal period.
    pub async fn renew_if_due(&mut self) {
        if self
            .last_renewal
            .is_some_and(|at| at.elapsed() < self.renew_every)
        {
            return;
        }
        let was_leading = self.leading();
        self.last_renewal = Some(Instant::now());
        match self.lease.try_lead().await {
            Ok(true) if !was_leading => {
                info!(
                    lease = STATUS_LEASE,
                    "leading: aggregating the nodes' reports into claim statuses"
                );
                self.written.clear();
            }
            Ok(false) if was_leading => info!(lease = STATUS_LEASE, "no longer leading"),
            Ok(_) => {}
            Err(error) => {
                warn!(lease = STATUS_LEASE, %error, "cannot read or renew the Lease; not aggregating")
            }
        }
    }

    fn reports(&self) -> &reflector::Store<QoSNodeReportResource> {
        self.reports.get_or_init(|| {
            spawn_reflector(
                Api::namespaced(self.client.clone(), &self.namespace),
                watcher::Config::default(),
                reflector::store::Writer::default(),
                self.reports_changed.clone(),
                "QoSNodeReport",
            )
        })
    }

    /// Tallies every claim and writes the statuses that changed. Nothing
    /// until the reports have listed once (a partial picture would flap
    /// every claim's counts).
    pub async fn pass(&mut self) -> Pass {
        let reports = self.reports().clone();
        if !store_ready(&reports) || !self.claims.iter().all(store_ready) {
            return Pass::default();
        }
        let claims: Vec<Arc<DynamicObject>> = self.claims.iter().flat_map(|s| s.state()).collect();
        let mut generations = BTreeMap::new();
        let mut stored = BTreeMap::new();
        for claim in &claims {
            let (Some(namespace), Some(name)) = (&claim.metadata.namespace, &claim.metadata.name)
            else {
                continue;
            };
            let key = ClaimKey::new(namespace, name);
            generations.insert(key.clone(), claim.metadata.generation);
            stored.insert(key, claim.data.get("status").cloned());
        }
        let reports = reports.state();
        let tallies = tally(&generations, reports.iter().map(|r| &r.spec));
        self.written.retain(|key, _| generations.contains_key(key));
        let now = now_rfc3339();
        let mut pass = Pass {
            claims: generations.len(),
            ..Pass::default()
        };
        for (key, tally) in &tallies {
            let raw = stored.get(key).cloned().flatten();
            let previous: Option<QoSClaimStatus> = raw
                .as_ref()
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let legacy_entries = previous.as_ref().is_some_and(|p| !p.nodes.is_empty());
            let base = self.written.get(key).or(previous.as_ref());
            let status = claim_status(generations[key], tally, base, &now);
            let unchanged = |other: Option<&QoSClaimStatus>| {
                other.is_some_and(|o| {
                    QoSClaimStatus {
                        nodes: Vec::new(),
                        ..o.clone()
                    } == status
                })
            };
            if self.written.get(key) == Some(&status)
                || (unchanged(previous.as_ref()) && !legacy_entries)
            {
                continue;
            }
            match self.write(key, &status).await {
                Ok(()) => {
                    pass.written += 1;
                    self.written.insert(key.clone(), status);
                }
                Err(error) => {
                    pass.failed += 1;
                    warn!(claim = %key, %error, "writing the claim's aggregate status");
                }
            }
        }
        pass
    }

    /// A merge patch of the status subresource: the aggregator is its only
    /// writer, so the conditions list is replaced whole, and the deprecated
    /// per-node entries of earlier releases are cleared with it.
    async fn write(&self, key: &ClaimKey, status: &QoSClaimStatus) -> Result<(), kube::Error> {
        let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
        if let Some(fields) = body.as_object_mut() {
            fields.insert("nodes".into(), serde_json::Value::Null);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &claim_resource());
        api.patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": body })),
        )
        .await
        .map(|_| ())
    }
}
