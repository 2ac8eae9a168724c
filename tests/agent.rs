//! The real `pisa-daemon run --config …` on the routed netns topology:
//! claims in a file become shaped traffic; edits land within a second and
//! touch only their class; invalid edits keep the last good state; the
//! kernel state outlives the process (SIGTERM and SIGKILL).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::support::*;

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

struct Daemon {
    guard: ChildGuard,
    metrics: String,
    state_file: PathBuf,
}

struct Setup {
    topo: Routed,
    root: BpffsRoot,
    dir: TempDir,
}

fn claim(name: &str, rate: &str, server: &str, port: u16) -> String {
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n  trafficQoS:\n    name: {name}\n    \
         qos_group: {{rate: {rate}}}\n    direction: to\n    burst: 64kb\n    \
         endpoints: [{{host: {server}, port: {port}}}]\n---\n"
    )
}

impl Setup {
    fn new() -> Self {
        require_root();
        Self {
            topo: Routed::new(),
            root: BpffsRoot::new(),
            dir: TempDir::new("pcfg"),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.0.join("claims.yaml")
    }

    fn write_claims(&self, a_rate: &str, b_rate: &str) {
        let body = claim("alpha", a_rate, self.topo.server_ip(), 5201)
            + &claim("beta", b_rate, self.topo.server_ip(), 5202);
        // Write then rename, as editors and config management do.
        let tmp = self.dir.0.join(".claims.tmp");
        std::fs::write(&tmp, body).expect("writing claims");
        std::fs::rename(&tmp, self.config()).expect("renaming claims");
    }

    fn start(&self, port: u16) -> Daemon {
        self.start_binary(daemon_bin(), port, &[])
    }

    /// `start` with another build of the daemon (the previous release)
    /// or more arguments.
    fn start_binary(&self, bin: impl AsRef<std::ffi::OsStr>, port: u16, extra: &[&str]) -> Daemon {
        let metrics = format!("127.0.0.1:{port}");
        let state_file = self.dir.0.join("state.json");
        let config = self.config();
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            self.topo.to_server(),
            "--bpffs",
            self.root.as_str(),
            "--metrics-addr",
            &metrics,
            "--state-file",
            state_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let guard = spawn_binary(bin, &args, &[]);
        let mut daemon = Daemon {
            guard,
            metrics,
            state_file,
        };
        wait_until(
            "the daemon to become ready",
            Duration::from_secs(20),
            || {
                daemon.guard.assert_running();
                http_get(&daemon.metrics, "/readyz").is_some_and(|(code, _)| code == 200)
            },
        );
        daemon
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The `tc` handle of class `class_id`'s leaf (in its group's qdisc).
fn leaf_handle(class_id: u32) -> String {
    let leaf = pisa_daemon_common::htb_tree::leaf_handle(class_id);
    format!("{:x}:{:x}", leaf >> 16, leaf & 0xFFFF)
}

/// `tc -s class show` for one HTB class leaf: (rate text, sent bytes).
fn tc_class(iface: &str, class_id: u32) -> Option<(String, u64)> {
    tc_class_at(iface, &leaf_handle(class_id))
}

/// `tc -s class show` for the HTB class `handle`: (rate text, sent bytes).
fn tc_class_at(iface: &str, handle: &str) -> Option<(String, u64)> {
    let out = sh("tc", &["-s", "class", "show", "dev", iface]);
    let handle = format!("class htb {handle} ");
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with(&handle) {
            continue;
        }
        let rate = line
            .split(" rate ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_owned();
        let sent = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        return Some((rate, sent));
    }
    None
}

/// Waits until an HTB class has sent `bytes`: its flow is established and
/// past its initial burst, so a measurement from here sees the class rate.
fn wait_for_class_bytes(iface: &str, class_id: u32, bytes: u64) {
    wait_for_handle_bytes(iface, &leaf_handle(class_id), bytes);
}

fn wait_for_handle_bytes(iface: &str, handle: &str, bytes: u64) {
    wait_until(
        &format!("class {handle} on {iface} to send {bytes} bytes"),
        Duration::from_secs(10),
        || tc_class_at(iface, handle).is_some_and(|(_, sent)| sent >= bytes),
    );
}

fn class_id_of(state_file: &Path, claim: &str) -> u32 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_file).expect("state file"))
            .expect("state JSON");
    state["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["claim"] == claim)
        .and_then(|c| c["class_id"].as_u64())
        .unwrap_or_else(|| panic!("no class for {claim} in {state}")) as u32
}

/// `pisa-daemon status` against the running daemon (its API socket).
fn status(s: &Setup, daemon: &Daemon) -> std::process::Output {
    std::process::Command::new(daemon_bin())
        .args(["status", "--bpffs", s.root.as_str(), "--state-file"])
        .arg(&daemon.state_file)
        .args(["--sample-ms", "100"])
        .env("PISA_API_SOCKET", api_socket())
        .output()
        .expect("status")
}

fn metric_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn claims_file_shapes_edits_land_within_a_second_and_only_touch_their_class() {
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let mut daemon = s.start(19464);
    let alpha = class_id_of(&daemon.state_file, "shop/alpha");
    let beta = class_id_of(&daemon.state_file, "shop/beta");
    assert_eq!(tc_class(s.topo.to_server(), alpha).unwrap().0, "10Mbit");
    assert_eq!(tc_class(s.topo.to_server(), beta).unwrap().0, "20Mbit");

    // Shaping matches the claim, on the wire.
    let _a_server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5201);
    let _b_server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5202);
    {
        let _a = iperf3_background(&s.topo.client.ns, s.topo.server_ip(), 5201, 7);
        wait_for_class_bytes(s.topo.to_server(), alpha, 250_000);
        let bps = measure_wire_bps(s.topo.to_server(), Duration::from_secs(5));
        let ratio = bps / 10e6;
        eprintln!(
            "alpha at 10mbit: {:.2} Mbit/s (ratio {ratio:.3})",
            bps / 1e6
        );
        assert!(
            (0.97..=1.03).contains(&ratio),
            "alpha shaped to {:.2} Mbit/s",
            bps / 1e6
        );
    }

    // Beta runs while alpha's rate is edited.
    let _b = iperf3_background(&s.topo.client.ns, s.topo.server_ip(), 5202, 8);
    wait_for_class_bytes(s.topo.to_server(), beta, 500_000);
    let (_, alpha_sent_before) = tc_class(s.topo.to_server(), alpha).unwrap();
    let (_, beta_sent_before) = tc_class(s.topo.to_server(), beta).unwrap();
    let beta_start = Instant::now();
    let edited = Instant::now();
    s.write_claims("30mbit", "20mbit");
    wait_until(
        "the kernel to show alpha's new rate",
        Duration::from_secs(1),
        || tc_class(s.topo.to_server(), alpha).is_some_and(|(rate, _)| rate == "30Mbit"),
    );
    eprintln!("edit reached the kernel in {:?}", edited.elapsed());
    // bpftool agrees: CLASS_CONFIG holds the new rate in bytes/s.
    let config = bpftool_json(&[
        "map",
        "lookup",
        "pinned",
        s.root.layout().map("CLASS_CONFIG").to_str().unwrap(),
        "key",
        &(alpha & 0xff).to_string(),
        &((alpha >> 8) & 0xff).to_string(),
        "0",
        "0",
    ]);
    assert_eq!(
        config["formatted"]["value"]["rate_bytes"], 3_750_000,
        "{config}"
    );

    // The measurement window across the edit.
    std::thread::sleep(Duration::from_secs(3));
    let (beta_rate, beta_sent_after) = tc_class(s.topo.to_server(), beta).unwrap();
    let (_, alpha_sent_after) = tc_class(s.topo.to_server(), alpha).unwrap();
    assert_eq!(beta_rate, "20Mbit", "beta's class is untouched");
    // Counters that keep growing prove the classes were changed in place,
    // never deleted and re-added (which would reset them and their queue).
    assert!(
        alpha_sent_after >= alpha_sent_before,
        "alpha's class was re-created"
    );
    assert!(
        beta_sent_after > beta_sent_before,
        "beta's class was re-created"
    );
    let beta_bps =
        (beta_sent_after - beta_sent_before) as f64 * 8.0 / beta_start.elapsed().as_secs_f64();
    eprintln!("beta across the edit: {:.2} Mbit/s", beta_bps / 1e6);
    assert!(
        (0.95..=1.05).contains(&(beta_bps / 20e6)),
        "beta lost throughput across alpha's edit: {:.2} Mbit/s",
        beta_bps / 1e6
    );
    daemon.guard.assert_running();
}

#[test]
fn invalid_edit_keeps_last_good_state_and_reports_everywhere() {
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let mut daemon = s.start(19465);
    let alpha = class_id_of(&daemon.state_file, "shop/alpha");

    s.write_claims("10mps", "25mbit");
    // The valid part of the edit lands: beta moves to 25 Mbit.
    let beta = class_id_of(&daemon.state_file, "shop/beta");
    wait_until("beta's new rate", Duration::from_secs(2), || {
        tc_class(s.topo.to_server(), beta).is_some_and(|(rate, _)| rate == "25Mbit")
    });
    // Alpha keeps its last good state.
    assert_eq!(tc_class(s.topo.to_server(), alpha).unwrap().0, "10Mbit");

    let (_, metrics) = http_get(&daemon.metrics, "/metrics").expect("metrics");
    assert_eq!(
        metric_value(&metrics, "pisa_agent_claims{validity=\"invalid\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "pisa_agent_claims{validity=\"valid\"}"),
        Some(1.0)
    );

    let out = status(&s, &daemon);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("source: api unix:"),
        "status asks the running daemon: {table}"
    );
    assert!(
        !out.status.success(),
        "status exits non-zero while a claim is invalid"
    );
    assert!(table.contains("INVALID shop/alpha"), "{table}");
    assert!(table.contains("unknown unit `mps`"), "{table}");
    assert!(
        table.contains("the last good version stays in force"),
        "{table}"
    );

    let exited = daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10));
    assert!(exited.success());
    let log = daemon.guard.stderr_text();
    assert!(
        log.contains("invalid claim") && log.contains("unknown unit `mps`"),
        "{log}"
    );

    // Restarted while alpha is still invalid: the last good version the
    // previous run held was written beside the state file, so the new
    // daemon holds it too instead of removing the class.
    let held_file = s.dir.0.join("state.last-good.json");
    let held: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&held_file).expect("the held claims file"))
            .expect("held claims JSON");
    assert_eq!(held["claims"].as_array().map(Vec::len), Some(1), "{held}");
    assert_eq!(held["claims"][0]["claim"]["metadata"]["name"], "alpha");
    assert_eq!(
        held["claims"][0]["claim"]["spec"]["trafficQoS"]["qos_group"]["rate"],
        "10mbit"
    );
    let mut daemon = s.start(19465);
    assert_eq!(
        tc_class(s.topo.to_server(), alpha).map(|(rate, _)| rate),
        Some("10Mbit".to_owned()),
        "alpha's last good version stays in force across the restart"
    );
    let table = String::from_utf8_lossy(&status(&s, &daemon).stdout).into_owned();
    assert!(table.contains("INVALID shop/alpha"), "{table}");
    assert!(
        table.contains("the last good version stays in force"),
        "{table}"
    );
    // Fixed: the new version applies and nothing is held any more.
    s.write_claims("30mbit", "25mbit");
    wait_until("alpha's fixed rate", Duration::from_secs(2), || {
        tc_class(s.topo.to_server(), alpha).is_some_and(|(rate, _)| rate == "30Mbit")
    });
    wait_until(
        "the held claims file removed",
        Duration::from_secs(2),
        || !held_file.exists(),
    );
    let exited = daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10));
    assert!(exited.success());
    assert!(
        daemon
            .guard
            .stderr_text()
            .contains("holding the last good version held before the restart"),
        "the restart says what it holds"
    );
}

/// Kernel ids of the pinned program, `CLASS_CONFIG` map and egress link,
/// as bpftool reports them.
fn pinned_ids(s: &Setup) -> [serde_json::Value; 3] {
    let layout = s.root.layout();
    let id = |kind: &str, path: PathBuf| {
        bpftool_json(&[kind, "show", "pinned", path.to_str().unwrap()])["id"].clone()
    };
    [
        id("prog", layout.program("pisa_tc_egress")),
        id("map", layout.map("CLASS_CONFIG")),
        egress_attachment(&s.root, s.topo.to_server()).expect("attached at egress")["id"].clone(),
    ]
}

#[test]
fn kernel_state_stays_in_force_across_sigterm_and_sigkill() {
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let mut daemon = s.start(19466);
    let ids_before = pinned_ids(&s);

    let _server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5201);
    let _client = iperf3_background(&s.topo.client.ns, s.topo.server_ip(), 5201, 14);
    let alpha = class_id_of(&daemon.state_file, "shop/alpha");
    wait_for_class_bytes(s.topo.to_server(), alpha, 250_000);

    // SIGKILL mid-transfer: nothing runs, the kernel keeps shaping.
    let started = Instant::now();
    let start_bytes = tx_bytes(s.topo.to_server());
    daemon
        .guard
        .signal_and_wait(SIGKILL, Duration::from_secs(5));
    // The measurement window while no daemon runs.
    std::thread::sleep(Duration::from_secs(3));
    let dead_bps =
        (tx_bytes(s.topo.to_server()) - start_bytes) as f64 * 8.0 / started.elapsed().as_secs_f64();
    eprintln!("while the daemon was dead: {:.2} Mbit/s", dead_bps / 1e6);
    assert!(
        dead_bps <= 10e6 * 1.05,
        "unshaped while dead: {:.2} Mbit/s",
        dead_bps / 1e6
    );
    assert!(
        dead_bps >= 10e6 * 0.9,
        "traffic stalled while dead: {:.2} Mbit/s",
        dead_bps / 1e6
    );

    // The restarted daemon adopts the same program, maps and link.
    let mut daemon = s.start(19466);
    assert_eq!(pinned_ids(&s), ids_before, "adopted, not re-created");

    // SIGTERM, then start again: shaped across the gap too.
    let started = Instant::now();
    let start_bytes = tx_bytes(s.topo.to_server());
    let status = daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10));
    assert!(status.success());
    // The measurement window spans a second with no daemon, the restart,
    // and two seconds of the new daemon.
    std::thread::sleep(Duration::from_secs(1));
    let mut daemon = s.start(19466);
    std::thread::sleep(Duration::from_secs(2));
    let gap_bps =
        (tx_bytes(s.topo.to_server()) - start_bytes) as f64 * 8.0 / started.elapsed().as_secs_f64();
    eprintln!("across SIGTERM and restart: {:.2} Mbit/s", gap_bps / 1e6);
    assert!(
        gap_bps <= 10e6 * 1.05,
        "unshaped across restart: {:.2} Mbit/s",
        gap_bps / 1e6
    );
    daemon.guard.assert_running();
}

/// Someone deletes the root qdisc while no daemon runs (`tc qdisc del`):
/// the next start builds the whole tree again, leaves included, and the
/// claims are shaped again without waiting for a change.
#[test]
fn a_tree_deleted_while_no_daemon_ran_is_built_whole_at_start() {
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let mut daemon = s.start(19472);
    let alpha = class_id_of(&daemon.state_file, "shop/alpha");
    let iface = s.topo.to_server();
    assert_eq!(tc_class(iface, alpha).expect("alpha's leaf").0, "10Mbit");
    assert!(daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10))
        .success());
    sh("tc", &["qdisc", "del", "dev", iface, "root"]);
    assert!(tc_class(iface, alpha).is_none(), "the tree is gone");

    let mut daemon = s.start(19472);
    assert_eq!(
        tc_class(iface, alpha).expect("alpha's leaf, built again").0,
        "10Mbit"
    );
    let _server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5201);
    let _client = iperf3_background(&s.topo.client.ns, s.topo.server_ip(), 5201, 8);
    wait_for_class_bytes(iface, alpha, 250_000);
    let (start_bytes, started) = (tx_bytes(iface), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let bps = (tx_bytes(iface) - start_bytes) as f64 * 8.0 / started.elapsed().as_secs_f64();
    eprintln!("after the tree was built again: {:.2} Mbit/s", bps / 1e6);
    assert!(
        (10e6 * 0.8..=10e6 * 1.05).contains(&bps),
        "alpha not held to its 10 Mbit: {:.2} Mbit/s",
        bps / 1e6
    );
    daemon.guard.assert_running();
}

/// A node upgraded from the previous release: the new daemon takes over
/// the pinned maps and links the old one left, swaps its own program into
/// the live links (never a moment unattached), moves the old flat HTB
/// tree's leaves into groups, and traffic stays shaped across the whole
/// change.
#[test]
fn an_upgrade_from_the_previous_release_takes_over_in_place() {
    let previous = previous_daemon_bin();
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let mut old = s.start_binary(&previous, 19469, &[]);
    let old_tags = flow_tags_map(&s);
    let [old_prog, map, link] = pinned_ids(&s);
    let _server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5201);
    let _client = iperf3_background(&s.topo.client.ns, s.topo.server_ip(), 5201, 12);
    let alpha = class_id_of(&old.state_file, "shop/alpha");
    // The previous release keeps every leaf straight under the link class.
    let flat_leaf = format!("5150:{alpha:x}");
    wait_for_handle_bytes(s.topo.to_server(), &flat_leaf, 250_000);

    let started = Instant::now();
    let start_bytes = tx_bytes(s.topo.to_server());
    assert!(old
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10))
        .success());
    std::thread::sleep(Duration::from_secs(1));
    let new = s.start(19469);
    std::thread::sleep(Duration::from_secs(2));
    let gap_bps =
        (tx_bytes(s.topo.to_server()) - start_bytes) as f64 * 8.0 / started.elapsed().as_secs_f64();
    eprintln!("across the upgrade: {:.2} Mbit/s", gap_bps / 1e6);

    let [new_prog, new_map, new_link] = pinned_ids(&s);
    assert_eq!(
        (&new_map, &new_link),
        (&map, &link),
        "maps and link taken over"
    );
    assert_ne!(new_prog, old_prog, "the pinned program is this build's");
    // The previous release's preallocated 65,536-entry tag map is replaced
    // by this build's, sized by --max-flow-tags and allocated on demand.
    let tags = flow_tags_map(&s);
    assert_eq!(
        (&old_tags["max_entries"], &old_tags["flags"]),
        (&serde_json::json!(65536), &serde_json::json!(0)),
        "{old_tags}"
    );
    assert_eq!(tags["max_entries"], 65536, "one entry a connection: {tags}");
    assert_eq!(tags["flags"], 1, "BPF_F_NO_PREALLOC: {tags}");
    assert_ne!(tags["id"], old_tags["id"], "a new map");
    // The same link (TCX) or filter (before TCX) now runs this build's
    // program: swapped in place, never detached.
    let linked =
        egress_attachment(&s.root, s.topo.to_server()).expect("attached")["prog_id"].clone();
    assert_eq!(
        linked, new_prog,
        "the live attachment runs this build's program"
    );
    assert_eq!(
        class_id_of(&new.state_file, "shop/alpha"),
        alpha,
        "class ids kept"
    );
    assert!(
        ingress_attachment(&s.root, s.topo.to_server()).is_some(),
        "the new ingress observer is attached"
    );
    assert!(
        (10e6 * 0.8..=10e6 * 1.05).contains(&gap_bps),
        "not shaped across the upgrade: {:.2} Mbit/s",
        gap_bps / 1e6
    );
    // The tree is this build's: the flat leaves are gone, alpha's leaf
    // lives in its group with its rate and carries the traffic, and the
    // root's filter hands packets to the groups.
    let iface = s.topo.to_server();
    let classes = sh("tc", &["class", "show", "dev", iface]);
    let flat: Vec<&str> = classes
        .lines()
        .filter(|line| {
            line.strip_prefix("class htb 5150:")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|minor| u16::from_str_radix(minor, 16).ok())
                .is_some_and(|minor| minor < 0x4000)
        })
        .collect();
    assert!(flat.is_empty(), "flat leaves left behind: {flat:?}");
    assert_eq!(tc_class(iface, alpha).expect("alpha's leaf").0, "10Mbit");
    let (_, sent) = tc_class(iface, alpha).expect("alpha's leaf");
    wait_for_class_bytes(iface, alpha, sent + 250_000);
    let filters = sh("tc", &["filter", "show", "dev", iface, "parent", "5150:"]);
    assert!(filters.contains("pisa_htb_group"), "{filters}");
}

/// `bpftool map show` of the pinned `FLOW_TAGS`.
fn flow_tags_map(s: &Setup) -> serde_json::Value {
    let path = s.root.layout().map("FLOW_TAGS");
    bpftool_json(&["map", "show", "pinned", path.to_str().unwrap()])
}

/// A restart with another `--max-flow-tags` replaces the pinned tag map
/// (the kernel fixes a map's size at creation): the daemon's own SQL
/// tags are carried over, the program is re-pinned and swapped into the
/// live link so it reads the new map, and a tagged connection is still
/// shaped by its tag's class, not its endpoint's.
#[test]
fn a_new_flow_tag_capacity_replaces_the_map_and_keeps_sql_tags_in_force() {
    use aya::maps::{HashMap, Map, MapData};
    use pisa_daemon::{kernel::Protocol, tags::Flow};
    use pisa_daemon_common::{FlowKey, FlowTag, TAG_ORIGIN_SQL};

    let s = Setup::new();
    s.write_claims("10mbit", "30mbit");
    let mut daemon = s.start_binary(daemon_bin(), 19471, &["--max-flow-tags", "1000"]);
    let before = flow_tags_map(&s);
    assert_eq!(before["max_entries"], 1000, "{before}");
    let [old_prog, _, link] = pinned_ids(&s);
    let beta = class_id_of(&daemon.state_file, "shop/beta");
    assert!(daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10))
        .success());

    // A connection to alpha's endpoint (10 Mbit/s), tagged by SQL identity
    // into beta's class (30 Mbit/s), as the previous release left its
    // tags: one entry per direction.
    let cport = 41234;
    let flow = Flow {
        protocol: Protocol::Tcp,
        src: format!("{}:{cport}", s.topo.client.ns_ip).parse().unwrap(),
        dst: format!("{}:5201", s.topo.server_ip()).parse().unwrap(),
    };
    let tag = FlowTag {
        class_id: beta,
        origin: TAG_ORIGIN_SQL,
        expires_ns: 0,
    };
    {
        let data = MapData::from_pin(s.root.layout().map("FLOW_TAGS")).expect("pinned map");
        let mut tags: HashMap<_, FlowKey, FlowTag> =
            HashMap::try_from(Map::HashMap(data)).expect("hash map");
        tags.insert(flow.key(), tag, 0).expect("tag");
        tags.insert(flow.reversed().key(), tag, 0).expect("tag");
    }

    let mut daemon = s.start_binary(daemon_bin(), 19471, &["--max-flow-tags", "5000"]);
    let after = flow_tags_map(&s);
    assert_eq!(after["max_entries"], 5000, "{after}");
    assert_ne!(after["id"], before["id"], "a new map");
    let [new_prog, _, new_link] = pinned_ids(&s);
    assert_eq!(new_link, link, "the link is kept");
    assert_ne!(
        new_prog, old_prog,
        "the program is re-pinned with the new map"
    );
    let linked = bpftool_json(&["link", "show", "id", &link.to_string()])["prog_id"].clone();
    assert_eq!(
        linked, new_prog,
        "the live link runs the program that reads the new map"
    );
    let prog = bpftool_json(&["prog", "show", "id", &new_prog.to_string()]);
    assert!(
        prog["map_ids"]
            .as_array()
            .is_some_and(|ids| ids.contains(&after["id"])),
        "{prog}"
    );
    let kept = pinned_flow_tags(&s.root);
    // Carried over, and down to this build's one canonical entry.
    assert_eq!(kept.len(), 1, "{kept:?}");
    daemon.guard.assert_running();
    assert!(
        daemon.guard.stderr_text().contains("flow-tag map resized"),
        "the resize is logged"
    );

    // The kernel reads the tag from the new map: the connection gets
    // beta's 30 Mbit/s, not alpha's 10.
    let _server = iperf3_server(&s.topo.server.ns, s.topo.server_ip(), 5201);
    let cport = cport.to_string();
    let goodput = iperf3_goodput_with(
        &s.topo.client.ns,
        s.topo.server_ip(),
        5201,
        4,
        &["--cport", &cport],
    );
    eprintln!(
        "tagged connection after the resize: {:.2} Mbit/s",
        goodput / 1e6
    );
    assert!(
        (30e6 * 0.8..=30e6 * 1.05).contains(&goodput),
        "not shaped by the carried-over tag: {:.2} Mbit/s",
        goodput / 1e6
    );
}

#[test]
fn live_metrics_pass_promtool_check_metrics() {
    require_tool("promtool");
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    let daemon = s.start(19467);
    sh(
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "1", s.topo.server_ip()],
    );
    let (code, body) = http_get(&daemon.metrics, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for name in [
        "pisa_class_rate_bytes_per_second{",
        "pisa_class_bytes_total{",
        "pisa_class_drops_total{",
        "pisa_dataplane_unmatched_packets_total{reason=\"unmatched\"}",
        "pisa_dataplane_failopen_packets_total{reason=\"truncated\"}",
        "pisa_reconcile_runs_total",
        "pisa_reconcile_duration_seconds_bucket",
        "pisa_agent_claims{validity=\"valid\"} 2",
        "pisa_build_info{version=",
        "pisa_interface_attached{interface=",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    assert_eq!(
        metric_value(
            &body,
            "pisa_class_rate_bytes_per_second{namespace=\"shop\",claim=\"alpha\""
        ),
        Some(1_250_000.0)
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    // Without an OpenMetrics Accept header the daemon serves the classic
    // text format, which is what promtool parses.
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = http_get(&daemon.metrics, "/healthz").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn each_interface_gets_its_own_link_rate_shown_in_state_status_and_metrics() {
    let s = Setup::new();
    s.write_claims("10mbit", "20mbit");
    // The server side is named; the client side has no flag, so it takes
    // the speed its device reports (a veth says 10000 Mbit/s).
    let named = format!("{}=50mbit", s.topo.to_server());
    let mut daemon = s.start_binary(
        daemon_bin(),
        19469,
        &["--iface", s.topo.to_client(), "--link-rate", &named],
    );
    class_id_of(&daemon.state_file, "shop/alpha");
    let device_mbit: u64 =
        std::fs::read_to_string(format!("/sys/class/net/{}/speed", s.topo.to_client()))
            .expect("the veth's speed")
            .trim()
            .parse()
            .expect("speed in Mbit/s");
    // Each HTB root's link class holds its own interface's rate.
    let link_class = |iface: &str| {
        sh(
            "tc",
            &["class", "show", "dev", iface, "classid", "5150:ffff"],
        )
    };
    assert!(
        link_class(s.topo.to_server()).contains("rate 50Mbit ceil 50Mbit"),
        "{}",
        link_class(s.topo.to_server())
    );
    let device_rate = format!(
        "rate {}Gbit ceil {}Gbit",
        device_mbit / 1000,
        device_mbit / 1000
    );
    assert!(
        link_class(s.topo.to_client()).contains(&device_rate),
        "{} should hold {device_rate}",
        link_class(s.topo.to_client())
    );

    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon.state_file).unwrap()).unwrap();
    // Two claims of 10 and 20 Mbit/s: 30 Mbit/s promised on each link.
    let guaranteed = 30_000_000 / 8;
    assert_eq!(
        state["link_rates"][s.topo.to_server()],
        serde_json::json!({"rate_bytes": 50_000_000 / 8, "source": "interface",
                           "guaranteed_bytes": guaranteed})
    );
    assert_eq!(
        state["link_rates"][s.topo.to_client()],
        serde_json::json!({"rate_bytes": device_mbit * 1_000_000 / 8, "source": "device",
                           "guaranteed_bytes": guaranteed})
    );

    let (_, metrics) = http_get(&daemon.metrics, "/metrics").expect("metrics");
    let series = |iface: &str, source: &str| {
        format!("pisa_interface_link_rate_bytes{{interface=\"{iface}\",source=\"{source}\"}}")
    };
    assert_eq!(
        metric_value(&metrics, &series(s.topo.to_server(), "interface")),
        Some(6_250_000.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, &series(s.topo.to_client(), "device")),
        Some((device_mbit * 1_000_000 / 8) as f64),
        "{metrics}"
    );
    let promised = |metrics: &str, iface: &str| {
        metric_value(
            metrics,
            &format!("pisa_interface_guaranteed_rate_bytes{{interface=\"{iface}\"}}"),
        )
    };
    assert_eq!(
        promised(&metrics, s.topo.to_server()),
        Some(guaranteed as f64)
    );
    assert_eq!(
        promised(&metrics, s.topo.to_client()),
        Some(guaranteed as f64)
    );

    let out = status(&s, &daemon);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "link {}: 50Mbit (interface), guaranteed 30Mbit (60%)\n",
            s.topo.to_server()
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "link {}: {}Gbit (device), guaranteed 30Mbit (0%)\n",
            s.topo.to_client(),
            device_mbit / 1000
        )),
        "{table}"
    );
    assert!(!table.contains("oversubscribed"), "{table}");

    // 40 + 20 Mbit/s on a 50 Mbit/s link: applied (the claims are valid;
    // the node is too small for them), and said once in the log, in
    // status and in the metric.
    s.write_claims("40mbit", "20mbit");
    wait_until(
        "the new rates in the state file",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&daemon.state_file).is_ok_and(|text| {
                text.contains(&format!("\"guaranteed_bytes\": {}", 60_000_000 / 8))
            })
        },
    );
    let table = String::from_utf8_lossy(&status(&s, &daemon).stdout).into_owned();
    assert!(
        table.contains(&format!(
            "link {}: 50Mbit (interface), guaranteed 60Mbit (120%): oversubscribed",
            s.topo.to_server()
        )),
        "{table}"
    );
    let (_, metrics) = http_get(&daemon.metrics, "/metrics").expect("metrics");
    assert_eq!(
        promised(&metrics, s.topo.to_server()),
        Some((60_000_000 / 8) as f64)
    );
    assert_eq!(
        table.matches("oversubscribed").count(),
        1,
        "only the 50 Mbit/s link: {table}"
    );
    let log = daemon.guard.stderr_text();
    assert_eq!(
        log.matches("oversubscribed: the classes' rates add up")
            .count(),
        1,
        "logged once, on the change: {log}"
    );
    let line = log
        .lines()
        .find(|line| line.contains("oversubscribed: the classes"))
        .unwrap_or_default();
    for field in [
        format!("iface={}", s.topo.to_server()),
        "guaranteed=60Mbit".into(),
        "link=50Mbit".into(),
    ] {
        assert!(line.contains(&field), "{field} in {line}");
    }
    let status = daemon
        .guard
        .signal_and_wait(SIGTERM, Duration::from_secs(10));
    assert!(status.success());

    // A bad value is refused before anything is touched, naming the flag,
    // the value, the reason and the form.
    let (ok, _, stderr) = run_daemon(&[
        "run",
        "--iface",
        s.topo.to_server(),
        "--bpffs",
        s.root.as_str(),
        "--link-rate",
        "eth0=fast",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--link-rate `eth0=fast`: `fast` is not a rate")
            && stderr.contains("IFACE=RATE"),
        "{stderr}"
    );
}
