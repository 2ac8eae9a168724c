//! The real eBPF object run on crafted packets with BPF_PROG_TEST_RUN:
//! verdicts, `skb->priority`, `skb->tstamp` and every counter.

use std::{net::SocketAddr, time::Duration};

use crate::support::{packet::*, *};
use aya::programs::{TestRun, TestRunOptions};
use pisa_daemon::kernel::{
    ClassSpec, Dataplane, Features, Kernel, Protocol, RuleMatch, RuleTarget, ShapingMode, Side,
};
use pisa_daemon::tags::{monotonic_ns, Flow};
use pisa_daemon_common::{reason, ClassStats, FlowKey, FlowTag, PROTO_TCP, PROTO_UDP};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// `struct __sk_buff` offsets (uapi/linux/bpf.h).
const SKB_SIZE: usize = 192;
const SKB_PRIORITY: usize = 32;
const SKB_IFINDEX: usize = 40;
const SKB_TSTAMP: usize = 152;
const SKB_WIRE_LEN: usize = 160;
const LOOPBACK: u32 = 1;

struct Outcome {
    verdict: i32,
    priority: u32,
    tstamp: u64,
}

struct Harness {
    kernel: Kernel,
    root: BpffsRoot,
}

impl Harness {
    fn new() -> Self {
        require_root();
        let root = BpffsRoot::new();
        let kernel = Kernel::open(root.layout()).expect("loading the program");
        Self { kernel, root }
    }

    fn run_on(&self, frame: &[u8], ifindex: u32) -> Outcome {
        self.try_run_on(frame, ifindex).expect("BPF_PROG_TEST_RUN")
    }

    fn try_run_on(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<Outcome, aya::programs::ProgramError> {
        self.try_run_with(frame, ifindex, 0)
    }

    /// `wire_len` is what the stack computed for the packet before the
    /// egress hook (a GSO packet's segments with their headers); 0 leaves
    /// it at the frame's length.
    fn try_run_with(
        &self,
        frame: &[u8],
        ifindex: u32,
        wire_len: u32,
    ) -> Result<Outcome, aya::programs::ProgramError> {
        let mut ctx_in = [0u8; SKB_SIZE];
        // ifindex 1 (lo) leaves the kernel's default device in place.
        ctx_in[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        ctx_in[SKB_WIRE_LEN..SKB_WIRE_LEN + 4].copy_from_slice(&wire_len.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_SIZE];
        let mut data_out = vec![0u8; frame.len() + 256];
        let result = self.kernel.program().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        })?;
        Ok(Outcome {
            verdict: result.return_value as i32,
            priority: u32::from_ne_bytes(
                ctx_out[SKB_PRIORITY..SKB_PRIORITY + 4].try_into().unwrap(),
            ),
            tstamp: u64::from_ne_bytes(ctx_out[SKB_TSTAMP..SKB_TSTAMP + 8].try_into().unwrap()),
        })
    }

    fn run(&self, packet: &Packet) -> Outcome {
        self.run_on(&packet.bytes(), LOOPBACK)
    }

    fn class(&mut self, class_id: u32, mode: ShapingMode, rate_bytes: u64, burst_bytes: u32) {
        self.class_with_ceil(class_id, mode, rate_bytes, rate_bytes, burst_bytes);
    }

    /// A class with its own ceil (rate = ceil in `class`).
    fn class_with_ceil(
        &mut self,
        class_id: u32,
        mode: ShapingMode,
        rate: u64,
        ceil: u64,
        burst: u32,
    ) {
        self.kernel
            .put_class(&ClassSpec {
                class_id,
                mode,
                rate_bytes: rate,
                ceil_bytes: ceil,
                burst_bytes: burst,
                priority: 3,
                horizon_ns: 2_000_000_000,
                claim_hash: 0,
            })
            .expect("put_class");
    }

    /// A 1000-byte TCP frame to `dst`.
    /// The verdicts of `count` runs of `frame` on the loopback device, each
    /// with the wire length `wire_len` (a GSO packet's, when above the
    /// frame's own length).
    fn verdicts_with(&self, frame: &[u8], wire_len: u32, count: usize) -> Vec<i32> {
        (0..count)
            .map(|_| {
                self.try_run_with(frame, LOOPBACK, wire_len)
                    .expect("BPF_PROG_TEST_RUN")
                    .verdict
            })
            .collect()
    }

    fn frame_to(&self, dst: &str) -> Vec<u8> {
        let mut p = Packet::tcp("10.9.0.1", 1, dst, 2);
        let header = p.bytes().len() - p.payload;
        p = p.payload(1000 - header);
        p.bytes()
    }

    fn rule(&mut self, side: Side, cidr: &str, protocol: Protocol, port: u16, class_id: u32) {
        let (addr, len) = cidr.split_once('/').expect("cidr");
        self.kernel
            .put_rule(
                &RuleMatch {
                    side,
                    addr: addr.parse().expect("address"),
                    prefix_len: len.parse().expect("prefix"),
                    protocol,
                    port,
                },
                &RuleTarget::class(class_id),
            )
            .expect("put_rule");
    }

    fn stats(&self, class_id: u32) -> ClassStats {
        self.kernel
            .class_stats()
            .expect("class stats")
            .get(&class_id)
            .copied()
            .unwrap_or_default()
    }

    fn reasons(&self) -> Vec<u64> {
        self.kernel.reason_stats().expect("reason stats")
    }
}

fn htb_handle(class_id: u32) -> u32 {
    pisa_daemon::kernel::htb::htb_handle(class_id)
}

fn flow_key(p: &Packet) -> FlowKey {
    let protocol = match p.protocol {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        other => panic!("flow tags are TCP or UDP, not protocol {other}"),
    };
    Flow {
        protocol,
        src: SocketAddr::new(p.src, p.sport),
        dst: SocketAddr::new(p.dst, p.dport),
    }
    .key()
}

#[test]
fn every_parse_case_classifies_v4_v6_tcp_udp_vlan_and_l3() {
    let mut h = Harness::new();
    // An L3 device to run packets "on": the host end of a veth, flagged L3.
    let veth = VethToNs::new();
    h.kernel
        .set_iface_l3(veth.host_ifindex(), true)
        .expect("flag L3");
    h.class(1, ShapingMode::Htb, 1_000_000, 65536);
    h.rule(Side::Destination, "10.1.0.0/16", Protocol::Tcp, 0, 1);
    h.rule(Side::Destination, "10.1.0.0/16", Protocol::Udp, 0, 1);
    h.rule(Side::Destination, "fd00:1::/64", Protocol::Tcp, 0, 1);
    h.rule(Side::Destination, "fd00:1::/64", Protocol::Udp, 0, 1);

    let mut expected = 0;
    for (src, dst) in [("10.9.0.1", "10.1.2.3"), ("fd00:9::1", "fd00:1::5")] {
        for udp in [false, true] {
            for variant in ["plain", "vlan", "l3"] {
                let mut p = if udp {
                    Packet::udp(src, 40000, dst, 5432)
                } else {
                    Packet::tcp(src, 40000, dst, 5432)
                };
                let ifindex = match variant {
                    "vlan" => {
                        p = p.vlan(42);
                        LOOPBACK
                    }
                    "l3" => {
                        p = p.l3();
                        veth.host_ifindex()
                    }
                    _ => LOOPBACK,
                };
                let out = h.run_on(&p.bytes(), ifindex);
                expected += 1;
                let case = format!("{src}->{dst} udp={udp} {variant}");
                assert_eq!(out.verdict, TC_ACT_OK, "{case}");
                assert_eq!(out.priority, htb_handle(1), "{case}: not classified");
                assert_eq!(h.stats(1).packets, expected, "{case}: class counter");
            }
        }
    }
    // IPv4 options and IPv6 extension headers move L4; ports still parse.
    let mut with_options = Packet::tcp("10.9.0.1", 1, "10.1.0.1", 2);
    with_options.ipv4_options = 12;
    assert_eq!(
        h.run(&with_options).priority,
        htb_handle(1),
        "IPv4 with options"
    );
    let mut with_ext = Packet::tcp("fd00:9::1", 1, "fd00:1::1", 2);
    with_ext.ipv6_ext = vec![0, 60, 43, 44];
    assert_eq!(
        h.run(&with_ext).priority,
        htb_handle(1),
        "IPv6 with 4 extension headers"
    );
    assert_eq!(h.reasons()[reason::UNMATCHED as usize], 0);
}

#[test]
fn unparseable_packets_pass_and_bump_their_reason() {
    let h = Harness::new();
    let tcp = Packet::tcp("10.1.0.1", 1000, "10.2.0.1", 3306);
    let full = tcp.bytes();

    let mut bad_version = full.clone();
    bad_version[14] = 0x55;
    let mut short_ihl = full.clone();
    short_ihl[14] = 0x44;
    let mut fragment = tcp.clone();
    fragment.frag_offset = 100;
    let mut deep_ext = Packet::tcp("fd00::1", 1, "fd00::2", 2);
    deep_ext.ipv6_ext = vec![60; 7];
    let mut arp = ethernet(&[], ETH_P_ARP);
    arp.extend_from_slice(&[0u8; 28]);
    let mut icmp = Packet::tcp("10.1.0.1", 0, "10.2.0.1", 0);
    icmp.protocol = ICMP;

    // BPF_PROG_TEST_RUN itself refuses an IPv4/IPv6 ethertype whose IP
    // header is short, so truncated IP headers travel behind a VLAN tag,
    // which the kernel does not look into (the program does).
    let tagged = tcp.clone().vlan(5).bytes();
    let tagged_v6 = Packet::tcp("fd00::1", 1, "fd00::2", 2).vlan(5).bytes();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "truncated IPv4 header",
            tagged[..18 + 12].to_vec(),
            reason::TRUNCATED,
        ),
        (
            "truncated IPv6 header",
            tagged_v6[..18 + 30].to_vec(),
            reason::TRUNCATED,
        ),
        (
            "truncated TCP ports",
            full[..14 + 20 + 2].to_vec(),
            reason::TRUNCATED,
        ),
        ("IP version 5", bad_version, reason::BAD_IP_HEADER),
        ("IHL 4", short_ihl, reason::BAD_IP_HEADER),
        ("non-first fragment", fragment.bytes(), reason::FRAGMENT),
        (
            "7 IPv6 extension headers",
            deep_ext.bytes(),
            reason::IPV6_EXT_LIMIT,
        ),
        (
            "QinQ",
            tcp.clone().vlan(1).vlan(2).bytes(),
            reason::VLAN_DEPTH,
        ),
        ("ARP", arp, reason::NOT_IP),
        ("ICMP", icmp.bytes(), reason::OTHER_L4),
        ("no rule", full.clone(), reason::UNMATCHED),
    ];
    for (case, frame, why) in cases {
        let before = h.reasons();
        let out = h
            .try_run_on(&frame, LOOPBACK)
            .unwrap_or_else(|e| panic!("{case}: BPF_PROG_TEST_RUN: {e}"));
        let after = h.reasons();
        assert_eq!(out.verdict, TC_ACT_OK, "{case}: must fail open");
        assert_eq!(out.priority, 0, "{case}: must not be classified");
        for index in 0..reason::COUNT as usize {
            let delta = after[index] - before[index];
            let want = u64::from(index == why as usize);
            assert_eq!(
                delta,
                want,
                "{case}: reason {} moved by {delta}",
                reason::NAMES[index]
            );
        }
    }
}

#[test]
fn flow_tag_beats_longest_prefix_which_beats_shorter_and_wildcard_port() {
    let mut h = Harness::new();
    for class_id in 1..=5 {
        h.class(class_id, ShapingMode::Htb, 1_000_000, 65536);
    }
    h.rule(Side::Destination, "10.5.0.0/16", Protocol::Tcp, 0, 1);
    h.rule(Side::Destination, "10.5.1.0/24", Protocol::Tcp, 0, 2);
    h.rule(Side::Destination, "10.5.1.0/24", Protocol::Tcp, 3306, 3);
    h.rule(Side::Destination, "10.5.1.7/32", Protocol::Tcp, 0, 4);

    let to = |dst: &str, port: u16| Packet::tcp("10.9.9.9", 50000, dst, port);
    assert_eq!(
        h.run(&to("10.5.2.1", 3306)).priority,
        htb_handle(1),
        "/16 only"
    );
    assert_eq!(
        h.run(&to("10.5.1.1", 80)).priority,
        htb_handle(2),
        "/24 any-port"
    );
    assert_eq!(
        h.run(&to("10.5.1.1", 3306)).priority,
        htb_handle(3),
        "/24 exact port beats /24 any"
    );
    assert_eq!(
        h.run(&to("10.5.1.7", 3306)).priority,
        htb_handle(4),
        "/32 any beats /24 exact"
    );
    assert_eq!(
        h.run(&to("10.6.0.1", 3306)).priority,
        0,
        "no rule: default path"
    );
    assert_eq!(
        h.run(&Packet::udp("10.9.9.9", 5, "10.5.1.7", 3306))
            .priority,
        0,
        "protocol is part of the rule"
    );

    // A live tag wins over every rule.
    let tagged = to("10.5.1.7", 3306);
    let live = FlowTag {
        class_id: 5,
        origin: 0,
        expires_ns: monotonic_ns().unwrap() + 60_000_000_000,
    };
    h.kernel
        .put_flow_tag(&flow_key(&tagged), &live)
        .expect("tag");
    assert_eq!(h.run(&tagged).priority, htb_handle(5), "tag beats /32");
    // One entry per connection, under the direction whose source sorts
    // first (10.5.1.7:3306 here): the response direction finds it too.
    let response = Packet::tcp("10.5.1.7", 3306, "10.9.9.9", 50000);
    assert_eq!(
        h.run(&response).priority,
        htb_handle(5),
        "the tag covers the response direction"
    );
    let pinned = pinned_flow_tags(&h.root);
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    assert!(flow_key(&response).is_canonical() && !flow_key(&tagged).is_canonical());
    // An expired tag is ignored (and counted); the rules apply again.
    let expired = FlowTag {
        expires_ns: monotonic_ns().unwrap() - 1,
        ..live
    };
    h.kernel
        .put_flow_tag(&flow_key(&tagged), &expired)
        .expect("tag");
    let before = h.reasons()[reason::TAG_EXPIRED as usize];
    assert_eq!(h.run(&tagged).priority, htb_handle(4));
    assert_eq!(h.reasons()[reason::TAG_EXPIRED as usize], before + 1);
    h.kernel.delete_flow_tag(&flow_key(&tagged)).expect("untag");
    assert_eq!(h.run(&tagged).priority, htb_handle(4));
}

#[test]
fn direction_rules_match_requests_by_destination_and_responses_by_source() {
    let mut h = Harness::new();
    for class_id in 1..=3 {
        h.class(class_id, ShapingMode::Htb, 1_000_000, 65536);
    }
    h.rule(Side::Destination, "10.7.0.1/32", Protocol::Tcp, 3306, 1); // to
    h.rule(Side::Source, "10.7.0.2/32", Protocol::Tcp, 5432, 2); // from
    h.rule(Side::Destination, "10.7.0.3/32", Protocol::Tcp, 6379, 3); // both
    h.rule(Side::Source, "10.7.0.3/32", Protocol::Tcp, 6379, 3);

    let request = |db: &str, port| Packet::tcp("10.9.0.1", 40000, db, port);
    let response = |db: &str, port| Packet::tcp(db, port, "10.9.0.1", 40000);
    assert_eq!(h.run(&request("10.7.0.1", 3306)).priority, htb_handle(1));
    assert_eq!(
        h.run(&response("10.7.0.1", 3306)).priority,
        0,
        "`to` ignores responses"
    );
    assert_eq!(
        h.run(&request("10.7.0.2", 5432)).priority,
        0,
        "`from` ignores requests"
    );
    assert_eq!(h.run(&response("10.7.0.2", 5432)).priority, htb_handle(2));
    assert_eq!(h.run(&request("10.7.0.3", 6379)).priority, htb_handle(3));
    assert_eq!(h.run(&response("10.7.0.3", 6379)).priority, htb_handle(3));
}

#[test]
fn htb_class_sets_priority_to_its_handle_and_counts() {
    let mut h = Harness::new();
    h.class(321, ShapingMode::Htb, 1_000_000, 65536);
    h.rule(Side::Destination, "10.8.0.1/32", Protocol::Tcp, 0, 321);
    let p = Packet::tcp("10.9.0.1", 1, "10.8.0.1", 2).payload(1000);
    let len = p.bytes().len() as u64;
    for _ in 0..3 {
        let out = h.run(&p);
        assert_eq!(out.verdict, TC_ACT_OK);
        // Class 321 (0x141) is a leaf of group 2, whose qdisc is 5202:.
        assert_eq!(out.priority, 0x5202_0141);
        assert_eq!(out.tstamp, 0, "htb never stamps departure times");
    }
    let stats = h.stats(321);
    assert_eq!(
        (stats.packets, stats.bytes, stats.drops, stats.delayed),
        (3, 3 * len, 0, 0)
    );
}

#[test]
fn edt_spaces_departures_by_bytes_over_rate_and_drops_beyond_horizon() {
    let mut h = Harness::new();
    h.kernel.override_features(Features {
        sch_fq: true,
        ..h.kernel.features()
    });
    // bytes/s: 1000-byte frames cost 100 ms, so the time the three runs
    // take (a busy CI machine once took over 0.5 ms) cannot move the
    // backlog across the horizon.
    let rate = 10_000;
    h.kernel
        .put_class(&ClassSpec {
            class_id: 9,
            mode: ShapingMode::Edt,
            rate_bytes: rate,
            ceil_bytes: rate,
            burst_bytes: 0,
            priority: 3,
            horizon_ns: 250_000_000,
            claim_hash: 0,
        })
        .expect("edt class");
    h.rule(Side::Destination, "10.8.0.9/32", Protocol::Tcp, 0, 9);
    let mut p = Packet::tcp("10.9.0.1", 1, "10.8.0.9", 2);
    let header = p.bytes().len() - p.payload;
    p = p.payload(1000 - header);
    assert_eq!(p.bytes().len(), 1000);

    let start = monotonic_ns().unwrap();
    let first = h.run(&p);
    let second = h.run(&p);
    let third = h.run(&p);
    assert_eq!((first.verdict, second.verdict), (TC_ACT_OK, TC_ACT_OK));
    assert!(first.tstamp > start, "first departure is in the future");
    assert_eq!(
        second.tstamp - first.tstamp,
        100_000_000,
        "departures are spaced by exactly bytes/rate"
    );
    assert_eq!(
        third.verdict, TC_ACT_SHOT,
        "300 ms of backlog exceeds the 250 ms horizon"
    );
    let stats = h.stats(9);
    assert_eq!((stats.packets, stats.delayed, stats.drops), (2, 2, 1));
}

#[test]
fn edt_and_police_charge_the_wire_bytes_of_a_gso_packet() {
    // A 1000-byte GSO frame that leaves as three segments puts 3000 bytes
    // on the wire (each segment carries its own headers); HTB charges the
    // 3000, so EDT and police must too, or a class of TCP traffic runs
    // several percent over its rate.
    let mut h = Harness::new();
    h.kernel.override_features(Features {
        sch_fq: true,
        ..h.kernel.features()
    });
    h.class(10, ShapingMode::Edt, 10_000, 0);
    h.rule(Side::Destination, "10.8.0.10/32", Protocol::Tcp, 0, 10);
    let frame = h.frame_to("10.8.0.10");
    let run = |wire| {
        h.try_run_with(&frame, LOOPBACK, wire)
            .expect("BPF_PROG_TEST_RUN")
    };
    // A departure is the class's pace after the packet's own cost, so the
    // gap before a packet is what that packet was charged.
    let first = run(0);
    let second = run(3000);
    let third = run(0);
    assert_eq!(
        second.tstamp - first.tstamp,
        300_000_000,
        "a 3000-byte wire length is paced as 3000 bytes, not the 1000 of skb->len"
    );
    assert_eq!(
        third.tstamp - second.tstamp,
        100_000_000,
        "without a wire length the frame's own 1000 bytes are charged"
    );
    let stats = h.stats(10);
    assert_eq!(
        stats.bytes,
        3 * 1000,
        "counters count skb->len, as the interface does"
    );

    // Police: a 3000-byte bucket passes one 3000-byte GSO frame, not three.
    h.class(11, ShapingMode::Police, 1000, 3000);
    h.rule(Side::Destination, "10.8.0.11/32", Protocol::Tcp, 0, 11);
    let frame = h.frame_to("10.8.0.11");
    let verdicts = h.verdicts_with(&frame, 3000, 2);
    assert_eq!(verdicts, vec![TC_ACT_OK, TC_ACT_SHOT]);
}

#[test]
fn edt_borrows_up_to_ceil_while_the_link_has_room_and_keeps_its_rate_when_not() {
    let mut h = Harness::new();
    h.kernel.override_features(Features {
        sch_fq: true,
        ..h.kernel.features()
    });
    // bytes/s: a 100,000 B/s link; 1000-byte frames cost 10 ms of it.
    h.kernel
        .write_link_pace(LOOPBACK, 100_000)
        .expect("link pace");
    h.class_with_ceil(12, ShapingMode::Edt, 10_000, 100_000, 0);
    h.rule(Side::Destination, "10.8.0.12/32", Protocol::Tcp, 0, 12);
    h.class_with_ceil(13, ShapingMode::Edt, 90_000, 90_000, 0);
    h.rule(Side::Destination, "10.8.0.13/32", Protocol::Tcp, 0, 13);
    let (a, b) = (h.frame_to("10.8.0.12"), h.frame_to("10.8.0.13"));

    let a1 = h.run_on(&a, LOOPBACK);
    let a2 = h.run_on(&a, LOOPBACK);
    assert_eq!(
        a2.tstamp - a1.tstamp,
        10_000_000,
        "an idle link: paced at its ceil (10 ms a frame), not its rate (100 ms)"
    );
    // The other class fills the link: ten frames, 100 ms of it.
    for _ in 0..10 {
        h.run_on(&b, LOOPBACK);
    }
    let before = monotonic_ns().unwrap();
    let a3 = h.run_on(&a, LOOPBACK);
    let after = monotonic_ns().unwrap();
    // Borrowing would wait for the link (about 130 ms); the class's own
    // rate clock, untouched while it borrowed, sends it in 100 ms.
    assert!(
        a3.tstamp >= before + 100_000_000 && a3.tstamp <= after + 100_000_000,
        "guaranteed departure 100 ms after now, got {} ms",
        (a3.tstamp as i128 - before as i128) / 1_000_000
    );
    assert_eq!(h.stats(12).delayed, 3);
}

#[test]
fn police_passes_at_its_ceil_beyond_its_burst_while_the_link_has_room() {
    let mut h = Harness::new();
    h.kernel
        .write_link_pace(LOOPBACK, 100_000)
        .expect("link pace");
    // 1000 B/s guaranteed with a 3000-byte bucket; ceil 100,000 B/s.
    h.class_with_ceil(14, ShapingMode::Police, 1000, 100_000, 3000);
    h.rule(Side::Destination, "10.8.0.14/32", Protocol::Tcp, 0, 14);
    let frame = h.frame_to("10.8.0.14");
    let verdicts: Vec<i32> = (0..4).map(|_| h.run_on(&frame, LOOPBACK).verdict).collect();
    assert_eq!(
        verdicts,
        vec![TC_ACT_OK, TC_ACT_OK, TC_ACT_OK, TC_ACT_SHOT],
        "the burst passes, the next frame has no credit yet"
    );
    // 50 ms later: at its rate a frame needs a second of credit; at its
    // ceil it needs 10 ms, and the link has room.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.run_on(&frame, LOOPBACK).verdict, TC_ACT_OK);
    let stats = h.stats(14);
    assert_eq!((stats.packets, stats.drops), (4, 1));
}

#[test]
fn police_passes_the_burst_then_drops_over_rate() {
    let mut h = Harness::new();
    // 1000 bytes/s with a 3000-byte bucket: three 1000-byte frames pass at
    // once, the fourth would need a second of credit.
    h.class(4, ShapingMode::Police, 1000, 3000);
    h.rule(Side::Destination, "10.8.0.4/32", Protocol::Tcp, 0, 4);
    let mut p = Packet::tcp("10.9.0.1", 1, "10.8.0.4", 2);
    let header = p.bytes().len() - p.payload;
    p = p.payload(1000 - header);
    let verdicts: Vec<i32> = (0..5).map(|_| h.run(&p).verdict).collect();
    assert_eq!(
        verdicts,
        vec![TC_ACT_OK, TC_ACT_OK, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_SHOT]
    );
    let stats = h.stats(4);
    assert_eq!((stats.packets, stats.bytes, stats.drops), (3, 3000, 2));
}

#[test]
fn police_passes_a_gso_packet_larger_than_its_burst_once_then_makes_it_wait() {
    // A 3000-byte bucket against 5000-byte GSO packets (wire length): a
    // bucket shallower than one packet would drop every one of them, and a
    // policed TCP class would pass nothing. On a full bucket one passes;
    // its whole cost (5 s at 1000 B/s) is owed before the next.
    let mut h = Harness::new();
    h.class(15, ShapingMode::Police, 1000, 3000);
    h.rule(Side::Destination, "10.8.0.15/32", Protocol::Tcp, 0, 15);
    let frame = h.frame_to("10.8.0.15");
    let verdicts = h.verdicts_with(&frame, 5000, 3);
    assert_eq!(verdicts, vec![TC_ACT_OK, TC_ACT_SHOT, TC_ACT_SHOT]);
    // With a ceil (the borrowing path), the same holds on each clock.
    h.kernel
        .write_link_pace(LOOPBACK, 100_000)
        .expect("link pace");
    h.class_with_ceil(16, ShapingMode::Police, 1000, 2000, 3000);
    h.rule(Side::Destination, "10.8.0.16/32", Protocol::Tcp, 0, 16);
    let frame = h.frame_to("10.8.0.16");
    let verdicts = h.verdicts_with(&frame, 5000, 2);
    assert_eq!(verdicts, vec![TC_ACT_OK, TC_ACT_SHOT]);
    assert_eq!((h.stats(15).drops, h.stats(16).drops), (2, 1));
}

#[test]
fn rule_pointing_at_an_inactive_class_passes_and_is_counted() {
    let mut h = Harness::new();
    h.rule(Side::Destination, "10.8.0.5/32", Protocol::Tcp, 0, 77);
    let out = h.run(&Packet::tcp("10.9.0.1", 1, "10.8.0.5", 2));
    assert_eq!((out.verdict, out.priority), (TC_ACT_OK, 0));
    assert_eq!(h.reasons()[reason::CLASS_INACTIVE as usize], 1);
}

#[test]
fn deleting_a_class_stops_shaping_and_a_reused_slot_starts_clean() {
    let mut h = Harness::new();
    h.class(12, ShapingMode::Htb, 1_000_000, 65536);
    h.rule(Side::Destination, "10.8.0.12/32", Protocol::Tcp, 0, 12);
    let p = Packet::tcp("10.9.0.1", 1, "10.8.0.12", 2);
    assert_eq!(h.run(&p).priority, htb_handle(12));
    assert_eq!(h.stats(12).packets, 1);
    h.kernel
        .delete_rule(h.kernel.rules().keys().next().copied().as_ref().unwrap())
        .unwrap();
    h.kernel.delete_class(12).expect("delete");
    assert_eq!(h.run(&p).priority, 0);
    h.class(12, ShapingMode::Htb, 2_000_000, 65536);
    assert_eq!(
        h.stats(12).packets,
        0,
        "a new class in a reused slot starts at zero"
    );
}

/// A StartupMessage as libpq sends it.
fn pg_startup(user: &str) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(b"\0database\0analytics\0\0");
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Class 7 (HTB) on 10.5.0.9:5432/tcp, selected by SQL identity; and a
/// runtime for the ring readers (enter it before taking one).
fn sql_endpoint(h: &mut Harness) -> tokio::runtime::Runtime {
    h.class(7, ShapingMode::Htb, 1_000_000, 65_536);
    let endpoint = RuleMatch {
        side: Side::Destination,
        addr: "10.5.0.9".parse().unwrap(),
        prefix_len: 32,
        protocol: Protocol::Tcp,
        port: 5432,
    };
    let target = RuleTarget {
        class_id: 7,
        clients: false,
        sql: true,
        rule_id: 0,
    };
    h.kernel.put_rule(&endpoint, &target).expect("put_rule");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// On an endpoint selected by SQL identity, connection starts reach
/// userspace through the ring buffer and every packet (malformed,
/// truncated, random payloads included) still passes and is shaped as
/// before; the parser reads what came up without panicking.
#[test]
fn connection_starts_are_handed_up_and_every_packet_passes() {
    use pisa_daemon::identity::startup::{parse, Start};
    let mut h = Harness::new();
    let runtime = sql_endpoint(&mut h);
    let _entered = runtime.enter();
    let mut events = h.kernel.take_sql_events().expect("the ring buffer");
    let sent_before = h.kernel.sql_stats().unwrap()[0];

    let mut payloads: Vec<Vec<u8>> = vec![
        pg_startup("reporter"),
        vec![0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F],
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03],
        // Looks like a MySQL response, then is garbage.
        [vec![60, 0, 0, 1, 0x00, 0x02, 0x00, 0x00], vec![0xff; 56]].concat(),
        // A PostgreSQL header whose length lies.
        [vec![0, 0, 0x27, 0x0f, 0, 3, 0, 0], vec![b'x'; 40]].concat(),
        vec![0, 0, 0, 8],
        vec![],
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..300 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = (seed >> 33) as usize % 700;
        payloads.push(
            (0..len)
                .map(|i| (seed.rotate_left(i as u32 % 64) >> 7) as u8)
                .collect(),
        );
    }
    for payload in &payloads {
        let out = h.run(&Packet::tcp("10.6.0.2", 40000, "10.5.0.9", 5432).with_payload(payload));
        assert_eq!(out.verdict, 0, "a start-check packet was not passed");
        assert_eq!(
            out.priority,
            pisa_daemon::kernel::htb::htb_handle(7),
            "shaping changed"
        );
    }
    let sent = h.kernel.sql_stats().unwrap()[0] - sent_before;
    assert!(sent >= 5, "the four starts and the lying header: {sent}");
    let mut drained = Vec::new();
    while (drained.len() as u64) < sent {
        let mut batch = Vec::new();
        runtime
            .block_on(tokio::time::timeout(
                Duration::from_secs(2),
                events.next_batch(&mut batch),
            ))
            .expect("events the kernel counted must arrive")
            .expect("reading the ring buffer");
        drained.extend(batch);
    }
    let parsed: Vec<_> = drained
        .iter()
        .map(|e| parse(&e.bytes[..e.captured as usize]))
        .collect();
    assert!(
        parsed.iter().any(
            |p| matches!(p, Ok(Start::Identified(who)) if who.user.as_deref() == Some("reporter"))
        ),
        "{parsed:?}"
    );
    assert!(parsed.iter().any(|p| p == &Ok(Start::PostgresSslRequest)));
    assert!(parsed.iter().any(|p| p == &Ok(Start::TlsClientHello)));
    assert!(
        parsed.iter().any(Result::is_err),
        "the garbage was rejected"
    );
}

/// Log lines written through `tracing` while the guard lives, as text.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The program's debug events: none while `KERNEL_LOG` is off (the
/// default), and when it is on, a packet that fails open and a connection
/// start each write one event, which the reader turns into a log line of
/// the target `pisa_kernel`.
#[test]
fn kernel_debug_events_are_off_by_default_and_reach_the_log_when_switched_on() {
    let mut h = Harness::new();
    let runtime = sql_endpoint(&mut h);
    let _entered = runtime.enter();
    let mut kernel_log = h.kernel.take_kernel_log().expect("the log ring");
    let captured = CapturedLog::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let tagged = Packet::tcp("10.1.0.1", 1000, "10.2.0.1", 3306)
        .vlan(5)
        .bytes();
    let truncated = tagged[..18 + 12].to_vec();
    let start =
        Packet::tcp("10.6.0.2", 40000, "10.5.0.9", 5432).with_payload(&pg_startup("reporter"));
    let send_both = |h: &Harness| {
        assert_eq!(h.run_on(&truncated, LOOPBACK).verdict, TC_ACT_OK);
        assert_eq!(h.run(&start).verdict, TC_ACT_OK);
    };
    let drain = |log: &mut pisa_daemon::kernel::kernel_log::KernelLog, wait: Duration| {
        runtime.block_on(tokio::time::timeout(wait, log.drain()))
    };

    send_both(&h);
    assert!(
        drain(&mut kernel_log, Duration::from_millis(300)).is_err(),
        "events were written while switched off: {}",
        captured.text()
    );
    assert!(
        !captured.text().contains("pisa_kernel"),
        "{}",
        captured.text()
    );

    h.kernel.set_kernel_log(true).expect("switching events on");
    send_both(&h);
    let want = [
        format!("fail open: reason {} on ifindex", reason::TRUNCATED),
        "sql identity: start handed up 10.6.0.2:40000 -> 10.5.0.9:5432".to_owned(),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|w| captured.text().contains(w.as_str())) {
        assert!(
            std::time::Instant::now() < deadline,
            "missing events; the log so far:\n{}",
            captured.text()
        );
        if let Ok(read) = drain(&mut kernel_log, Duration::from_millis(500)) {
            read.expect("reading the log ring");
        }
    }
    let text = captured.text();
    for line in text
        .lines()
        .filter(|l| l.contains("sql identity") || l.contains("fail open"))
    {
        assert!(
            line.contains("DEBUG pisa_kernel"),
            "level and target: {line}"
        );
    }

    h.kernel
        .set_kernel_log(false)
        .expect("switching events off");
    let lines_before = captured.text().lines().count();
    send_both(&h);
    assert!(drain(&mut kernel_log, Duration::from_millis(300)).is_err());
    assert_eq!(
        captured.text().lines().count(),
        lines_before,
        "{}",
        captured.text()
    );
}

/// Client selectors in the kernel, IPv4 and IPv6: the longest client
/// prefix of the endpoint's rule picks the class, requests by their source
/// and responses by their destination; a client no prefix covers gets the
/// rule's own class (here none: unshaped); a flow tag (SQL identity or the
/// proxy) outranks every client prefix.
#[test]
fn client_prefixes_pick_the_class_by_the_clients_address_and_tags_outrank_them() {
    use pisa_daemon::{kernel::ClientPrefix, model::Prefix};
    let mut h = Harness::new();
    for id in [11, 12, 13] {
        h.class(id, ShapingMode::Htb, 1_000_000, 65_536);
    }
    for (rule_id, server, client_net, narrow) in [
        (1u16, "10.5.0.9", "10.6.0.0/16", "10.6.7.0/24"),
        (2u16, "fd00::9", "fd06::/32", "fd06:0:7::/48"),
    ] {
        let bits = if server.contains(':') { 128 } else { 32 };
        for side in [Side::Destination, Side::Source] {
            let rule = RuleMatch {
                side,
                addr: server.parse().unwrap(),
                prefix_len: bits,
                protocol: Protocol::Tcp,
                port: 5432,
            };
            // One rule id per (endpoint, side), as the planner gives them.
            let rule_id = rule_id * 2 + u16::from(side == Side::Source);
            let target = RuleTarget {
                class_id: 0,
                clients: true,
                sql: false,
                rule_id,
            };
            h.kernel.put_rule(&rule, &target).expect("put_rule");
            for (net, class_id) in [(client_net, 11), (narrow, 12)] {
                let (addr, len) = net.split_once('/').unwrap();
                let client = ClientPrefix {
                    rule_id,
                    client: Prefix {
                        addr: addr.parse().unwrap(),
                        len: len.parse().unwrap(),
                    },
                };
                h.kernel.put_client(&client, class_id).expect("put_client");
            }
        }
        let wide_client = if bits == 32 {
            "10.6.1.1"
        } else {
            "fd06:0:1::1"
        };
        let narrow_client = if bits == 32 {
            "10.6.7.1"
        } else {
            "fd06:0:7::1"
        };
        let stranger = if bits == 32 { "10.9.1.1" } else { "fd09::1" };
        let request = |client: &str| Packet::tcp(client, 40000, server, 5432);
        let response = |client: &str| Packet::tcp(server, 5432, client, 40000);
        for (client, class) in [
            (wide_client, htb_handle(11)),
            (narrow_client, htb_handle(12)),
        ] {
            assert_eq!(
                h.run(&request(client)).priority,
                class,
                "request from {client}"
            );
            assert_eq!(
                h.run(&response(client)).priority,
                class,
                "response to {client}"
            );
        }
        assert_eq!(
            h.run(&request(stranger)).priority,
            0,
            "a client no prefix covers is not shaped here"
        );
        // A tag outranks the client prefix.
        let tagged = request(narrow_client);
        let tag = FlowTag {
            class_id: 13,
            origin: pisa_daemon_common::TAG_ORIGIN_SQL,
            expires_ns: 0,
        };
        h.kernel
            .put_flow_tag(&flow_key(&tagged), &tag)
            .expect("tag");
        assert_eq!(h.run(&tagged).priority, htb_handle(13), "the tag wins");
    }
}
