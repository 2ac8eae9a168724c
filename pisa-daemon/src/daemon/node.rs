//! `pisa-daemon run` as a library call: open the kernel side, start the
//! API and metrics listeners, pick the claim source, and run the loop
//! until told to stop.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{http, identity_task, Control, Daemon, HeldFile, Reason, SharedAgent, StateFile};
use crate::{
    api::{
        server::{self as api_server, ApiError},
        service::PisaApi,
    },
    kernel::{
        self, kernel_log::KernelLog, sql_events::SqlEvents, Dataplane, Kernel, KernelError,
        LinkRates, PinLayout,
    },
    metrics::{KernelCollector, Metrics},
    reconcile::agent::Agent,
    report::ReadErrors,
    source::{
        kube::{KubeArgs, KubeClaimSource, KubeConnectError},
        ClaimSource, FileSource, NoSource, Watch,
    },
    spec::Limits,
    tags::TagTable,
};

/// Everything `run` was given, parsed.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Claims from this file or directory.
    pub config: Option<PathBuf>,
    /// How changes to `config` are seen.
    pub config_watch: Watch,
    /// Claims from the Kubernetes API instead.
    pub kube: Option<KubeArgs>,
    pub api: ApiConfig,
    /// The operator's interfaces (`--iface`).
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    /// The `--link-rate` flags.
    pub link_rates: LinkRates,
    pub max_classes: usize,
    pub state_file: PathBuf,
    /// The kernel program writes debug events, drained into the log.
    pub kernel_log: bool,
}

/// Where the gRPC API listens.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// None: no Unix socket (`--api-socket none`).
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub tcp: Option<SocketAddr>,
    pub max_flow_tags: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "--iface: none given, and Pods are not followed (--no-follow-pods): \
         there is nothing to attach to; give --iface NAME, or let --kube follow Pods"
    )]
    NothingToAttach,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Kube(#[from] KubeConnectError),
    #[error("binding the metrics address {addr}: {source}")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the node agent until `control` says stop (or closes).
pub async fn run_node(
    config: NodeConfig,
    control: mpsc::Receiver<Control>,
) -> Result<(), NodeError> {
    let follows_pods = config.kube.as_ref().is_some_and(|k| k.follow_pods);
    if config.ifaces.is_empty() && !follows_pods {
        return Err(NodeError::NothingToAttach);
    }
    // A mistyped --iface fails fast; an interface that disappears later
    // (a pod going away) is retried by the reconcile loop instead.
    for iface in &config.ifaces {
        kernel::iface::lookup(iface)?;
    }
    let (agent, sql_events, kernel_log) = open_agent(&config)?;
    tokio::spawn(identity_task::run(agent.clone(), sql_events));
    tokio::spawn(drain_kernel_log(kernel_log));
    // One count of failed counter reads for every report of the process.
    let read_errors = ReadErrors::default();
    let (stop_api, api_tasks) = start_api(&config.api, &agent, &read_errors).await?;
    let metrics = Arc::new(Metrics::new(Box::new(KernelCollector::new(
        agent.clone(),
        read_errors.clone(),
    ))));
    // Every reason shows at 0 before anyone can scrape; /healthz answers
    // while the kube source waits for its first list.
    metrics.declare_reconcile_error_reasons(Reason::ALL.iter().map(|r| r.label()));
    serve_metrics(&config, &metrics, &agent).await?;
    let state_file = StateFile {
        path: config.state_file.clone(),
        bpffs: config.bpffs.clone(),
        read_errors,
    };
    let held_file = HeldFile::beside(&config.state_file);
    if let Ok(mut agent) = agent.lock() {
        held_file.restore(&mut agent);
    }
    match (&config.config, &config.kube) {
        (Some(path), _) => {
            let source = FileSource::new(path.clone(), config.config_watch);
            run_loop(&agent, source, &metrics, state_file, held_file, control).await;
        }
        (None, Some(kube)) => {
            let source = KubeClaimSource::connect(kube).await?;
            run_loop(&agent, source, &metrics, state_file, held_file, control).await;
        }
        (None, None) => run_loop(&agent, NoSource, &metrics, state_file, held_file, control).await,
    }
    let _ = stop_api.send(true);
    for task in api_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(socket) = &config.api.socket {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

async fn run_loop<S: ClaimSource>(
    agent: &SharedAgent<Kernel>,
    source: S,
    metrics: &Arc<Metrics>,
    state_file: StateFile,
    held_file: HeldFile,
    control: mpsc::Receiver<Control>,
) {
    Daemon::new(agent.clone(), source, metrics.clone())
        .with_state_file(state_file)
        .with_held_file(held_file)
        .run(control)
        .await;
}

/// Opens (or adopts) the kernel side and builds the agent over it; the
/// SQL-identity channel is taken out for its own task.
type Opened = (SharedAgent<Kernel>, SqlEvents, KernelLog);

fn open_agent(config: &NodeConfig) -> Result<Opened, NodeError> {
    let mut kernel = Kernel::open_with(
        PinLayout::new(&config.bpffs),
        config.api.max_flow_tags as u32,
    )?;
    let sql_events = kernel.take_sql_events()?;
    // Always drained: a daemon started without --kernel-log after one with
    // it finds (and logs) what was left; the switch is set here either way.
    let kernel_log = kernel.take_kernel_log()?;
    kernel.set_kernel_log(config.kernel_log)?;
    if config.kernel_log {
        info!("kernel debug events on (--kernel-log debug): logged under target pisa_kernel");
    }
    kernel.set_link_rates(config.link_rates.clone());
    let features = kernel.features();
    info!(
        tcx = features.tcx,
        sch_fq = features.sch_fq,
        btf = features.btf,
        "kernel features"
    );
    if !features.sch_fq {
        warn!("sch_fq is not available: claims with mode edt will be rejected on this node");
    }
    let limits = Limits {
        max_classes: config.max_classes,
        edt_available: features.sch_fq,
        pod_selectors: config.kube.is_some(),
    };
    // Interfaces that went away while no daemon ran (deleted Pods) would
    // otherwise leave their link pins behind for good.
    for iface in kernel.release_vanished_interfaces()? {
        info!(%iface, "released the attachment of a vanished interface");
    }
    // The proxy's tags are not persisted: it re-tags when it sees the new
    // generation, so its leftovers are cleared. The daemon's own SQL-identity
    // tags are taken over: their connections' starts are long gone.
    let (cleared, kept) = kernel.take_over_flow_tags()?;
    let mut tags = TagTable::new(config.api.max_flow_tags);
    let orphans = tags.adopt(&kept);
    kernel.delete_flow_tags(&orphans)?;
    if cleared > 0 || !kept.is_empty() {
        info!(
            cleared,
            kept = tags.len(),
            "flow tags of the previous run: the proxy's cleared, SQL identity's kept"
        );
    }
    let ifaces: BTreeSet<String> = config.ifaces.iter().cloned().collect();
    let mut agent = Agent::new(kernel, ifaces, limits);
    agent.tags = tags;
    Ok((Arc::new(Mutex::new(agent)), sql_events, kernel_log))
}

/// Writes the program's debug events to the log until the daemon stops.
async fn drain_kernel_log(mut kernel_log: KernelLog) {
    loop {
        if let Err(error) = kernel_log.drain().await {
            error!(%error, "reading the kernel's debug events failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn serve_metrics<D: Dataplane + Send + 'static>(
    config: &NodeConfig,
    metrics: &Arc<Metrics>,
    agent: &SharedAgent<D>,
) -> Result<(), NodeError> {
    let Some(addr) = config.metrics_addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::MetricsBind { addr, source })?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(http::serve(listener, metrics.clone(), agent.clone()));
    Ok(())
}

/// A generation that differs on every start: nanoseconds since the epoch.
fn new_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Binds the API listeners (failing fast, before any work), then serves
/// them in the background until the returned sender says stop.
async fn start_api<D: Dataplane + Send + 'static>(
    config: &ApiConfig,
    agent: &SharedAgent<D>,
    read_errors: &ReadErrors,
) -> Result<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>), NodeError> {
    let (stop, stopped) = watch::channel(false);
    let api = PisaApi::new(agent.clone(), new_generation(), read_errors.clone());
    info!(generation = api.generation(), "API generation");
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let mut tasks = Vec::new();
    if let Some(path) = &config.socket {
        let listener = api_server::bind_unix(path, config.socket_group.as_deref())?;
        info!(socket = %path.display(), group = ?config.socket_group, "serving the gRPC API");
        let server = api_server::serve_unix(api.clone(), listener, shutdown(stopped.clone()))?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                error!(error = %e, "the gRPC API (unix socket) stopped");
            }
        }));
    }
    if let Some(addr) = config.tcp {
        if !addr.ip().is_loopback() {
            warn!(%addr, "the gRPC API listens beyond loopback: anyone who can reach it can tag flows");
        }
        let listener = api_server::bind_tcp(addr).await?;
        info!(%addr, "serving the gRPC API over TCP");
        let server = api_server::serve_tcp(api.clone(), listener, shutdown(stopped.clone()))?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                error!(error = %e, "the gRPC API (tcp) stopped");
            }
        }));
    }
    tokio::spawn(api_server::housekeeping(api));
    Ok((stop, tasks))
}
