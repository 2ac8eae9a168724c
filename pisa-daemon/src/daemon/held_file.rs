//! The claims held at their last good version, written beside the state
//! file (`state.json` → `state.last-good.json`) whenever they change and
//! read back on start (`reconcile::held` says why). The state file's
//! directory is a hostPath in the DaemonSet, under /run: it lives exactly
//! as long as the pinned kernel state it describes (until a reboot).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::{
    kernel::Dataplane,
    reconcile::{
        agent::Agent,
        held::{HeldClaim, HeldFileIn, HeldFileOut},
    },
    state,
};

#[derive(Debug, thiserror::Error)]
pub enum HeldFileError {
    #[error("reading the held claims `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the held claims `{path}` are not valid JSON of held claims: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the held claims `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct HeldFile {
    path: PathBuf,
    /// The agent's change count the file last reflected; `None` until the
    /// first write, so a file with entries dropped on start is rewritten.
    written: Option<u64>,
}

impl HeldFile {
    /// The file beside `state_file`: `state.json` → `state.last-good.json`.
    pub fn beside(state_file: &Path) -> Self {
        Self {
            path: state_file.with_extension("last-good.json"),
            written: None,
        }
    }

    /// The claims a previous run held; none if it left no file.
    pub fn load(&self) -> Result<Vec<HeldClaim>, HeldFileError> {
        let body = match std::fs::read(&self.path) {
            Ok(body) => body,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(HeldFileError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: HeldFileIn =
            serde_json::from_slice(&body).map_err(|source| HeldFileError::Parse {
                path: self.path.clone(),
                source,
            })?;
        Ok(file.into_held())
    }

    /// Gives the agent what the previous run held, logging each claim
    /// taken and each dropped. A file that cannot be read is logged and
    /// left for the next write to replace: shaping never waits on it.
    pub fn restore<D: Dataplane>(&self, agent: &mut Agent<D>) {
        let previous = match self.load() {
            Ok(previous) => previous,
            Err(error) => {
                warn!(%error, "the last good versions held before the restart are lost");
                return;
            }
        };
        if previous.is_empty() {
            return;
        }
        let (taken, dropped) = agent.restore_held(previous);
        for key in &taken {
            info!(claim = %key, file = %self.path.display(),
                "holding the last good version held before the restart until the claim is valid again");
        }
        for error in &dropped {
            warn!(%error, "a last good version held before the restart is no longer valid; dropped");
        }
    }

    /// Writes the agent's held claims if they changed since the last
    /// write; with none, removes the file. A failure is logged and tried
    /// again at the next reconcile.
    pub fn save_if_changed<D: Dataplane>(&mut self, agent: &Agent<D>) {
        let (held, changes) = agent.held();
        if self.written == Some(changes) {
            return;
        }
        let file = HeldFileOut::of(held);
        let result = if file.claims.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        } else {
            state::write_json(&self.path, &file)
        };
        match result {
            Ok(()) => self.written = Some(changes),
            Err(source) => {
                let error = HeldFileError::Write {
                    path: self.path.clone(),
                    source,
                };
                warn!(%error, "a restart would not keep the claims held at their last good version");
            }
        }
    }
}
