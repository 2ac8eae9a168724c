//! `pisa-daemon`: the node agent binary. It parses arguments (`args`) and
//! calls the library; `run` turns signals into the control loop's messages.

mod args;
mod run;
mod status;
mod tag;

use std::time::Duration;

use anyhow::{Context, Result};
use args::{Cli, Command, ConfigWatch, KernelLog, LogFormat, Output};
use clap::Parser;
use pisa_daemon::{
    daemon::{ApiConfig, NodeConfig},
    kernel::{self, features, PinLayout},
    source::{file, kube::KubeArgs, Watch},
    spec::{self, Limits},
};
use tracing::info;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `kernel_events`: `--kernel-log debug` asked for the program's events,
/// so they are shown whatever the rest of the filter says.
fn init_logging(format: LogFormat, kernel_events: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if kernel_events {
        if let Ok(directive) = "pisa_kernel=debug".parse() {
            filter = filter.add_directive(directive);
        }
    }
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
    let kernel_events = matches!(
        cli.command,
        Command::Run {
            kernel_log: KernelLog::Debug,
            ..
        }
    );
    init_logging(cli.log_format, kernel_events);
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
            config_watch,
            kube,
            namespaces,
            node_name,
            no_follow_pods,
            report_namespace,
            ifaces,
            bpffs,
            metrics_addr,
            link_rates,
            max_classes,
            state_file,
            api_socket,
            api_socket_group,
            api_tcp,
            max_flow_tags,
            kernel_log,
        } => {
            let link_rates = spec::parse_link_rates(&link_rates)?;
            let config = NodeConfig {
                config,
                config_watch: match config_watch {
                    ConfigWatch::Inotify => Watch::Inotify,
                    ConfigWatch::Poll => Watch::Poll,
                },
                kube: kube.then(|| KubeArgs {
                    namespaces,
                    node: node_name.unwrap_or_default(),
                    follow_pods: !no_follow_pods,
                    report_namespace,
                }),
                api: ApiConfig {
                    socket: (api_socket.as_os_str() != "none").then_some(api_socket),
                    socket_group: api_socket_group,
                    tcp: api_tcp,
                    max_flow_tags,
                },
                ifaces,
                bpffs,
                metrics_addr,
                link_rates,
                max_classes,
                state_file,
                kernel_log: kernel_log == KernelLog::Debug,
            };
            runtime()?.block_on(run::run(config))?;
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
            let limits = Limits {
                max_classes,
                edt_available: features::probe().sch_fq,
                pod_selectors: false,
            };
            let checked = file::check(&path, limits)?;
            let errors = checked.errors();
            for error in &errors {
                println!("{error}");
            }
            for warning in checked.warnings() {
                println!("warning: {warning}");
            }
            let valid = checked.valid_claims();
            match errors.len() {
                0 => println!("{valid} claim(s) valid"),
                n => println!("{n} error(s); {valid} claim(s) valid"),
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
        Command::Crd { name } => {
            print!("{}", pisa_daemon::spec::crd_yaml(&name)?);
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
