//! Traffic and the kernel's own counters of it: iperf3, interface and
//! qdisc byte counters.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    host::{read_u64, require_tool, sh},
    net::Netns,
    process::ChildGuard,
    wait::wait_for_listener,
};

/// Starts an iperf3 server inside `ns` and waits until it listens.
pub fn iperf3_server(ns: &Netns, bind: &str, port: u16) -> ChildGuard {
    require_tool("iperf3");
    let port_s = port.to_string();
    let server = ns.spawn(&["iperf3", "-s", "-B", bind, "-p", &port_s]);
    wait_for_listener(ns, port);
    server
}

/// Runs an iperf3 client from the host namespace and returns its JSON.
pub fn iperf3_client(server: &str, port: u16, args: &[&str]) -> serde_json::Value {
    let port_s = port.to_string();
    let mut full = vec!["-c", server, "-p", &port_s, "-J"];
    full.extend_from_slice(args);
    let out = sh("iperf3", &full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {out}"))
}

/// Transmit byte counter of an interface in the host namespace.
pub fn tx_bytes(iface: &str) -> u64 {
    read_u64(&format!("/sys/class/net/{iface}/statistics/tx_bytes"))
}

/// An iperf3 client running in the background inside `ns`.
pub fn iperf3_background(ns: &Netns, server: &str, port: u16, seconds: u32) -> ChildGuard {
    iperf3_background_with(ns, server, port, seconds, &[])
}

/// `iperf3_background` with extra client arguments (e.g. `-P 2`).
pub fn iperf3_background_with(
    ns: &Netns,
    server: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> ChildGuard {
    let port_s = port.to_string();
    let secs = seconds.to_string();
    let child = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-c", server, "-p", &port_s,
        ])
        .args(["-t", &secs, "-J"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning iperf3 client");
    ChildGuard::new(child, format!("iperf3 -c {server}:{port}"))
}

/// Packets the root HTB of `iface` sent through its direct queue, which is
/// where `default 0` puts everything without a class.
pub fn htb_direct_packets(iface: &str) -> u64 {
    let out = sh("tc", &["-s", "-j", "qdisc", "show", "dev", iface, "root"]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    assert_eq!(qdiscs[0]["kind"], "htb", "root qdisc is not HTB: {out}");
    qdiscs[0]["options"]["direct_packets_stat"]
        .as_u64()
        .unwrap_or_else(|| panic!("no direct_packets_stat: {out}"))
}

/// Bytes the root qdisc of `iface` has sent, as qdiscs count them: the
/// wire length (`qdisc_pkt_len`), which gives a GSO packet's every
/// segment its headers. The interface's tx_bytes counts such a packet's
/// headers once, so at high rates it reads a few percent under the wire.
pub fn root_qdisc_bytes(iface: &str) -> u64 {
    let out = sh("tc", &["-s", "-j", "qdisc", "show", "dev", iface, "root"]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    qdiscs[0]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no byte counter on the root qdisc: {out}"))
}

/// Wire rate (bits/s) through the root qdisc of `iface` over `window`.
pub fn measure_qdisc_wire_bps(iface: &str, window: Duration) -> f64 {
    let start_bytes = root_qdisc_bytes(iface);
    let start = Instant::now();
    std::thread::sleep(window);
    let bytes = root_qdisc_bytes(iface) - start_bytes;
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64()
}

/// Wire rate (bits/s) leaving `iface` over `window`, measured with the
/// kernel's own counters.
pub fn measure_wire_bps(iface: &str, window: Duration) -> f64 {
    let start_bytes = tx_bytes(iface);
    let start = Instant::now();
    std::thread::sleep(window);
    let bytes = tx_bytes(iface) - start_bytes;
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64()
}

/// Runs an iperf3 client in `ns` and returns the receiver's goodput (bits/s).
pub fn iperf3_goodput(ns: &Netns, server: &str, port: u16, seconds: u32) -> f64 {
    iperf3_goodput_with(ns, server, port, seconds, &[])
}

/// `iperf3_goodput` with extra client arguments (e.g. `--cport`).
pub fn iperf3_goodput_with(
    ns: &Netns,
    server: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> f64 {
    let (port, seconds) = (port.to_string(), seconds.to_string());
    let mut args = vec!["iperf3", "-c", server, "-p", &port, "-t", &seconds, "-J"];
    args.extend_from_slice(extra);
    let out = ns.exec(&args);
    let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no goodput in {report}"))
}

/// Waits until `iface` has transmitted `bytes` more than `from` (a
/// `tx_bytes` reading): a flow through it is under way and past its start,
/// so a measurement from here sees its steady rate.
pub fn wait_for_tx_growth(iface: &str, from: u64, bytes: u64) {
    super::wait::wait_until(
        &format!("{iface} to transmit {bytes} bytes"),
        Duration::from_secs(10),
        || tx_bytes(iface).saturating_sub(from) >= bytes,
    );
}
