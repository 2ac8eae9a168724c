//! `cargo xtask demo`: a self-contained, honest demonstration on a
//! throwaway topology. Two namespaces play a client pod and a database
//! node, routed through the host as a node routes pod traffic:
//!
//! ```text
//!  [pisademo-client] 10.66.1.2 --veth-- 10.66.1.1 (host) 10.66.2.1 --veth-- 10.66.2.2 [pisademo-db]
//! ```
//!
//! The daemon attaches at egress of both host-side veths, iperf3 pushes
//! real TCP traffic, and bpftool reads the daemon's pinned counters back.
//! Everything is torn down at the end, also on failure. Then the database
//! case: PostgreSQL OLTP latency under a bulk export, without and with the
//! daemon (the database benchmark's short mode).

use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    setup,
    shell::{cmd, output, workspace},
};

const CLIENT_NS: &str = "pisademo-client";
const DB_NS: &str = "pisademo-db";
const HOST_TO_CLIENT: &str = "pisademo-c";
const HOST_TO_DB: &str = "pisademo-d";
const BPFFS: &str = "/sys/fs/bpf/pisa-demo";

pub fn run() -> Result<()> {
    setup::run_setup_steps()?;
    cmd("cargo", &["build", "--package", "pisa-daemon"])?;
    let daemon = workspace().join("target/debug/pisa-daemon");
    let daemon = daemon
        .to_str()
        .context("non-UTF-8 workspace path")?
        .to_owned();

    let topology = Topology::create()?;
    let result = demo(&daemon);
    drop(topology);
    let _ = Command::new(&daemon)
        .args(["cleanup", "--bpffs", BPFFS])
        .status();
    result?;
    database_demo()
}

/// The point of the project in a couple of minutes: PostgreSQL behind a
/// 100 Mbit link, OLTP latency idle, under a bulk export with no QoS, and
/// under the same export with the daemon. It is the database benchmark's
/// short mode (the same code as `cargo xtask bench db`), built with the
/// debug profile the rest of the demo already built.
fn database_demo() -> Result<()> {
    println!("\n== PostgreSQL: OLTP latency under a bulk export, without and with pisa-daemon");
    println!("   (pgbench -S at 200 tps; three COPY streams; a 100 Mbit link; 8 s each)");
    cmd(
        "cargo",
        &[
            "bench",
            "--package",
            "pisa-daemon",
            "--bench",
            "db",
            "--profile",
            "dev",
            "--",
            "--demo",
        ],
    )?;
    println!("demo: done (databases and topology removed)");
    Ok(())
}

const CLAIMS: &str = "/tmp/pisa-demo-claims.yaml";
const STATE: &str = "/tmp/pisa-demo-state.json";

fn claims(catalogue_rate: &str) -> String {
    format!(
        "# Pisanix's own form (binds to a VirtualDatabase; no endpoints: pending here)\n\
         apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: legacy, namespace: demo}}\nspec:\n  trafficQoS:\n    name: legacy\n    \
         qos_group: {{rate: 10mbit, ceil: 20mbit}}\n---\n\
         # Extended form: requests to the database on port 5201\n\
         apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: catalogue, namespace: demo}}\nspec:\n  trafficQoS:\n    name: catalogue\n    \
         qos_group: {{rate: {catalogue_rate}}}\n    priority: burstable\n    burst: 64kb\n    \
         direction: to\n    endpoints:\n      - {{host: 10.66.2.2, port: 5201, protocol: TCP}}\n"
    )
}

fn iperf3(port: &str) -> Result<()> {
    let out = output(
        "ip",
        &[
            "netns",
            "exec",
            CLIENT_NS,
            "iperf3",
            "-c",
            "10.66.2.2",
            "-p",
            port,
            "-t",
            "3",
            "-J",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no goodput")?;
    println!(
        "   goodput {:.1} Mbit/s (wire rate is about 1514/1448 of that)",
        bps / 1e6
    );
    Ok(())
}

fn demo(daemon: &str) -> Result<()> {
    std::fs::write(CLAIMS, claims("10mbit")).context("writing the demo claims")?;
    println!("\n== claims ({CLAIMS})\n{}", claims("10mbit"));
    cmd(daemon, &["validate", CLAIMS])?;

    println!("\n== starting pisa-daemon on the host-side veths");
    let mut agent = Guard(
        Command::new(daemon)
            .args([
                "run",
                "--config",
                CLAIMS,
                "--iface",
                HOST_TO_DB,
                "--iface",
                HOST_TO_CLIENT,
            ])
            .args([
                "--bpffs",
                BPFFS,
                "--metrics-addr",
                "127.0.0.1:9464",
                "--state-file",
                STATE,
            ])
            .spawn()
            .context("starting pisa-daemon")?,
    );
    for _ in 0..100 {
        if std::path::Path::new(STATE).exists() {
            break;
        }
        if let Some(status) = agent.0.try_wait()? {
            bail!("pisa-daemon exited: {status}");
        }
        sleep(Duration::from_millis(100));
    }
    let _servers: Vec<Guard> = ["5201", "5202"]
        .iter()
        .map(|port| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    DB_NS,
                    "iperf3",
                    "-s",
                    "-B",
                    "10.66.2.2",
                    "-p",
                    port,
                ])
                .stdout(Stdio::null())
                .spawn()
                .map(Guard)
                .context("starting iperf3 server")
        })
        .collect::<Result<_>>()?;
    sleep(Duration::from_millis(500));

    println!("\n== iperf3 to the database, port 5201 (claim demo/catalogue, 10mbit)");
    iperf3("5201")?;
    println!("\n== iperf3 to the database, port 5202 (no claim: unshaped)");
    iperf3("5202")?;

    println!("\n== editing the claim to 40mbit; the daemon reloads within a second");
    std::fs::write(CLAIMS, claims("40mbit"))?;
    sleep(Duration::from_millis(800));
    iperf3("5201")?;

    println!("\n== pisa-daemon status");
    cmd(
        daemon,
        &[
            "status",
            "--bpffs",
            BPFFS,
            "--state-file",
            STATE,
            "--sample-ms",
            "200",
        ],
    )
    .ok();
    println!("\n== tc -s class show dev {HOST_TO_DB}");
    print!(
        "{}",
        output("tc", &["-s", "class", "show", "dev", HOST_TO_DB])?
    );
    println!("\n== bpftool map dump pinned {BPFFS}/maps/CLASS_STATS (non-zero entries)");
    let dump = output(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            &format!("{BPFFS}/maps/CLASS_STATS"),
        ],
    )?;
    let entries: serde_json::Value = serde_json::from_str(&dump)?;
    for entry in entries.as_array().into_iter().flatten() {
        let busy = entry["formatted"]["values"].as_array().is_some_and(|v| {
            v.iter()
                .any(|c| c["value"]["packets"].as_u64().unwrap_or(0) > 0)
        });
        if busy {
            println!("{}", serde_json::to_string(&entry["formatted"])?);
        }
    }
    println!("\n== a scrape of /metrics (class series)");
    for line in output("curl", &["-s", "http://127.0.0.1:9464/metrics"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("pisa_class_") || l.starts_with("pisa_agent_claims"))
    {
        println!("{line}");
    }

    println!("\n== SIGTERM: the daemon exits, its pinned state stays in force");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait()?;
    println!("pisa-daemon exited: {status}");
    iperf3("5201")?;
    println!("\n== pisa-daemon cleanup --bpffs {BPFFS}");
    cmd(daemon, &["cleanup", "--bpffs", BPFFS])?;
    println!("\ndemo: traffic shaping done (topology removed)");
    Ok(())
}

/// Kills and reaps a child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Topology;

impl Topology {
    fn create() -> Result<Self> {
        // Leftovers of an interrupted demo would make `ip` fail below.
        Self::destroy();
        let topology = Self;
        for (ns, host, peer, net) in [
            (CLIENT_NS, HOST_TO_CLIENT, "eth0", "10.66.1"),
            (DB_NS, HOST_TO_DB, "eth0", "10.66.2"),
        ] {
            cmd("ip", &["netns", "add", ns])?;
            cmd(
                "ip",
                &[
                    "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns,
                ],
            )?;
            cmd("ip", &["addr", "add", &format!("{net}.1/24"), "dev", host])?;
            cmd("ip", &["link", "set", host, "up"])?;
            let in_ns = |args: &[&str]| {
                let mut full = vec!["netns", "exec", ns];
                full.extend_from_slice(args);
                cmd("ip", &full)
            };
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            in_ns(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", peer])?;
            in_ns(&["ip", "link", "set", peer, "up"])?;
            in_ns(&["ip", "route", "add", "default", "via", &format!("{net}.1")])?;
        }
        cmd("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(topology)
    }

    fn destroy() {
        for args in [
            ["link", "del", HOST_TO_CLIENT],
            ["link", "del", HOST_TO_DB],
            ["netns", "del", CLIENT_NS],
            ["netns", "del", DB_NS],
        ] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::destroy();
    }
}
