//! Developer tasks: `cargo xtask <task>`. This is where shelling out is fine:
//! installing packages, driving cargo, building demo topologies.

mod bench;
mod demo;
mod guest;
mod kernels;
mod matrix;
mod previous;
mod setup;
mod shell;
mod test;

use anyhow::{Context, Result};
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
        /// Which kernels run the root integration suite: all (this host,
        /// then 6.1 and 6.12 booted under QEMU), host, 6.1, 6.12, or a
        /// comma-separated list.
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Setup, build, and shape real traffic in a throwaway network topology.
    Demo,
    /// Boot a kernel of the test matrix under QEMU and run a shell command
    /// in it, as root, on this machine's root filesystem.
    Guest {
        /// 6.1 or 6.12.
        kernel: String,
        /// The command, e.g. `-- 'uname -r; tc qdisc show'`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
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

fn guest_command(kernel: &str, command: &str) -> Result<()> {
    let series = kernels::Series::parse(kernel)
        .with_context(|| format!("kernel {kernel:?}: the choices are 6.1 and 6.12"))?;
    let kernel = kernels::fetch(series)?;
    let finished = guest::Guest {
        kernel: &kernel,
        cpus: 2,
        memory_mib: 2048,
        timeout: std::time::Duration::from_secs(1800),
    }
    .run(&std::env::current_dir()?, command)?;
    match finished.status {
        Some(0) => Ok(()),
        Some(code) => anyhow::bail!(
            "the command exited with {code} in the {kernel} guest",
            kernel = kernel.version
        ),
        None => anyhow::bail!("the {} guest did not finish the command", kernel.version),
    }
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
            kernel,
        } => test::run(filter.as_deref(), no_setup, repeat, &kernel),
        Task::Demo => demo::run(),
        Task::Bench { which, args } => bench::run(&which, &args),
        Task::Codegen => codegen(),
        Task::Guest { kernel, command } => guest_command(&kernel, &command.join(" ")),
    }
}
