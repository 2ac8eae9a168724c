//! The agent's published state: a JSON file rewritten after every
//! reconcile (atomically, by rename), read by `pisa-daemon status`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::spec::ClaimStatus;

pub const DEFAULT_STATE_FILE: &str = "/run/pisa/state.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedClass {
    pub claim: String,
    pub class_id: u32,
    pub mode: String,
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    pub priority: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedState {
    pub pid: u32,
    pub bpffs: PathBuf,
    pub interfaces: Vec<String>,
    /// Each interface's link rate; absent in files of daemons before it
    /// was added.
    #[serde(default)]
    pub link_rates: BTreeMap<String, PublishedLinkRate>,
    pub classes: Vec<PublishedClass>,
    pub claims: Vec<PublishedClaim>,
    pub source_errors: Vec<String>,
    pub last_error: Option<String>,
    /// The bounded reason of `last_error` (the metrics label); absent in
    /// files of daemons before it was added.
    #[serde(default)]
    pub last_error_reason: Option<String>,
    /// What SQL identity made of connection starts; absent in files of
    /// daemons before it was added.
    #[serde(default)]
    pub identity: PublishedIdentity,
}

/// An interface's link rate and where it came from (`interface`: its own
/// `--link-rate IFACE=RATE`; `flag`: a bare `--link-rate`; `device`: the
/// speed it reports; `fallback`: 10gbit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedLinkRate {
    pub rate_bytes: u64,
    pub source: String,
    /// The classes' rates added up: what the link has promised. Absent
    /// (0) in files of daemons before it was added.
    #[serde(default)]
    pub guaranteed_bytes: u64,
}

/// SQL identity's counts: by outcome for the node, and for each claim.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishedIdentity {
    pub outcomes: BTreeMap<String, u64>,
    pub claims: BTreeMap<String, BTreeMap<String, u64>>,
    /// The kernel's side (`SQL_STATS`): starts and closes handed up, and
    /// those it could not hand up (throttled, ring full).
    pub kernel: BTreeMap<String, u64>,
    /// From the kernel seeing a start to its tag being in place, over the
    /// last identified connections (µs); absent before the first one.
    pub tag_latency_us: Option<LatencySummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// `ClaimStatus` in its serialised form (status reads it back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedClaim {
    pub claim: String,
    pub phase: String,
    pub message: String,
    pub class_id: Option<u32>,
    /// Client prefixes the claim put in force on this node.
    #[serde(default)]
    pub client_prefixes: usize,
}

impl From<&ClaimStatus> for PublishedClaim {
    fn from(s: &ClaimStatus) -> Self {
        Self {
            claim: s.claim.to_string(),
            phase: format!("{:?}", s.phase),
            message: s.message.clone(),
            class_id: s.class_id,
            client_prefixes: s.client_prefixes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing state file `{path}` failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading state file `{path}` failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file `{path}` is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn write(path: &Path, state: &PublishedState) -> Result<(), StateError> {
    write_json(path, state).map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as JSON to `path` by rename, so a reader never sees half
/// a file. Streamed to the file: with 10,000 claims the state is several
/// MiB, and a buffer that size (grown by doubling) would stay in the
/// daemon's resident memory after it is freed.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::other)?;
    std::io::Write::flush(&mut out)?;
    drop(out);
    std::fs::rename(&tmp, path)
}

pub fn read(path: &Path) -> Result<PublishedState, StateError> {
    let body = std::fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })
}
