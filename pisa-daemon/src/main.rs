//! `pisa-daemon`: the node agent binary.

mod http;
mod run;
mod status;
mod tag;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pisa_daemon::{
    api::{client::ApiTarget, DEFAULT_SOCKET},
    kernel::{self, bpffs::DEFAULT_ROOT, features, PinLayout},
    source::{file, tags::MAX_TAGS},
    spec::{units, validate, Limits},
    state::DEFAULT_STATE_FILE,
};
use tracing::info;

/// Pisa-Daemon classifies database traffic with eBPF at tc egress and
/// shapes it per QoS class, from QoSClaim objects. Its kernel state is
/// pinned under a bpffs root and stays in force when the daemon stops.
#[derive(Debug, Parser)]
#[command(name = "pisa-daemon", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PISA_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach at egress of the interfaces and enforce the claims in --config,
    /// reloading on change, until SIGTERM/SIGINT. Pinned state is kept on
    /// exit, so shaping stays in force across restarts; a restarted daemon
    /// adopts it without detaching.
    Run {
        /// QoSClaim YAML: a multi-document file or a directory of *.yaml.
        /// Without it, only attach (and count); pinned classes are kept.
        #[arg(
            long,
            value_name = "PATH",
            env = "PISA_CONFIG",
            conflicts_with = "kube"
        )]
        config: Option<PathBuf>,
        /// Take claims from the Kubernetes API (in-cluster, or kubeconfig):
        /// QoSClaims and Pisanix VirtualDatabases, with this node's status
        /// written back to each claim.
        #[arg(long, requires = "node_name")]
        kube: bool,
        /// With --kube: watch only this namespace (repeat for several).
        #[arg(long = "namespace", value_name = "NS", requires = "kube")]
        namespaces: Vec<String>,
        /// With --kube: this node's name (the DaemonSet sets it from
        /// spec.nodeName through the downward API).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
        /// With --kube: do not follow this node's Pods. By default the host
        /// interface each Pod's address is routed to (its veth, or the
        /// bridge of a bridged CNI) is attached while the Pod runs, so that
        /// traffic between Pods on one node is shaped too.
        #[arg(long, requires = "kube")]
        no_follow_pods: bool,
        /// Interface to attach to (repeat for several), e.g. --iface eth0.
        /// Required unless --kube follows Pods.
        #[arg(long = "iface", value_name = "NAME", required_unless_present = "kube")]
        ifaces: Vec<String>,
        /// bpffs directory holding the pinned program, maps and links.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_ROOT, env = "PISA_BPFFS")]
        bpffs: PathBuf,
        /// Serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR", env = "PISA_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// Capacity classes share and borrow from on each interface (tc units).
        #[arg(long, value_name = "RATE", default_value = "10gbit")]
        link_rate: String,
        /// Most claims (classes) this node holds.
        #[arg(long, value_name = "N", default_value_t = 4096)]
        max_classes: usize,
        /// Where the daemon publishes its state for `status`.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_STATE_FILE)]
        state_file: PathBuf,
        /// Unix socket of the gRPC API (mode 0600), or `none` for no socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "PISA_API_SOCKET")]
        api_socket: PathBuf,
        /// Make the API socket 0660 and owned by this group (e.g. the proxy's).
        #[arg(long, value_name = "GROUP")]
        api_socket_group: Option<String>,
        /// Also serve the gRPC API over TCP: a port (bound to 127.0.0.1) or
        /// ADDR:PORT. Off unless given.
        #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_api_tcp)]
        api_tcp: Option<SocketAddr>,
        /// Most connections tagged at once (a full table refuses new tags).
        #[arg(long, value_name = "N", default_value_t = MAX_TAGS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_TAGS as u64))]
        max_flow_tags: usize,
    },
    /// Tag a connection with a class through the running daemon (as the
    /// SQL proxy does), e.g.
    /// `tag --src 10.0.0.7:40000 --dst 10.0.0.5:3306 --claim shop/catalogue --ttl 300`.
    Tag {
        #[command(flatten)]
        flow: tag::FlowArgs,
        /// The claim, as NAMESPACE/NAME.
        #[arg(
            long,
            value_name = "NS/NAME",
            conflicts_with = "class",
            required_unless_present = "class"
        )]
        claim: Option<String>,
        /// The kernel class id (see `status`).
        #[arg(long, value_name = "ID")]
        class: Option<u32>,
        /// Seconds until the tag lapses (1-86400).
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        ttl: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a connection's tag through the running daemon.
    Untag {
        #[command(flatten)]
        flow: tag::FlowArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check claim files; print every error. Exit 0 when all are valid.
    Validate {
        /// A YAML file or a directory of *.yaml.
        path: PathBuf,
        /// Most claims (classes) a node holds.
        #[arg(long, value_name = "N", default_value_t = 4096)]
        max_classes: usize,
    },
    /// Show classes: claim, mode, rate, ceil, priority, interfaces, bytes,
    /// current rate and drops.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, value_name = "PATH", default_value = DEFAULT_ROOT, env = "PISA_BPFFS")]
        bpffs: PathBuf,
        #[arg(long, value_name = "PATH", default_value = DEFAULT_STATE_FILE)]
        state_file: PathBuf,
        /// How long to sample the counters for the current rate.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        sample_ms: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the QoSClaim CRD (YAML) generated from the Rust types.
    #[command(hide = true)]
    Crd,
    /// Detach from every interface and remove every pinned object, qdisc
    /// and class under the bpffs root. Touches nothing it did not create.
    Cleanup {
        /// bpffs directory holding the pinned program, maps and links.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_ROOT, env = "PISA_BPFFS")]
        bpffs: PathBuf,
    },
}

/// Where a client subcommand finds the daemon's API.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "PISA_API_SOCKET")]
    api_socket: PathBuf,
    /// Use the TCP API instead, e.g. 127.0.0.1:50051.
    #[arg(long, value_name = "ADDR:PORT")]
    api_addr: Option<SocketAddr>,
}

impl ApiArgs {
    fn target(&self) -> ApiTarget {
        match self.api_addr {
            Some(addr) => ApiTarget::Tcp(format!("http://{addr}")),
            None => ApiTarget::Unix(self.api_socket.clone()),
        }
    }
}

/// `--api-tcp`: a bare port means loopback.
fn parse_api_tcp(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value.parse().map_err(|_| {
        format!("`{value}` is neither a port (50051) nor ADDR:PORT (127.0.0.1:50051, [::1]:50051)")
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never in log files.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<bool> {
    match command {
        Command::Run {
            config,
            kube,
            namespaces,
            node_name,
            no_follow_pods,
            ifaces,
            bpffs,
            metrics_addr,
            link_rate,
            max_classes,
            state_file,
            api_socket,
            api_socket_group,
            api_tcp,
            max_flow_tags,
        } => {
            let link_rate_bytes = units::parse_rate_bytes(&link_rate)
                .with_context(|| format!("--link-rate `{link_rate}`"))?;
            let args = run::RunArgs {
                config,
                kube: kube.then(|| run::KubeArgs {
                    namespaces,
                    node: node_name.unwrap_or_default(),
                    follow_pods: !no_follow_pods,
                }),
                api: run::ApiArgs {
                    socket: (api_socket.as_os_str() != "none").then_some(api_socket),
                    socket_group: api_socket_group,
                    tcp: api_tcp,
                    max_flow_tags,
                },
                ifaces,
                bpffs,
                metrics_addr,
                link_rate_bytes,
                max_classes,
                state_file,
            };
            runtime()?.block_on(run::run(args))?;
            Ok(true)
        }
        Command::Tag {
            flow,
            claim,
            class,
            ttl,
            api,
        } => runtime()?.block_on(tag::tag(&api.target(), &flow, claim, class, ttl)),
        Command::Untag { flow, api } => runtime()?.block_on(tag::untag(&api.target(), &flow)),
        Command::Validate { path, max_classes } => {
            let sources = file::read(&path)?;
            let mut documents = Vec::new();
            let mut errors = Vec::new();
            for source in sources {
                match source.documents {
                    Ok(docs) => documents.extend(docs),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let limits = Limits {
                max_classes,
                edt_available: features::probe().sch_fq,
            };
            let validated = validate(&documents, limits);
            errors.extend(validated.errors().iter().map(|e| e.to_string()));
            for error in &errors {
                println!("{error}");
            }
            let claims = validated.valid.len();
            if errors.is_empty() {
                println!("{claims} claim(s) valid");
            } else {
                println!("{} error(s); {claims} claim(s) valid", errors.len());
            }
            Ok(errors.is_empty())
        }
        Command::Status {
            output,
            bpffs,
            state_file,
            sample_ms,
            api,
        } => status::status(
            &runtime()?,
            &api.target(),
            &bpffs,
            &state_file,
            matches!(output, Output::Json),
            Duration::from_millis(sample_ms),
        ),
        Command::Crd => {
            print!("{}", pisa_daemon::spec::crd_yaml()?);
            Ok(true)
        }
        Command::Cleanup { bpffs } => {
            let report = kernel::pinned::cleanup(&PinLayout::new(&bpffs))?;
            info!(
                detached = ?report.detached,
                unpinned = report.unpinned,
                root = %bpffs.display(),
                "cleanup done"
            );
            Ok(true)
        }
    }
}
