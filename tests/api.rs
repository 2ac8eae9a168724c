//! The gRPC API from the outside: a Python client whose stubs grpcio-tools
//! generates from the committed proto tags real iperf3 connections in the
//! routed netns topology, and the kernel shapes them; untagging and TTL
//! expiry unshape them. Every error code, the socket's permissions,
//! reflection and the restart semantics (tags gone, new generation) are
//! checked the way a proxy author would meet them.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::*;
use serde_json::{json, Value};

const SIGTERM: i32 = 15;
const CLASS_RATE_BPS: f64 = 10e6;

/// A claim with a class but no endpoints: only tags send traffic to it.
const TAGGED_CLAIM: &str = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
    metadata: {name: reporting, namespace: shop}\nspec:\n  trafficQoS:\n    \
    name: reporting\n    qos_group: {rate: 10mbit}\n    burst: 64kb\n";

struct Fixture {
    topo: Routed,
    root: BpffsRoot,
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let dir = TempDir::new("papi");
        std::fs::write(dir.0.join("claims.yaml"), TAGGED_CLAIM).expect("claims");
        Self {
            topo: Routed::new(),
            root: BpffsRoot::new(),
            dir,
        }
    }

    fn start(&self, extra: &[&str]) -> ChildGuard {
        let config = self.dir.0.join("claims.yaml");
        let state = self.dir.0.join("state.json");
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            self.topo.to_server(),
            "--bpffs",
            self.root.as_str(),
            "--state-file",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut daemon = spawn_daemon(&args);
        wait_until("the API to answer", Duration::from_secs(20), || {
            daemon.assert_running();
            api_socket().exists() && client(&["call", "ListClasses"])["classes"].is_array()
        });
        daemon
    }

    fn client_ip(&self) -> &str {
        &self.topo.client.ns_ip
    }

    fn flow(&self, client_port: u16) -> Value {
        json!({
            "src_ip": self.client_ip(),
            "src_port": client_port,
            "dst_ip": self.topo.server_ip(),
            "dst_port": 5201,
            "protocol": "PROTOCOL_TCP",
        })
    }

    fn tag(&self, client_port: u16, ttl_seconds: u32) -> Value {
        let request = json!({
            "flow": self.flow(client_port),
            "claim": {"namespace": "shop", "name": "reporting"},
            "ttl_seconds": ttl_seconds,
        });
        client(&["call", "TagFlow", &request.to_string()])
    }

    fn untag(&self, client_port: u16) -> Value {
        let request = json!({"flow": self.flow(client_port)});
        client(&["call", "UntagFlow", &request.to_string()])
    }

    /// iperf3 goodput from a fixed client port, so the 5-tuple is known.
    fn goodput_from(&self, client_port: u16, seconds: u32) -> f64 {
        let cport = client_port.to_string();
        iperf3_goodput_with(
            &self.topo.client.ns,
            self.topo.server_ip(),
            5201,
            seconds,
            &["--cport", &cport],
        )
    }
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/pisa_client.py")
}

/// Runs the Python client as root against this process's daemon socket.
fn client(args: &[&str]) -> Value {
    client_as(&[], args)
}

/// Runs the Python client, prefixed by `wrapper` (e.g. setpriv).
fn client_as(wrapper: &[&str], args: &[&str]) -> Value {
    let socket = api_socket();
    let script = client_script();
    let python = test_python();
    let mut command: Vec<&str> = wrapper.to_vec();
    command.extend([
        python.to_str().unwrap(),
        script.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    command.extend_from_slice(args);
    let out = Command::new(command[0])
        .args(&command[1..])
        .output()
        .expect("running the Python gRPC client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pisa_client.py {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("client JSON: {e}: {stdout}"))
}

fn mbit(bps: f64) -> String {
    format!("{:.2} Mbit/s", bps / 1e6)
}

#[test]
fn tagged_connection_is_shaped_untagged_and_expired_ones_are_not() {
    let f = Fixture::new();
    let _server = iperf3_server(&f.topo.server.ns, f.topo.server_ip(), 5201);
    let mut daemon = f.start(&[]);

    // Tagged: held to the class's 10 Mbit (goodput is ~95% of wire rate).
    let tagged = f.tag(40001, 300);
    let class_id = tagged["class_id"].as_u64().expect("class_id");
    let tags = pinned_flow_tags(&f.root);
    assert_eq!(
        tags.len(),
        1,
        "one entry for the connection (its canonical direction): {tags:?}"
    );
    assert!(tags
        .iter()
        .all(|t| t["formatted"]["value"]["class_id"].as_u64() == Some(class_id)));
    let shaped = f.goodput_from(40001, 4);
    eprintln!("tagged: {}", mbit(shaped));
    assert!(
        (0.85 * CLASS_RATE_BPS..=1.03 * CLASS_RATE_BPS).contains(&shaped),
        "a tagged connection got {}, expected the class's 10 Mbit",
        mbit(shaped)
    );
    let stats = client(&["call", "GetStats"]);
    let class = stats["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class_id"].as_u64() == Some(class_id))
        .expect("the class in GetStats")
        .clone();
    assert!(
        class["bytes"].as_str().unwrap().parse::<u64>().unwrap() > 4_000_000,
        "the class counted the tagged flow: {class}"
    );
    assert_eq!(stats["active_tags"], 1);
    let untag = f.untag(40001);
    assert_eq!(untag["removed"], true, "{untag}");

    // Tagged, then untagged (with the CLI, as a second client): unshaped.
    let (ok, out, err) = run_daemon(&[
        "tag",
        "--src",
        &format!("{}:40002", f.client_ip()),
        "--dst",
        &format!("{}:5201", f.topo.server_ip()),
        "--claim",
        "shop/reporting",
        "--ttl",
        "300",
    ]);
    assert!(ok, "pisa-daemon tag: {out}{err}");
    assert!(out.contains(&format!("with class {class_id}")), "{out}");
    let untag = f.untag(40002);
    assert_eq!(untag["removed"], true, "{untag}");
    let free = f.goodput_from(40002, 3);
    eprintln!("untagged: {}", mbit(free));
    assert!(
        free > 5.0 * CLASS_RATE_BPS,
        "an untagged connection got only {}",
        mbit(free)
    );

    // A tag whose TTL lapsed: the sweep removes it and the flow is free.
    f.tag(40003, 1);
    wait_until(
        "the sweep to remove the expired tag",
        Duration::from_secs(5),
        || pinned_flow_tags(&f.root).is_empty(),
    );
    assert_eq!(client(&["call", "GetStats"])["active_tags"], 0);
    let expired = f.goodput_from(40003, 3);
    eprintln!("expired: {}", mbit(expired));
    assert!(
        expired > 5.0 * CLASS_RATE_BPS,
        "a connection whose tag expired got only {}",
        mbit(expired)
    );
    assert!(daemon
        .signal_and_wait(SIGTERM, Duration::from_secs(10))
        .success());
    assert!(!api_socket().exists(), "the daemon removes its socket");
}

#[test]
fn each_bad_request_gets_its_error_code_naming_the_field() {
    let f = Fixture::new();
    let _daemon = f.start(&["--max-flow-tags", "2"]);
    let tag = |flow: Value, target: Value, ttl: u32| {
        let mut request = json!({"flow": flow, "ttl_seconds": ttl});
        for (k, v) in target.as_object().unwrap() {
            request[k] = v.clone();
        }
        client(&["call", "TagFlow", &request.to_string()])
    };
    let claim = json!({"claim": {"namespace": "shop", "name": "reporting"}});
    let mut bad_ip = f.flow(40001);
    bad_ip["dst_ip"] = json!("10.0.0.256");
    let mut bad_port = f.flow(40001);
    bad_port["src_port"] = json!(70000);
    let mut mixed = f.flow(40001);
    mixed["dst_ip"] = json!("fd00::1");
    let mut no_proto = f.flow(40001);
    no_proto["protocol"] = json!("PROTOCOL_UNSPECIFIED");
    let cases = [
        (
            tag(bad_ip, claim.clone(), 60),
            "INVALID_ARGUMENT",
            "flow.dst_ip `10.0.0.256`",
        ),
        (
            tag(bad_port, claim.clone(), 60),
            "INVALID_ARGUMENT",
            "flow.src_port `70000`",
        ),
        (
            tag(mixed, claim.clone(), 60),
            "INVALID_ARGUMENT",
            "both ends must be the same family",
        ),
        (
            tag(no_proto, claim.clone(), 60),
            "INVALID_ARGUMENT",
            "flow.protocol `0`",
        ),
        (
            tag(f.flow(40001), claim.clone(), 0),
            "INVALID_ARGUMENT",
            "ttl_seconds `0`",
        ),
        (
            tag(f.flow(40001), json!({}), 60),
            "INVALID_ARGUMENT",
            "target",
        ),
        (
            tag(
                f.flow(40001),
                json!({"claim": {"namespace": "shop", "name": "nope"}}),
                60,
            ),
            "NOT_FOUND",
            "claim `shop/nope`",
        ),
        (
            tag(f.flow(40001), json!({"class_id": 9999}), 60),
            "NOT_FOUND",
            "class_id `9999`",
        ),
        (
            client(&["watch", "5", "1"]),
            "INVALID_ARGUMENT",
            "interval_ms `5`: must be 100-60000 ms",
        ),
    ];
    for (response, code, needle) in cases {
        assert_eq!(response["code"], code, "{response}");
        let details = response["details"].as_str().unwrap();
        assert!(details.contains(needle), "{details:?} lacks {needle:?}");
    }

    // The table holds two connections; the third evicts the one whose tag
    // lapses soonest (40001, tagged first with the same TTL), and says so.
    for port in [40001, 40002] {
        let tagged = f.tag(port, 60);
        assert!(tagged["class_id"].is_u64(), "{tagged}");
        assert_eq!(tagged["evicted"], 0, "{tagged}");
    }
    let third = f.tag(40003, 60);
    assert_eq!(third["evicted"], 1, "{third}");
    assert_eq!(pinned_flow_tags(&f.root).len(), 2, "one entry a connection");
    let stats = client(&["call", "GetStats"]);
    assert_eq!(stats["tag_capacity"], 2, "{stats}");
    // proto3 JSON writes 64-bit integers as strings.
    assert_eq!(stats["tags_evicted"], "1", "{stats}");
    assert_eq!(f.untag(40001)["removed"], false);
    assert_eq!(f.untag(40002)["removed"], true);

    // TagFlows: a bad entry is named by its index, and nothing of the
    // batch is tagged; a good batch is.
    let entry = |port: u16| {
        json!({
            "flow": f.flow(port),
            "claim": {"namespace": "shop", "name": "reporting"},
            "ttl_seconds": 60,
        })
    };
    let mut bad_entry = entry(40005);
    bad_entry["flow"]["src_port"] = json!(70000);
    let refused = client(&[
        "call",
        "TagFlows",
        &json!({"tags": [entry(40004), bad_entry]}).to_string(),
    ]);
    assert_eq!(refused["code"], "INVALID_ARGUMENT", "{refused}");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .starts_with("tags[1].flow.src_port `70000`"),
        "{refused}"
    );
    assert_eq!(pinned_flow_tags(&f.root).len(), 1, "only 40003 is tagged");
    let batch = client(&[
        "call",
        "TagFlows",
        &json!({"tags": [entry(40004), entry(40005)]}).to_string(),
    ]);
    assert_eq!(batch["tags"].as_array().map(Vec::len), Some(2), "{batch}");
    assert_eq!(batch["evicted"], 1, "{batch}");
    assert_eq!(pinned_flow_tags(&f.root).len(), 2);
    let too_big = client(&[
        "call",
        "TagFlows",
        &json!({"tags": [entry(40006), entry(40007), entry(40008)]}).to_string(),
    ]);
    assert_eq!(too_big["code"], "RESOURCE_EXHAUSTED", "{too_big}");

    // Validate returns every error with its field.
    let bad = TAGGED_CLAIM
        .replace("10mbit", "10mps")
        .replace("64kb", "64zb");
    let validated = client(&["call", "Validate", &json!({"yaml": bad}).to_string()]);
    assert_eq!(validated["valid"], false);
    let fields: Vec<&str> = validated["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"spec.trafficQoS.qos_group.rate"),
        "{validated}"
    );
    assert!(fields.contains(&"spec.trafficQoS.burst"), "{validated}");

    // Reflection is on.
    let services = client(&["services"]);
    let names: Vec<&str> = services["services"]
        .as_array()
        .unwrap_or_else(|| panic!("{services}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(names.contains(&"pisa.v1.PisaDaemon"), "{names:?}");
}

#[test]
fn socket_is_0600_and_refuses_other_users() {
    require_tool("setpriv");
    let f = Fixture::new();
    let _daemon = f.start(&[]);
    let mode = std::fs::metadata(api_socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let denied = client_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["call", "ListClasses"],
    );
    assert_eq!(denied["code"], "UNAVAILABLE", "{denied}");
    let details = denied["details"].as_str().unwrap().to_lowercase();
    assert!(details.contains("permission denied"), "{details}");
}

#[test]
fn restart_drops_tags_and_changes_the_generation() {
    let f = Fixture::new();
    let mut first = f.start(&[]);
    let tagged = f.tag(40001, 300);
    let before = tagged["generation"]
        .as_str()
        .expect("generation")
        .to_owned();
    assert_eq!(pinned_flow_tags(&f.root).len(), 1);
    assert!(first
        .signal_and_wait(SIGTERM, Duration::from_secs(10))
        .success());
    // While no daemon runs, the pinned tag stays in force.
    assert_eq!(pinned_flow_tags(&f.root).len(), 1);

    let _second = f.start(&[]);
    let stats = client(&["call", "GetStats"]);
    let after = stats["generation"].as_str().expect("generation");
    assert_ne!(before, after, "a restart must change the generation");
    assert_eq!(stats["active_tags"], 0);
    assert!(
        pinned_flow_tags(&f.root).is_empty(),
        "tags are not persisted"
    );
    let untag = f.untag(40001);
    assert_eq!(untag["removed"], false, "{untag}");
}
