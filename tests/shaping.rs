//! Real traffic through the real daemon library: iperf3 across two
//! namespaces routed through the host, shaped at the host-side egress.

use std::time::{Duration, Instant};

use crate::support::*;
use pisa_daemon::kernel::{
    ClassSpec, Dataplane, Kernel, Protocol, RuleMatch, RuleTarget, ShapingMode, Side,
};

const MBIT: u64 = 1_000_000 / 8; // bytes per second

fn shaper(root: &BpffsRoot, topo: &Routed) -> Kernel {
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.attach(topo.to_server()).expect("attach to_server");
    kernel.attach(topo.to_client()).expect("attach to_client");
    kernel
}

fn class(kernel: &mut Kernel, id: u32, mode: ShapingMode, rate: u64, ceil: u64, burst: u32) {
    kernel
        .put_class(&ClassSpec {
            class_id: id,
            mode,
            rate_bytes: rate,
            ceil_bytes: ceil,
            burst_bytes: burst,
            priority: 3,
            horizon_ns: 2_000_000_000,
            claim_hash: 0,
        })
        .expect("put_class");
    // The end of a batch of one: the leaf's group takes its new sum.
    kernel.flush().expect("flush");
}

fn to_server_port(kernel: &mut Kernel, topo: &Routed, port: u16, class_id: u32) {
    to_server(kernel, topo, Protocol::Tcp, port, class_id);
}

fn to_server(kernel: &mut Kernel, topo: &Routed, protocol: Protocol, port: u16, class_id: u32) {
    kernel
        .put_rule(
            &RuleMatch {
                side: Side::Destination,
                addr: topo.server_ip().parse().unwrap(),
                prefix_len: 32,
                protocol,
                port,
            },
            &RuleTarget::class(class_id),
        )
        .expect("put_rule");
}

/// Bytes the program has counted into class `id` (offered: before the
/// qdisc, which may still drop them).
fn class_bytes(kernel: &Kernel, id: u32) -> u64 {
    let stats = kernel.class_stats().expect("class stats");
    stats.get(&id).map(|s| s.bytes).unwrap_or_default()
}

fn assert_within(what: &str, measured_bps: f64, expected_bps: f64, tolerance: f64) {
    let ratio = measured_bps / expected_bps;
    eprintln!(
        "{what}: {:.2} Mbit/s against {:.2} Mbit/s (ratio {ratio:.4})",
        measured_bps / 1e6,
        expected_bps / 1e6
    );
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: {:.2} Mbit/s is not within ±{:.0}% of {:.2} Mbit/s",
        measured_bps / 1e6,
        tolerance * 100.0,
        expected_bps / 1e6
    );
}

fn htb_holds_rate(rate_mbit: u64) {
    holds_rate(ShapingMode::Htb, rate_mbit, 0.03);
}

/// One class of `mode` at `rate_mbit`, saturated by iperf3 for 13 s: the
/// first second stays within rate * t + burst, and 10 s of wire bytes are
/// within `tolerance` of the rate.
fn holds_rate(mode: ShapingMode, rate_mbit: u64, tolerance: f64) {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = shaper(&root, &topo);
    let rate = rate_mbit * MBIT;
    let burst = 64 * 1024;
    class(&mut kernel, 1, mode, rate, rate, burst);
    to_server_port(&mut kernel, &topo, 5201, 1);
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);

    // Wire bytes as the root qdisc counts them (GSO segments with their
    // headers), which is what both HTB and the EDT pacer charge.
    let start_bytes = root_qdisc_bytes(topo.to_server());
    let _client = iperf3_background(&topo.client.ns, topo.server_ip(), 5201, 13);
    let started = Instant::now();
    // First second (a measurement window): at most rate * t + burst may
    // leave (no 2x start burst).
    std::thread::sleep(Duration::from_secs(1));
    let first = root_qdisc_bytes(topo.to_server()) - start_bytes;
    let allowed = rate as f64 * started.elapsed().as_secs_f64() + f64::from(burst) + 2.0 * 1514.0;
    eprintln!("first second: {first} bytes, allowed {allowed:.0}");
    assert!(
        first as f64 <= allowed,
        "first second overshoot: {first} bytes > rate*t + burst = {allowed:.0}"
    );
    let measured = measure_qdisc_wire_bps(topo.to_server(), Duration::from_secs(10));
    assert_within(
        &format!("{mode:?} {rate_mbit} Mbit wire rate over 10 s"),
        measured,
        (rate * 8) as f64,
        tolerance,
    );
    let qdiscs = sh("tc", &["qdisc", "show", "dev", topo.to_server()]);
    match mode {
        ShapingMode::Htb => {
            // The tc view agrees: the class exists with the configured rate.
            let classes = sh("tc", &["class", "show", "dev", topo.to_server()]);
            // Class 1 is a leaf of group 0 (its qdisc 5200:), whose class
            // under the link class guarantees the leaf's rate.
            for expected in [
                format!("class htb 5200:1 parent 5200:ffff leaf 1001: prio 3 rate {rate_mbit}Mbit"),
                format!(
                    "class htb 5150:4000 parent 5150:ffff leaf 5200: prio 3 rate {rate_mbit}Mbit"
                ),
            ] {
                assert!(classes.contains(&expected), "{expected} not in {classes}");
            }
        }
        _ => {
            // The departure times are enforced by the daemon's sch_fq root.
            assert!(qdiscs.contains("qdisc fq 5150: root"), "{qdiscs}");
            let stats = kernel.class_stats().expect("class stats");
            let delayed = stats.get(&1).map(|s| s.delayed).unwrap_or_default();
            assert!(
                delayed > 0,
                "no packet was given a departure time: {stats:?}"
            );
        }
    }
}

#[test]
fn htb_class_holds_10_mbit_wire_rate_within_3_percent() {
    htb_holds_rate(10);
}

#[test]
fn htb_class_holds_200_mbit_wire_rate_within_3_percent() {
    htb_holds_rate(200);
}

/// Needs sch_fq, which this CI host's kernel lacks: the kernel matrix runs
/// it in the 6.1 and 6.12 guests and leaves it out, by name, on the host.
#[test]
fn edt_class_holds_20_mbit_wire_rate_within_2_percent_under_sch_fq() {
    holds_rate(ShapingMode::Edt, 20, 0.02);
}

/// EDT classes `(rate, ceil)` in Mbit/s on a 100 Mbit/s link under sch_fq,
/// each saturated by its own iperf3 client (two streams, so that one
/// stream's loss recovery in a slow emulated guest does not leave its
/// class short of offered load) for 14 s. Returns each class's
/// rate over 10 s after a 3 s start (from its counters, which count
/// `skb->len`: a few percent under the wire for GSO packets) and the
/// link's wire rate over the same window (the root fq's byte counter).
fn edt_borrowing(classes: &[(u64, u64)]) -> (Vec<f64>, f64) {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.set_link_rate(100 * MBIT);
    kernel.attach(topo.to_server()).expect("attach");
    let mut flows = Vec::new();
    for (i, (rate, ceil)) in classes.iter().enumerate() {
        let (id, port) = (i as u32 + 1, 5201 + i as u16);
        class(
            &mut kernel,
            id,
            ShapingMode::Edt,
            rate * MBIT,
            ceil * MBIT,
            64 * 1024,
        );
        to_server_port(&mut kernel, &topo, port, id);
        flows.push(iperf3_server(&topo.server.ns, topo.server_ip(), port));
    }
    let clients: Vec<_> = (0..classes.len())
        .map(|i| {
            let port = 5201 + i as u16;
            iperf3_background_with(&topo.client.ns, topo.server_ip(), port, 14, &["-P", "2"])
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let bytes = |kernel: &Kernel| {
        (1..=classes.len() as u32)
            .map(|id| class_bytes(kernel, id))
            .collect::<Vec<u64>>()
    };
    let (start, link_start, started) = (
        bytes(&kernel),
        root_qdisc_bytes(topo.to_server()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (end, link_end) = (bytes(&kernel), root_qdisc_bytes(topo.to_server()));
    let seconds = started.elapsed().as_secs_f64();
    drop(clients);
    let mbit = |bytes: u64| bytes as f64 * 8.0 / seconds / 1e6;
    let rates: Vec<f64> = start.iter().zip(&end).map(|(a, b)| mbit(b - a)).collect();
    let link = mbit(link_end - link_start);
    eprintln!(
        "edt classes {classes:?} on a 100 Mbit link: {rates:.1?} Mbit/s, link {link:.1} Mbit/s"
    );
    (rates, link)
}

/// A multiqueue device keeps its queues apart under EDT: `mq` at the root
/// and an fq under each transmit queue (one fq at the root would serialise
/// them behind one lock), and the shared pacer still holds the rate across
/// flows that hash to different queues.
#[test]
fn edt_on_a_multiqueue_device_puts_an_fq_under_each_queue_and_holds_the_rate() {
    require_root();
    let topo = Routed::with_queues(4);
    let root = BpffsRoot::new();
    let mut kernel = shaper(&root, &topo);
    class(
        &mut kernel,
        1,
        ShapingMode::Edt,
        20 * MBIT,
        20 * MBIT,
        64 * 1024,
    );
    to_server_port(&mut kernel, &topo, 5201, 1);
    let qdiscs = sh("tc", &["qdisc", "show", "dev", topo.to_server()]);
    assert!(qdiscs.contains("qdisc mq 5150: root"), "{qdiscs}");
    let per_queue = (1..=4)
        .filter(|q| qdiscs.contains(&format!("parent 5150:{q:x} ")))
        .count();
    assert_eq!(
        (per_queue, qdiscs.matches("qdisc fq ").count()),
        (4, 4),
        "{qdiscs}"
    );
    // Four parallel streams, spread over the queues by their hashes.
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
    let _client = topo.client.ns.spawn_as(
        "iperf3 -P 4",
        &[
            "iperf3",
            "-c",
            topo.server_ip(),
            "-p",
            "5201",
            "-t",
            "13",
            "-P",
            "4",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    let measured = measure_qdisc_wire_bps(topo.to_server(), Duration::from_secs(10));
    assert_within("edt 20 Mbit over 4 queues, 10 s", measured, 20e6, 0.02);
}

/// Needs sch_fq (kernel matrix guests only, as every `edt_` test).
#[test]
fn edt_class_alone_borrows_up_to_its_ceil() {
    let (rates, link) = edt_borrowing(&[(20, 100)]);
    assert!(
        rates[0] >= 90.0,
        "rate 20, ceil 100, alone: {:.1} Mbit/s",
        rates[0]
    );
    assert!(link <= 102.0, "the link's 100 Mbit/s: {link:.1}");
}

#[test]
fn edt_two_borrowers_share_the_link_evenly() {
    let (rates, link) = edt_borrowing(&[(20, 100), (20, 100)]);
    for rate in &rates {
        assert!(
            (45.0..=55.0).contains(rate),
            "each of two (rate 20, ceil 100) classes: {rates:.1?} Mbit/s"
        );
    }
    assert!(link <= 102.0, "the link's 100 Mbit/s: {link:.1}");
}

#[test]
fn edt_guaranteed_class_keeps_its_rate_against_a_borrower() {
    let (rates, link) = edt_borrowing(&[(60, 100), (10, 100)]);
    assert!(
        rates[0] >= 57.0,
        "rate 60 against a borrower: {rates:.1?} Mbit/s"
    );
    assert!(link <= 102.0, "both on the link's 100 Mbit/s: {link:.1}");
}

#[test]
fn htb_class_borrows_up_to_ceil_when_idle_and_falls_back_to_rate_under_contention() {
    htb_borrowing_against(2);
}

/// The same, with the contender in another group (class ids 256..383):
/// the guarantee then holds through the groups' classes at the root.
#[test]
fn htb_class_keeps_its_rate_against_a_borrower_in_another_group() {
    htb_borrowing_against(300);
}

/// Class 1 (20 Mbit, ceil 100) alone and then against class `other` (80
/// Mbit, ceil 100) flooding a 100 Mbit link.
fn htb_borrowing_against(other: u32) {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.set_link_rate(100 * MBIT);
    kernel.attach(topo.to_server()).expect("attach");
    class(
        &mut kernel,
        1,
        ShapingMode::Htb,
        20 * MBIT,
        100 * MBIT,
        64 * 1024,
    );
    class(
        &mut kernel,
        other,
        ShapingMode::Htb,
        80 * MBIT,
        100 * MBIT,
        64 * 1024,
    );
    to_server_port(&mut kernel, &topo, 5201, 1);
    to_server(&mut kernel, &topo, Protocol::Udp, 5202, other);
    let _s1 = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
    let _s2 = iperf3_server(&topo.server.ns, topo.server_ip(), 5202);

    // Alone, class 1 borrows up to its 100 Mbit ceil.
    let alone = iperf3_goodput(&topo.client.ns, topo.server_ip(), 5201, 6);
    eprintln!("class 1 alone: {:.1} Mbit/s goodput", alone / 1e6);
    assert!(
        alone > 85e6,
        "class 1 alone reached only {:.1} Mbit/s",
        alone / 1e6
    );

    // Contended, it falls back to its 20 Mbit rate. The contender floods
    // class 2 with UDP at twice the link: a sender that never backs off
    // keeps its class backlogged. A slow (TCG) guest cannot always offer
    // even class 2's 80 Mbit, and what class 2 leaves unused HTB rightly
    // lends to class 1; so class 1 is held to the larger of its rate and
    // the link less what class 2 offered (the program's counters count
    // what is offered, before the qdisc).
    let _flood = iperf3_background_with(
        &topo.client.ns,
        topo.server_ip(),
        5202,
        16,
        &["-u", "-b", "200M"],
    );
    wait_until("the flood to fill class 2", Duration::from_secs(10), || {
        class_bytes(&kernel, other) >= 1_000_000
    });
    let before_class_1 = class_bytes(&kernel, 1);
    let _class_1 = iperf3_background(&topo.client.ns, topo.server_ip(), 5201, 12);
    wait_until("class 1's flow to start", Duration::from_secs(10), || {
        class_bytes(&kernel, 1) >= before_class_1 + 500_000
    });
    std::thread::sleep(Duration::from_secs(1));
    let (start, started) = (
        [1, other].map(|id| class_bytes(&kernel, id)),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(8));
    let end = [1, other].map(|id| class_bytes(&kernel, id));
    let seconds = started.elapsed().as_secs_f64();
    let [class_1, class_2] = [0, 1].map(|i| (end[i] - start[i]) as f64 * 8.0 / seconds / 1e6);
    let entitled = (100.0 - class_2.min(100.0)).max(20.0);
    eprintln!(
        "contended: class 1 {class_1:.1} Mbit/s, class 2 offered {class_2:.1} Mbit/s; \
         class 1 is entitled to {entitled:.1}"
    );
    assert!(
        class_2 >= 60.0,
        "the UDP flood offered class 2 only {class_2:.1} Mbit/s: too little to contend the link"
    );
    let ratio = class_1 / entitled;
    assert!(
        (0.85..=1.15).contains(&ratio),
        "class 1 under contention: {class_1:.1} Mbit/s, expected {entitled:.1} \
         (its 20 Mbit rate, or the link less class 2's {class_2:.1})"
    );
}

/// The tree as `tc` shows it: each group's class under the link class
/// guarantees the sum of its leaves' rates, the root's one filter is the
/// group classifier, and a group left without leaves goes with its qdisc.
#[test]
fn htb_groups_guarantee_the_sum_of_their_leaves_and_go_when_empty() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = Kernel::open(root.layout()).expect("loading");
    kernel.set_link_rate(100 * MBIT);
    kernel.attach(topo.to_server()).expect("attach");
    let iface = topo.to_server();
    for (id, rate) in [(1, 10), (2, 20), (300, 5)] {
        class(
            &mut kernel,
            id,
            ShapingMode::Htb,
            rate * MBIT,
            50 * MBIT,
            64 * 1024,
        );
    }
    let group_rate = |minor: &str| {
        let classes = sh("tc", &["class", "show", "dev", iface]);
        classes
            .lines()
            .find(|line| line.starts_with(&format!("class htb 5150:{minor} parent 5150:ffff ")))
            .map(|line| {
                line.split(" rate ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            })
    };
    assert_eq!(
        group_rate("4000").as_deref(),
        Some("30Mbit"),
        "group 0: classes 1 and 2"
    );
    assert_eq!(
        group_rate("4002").as_deref(),
        Some("5Mbit"),
        "group 2: class 300"
    );
    let classes = sh("tc", &["class", "show", "dev", iface]);
    for leaf in [
        "class htb 5200:1 parent 5200:ffff leaf 1001: prio 3 rate 10Mbit ceil 50Mbit",
        "class htb 5200:2 parent 5200:ffff leaf 1002: prio 3 rate 20Mbit ceil 50Mbit",
        "class htb 5202:12c parent 5202:ffff leaf 112c: prio 3 rate 5Mbit ceil 50Mbit",
        "class htb 5202:ffff root rate 100Mbit ceil 100Mbit",
    ] {
        assert!(classes.contains(leaf), "{leaf} not in {classes}");
    }
    let filters = sh("tc", &["filter", "show", "dev", iface, "parent", "5150:"]);
    assert!(
        filters.contains("bpf") && filters.contains("pisa_htb_group"),
        "{filters}"
    );

    kernel.delete_class(2).expect("delete class 2");
    kernel.delete_class(300).expect("delete class 300");
    kernel.flush().expect("flush");
    assert_eq!(
        group_rate("4000").as_deref(),
        Some("10Mbit"),
        "class 1 is left"
    );
    assert_eq!(group_rate("4002"), None, "group 2 is empty");
    let qdiscs = sh("tc", &["qdisc", "show", "dev", iface]);
    assert!(
        qdiscs.contains("qdisc htb 5200: parent 5150:4000"),
        "{qdiscs}"
    );
    assert!(
        !qdiscs.contains("5202:"),
        "group 2's qdisc stayed: {qdiscs}"
    );
}

/// Unmatched traffic must take the unshaped path: HTB's direct queue, no
/// class counters, and far more than the only class's rate. How much
/// throughput the program costs is a benchmark figure (`cargo xtask bench
/// dataplane`), not a timed assertion: on shared 2-core machines the ratio
/// swings by more than any threshold worth asserting.
#[test]
fn unmatched_traffic_takes_the_unshaped_direct_path() {
    require_root();
    let topo = Routed::new();
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);

    let root = BpffsRoot::new();
    let mut kernel = shaper(&root, &topo);
    // A shaped class exists (so the HTB root is in place) but not for 5201.
    class(
        &mut kernel,
        1,
        ShapingMode::Htb,
        10 * MBIT,
        10 * MBIT,
        64 * 1024,
    );
    to_server_port(&mut kernel, &topo, 3306, 1);
    let direct_before = htb_direct_packets(topo.to_server());
    let goodput = iperf3_goodput(&topo.client.ns, topo.server_ip(), 5201, 3);
    let direct = htb_direct_packets(topo.to_server()) - direct_before;
    eprintln!(
        "unmatched: {:.0} Mbit/s goodput, {direct} packets through the direct queue",
        goodput / 1e6
    );
    assert!(
        goodput > 5.0 * (10 * MBIT) as f64 * 8.0,
        "unmatched traffic got {:.1} Mbit/s, as if held to the 10 Mbit class",
        goodput / 1e6
    );
    assert!(direct > 1000, "HTB direct queue saw only {direct} packets");
    let stats = kernel.class_stats().expect("stats")[&1];
    assert_eq!(
        (stats.packets, stats.bytes),
        (0, 0),
        "class 1 counted unmatched traffic"
    );
    let unmatched = kernel.reason_stats().expect("reasons")[0];
    assert!(unmatched > 1000, "unmatched counter {unmatched}");
}

#[test]
fn police_class_never_exceeds_its_rate() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = shaper(&root, &topo);
    let rate = 20 * MBIT;
    // 100 ms of burst: a policer's bucket must absorb TCP's bursts.
    class(
        &mut kernel,
        3,
        ShapingMode::Police,
        rate,
        rate,
        (rate / 10) as u32,
    );
    to_server_port(&mut kernel, &topo, 5201, 3);
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
    let before = tx_bytes(topo.to_server());
    let _client = iperf3_background(&topo.client.ns, topo.server_ip(), 5201, 12);
    wait_for_tx_growth(topo.to_server(), before, 500_000);
    let measured = measure_wire_bps(topo.to_server(), Duration::from_secs(10));
    let expected = (rate * 8) as f64;
    eprintln!("police 20 Mbit: {:.2} Mbit/s on the wire", measured / 1e6);
    assert!(
        measured <= expected * 1.03,
        "police let {:.2} Mbit/s through",
        measured / 1e6
    );
    // TCP recovers poorly from policer drops at sub-millisecond RTT (the
    // reason `auto` picks HTB); the flow must still get through.
    assert!(
        measured >= expected * 0.1,
        "police starved the flow: {:.2} Mbit/s",
        measured / 1e6
    );
    let stats = kernel.class_stats().expect("stats")[&3];
    assert!(
        stats.drops > 0,
        "a saturating TCP flow must hit the policer"
    );
}

#[test]
fn cleanup_leaves_no_program_pin_or_qdisc_behind() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let program_id = {
        let mut kernel = shaper(&root, &topo);
        class(
            &mut kernel,
            1,
            ShapingMode::Htb,
            10 * MBIT,
            10 * MBIT,
            64 * 1024,
        );
        let qdiscs = sh("tc", &["qdisc", "show", "dev", topo.to_server()]);
        assert!(qdiscs.contains("htb 5150:"), "{qdiscs}");
        kernel.program_id()
    };
    pisa_daemon::kernel::pinned::cleanup(&root.layout()).expect("cleanup");
    assert!(!root.path.exists());
    for iface in [topo.to_server(), topo.to_client()] {
        let qdiscs = sh("tc", &["qdisc", "show", "dev", iface]);
        assert!(!qdiscs.contains("htb"), "{iface} still has {qdiscs}");
    }
    assert!(!bpftool_prog_ids("pisa_tc_egress").contains(&u64::from(program_id)));
}

/// The leaf queue of class `id` on `iface`, from `tc -s -j qdisc show`.
fn leaf_queue(iface: &str, id: u32) -> serde_json::Value {
    let out = sh("tc", &["-s", "-j", "qdisc", "show", "dev", iface]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    let leaf = pisa_daemon_common::htb_tree::leaf_handle(id);
    let parent = format!("{:x}:{:x}", leaf >> 16, leaf & 0xFFFF);
    qdiscs
        .as_array()
        .expect("tc qdisc list")
        .iter()
        .find(|q| q["parent"] == parent.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no queue under class {parent} on {iface}: {out}"))
}

#[test]
fn every_htb_class_gets_a_short_queue_of_its_own_that_bounds_its_backlog() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let mut kernel = shaper(&root, &topo);
    let fq_codel = kernel.features().fq_codel;
    let (rate, ceil) = (10 * MBIT, 400 * MBIT);
    class(&mut kernel, 1, ShapingMode::Htb, rate, ceil, 64 * 1024);
    let expected = pisa_daemon::model::LeafQueue::for_class(ceil, fq_codel);
    let queue = leaf_queue(topo.to_server(), 1);
    assert_eq!(queue["kind"], expected.kind(), "{queue}");
    assert_eq!(queue["handle"], "1001:", "{queue}");
    if let pisa_daemon::model::LeafQueue::Bfifo { limit_bytes } = expected {
        // 5 ms at the 400 Mbit ceil.
        assert_eq!(limit_bytes, 250_000);
        assert_eq!(queue["options"]["limit"], limit_bytes, "{queue}");
    }

    // A ceil change changes the queue in place (same handle, no re-create).
    class(
        &mut kernel,
        1,
        ShapingMode::Htb,
        rate,
        800 * MBIT,
        64 * 1024,
    );
    let changed = leaf_queue(topo.to_server(), 1);
    assert_eq!(changed["handle"], "1001:");
    if !fq_codel {
        assert_eq!(changed["options"]["limit"], 500_000, "{changed}");
    }
    class(&mut kernel, 1, ShapingMode::Htb, rate, rate, 64 * 1024);
    let limit = match pisa_daemon::model::LeafQueue::for_class(rate, fq_codel) {
        pisa_daemon::model::LeafQueue::Bfifo { limit_bytes } => u64::from(limit_bytes),
        pisa_daemon::model::LeafQueue::FqCodel => u64::MAX,
    };

    // Saturated by a flow, the class's backlog stays within the queue's
    // bound (HTB's default leaf would queue 1000 packets).
    to_server_port(&mut kernel, &topo, 5201, 1);
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);
    let before = tx_bytes(topo.to_server());
    let _client = iperf3_background(&topo.client.ns, topo.server_ip(), 5201, 6);
    wait_for_tx_growth(topo.to_server(), before, 500_000);
    let mut max_backlog = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let queue = leaf_queue(topo.to_server(), 1);
        max_backlog = max_backlog.max(queue["backlog"].as_u64().expect("backlog"));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("largest backlog of the 10 Mbit class: {max_backlog} bytes (bound {limit})");
    assert!(max_backlog > 0, "the class never queued: not saturated?");
    assert!(
        max_backlog <= limit,
        "backlog {max_backlog} beyond the queue's bound {limit}"
    );
}
