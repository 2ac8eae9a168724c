//! Pisanix's way of binding: a claim object is rendered back to YAML and
//! loaded exactly like a claim file, with endpoints from the VirtualDatabase
//! services that name it.

use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::{json, Value};

use crate::spec::{load_documents, SourceSnapshot, API_VERSION, KIND};

/// One claim object as a source for the agent: the object is rendered back
/// to YAML and loaded exactly like a claim file.
pub fn claim_source(claim: &DynamicObject, databases: &[Arc<DynamicObject>]) -> SourceSnapshot {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let origin = format!("kube:{namespace}/{name}");
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": claim.metadata.generation,
        },
    });
    if let Some(spec) = claim.data.get("spec") {
        object["spec"] = spec.clone();
    }
    bind_endpoints(&mut object, databases);
    // A JSON value always renders as YAML; an empty text would load as no
    // claim, which validation then reports.
    let text = serde_norway::to_string(&object).unwrap_or_default();
    let documents = load_documents(&origin, &text);
    SourceSnapshot {
        name: origin,
        documents,
    }
}

/// Pisanix's binding: a claim without endpoints takes the
/// `databaseMySQL.host`/`port` of every VirtualDatabase service in its
/// namespace whose `qosClaim` names it.
pub fn bind_endpoints(claim: &mut Value, databases: &[Arc<DynamicObject>]) {
    let traffic = &claim["spec"]["trafficQoS"];
    let has_endpoints = traffic["endpoints"]
        .as_array()
        .is_some_and(|e| !e.is_empty());
    if has_endpoints {
        return;
    }
    let namespace = claim["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = claim["metadata"]["name"].as_str().unwrap_or_default();
    let endpoints: Vec<Value> = databases
        .iter()
        .filter(|db| db.metadata.namespace.as_deref() == Some(namespace))
        .flat_map(|db| {
            db.data["spec"]["services"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|service| service["qosClaim"].as_str() == Some(name))
        .filter_map(|service| {
            let mysql = &service["databaseMySQL"];
            let host = mysql["host"].as_str()?;
            let mut endpoint = json!({"host": host});
            if let Some(port) = mysql["port"].as_i64() {
                endpoint["port"] = json!(port);
            }
            Some(endpoint)
        })
        .collect();
    if !endpoints.is_empty() {
        if let Some(traffic) = claim["spec"]["trafficQoS"].as_object_mut() {
            traffic.insert("endpoints".into(), Value::Array(endpoints));
        }
    }
}
