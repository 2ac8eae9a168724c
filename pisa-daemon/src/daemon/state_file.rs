//! The state file `pisa-daemon status` reads when the API does not answer:
//! rewritten after every reconcile.

use std::path::PathBuf;

use tracing::warn;

use super::ReconcileError;
use crate::{
    kernel::Dataplane,
    reconcile::agent::Agent,
    state::{
        self, LatencySummary, PublishedClaim, PublishedClass, PublishedIdentity, PublishedState,
    },
};

/// Where the state goes, and the bpffs root it describes.
#[derive(Clone, Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub bpffs: PathBuf,
}

impl StateFile {
    /// Writes the agent's state and the last reconcile's error. A failed
    /// write is logged: the state file is a convenience, never a reason to
    /// stop shaping.
    pub fn publish<D: Dataplane>(&self, agent: &Agent<D>, error: Option<&ReconcileError>) {
        self.publish_error(
            agent,
            error.map(|e| (e.to_string(), e.reason().label().to_owned())),
        );
    }

    /// As `publish`, with the error already rendered (text, reason label):
    /// the periodic refresh republishes the last one.
    pub fn publish_error<D: Dataplane>(&self, agent: &Agent<D>, error: Option<(String, String)>) {
        let state = PublishedState {
            pid: std::process::id(),
            bpffs: self.bpffs.clone(),
            interfaces: agent.ifaces.iter().cloned().collect(),
            classes: agent
                .plan
                .classes
                .values()
                .map(|p| PublishedClass {
                    claim: p.claim.to_string(),
                    class_id: p.spec.class_id,
                    mode: p.spec.mode.name().into(),
                    rate_bytes: p.spec.rate_bytes,
                    ceil_bytes: p.spec.ceil_bytes,
                    priority: p.spec.priority,
                })
                .collect(),
            claims: agent.statuses.values().map(PublishedClaim::from).collect(),
            source_errors: agent.source_errors.clone(),
            last_error: error.as_ref().map(|(text, _)| text.clone()),
            last_error_reason: error.map(|(_, reason)| reason),
            identity: published_identity(agent),
        };
        if let Err(error) = state::write(&self.path, &state) {
            warn!(%error, "could not publish state for `pisa-daemon status`");
        }
    }
}

fn published_identity<D: Dataplane>(agent: &Agent<D>) -> PublishedIdentity {
    let stats = &agent.identity;
    let labelled = |counts: &std::collections::BTreeMap<crate::identity::Outcome, u64>| {
        counts
            .iter()
            .map(|(outcome, n)| (outcome.label().to_owned(), *n))
            .collect()
    };
    let kernel = match agent.dp.sql_stats() {
        Ok(values) => pisa_daemon_common::sql_reason::NAMES
            .iter()
            .zip(values)
            .map(|(name, n)| ((*name).to_owned(), n))
            .collect(),
        Err(error) => {
            // Left out rather than shown as zeros.
            warn!(%error, "could not read the SQL-identity counters");
            Default::default()
        }
    };
    PublishedIdentity {
        outcomes: labelled(&stats.node),
        claims: stats
            .claims
            .iter()
            .map(|(claim, counts)| (claim.to_string(), labelled(counts)))
            .collect(),
        kernel,
        tag_latency_us: stats.latency_us().map(|l| LatencySummary {
            samples: l.samples,
            p50: l.p50,
            p99: l.p99,
            max: l.max,
        }),
    }
}
