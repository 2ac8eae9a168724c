//! `pisa-daemon run`: the node agent's main loop.
//!
//! One task owns reconciling: it reads the claim source, updates the agent
//! and converges the kernel, then waits for the next trigger (a change of
//! the source, SIGHUP, or a retry after a failure, with exponential
//! backoff). Metrics are served by a second task that reads the kernel
//! through the same agent at scrape time.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pisa_daemon::{
    api::{server as api_server, service::PisaApi},
    kernel::route::RouteLookup,
    kernel::{Dataplane, Kernel, PinLayout},
    metrics::{KernelCollector, Metrics},
    reconcile::agent::Agent,
    reconcile::agent::SourceSnapshot,
    source::{
        file,
        kube::{rfc3339, KubeSource, StatusWriter},
        pods::{pod_interfaces, PodInterfaces, PodSource},
        tags::TagTable,
    },
    spec::Limits,
    state::{self, PublishedClaim, PublishedClass, PublishedState},
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
};
use tracing::{error, info, warn};

pub struct RunArgs {
    pub config: Option<PathBuf>,
    /// Claims from the Kubernetes API instead of a file.
    pub kube: Option<KubeArgs>,
    pub api: ApiArgs,
    pub ifaces: Vec<String>,
    pub bpffs: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub link_rate_bytes: u64,
    pub max_classes: usize,
    pub state_file: PathBuf,
}

/// The Kubernetes source.
pub struct KubeArgs {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// Attach to the host interfaces of this node's Pods while they run.
    pub follow_pods: bool,
}

/// Where claims come from, as the loop sees it.
enum Claims {
    /// Only attach; pinned classes stay as they are.
    None,
    File(PathBuf),
    Kube(Box<KubeClaims>),
}

struct KubeClaims {
    source: KubeSource,
    status: StatusWriter,
    changed: Arc<Notify>,
    /// None with --no-follow-pods.
    pods: Option<FollowedPods>,
    /// When to retry status writes that failed, and the next backoff.
    status_retry_at: Option<Instant>,
    status_backoff: Duration,
}

/// This node's Pods and the interfaces they were last found behind.
struct FollowedPods {
    source: PodSource,
    found: PodInterfaces,
    /// Interfaces found that could not be attached last time.
    left_out: BTreeSet<String>,
}

impl FollowedPods {
    /// Looks up every Pod's interface again; returns whether a reconcile
    /// is due: the set of interfaces changed, or some could not be attached
    /// last time. Pods whose address leads nowhere yet (the CNI may add the
    /// route after the IP is reported) are looked up again on the next
    /// change or resync.
    fn refresh(&mut self) -> bool {
        let pods = self.source.pods();
        let found = match RouteLookup::open() {
            Ok(mut lookup) => pod_interfaces(&pods, |ip| lookup.route_to(ip)),
            Err(error) => {
                warn!(%error, "cannot look up Pod routes; keeping the Pod interfaces as they were");
                return false;
            }
        };
        for (iface, pods) in &found.interfaces {
            if !self.found.interfaces.contains_key(iface) {
                info!(%iface, ?pods, "following Pod interface");
            }
        }
        for (iface, pods) in &self.found.interfaces {
            if !found.interfaces.contains_key(iface) {
                info!(%iface, ?pods, "Pod interface no longer followed");
            }
        }
        for reason in found
            .skipped
            .iter()
            .filter(|r| !self.found.skipped.contains(r))
        {
            info!(%reason, "Pod address not followed");
        }
        let changed = found.names() != self.found.names();
        self.found = found;
        changed || !self.left_out.is_empty()
    }
}

/// Where the gRPC API listens.
pub struct ApiArgs {
    /// None: no Unix socket (`--api-socket none`).
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub tcp: Option<SocketAddr>,
    pub max_flow_tags: usize,
}

/// How often the source is checked for changes, and how long it must stay
/// unchanged before a reload (an editor writes in several steps).
const POLL: Duration = Duration::from_millis(100);
const DEBOUNCE: Duration = Duration::from_millis(100);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often Pod routes are looked up again without a Pod event (a route
/// the CNI added after the Pod's IP was reported).
const POD_RESYNC: Duration = Duration::from_secs(5);

type SharedAgent = Arc<Mutex<Agent<Kernel>>>;

pub async fn run(args: RunArgs) -> Result<()> {
    let follows_pods = args.kube.as_ref().is_some_and(|k| k.follow_pods);
    if args.ifaces.is_empty() && !follows_pods {
        anyhow::bail!(
            "--iface: none given, and Pods are not followed (--no-follow-pods): \
             there is nothing to attach to; give --iface NAME, or let --kube follow Pods"
        );
    }
    // A mistyped --iface fails fast; an interface that disappears later
    // (a pod going away) is retried by the reconcile loop instead.
    for iface in &args.ifaces {
        pisa_daemon::kernel::iface::lookup(iface)?;
    }
    let mut kernel = Kernel::open(PinLayout::new(&args.bpffs))?;
    kernel.set_link_rate(args.link_rate_bytes);
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
        max_classes: args.max_classes,
        edt_available: features.sch_fq,
    };
    // Interfaces that went away while no daemon ran (deleted Pods) would
    // otherwise leave their link pins behind for good.
    for iface in kernel.release_vanished_interfaces()? {
        info!(%iface, "released the attachment of a vanished interface");
    }
    // Tags are not persisted: the proxy re-tags when it sees the new
    // generation. Leftovers of the previous run (which kept shaping while
    // no daemon ran) are cleared so the table matches the kernel.
    let stale_tags = kernel.clear_flow_tags()?;
    if stale_tags > 0 {
        info!(
            entries = stale_tags,
            "cleared flow tags of the previous run"
        );
    }
    let ifaces: BTreeSet<String> = args.ifaces.iter().cloned().collect();
    let mut agent = Agent::new(kernel, ifaces, limits);
    agent.tags = TagTable::new(args.api.max_flow_tags);
    let agent: SharedAgent = Arc::new(Mutex::new(agent));
    let (stop_api, api_tasks) = start_api(&args.api, &agent).await?;
    let metrics = Arc::new(Metrics::new(Box::new(KernelCollector {
        agent: agent.clone(),
    })));
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        info!(%addr, "serving /metrics, /healthz, /readyz");
        tokio::spawn(crate::http::serve(listener, metrics.clone(), agent.clone()));
    }

    let mut claims = match (&args.config, &args.kube) {
        (Some(path), _) => Claims::File(path.clone()),
        (None, Some(kube)) => start_kube(kube).await?,
        (None, None) => Claims::None,
    };

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut fingerprint = args.config.as_deref().map(file::fingerprint);
    let mut retry = RETRY_MIN;
    let mut next_retry: Option<Instant> = None;
    // Pod routes are looked up on the triggers that can move them (start,
    // SIGHUP, a watch event, the resync), not again on retries.
    refresh_pods(&mut claims);
    reconcile_once(
        &args,
        &mut claims,
        &agent,
        &metrics,
        &mut retry,
        &mut next_retry,
    )
    .await;
    let mut poll = tokio::time::interval(POLL);
    let mut last_pod_resync = Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
            _ = hup.recv() => {
                info!("SIGHUP: reloading claims");
                refresh_pods(&mut claims);
                reconcile_once(&args, &mut claims, &agent, &metrics, &mut retry, &mut next_retry).await;
            }
            _ = poll.tick() => {
                let changed = match (&args.config, fingerprint) {
                    (Some(path), Some(old)) => {
                        let new = file::fingerprint(path);
                        if new != old {
                            // Let the writer finish, then take the settled content.
                            tokio::time::sleep(DEBOUNCE).await;
                            fingerprint = Some(file::fingerprint(path));
                            true
                        } else {
                            false
                        }
                    }
                    _ => false,
                };
                let due = next_retry.is_some_and(|t| Instant::now() >= t)
                    || status_retry_due(&claims);
                if changed {
                    info!("claims changed: reloading");
                }
                let pods_moved = if last_pod_resync.elapsed() >= POD_RESYNC {
                    last_pod_resync = Instant::now();
                    refresh_pods(&mut claims)
                } else {
                    false
                };
                if changed || due || pods_moved {
                    reconcile_once(&args, &mut claims, &agent, &metrics, &mut retry, &mut next_retry).await;
                }
            }
            _ = kube_changed(&claims) => {
                // Let a burst of watch events (a relist) settle first.
                tokio::time::sleep(DEBOUNCE).await;
                refresh_pods(&mut claims);
                reconcile_once(&args, &mut claims, &agent, &metrics, &mut retry, &mut next_retry).await;
            }
        }
    }
    let _ = stop_api.send(true);
    for task in api_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(socket) = &args.api.socket {
        let _ = std::fs::remove_file(socket);
    }
    info!("stopping; pinned kernel state stays in force (`pisa-daemon cleanup` removes it)");
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
async fn start_api(
    args: &ApiArgs,
    agent: &SharedAgent,
) -> Result<(
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let api = PisaApi::new(agent.clone(), new_generation());
    info!(generation = api.generation(), "API generation");
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let mut tasks = Vec::new();
    if let Some(path) = &args.socket {
        let listener = api_server::bind_unix(path, args.socket_group.as_deref())?;
        info!(socket = %path.display(), group = ?args.socket_group, "serving the gRPC API");
        let server = api_server::serve_unix(api.clone(), listener, shutdown(stopped.clone()))?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                error!(error = %e, "the gRPC API (unix socket) stopped");
            }
        }));
    }
    if let Some(addr) = args.tcp {
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

/// Connects to the API server (in-cluster first, then kubeconfig), starts
/// the reflectors and waits until they have listed once: before that, an
/// empty store would look like "every claim was deleted".
async fn start_kube(kube: &KubeArgs) -> Result<Claims> {
    let config = match kube::Config::incluster() {
        Ok(config) => config,
        Err(_) => kube::Config::infer()
            .await
            .context("no in-cluster service account and no kubeconfig")?,
    };
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let changed = Arc::new(Notify::new());
    let source = KubeSource::start(&client, &kube.namespaces, changed.clone());
    info!(node = %kube.node, namespaces = ?kube.namespaces, "watching QoSClaims and VirtualDatabases");
    let pods = kube.follow_pods.then(|| {
        info!(node = %kube.node, "watching this node's Pods to follow their interfaces");
        FollowedPods {
            source: PodSource::start(&client, &kube.node, changed.clone()),
            found: PodInterfaces::default(),
            left_out: BTreeSet::new(),
        }
    });
    while !(source.ready() && pods.as_ref().is_none_or(|p| p.source.ready())) {
        changed.notified().await;
    }
    Ok(Claims::Kube(Box::new(KubeClaims {
        source,
        status: StatusWriter::new(client, kube.node.clone()),
        changed,
        pods,
        status_retry_at: None,
        status_backoff: RETRY_MIN,
    })))
}

/// Looks up the followed Pods' interfaces again; whether they changed.
fn refresh_pods(claims: &mut Claims) -> bool {
    match claims {
        Claims::Kube(kube) => kube.pods.as_mut().is_some_and(FollowedPods::refresh),
        _ => false,
    }
}

/// Whether failed status writes are due to be tried again.
fn status_retry_due(claims: &Claims) -> bool {
    match claims {
        Claims::Kube(kube) => kube.status_retry_at.is_some_and(|t| Instant::now() >= t),
        _ => false,
    }
}

/// Resolves when the kube source saw a change; never for other sources.
async fn kube_changed(claims: &Claims) {
    match claims {
        Claims::Kube(kube) => kube.changed.notified().await,
        _ => std::future::pending().await,
    }
}

fn read_claims(claims: &Claims) -> Option<Result<Vec<SourceSnapshot>, String>> {
    match claims {
        Claims::None => None,
        Claims::File(path) => Some(file::read(path).map_err(|e| e.to_string())),
        Claims::Kube(kube) => Some(Ok(kube.source.snapshot())),
    }
}

async fn reconcile_once(
    args: &RunArgs,
    claims: &mut Claims,
    shared: &SharedAgent,
    metrics: &Metrics,
    retry: &mut Duration,
    next_retry: &mut Option<Instant>,
) {
    let statuses = reconcile_locked(args, claims, shared, metrics, retry, next_retry);
    if let (Claims::Kube(kube), Some(statuses)) = (claims, statuses) {
        let now = rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        let errors = kube.status.write(&statuses, &now).await;
        for error in &errors {
            let retry_in_ms = kube.status_backoff.as_millis() as u64;
            warn!(%error, retry_in_ms, "status not written");
        }
        // The retry reconciles again, which is harmless (no change, no
        // operations), and writes what is still unwritten.
        if errors.is_empty() {
            kube.status_backoff = RETRY_MIN;
            kube.status_retry_at = None;
        } else {
            kube.status_retry_at = Some(Instant::now() + kube.status_backoff);
            kube.status_backoff = (kube.status_backoff * 2).min(RETRY_MAX);
        }
    }
}

/// One reconcile under the agent's lock; returns the claim statuses to
/// publish.
fn reconcile_locked(
    args: &RunArgs,
    claims: &mut Claims,
    agent: &SharedAgent,
    metrics: &Metrics,
    retry: &mut Duration,
    next_retry: &mut Option<Instant>,
) -> Option<
    std::collections::BTreeMap<
        pisa_daemon::spec::ClaimKey,
        pisa_daemon::reconcile::agent::ClaimStatus,
    >,
> {
    let started = Instant::now();
    let Ok(mut agent) = agent.lock() else {
        error!("agent lock poisoned");
        return None;
    };
    metrics.reconcile_runs.inc();
    if let Some(pods) = match claims {
        Claims::Kube(kube) => kube.pods.as_mut(),
        _ => None,
    } {
        let required = args.ifaces.iter().cloned().collect();
        let left_out = agent.set_interfaces(&required, &pods.found.names());
        for (iface, error) in &left_out {
            warn!(%iface, %error, "cannot attach to a Pod interface; left out until the next change or resync");
            metrics
                .reconcile_errors
                .get_or_create(&vec![("reason".into(), "attach".into())])
                .inc();
        }
        pods.left_out = left_out.into_iter().map(|(iface, _)| iface).collect();
    }
    let result = match read_claims(claims) {
        Some(read) => match read {
            Ok(sources) => {
                agent.update(&sources);
                for message in &agent.source_errors {
                    warn!(%message, "claim source error");
                }
                for status in agent.statuses.values() {
                    if status.phase == pisa_daemon::reconcile::agent::Phase::Invalid {
                        warn!(claim = %status.claim, message = %status.message, "invalid claim");
                    }
                }
                let (valid, invalid) = agent.validity();
                metrics.set_claims(valid, invalid);
                agent.reconcile().map_err(|e| (e.reason(), e.to_string()))
            }
            Err(e) => Err(("source", e)),
        },
        // No claim source: only keep the interfaces attached; classes and
        // rules already pinned are left exactly as they are.
        None => attach_only(&mut agent),
    };
    metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let last_error = match result {
        Ok(ops) => {
            if ops > 0 {
                info!(
                    ops,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
            }
            *retry = RETRY_MIN;
            *next_retry = None;
            None
        }
        Err((reason, message)) => {
            metrics
                .reconcile_errors
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc();
            error!(%message, retry_in_ms = retry.as_millis() as u64, "reconcile failed");
            *next_retry = Some(Instant::now() + *retry);
            *retry = (*retry * 2).min(RETRY_MAX);
            Some(message)
        }
    };
    publish(args, &agent, last_error);
    Some(agent.statuses.clone())
}

fn attach_only(agent: &mut Agent<Kernel>) -> Result<usize, (&'static str, String)> {
    let wanted: Vec<String> = agent.ifaces.iter().cloned().collect();
    let attached = agent.dp.interfaces();
    let mut count = 0;
    for iface in wanted.iter().filter(|i| !attached.contains(*i)) {
        agent
            .dp
            .attach(iface)
            .map_err(|e| ("attach", e.to_string()))?;
        count += 1;
    }
    agent.ready = true;
    Ok(count)
}

fn publish(args: &RunArgs, agent: &Agent<Kernel>, last_error: Option<String>) {
    let state = PublishedState {
        pid: std::process::id(),
        bpffs: args.bpffs.clone(),
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
        last_error,
    };
    if let Err(e) = state::write(&args.state_file, &state) {
        warn!(error = %e, "could not publish state for `pisa-daemon status`");
    }
}
