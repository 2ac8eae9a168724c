//! The command line: every subcommand and flag, as clap types.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use pisa_daemon::{
    api::{client::ApiTarget, DEFAULT_SOCKET},
    kernel::bpffs::DEFAULT_ROOT,
    state::DEFAULT_STATE_FILE,
    tags::{DEFAULT_TAGS, MAX_TAGS},
};

use crate::tag;

/// Pisa-Daemon classifies database traffic with eBPF at tc egress and
/// shapes it per QoS class, from QoSClaim objects. Its kernel state is
/// pinned under a bpffs root and stays in force when the daemon stops.
#[derive(Debug, Parser)]
#[command(name = "pisa-daemon", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PISA_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--config-watch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigWatch {
    Inotify,
    Poll,
}

/// `--kernel-log`: whether the kernel program writes debug events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLog {
    Off,
    Debug,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// How --config changes are seen: `inotify` (within tens of
        /// milliseconds; polls where inotify cannot be had) or `poll`
        /// (every 100 ms: for network file systems written from elsewhere,
        /// whose changes inotify never sees).
        #[arg(long, value_enum, value_name = "HOW", default_value_t = ConfigWatch::Inotify,
              requires = "config")]
        config_watch: ConfigWatch,
        /// Take claims from the Kubernetes API (in-cluster, or kubeconfig):
        /// QoSClaims and Pisanix VirtualDatabases. This node's view of them
        /// is written to its QoSNodeReport, and the daemon holding the
        /// status Lease writes each claim's aggregate status.
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
        /// With --kube: the daemon's own namespace, where this node's
        /// QoSNodeReport and the status Lease live (the DaemonSet sets it
        /// from metadata.namespace through the downward API).
        #[arg(long, value_name = "NS", env = "POD_NAMESPACE",
              default_value = "pisa-system", value_parser = namespace_name)]
        report_namespace: String,
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
        /// Capacity classes share and borrow from: `IFACE=RATE` for one
        /// interface, `RATE` for every interface not named (repeat the
        /// flag). Without it, each interface's own speed (ethtool's), else
        /// 10gbit. tc units, e.g. --link-rate eth0=25gbit --link-rate 1gbit.
        #[arg(long = "link-rate", value_name = "[IFACE=]RATE")]
        link_rates: Vec<String>,
        /// Most claims (classes) this node holds.
        #[arg(long, value_name = "N", default_value_t = 4096)]
        max_classes: usize,
        /// Where the daemon publishes its state for `status`. Claims held at
        /// their last good version are kept beside it for the next run
        /// (state.json -> state.last-good.json).
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
        /// Most connections tagged at once (up to 4194304). A full table
        /// evicts the tag that would lapse soonest and counts it
        /// (`pisa_flow_tags_evicted_total`). Each connection takes one
        /// kernel map entry, allocated as tags arrive.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_TAGS, env = "PISA_MAX_FLOW_TAGS",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_TAGS as u64))]
        max_flow_tags: usize,
        /// Debug events from the kernel program (a packet it could not
        /// parse; a connection start or close handed up, or not, with its
        /// addresses), logged under the target `pisa_kernel`. `off` costs
        /// one array read on those rare paths only.
        #[arg(long, value_enum, value_name = "LEVEL", default_value_t = KernelLog::Off,
              env = "PISA_KERNEL_LOG")]
        kernel_log: KernelLog,
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
    /// Print a CRD (YAML) generated from the Rust types.
    #[command(hide = true)]
    Crd {
        /// `qosclaims` or `qosnodereports`.
        #[arg(default_value = "qosclaims")]
        name: String,
    },
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
pub struct ApiArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "PISA_API_SOCKET")]
    pub api_socket: PathBuf,
    /// Use the TCP API instead, e.g. 127.0.0.1:50051.
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_addr: Option<SocketAddr>,
}

impl ApiArgs {
    pub fn target(&self) -> ApiTarget {
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

/// A namespace name as Kubernetes accepts it: an RFC 1123 label.
fn namespace_name(value: &str) -> Result<String, String> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = !value.starts_with('-') && !value.ends_with('-');
    if !value.is_empty() && value.len() <= 63 && valid_chars && valid_ends {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not a namespace name; valid: 1-63 lowercase letters, digits \
             and '-', starting and ending with a letter or digit"
        ))
    }
}
