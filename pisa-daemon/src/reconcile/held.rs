//! Last good versions held across a restart.
//!
//! A claim whose current version is invalid (or whose file cannot be read)
//! keeps its last good version in force. That version lives only in the
//! agent's memory, so a restarted daemon would find nothing to keep and
//! remove the class the kernel still holds: an upgrade of the DaemonSet
//! would drop the shaping of every claim with a pending bad edit. The
//! held documents are therefore written beside the state file
//! (`daemon::held_file`) whenever the set changes, and validated again
//! on start.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::spec::{
    check_one, key_of, ClaimError, ClaimKey, Limits, QoSClaim, SourceSnapshot, ValidClaim,
};

/// The last good document of a claim held in force, and where it came
/// from (so an unreadable source still finds its claims by name).
#[derive(Clone, Debug, PartialEq)]
pub struct HeldClaim {
    pub origin: Arc<str>,
    pub claim: Arc<QoSClaim>,
}

/// The good document of `key` in `sources`, if one parsed there. Used when
/// a claim that was valid in the previous update is held from this one.
pub fn find(sources: &[SourceSnapshot], key: &ClaimKey) -> Option<HeldClaim> {
    sources
        .iter()
        .filter_map(|source| source.documents.as_ref().ok())
        .flatten()
        .find_map(|document| {
            let claim = document.result.as_ref().ok()?;
            (*claim.metadata.name == *key.name && key_of(claim) == *key).then(|| HeldClaim {
                origin: document.origin.clone(),
                claim: claim.clone(),
            })
        })
}

/// Held claims validated again, as a restarted agent takes them: the ones
/// that pass, and the errors of those that no longer do (the limits or the
/// kernel's features may have changed), which are dropped.
pub fn revalidate(
    held: Vec<HeldClaim>,
    limits: Limits,
) -> (BTreeMap<ClaimKey, (HeldClaim, ValidClaim)>, Vec<ClaimError>) {
    let mut valid = BTreeMap::new();
    let mut errors = Vec::new();
    for entry in held {
        let key = key_of(&entry.claim);
        match check_one(&entry.origin, &key, &entry.claim, limits) {
            Ok(claim) => {
                valid.insert(key, (entry, claim));
            }
            Err(mut rejected) => errors.append(&mut rejected),
        }
    }
    (valid, errors)
}

/// The file's form: one entry per held claim.
#[derive(Debug, Deserialize)]
pub struct HeldFileIn {
    pub claims: Vec<HeldEntryIn>,
}

#[derive(Debug, Deserialize)]
pub struct HeldEntryIn {
    pub origin: String,
    pub claim: QoSClaim,
}

#[derive(Debug, Serialize)]
pub struct HeldFileOut<'a> {
    pub claims: Vec<HeldEntryOut<'a>>,
}

#[derive(Debug, Serialize)]
pub struct HeldEntryOut<'a> {
    pub origin: &'a str,
    pub claim: &'a QoSClaim,
}

impl HeldFileIn {
    pub fn into_held(self) -> Vec<HeldClaim> {
        self.claims
            .into_iter()
            .map(|entry| HeldClaim {
                origin: entry.origin.into(),
                claim: Arc::new(entry.claim),
            })
            .collect()
    }
}

impl<'a> HeldFileOut<'a> {
    pub fn of(held: impl IntoIterator<Item = &'a HeldClaim>) -> Self {
        Self {
            claims: held
                .into_iter()
                .map(|entry| HeldEntryOut {
                    origin: &entry.origin,
                    claim: &entry.claim,
                })
                .collect(),
        }
    }
}
