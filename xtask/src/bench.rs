//! `cargo xtask bench [dataplane|agent|api|db|status|all] [-- ARGS]`: runs the benchmark binaries
//! (release build, root) and records their Markdown output in
//! `docs/benchmarks.md`, one section per benchmark, with the date and the
//! machine. Figures are measured in the run, never edited by hand.

use anyhow::{bail, Context, Result};

use crate::shell::{capture, is_root, output, workspace};

pub fn run(which: &str, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach programs and build namespaces: run them as root");
    }
    if which == "edt-guest" {
        return edt_guest(args);
    }
    let names: Vec<&str> = match which {
        "all" => vec!["dataplane", "agent", "api", "db", "status"],
        "dataplane" | "agent" | "api" | "db" | "status" => vec![which],
        other => {
            bail!(
                "unknown benchmark `{other}`; valid: dataplane, agent, api, db, status, \
                 edt-guest, all"
            )
        }
    };
    // The database bench needs PostgreSQL; every bench needs the toolchain.
    crate::setup::run_setup_steps()?;
    // The data-plane bench times the previous release's program beside this
    // one; the agent bench its CPU at rest.
    if names.contains(&"dataplane") || names.contains(&"agent") {
        crate::previous::build()?;
    }
    for name in names {
        eprintln!(
            "+ cargo bench --package pisa-daemon --bench {name} -- {}",
            args.join(" ")
        );
        let out = std::process::Command::new("cargo")
            .args(["bench", "--package", "pisa-daemon", "--bench", name, "--"])
            .args(args)
            .current_dir(workspace())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo bench")?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{report}");
        if !out.status.success() {
            bail!("benchmark {name} failed: {}", out.status);
        }
        record(name, &report)?;
    }
    Ok(())
}

/// The data-plane bench's rate-accuracy section (HTB, EDT, tc's HTB and
/// TBF side by side) and its multiqueue section (HTB root against mq + fq)
/// in the 6.12 guest of the kernel matrix, where sch_fq enforces EDT; this
/// host has none. Recorded as its own section.
fn edt_guest(args: &[String]) -> Result<()> {
    crate::setup::run_setup_steps()?;
    let built = std::process::Command::new("cargo")
        .args([
            "bench",
            "--package",
            "pisa-daemon",
            "--bench",
            "dataplane",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the dataplane bench")?;
    if !built.status.success() {
        bail!("building the dataplane bench failed: {}", built.status);
    }
    let binary = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "dataplane")
        .find_map(|message| message["executable"].as_str().map(str::to_owned))
        .context("cargo built no `dataplane` bench executable")?;
    let kernel = crate::kernels::fetch(crate::kernels::Series::V6_12)?;
    let mut command = format!("'{binary}' --bench accuracy multiqueue");
    for arg in args {
        command.push_str(&format!(" '{}'", arg.replace('\'', "")));
    }
    // Only the Markdown: the console would mix in the bench's progress.
    command.push_str(" 2>/dev/null");
    let finished = crate::guest::Guest {
        kernel: &kernel,
        cpus: 2,
        memory_mib: 2048,
        timeout: std::time::Duration::from_secs(1800),
    }
    .run(&workspace().join("pisa-daemon"), &command)?;
    if finished.status != Some(0) {
        bail!("the bench did not finish in the {} guest", kernel.version);
    }
    // From the section's heading on (the kernel may log before it).
    let report: Vec<&str> = finished
        .lines
        .iter()
        .map(String::as_str)
        .skip_while(|line| !line.starts_with("### "))
        .collect();
    let report = format!(
        "In the kernel matrix's {} guest (QEMU TCG, 2 vCPUs on this host): TCG bounds what a \
         veth carries, so compare the columns within a row, not with the host's section.\n\n{}",
        kernel.version,
        report.join("\n")
    );
    record("edt-guest", &report)
}

fn machine() -> String {
    let kernel = output("uname", &["-r"]).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = capture("nproc", &[])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("kernel {}, {cpus} x {cpu}", kernel.trim())
}

fn record(name: &str, report: &str) -> Result<()> {
    let path = workspace().join("docs/benchmarks.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench`; every figure below was measured by \
         the run that wrote its section. The machines are shared 2-core VMs: compare the \
         ratios within one section, not absolute numbers across sections.\n"
            .to_owned()
    });
    let begin = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let section = format!(
        "{begin}\n## {name}\n\nRun {} on {}.\n\n{}\n{end}",
        date.trim(),
        machine(),
        report.trim()
    );
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &existing[..a], &existing[b + end.len()..]),
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::create_dir_all(workspace().join("docs"))?;
    std::fs::write(&path, updated).context("writing docs/benchmarks.md")?;
    eprintln!("recorded in docs/benchmarks.md");
    Ok(())
}
