//! Developer tasks: `cargo xtask <task>`. This is where shelling out is fine:
//! installing packages, driving cargo, building demo topologies.

mod bench;
mod demo;
mod previous;
mod setup;
mod shell;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Pisa-Daemon developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Build the previous release (for the upgrade test) into target/previous.
    Previous,
    /// Build the eBPF object and the daemon (release) that embeds it.
    BuildEbpf,
    /// Setup, fmt, clippy, unit tests, then the root integration tests.
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Skip setup (for quick iterations on a prepared machine).
        #[arg(long)]
        no_setup: bool,
        /// Run only the root integration suite, N times, and report which
        /// test failed on which round (finds flaky tests before CI does).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
    /// Setup, build, and shape real traffic in a throwaway network topology.
    Demo,
    /// Write generated files: the QoSClaim and QoSNodeReport CRDs into manifests/crd/.
    Codegen,
    /// Run benchmarks and record them in docs/benchmarks.md.
    Bench {
        /// dataplane, agent, api, db, status, or all.
        #[arg(default_value = "all")]
        which: String,
        /// Passed to the benchmark, e.g. `db -- --link-rate 1gbit`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// The CRD comes from the daemon's own types (`pisa-daemon crd`), so the
/// committed YAML can never drift from what the daemon validates; a unit
/// test fails when it is stale.
fn codegen() -> Result<()> {
    for name in ["qosclaims", "qosnodereports"] {
        let out = shell::capture(
            "cargo",
            &["run", "-q", "-p", "pisa-daemon", "--", "crd", name],
        )?;
        if !out.status.success() {
            anyhow::bail!(
                "pisa-daemon crd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = shell::workspace().join(format!("manifests/crd/{name}.yaml"));
        std::fs::create_dir_all(path.parent().expect("manifests/crd"))?;
        std::fs::write(&path, &out.stdout)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Previous => previous::build().map(|_| ()),
        Task::BuildEbpf => setup::build_release(),
        Task::Test {
            filter,
            no_setup,
            repeat,
        } => test::run(filter.as_deref(), no_setup, repeat),
        Task::Demo => demo::run(),
        Task::Bench { which, args } => bench::run(&which, &args),
        Task::Codegen => codegen(),
    }
}
