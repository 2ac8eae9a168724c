//! The Kubernetes source as the control loop sees it: claims and
//! VirtualDatabases from their reflectors, this node's report written back,
//! the status aggregator running beside it, and (unless turned off) the
//! host interfaces of this node's Pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::Notify;
use tracing::info;

use super::{Aggregator, KubeSource, ReportWriter};
use crate::{
    source::{
        pods::{FollowedPods, PodSource},
        ClaimSource, SourceError,
    },
    spec::{ClaimKey, ClaimStatus, SourceSnapshot},
};

/// How long a burst of watch events (a relist) may take to settle before
/// the claims are read.
const SETTLE: Duration = Duration::from_millis(100);

/// What `run --kube` was given.
#[derive(Clone, Debug)]
pub struct KubeArgs {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// Attach to the host interfaces of this node's Pods while they run.
    pub follow_pods: bool,
    /// Where this node's QoSNodeReport and the status Lease live: the
    /// daemon's own namespace.
    pub report_namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeConnectError {
    #[error("no in-cluster service account and no kubeconfig: {source}")]
    Config {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("building the Kubernetes client: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
}

pub struct KubeClaimSource {
    claims: KubeSource,
    report: ReportWriter,
    changed: Arc<Notify>,
    /// The status aggregator, contending for the Lease; stopped with the
    /// source.
    aggregator: tokio::task::JoinHandle<()>,
    /// None with --no-follow-pods.
    pods: Option<FollowedPods>,
}

impl KubeClaimSource {
    /// Connects (in-cluster first, then kubeconfig), starts the reflectors
    /// and waits until they have listed once: before that, an empty store
    /// would look like "every claim was deleted".
    pub async fn connect(args: &KubeArgs) -> Result<Self, KubeConnectError> {
        let config = match kube::Config::incluster() {
            Ok(config) => config,
            Err(_) => kube::Config::infer()
                .await
                .map_err(|source| KubeConnectError::Config { source })?,
        };
        let client =
            kube::Client::try_from(config).map_err(|source| KubeConnectError::Client { source })?;
        let changed = Arc::new(Notify::new());
        let claims = KubeSource::start(&client, &args.namespaces, changed.clone());
        info!(node = %args.node, namespaces = ?args.namespaces, "watching QoSClaims and VirtualDatabases");
        let pods = args.follow_pods.then(|| {
            info!(node = %args.node, "watching this node's Pods to follow their interfaces");
            FollowedPods::new(PodSource::start(&client, &args.node, changed.clone()))
        });
        while !(claims.ready() && pods.as_ref().is_none_or(FollowedPods::ready)) {
            changed.notified().await;
        }
        let aggregator = Aggregator::new(
            client.clone(),
            &args.report_namespace,
            &args.node,
            claims.claim_stores(),
        );
        Ok(Self {
            claims,
            report: ReportWriter::new(client, args.node.clone(), args.report_namespace.clone()),
            changed,
            pods,
            aggregator: tokio::spawn(aggregator.run()),
        })
    }
}

impl ClaimSource for KubeClaimSource {
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError> {
        Ok(Some(self.claims.snapshot()))
    }

    async fn changed(&mut self) {
        self.changed.notified().await;
        tokio::time::sleep(SETTLE).await;
    }

    fn followed_interfaces(&mut self) -> Option<BTreeSet<String>> {
        self.pods.as_mut().map(FollowedPods::lookup)
    }

    async fn publish(&mut self, statuses: &BTreeMap<ClaimKey, ClaimStatus>) -> Vec<String> {
        match self.report.write(statuses).await {
            Ok(_) => Vec::new(),
            Err(error) => vec![error.to_string()],
        }
    }
}

impl Drop for KubeClaimSource {
    fn drop(&mut self) {
        self.aggregator.abort();
    }
}
