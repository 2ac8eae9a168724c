//! `cargo xtask bench dataplane`: the data plane measured, each figure side
//! by side with its baseline in the same run. Prints a Markdown section.
//!
//! 1. ns per packet (BPF_PROG_TEST_RUN, 1,000,000 repeats, median of 5) for
//!    the miss, htb-hit and edt-hit paths.
//! 2. veth TCP throughput, unmatched traffic, program attached vs none.
//! 3. Packet rate: 64-byte UDP, program miss and HTB hit against none.
//! 4. Rate accuracy (achieved / configured wire rate) at 10/100/1000 Mbit:
//!    Pisa-Daemon's HTB class against classic tc HTB + u32 and TBF.
//! 5. Multiqueue: on a 4-queue veth, HTB's one root against `mq` with a
//!    qdisc per queue (the device default, `edt`'s fq, `police`).

// The integration tests' fixtures; a bench uses only some of them.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use pisa_daemon::{
    kernel::{
        ClassSpec, ClientPrefix, Dataplane, Features, Kernel, Protocol, RuleMatch, RuleTarget,
        ShapingMode, Side,
    },
    model::Prefix,
};
use support::{packet::Packet, *};

const RUNS: usize = 5;
const MBIT: u64 = 1_000_000 / 8;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn class(id: u32, mode: ShapingMode, rate: u64) -> ClassSpec {
    ClassSpec {
        class_id: id,
        mode,
        rate_bytes: rate,
        ceil_bytes: rate,
        burst_bytes: 64 * 1024,
        priority: 4,
        horizon_ns: u64::MAX / 2,
        claim_hash: 0,
    }
}

fn rule(addr: &str, port: u16) -> RuleMatch {
    RuleMatch {
        side: Side::Destination,
        addr: addr.parse().unwrap(),
        prefix_len: 32,
        protocol: Protocol::Tcp,
        port,
    }
}

fn ns_per_packet() {
    let root = BpffsRoot::new();
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.override_features(Features {
        sch_fq: true,
        ..kernel.features()
    });
    kernel
        .put_class(&class(1, ShapingMode::Htb, 100 * MBIT))
        .unwrap();
    // EDT at a rate no test run can exhaust, so every run takes the full path.
    kernel
        .put_class(&class(2, ShapingMode::Edt, u64::MAX / 4))
        .unwrap();
    kernel
        .put_rule(&rule("10.1.0.1", 3306), &RuleTarget::class(1))
        .unwrap();
    kernel
        .put_rule(&rule("10.1.0.2", 3306), &RuleTarget::class(2))
        .unwrap();
    // EDT with a ceil above its rate on a link with a clock: the borrowing
    // path (three clocks). The test runs go out on lo (ifindex 1).
    kernel.write_link_pace(1, u64::MAX / 4).unwrap();
    kernel
        .put_class(&ClassSpec {
            ceil_bytes: u64::MAX / 4,
            ..class(4, ShapingMode::Edt, u64::MAX / 8)
        })
        .unwrap();
    kernel
        .put_rule(&rule("10.1.0.4", 3306), &RuleTarget::class(4))
        .unwrap();
    // A realistic trie: 1000 more rules that these packets do not match.
    for i in 0..1000u32 {
        let addr = format!("10.200.{}.{}", i / 250, i % 250 + 1);
        kernel
            .put_rule(&rule(&addr, 5432), &RuleTarget::class(1))
            .unwrap();
    }
    let paths = [
        ("miss (unmatched)", "10.9.9.9", "10.0.0.1"),
        ("htb hit", "10.1.0.1", "10.0.0.1"),
        ("edt hit", "10.1.0.2", "10.0.0.1"),
        ("edt hit, borrowing (ceil > rate)", "10.1.0.4", "10.0.0.1"),
    ];
    let floor = time_floor("10.9.9.9", "10.0.0.1");
    let before: Vec<f64> = paths
        .iter()
        .map(|(_, dst, src)| time_path(&kernel, src, dst))
        .collect();
    // Client selectors at scale: 100 shared endpoints, each with 1,024
    // client prefixes (102,400 (endpoint, client prefix) pairs), and SQL
    // identity on another endpoint. Then the same paths again, and the new
    // ones: a client-selector hit and a SQL-flagged endpoint's data packet.
    kernel
        .put_class(&class(3, ShapingMode::Htb, 100 * MBIT))
        .unwrap();
    let mut pairs = 0usize;
    let loading = Instant::now();
    for e in 0..100u32 {
        let rule_id = (e + 1) as u16;
        for c in 0..1024u32 {
            let client = ClientPrefix {
                rule_id,
                client: Prefix {
                    addr: format!("10.{}.{}.0", 100 + c / 256, c % 256)
                        .parse()
                        .unwrap(),
                    len: 24,
                },
            };
            kernel.put_client(&client, 3).unwrap();
            pairs += 1;
        }
        let target = RuleTarget {
            class_id: 1,
            clients: true,
            sql: false,
            rule_id,
        };
        kernel
            .put_rule(
                &rule(&format!("10.50.{}.{}", e / 250, e % 250 + 1), 5432),
                &target,
            )
            .unwrap();
    }
    let sql = RuleTarget {
        class_id: 1,
        clients: false,
        sql: true,
        rule_id: 0,
    };
    kernel.put_rule(&rule("10.1.0.3", 3306), &sql).unwrap();
    let loaded_in = loading.elapsed();
    let after: Vec<f64> = paths
        .iter()
        .map(|(_, dst, src)| time_path(&kernel, src, dst))
        .collect();
    println!(
        "### ns per packet (BPF_PROG_TEST_RUN, 1,000,000 repeats, median of {RUNS})\n\n\
         Each path before and after loading {pairs} (endpoint, client prefix) pairs and a \
         SQL-identity endpoint into the same kernel, in this run (loading them took {:.2} s, \
         one map update each).\n",
        loaded_in.as_secs_f64()
    );
    println!(
        "| path | ns/packet, no selectors | ns/packet, with selectors | difference | \
         above the floor, with selectors | × the floor |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| floor: `pisa_tc_floor` (returns at once; the run's own cost) | {floor:.1} | | | | 1.0 |"
    );
    for ((path, _, _), (b, a)) in paths.iter().zip(before.iter().zip(&after)) {
        println!(
            "| {path} | {b:.1} | {a:.1} | {:+.1} | {:.1} | {:.1} |",
            a - b,
            a - floor,
            a / floor
        );
    }
    let client_hit = time_path(&kernel, "10.101.7.9", "10.50.0.1");
    let client_fallback = time_path(&kernel, "10.9.7.9", "10.50.0.1");
    let sql_data = time_path(&kernel, "10.0.0.1", "10.1.0.3");
    // Most unmatched traffic on a node is not to a database port at all:
    // neither of its ports is one a rule names.
    let other_port = time_program_port(kernel.program(), "10.0.0.1", "10.9.9.9", 443);
    for (path, ns) in [
        ("miss, to a port no rule names (443)", other_port),
        ("client-selector hit (2nd LPM lookup)", client_hit),
        (
            "client-selector endpoint, no client matches",
            client_fallback,
        ),
        (
            "SQL-identity endpoint, data packet (8-byte start check)",
            sql_data,
        ),
    ] {
        println!(
            "| {path} | | {ns:.1} | | {:.1} | {:.1} |",
            ns - floor,
            ns / floor
        );
    }
    println!();
}

/// The previous release's program (its daemon run once to pin it, with the
/// same rules as claims) against this build's, alternating run by run, on
/// the paths both have: a miss and an HTB hit. This is the check that the
/// selectors cost a packet of today's traffic nothing.
fn versus_previous_release() {
    const ROUNDS: usize = 11;
    let previous = previous_daemon_bin();
    let old_root = BpffsRoot::new();
    let dir = TempDir::new("pbprev");
    // An interface for it to attach to (this kernel has no dummy device).
    let veth = VethToNs::new();
    let dummy = veth.host.clone();
    let mut claims = String::new();
    let mut push = |name: &str, endpoints: Vec<String>| {
        claims.push_str(&format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}, \
             namespace: bench}}\nspec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: 100mbit}}\n    \
             direction: to\n    endpoints: [{}]\n---\n",
            endpoints.join(", ")
        ))
    };
    push("hit", vec!["{host: 10.1.0.1, port: 3306}".into()]);
    for c in 0..4u32 {
        push(
            &format!("other{c}"),
            (0..250u32)
                .map(|i| format!("{{host: 10.200.{c}.{}, port: 5432}}", i + 1))
                .collect(),
        );
    }
    let config = dir.0.join("claims.yaml");
    std::fs::write(&config, &claims).expect("writing claims");
    let state = dir.0.join("state.json");
    let mut old = spawn_binary(
        &previous,
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &dummy,
            "--bpffs",
            old_root.as_str(),
            "--state-file",
            state.to_str().unwrap(),
            "--api-socket",
            "none",
        ],
        &[],
    );
    wait_until(
        "the previous release to apply its claims",
        Duration::from_secs(30),
        || {
            old.assert_running();
            std::fs::read_to_string(&state).is_ok_and(|t| t.matches("\"Applied\"").count() == 5)
        },
    );
    old.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    let old_program =
        aya::programs::SchedClassifier::from_pin(old_root.layout().program("pisa_tc_egress"))
            .expect("the previous release's pinned program");

    let new_root = BpffsRoot::new();
    let mut kernel = Kernel::open(new_root.layout()).expect("loading");
    kernel
        .put_class(&class(1, ShapingMode::Htb, 100 * MBIT))
        .unwrap();
    kernel
        .put_rule(&rule("10.1.0.1", 3306), &RuleTarget::class(1))
        .unwrap();
    for i in 0..1000u32 {
        let addr = format!("10.200.{}.{}", i / 250, i % 250 + 1);
        kernel
            .put_rule(&rule(&addr, 5432), &RuleTarget::class(1))
            .unwrap();
    }
    let time = |program: &aya::programs::SchedClassifier, dst: &str| {
        let frame = Packet::tcp("10.0.0.1", 40000, dst, 3306)
            .payload(1000)
            .bytes();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: 1_000_000,
                ..TestRunOptions::default()
            })
            .expect("test run");
        result.duration.as_nanos() as f64
    };
    println!(
        "### This build against the previous release ({}), same run\n\n\
         Both programs hold the same 1,001 rules; {ROUNDS} alternating rounds of 1,000,000 \
         repeats each, medians.\n",
        &previous_release_commit()[..7]
    );
    println!("| path | previous release, ns/packet | this build, ns/packet | difference |");
    println!("|---|---|---|---|");
    for (path, dst) in [("miss (unmatched)", "10.9.9.9"), ("htb hit", "10.1.0.1")] {
        let (mut old_ns, mut new_ns) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            old_ns.push(time(&old_program, dst));
            new_ns.push(time(kernel.program(), dst));
        }
        let (o, n) = (median(old_ns), median(new_ns));
        println!("| {path} | {o:.1} | {n:.1} | {:+.1} |", n - o);
    }
    println!();
    drop(kernel);
}

/// The commit `target/previous` was built from (written by `cargo xtask previous`).
fn previous_release_commit() -> String {
    std::fs::read_to_string(previous_daemon_bin().with_extension("commit"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Median ns per packet of a 1000-byte TCP segment from `src` to `dst`:3306
/// (or :5432 for the 10.50/16 selector endpoints).
fn time_path(kernel: &Kernel, src: &str, dst: &str) -> f64 {
    time_program(kernel.program(), src, dst)
}

/// The object's `pisa_tc_floor` (returns at once), loaded on its own: what
/// a run costs with no program work at all.
fn floor_program() -> (aya::Ebpf, &'static str) {
    let mut ebpf = aya::Ebpf::load(pisa_daemon::kernel::EBPF_OBJECT).expect("loading the object");
    let floor: &mut aya::programs::SchedClassifier = ebpf
        .program_mut("pisa_tc_floor")
        .expect("pisa_tc_floor in the object")
        .try_into()
        .expect("a classifier");
    floor.load().expect("loading pisa_tc_floor");
    (ebpf, "pisa_tc_floor")
}

fn time_floor(src: &str, dst: &str) -> f64 {
    let (ebpf, name) = floor_program();
    let floor: &aya::programs::SchedClassifier = ebpf
        .program(name)
        .expect("pisa_tc_floor")
        .try_into()
        .expect("a classifier");
    time_program(floor, src, dst)
}

fn time_program(program: &aya::programs::SchedClassifier, src: &str, dst: &str) -> f64 {
    let port = if dst.starts_with("10.50.") {
        5432
    } else {
        3306
    };
    time_program_port(program, src, dst, port)
}

/// One TCP packet from `src`:40000 to `dst`:`port`, timed.
fn time_program_port(
    program: &aya::programs::SchedClassifier,
    src: &str,
    dst: &str,
    port: u16,
) -> f64 {
    let frame = Packet::tcp(src, 40000, dst, port).payload(1000).bytes();
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: 1_000_000,
                    ..TestRunOptions::default()
                })
                .expect("test run");
            result.duration.as_nanos() as f64
        })
        .collect();
    median(samples)
}

fn veth_throughput() {
    println!(
        "### veth TCP throughput, unmatched traffic ({RUNS} alternating 3 s runs each, medians)\n"
    );
    println!(
        "Attached means: `pisa_tc_egress` on the egress veth, an HTB root with one class, \
         and a rule for another port (so the traffic is parsed, looked up and left unshaped).\n"
    );
    println!("| path | no program, Gbit/s | attached, Gbit/s | median ratio |\n|---|---|---|---|");
    {
        // Worst case: forwarded, one wire frame per skb, CPU-bound.
        let topo = Routed::new();
        let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
        let (bare, attached, ratio) = alternate(topo.to_server(), topo.server_ip(), || {
            iperf3_goodput(&topo.client.ns, topo.server_ip(), 5201, 3)
        });
        println!(
            "| routed through the host, GSO off | {:.2} | {:.2} | **{ratio:.3}** |",
            bare / 1e9,
            attached / 1e9
        );
    }
    {
        // A pod's veth as it usually runs: locally generated, GSO on.
        let veth = VethToNs::new();
        let _server = iperf3_server(&veth.ns, &veth.ns_ip, 5201);
        let (bare, attached, ratio) = alternate(&veth.host, &veth.ns_ip, || {
            let out = sh(
                "iperf3",
                &["-c", &veth.ns_ip, "-p", "5201", "-t", "3", "-J"],
            );
            let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
            report["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .expect("goodput")
        });
        println!(
            "| host to pod veth, GSO on | {:.2} | {:.2} | **{ratio:.3}** |",
            bare / 1e9,
            attached / 1e9
        );
    }
    println!();
}

/// Runs `measure` RUNS times without and with the program on `dev`,
/// alternating; returns the medians and the median of per-pair ratios.
fn alternate(dev: &str, server_ip: &str, measure: impl Fn() -> f64) -> (f64, f64, f64) {
    let root = BpffsRoot::new();
    let mut bare = Vec::new();
    let mut attached = Vec::new();
    for _ in 0..RUNS {
        bare.push(measure());
        let mut kernel = Kernel::open(root.layout()).expect("loading");
        kernel.attach(dev).unwrap();
        kernel
            .put_class(&class(1, ShapingMode::Htb, 10 * MBIT))
            .unwrap();
        kernel
            .put_rule(&rule(server_ip, 3306), &RuleTarget::class(1))
            .unwrap();
        attached.push(measure());
        drop(kernel);
        pisa_daemon::kernel::pinned::cleanup(&root.layout()).unwrap();
    }
    let ratios: Vec<f64> = attached.iter().zip(&bare).map(|(a, b)| a / b).collect();
    (median(bare), median(attached), median(ratios))
}

/// Host -> namespace over one veth pair: locally generated TCP with
/// segmentation offload reaches several Gbit/s here, unlike the routed
/// path, so 1000 Mbit stays below link capacity.
fn accuracy(veth: &VethToNs, setup: impl FnOnce(), rate_mbit: u64) -> f64 {
    setup();
    let client = std::process::Command::new("iperf3")
        .args(["-c", &veth.ns_ip, "-p", "5201", "-t", "8"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 client");
    let _client = ChildGuard::new(client, "iperf3 client".into());
    std::thread::sleep(Duration::from_secs(2));
    let bps = qdisc_wire_bps(&veth.host, Duration::from_secs(5));
    bps / (rate_mbit as f64 * 1e6)
}

fn rate_accuracy() {
    let veth = VethToNs::new();
    let _server = iperf3_server(&veth.ns, &veth.ns_ip, 5201);
    let dev = veth.host.clone();
    println!(
        "### Rate accuracy: achieved / configured wire rate\n\n\
         Host to namespace over a veth, segmentation offload on; 5 s measured after 2 s of \
         warm-up; wire bytes from the root qdisc's own counter (every GSO segment with its \
         headers). Burst max(10 ms of rate, 64 KiB) for all.\n"
    );
    // EDT needs sch_fq to enforce its departure times; this host may lack
    // it (the kernel matrix's guests have it: `cargo xtask bench edt-guest`).
    let sch_fq = pisa_daemon::kernel::features::probe().sch_fq;
    println!(
        "| rate | pisa-daemon htb | pisa-daemon edt (sch_fq) | tc htb + u32 | tc tbf |\n\
         |---|---|---|---|---|"
    );
    for rate_mbit in [10u64, 100, 1000] {
        let burst = (rate_mbit * MBIT / 100).max(64 * 1024);
        let pisa_mode = |mode: ShapingMode| {
            let root = BpffsRoot::new();
            let ratio = accuracy(
                &veth,
                || {
                    let mut kernel = Kernel::open(root.layout()).expect("loading");
                    kernel.attach(&dev).unwrap();
                    let mut c = class(1, mode, rate_mbit * MBIT);
                    c.burst_bytes = burst as u32;
                    kernel.put_class(&c).unwrap();
                    kernel
                        .put_rule(&rule(&veth.ns_ip, 5201), &RuleTarget::class(1))
                        .unwrap();
                },
                rate_mbit,
            );
            pisa_daemon::kernel::pinned::cleanup(&root.layout()).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            ratio
        };
        let pisa = pisa_mode(ShapingMode::Htb);
        let edt = if sch_fq {
            format!("{:.4}", pisa_mode(ShapingMode::Edt))
        } else {
            "no sch_fq here".to_owned()
        };
        let rate = format!("{rate_mbit}mbit");
        let burst_s = format!("{burst}b");
        let htb = accuracy(
            &veth,
            || {
                sh(
                    "tc",
                    &[
                        "qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "default", "0",
                    ],
                );
                sh(
                    "tc",
                    &[
                        "class", "add", "dev", &dev, "parent", "1:", "classid", "1:1", "htb",
                        "rate", &rate, "ceil", &rate, "burst", &burst_s, "cburst", &burst_s,
                    ],
                );
                sh(
                    "tc",
                    &[
                        "filter",
                        "add",
                        "dev",
                        &dev,
                        "parent",
                        "1:",
                        "protocol",
                        "ip",
                        "u32",
                        "match",
                        "ip",
                        "dst",
                        &format!("{}/32", veth.ns_ip),
                        "match",
                        "ip",
                        "dport",
                        "5201",
                        "0xffff",
                        "flowid",
                        "1:1",
                    ],
                );
            },
            rate_mbit,
        );
        sh("tc", &["qdisc", "del", "dev", &dev, "root"]);
        std::thread::sleep(Duration::from_secs(1));
        let tbf = accuracy(
            &veth,
            || {
                sh(
                    "tc",
                    &[
                        "qdisc", "add", "dev", &dev, "root", "tbf", "rate", &rate, "burst",
                        &burst_s, "latency", "50ms",
                    ],
                );
            },
            rate_mbit,
        );
        sh("tc", &["qdisc", "del", "dev", &dev, "root"]);
        std::thread::sleep(Duration::from_secs(1));
        println!("| {rate_mbit} Mbit | {pisa:.4} | {edt} | {htb:.4} | {tbf:.4} |");
    }
    let unshaped = {
        let client = std::process::Command::new("iperf3")
            .args(["-c", &veth.ns_ip, "-p", "5201", "-t", "4"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 client");
        let _client = ChildGuard::new(client, "iperf3 client".into());
        std::thread::sleep(Duration::from_secs(1));
        measure_wire_bps(&dev, Duration::from_secs(2))
    };
    println!(
        "\nUnshaped, the same path carries {:.1} Gbit/s (interface counter), so every rate \
         above is below link capacity.\n",
        unshaped / 1e9
    );
}

fn main() {
    require_root();
    // `cargo bench` passes --bench; a filter selects one section.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("ns") {
        ns_per_packet();
        versus_previous_release();
    }
    if wanted("throughput") {
        veth_throughput();
    }
    if wanted("packet-rate") {
        packet_rate();
    }
    if wanted("accuracy") {
        rate_accuracy();
    }
    if wanted("multiqueue") {
        multiqueue();
    }
}

/// Flows of the packet-rate section: one socket, this many destination
/// ports, round robin within every `sendmmsg` batch.
const FLOWS: u16 = 8;
const BATCH: usize = 64;
const PAYLOAD: usize = 64;

/// Small UDP packets, host to a namespace over a veth, as fast as one
/// core sends them (`sendmmsg`, 64 at a time): per-packet cost shows here,
/// where TCP's large segments hide it. Three setups alternate RUNS times:
/// no program, the program with a rule for another port (miss), and the
/// program with a rule for these packets into an HTB class far above what
/// they reach (hit).
fn packet_rate() {
    let veth = VethToNs::new();
    let root = BpffsRoot::new();
    let seconds = 2;
    let (mut bare, mut miss, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        bare.push(udp_packets_per_second(&veth.ns_ip, seconds));
        for (matched, out) in [(false, &mut miss), (true, &mut hit)] {
            let mut kernel = Kernel::open(root.layout()).expect("loading");
            kernel.attach(&veth.host).unwrap();
            kernel
                .put_class(&class(1, ShapingMode::Htb, 10_000 * MBIT))
                .unwrap();
            for port in 0..FLOWS {
                let port = if matched { 9000 + port } else { 3306 + port };
                let mut rule = rule(&veth.ns_ip, port);
                rule.protocol = Protocol::Udp;
                kernel.put_rule(&rule, &RuleTarget::class(1)).unwrap();
            }
            out.push(udp_packets_per_second(&veth.ns_ip, seconds));
            drop(kernel);
            pisa_daemon::kernel::pinned::cleanup(&root.layout()).unwrap();
        }
    }
    let ratio = |with: &[f64]| {
        median(
            with.iter()
                .zip(&bare)
                .map(|(a, b)| a / b)
                .collect::<Vec<f64>>(),
        )
    };
    println!(
        "### Packet rate: {PAYLOAD}-byte UDP, {FLOWS} flows ({RUNS} alternating {seconds} s runs, medians)\n\n\
         One sender thread, `sendmmsg` {BATCH} packets a call, host to a namespace over a veth \
         (the peer has no listener: each packet is received and dropped there). Attached: \
         `pisa_tc_egress` and an HTB root on the host veth; miss: rules for other ports of the \
         same address; hit: the packets' own ports, into a 10 Gbit class.\n"
    );
    println!("| setup | packets/s | ns per packet, whole path | × no program |\n|---|---|---|---|");
    let bare_pps = median(bare.clone());
    println!(
        "| no program | {:.0} | {:.0} | 1.000 |",
        bare_pps,
        1e9 / bare_pps
    );
    for (label, values) in [("program, miss", &miss), ("program + HTB class, hit", &hit)] {
        let pps = median(values.clone());
        println!(
            "| {label} | {pps:.0} | {:.0} | **{:.3}** |",
            1e9 / pps,
            ratio(values)
        );
    }
    println!(
        "\n(the extra time per packet against no program, from the medians: miss {:+.0} ns, hit {:+.0} ns)\n",
        1e9 / median(miss.clone()) - 1e9 / bare_pps,
        1e9 / median(hit.clone()) - 1e9 / bare_pps
    );
}

/// Packets one thread sends in `seconds` to ports 9000.. of `dst`.
fn udp_packets_per_second(dst: &str, seconds: u64) -> f64 {
    use std::net::{SocketAddrV4, UdpSocket};
    let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    let ip: std::net::Ipv4Addr = dst.parse().expect("an IPv4 address");
    let addrs: Vec<libc::sockaddr_in> = (0..FLOWS)
        .map(|i| {
            let addr = SocketAddrV4::new(ip, 9000 + i);
            libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*addr.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        })
        .collect();
    let payload = [0x5au8; PAYLOAD];
    let mut iovecs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: PAYLOAD,
        })
        .collect();
    // SAFETY: zeroed mmsghdr is a valid empty header; every pointer set
    // below points into vectors that outlive the sendmmsg calls.
    let mut messages: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (i, message) in messages.iter_mut().enumerate() {
        message.msg_hdr.msg_name = &addrs[i % addrs.len()] as *const _ as *mut libc::c_void;
        message.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        message.msg_hdr.msg_iov = &mut iovecs[i];
        message.msg_hdr.msg_iovlen = 1;
    }
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: `messages` holds BATCH valid headers (see above).
        let n = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), BATCH as u32, 0) };
        assert!(
            n > 0,
            "sendmmsg failed: {}",
            std::io::Error::last_os_error()
        );
        sent += n as u64;
    }
    sent as f64 / started.elapsed().as_secs_f64()
}

/// Bytes the root qdisc of `iface` has sent: for HTB and TBF this is
/// `qdisc_pkt_len`, which counts every GSO segment with its headers, i.e.
/// wire bytes.
fn qdisc_sent_bytes(iface: &str) -> u64 {
    let out = sh("tc", &["-s", "-j", "qdisc", "show", "dev", iface, "root"]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    qdiscs[0]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no root qdisc bytes: {out}"))
}

/// Wire rate (bits/s) through the root qdisc of `iface` over `window`.
fn qdisc_wire_bps(iface: &str, window: Duration) -> f64 {
    let start_bytes = qdisc_sent_bytes(iface);
    let start = Instant::now();
    std::thread::sleep(window);
    let bytes = qdisc_sent_bytes(iface) - start_bytes;
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64()
}

/// Transmit queues of the multiqueue section's veth.
const MQ_QUEUES: u32 = 4;

/// One way the multiqueue section's veth is set up, and how it is built.
#[derive(Clone, Copy, PartialEq)]
enum MqSetup {
    /// A veth's own default: no qdisc at all (`noqueue`), no program.
    NoQueue,
    /// What a multiqueue NIC has by default: `mq` with the default qdisc
    /// under each queue, no program. A veth starts with `noqueue`, so the
    /// bench adds `mq` with tc.
    DeviceMq,
    /// Pisa-Daemon in `htb` mode: its HTB root, one lock for every queue.
    Htb,
    /// Pisa-Daemon in `edt` mode: `mq` with an fq under each queue.
    Edt,
    /// Pisa-Daemon in `police` mode, which needs no qdisc: the device's
    /// `mq` (added with tc after the daemon attached, as on a NIC) stays.
    Police,
}

impl MqSetup {
    fn label(self) -> &'static str {
        match self {
            MqSetup::NoQueue => "veth's own `noqueue`, no program",
            MqSetup::DeviceMq => "NIC default: `mq`, no program (the baseline)",
            MqSetup::Htb => "`htb`: HTB root (one lock for every queue)",
            MqSetup::Edt => "`edt`: `mq` + fq per queue",
            MqSetup::Police => "`police`: the device's `mq` kept",
        }
    }

    fn mode(self) -> Option<ShapingMode> {
        match self {
            MqSetup::NoQueue | MqSetup::DeviceMq => None,
            MqSetup::Htb => Some(ShapingMode::Htb),
            MqSetup::Edt => Some(ShapingMode::Edt),
            MqSetup::Police => Some(ShapingMode::Police),
        }
    }

    /// Whether tc adds `mq` at the root (after the program, if any).
    fn adds_mq(self) -> bool {
        matches!(self, MqSetup::DeviceMq | MqSetup::Police)
    }
}

/// Class and link rate of the multiqueue section: far above what these
/// machines send (a veth says 10 Gbit/s, which TCP here exceeds), so the
/// figures are the cost of the path and its locks, not of shaping.
const MQ_RATE: u64 = 100_000 * MBIT;

/// Every sender's traffic, UDP and TCP, in one class of `mode` at
/// MQ_RATE, with the daemon's default burst (10 ms of rate).
fn attach_mq_setup(root: &BpffsRoot, dev: &str, dst: &str, mode: ShapingMode) -> Kernel {
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.set_link_rate(MQ_RATE);
    kernel.attach(dev).unwrap();
    let mut spec = class(1, mode, MQ_RATE);
    spec.burst_bytes = (MQ_RATE / 100).min(u64::from(u32::MAX)) as u32;
    kernel.put_class(&spec).unwrap();
    for port in 0..FLOWS {
        let mut rule = rule(dst, 9000 + port);
        rule.protocol = Protocol::Udp;
        kernel.put_rule(&rule, &RuleTarget::class(1)).unwrap();
    }
    for port in [5201, 5202] {
        kernel
            .put_rule(&rule(dst, port), &RuleTarget::class(1))
            .unwrap();
    }
    kernel
}

/// The root qdisc's kind and, for `mq`, the kinds under it: what the
/// setup really built, printed beside its figures.
fn qdisc_tree(dev: &str) -> String {
    let out = sh("tc", &["-j", "qdisc", "show", "dev", dev]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    let kinds: Vec<String> = qdiscs
        .as_array()
        .expect("a list of qdiscs")
        .iter()
        .filter_map(|q| q["kind"].as_str().map(str::to_owned))
        .collect();
    let root = kinds.first().cloned().unwrap_or_default();
    let children = kinds.len().saturating_sub(1);
    match children {
        0 => root,
        _ => {
            let child = kinds.last().cloned().unwrap_or_default();
            format!("{root} + {children} qdiscs ({child})")
        }
    }
}

/// A device with several transmit queues under many flows from every CPU:
/// what an HTB root (one qdisc lock for all queues) costs against `mq`
/// with a qdisc per queue, the device default and `edt`'s mq + fq. Each
/// setup is measured twice a round, 64-byte UDP from one sender thread per
/// CPU and TCP from two iperf3 clients of 4 streams each; RUNS rounds
/// alternate the setups; medians, and medians of the ratios to the device
/// default within each round.
fn multiqueue() {
    let veth = VethToNs::with_queues(MQ_QUEUES);
    let _servers = [
        iperf3_server(&veth.ns, &veth.ns_ip, 5201),
        iperf3_server(&veth.ns, &veth.ns_ip, 5202),
    ];
    let senders = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sch_fq = pisa_daemon::kernel::features::probe().sch_fq;
    let setups: Vec<MqSetup> = [
        MqSetup::NoQueue,
        MqSetup::DeviceMq,
        MqSetup::Htb,
        MqSetup::Edt,
        MqSetup::Police,
    ]
    .into_iter()
    .filter(|s| *s != MqSetup::Edt || sch_fq)
    .collect();
    let root = BpffsRoot::new();
    let seconds = 2;
    let mut pps: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut tcp: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut trees: Vec<String> = vec![String::new(); setups.len()];
    for _ in 0..RUNS {
        for (index, setup) in setups.iter().enumerate() {
            let kernel = setup
                .mode()
                .map(|mode| attach_mq_setup(&root, &veth.host, &veth.ns_ip, mode));
            if setup.adds_mq() {
                sh("tc", &["qdisc", "add", "dev", &veth.host, "root", "mq"]);
            }
            trees[index] = qdisc_tree(&veth.host);
            let expected = match setup {
                MqSetup::NoQueue => "noqueue",
                MqSetup::Htb => "htb",
                MqSetup::DeviceMq | MqSetup::Edt | MqSetup::Police => "mq + ",
            };
            assert!(
                trees[index].starts_with(expected),
                "{}: expected a root of {expected}, found {}",
                setup.label(),
                trees[index]
            );
            pps[index].push(parallel_udp_packets_per_second(
                &veth.ns_ip,
                senders,
                seconds,
            ));
            tcp[index].push(parallel_tcp_goodput(&veth.ns_ip, 3));
            drop(kernel);
            pisa_daemon::kernel::pinned::cleanup(&root.layout()).unwrap();
            if setup.adds_mq() {
                sh("tc", &["qdisc", "del", "dev", &veth.host, "root"]);
            }
        }
    }
    let base = setups
        .iter()
        .position(|s| *s == MqSetup::DeviceMq)
        .expect("the baseline is measured");
    println!(
        "### Multiqueue: one HTB root against a qdisc per queue ({MQ_QUEUES}-queue veth, \
         {RUNS} alternating rounds, medians)\n\n\
         Host to a namespace over a veth with {MQ_QUEUES} transmit queues. UDP: {senders} sender \
         threads (one per CPU), {PAYLOAD}-byte packets, {FLOWS} flows each, {seconds} s. TCP: two \
         iperf3 clients of 4 streams each, 3 s. With the program, every packet is matched into \
         one class of the mode shown, its rate and the link's 100 Gbit/s (far above what is \
         sent: the figures are the path's cost, locks included, not shaping). Ratios: to `mq` without a program in the \
         same round (what a multiqueue NIC has by default), median over the rounds.{}\n",
        if sch_fq {
            ""
        } else {
            " This kernel has no sch_fq, so no `edt` row."
        }
    );
    println!(
        "| setup | qdiscs as built | UDP packets/s | × `mq` | TCP Gbit/s | × `mq` |\n\
         |---|---|---|---|---|---|"
    );
    let ratio = |values: &[f64], base: &[f64]| {
        median(
            values
                .iter()
                .zip(base)
                .map(|(a, b)| a / b)
                .collect::<Vec<f64>>(),
        )
    };
    for (index, setup) in setups.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | **{:.3}** | {:.2} | **{:.3}** |",
            setup.label(),
            trees[index],
            median(pps[index].clone()),
            ratio(&pps[index], &pps[base]),
            median(tcp[index].clone()) / 1e9,
            ratio(&tcp[index], &tcp[base]),
        );
    }
    println!();
}

/// `udp_packets_per_second` from `threads` senders at once, summed.
fn parallel_udp_packets_per_second(dst: &str, threads: usize, seconds: u64) -> f64 {
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| udp_packets_per_second(dst, seconds)))
            .collect();
        senders
            .into_iter()
            .map(|sender| sender.join().expect("a UDP sender"))
            .sum()
    })
}

/// TCP goodput (bits/s) of two iperf3 clients, 4 streams each, to the
/// servers on ports 5201 and 5202, run at once and summed.
fn parallel_tcp_goodput(dst: &str, seconds: u32) -> f64 {
    let seconds = seconds.to_string();
    let clients: Vec<std::process::Child> = ["5201", "5202"]
        .iter()
        .map(|port| {
            std::process::Command::new("iperf3")
                .args(["-c", dst, "-p", port, "-t", &seconds, "-P", "4", "-J"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 client")
        })
        .collect();
    clients
        .into_iter()
        .map(|client| {
            let out = client.wait_with_output().expect("iperf3 client");
            let text = String::from_utf8_lossy(&out.stdout);
            let report: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON ({e}): {text}"));
            report["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("no goodput in iperf3's report: {text}"))
        })
        .sum()
}
