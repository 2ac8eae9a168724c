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
    let names: Vec<&str> = match which {
        "all" => vec!["dataplane", "agent", "api", "db", "status"],
        "dataplane" | "agent" | "api" | "db" | "status" => vec![which],
        other => {
            bail!("unknown benchmark `{other}`; valid: dataplane, agent, api, db, status, all")
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
