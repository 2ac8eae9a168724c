//! Where desired state comes from. `file`: a YAML file or a directory of
//! them (the embedded default); `kube`: QoSClaims and VirtualDatabases from
//! the API server, with this node's status written back; `pods`: the Pods
//! of this node, whose interfaces are attached while they run. Each is a
//! `ClaimSource` the control loop (`daemon`) drives. Sources produce `spec`
//! snapshots; they know nothing of reconciling.

pub mod file;
pub mod kube;
#[cfg(test)]
pub(crate) mod mock_api;
pub mod pods;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
};

pub use file::{FileSource, SourceError, Watch};

use crate::spec::{ClaimKey, ClaimStatus, SourceSnapshot};

/// What the control loop needs of a source of claims.
pub trait ClaimSource: Send {
    /// The claims as they are now. `Ok(None)`: this source holds no claims
    /// at all (the daemon only attaches; pinned classes stay as they are).
    /// `Err`: it cannot be read now; the claims in force stay.
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError>;

    /// Resolves when the claims (or the interfaces the source follows) may
    /// have changed, once a burst of changes has settled.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;

    /// Interfaces to attach besides the operator's, looked up again now
    /// (the host interfaces of this node's Pods). `None`: the source
    /// follows no interfaces.
    fn followed_interfaces(&mut self) -> Option<BTreeSet<String>> {
        None
    }

    /// Publishes what this node made of each claim (the Kubernetes status).
    /// Returns what could not be published, to retry with backoff.
    fn publish(
        &mut self,
        statuses: &BTreeMap<ClaimKey, ClaimStatus>,
    ) -> impl Future<Output = Vec<String>> + Send {
        let _ = statuses;
        std::future::ready(Vec::new())
    }
}

/// No claim source (`run` without `--config` or `--kube`): only attach and
/// count; classes already pinned stay exactly as they are.
#[derive(Debug, Default)]
pub struct NoSource;

impl ClaimSource for NoSource {
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError> {
        Ok(None)
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}
