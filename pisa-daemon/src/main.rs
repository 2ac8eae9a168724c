//! `pisa-daemon`: the node agent binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pisa_daemon::kernel::{self, bpffs::DEFAULT_ROOT, Kernel, PinLayout};
use tracing::info;

/// Pisa-Daemon classifies database traffic with eBPF at tc egress and
/// shapes it per QoS class. Its kernel state is pinned under a bpffs root
/// and stays in force when the daemon stops; `cleanup` removes it.
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the classifier, attach it at egress of the interfaces, and run
    /// until SIGTERM/SIGINT. Pinned state is kept on exit, so shaping stays
    /// in force across restarts; a restarted daemon adopts it.
    Run {
        /// Interface to attach to (repeat for several), e.g. --iface eth0.
        #[arg(long = "iface", value_name = "NAME", required = true)]
        ifaces: Vec<String>,
        /// bpffs directory holding the pinned program, maps and links.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_ROOT, env = "PISA_BPFFS")]
        bpffs: PathBuf,
    },
    /// Detach from every interface and remove every pinned object under the
    /// bpffs root. Touches nothing it did not create.
    Cleanup {
        /// bpffs directory holding the pinned program, maps and links.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_ROOT, env = "PISA_BPFFS")]
        bpffs: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { ifaces, bpffs } => run(ifaces, bpffs),
        Command::Cleanup { bpffs } => cleanup(bpffs),
    }
}

fn run(ifaces: Vec<String>, bpffs: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut kernel = Kernel::open(PinLayout::new(&bpffs))?;
        for iface in &ifaces {
            kernel.attach_egress(iface)?;
        }
        info!(
            program_id = kernel.program_id(),
            "running; SIGTERM or SIGINT to stop"
        );
        wait_for_shutdown().await?;
        info!("stopping; pinned kernel state stays in force (`pisa-daemon cleanup` removes it)");
        Ok(())
    })
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    Ok(())
}

fn cleanup(bpffs: PathBuf) -> Result<()> {
    let report = kernel::pinned::cleanup(&PinLayout::new(&bpffs))?;
    info!(
        detached = ?report.detached,
        unpinned = report.unpinned,
        root = %bpffs.display(),
        "cleanup done"
    );
    Ok(())
}
