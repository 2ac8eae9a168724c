//! What a claim source hands over: the documents of one source (a file, a
//! Kubernetes object) as read this time. Sources produce it; the agent
//! consumes it. It lives here so that neither depends on the other.

use super::{ClaimError, Document};

/// One source (file) as read this time.
#[derive(Clone, Debug)]
pub struct SourceSnapshot {
    pub name: String,
    /// `Err`: the YAML stream is broken; keep the source's last good state.
    pub documents: Result<Vec<Document>, ClaimError>,
}
