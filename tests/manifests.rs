//! The Kubernetes manifests, checked offline: every object against
//! Kubernetes 1.33's schemas with PyPI's kubernetes-validate (strict), the
//! example claims (Pisanix's form and the extended one) against the
//! generated CRD's schema with jsonschema, and bad claims rejected by the
//! schema where it can express the rule and by the daemon where it cannot.

use std::path::{Path, PathBuf};

use crate::support::*;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(mode: &str, files: &[PathBuf]) -> serde_json::Map<String, Value> {
    let script = repo().join("tests/python/check_manifests.py");
    let out = std::process::Command::new(test_python())
        .arg(script)
        .arg(mode)
        .args(files)
        .output()
        .expect("running check_manifests.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_manifests.py {mode}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_str(&stdout).expect("JSON");
    parsed.as_object().expect("object").clone()
}

fn manifest(path: &str) -> PathBuf {
    repo().join("manifests").join(path)
}

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas() {
    let kustomization: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifest("kustomization.yaml")).expect("kustomization"),
    )
    .expect("YAML");
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| manifest(r.as_str().expect("path")))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let results = check("kube", &files);
    assert!(!results.is_empty());
    for (object, result) in &results {
        assert_eq!(result, "ok", "{object}");
    }
}

#[test]
fn a_misspelt_field_fails_kubernetes_validation() {
    // The check itself must be able to fail.
    let dir = TempDir::new("pkbad");
    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespce: y\n",
    )
    .expect("bad manifest");
    let results = check("kube", std::slice::from_ref(&bad));
    let result = results
        .values()
        .next()
        .and_then(Value::as_str)
        .expect("a result");
    assert!(result.contains("namespce"), "{result}");
}

#[test]
fn example_claims_match_the_generated_crd_schema() {
    let crd = manifest("crd/qosclaims.yaml");
    let examples = [
        manifest("examples/pisanix-qosclaim.yaml"),
        manifest("examples/extended-qosclaim.yaml"),
    ];
    let results = check("crd", &[&[crd][..], &examples[..]].concat());
    assert_eq!(results.len(), 2, "{results:?}");
    for (object, result) in &results {
        assert_eq!(result, "ok", "{object}");
    }
    // The daemon accepts them too.
    for example in &examples {
        let (ok, out, err) = run_daemon(&["validate", example.to_str().unwrap()]);
        assert!(ok, "pisa-daemon validate {}: {out}{err}", example.display());
    }
}

/// A claim with `qos_group` and extra fields spliced in.
fn claim_with(qos_group: &str, extra: &str) -> String {
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: bad, namespace: shop}}\nspec:\n  trafficQoS:\n    name: bad\n    \
         qos_group: {qos_group}\n{extra}"
    )
}

#[test]
fn bad_claims_are_rejected_by_the_schema_or_by_the_daemon() {
    let dir = TempDir::new("pcrd");
    let cases = [
        // (name, claim, rejected by the schema?, what the rejection names)
        ("bad-unit", claim_with("{rate: 1mps}", ""), true, "rate"),
        (
            "bad-port",
            claim_with(
                "{rate: 1mbit}",
                "    endpoints: [{host: 10.0.0.5, port: 70000}]\n",
            ),
            true,
            "port",
        ),
        (
            "bad-direction",
            claim_with("{rate: 1mbit}", "    direction: sideways\n"),
            true,
            "direction",
        ),
        // ceil < rate is a CEL rule: the API server enforces it (jsonschema
        // does not run CEL); the daemon rejects it too.
        (
            "ceil-below-rate",
            claim_with("{rate: 10mbit, ceil: 1mbit}", ""),
            false,
            "ceil",
        ),
        // The API server prunes unknown fields (kubectl's strict field
        // validation rejects them); a file claim's typo is the daemon's.
        (
            "unknown-field",
            claim_with("{rate: 1mbit}", "    prioritty: guaranteed\n"),
            false,
            "prioritty",
        ),
    ];
    let crd = manifest("crd/qosclaims.yaml");
    for (name, body, by_schema, needle) in cases {
        let path = dir.0.join(format!("{name}.yaml"));
        std::fs::write(&path, &body).expect("claim");
        let results = check("crd", &[crd.clone(), path.clone()]);
        let schema_says = results
            .values()
            .next()
            .and_then(Value::as_str)
            .expect("a result");
        if by_schema {
            assert!(
                schema_says != "ok" && schema_says.contains(needle),
                "{name}: the schema should reject it naming {needle}: {schema_says}"
            );
        } else {
            let (ok, out, _) = run_daemon(&["validate", path.to_str().unwrap()]);
            assert!(!ok, "{name}: the daemon accepted it");
            assert!(out.contains(needle), "{name}: {out}");
        }
    }
}

#[test]
fn crd_has_aggregate_printer_columns_short_name_and_keyed_status_lists() {
    let crd: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifest("crd/qosclaims.yaml")).expect("crd"),
    )
    .expect("YAML");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "core.database-mesh.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "QoSClaim");
    assert_eq!(spec["names"]["shortNames"][0], "qc");
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_mapping());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Rate", "Ceil", "Priority", "Applied", "Failed", "Nodes", "Ready", "Age"]
    );
    let paths: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .map(|c| c["jsonPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths[3..7],
        [
            ".status.nodesApplied",
            ".status.nodesFailed",
            ".status.nodesReporting",
            ".status.conditions[?(@.type==\"Ready\")].status",
        ]
    );
    let schema = &version["schema"]["openAPIV3Schema"];
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
    let nodes = &schema["properties"]["status"]["properties"]["nodes"];
    assert_eq!(nodes["x-kubernetes-list-type"], "map");
    assert_eq!(nodes["x-kubernetes-list-map-keys"][0], "node");
    let qos_group =
        &schema["properties"]["spec"]["properties"]["trafficQoS"]["properties"]["qos_group"];
    assert!(
        qos_group["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("self.ceil")),
        "{qos_group:?}"
    );
    // Every field explains itself for `kubectl explain`.
    fn undescribed(path: &str, schema: &serde_norway::Value, out: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_mapping() {
            for (name, child) in props {
                let name = name.as_str().unwrap();
                let here = format!("{path}.{name}");
                if name != "metadata" && child["description"].as_str().is_none_or(str::is_empty) {
                    out.push(here.clone());
                }
                undescribed(&here, child, out);
                undescribed(&format!("{here}[]"), &child["items"], out);
            }
        }
    }
    let mut missing = Vec::new();
    undescribed("", schema, &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn daemonset_args_are_the_daemons_own_flags_and_capabilities_are_minimal() {
    let daemonset: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifest("daemonset.yaml")).expect("daemonset"),
    )
    .expect("YAML");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(added, ["BPF", "NET_ADMIN", "PERFMON"]);
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/sys/fs/bpf" && m["mountPropagation"] == "Bidirectional"));
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/sys/kernel/btf" && m["readOnly"] == true));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The args parse: the daemon gets as far as looking up the interface.
    let mut args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for arg in args.iter_mut() {
        if arg.starts_with("--iface=") {
            *arg = "--iface=pisa-absent0".into();
        }
    }
    let out = std::process::Command::new(daemon_bin())
        .args(&args)
        .env("NODE_NAME", "node-a")
        .output()
        .expect("running the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("interface `pisa-absent0` does not exist"),
        "the DaemonSet's args must parse: {stderr}"
    );

    let monitor: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifest("monitoring/podmonitor.yaml")).expect("podmonitor"),
    )
    .expect("YAML");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert!(endpoint["relabelings"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|r| r["targetLabel"] == "node"));
}
