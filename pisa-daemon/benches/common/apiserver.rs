//! An in-process stand-in for the Kubernetes API server, for the status
//! simulation: the same parts of the API as `tests/python/fake_apiserver.py`
//! (LIST/WATCH with resourceVersions, server-side apply of QoSNodeReports
//! and of the legacy `status.nodes[]` list-map, JSON merge patches of claim
//! status, Nodes, Leases with 409 on stale writes), served as a tower
//! service so thousands of simulated nodes can share one process, and
//! counting what a real server would do: requests by verb, bytes written,
//! watch events delivered and their bytes, and the largest object.
//!
//! Watchers are real (a `kube` watch stream that gets every event) or
//! counted: a counted watcher stands for one node's watch of a kind and is
//! charged every event exactly as a real one, without the bytes being
//! sent (the point of the legacy design's figures is that they cannot be).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use serde_json::{json, Value};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
type EventSender = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

const GROUP: &str = "/apis/core.database-mesh.io/v1alpha1";

/// What the server did, cumulatively.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub requests: u64,
    pub by_verb: BTreeMap<String, u64>,
    pub bytes_written: u64,
    pub events: u64,
    pub event_bytes: u64,
}

impl Counters {
    pub fn since(&self, before: &Counters) -> Counters {
        let mut by_verb = self.by_verb.clone();
        for (verb, count) in &before.by_verb {
            *by_verb.entry(verb.clone()).or_default() -= count;
        }
        by_verb.retain(|_, count| *count > 0);
        Counters {
            requests: self.requests - before.requests,
            by_verb,
            bytes_written: self.bytes_written - before.bytes_written,
            events: self.events - before.events,
            event_bytes: self.event_bytes - before.event_bytes,
        }
    }
}

struct Watcher {
    plural: String,
    namespace: Option<String>,
    sender: EventSender,
}

#[derive(Default)]
struct State {
    version: u64,
    /// (plural, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Events of listed kinds, for watches that start behind.
    history: Vec<(u64, String, String, Bytes)>,
    listed: BTreeSet<String>,
    watchers: Vec<Watcher>,
    counted_watchers: BTreeMap<String, u64>,
    counters: Counters,
    largest: BTreeMap<String, usize>,
}

#[derive(Clone, Default)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.serve(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// `count` watchers of `plural` that are charged every event.
    pub fn add_counted_watchers(&self, plural: &str, count: u64) {
        *self
            .lock()
            .counted_watchers
            .entry(plural.to_owned())
            .or_default() += count;
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// The largest object of `plural` ever stored, in bytes of JSON.
    pub fn largest(&self, plural: &str) -> usize {
        self.lock().largest.get(plural).copied().unwrap_or(0)
    }

    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Creates or replaces an object as a client's PUT would (bumping a
    /// claim's generation when its spec changed), without counting it.
    pub fn put(&self, plural: &str, namespace: &str, name: &str, mut object: Value) {
        let mut state = self.lock();
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        let old = state.objects.get(&key).cloned();
        let generation = old
            .as_ref()
            .map_or(0, |o| o["metadata"]["generation"].as_i64().unwrap_or(0));
        let spec_changed = old.as_ref().is_none_or(|o| o["spec"] != object["spec"]);
        object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
        if let Some(status) = old.as_ref().and_then(|o| o.get("status")) {
            object["status"] = status.clone();
        }
        state.store(&key, object, old.is_none());
    }

    async fn serve(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let mut state = self.lock();
        state.counters.requests += 1;
        *state
            .counters
            .by_verb
            .entry(verb(&method, &query).to_owned())
            .or_default() += 1;
        if method != Method::GET {
            state.counters.bytes_written += body.len() as u64;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["api", "v1", "nodes", name]) => reply(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "uid": format!("uid-node-{name}")}}),
            ),
            (Method::GET, ["apis", "core.database-mesh.io", "v1alpha1", plural]) => {
                state.list_or_watch(plural, None, &query)
            }
            (
                Method::GET,
                ["apis", "core.database-mesh.io", "v1alpha1", "namespaces", ns, plural],
            ) => state.list_or_watch(plural, Some(ns), &query),
            (
                Method::PATCH,
                ["apis", "core.database-mesh.io", "v1alpha1", "namespaces", ns, "qosnodereports", name],
            ) => state.apply_report(ns, name, body),
            (
                Method::PATCH,
                ["apis", "core.database-mesh.io", "v1alpha1", "namespaces", ns, "qosclaims", name, "status"],
            ) => state.patch_claim_status(ns, name, &content_type, body),
            (
                Method::GET,
                ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name],
            ) => {
                match state
                    .objects
                    .get(&("leases".into(), ns.to_string(), name.to_string()))
                {
                    Some(lease) => reply(StatusCode::OK, lease),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "lease not found"),
                }
            }
            (Method::POST, ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = ("leases".to_owned(), ns.to_string(), name);
                if state.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "lease exists");
                }
                let stored = state.store(&key, body, true);
                reply(StatusCode::CREATED, &stored)
            }
            (
                Method::PUT,
                ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name],
            ) => {
                let key = ("leases".to_owned(), ns.to_string(), name.to_string());
                let current = state
                    .objects
                    .get(&key)
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if current != Some(body["metadata"]["resourceVersion"].clone()) {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
                }
                let stored = state.store(&key, body, false);
                reply(StatusCode::OK, &stored)
            }
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the stand-in API server's state")
    }
}

impl State {
    /// Stores `object` with a new resourceVersion and tells the watchers.
    fn store(&mut self, key: &(String, String, String), mut object: Value, created: bool) -> Value {
        self.version += 1;
        let (plural, namespace, name) = key;
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(self.version.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{plural}-{namespace}-{name}"));
            meta["creationTimestamp"] = json!("2026-12-03T00:00:00Z");
        }
        object["apiVersion"] = json!(api_version(plural));
        object["kind"] = json!(kind(plural));
        let text = object.to_string();
        let size = text.len();
        let event = if created { "ADDED" } else { "MODIFIED" };
        let line = Bytes::from(format!("{{\"type\":\"{event}\",\"object\":{text}}}\n"));
        let largest = self.largest.entry(plural.clone()).or_default();
        *largest = (*largest).max(size);
        self.publish(plural, namespace, line);
        self.objects.insert(key.clone(), object.clone());
        object
    }

    fn publish(&mut self, plural: &str, namespace: &str, line: Bytes) {
        let counted = self.counted_watchers.get(plural).copied().unwrap_or(0);
        self.watchers.retain(|w| !w.sender.is_closed());
        let mut delivered = counted;
        for watcher in &self.watchers {
            if watcher.plural == plural
                && watcher
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| ns == namespace)
            {
                delivered += 1;
                let _ = watcher.sender.unbounded_send(Ok(Frame::data(line.clone())));
            }
        }
        self.counters.events += delivered;
        self.counters.event_bytes += delivered * line.len() as u64;
        if self.listed.contains(plural) {
            self.history
                .push((self.version, plural.to_owned(), namespace.to_owned(), line));
        }
    }

    fn list_or_watch(
        &mut self,
        plural: &str,
        namespace: Option<&str>,
        query: &str,
    ) -> Response<Body> {
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        if params.get("watch") == Some(&"true") {
            let since: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (sender, receiver) = futures::channel::mpsc::unbounded();
            for (version, p, ns, line) in &self.history {
                if *version > since && p == plural && namespace.is_none_or(|n| n == ns) {
                    self.counters.events += 1;
                    self.counters.event_bytes += line.len() as u64;
                    let _ = sender.unbounded_send(Ok(Frame::data(line.clone())));
                }
            }
            self.watchers.push(Watcher {
                plural: plural.to_owned(),
                namespace: namespace.map(str::to_owned),
                sender,
            });
            return Response::new(StreamBody::new(receiver).boxed_unsync());
        }
        self.listed.insert(plural.to_owned());
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object)
            .collect();
        reply(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version(plural),
                "kind": format!("{}List", kind(plural)),
                "metadata": {"resourceVersion": self.version.to_string()},
                "items": items,
            }),
        )
    }

    fn apply_report(&mut self, namespace: &str, name: &str, body: Value) -> Response<Body> {
        let key = (
            "qosnodereports".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let old = self.objects.get(&key).cloned();
        let mut object = old.clone().unwrap_or_else(|| json!({"metadata": {}}));
        if let Some(owners) = body["metadata"].get("ownerReferences") {
            object["metadata"]["ownerReferences"] = owners.clone();
        }
        object["spec"] = body["spec"].clone();
        let stored = self.store(&key, object, old.is_none());
        reply(StatusCode::OK, &stored)
    }

    /// Server-side apply merges `status.nodes` as a list-map keyed by node
    /// (the legacy per-node entries); a merge patch merges the status.
    fn patch_claim_status(
        &mut self,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        let key = (
            "qosclaims".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "claim not found");
        };
        if content_type == "application/merge-patch+json" {
            let merged = merge_patch(object["status"].take(), &body["status"]);
            object["status"] = merged;
        } else {
            if !object["status"]["nodes"].is_array() {
                object["status"]["nodes"] = json!([]);
            }
            let entries = object["status"]["nodes"].as_array_mut().expect("array");
            for entry in body["status"]["nodes"].as_array().into_iter().flatten() {
                match entries.iter_mut().find(|e| e["node"] == entry["node"]) {
                    Some(existing) => *existing = entry.clone(),
                    None => entries.push(entry.clone()),
                }
            }
        }
        let stored = self.store(&key, object, false);
        reply(StatusCode::OK, &stored)
    }
}

/// RFC 7386.
fn merge_patch(target: Value, patch: &Value) -> Value {
    let Some(patch) = patch.as_object() else {
        return patch.clone();
    };
    let mut result = match target {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            result.remove(key);
        } else {
            let merged = merge_patch(result.remove(key).unwrap_or(Value::Null), value);
            result.insert(key.clone(), merged);
        }
    }
    Value::Object(result)
}

fn verb(method: &Method, query: &str) -> &'static str {
    match *method {
        Method::GET if query.contains("watch=true") => "watch",
        Method::GET => "get/list",
        Method::PATCH => "patch",
        Method::POST => "create",
        Method::PUT => "update",
        _ => "other",
    }
}

fn api_version(plural: &str) -> &'static str {
    match plural {
        "leases" => "coordination.k8s.io/v1",
        _ => "core.database-mesh.io/v1alpha1",
    }
}

fn kind(plural: &str) -> &'static str {
    match plural {
        "leases" => "Lease",
        "qosnodereports" => "QoSNodeReport",
        "virtualdatabases" => "VirtualDatabase",
        _ => "QoSClaim",
    }
}

fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = code;
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

/// The path of one claim's status, for requests made without `kube`.
pub fn claim_status_path(namespace: &str, name: &str) -> String {
    format!("{GROUP}/namespaces/{namespace}/qosclaims/{name}/status")
}

impl ApiServer {
    /// Sends one request as a raw client would and drops the reply body
    /// after the server has built it (the legacy nodes' writes: what each
    /// node got back is not needed, the server's work is).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(kube::client::Body::from(body.to_string().into_bytes()))
            .expect("a request");
        self.serve(request).await.status()
    }
}
