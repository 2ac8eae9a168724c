//! Network namespaces and veths, the way a node connects its Pods.

use std::process::{Command, Stdio};

use super::{
    host::{read_u64, sh, sh_quiet, unique, unique_octet},
    process::ChildGuard,
};

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
        self.spawn_as(&format!("{args:?}"), args)
    }

    /// `spawn`, with `what` naming the child in messages (for long
    /// command lines).
    pub fn spawn_as(&self, what: &str, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what} in {}: {e}", self.name));
        ChildGuard::new(child, format!("{what} in netns {}", self.name))
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
    pub ns: Netns,
}

impl VethToNs {
    pub fn new() -> Self {
        Self::with_queues(1)
    }

    /// A pair whose ends have `queues` transmit and receive queues each (a
    /// multiqueue device, whose default root qdisc is `mq`).
    pub fn with_queues(queues: u32) -> Self {
        let ns = Netns::new();
        let host = unique("ph");
        let peer = unique("pp");
        let octet = unique_octet();
        let host_ip = format!("10.{octet}.0.1");
        let ns_ip = format!("10.{octet}.0.2");
        let queues = queues.to_string();
        sh(
            "ip",
            &[
                "link",
                "add",
                &host,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "netns",
                &ns.name,
            ],
        );
        let pair = Self {
            host,
            peer,
            host_ip,
            ns_ip,
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
        Self::with_queues(1)
    }

    /// `new` with multiqueue veths (`queues` transmit queues a side).
    pub fn with_queues(queues: u32) -> Self {
        let previous_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .expect("reading ip_forward")
            .trim()
            .to_owned();
        sh("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let client = VethToNs::with_queues(queues);
        let server = VethToNs::with_queues(queues);
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
