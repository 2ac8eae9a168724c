//! `cargo xtask test`: the whole suite, in the order that fails fastest;
//! `--repeat N` reruns the root integration suite to find flaky tests.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{
    matrix::{self, Outcome, Target},
    previous, setup,
    shell::{cmd, is_root, workspace},
};

/// The root integration suite: one test binary (tests/main.rs), one test
/// at a time (they share the host's routing, ports and CPU).
const INTEGRATION: &[&str] = &["test", "--package", "pisa-daemon", "--test", "integration"];

pub fn run(filter: Option<&str>, no_setup: bool, repeat: u32, kernels: &str) -> Result<()> {
    let targets = matrix::parse_targets(kernels)?;
    if !is_root() {
        // The integration tests attach programs and build namespaces; they
        // must not be silently skipped, so refuse up front.
        bail!("the test suite needs root (CAP_BPF, CAP_NET_ADMIN, netns): run it as root");
    }
    if !no_setup {
        setup::run_setup_steps()?;
        // The upgrade test runs the previous release before this one.
        previous::build()?;
    }
    if repeat > 1 {
        if targets != [Target::Host] {
            bail!("--repeat runs the host suite only: add --kernel host");
        }
        return repeat_integration(filter, repeat);
    }
    if targets.contains(&Target::Host) {
        static_checks_and_unit_tests()?;
    }
    let binary = build_integration()?;
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = match target {
            Target::Host => {
                let (args, left_out) = matrix::test_args(Target::Host, filter);
                let kernel = host_kernel();
                matrix::announce(Target::Host, &kernel, &left_out);
                let round = run_round(&binary, &args)?;
                Outcome {
                    target,
                    kernel,
                    passed: round.passed,
                    failed: round.failed,
                    left_out,
                    completed: round.completed,
                    seconds: round.seconds,
                }
            }
            Target::Guest(series) => matrix::run_guest(series, &binary, filter)?,
        };
        outcomes.push(outcome);
    }
    matrix::report(&outcomes)?;
    eprintln!("xtask test: all passed");
    Ok(())
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// fmt, clippy and the unit tests: what fails fastest, before any kernel.
fn static_checks_and_unit_tests() -> Result<()> {
    cmd("cargo", &["fmt", "--all", "--check"])?;
    cmd(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "pisa-daemon-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cmd(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "pisa-daemon-ebpf",
            "--lib",
            "--bins",
        ],
    )
}

/// One run of the integration suite: the tests that failed, and whether
/// the run itself completed (a crash or a build failure fails it whole).
struct Round {
    passed: usize,
    failed: Vec<String>,
    completed: bool,
    seconds: f64,
}

/// Runs the integration suite `rounds` times (built once), printing which
/// test failed on which round, then a summary. Fails if any round failed.
fn repeat_integration(filter: Option<&str>, rounds: u32) -> Result<()> {
    let binary = build_integration()?;
    let started = Instant::now();
    let mut results = Vec::new();
    for round in 1..=rounds {
        eprintln!("=== xtask test --repeat: round {round}/{rounds} ===");
        let result = run_round(&binary, &matrix::test_args(Target::Host, filter).0)?;
        eprintln!(
            "=== round {round}/{rounds}: {} passed, {} failed{} in {:.0} s ===",
            result.passed,
            result.failed.len(),
            if result.completed {
                String::new()
            } else {
                " (the run did not complete)".into()
            },
            result.seconds
        );
        results.push(result);
    }
    let mut by_test: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (round, result) in (1..).zip(&results) {
        for test in &result.failed {
            by_test.entry(test).or_default().push(round);
        }
    }
    let incomplete: Vec<u32> = (1..)
        .zip(&results)
        .filter(|(_, r)| !r.completed)
        .map(|(round, _)| round)
        .collect();
    println!("xtask test --repeat {rounds}: summary");
    for (round, result) in (1..).zip(&results) {
        println!(
            "  round {round}: {:>3} passed, {:>2} failed, {:>5.0} s",
            result.passed,
            result.failed.len(),
            result.seconds
        );
    }
    for (test, failed_rounds) in &by_test {
        println!("  FLAKY {test}: failed on round(s) {failed_rounds:?}");
    }
    println!(
        "  total: {rounds} rounds, {} failing test(s), {} incomplete round(s), {:.0} s",
        by_test.len(),
        incomplete.len(),
        started.elapsed().as_secs_f64()
    );
    if !by_test.is_empty() || !incomplete.is_empty() {
        bail!(
            "{} test(s) failed and {} round(s) did not complete over {rounds} rounds",
            by_test.len(),
            incomplete.len()
        );
    }
    Ok(())
}

/// Builds the integration test binary once and returns its path, so that
/// every round runs the same build (and editing the tree meanwhile cannot
/// change what is tested).
fn build_integration() -> Result<PathBuf> {
    let mut args = INTEGRATION.to_vec();
    args.extend(["--no-run", "--message-format=json"]);
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(&args)
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests")?;
    if !out.status.success() {
        bail!("building the integration tests failed: {}", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "integration")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `integration` test executable")
}

/// Runs the suite once, echoing its output and reading libtest's
/// `test NAME ... ok|FAILED` lines.
fn run_round(binary: &Path, args: &[String]) -> Result<Round> {
    let started = Instant::now();
    // cargo runs a package's tests from the package's directory.
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(workspace().join("pisa-daemon"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        lines.push(line);
    }
    let (passed, failed) = matrix::count(lines.iter().map(String::as_str));
    let status = child.wait().context("waiting for the tests")?;
    // libtest exits 101 when tests failed; anything else with no failed
    // test named (a crash, a signal) means the round did not complete.
    let completed = status.success() || !failed.is_empty();
    Ok(Round {
        passed,
        failed,
        completed,
        seconds: started.elapsed().as_secs_f64(),
    })
}
