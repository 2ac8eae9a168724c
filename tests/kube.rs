//! `pisa-daemon run --kube` end to end: the daemon talks HTTP to a stand-in
//! API server (`tests/python/fake_apiserver.py`; there is no cluster on
//! these machines), follows the Pods of its node by attaching to their
//! real host-side veths, shapes real iperf3 traffic between two "Pods" per
//! a QoSClaim, writes its QoSNodeReport with server-side apply (retrying
//! applies the server fails), takes the status Lease and writes the claim's
//! aggregate status, leaves out a Pod veth it cannot shape without holding
//! up the others, lets go of a Pod's veth when the Pod goes, and on restart
//! releases the attachment of a veth that vanished while no daemon ran.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::*;
use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const PORT: u16 = 5201;
const CLASS_RATE_BPS: f64 = 10e6;

/// The stand-in API server and a kubeconfig pointing at it.
struct FakeApi {
    url: String,
    kubeconfig: PathBuf,
    _server: ChildGuard,
}

impl FakeApi {
    fn start(dir: &Path) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/fake_apiserver.py");
        let mut child = Command::new(test_python())
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the fake API server");
        let stdout = child.stdout.take().expect("stdout piped");
        let server = ChildGuard::new(child, "fake_apiserver.py".into());
        let mut port = String::new();
        BufReader::new(stdout)
            .read_line(&mut port)
            .expect("reading the fake API server's port");
        let port: u16 = port.trim().parse().unwrap_or_else(|e| {
            panic!(
                "the fake API server printed no port ({e}): {}",
                server.stderr_text()
            )
        });
        let url = format!("http://127.0.0.1:{port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters: [{{name: test, cluster: {{server: \"{url}\"}}}}]\n\
                 users: [{{name: pisa, user: {{token: test-token}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: pisa}}}}]\n"
            ),
        )
        .expect("writing the kubeconfig");
        Self {
            url,
            kubeconfig,
            _server: server,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        require_tool("curl");
        let url = format!("{}{path}", self.url);
        let mut args = vec!["-sS", "--fail-with-body", "-X", method, &url];
        let text;
        if let Some(body) = body {
            text = body.to_string();
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &text,
            ]);
        }
        serde_json::from_str(&sh("curl", &args)).expect("JSON from the fake API server")
    }

    fn put(&self, plural: &str, name: &str, object: Value) {
        self.call(
            "PUT",
            &format!("/control/{plural}/shop/{name}"),
            Some(&object),
        );
    }

    fn delete(&self, plural: &str, name: &str) {
        self.call("DELETE", &format!("/control/{plural}/shop/{name}"), None);
    }

    fn patches(&self) -> Vec<Value> {
        self.call("GET", "/control/patches", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn claim(server_ip: &str) -> Value {
    json!({
        "metadata": {"labels": {"team": "catalogue"}},
        "spec": {"trafficQoS": {
            "name": "catalogue",
            "qos_group": {"rate": "10mbit", "ceil": "10mbit"},
            "endpoints": [{"host": server_ip, "port": PORT}],
        }},
    })
}

fn pod(node: &str, ip: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "catalogue"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "mysql:8.0"}],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.49.2",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
        },
    })
}

/// Whether our classifier is attached at TCX egress of `iface`, asked of
/// the kernel (BPF_PROG_QUERY). bpftool 7.1 cannot show TCX per interface.
fn attached(iface: &str) -> bool {
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress)
        .unwrap_or_else(|e| panic!("querying TCX egress of {iface}: {e}"));
    programs
        .iter()
        .any(|p| p.name_as_str() == Some("pisa_tc_egress"))
}

fn root_qdisc_kind(iface: &str) -> String {
    let out = sh("tc", &["-j", "qdisc", "show", "dev", iface, "root"]);
    let qdiscs: Value = serde_json::from_str(&out).expect("tc JSON");
    qdiscs[0]["kind"].as_str().unwrap_or_default().to_owned()
}

fn start_daemon(api: &FakeApi, root: &BpffsRoot, dir: &Path) -> ChildGuard {
    let state = dir.join("state.json");
    spawn_daemon_with_env(
        &[
            "run",
            "--kube",
            "--node-name",
            NODE,
            "--bpffs",
            root.as_str(),
            "--state-file",
            state.to_str().expect("utf-8"),
        ],
        &[
            ("KUBECONFIG", &api.kubeconfig),
            ("NO_COLOR", Path::new("1")),
        ],
    )
}

/// Waits up to 30 s for `check`, failing at once if the daemon exits (its
/// log is printed when the test fails).
fn wait_for(daemon: &mut ChildGuard, what: &str, mut check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(30), || {
        daemon.assert_running();
        check()
    });
}

/// Waits up to 30 s for the claim `catalogue`'s aggregate status to pass
/// `check`; on a timeout the failure shows the status, the reports and the
/// daemon's last requests, which is what tells a missed report from a
/// missed aggregation.
fn wait_for_aggregate(
    daemon: &mut ChildGuard,
    api: &FakeApi,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        daemon.assert_running();
        if check(&claim_status(api)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = api.call("GET", "/control/requests", None);
    let recent: Vec<&Value> = requests
        .as_array()
        .map(|all| all.iter().rev().take(25).rev().collect())
        .unwrap_or_default();
    panic!(
        "timed out after 30s waiting for {what}\nclaim status: {:#}\nreports: {:#}\nlast requests: {:#?}",
        claim_status(api),
        api.call("GET", "/control/objects/qosnodereports", None),
        recent
    );
}

#[test]
fn the_daemon_follows_its_nodes_pods_and_applies_claims_from_the_api_server() {
    require_root();
    require_tool("iperf3");
    let net = Routed::new();
    // A Pod of another node whose address happens to be routable here: it
    // must not be attached.
    let elsewhere = VethToNs::new();
    // A Pod of this node whose veth already has someone else's root qdisc:
    // it cannot be shaped, and must not hold up the others.
    let foreign = VethToNs::new();
    sh(
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &foreign.host,
            "root",
            "tbf",
            "rate",
            "1gbit",
            "burst",
            "64kb",
            "latency",
            "50ms",
        ],
    );
    let root = BpffsRoot::new();
    let dir = TempDir::new("pkube");
    let api = FakeApi::start(&dir.0);
    let server_ip = net.server_ip().to_owned();
    api.put("qosclaims", "catalogue", claim(&server_ip));
    api.put("pods", "app-0", pod(NODE, &net.client.ns_ip));
    api.put("pods", "db-0", pod(NODE, &server_ip));
    api.put("pods", "db-1", pod("node-b", &elsewhere.ns_ip));
    api.put("pods", "odd-0", pod(NODE, &foreign.ns_ip));

    api.put(
        "nodes",
        NODE,
        json!({"metadata": {"uid": "uid-node-a"}, "spec": {}}),
    );
    // The first two report applies fail, as on an overloaded server: the
    // daemon must try again by itself, with nothing else changing.
    api.call("PUT", "/control/fail-reports", Some(&json!({"count": 2})));

    let mut daemon = start_daemon(&api, &root, &dir.0);
    wait_for(&mut daemon, "both Pod veths attached, with HTB", || {
        attached(net.to_server())
            && attached(net.to_client())
            && root_qdisc_kind(net.to_server()) == "htb"
    });
    assert!(
        !attached(&elsewhere.host),
        "another node's Pod was attached"
    );
    assert!(!root.layout().egress_link(&elsewhere.host).exists());
    // The Pod with the foreign qdisc is left out, rolled back, reported.
    assert!(
        !attached(&foreign.host),
        "half-attached despite the foreign qdisc"
    );
    assert!(!root.layout().egress_link(&foreign.host).exists());
    assert_eq!(
        root_qdisc_kind(&foreign.host),
        "tbf",
        "someone else's qdisc touched"
    );
    wait_for_log(
        &mut daemon,
        "cannot attach to a Pod interface",
        Duration::from_secs(10),
    );

    // The Pod watch asked for this node's Pods only, listing and watching.
    let requests = api.call("GET", "/control/requests", None);
    let pod_queries: Vec<&str> = requests
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["path"] == "/api/v1/pods")
        .filter_map(|r| r["query"].as_str())
        .collect();
    assert!(
        pod_queries.iter().any(|q| !q.contains("watch=true"))
            && pod_queries.iter().any(|q| q.contains("watch=true")),
        "{pod_queries:?}"
    );
    for query in &pod_queries {
        assert!(
            query.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{query}"
        );
    }

    // This node's report, by server-side apply, field by field.
    let is_applied =
        |p: &Value| p["code"] == 200 && p["body"]["spec"]["claims"][0]["phase"] == "Applied";
    wait_for(&mut daemon, "an Applied report", || {
        api.patches().iter().any(is_applied)
    });
    let patches = api.patches();
    let failed = patches.iter().filter(|p| p["code"] == 500).count();
    assert_eq!(failed, 2, "{patches:?}");
    wait_for_log(&mut daemon, "status not written", Duration::from_secs(10));
    let applied = patches.iter().find(|p| is_applied(p)).expect("applied");
    assert_eq!(
        applied["path"],
        "/apis/core.database-mesh.io/v1alpha1/namespaces/pisa-system/qosnodereports/node-a"
    );
    let query = applied["query"].as_str().expect("query");
    assert!(
        query.contains("fieldManager=pisa-daemon") && query.contains("force=true"),
        "{query}"
    );
    assert_eq!(applied["contentType"], "application/apply-patch+yaml");
    let report = &applied["body"];
    assert_eq!(report["kind"], "QoSNodeReport");
    assert_eq!(
        report["metadata"]["ownerReferences"][0]["uid"],
        "uid-node-a"
    );
    assert_eq!(report["spec"]["node"], NODE);
    assert_eq!(report["spec"]["counts"], json!({"claims": 1, "failed": 0}));
    assert_eq!(
        report["spec"]["claims"],
        json!([{"claim": "shop/catalogue", "generation": 1, "phase": "Applied"}])
    );
    // The stored report is valid against the generated CRD's schema.
    let stored = api.call("GET", "/control/objects/qosnodereports", None);
    let report_file = dir.0.join("report.json");
    std::fs::write(&report_file, stored[0].to_string()).expect("writing the report");
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crd/qosnodereports.yaml");
    let checked = Command::new(test_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/check_manifests.py"))
        .args(["crd".as_ref(), crd.as_os_str(), report_file.as_os_str()])
        .output()
        .expect("running check_manifests.py");
    let verdicts: Value = serde_json::from_slice(&checked.stdout).expect("JSON verdicts");
    assert_eq!(
        verdicts
            .as_object()
            .map(|v| v.values().cloned().collect::<Vec<_>>()),
        Some(vec![json!("ok")]),
        "{verdicts}"
    );

    // The daemon took the status Lease and wrote the claim's aggregate.
    wait_for(&mut daemon, "the claim's aggregate status", || {
        claim_status(&api)["nodesApplied"] == 1
    });
    let status = claim_status(&api);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["nodesReporting"], 1);
    assert_eq!(status["nodesFailed"], 0);
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"]),
        (&json!("Ready"), &json!("True"))
    );
    assert_eq!(ready["message"], "1 of 1 nodes enforce generation 1");
    let leases = api.call("GET", "/control/objects/leases", None);
    assert_eq!(leases[0]["metadata"]["name"], "pisa-status");
    assert_eq!(leases[0]["metadata"]["namespace"], "pisa-system");
    assert_eq!(leases[0]["spec"]["holderIdentity"], NODE);
    assert_eq!(leases[0]["spec"]["leaseDurationSeconds"], 15);
    let merges: Vec<Value> = api
        .patches()
        .into_iter()
        .filter(|p| p["contentType"] == "application/merge-patch+json")
        .collect();
    assert!(
        merges.iter().all(|p| p["path"]
            == "/apis/core.database-mesh.io/v1alpha1/namespaces/shop/qosclaims/catalogue/status"),
        "{merges:?}"
    );
    // Once the foreign qdisc is gone, the resync attaches that Pod too.
    sh("tc", &["qdisc", "del", "dev", &foreign.host, "root"]);
    wait_for(&mut daemon, "the left-out Pod attached on resync", || {
        attached(&foreign.host)
    });

    // The server's echo of the status (a MODIFIED claim) must not start a
    // write loop: nothing changed, so neither the node nor the aggregator
    // writes again, through a Lease renewal (every 5 s) too.
    let written = api.patches().len();
    assert_holds_for(
        "no report or status write after the server's echo",
        Duration::from_millis(6000),
        || api.patches().len() == written,
    );

    // Traffic from one Pod to the other is shaped on the database Pod's veth.
    let _iperf = iperf3_server(&net.server.ns, &server_ip, PORT);
    let shaped = iperf3_goodput(&net.client.ns, &server_ip, PORT, 3);
    eprintln!("shaped Pod-to-Pod goodput: {:.2} Mbit/s", shaped / 1e6);
    assert!(
        shaped < CLASS_RATE_BPS * 1.2 && shaped > CLASS_RATE_BPS * 0.5,
        "goodput {:.2} Mbit/s in a 10 Mbit/s class",
        shaped / 1e6
    );

    // The database Pod goes: its veth is let go of, HTB root and pin too.
    api.delete("pods", "db-0");
    // Detaching unpins the links, then removes the HTB root: wait for both.
    wait_for(
        &mut daemon,
        "the deleted Pod's veth detached and its HTB root removed",
        || !attached(net.to_server()) && root_qdisc_kind(net.to_server()) != "htb",
    );
    assert!(!root.layout().egress_link(net.to_server()).exists());
    assert!(!root.layout().ingress_link(net.to_server()).exists());
    assert!(attached(net.to_client()), "the other Pod's veth stays");
    let unshaped = iperf3_goodput(&net.client.ns, &server_ip, PORT, 2);
    eprintln!("goodput after the Pod left: {:.2} Mbit/s", unshaped / 1e6);
    assert!(
        unshaped > CLASS_RATE_BPS * 5.0,
        "goodput {:.2} Mbit/s after the Pod left; it should no longer be shaped",
        unshaped / 1e6
    );

    // The daemon stops; the client Pod goes away with its veth while no
    // daemon runs. The next daemon releases what was pinned for it.
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    let client_link = root.layout().egress_link(net.to_client());
    assert!(
        client_link.exists(),
        "kernel state stays while no daemon runs"
    );
    api.delete("pods", "app-0");
    sh("ip", &["link", "del", net.to_client()]);
    let report_writes = |api: &FakeApi| {
        api.patches()
            .iter()
            .filter(|p| {
                p["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/qosnodereports/"))
            })
            .count()
    };
    let reports_before_restart = report_writes(&api);
    let mut daemon = start_daemon(&api, &root, &dir.0);
    wait_for(&mut daemon, "the vanished veth's pin released", || {
        !client_link.exists()
    });
    // The pin goes before the line is written: wait for the line.
    wait_for_log(
        &mut daemon,
        "released the attachment of a vanished interface",
        Duration::from_secs(10),
    );

    // A bad spec (generation 2: rate above ceil) is reported as rejected
    // by the restarted daemon, which renews the Lease it held; the
    // aggregate counts the node as failed and names it. The daemon has
    // read generation 1 first (its first report is out), so this is an
    // edit it rejects while the last good version stays in force.
    wait_for(&mut daemon, "the restarted daemon's first report", || {
        report_writes(&api) > reports_before_restart
    });
    let mut bad = claim(&server_ip);
    bad["spec"]["trafficQoS"]["qos_group"]["rate"] = json!("20mbit");
    api.put("qosclaims", "catalogue", bad);
    wait_for_aggregate(
        &mut daemon,
        &api,
        "generation 2 rejected on the node",
        |status| status["observedGeneration"] == 2 && status["nodesFailed"] == 1,
    );
    let status = claim_status(&api);
    assert_eq!(status["nodesApplied"], 0);
    assert_eq!(status["conditions"][0]["reason"], "NodesFailed");
    let degraded = &status["conditions"][1];
    assert_eq!(
        (&degraded["type"], &degraded["status"]),
        (&json!("Degraded"), &json!("True"))
    );
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rejected on node-a: ")),
        "{degraded}"
    );
    let kept = pisa_daemon::kernel::pinned::classes(&root.layout()).expect("pinned classes");
    assert!(
        kept.values().any(|class| class.rate_bytes == 1_250_000),
        "generation 1's 10 Mbit class stays in force: {kept:?}"
    );
    let reports = api.call("GET", "/control/objects/qosnodereports", None);
    let entry = &reports[0]["spec"]["claims"][0];
    assert_eq!(
        (&entry["phase"], &entry["generation"]),
        (&json!("Invalid"), &json!(2))
    );
    assert!(
        entry["message"]
            .as_str()
            .is_some_and(|m| m.contains("ceil")),
        "{entry}"
    );
    // Fixed (generation 3): applied again, Ready again.
    let mut fixed = claim(&server_ip);
    fixed["spec"]["trafficQoS"]["qos_group"]["rate"] = json!("20mbit");
    fixed["spec"]["trafficQoS"]["qos_group"]["ceil"] = json!("40mbit");
    api.put("qosclaims", "catalogue", fixed);
    wait_for_aggregate(
        &mut daemon,
        &api,
        "generation 3 applied on the node",
        |status| status["observedGeneration"] == 3 && status["nodesApplied"] == 1,
    );
    assert_eq!(claim_status(&api)["conditions"][0]["status"], "True");
    let leases = api.call("GET", "/control/objects/leases", None);
    assert_eq!(leases[0]["spec"]["holderIdentity"], NODE);
    assert_eq!(leases[0]["spec"]["leaseTransitions"], 0);

    // Everything the daemon asked of the API server, the shipped RBAC
    // allows (its reports and Lease in pisa-system, by the Role).
    assert_rbac_allows_every_request(&api);

    // The claim goes: its class goes from the kernel.
    api.delete("qosclaims", "catalogue");
    wait_for(&mut daemon, "the class removed", || {
        pisa_daemon::kernel::pinned::classes(&root.layout())
            .map(|classes| classes.is_empty())
            .unwrap_or(false)
    });
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
}

/// The stored claim `catalogue`'s status.
fn claim_status(api: &FakeApi) -> Value {
    api.call("GET", "/control/objects/qosclaims", None)
        .as_array()
        .and_then(|claims| claims.iter().find(|c| c["metadata"]["name"] == "catalogue"))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

fn labelled_pod(node: &str, ip: &str, app: &str) -> Value {
    let mut object = pod(node, ip);
    object["metadata"]["labels"] = json!({"app": app});
    object
}

fn client_prefixes(dir: &Path, claim: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
        return 0;
    };
    let state: Value = serde_json::from_str(&text).unwrap_or_default();
    state["claims"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["claim"] == claim)
        .and_then(|c| c["client_prefixes"].as_u64())
        .unwrap_or(0)
}

/// Two client Pods on one endpoint told apart by a podSelector: the
/// `reports` Pod's traffic is held to its claim's 10 Mbit/s, the `orders`
/// Pod's is not; relabelling the orders Pod moves it under the claim.
#[test]
fn a_pod_selector_shapes_the_selected_client_pods_and_follows_their_labels() {
    require_root();
    require_tool("iperf3");
    let net = Routed::new();
    let reports = VethToNs::new();
    reports
        .ns
        .exec(&["ip", "route", "add", "default", "via", &reports.host_ip]);
    let root = BpffsRoot::new();
    let dir = TempDir::new("pkpod");
    let api = FakeApi::start(&dir.0);
    let server_ip = net.server_ip().to_owned();
    let mut selective = claim(&server_ip);
    selective["spec"]["trafficQoS"]["clients"] =
        json!([{"podSelector": {"matchLabels": {"app": "reports"}}}]);
    api.put("qosclaims", "catalogue", selective);
    api.put(
        "namespaces",
        "shop",
        json!({"metadata": {"labels": {"team": "shop"}}}),
    );
    api.put("pods", "db-0", pod(NODE, &server_ip));
    api.put(
        "pods",
        "orders-0",
        labelled_pod(NODE, &net.client.ns_ip, "orders"),
    );
    api.put(
        "pods",
        "reports-0",
        labelled_pod(NODE, &reports.ns_ip, "reports"),
    );
    let mut daemon = start_daemon(&api, &root, &dir.0);
    wait_for(&mut daemon, "the reports Pod's address in force", || {
        attached(net.to_server()) && client_prefixes(&dir.0, "shop/catalogue") == 1
    });
    let _server = iperf3_server(&net.server.ns, &server_ip, PORT);
    let shaped = iperf3_goodput(&reports.ns, &server_ip, PORT, 4);
    let free = iperf3_goodput(&net.client.ns, &server_ip, PORT, 4);
    eprintln!(
        "reports Pod {:.1} Mbit/s, orders Pod {:.1} Mbit/s",
        shaped / 1e6,
        free / 1e6
    );
    assert!(
        (CLASS_RATE_BPS * 0.8..=CLASS_RATE_BPS * 1.05).contains(&shaped),
        "the selected Pod is not held to its claim: {:.1} Mbit/s",
        shaped / 1e6
    );
    assert!(
        free > CLASS_RATE_BPS * 3.0,
        "the unselected Pod was shaped: {:.1} Mbit/s",
        free / 1e6
    );

    // Relabelled, the orders Pod falls under the claim too.
    let relabelled = std::time::Instant::now();
    api.put(
        "pods",
        "orders-0",
        labelled_pod(NODE, &net.client.ns_ip, "reports"),
    );
    wait_for(&mut daemon, "the relabelled Pod's address in force", || {
        client_prefixes(&dir.0, "shop/catalogue") == 2
    });
    eprintln!(
        "relabel to prefix in force: {} ms (state file)",
        relabelled.elapsed().as_millis()
    );
    let now_shaped = iperf3_goodput(&net.client.ns, &server_ip, PORT, 4);
    assert!(
        now_shaped <= CLASS_RATE_BPS * 1.05,
        "the relabelled Pod is not shaped: {:.1} Mbit/s",
        now_shaped / 1e6
    );
    // A namespaceSelector that matches no namespace selects no Pod.
    let mut elsewhere = claim(&server_ip);
    elsewhere["spec"]["trafficQoS"]["clients"] = json!([{
        "podSelector": {"matchLabels": {"app": "reports"}},
        "namespaceSelector": {"matchLabels": {"team": "bi"}},
    }]);
    api.put("qosclaims", "catalogue", elsewhere);
    wait_for(&mut daemon, "no Pod selected in other namespaces", || {
        let text = std::fs::read_to_string(dir.0.join("state.json")).unwrap_or_default();
        text.contains("0 client prefix(es)")
    });
    // The cluster-wide Pod and Namespace watches are allowed too.
    assert_rbac_allows_every_request(&api);
}

/// One API request as RBAC sees it.
#[derive(Debug)]
struct Access {
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    verb: &'static str,
}

/// Reads a request the stand-in recorded (`/api/v1/...` or
/// `/apis/GROUP/VERSION/...`) as RBAC attributes.
fn access(method: &str, path: &str, query: &str) -> Access {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(name.to_string())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some(name.to_string())),
        _ => panic!("unexpected API path: {path}"),
    };
    let verb = match (method, name.is_some()) {
        ("GET", _) if query.contains("watch=true") => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("PATCH", _) => "patch",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        (other, _) => panic!("unexpected method {other}"),
    };
    Access {
        group: group.to_owned(),
        resource,
        namespace,
        name,
        verb,
    }
}

/// Whether a rule of `manifests/rbac.yaml` allows `access`: a ClusterRole's
/// everywhere, a Role's in its namespace only.
fn rbac_allows(rbac: &[Value], access: &Access) -> bool {
    let has = |list: &Value, item: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == item || v == "*"))
    };
    rbac.iter()
        .filter(|doc| match doc["kind"].as_str() {
            Some("ClusterRole") => true,
            Some("Role") => access.namespace.as_deref() == doc["metadata"]["namespace"].as_str(),
            _ => false,
        })
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            has(&rule["apiGroups"], &access.group)
                && has(&rule["resources"], &access.resource)
                && has(&rule["verbs"], access.verb)
                && (rule["resourceNames"].is_null()
                    || access
                        .name
                        .as_deref()
                        .is_some_and(|n| has(&rule["resourceNames"], n)))
        })
}

/// Every request the daemon made must be allowed by the shipped RBAC (so
/// the least-privilege manifests are also enough), and the test fails on
/// the first one that is not.
fn assert_rbac_allows_every_request(api: &FakeApi) {
    use serde::Deserialize;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rbac.yaml"),
    )
    .expect("manifests/rbac.yaml");
    let rbac: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("an RBAC object"))
        .collect();
    let requests = api.call("GET", "/control/requests", None);
    let requests = requests.as_array().expect("requests");
    assert!(!requests.is_empty());
    for request in requests {
        let (method, path, query) = (
            request["method"].as_str().unwrap_or_default(),
            request["path"].as_str().unwrap_or_default(),
            request["query"].as_str().unwrap_or_default(),
        );
        let access = access(method, path, query);
        assert!(
            rbac_allows(&rbac, &access),
            "manifests/rbac.yaml does not allow {method} {path}?{query}: {access:?}"
        );
    }
}
