//! `cargo xtask bench agent`: the node agent measured with the real binary.
//! Prints a Markdown section.
//!
//! 1. File change -> kernel enforcement latency for one claim (median of 5).
//! 2. Apply time and daemon RSS with 1 claim (baseline) and 10,000 claims.
//! 3. Start time: cold (empty bpffs root) vs adopting 10,000 pinned classes.

// The integration tests' fixtures; a bench uses only some of them.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

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
    (0..count)
        .map(|i| {
            claim(
                &format!("c{i}"),
                "10mbit",
                &format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
            )
        })
        .collect()
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
    let started = Instant::now();
    let guard = spawn_daemon(&[
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
    ]);
    Run {
        guard,
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

fn pid_of(guard: &ChildGuard) -> u32 {
    guard
        .child
        .as_ref()
        .map(std::process::Child::id)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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

    // 1. Change -> enforcement latency.
    let root = BpffsRoot::new();
    write_atomically(&config, &claim("latency", "10mbit", "10.99.0.1"));
    let mut run = start(&config, &veth.host, &root, &state);
    wait_ready(&mut run);
    let class_map =
        Map::from_map_data(MapData::from_pin(root.layout().map("CLASS_CONFIG")).unwrap()).unwrap();
    let class_map: Array<_, ClassConfig> = Array::try_from(class_map).unwrap();
    let state_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let id = state_json["classes"][0]["class_id"].as_u64().unwrap() as u32;
    let mut latencies = Vec::new();
    for (i, rate) in ["20mbit", "30mbit", "40mbit", "50mbit", "60mbit"]
        .iter()
        .enumerate()
    {
        let want = (20 + 10 * i as u64) * 125_000;
        let changed = Instant::now();
        write_atomically(&config, &claim("latency", rate, "10.99.0.1"));
        loop {
            if class_map.get(&id, 0).ok().map(|c| c.rate_bytes) == Some(want) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(10),
                "edit never landed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(changed.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    let one_rss = rss_kib(pid_of(&run.guard));
    drop(run);
    println!("### Agent: file change to kernel enforcement (one claim, 5 edits)\n");
    println!("| median ms | max ms | file poll interval + debounce |\n|---|---|---|");
    println!(
        "| {:.0} | {:.0} | 100 ms + 100 ms |\n",
        median(latencies.clone()),
        latencies.iter().cloned().fold(0.0, f64::max)
    );
    drop(root);

    // 2. 1 vs 10,000 claims, and 3. cold start vs adoption.
    let mut rows = Vec::new();
    for count in [1u32, 10_000] {
        let root = BpffsRoot::new();
        write_atomically(&config, &claims(count));
        let mut cold = start(&config, &veth.host, &root, &state);
        let (cold_ready, apply_ms) = wait_ready(&mut cold);
        let rss = rss_kib(pid_of(&cold.guard));
        cold.guard.signal_and_wait(15, Duration::from_secs(30));
        let _ = std::fs::remove_file(&state);
        let mut warm = start(&config, &veth.host, &root, &state);
        let (warm_ready, _) = wait_ready(&mut warm);
        drop(warm);
        rows.push((count, apply_ms, rss, cold_ready, warm_ready));
        drop(root);
    }
    println!("### Agent: scale, memory and restart (one interface, HTB)\n");
    println!("| claims | first apply (logged) | RSS after apply | cold start to applied | restart, adopting pinned state |");
    println!("|---|---|---|---|---|");
    for (count, apply_ms, rss, cold, warm) in rows {
        println!(
            "| {count} | {} ms | {:.1} MiB | {:.2} s | {:.2} s |",
            apply_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            rss as f64 / 1024.0,
            cold.as_secs_f64(),
            warm.as_secs_f64()
        );
    }
    println!(
        "\n(one-claim daemon RSS during the latency runs: {:.1} MiB)\n",
        one_rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
