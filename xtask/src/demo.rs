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
//! Everything is torn down at the end, also on failure.

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
    result
}

fn demo(daemon: &str) -> Result<()> {
    println!("\n== starting pisa-daemon on the host-side veths");
    let mut agent = Guard(
        Command::new(daemon)
            .args([
                "run",
                "--iface",
                HOST_TO_DB,
                "--iface",
                HOST_TO_CLIENT,
                "--bpffs",
                BPFFS,
            ])
            .spawn()
            .context("starting pisa-daemon")?,
    );
    for _ in 0..100 {
        if std::path::Path::new(&format!("{BPFFS}/links/{HOST_TO_CLIENT}-egress")).exists() {
            break;
        }
        if let Some(status) = agent.0.try_wait()? {
            bail!("pisa-daemon exited: {status}");
        }
        sleep(Duration::from_millis(100));
    }

    println!("\n== iperf3: client pod -> database node, 3 s of TCP");
    let _server = Guard(
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
                "5201",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 server")?,
    );
    sleep(Duration::from_millis(500));
    cmd(
        "ip",
        &[
            "netns",
            "exec",
            CLIENT_NS,
            "iperf3",
            "-c",
            "10.66.2.2",
            "-p",
            "5201",
            "-t",
            "3",
        ],
    )?;

    println!("\n== bpftool prog show name pisa_tc_egress");
    print!(
        "{}",
        output("bpftool", &["prog", "show", "name", "pisa_tc_egress"])?
    );
    println!("\n== bpftool map dump pinned {BPFFS}/maps/IFACE_STATS");
    print!(
        "{}",
        output(
            "bpftool",
            &[
                "map",
                "dump",
                "pinned",
                &format!("{BPFFS}/maps/IFACE_STATS")
            ]
        )?
    );
    println!("\n== kernel interface counters for comparison (ip -s link)");
    for iface in [HOST_TO_DB, HOST_TO_CLIENT] {
        print!("{}", output("ip", &["-s", "link", "show", iface])?);
    }

    println!("\n== SIGTERM: the daemon exits, its pinned state stays in force");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait()?;
    println!("pisa-daemon exited: {status}");
    print!("{}", output("ls", &["-R", BPFFS])?);
    println!("\n== pisa-daemon cleanup --bpffs {BPFFS}");
    cmd(daemon, &["cleanup", "--bpffs", BPFFS])?;
    println!("\ndemo: done (topology removed)");
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
