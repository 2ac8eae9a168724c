//! The one read model. What the agent decided (claims, classes, their
//! statuses), what SQL identity made of connection starts, and the
//! kernel's counters read once: every report renders a `NodeReport`. The
//! state file, `/metrics`, the gRPC replies and the Kubernetes status are
//! renderings of it (`pisa-daemon status` renders the gRPC replies or,
//! with the daemon down, the state file).
//!
//! Building one takes the agent's lock for the map reads it asks for and
//! nothing more; renderers format it after the lock is gone.

mod counters;

use std::collections::{BTreeMap, BTreeSet};

pub use counters::{CounterMap, Counters, ReadErrors};
use pisa_daemon_common::ClassStats;

use crate::{
    identity::{Latency, Outcome},
    kernel::{Dataplane, RuleMatch},
    model::{LeafQueue, LinkRate, ShapingMode},
    reconcile::agent::Agent,
    spec::{ClaimKey, ClaimStatus},
};

/// One class in force on this node.
#[derive(Clone, Debug)]
pub struct ClassReport {
    pub class_id: u32,
    pub claim: ClaimKey,
    pub mode: ShapingMode,
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    pub burst_bytes: u32,
    /// The HTB priority the class was given (0 first).
    pub priority: u8,
    /// The claim's priority class (`guaranteed`, `burstable`, ...); empty
    /// when the claim is gone from the agent's memory.
    pub priority_name: String,
    pub direction: String,
    /// The claim's endpoint rules, expanded by direction.
    pub rules: Vec<RuleMatch>,
    /// The queue inside the class (htb); empty for modes without one.
    pub queue: String,
    /// `None`: not read for this report, or the read failed.
    pub counters: Option<ClassStats>,
}

/// What SQL identity made of connection starts.
#[derive(Clone, Debug, Default)]
pub struct IdentityReport {
    pub node: BTreeMap<Outcome, u64>,
    pub claims: BTreeMap<ClaimKey, BTreeMap<Outcome, u64>>,
    /// Start-to-tag latency over the last identified connections (µs).
    pub latency_us: Option<Latency>,
}

/// This node's state, as every report shows it.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// Interfaces the classifier is attached to.
    pub interfaces: BTreeSet<String>,
    /// Each attached interface's link rate, and where it came from.
    pub link_rates: BTreeMap<String, LinkRate>,
    /// The classes' rates added up (bytes/s): what every attached
    /// interface has promised, since each class applies on each of them.
    pub guaranteed_bytes: u64,
    pub classes: Vec<ClassReport>,
    /// Every claim the node knows, with its phase and message.
    pub claims: BTreeMap<ClaimKey, ClaimStatus>,
    /// Errors no claim can be blamed for (a broken YAML stream).
    pub source_errors: Vec<String>,
    pub identity: IdentityReport,
    /// Client prefixes in force, for each claim with client selectors.
    pub client_prefixes: BTreeMap<ClaimKey, usize>,
    /// Flow tags in force (proxy and SQL identity).
    pub active_tags: usize,
    /// Connections the flow-tag table holds (`--max-flow-tags`).
    pub tag_capacity: usize,
    /// Live tags evicted to make room, by origin, since the start.
    pub tag_evictions: crate::tags::Evictions,
    /// The counters read for this report (classes' are also in `classes`).
    pub counters: Counters,
}

impl NodeReport {
    /// Interfaces whose link is smaller than the rates the classes are
    /// guaranteed: neither HTB nor the pacer can keep every guarantee
    /// there at once when every class is busy.
    pub fn oversubscribed(&self) -> impl Iterator<Item = &str> {
        self.link_rates
            .iter()
            .filter(|(_, link)| self.guaranteed_bytes > link.bytes)
            .map(|(iface, _)| iface.as_str())
    }

    /// The agent's state with the counter maps in `reads`, read now.
    pub fn read<D: Dataplane>(agent: &Agent<D>, reads: &[CounterMap], errors: &ReadErrors) -> Self {
        let counters = Counters::read(&agent.dp, reads, errors);
        let fq_codel = agent.dp.features().fq_codel;
        let classes = agent
            .plan
            .classes
            .iter()
            .map(|(id, planned)| {
                let claim = agent.effective.get(&planned.claim);
                ClassReport {
                    class_id: *id,
                    claim: planned.claim.clone(),
                    mode: planned.spec.mode,
                    rate_bytes: planned.spec.rate_bytes,
                    ceil_bytes: planned.spec.ceil_bytes,
                    burst_bytes: planned.spec.burst_bytes,
                    priority: planned.spec.priority,
                    priority_name: claim
                        .map(|c| c.priority.name().to_owned())
                        .unwrap_or_default(),
                    direction: claim
                        .map(|c| format!("{:?}", c.direction).to_lowercase())
                        .unwrap_or_default(),
                    rules: claim.map(|c| c.rules.clone()).unwrap_or_default(),
                    queue: match planned.spec.mode {
                        ShapingMode::Htb => {
                            LeafQueue::for_class(planned.spec.ceil_bytes, fq_codel).describe()
                        }
                        ShapingMode::Edt | ShapingMode::Police => String::new(),
                    },
                    counters: counters
                        .classes
                        .as_ref()
                        .map(|stats| stats.get(id).copied().unwrap_or_default()),
                }
            })
            .collect();
        let guaranteed_bytes = agent.plan.classes.values().fold(0u64, |sum, planned| {
            sum.saturating_add(planned.spec.rate_bytes)
        });
        Self {
            interfaces: agent.dp.interfaces(),
            link_rates: agent.dp.link_rates(),
            guaranteed_bytes,
            classes,
            claims: agent.statuses.clone(),
            source_errors: agent.source_errors.clone(),
            identity: IdentityReport {
                node: agent.identity.node.clone(),
                claims: agent.identity.claims.clone(),
                latency_us: agent.identity.latency_us(),
            },
            client_prefixes: agent.plan.client_counts.clone(),
            active_tags: agent.tags.len(),
            tag_capacity: agent.tags.capacity(),
            tag_evictions: agent.tags.evictions(),
            counters,
        }
    }
}

#[cfg(test)]
mod tests;
