//! Shared fixtures for the root integration tests: uniquely named network
//! namespaces and veths, bpffs roots, and child processes, each removed by
//! an RAII guard even when the test panics.
//!
//! Tests use `ip`, `tc`, `bpftool` and `iperf3` to check the daemon from the
//! outside, as an operator would. A missing tool or missing root is a test
//! failure, never a skip.
#![allow(dead_code)] // each test binary uses a different subset

pub mod packet;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use pisa_daemon::kernel::PinLayout;

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, netns); run `cargo xtask test` as root"
    );
}

/// Fails loudly when an external tool is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).exists());
    assert!(found, "`{tool}` is not installed; run `cargo xtask setup`");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (IFNAMSIZ - 1).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long");
    name
}

/// A /24 subnet octet unique to this process and call, so parallel test
/// binaries never share addresses.
pub fn unique_octet() -> u8 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (((std::process::id() + n * 7) % 200) + 20) as u8
}

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting `{program}`: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (for teardown).
pub fn sh_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("pn");
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Spawns a long-running command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {}: {e}", self.name));
        ChildGuard::new(child, format!("{args:?} in netns {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair with one end in the host namespace and the other in `ns`,
/// addressed as `10.<octet>.0.1/24` (host) and `10.<octet>.0.2/24` (ns).
/// IPv6 is off on both ends so that nothing but the test's own traffic
/// (and the ARP it causes) crosses the link.
pub struct VethToNs {
    pub host: String,
    pub peer: String,
    pub host_ip: String,
    pub ns_ip: String,
    pub subnet: String,
    pub ns: Netns,
}

impl VethToNs {
    pub fn new() -> Self {
        let ns = Netns::new();
        let host = unique("ph");
        let peer = unique("pp");
        let octet = unique_octet();
        let host_ip = format!("10.{octet}.0.1");
        let ns_ip = format!("10.{octet}.0.2");
        let subnet = format!("10.{octet}.0.0/24");
        sh(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns.name,
            ],
        );
        let pair = Self {
            host,
            peer,
            host_ip,
            ns_ip,
            subnet,
            ns,
        };
        sh(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", pair.host),
            ],
        );
        pair.ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", pair.peer),
        ]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", pair.host_ip),
                "dev",
                &pair.host,
            ],
        );
        sh("ip", &["link", "set", &pair.host, "up"]);
        pair.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", pair.ns_ip),
            "dev",
            &pair.peer,
        ]);
        pair.ns.exec(&["ip", "link", "set", &pair.peer, "up"]);
        pair
    }

    pub fn host_ifindex(&self) -> u32 {
        read_u64(&format!("/sys/class/net/{}/ifindex", self.host)) as u32
    }

    /// The kernel's own transmit counters of the host end.
    pub fn host_tx(&self) -> (u64, u64) {
        (
            read_u64(&format!(
                "/sys/class/net/{}/statistics/tx_packets",
                self.host
            )),
            read_u64(&format!("/sys/class/net/{}/statistics/tx_bytes", self.host)),
        )
    }
}

impl Drop for VethToNs {
    fn drop(&mut self) {
        // Deleting one end deletes both; the namespace guard follows.
        sh_quiet("ip", &["link", "del", &self.host]);
    }
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// A unique bpffs root, cleaned up (detached and unpinned) on drop.
pub struct BpffsRoot {
    pub path: PathBuf,
}

impl BpffsRoot {
    pub fn new() -> Self {
        let path = PathBuf::from("/sys/fs/bpf").join(unique("pisa-t"));
        assert!(
            !path.exists(),
            "{} exists already; a previous run leaked it",
            path.display()
        );
        Self { path }
    }

    pub fn layout(&self) -> PinLayout {
        PinLayout::new(&self.path)
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        if let Err(e) = pisa_daemon::kernel::pinned::cleanup(&self.layout()) {
            eprintln!("cleanup of {} failed: {e}", self.path.display());
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop. Its stderr (if
/// piped) is drained by a thread, so a chatty child never blocks on a full
/// pipe, and the text is kept for assertions.
pub struct ChildGuard {
    pub child: Option<Child>,
    what: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChildGuard {
    pub fn new(mut child: Child, what: String) -> Self {
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut text) = sink.lock() {
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Self {
            child: Some(child),
            what,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Sends `signal` and waits up to `timeout` for exit; returns the status.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("child already reaped");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for child") {
                // Give the drain thread a moment to read the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {timeout:?} of signal {signal}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the child has exited; includes its stderr.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("child already reaped");
        if let Some(status) = child.try_wait().expect("waiting for child") {
            std::thread::sleep(Duration::from_millis(50));
            panic!(
                "{} exited early ({status}): {}",
                self.what,
                self.stderr_text()
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A failing test shows what its children said, e.g. the daemon's log
        // when a wait timed out.
        if std::thread::panicking() {
            eprintln!("--- stderr of {} ---\n{}", self.what, self.stderr_text());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A daemon killed with SIGKILL leaves its socket file behind.
        if self.what.starts_with("pisa-daemon") {
            let _ = std::fs::remove_file(api_socket());
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on TCP `port` inside `ns`. Uses `ss`, not
/// a probe connection: iperf3 treats any connection as a test.
pub fn wait_for_listener(ns: &Netns, port: u16) {
    let filter = format!("sport = :{port}");
    wait_until(
        &format!("a listener on port {port}"),
        Duration::from_secs(10),
        || !ns.exec(&["ss", "-Hltn", &filter]).trim().is_empty(),
    );
}

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

/// Path of the daemon binary built for these tests.
pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pisa-daemon")
}

/// The Python of the tests' third-party clients: a venv `cargo xtask setup`
/// builds with Debian's python3, so that any user can run it.
pub fn test_python() -> PathBuf {
    let python = std::env::var_os("PISA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pisa-test-venv/bin/python3"));
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it builds the test venv)",
        python.display()
    );
    python
}

/// The gRPC socket of daemons this test process starts: one per process
/// (tests run one at a time), never the system-wide `/run/pisa/pisa.sock`.
/// `ChildGuard` removes it when a daemon it guards goes away.
pub fn api_socket() -> PathBuf {
    std::env::temp_dir().join(format!("pisa-api-{}.sock", std::process::id()))
}

/// Starts `pisa-daemon` with `args`, stderr captured.
pub fn spawn_daemon(args: &[&str]) -> ChildGuard {
    spawn_daemon_with_env(args, &[])
}

/// `spawn_daemon` with extra environment variables.
pub fn spawn_daemon_with_env(args: &[&str], env: &[(&str, &Path)]) -> ChildGuard {
    let child = Command::new(daemon_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("PISA_API_SOCKET", api_socket())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pisa-daemon");
    ChildGuard::new(child, format!("pisa-daemon {}", args.join(" ")))
}

/// Runs `pisa-daemon` to completion: (success, stdout, stderr).
pub fn run_daemon(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(daemon_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("PISA_API_SOCKET", api_socket())
        .output()
        .expect("running pisa-daemon");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bpftool -j …` parsed as JSON.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    require_tool("bpftool");
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = sh("bpftool", &full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out}"))
}

/// Ids of loaded programs with this name, from `bpftool prog show`.
pub fn bpftool_prog_ids(name: &str) -> Vec<u64> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("bpftool prog show: array")
        .iter()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Two namespaces routed through the host, the way a node routes pod
/// traffic: `client` (10.N.1.2) -- host (10.N.1.1 | 10.N.2.1) -- `server`
/// (10.N.2.2). Shaping happens at egress of the host-side veths.
/// GSO is capped to one segment on the senders so that every skb is one
/// wire frame and interface byte counters are wire bytes.
pub struct Routed {
    pub client: VethToNs,
    pub server: VethToNs,
    previous_forwarding: String,
}

impl Routed {
    pub fn new() -> Self {
        let previous_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .expect("reading ip_forward")
            .trim()
            .to_owned();
        sh("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let client = VethToNs::new();
        let server = VethToNs::new();
        for (side, peer_gw) in [(&client, &client.host_ip), (&server, &server.host_ip)] {
            side.ns
                .exec(&["ip", "route", "add", "default", "via", peer_gw]);
            side.ns
                .exec(&["ip", "link", "set", "dev", &side.peer, "gso_max_segs", "1"]);
        }
        sh(
            "ip",
            &["link", "set", "dev", &client.host, "gso_max_segs", "1"],
        );
        sh(
            "ip",
            &["link", "set", "dev", &server.host, "gso_max_segs", "1"],
        );
        Self {
            client,
            server,
            previous_forwarding,
        }
    }

    /// The host-side interface facing the server: requests leave here.
    pub fn to_server(&self) -> &str {
        &self.server.host
    }

    /// The host-side interface facing the client: responses leave here.
    pub fn to_client(&self) -> &str {
        &self.client.host
    }

    pub fn server_ip(&self) -> &str {
        &self.server.ns_ip
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        sh_quiet(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv4.ip_forward={}", self.previous_forwarding),
            ],
        );
    }
}

/// Transmit byte counter of an interface in the host namespace.
pub fn tx_bytes(iface: &str) -> u64 {
    read_u64(&format!("/sys/class/net/{iface}/statistics/tx_bytes"))
}

/// An iperf3 client running in the background inside `ns`.
pub fn iperf3_background(ns: &Netns, server: &str, port: u16, seconds: u32) -> ChildGuard {
    let port_s = port.to_string();
    let secs = seconds.to_string();
    let child = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "iperf3", "-c", server, "-p", &port_s,
        ])
        .args(["-t", &secs, "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning iperf3 client");
    ChildGuard::new(child, format!("iperf3 -c {server}:{port}"))
}

/// Bytes the root qdisc of `iface` has sent: for HTB and TBF this is
/// `qdisc_pkt_len`, which counts every GSO segment with its headers, i.e.
/// wire bytes.
pub fn qdisc_sent_bytes(iface: &str) -> u64 {
    let out = sh("tc", &["-s", "-j", "qdisc", "show", "dev", iface, "root"]);
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    qdiscs[0]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no root qdisc bytes: {out}"))
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

/// Wire rate (bits/s) through the root qdisc of `iface` over `window`.
pub fn qdisc_wire_bps(iface: &str, window: Duration) -> f64 {
    let start_bytes = qdisc_sent_bytes(iface);
    let start = Instant::now();
    std::thread::sleep(window);
    let bytes = qdisc_sent_bytes(iface) - start_bytes;
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
