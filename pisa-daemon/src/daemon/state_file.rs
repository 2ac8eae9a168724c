//! The state file `pisa-daemon status` reads when the API does not answer:
//! rewritten after every reconcile.

use std::path::PathBuf;

use tracing::warn;

use super::ReconcileError;
use crate::{
    kernel::Dataplane,
    reconcile::agent::Agent,
    state::{self, PublishedClaim, PublishedClass, PublishedState},
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
            last_error: error.map(ToString::to_string),
            last_error_reason: error.map(|e| e.reason().label().to_owned()),
        };
        if let Err(error) = state::write(&self.path, &state) {
            warn!(%error, "could not publish state for `pisa-daemon status`");
        }
    }
}
