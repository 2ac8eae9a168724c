//! The state file `pisa-daemon status` reads when the API does not answer:
//! rewritten after every reconcile.

use std::{collections::BTreeMap, path::PathBuf};

use pisa_daemon_common::sql_reason;

use tracing::warn;

use crate::{
    identity::Outcome,
    kernel::Dataplane,
    reconcile::agent::Agent,
    report::{CounterMap, NodeReport, ReadErrors},
    state::{
        self, LatencySummary, PublishedClaim, PublishedClass, PublishedIdentity, PublishedLinkRate,
        PublishedState,
    },
};

/// Where the state goes, and the bpffs root it describes.
#[derive(Clone, Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub bpffs: PathBuf,
    pub read_errors: ReadErrors,
}

impl StateFile {
    /// Writes the agent's state and the last reconcile's error (text,
    /// reason label). A failed write is logged: the state file is a
    /// convenience, never a reason to stop shaping.
    pub fn publish<D: Dataplane>(&self, agent: &Agent<D>, error: Option<(String, String)>) {
        self.write(&self.report(agent), error);
    }

    /// The report the state file renders: the agent's state and the SQL
    /// identity counters.
    pub fn report<D: Dataplane>(&self, agent: &Agent<D>) -> NodeReport {
        NodeReport::read(agent, &[CounterMap::SqlStats], &self.read_errors)
    }

    /// Writes `report` with the last reconcile's error (text, reason).
    pub fn write(&self, report: &NodeReport, error: Option<(String, String)>) {
        let state = self.render(report, error);
        if let Err(error) = state::write(&self.path, &state) {
            warn!(%error, "could not publish state for `pisa-daemon status`");
        }
    }

    /// The report in the state file's form.
    fn render(&self, report: &NodeReport, error: Option<(String, String)>) -> PublishedState {
        PublishedState {
            pid: std::process::id(),
            bpffs: self.bpffs.clone(),
            interfaces: report.interfaces.iter().cloned().collect(),
            link_rates: report
                .link_rates
                .iter()
                .map(|(iface, rate)| {
                    let published = PublishedLinkRate {
                        rate_bytes: rate.bytes,
                        source: rate.source.name().into(),
                        guaranteed_bytes: report.guaranteed_bytes,
                    };
                    (iface.clone(), published)
                })
                .collect(),
            classes: report
                .classes
                .iter()
                .map(|class| PublishedClass {
                    claim: class.claim.to_string(),
                    class_id: class.class_id,
                    mode: class.mode.name().into(),
                    rate_bytes: class.rate_bytes,
                    ceil_bytes: class.ceil_bytes,
                    priority: class.priority,
                })
                .collect(),
            claims: report.claims.values().map(PublishedClaim::from).collect(),
            source_errors: report.source_errors.clone(),
            last_error: error.as_ref().map(|(text, _)| text.clone()),
            last_error_reason: error.map(|(_, reason)| reason),
            identity: published_identity(report),
        }
    }
}

fn published_identity(report: &NodeReport) -> PublishedIdentity {
    let identity = &report.identity;
    let labelled = |counts: &BTreeMap<Outcome, u64>| {
        counts
            .iter()
            .map(|(outcome, n)| (outcome.label().to_owned(), *n))
            .collect()
    };
    PublishedIdentity {
        outcomes: labelled(&identity.node),
        claims: identity
            .claims
            .iter()
            .map(|(claim, counts)| (claim.to_string(), labelled(counts)))
            .collect(),
        // Left out rather than shown as zeros when the read failed.
        kernel: report
            .counters
            .sql
            .iter()
            .flat_map(|values| sql_reason::NAMES.iter().zip(values))
            .map(|(name, n)| ((*name).to_owned(), *n))
            .collect(),
        tag_latency_us: identity.latency_us.map(|l| LatencySummary {
            samples: l.samples,
            p50: l.p50,
            p99: l.p99,
            max: l.max,
        }),
    }
}
