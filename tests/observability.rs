//! The operators' view, checked with the real tools: a real Prometheus
//! scrapes a daemon that shapes real iperf3 traffic, and every PromQL
//! expression of the shipped dashboard and rules returns data; the
//! achieved-rate panel agrees with the configured rate; promtool accepts
//! the shipped files; bpftool shows every map with BTF field names and the
//! values the claims configured.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::*;
use serde_json::Value;

const NODE: &str = "obs-node";
/// 10mbit in bytes per second.
const ALPHA_RATE: f64 = 1_250_000.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a command to completion; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str], cwd: &Path) -> (bool, String) {
    require_tool(program);
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_shipped_config_rules_and_rule_tests() {
    let dir = repo().join("manifests/prometheus");
    for args in [
        vec!["check", "config", "scrape-config-static.yaml"],
        vec!["check", "rules", "rules.yaml"],
        vec!["test", "rules", "rules.test.yaml"],
    ] {
        let (ok, out) = run("promtool", &args, &dir);
        assert!(ok, "promtool {args:?}:\n{out}");
        assert!(out.contains("SUCCESS"), "promtool {args:?}:\n{out}");
    }
    // Debian's Prometheus is built without Kubernetes discovery, so promtool
    // cannot load the Kubernetes variant; check its shape instead: it must
    // attach the `node` label every dashboard query and rule groups by.
    let text = std::fs::read_to_string(dir.join("scrape-config.yaml")).expect("scrape-config");
    let config: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let job = &config["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    let relabels = job["relabel_configs"]
        .as_sequence()
        .expect("relabel_configs");
    assert!(
        relabels.iter().any(|r| {
            r["source_labels"][0] == "__meta_kubernetes_pod_node_name"
                && r["target_label"] == "node"
        }),
        "the Kubernetes scrape config must set `node` from the pod's node"
    );
}

/// PromQL of the dashboard and rules, with where each came from.
struct Expression {
    origin: String,
    promql: String,
}

/// Grafana's variables as a dashboard user would set them.
fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    // Longest built-in first: `$__rate_interval` shares a prefix with `$__range`.
    let mut out = expr
        .replace("$__rate_interval", "15s")
        .replace("${__rate_interval}", "15s")
        .replace("$__interval", "5s")
        .replace("$__range", "5m");
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// An alert's measure: its expression without the final `<op> <number>`
/// (rules.yaml keeps every alert in that shape).
fn alert_measure(expr: &str) -> Option<String> {
    let trimmed = expr.trim_end();
    let (rest, number) = trimmed.rsplit_once(char::is_whitespace)?;
    number.parse::<f64>().ok()?;
    let rest = rest.trim_end();
    let rest = rest.strip_suffix("bool").map(str::trim_end).unwrap_or(rest);
    [">=", "<=", "==", "!=", ">", "<"]
        .iter()
        .find_map(|op| rest.strip_suffix(op))
        .map(|m| m.trim_end().to_string())
}

fn expressions(vars: &[(&str, &str)]) -> Vec<Expression> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("manifests/dashboards/pisa-daemon.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .expect("variable query");
        // label_values(selector, label) -> the label's values must exist.
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unsupported variable query {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        out.push(Expression {
            origin: format!("variable {}", variable["name"]),
            promql: substitute(&format!("count by ({}) ({selector})", label.trim()), vars),
        });
    }
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} has no description",
            panel["title"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(Expression {
                origin: format!("panel {} {}", panel["title"], target["refId"]),
                promql: substitute(target["expr"].as_str().expect("expr"), vars),
            });
        }
    }
    let rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("manifests/prometheus/rules.yaml")).expect("rules"),
    )
    .expect("rules YAML");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            if let Some(record) = rule["record"].as_str() {
                out.push(Expression {
                    origin: format!("record {record}"),
                    promql: expr.to_string(),
                });
            } else {
                let alert = rule["alert"].as_str().expect("alert name");
                out.push(Expression {
                    origin: format!("alert {alert} (measure)"),
                    promql: alert_measure(expr).unwrap_or_else(|| {
                        panic!("alert {alert} is not `<measure> <op> <number>`: {expr}")
                    }),
                });
            }
        }
    }
    out
}

/// An instant query through Prometheus's HTTP API; None when it does not
/// answer (yet).
fn try_query(prometheus: &str, promql: &str) -> Option<Vec<Value>> {
    let out = Command::new("curl")
        .args(["-sfG", &format!("http://{prometheus}/api/v1/query")])
        .arg("--data-urlencode")
        .arg(format!("query={promql}"))
        .output()
        .expect("curl");
    let body: Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_eq!(body["status"], "success", "{promql}: {body}");
    Some(
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

fn query(prometheus: &str, promql: &str) -> Vec<Value> {
    try_query(prometheus, promql).unwrap_or_else(|| panic!("Prometheus did not answer {promql}"))
}

fn claims(server: &str) -> String {
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: alpha, namespace: shop}}\nspec:\n  trafficQoS:\n    name: alpha\n    \
         qos_group: {{rate: 10mbit, ceil: 10mbit}}\n    direction: to\n    burst: 64kb\n    \
         endpoints: [{{host: {server}, port: 5201}}]\n"
    )
}

/// The daemon shaping alpha's traffic to the server, with `extra` args.
fn start_daemon(topo: &Routed, root: &BpffsRoot, dir: &TempDir, extra: &[&str]) -> ChildGuard {
    let config = dir.0.join("claims.yaml");
    std::fs::write(&config, claims(topo.server_ip())).expect("claims");
    let state = dir.0.join("state.json");
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--iface",
        topo.to_server(),
        "--bpffs",
        root.as_str(),
        "--state-file",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spawn_daemon(&args)
}

#[test]
fn real_prometheus_evaluates_every_panel_and_rule_on_shaped_traffic() {
    require_root();
    require_tool("prometheus");
    require_tool("curl");
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let dir = TempDir::new("pobs");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut daemon = start_daemon(&topo, &root, &dir, &["--metrics-addr", &metrics]);
    let _server = iperf3_server(&topo.server.ns, topo.server_ip(), 5201);

    // Prometheus with the shipped rules, scraping every second.
    let prometheus = format!("127.0.0.1:{}", free_port());
    let rules = repo().join("manifests/prometheus/rules.yaml");
    let prometheus_config = dir.0.join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: pisa-daemon\n    static_configs:\n      \
             - targets: ['{metrics}']\n        labels: {{node: {NODE}}}\n",
            rules = rules.display()
        ),
    )
    .expect("prometheus.yml");
    let data = dir.0.join("tsdb");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", prometheus_config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting prometheus");
    let mut prom = ChildGuard::new(child, "prometheus".into());
    wait_until("Prometheus to be ready", Duration::from_secs(30), || {
        prom.assert_running();
        daemon.assert_running();
        try_query(&prometheus, "pisa_build_info").is_some_and(|r| !r.is_empty())
    });

    // Real shaped traffic for long enough to fill the 15 s rate windows.
    let _client = iperf3_background(&topo.client.ns, topo.server_ip(), 5201, 40);
    wait_until(
        "Prometheus to hold 20 s of shaped traffic",
        Duration::from_secs(60),
        || {
            let samples = query(
                &prometheus,
                "count_over_time(pisa_class_bytes_total{claim=\"alpha\"}[1m])",
            );
            samples
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= 20.0)
        },
    );

    let all = [("node", ".*"), ("namespace", ".*"), ("claim", ".*")];
    let picked = [("node", NODE), ("namespace", "shop"), ("claim", "alpha")];
    let mut empty = Vec::new();
    let mut evaluated = 0;
    for vars in [&all[..], &picked[..]] {
        for expression in expressions(vars) {
            evaluated += 1;
            if query(&prometheus, &expression.promql).is_empty() {
                empty.push(format!("{}: {}", expression.origin, expression.promql));
            }
        }
    }
    eprintln!("{evaluated} expressions evaluated");
    assert!(evaluated > 40, "only {evaluated} expressions found");
    assert!(empty.is_empty(), "returned no data:\n{}", empty.join("\n"));

    // The achieved-rate panel agrees with the configured rate.
    let panel = expressions(&picked)
        .into_iter()
        .find(|e| {
            e.origin
                .starts_with("panel \"Achieved vs configured rate per class\" \"A\"")
        })
        .expect("the achieved-rate panel");
    let achieved: f64 = query(&prometheus, &panel.promql)[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("achieved rate");
    eprintln!(
        "achieved {achieved:.0} B/s against {ALPHA_RATE} B/s (ratio {:.4})",
        achieved / ALPHA_RATE
    );
    assert!(
        (achieved / ALPHA_RATE - 1.0).abs() <= 0.03,
        "achieved {achieved:.0} B/s, configured {ALPHA_RATE} B/s"
    );
}

#[test]
fn bpftool_shows_every_map_with_btf_field_names_and_the_configured_values() {
    require_root();
    let topo = Routed::new();
    let root = BpffsRoot::new();
    let dir = TempDir::new("pbtf");
    let _daemon = start_daemon(&topo, &root, &dir, &[]);
    let layout = root.layout();
    let class_config = layout.map("CLASS_CONFIG");
    wait_until(
        "the class to be configured",
        Duration::from_secs(20),
        || {
            class_config.exists()
                && bpftool_json(&["map", "dump", "pinned", class_config.to_str().unwrap()])
                    .as_array()
                    .is_some_and(|entries| {
                        entries
                            .iter()
                            .any(|e| e["formatted"]["value"]["rate_bytes"] == 1_250_000)
                    })
        },
    );

    // Every pinned map has BTF for its key and value; a ring buffer has
    // neither (its records are read by the daemon, never dumped).
    for name in pisa_daemon_common::names::ALL_MAPS {
        let path = layout.map(name);
        let info = bpftool_json(&["map", "show", "pinned", path.to_str().unwrap()]);
        if name == pisa_daemon_common::names::MAP_SQL_EVENTS
            || name == pisa_daemon_common::names::MAP_AYA_LOGS
        {
            assert_eq!(info["type"], "ringbuf", "{info}");
            continue;
        }
        assert!(
            info["btf_id"].as_u64().is_some_and(|id| id > 0),
            "{name} has no BTF: {info}"
        );
        assert_eq!(info["name"], &name[..name.len().min(15)], "{info}");
    }

    // The class's value, field by field, as the claim configured it.
    let entries = bpftool_json(&["map", "dump", "pinned", class_config.to_str().unwrap()]);
    let class = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["formatted"]["value"]["rate_bytes"] == 1_250_000)
        .expect("alpha's class")["formatted"]
        .clone();
    let value = &class["value"];
    assert_eq!(value["ceil_bytes"], 1_250_000, "{class}");
    assert_eq!(value["burst_bytes"], 65_536, "{class}");
    assert_eq!(value["mode"], pisa_daemon_common::MODE_HTB, "{class}");
    assert_eq!(
        value["htb_handle"],
        u64::from(pisa_daemon_common::htb_tree::leaf_handle(
            class["key"].as_u64().unwrap() as u32
        )),
        "{class}"
    );

    // The endpoint rule, with named key fields.
    let endpoints = bpftool_json(&[
        "map",
        "dump",
        "pinned",
        layout.map("ENDPOINTS").to_str().unwrap(),
    ]);
    let rule = &endpoints[0]["formatted"];
    assert_eq!(
        rule["key"]["data"]["port_be"],
        u64::from(5201u16.to_be()),
        "{rule}"
    );
    let server: std::net::Ipv4Addr = topo.server_ip().parse().unwrap();
    let addr: Vec<u64> = rule["key"]["data"]["addr"].as_array().unwrap()[..4]
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(addr, server.octets().map(u64::from).to_vec(), "{rule}");
    assert_eq!(rule["value"]["class_id"], class["key"], "{rule}");
}
