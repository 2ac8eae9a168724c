//! `cargo xtask bench api`: the gRPC API of the real daemon over its Unix
//! socket. Prints a Markdown section.
//!
//! 1. TagFlow round-trip latency (p50/p99), beside a baseline call that
//!    takes the same path but writes no map (UntagFlow of an untagged flow).
//! 2. Tags per second sustained by 4 concurrent clients, beside the same
//!    baseline.
//! 3. From TagFlow returning to the kernel shaping that flow: a live iperf3
//!    connection is tagged and the class's pinned counters are polled until
//!    they move (median of 7).
//! 4. A million tags: the table (`--max-flow-tags 1048576`) filled by one
//!    client with TagFlows batches, then single TagFlows into the full
//!    table (each evicts one), beside the no-write baseline; the daemon's
//!    RSS and the kernel map's memory before and after.

// The integration tests' fixtures; a bench uses only some of them.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

#[path = "common/process_stats.rs"]
mod process_stats;
#[allow(unused_imports)]
use process_stats::{pid_of, rss_kib};

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use pisa_daemon::api::{
    client::{connect, ApiTarget},
    pb::{self, pisa_daemon_client::PisaDaemonClient},
};
use pisa_daemon_common::ClassStats;
use support::*;
use tonic::transport::Channel;

const CLAIM: &str = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
    metadata: {name: reporting, namespace: bench}\nspec:\n  trafficQoS:\n    \
    name: reporting\n    qos_group: {rate: 10mbit}\n";

fn tuple(src: &str, src_port: u32, dst: &str) -> pb::FlowTuple {
    pb::FlowTuple {
        src_ip: src.into(),
        src_port,
        dst_ip: dst.into(),
        dst_port: 5201,
        protocol: pb::Protocol::Tcp as i32,
    }
}

fn tag_request(flow: pb::FlowTuple) -> pb::TagFlowRequest {
    pb::TagFlowRequest {
        flow: Some(flow),
        target: Some(pb::tag_flow_request::Target::Claim(pb::ClaimRef {
            namespace: "bench".into(),
            name: "reporting".into(),
        })),
        ttl_seconds: 600,
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn round_trips(client: &mut PisaDaemonClient<Channel>, n: u32) -> (Vec<f64>, Vec<f64>) {
    let (mut tag, mut baseline) = (Vec::new(), Vec::new());
    for i in 0..n {
        let flow = tuple("10.200.0.1", 10_000 + i, "10.200.0.2");
        let start = Instant::now();
        client.tag_flow(tag_request(flow.clone())).await.unwrap();
        tag.push(start.elapsed().as_secs_f64() * 1e6);
        let untagged = tuple("10.201.0.1", 10_000 + i, "10.201.0.2");
        let start = Instant::now();
        client
            .untag_flow(pb::UntagFlowRequest {
                flow: Some(untagged),
            })
            .await
            .unwrap();
        baseline.push(start.elapsed().as_secs_f64() * 1e6);
    }
    for i in 0..n {
        let flow = tuple("10.200.0.1", 10_000 + i, "10.200.0.2");
        client
            .untag_flow(pb::UntagFlowRequest { flow: Some(flow) })
            .await
            .unwrap();
    }
    (tag, baseline)
}

/// Calls per second with `clients` concurrent connections, each making
/// `per_client` calls; `tagging` picks TagFlow or the no-write baseline.
async fn throughput(
    target: &ApiTarget,
    clients: u32,
    per_client: u32,
    tagging: bool,
    subnet: u8,
) -> f64 {
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(connect(target).await.unwrap());
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in connections.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let flow = tuple(&format!("10.{subnet}.{c}.1"), 1 + i, "10.210.255.2");
                if tagging {
                    client.tag_flow(tag_request(flow)).await.unwrap();
                } else {
                    client
                        .untag_flow(pb::UntagFlowRequest { flow: Some(flow) })
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    f64::from(clients * per_client) / start.elapsed().as_secs_f64()
}

/// Connections the bench's table holds, and fills.
const MILLION: u32 = 1 << 20;
/// Entries per TagFlows call while filling.
const BATCH: u32 = 1000;

/// The `i`-th connection of the fill: distinct 5-tuples in 10.64.0.0/10.
fn fill_tuple(i: u32) -> pb::FlowTuple {
    let host = i / 50_000;
    let port = 1 + i % 50_000;
    tuple(
        &format!(
            "10.{}.{}.{}",
            64 + host / 65536,
            (host / 256) % 256,
            host % 256
        ),
        port,
        "10.63.0.2",
    )
}

/// Calls of one client in flight at once while filling: HTTP/2 carries
/// both on one connection, so the daemon decodes one batch while it
/// writes the other to the kernel.
const IN_FLIGHT: usize = 2;

/// Tags `MILLION` connections in `BATCH`-sized TagFlows calls from one
/// client (one connection, `IN_FLIGHT` calls at a time): (tags per second
/// overall, per-call latencies in µs).
async fn fill(client: &PisaDaemonClient<Channel>) -> (f64, Vec<f64>) {
    let start = Instant::now();
    let mut calls = Vec::new();
    let firsts: Vec<u32> = (0..MILLION).step_by(BATCH as usize).collect();
    for group in firsts.chunks(IN_FLIGHT) {
        let in_flight = group.iter().map(|first| {
            let mut client = client.clone();
            let tags = (*first..(first + BATCH).min(MILLION))
                .map(|i| tag_request(fill_tuple(i)))
                .collect();
            async move {
                let call = Instant::now();
                let response = client
                    .tag_flows(pb::TagFlowsRequest { tags })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(response.evicted, 0, "the fill fits the table");
                call.elapsed().as_secs_f64() * 1e6
            }
        });
        calls.extend(futures::future::join_all(in_flight).await);
    }
    (f64::from(MILLION) / start.elapsed().as_secs_f64(), calls)
}

/// `bpftool map show` of the pinned map: its memory as the kernel counts it.
fn map_memory_kib(root: &BpffsRoot, name: &str) -> u64 {
    let path = root.layout().map(name);
    bpftool_json(&["map", "show", "pinned", path.to_str().unwrap()])["bytes_memlock"]
        .as_u64()
        .unwrap_or(0)
        / 1024
}

fn class_bytes(stats: &PerCpuArray<MapData, ClassStats>, class_id: u32) -> u64 {
    stats
        .get(&class_id, 0)
        .map(|per_cpu| per_cpu.iter().map(|s| s.bytes).sum())
        .unwrap_or(0)
}

fn main() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let dir = std::env::temp_dir().join(unique("pbapi"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("claims.yaml");
    std::fs::write(&config, CLAIM).unwrap();
    let state = dir.join("state.json");
    let mut daemon = spawn_daemon(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--iface",
        topo.to_server(),
        "--bpffs",
        root.as_str(),
        "--state-file",
        state.to_str().unwrap(),
        "--max-flow-tags",
        &MILLION.to_string(),
    ]);
    let target = ApiTarget::Unix(api_socket());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_until("the API", Duration::from_secs(20), || {
        daemon.assert_running();
        Path::new(&api_socket()).exists() && runtime.block_on(connect(&target)).is_ok()
    });
    let mut client = runtime.block_on(connect(&target)).unwrap();
    let listed = runtime
        .block_on(client.list_classes(pb::ListClassesRequest {}))
        .unwrap()
        .into_inner();
    let class_id = listed.classes[0].class_id;

    // 1. Round trips.
    runtime.block_on(round_trips(&mut client, 200)); // warm-up
    let (tag, baseline) = runtime.block_on(round_trips(&mut client, 2000));

    // 2. Sustained rate, 4 clients x 2500 calls each, median of 3.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tag_rates = Vec::new();
    let mut base_rates = Vec::new();
    for _ in 0..3 {
        tag_rates.push(multi.block_on(throughput(&target, 4, 2500, true, 210)));
        // Untagging flows that were never tagged: no map write.
        base_rates.push(multi.block_on(throughput(&target, 4, 2500, false, 211)));
        // Free the table for the next round (not measured).
        multi.block_on(throughput(&target, 4, 2500, false, 210));
    }

    // 3. TagFlow returned -> the class counts the flow's packets.
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
    let stats: PerCpuArray<_, ClassStats> = PerCpuArray::try_from(
        Map::from_map_data(MapData::from_pin(root.layout().map("CLASS_STATS")).unwrap()).unwrap(),
    )
    .unwrap();
    let mut to_kernel = Vec::new();
    for run in 0..7u32 {
        let cport = 41000 + run;
        let cport_s = cport.to_string();
        let seconds = "3".to_string();
        let _client = {
            let child = std::process::Command::new("ip")
                .args(["netns", "exec", &topo.client.ns.name, "iperf3", "-c"])
                .args([topo.server_ip(), "-p", "5201", "-t", &seconds])
                .args(["--cport", &cport_s])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            ChildGuard::new(child, "iperf3".into())
        };
        std::thread::sleep(Duration::from_millis(800));
        let before = class_bytes(&stats, class_id);
        let flow = tuple(&topo.client.ns_ip, cport, topo.server_ip());
        runtime
            .block_on(client.tag_flow(tag_request(flow.clone())))
            .unwrap();
        let returned = Instant::now();
        while class_bytes(&stats, class_id) == before {
            assert!(
                returned.elapsed() < Duration::from_secs(5),
                "the tagged flow never reached its class"
            );
        }
        to_kernel.push(returned.elapsed().as_secs_f64() * 1e6);
        runtime
            .block_on(client.untag_flow(pb::UntagFlowRequest { flow: Some(flow) }))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2500));
    }

    // 4. A million tags.
    let rss_empty = rss_kib(&daemon);
    let map_empty = map_memory_kib(&root, "FLOW_TAGS");
    let (fill_rate, fill_calls) = runtime.block_on(fill(&client));
    let rss_full = rss_kib(&daemon);
    let map_full = map_memory_kib(&root, "FLOW_TAGS");
    let (full_tag, full_baseline) = runtime.block_on(round_trips(&mut client, 2000));
    let stats_full = runtime
        .block_on(client.get_stats(pb::GetStatsRequest {}))
        .unwrap()
        .into_inner();

    println!("### gRPC API over the Unix socket (release build)\n");
    println!("| call | p50 | p99 | calls/s, 4 clients (median of 3) |");
    println!("|---|---|---|---|");
    println!(
        "| TagFlow (writes the connection's entry to FLOW_TAGS) | {:.0} µs | {:.0} µs | {:.0} |",
        percentile(tag.clone(), 0.5),
        percentile(tag, 0.99),
        percentile(tag_rates, 0.5)
    );
    println!(
        "| baseline: UntagFlow of an untagged flow (same path, no map write) | {:.0} µs | {:.0} µs | {:.0} |",
        percentile(baseline.clone(), 0.5),
        percentile(baseline, 0.99),
        percentile(base_rates, 0.5)
    );
    println!(
        "\nTagFlow returned -> the class counts the tagged iperf3 flow: median {:.0} µs, \
         max {:.0} µs over 7 runs (the first packet after the write; the sender's \
         inter-packet gap bounds it from below).\n",
        percentile(to_kernel.clone(), 0.5),
        percentile(to_kernel, 1.0)
    );
    println!("#### A million flow tags (`--max-flow-tags {MILLION}`)\n");
    println!(
        "Filled by one client (one connection, {IN_FLIGHT} calls in flight) with TagFlows \
         calls of {BATCH}: **{:.0} tags/s** (a call: p50 {:.1} ms, p99 {:.1} ms).\n",
        fill_rate,
        percentile(fill_calls.clone(), 0.5) / 1e3,
        percentile(fill_calls, 0.99) / 1e3
    );
    println!(
        "| call, table full ({} tags) | p50 | p99 |",
        stats_full.active_tags
    );
    println!("|---|---|---|");
    println!(
        "| TagFlow of a new connection (evicts one: {} evicted in all) | {:.0} µs | {:.0} µs |",
        stats_full.tags_evicted,
        percentile(full_tag.clone(), 0.5),
        percentile(full_tag, 0.99)
    );
    println!(
        "| baseline: UntagFlow of an untagged flow | {:.0} µs | {:.0} µs |",
        percentile(full_baseline.clone(), 0.5),
        percentile(full_baseline, 0.99)
    );
    println!(
        "\n| memory | empty table | {MILLION} tags |\n|---|---|---|\n\
         | daemon RSS | {:.1} MiB | {:.1} MiB |\n\
         | `FLOW_TAGS` (bpftool `bytes_memlock`) | {:.1} MiB | {:.1} MiB |\n",
        rss_empty as f64 / 1024.0,
        rss_full as f64 / 1024.0,
        map_empty as f64 / 1024.0,
        map_full as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
