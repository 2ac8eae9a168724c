//! `cargo xtask bench agent`: the node agent measured with the real binary.
//! Prints a Markdown section.
//!
//! 1. File change -> enforcement for one claim: from the write to the first
//!    packet counted in the claim's class, with inotify and, side by side in
//!    the same run, with polling (`--config-watch poll`).
//! 2. Apply time and daemon RSS with 1 claim (baseline) and 10,000 claims.
//! 3. Start time: cold (empty bpffs root) vs adopting 10,000 pinned classes.
//! 4. CPU at rest with 10,000 claims, this build beside the previous release.

// The integration tests' fixtures; a bench uses only some of them.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

#[path = "common/process_stats.rs"]
mod process_stats;
#[allow(unused_imports)]
use process_stats::{pid_of, rss_kib};

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use pisa_daemon_common::ClassConfig;
use support::*;

fn claim(name: &str, rate: &str, host: &str) -> String {
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}, namespace: bench}}\n\
         spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}}}\n    direction: to\n    \
         endpoints: [{{host: {host}, port: 5432}}]\n---\n"
    )
}

fn claims(count: u32) -> String {
    claims_with(count, |_| "10mbit".into())
}

/// `count` claims, claim `i` at `rate(i)`.
fn claims_with(count: u32, rate: impl Fn(u32) -> String) -> String {
    (0..count)
        .map(|i| {
            claim(
                &format!("c{i}"),
                &rate(i),
                &format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
            )
        })
        .collect()
}

/// The claim changed among the 10,000, and how many times.
const CHANGED: u32 = 5000;
const CHANGES: u32 = 20;

/// One claim's rate changed among 10,000 already applied: from the write
/// to the new rate in the class's `CLASS_CONFIG` entry (what the program
/// enforces by), and the reconcile's own log (operations, elapsed).
/// Returns (write-to-enforced ms per change, ops per change, logged ms).
fn one_change_among(
    run: &mut Run,
    root: &BpffsRoot,
    config: &Path,
) -> (Vec<f64>, Vec<u64>, Vec<u64>) {
    // The state file is written just after the reconcile's log line.
    let mut id = None;
    wait_until(
        "the state file to list the claims",
        Duration::from_secs(30),
        || {
            let state_json: serde_json::Value = std::fs::read(&run.state)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            id = state_json["classes"].as_array().and_then(|classes| {
                classes
                    .iter()
                    .find(|c| c["claim"].as_str() == Some(&format!("bench/c{CHANGED}")))
                    .and_then(|c| c["class_id"].as_u64())
            });
            id.is_some()
        },
    );
    let id = id.expect("the changed claim's class") as u32;
    let class_map =
        Map::from_map_data(MapData::from_pin(root.layout().map("CLASS_CONFIG")).unwrap()).unwrap();
    let class_map: Array<_, ClassConfig> = Array::try_from(class_map).unwrap();
    let (mut enforced, mut ops, mut logged) = (Vec::new(), Vec::new(), Vec::new());
    for change in 1..=CHANGES {
        let mbit = 10 + u64::from(change);
        let body = claims_with(10_000, |i| {
            if i == CHANGED {
                format!("{mbit}mbit")
            } else {
                "10mbit".into()
            }
        });
        let lines_before = run.guard.stderr_text().lines().count();
        let written = Instant::now();
        write_atomically(config, &body);
        loop {
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "change {change} never landed"
            );
            if class_map.get(&id, 0).ok().map(|c| c.rate_bytes) == Some(mbit * 125_000) {
                enforced.push(written.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut line = None;
        wait_until(
            "the change's reconcile log",
            Duration::from_secs(10),
            || {
                line = run
                    .guard
                    .stderr_text()
                    .lines()
                    .skip(lines_before)
                    .find(|l| l.contains("reconciled"))
                    .map(str::to_owned);
                line.is_some()
            },
        );
        let field = |name: &str| -> u64 {
            line.as_deref()
                .and_then(|l| l.split(&format!("{name}=")).nth(1))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .expect("a logged field")
        };
        ops.push(field("ops"));
        logged.push(field("elapsed_ms"));
        std::thread::sleep(Duration::from_millis(200));
    }
    (enforced, ops, logged)
}

fn write_atomically(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Run {
    guard: ChildGuard,
    state: PathBuf,
    started: Instant,
}

fn start(config: &Path, iface: &str, root: &BpffsRoot, state: &Path) -> Run {
    start_watching(config, iface, root, state, "inotify")
}

fn start_watching(config: &Path, iface: &str, root: &BpffsRoot, state: &Path, watch: &str) -> Run {
    start_binary(
        Path::new(daemon_bin()),
        config,
        iface,
        root,
        state,
        &["--config-watch", watch],
    )
}

/// Starts `bin` (this build or the previous release) on `config`, with
/// `extra` arguments the build understands.
fn start_binary(
    bin: &Path,
    config: &Path,
    iface: &str,
    root: &BpffsRoot,
    state: &Path,
    extra: &[&str],
) -> Run {
    let started = Instant::now();
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--iface",
        iface,
        "--bpffs",
        root.as_str(),
        "--max-classes",
        "10000",
        "--state-file",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Run {
        guard: spawn_binary(bin, &args, &[]),
        state: state.to_path_buf(),
        started,
    }
}

/// Waits until the daemon logged a successful reconcile; returns the time
/// from spawn and the apply time it logged.
fn wait_ready(run: &mut Run) -> (Duration, Option<u64>) {
    let mut logged = None;
    wait_until("a successful reconcile", Duration::from_secs(600), || {
        run.guard.assert_running();
        let log = run.guard.stderr_text();
        logged = log
            .lines()
            .rev()
            .filter(|l| l.contains("reconciled"))
            .filter_map(|l| l.split("elapsed_ms=").nth(1))
            .find_map(|v| v.split_whitespace().next()?.parse().ok());
        run.state.exists() && (logged.is_some() || log.contains("adopted pinned classes"))
    });
    (run.started.elapsed(), logged)
}

/// Edits per watch mode; every other one is timed.
const EDITS: usize = 40;
/// The file source's quiet window (`source::file`), for the table's note.
const QUIET_MS: u64 = 10;
const STREAM_PORT: u16 = 7300;

/// Write -> first packet counted in the class, for the edits that turn the
/// stream's port on; and the daemon's RSS.
fn change_to_first_packet(
    veth: &VethToNs,
    config: &Path,
    state: &Path,
    watch: &str,
) -> (Vec<f64>, u64) {
    let root = BpffsRoot::new();
    let claim_on = |port: u16, rate: u64| {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: latency, namespace: bench}}\n\
             spec:\n  trafficQoS:\n    name: latency\n    qos_group: {{rate: {rate}mbit}}\n    direction: to\n    \
             endpoints: [{{host: {}, port: {port}, protocol: UDP}}]\n",
            veth.ns_ip
        )
    };
    write_atomically(config, &claim_on(STREAM_PORT + 1, 10));
    let mut run = start_watching(config, &veth.host, &root, state, watch);
    wait_ready(&mut run);
    let state_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let id = state_json["classes"][0]["class_id"].as_u64().unwrap() as u32;
    let layout = root.layout();
    let packets = || {
        pisa_daemon::kernel::pinned::class_stats(&layout, [id].into_iter()).unwrap()[&id].packets
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let target = format!("{}:{STREAM_PORT}", veth.ns_ip);
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = socket.send_to(&[0u8; 64], &target);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut latencies = Vec::new();
    for edit in 0..EDITS {
        let on = edit % 2 == 0;
        let rate = 10 + edit as u64;
        let before = packets();
        let written = Instant::now();
        write_atomically(
            config,
            &claim_on(if on { STREAM_PORT } else { STREAM_PORT + 1 }, rate),
        );
        let class_map =
            Map::from_map_data(MapData::from_pin(layout.map("CLASS_CONFIG")).unwrap()).unwrap();
        let class_map: Array<_, ClassConfig> = Array::try_from(class_map).unwrap();
        loop {
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "edit {edit} never landed"
            );
            let landed = class_map.get(&id, 0).ok().map(|c| c.rate_bytes) == Some(rate * 125_000);
            if on && packets() > before {
                latencies.push(written.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if !on && landed {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Let the stream settle into (or out of) the class before the next.
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let rss = rss_kib(&run.guard);
    drop(run);
    (latencies, rss)
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    require_root();
    let veth = VethToNs::new();
    let dir = std::env::temp_dir().join(unique("pbench"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("claims.yaml");
    let state = dir.join("state.json");

    // 1. Change -> enforcement: UDP to the namespace every 0.5 ms, and a
    // claim whose port alternates between the stream's and another; each
    // edit that turns the stream's port on is timed from the write to the
    // first packet the class counts.
    let mut rows = Vec::new();
    for watch in ["inotify", "poll"] {
        let (latencies, rss) = change_to_first_packet(&veth, &config, &state, watch);
        rows.push((watch, latencies, rss));
    }
    println!(
        "### Agent: file change to the first packet in the new class (one claim, {EDITS} edits)\n"
    );
    println!(
        "| --config-watch | median ms | p99 ms | max ms | daemon RSS |\n|---|---|---|---|---|"
    );
    for (watch, latencies, rss) in &rows {
        println!(
            "| {watch} | {:.1} | {:.1} | {:.1} | {:.1} MiB |",
            median(latencies.clone()),
            percentile(latencies.clone(), 0.99),
            latencies.iter().cloned().fold(0.0, f64::max),
            *rss as f64 / 1024.0
        );
    }
    println!(
        "\n(inotify: a {QUIET_MS} ms quiet window after the last event, 1 ms once the claims file \
         is renamed into place or closed after writing; poll: every 100 ms, then 100 ms to settle)\n"
    );

    // 2. 1 vs 10,000 claims (and one claim changed among 10,000), and
    // 3. cold start vs adoption.
    let mut rows = Vec::new();
    let mut one_change = None;
    // HTB makes a kernel class per claim; police none (a map entry only),
    // as edt, which this host cannot run (no sch_fq).
    for (count, mode) in [(1u32, "htb"), (10_000, "htb"), (10_000, "police")] {
        let root = BpffsRoot::new();
        let body = match mode {
            "police" => claims(count).replace(
                "qos_group: {rate: 10mbit}",
                "qos_group: {rate: 10mbit}\n    mode: police",
            ),
            _ => claims(count),
        };
        write_atomically(&config, &body);
        let mut cold = start(&config, &veth.host, &root, &state);
        let (cold_ready, apply_ms) = wait_ready(&mut cold);
        // Once the reconcile has handed its freed heap back, which it does
        // after publishing the state this waits for.
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(&cold.guard);
        if count == 10_000 && mode == "htb" {
            let changes = one_change_among(&mut cold, &root, &config);
            // Each change reads the 10,000-claim file again: what it leaves
            // resident shows here, against `rss` before the changes.
            std::thread::sleep(Duration::from_secs(2));
            one_change = Some((changes, rss, rss_kib(&cold.guard)));
            write_atomically(&config, &body);
        }
        cold.guard.signal_and_wait(15, Duration::from_secs(30));
        let _ = std::fs::remove_file(&state);
        let mut warm = start(&config, &veth.host, &root, &state);
        let (warm_ready, _) = wait_ready(&mut warm);
        drop(warm);
        rows.push((count, mode, apply_ms, rss, cold_ready, warm_ready));
        drop(root);
    }
    println!("### Agent: scale, memory and restart (one interface)\n");
    println!("| claims | mode | first apply (logged) | RSS 2 s after the apply | cold start to applied | restart, adopting pinned state |");
    println!("|---|---|---|---|---|---|");
    for (count, mode, apply_ms, rss, cold, warm) in rows {
        println!(
            "| {count} | {mode} | {} ms | {:.1} MiB | {:.2} s | {:.2} s |",
            apply_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            rss as f64 / 1024.0,
            cold.as_secs_f64(),
            warm.as_secs_f64()
        );
    }
    println!();
    let ((enforced, ops, logged), rss_before, rss_after) =
        one_change.expect("the 10,000-claim run");
    println!(
        "### Agent: one claim changed among 10,000 ({CHANGES} changes of its rate, inotify)\n"
    );
    println!("| write to the new rate in CLASS_CONFIG, median | p99 | max | operations per change (logged) | reconcile, logged median | RSS before the changes | RSS 2 s after the last |");
    println!("|---|---|---|---|---|---|---|");
    let mut distinct_ops: Vec<u64> = ops.clone();
    distinct_ops.sort();
    distinct_ops.dedup();
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {} | {} ms | {:.1} MiB | {:.1} MiB |\n",
        median(enforced.clone()),
        percentile(enforced.clone(), 0.99),
        enforced.iter().cloned().fold(0.0, f64::max),
        distinct_ops
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        median(logged.iter().map(|&m| m as f64).collect()),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    );

    // 4. CPU at rest: 10,000 claims applied, then 30 s of nothing.
    write_atomically(&config, &claims(10_000));
    let mut rest = Vec::new();
    for (label, bin) in [
        ("previous release", previous_daemon_bin()),
        ("this build", PathBuf::from(daemon_bin())),
    ] {
        let root = BpffsRoot::new();
        let _ = std::fs::remove_file(&state);
        let mut run = start_binary(&bin, &config, &veth.host, &root, &state, &[]);
        wait_ready(&mut run);
        std::thread::sleep(Duration::from_secs(2));
        let pid = pid_of(&run.guard);
        let (cpu_before, wall_before) = (cpu_seconds(pid), Instant::now());
        std::thread::sleep(REST);
        let used = cpu_seconds(pid) - cpu_before;
        let share = used / wall_before.elapsed().as_secs_f64() * 100.0;
        rest.push((label, used, share, rss_kib(&run.guard)));
        drop(run);
        drop(root);
    }
    println!(
        "### Agent: CPU at rest with 10,000 claims ({} s after the apply, same run)\n",
        REST.as_secs()
    );
    println!("| build | CPU seconds | share of one core | RSS at the end |\n|---|---|---|---|");
    for (label, used, share, rss) in rest {
        println!(
            "| {label} | {used:.2} | {share:.2}% | {:.1} MiB |",
            rss as f64 / 1024.0
        );
    }
    println!(
        "\n(the API socket is on in both; nobody calls it, so GetStats' rate sampler, which now runs \
         only while clients ask, reads nothing; the state file is rewritten only when SQL identity's \
         counts move)\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const REST: Duration = Duration::from_secs(30);

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
