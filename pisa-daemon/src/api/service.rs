//! The `pisa.v1.PisaDaemon` service over the agent. Each call takes the
//! agent's lock for a few map operations and never across an await.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pisa_daemon_common::{reason, ClassStats};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use super::{
    convert::{self, Target, WATCH_INTERVAL_MS},
    pb::{self, pisa_daemon_server::PisaDaemon},
};
use crate::{
    identity::Outcome,
    kernel::Dataplane,
    reconcile::agent::Agent,
    report::{CounterMap, Counters, NodeReport, ReadErrors},
    spec::{check, load_documents, Phase, SourceSnapshot},
    tags::{monotonic_ns, Tag},
};

/// Rates for GetStats are measured over this window by a background task.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

pub struct PisaApi<D: Dataplane> {
    agent: Arc<Mutex<Agent<D>>>,
    generation: u64,
    /// The last two counter samples (for GetStats' achieved rates).
    samples: Arc<Mutex<RateWindow>>,
    read_errors: ReadErrors,
}

impl<D: Dataplane> Clone for PisaApi<D> {
    fn clone(&self) -> Self {
        Self {
            agent: self.agent.clone(),
            generation: self.generation,
            samples: self.samples.clone(),
            read_errors: self.read_errors.clone(),
        }
    }
}

/// GetStats' rates are sampled in the background only while clients ask:
/// for this long after the last GetStats. A node nobody asks reads no
/// counters (10,000 classes are 10,000 per-CPU reads a second).
pub const SAMPLE_DEMAND: Duration = Duration::from_secs(60);
/// With no recent sample, GetStats measures over this window itself, so its
/// first answer after a quiet spell is a measured rate, not a zero.
pub const FIRST_WINDOW: Duration = Duration::from_millis(250);

/// Class byte counters at two instants; the rate is their difference.
#[derive(Default)]
struct RateWindow {
    previous: Option<(Instant, BTreeMap<u32, u64>)>,
    rates: BTreeMap<u32, f64>,
    /// When `rates` were last computed (two samples apart).
    rated_at: Option<Instant>,
    /// When GetStats last asked.
    demanded_at: Option<Instant>,
}

impl RateWindow {
    fn wanted(&self, now: Instant) -> bool {
        self.demanded_at
            .is_some_and(|at| now.duration_since(at) < SAMPLE_DEMAND)
    }

    /// Whether `rates` were computed within two intervals.
    fn fresh(&self, now: Instant) -> bool {
        self.rated_at
            .is_some_and(|at| now.duration_since(at) <= 2 * SAMPLE_INTERVAL)
    }

    fn push(&mut self, at: Instant, stats: &BTreeMap<u32, ClassStats>) {
        let bytes: BTreeMap<u32, u64> = stats.iter().map(|(id, s)| (*id, s.bytes)).collect();
        if let Some((then, before)) = &self.previous {
            let seconds = at.duration_since(*then).as_secs_f64();
            if seconds > 0.0 {
                self.rates = bytes
                    .iter()
                    .map(|(id, now)| {
                        let delta = now.saturating_sub(before.get(id).copied().unwrap_or(0));
                        (*id, delta as f64 / seconds)
                    })
                    .collect();
                self.rated_at = Some(at);
            }
        }
        self.previous = Some((at, bytes));
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<D: Dataplane + Send + 'static> PisaApi<D> {
    /// `generation` must differ on every daemon start (the proxy compares
    /// it to detect that its tags are gone).
    pub fn new(agent: Arc<Mutex<Agent<D>>>, generation: u64, read_errors: ReadErrors) -> Self {
        Self {
            agent,
            generation,
            samples: Arc::default(),
            read_errors,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn lock(&self) -> Result<MutexGuard<'_, Agent<D>>, Status> {
        self.agent
            .lock()
            .map_err(|_| Status::internal("agent state is poisoned; restart the daemon"))
    }

    /// Reads the counters once into GetStats form; `achieved` turns that
    /// reading into the rates to report.
    fn snapshot(
        &self,
        achieved: impl FnOnce(&BTreeMap<u32, ClassStats>) -> BTreeMap<u32, f64>,
    ) -> Result<pb::GetStatsResponse, Status> {
        let report = NodeReport::read(
            &*self.lock()?,
            &[CounterMap::ClassStats, CounterMap::ReasonStats],
            &self.read_errors,
        );
        let (Some(stats), Some(reasons)) = (&report.counters.classes, &report.counters.reasons)
        else {
            let failed: Vec<&str> = report.counters.failed.iter().map(|m| m.name()).collect();
            return Err(Status::unavailable(format!(
                "reading the kernel's counters ({}) failed; see the daemon's log and \
                 pisa_metrics_read_errors_total",
                failed.join(", ")
            )));
        };
        let achieved = achieved(stats);
        let classes = report
            .classes
            .iter()
            .map(|class| {
                let counters = class.counters.unwrap_or_default();
                pb::ClassStats {
                    class_id: class.class_id,
                    claim: Some(convert::claim_ref(&class.claim)),
                    rate_bytes_per_second: class.rate_bytes,
                    ceil_bytes_per_second: class.ceil_bytes,
                    packets: counters.packets,
                    bytes: counters.bytes,
                    drops: counters.drops,
                    delayed: counters.delayed,
                    achieved_bytes_per_second: achieved
                        .get(&class.class_id)
                        .copied()
                        .unwrap_or(0.0),
                }
            })
            .collect();
        Ok(pb::GetStatsResponse {
            classes,
            reasons: reasons
                .iter()
                .zip(reason::NAMES)
                .map(|(packets, name)| pb::ReasonCount {
                    reason: name.into(),
                    packets: *packets,
                })
                .collect(),
            active_tags: report.active_tags as u32,
            generation: self.generation,
            sampled_unix_ms: unix_ms(SystemTime::now()),
            tag_capacity: report.tag_capacity as u32,
            tags_evicted: report.tag_evictions.proxy + report.tag_evictions.sql,
        })
    }

    /// The background tick: one counter sample for GetStats' rates, while
    /// clients ask (`SAMPLE_DEMAND`); otherwise nothing is read.
    pub fn sample_rates(&self) {
        let now = Instant::now();
        match self.samples.lock() {
            Ok(mut window) if !window.wanted(now) => {
                window.previous = None;
                window.rated_at = None;
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        self.take_sample();
    }

    /// Reads the class counters once into the rate window.
    fn take_sample(&self) {
        let Ok(agent) = self.agent.lock() else {
            return;
        };
        let counters = Counters::read(&agent.dp, &[CounterMap::ClassStats], &self.read_errors);
        drop(agent);
        if let (Some(stats), Ok(mut window)) = (counters.classes, self.samples.lock()) {
            window.push(Instant::now(), &stats);
        }
    }

    /// GetStats' achieved rates: from the background window when it is
    /// fresh; else measured now over `FIRST_WINDOW`.
    async fn achieved_rates(&self) -> BTreeMap<u32, f64> {
        let now = Instant::now();
        let fresh = match self.samples.lock() {
            Ok(mut window) => {
                window.demanded_at = Some(now);
                window.fresh(now).then(|| window.rates.clone())
            }
            Err(_) => Some(BTreeMap::new()),
        };
        if let Some(rates) = fresh {
            return rates;
        }
        self.take_sample();
        tokio::time::sleep(FIRST_WINDOW).await;
        self.take_sample();
        self.samples
            .lock()
            .map(|w| w.rates.clone())
            .unwrap_or_default()
    }

    /// Removes expired tags from the kernel; returns how many.
    pub fn sweep_tags(&self) -> usize {
        let Ok(mut guard) = self.agent.lock() else {
            return 0;
        };
        let agent = &mut *guard;
        monotonic_ns()
            .and_then(|now| {
                agent
                    .tags
                    .sweep(&mut agent.dp, now)
                    .map_err(|source| crate::tags::TagError::Kernel { source })
            })
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "sweeping expired flow tags failed; retrying");
                0
            })
    }

    /// Tags every request's connection in one kernel write, all or none.
    fn tag_all(&self, requests: &[convert::TagRequest]) -> Result<pb::TagFlowsResponse, Status> {
        let mut guard = self.lock()?;
        let agent = &mut *guard;
        let now_ns = monotonic_ns().map_err(convert::tag_error)?;
        let now_wall = SystemTime::now();
        let single = requests.len() == 1;
        let mut batch = Vec::with_capacity(requests.len());
        let mut tags = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            let class_id = Self::resolve(agent, &request.target).map_err(|status| {
                if single {
                    status
                } else {
                    convert::within(&format!("tags[{i}]"), status)
                }
            })?;
            let ttl = Duration::from_secs(u64::from(request.ttl_seconds));
            let tag = Tag {
                class_id,
                origin: pisa_daemon_common::TAG_ORIGIN_PROXY,
                expires_ns: now_ns + ttl.as_nanos() as u64,
            };
            batch.push((request.flow, tag));
            tags.push(pb::TagFlowResponse {
                class_id,
                expires_unix_ms: unix_ms(now_wall + ttl),
                generation: self.generation,
                evicted: 0,
            });
        }
        let tagged = agent
            .tags
            .tag_all(&mut agent.dp, &batch, now_ns)
            .map_err(convert::tag_error)?;
        Ok(pb::TagFlowsResponse {
            tags,
            evicted: tagged.evicted as u32,
            generation: self.generation,
        })
    }

    /// The class a TagFlow request names, if it is in force here.
    fn resolve(agent: &Agent<D>, target: &Target) -> Result<u32, Status> {
        match target {
            Target::ClassId(id) => {
                if agent.dp.classes().contains_key(id) {
                    Ok(*id)
                } else {
                    Err(Status::not_found(format!(
                        "class_id `{id}`: no such class on this node; ListClasses shows the \
                         classes in force"
                    )))
                }
            }
            Target::Claim(key) => {
                if let Some(id) = agent
                    .plan
                    .ids
                    .get(key)
                    .filter(|id| agent.dp.classes().contains_key(id))
                {
                    return Ok(*id);
                }
                let why = match agent.statuses.get(key) {
                    Some(status) if status.phase != Phase::Applied => {
                        format!("it is {:?}: {}", status.phase, status.message)
                    }
                    _ => "no such claim on this node; ListClasses shows the claims in force"
                        .to_string(),
                };
                Err(Status::not_found(format!("claim `{key}`: {why}")))
            }
        }
    }
}

/// Most entries one TagFlows call may carry: about 0.6 MB of request,
/// well inside gRPC's default 4 MB message limit.
pub const MAX_TAGS_PER_CALL: usize = 10_000;

type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::GetStatsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<D: Dataplane + Send + 'static> PisaDaemon for PisaApi<D> {
    async fn tag_flow(
        &self,
        request: Request<pb::TagFlowRequest>,
    ) -> Result<Response<pb::TagFlowResponse>, Status> {
        let request = convert::tag_request(request.get_ref())?;
        let mut response = self.tag_all(std::slice::from_ref(&request))?;
        tracing::debug!(flow = ?request.flow, ttl_s = request.ttl_seconds, "tagged");
        let mut tagged = response
            .tags
            .pop()
            .ok_or_else(|| Status::internal("no tag"))?;
        tagged.evicted = response.evicted;
        Ok(Response::new(tagged))
    }

    async fn tag_flows(
        &self,
        request: Request<pb::TagFlowsRequest>,
    ) -> Result<Response<pb::TagFlowsResponse>, Status> {
        let entries = &request.get_ref().tags;
        if entries.len() > MAX_TAGS_PER_CALL {
            return Err(convert::invalid(
                "tags",
                format!("{} entries", entries.len()),
                &format!("at most {MAX_TAGS_PER_CALL} per call; split the batch"),
            ));
        }
        let requests = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                convert::tag_request(entry)
                    .map_err(|status| convert::within(&format!("tags[{i}]"), status))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(self.tag_all(&requests)?))
    }

    async fn untag_flow(
        &self,
        request: Request<pb::UntagFlowRequest>,
    ) -> Result<Response<pb::UntagFlowResponse>, Status> {
        let flow = convert::flow(request.get_ref().flow.as_ref(), "flow")?;
        let mut guard = self.lock()?;
        let agent = &mut *guard;
        let removed = agent
            .tags
            .untag(&mut agent.dp, &flow)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::UntagFlowResponse {
            removed,
            generation: self.generation,
        }))
    }

    async fn list_classes(
        &self,
        _request: Request<pb::ListClassesRequest>,
    ) -> Result<Response<pb::ListClassesResponse>, Status> {
        let report = NodeReport::read(&*self.lock()?, &[], &self.read_errors);
        let interfaces: Vec<String> = report.interfaces.iter().cloned().collect();
        let classes = report
            .classes
            .iter()
            .map(|class| pb::ClassInfo {
                class_id: class.class_id,
                claim: Some(convert::claim_ref(&class.claim)),
                mode: convert::mode(class.mode) as i32,
                rate_bytes_per_second: class.rate_bytes,
                ceil_bytes_per_second: class.ceil_bytes,
                burst_bytes: class.burst_bytes,
                priority: class.priority_name.clone(),
                direction: class.direction.clone(),
                endpoints: class.rules.iter().map(convert::rule_text).collect(),
                interfaces: interfaces.clone(),
                queue: class.queue.clone(),
            })
            .collect();
        let claims = report
            .claims
            .iter()
            .map(|(key, status)| pb::ClaimState {
                claim: Some(convert::claim_ref(key)),
                phase: format!("{:?}", status.phase),
                message: status.message.clone(),
                class_id: status.class_id.unwrap_or(0),
                client_prefixes: status.client_prefixes as u32,
                sql_identity: report
                    .identity
                    .claims
                    .get(key)
                    .map(convert::outcome_counts)
                    .unwrap_or_default(),
            })
            .collect();
        let sql_identity = Outcome::ALL
            .iter()
            .map(|outcome| {
                let count = report.identity.node.get(outcome).copied().unwrap_or(0);
                (outcome.label().to_owned(), count)
            })
            .collect();
        Ok(Response::new(pb::ListClassesResponse {
            classes,
            generation: self.generation,
            claims,
            source_errors: report.source_errors,
            sql_identity,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let achieved = self.achieved_rates().await;
        Ok(Response::new(self.snapshot(|_| achieved)?))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(
        &self,
        request: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval_ms = request.get_ref().interval_ms;
        if !WATCH_INTERVAL_MS.contains(&interval_ms) {
            return Err(convert::invalid(
                "interval_ms",
                interval_ms,
                &format!(
                    "must be {}-{} ms",
                    WATCH_INTERVAL_MS.start(),
                    WATCH_INTERVAL_MS.end()
                ),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.into()));
            let mut window = RateWindow::default();
            loop {
                ticker.tick().await;
                let message = api.snapshot(|stats| {
                    window.push(Instant::now(), stats);
                    window.rates.clone()
                });
                let failed = message.is_err();
                // The caller went away: stop sampling for it.
                if tx.send(message).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let limits = self.lock()?.limits;
        let yaml = &request.get_ref().yaml;
        if yaml.trim().is_empty() {
            return Err(convert::invalid(
                "yaml",
                "",
                "empty; give one or more QoSClaim documents",
            ));
        }
        let checked = check(
            &[SourceSnapshot {
                name: "request".into(),
                documents: load_documents("request", yaml),
            }],
            limits,
        );
        let errors: Vec<pb::ValidationError> = checked
            .errors()
            .into_iter()
            .map(convert::validation_error)
            .collect();
        let response = pb::ValidateResponse {
            valid: errors.is_empty(),
            valid_claims: checked.valid_claims() as u32,
            errors,
            warnings: checked.warnings(),
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tonic::Code;

    use super::*;
    use crate::{kernel::FakeDataplane, spec::Limits, spec::SourceSnapshot, tags::TagTable};

    const CLAIM: &str = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
        metadata: {name: catalogue, namespace: shop}\nspec:\n  trafficQoS:\n    \
        name: catalogue\n    qos_group: {rate: 10mbit}\n    \
        endpoints: [{host: 10.0.0.5, port: 3306}]\n";

    fn api(tag_capacity: usize) -> PisaApi<FakeDataplane> {
        let limits = Limits {
            max_classes: 10,
            edt_available: false,
            pod_selectors: false,
        };
        let ifaces = BTreeSet::from(["eth0".to_string()]);
        let mut agent = Agent::new(FakeDataplane::default(), ifaces, limits);
        agent.tags = TagTable::new(tag_capacity);
        agent.update(&[SourceSnapshot {
            name: "claims.yaml".into(),
            documents: load_documents("claims.yaml", CLAIM),
        }]);
        agent.reconcile().unwrap();
        PisaApi::new(Arc::new(Mutex::new(agent)), 42, ReadErrors::default())
    }

    fn tag_request(src_port: u32, target: pb::tag_flow_request::Target) -> pb::TagFlowRequest {
        pb::TagFlowRequest {
            flow: Some(pb::FlowTuple {
                src_ip: "10.0.0.1".into(),
                src_port,
                dst_ip: "10.0.0.5".into(),
                dst_port: 3306,
                protocol: pb::Protocol::Tcp as i32,
            }),
            target: Some(target),
            ttl_seconds: 60,
        }
    }

    fn claim(namespace: &str, name: &str) -> pb::tag_flow_request::Target {
        pb::tag_flow_request::Target::Claim(pb::ClaimRef {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    #[tokio::test]
    async fn tagging_by_claim_writes_the_connection_and_untag_removes_it() {
        let api = api(10);
        let response = api
            .tag_flow(Request::new(tag_request(40000, claim("shop", "catalogue"))))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.generation, 42);
        let class_id = response.class_id;
        {
            let agent = api.agent.lock().unwrap();
            assert_eq!(agent.dp.flow_tags.len(), 1);
            assert!(agent.dp.flow_tags.values().all(|t| t.class_id == class_id));
        }
        let listed = api
            .list_classes(Request::new(pb::ListClassesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.classes[0].class_id, class_id);
        assert_eq!(
            listed.classes[0].endpoints,
            ["tcp dst 10.0.0.5/32:3306", "tcp src 10.0.0.5/32:3306"]
        );
        assert_eq!(listed.classes[0].direction, "both");
        assert_eq!(listed.classes[0].interfaces, ["eth0"]);
        assert_eq!(listed.claims[0].phase, "Applied");
        let stats = api
            .get_stats(Request::new(pb::GetStatsRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.active_tags, 1);
        let untagged = api
            .untag_flow(Request::new(pb::UntagFlowRequest {
                flow: tag_request(40000, claim("shop", "catalogue")).flow,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(untagged.removed);
        assert!(api.agent.lock().unwrap().dp.flow_tags.is_empty());
    }

    #[tokio::test]
    async fn unknown_claims_and_classes_are_not_found() {
        let api = api(10);
        for target in [
            claim("shop", "nope"),
            claim("other", "catalogue"),
            pb::tag_flow_request::Target::ClassId(9999),
        ] {
            let status = api
                .tag_flow(Request::new(tag_request(40000, target)))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{}", status.message());
        }
    }

    #[tokio::test]
    async fn a_full_table_evicts_and_says_so_in_the_reply_and_the_stats() {
        let api = api(1);
        let target = || claim("shop", "catalogue");
        let first = api
            .tag_flow(Request::new(tag_request(40000, target())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.evicted, 0);
        let second = api
            .tag_flow(Request::new(tag_request(40001, target())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.evicted, 1);
        assert_eq!(api.agent.lock().unwrap().dp.flow_tags.len(), 1);
        let stats = api
            .get_stats(Request::new(pb::GetStatsRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((stats.active_tags, stats.tag_capacity), (1, 1));
        assert_eq!(stats.tags_evicted, 1);
    }

    #[tokio::test]
    async fn tag_flows_tags_a_batch_in_order_and_refuses_it_whole_naming_the_entry() {
        let api = api(100);
        let batch = |ports: &[u32]| pb::TagFlowsRequest {
            tags: ports
                .iter()
                .map(|port| tag_request(*port, claim("shop", "catalogue")))
                .collect(),
        };
        let response = api
            .tag_flows(Request::new(batch(&[40000, 40001, 40002])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.tags.len(), 3);
        assert_eq!(response.generation, 42);
        assert_eq!(api.agent.lock().unwrap().dp.flow_tags.len(), 3);

        let mut bad = batch(&[40003, 40004, 40005]);
        bad.tags[2].flow.as_mut().unwrap().src_port = 70000;
        let status = api.tag_flows(Request::new(bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("tags[2].flow.src_port `70000`"),
            "{}",
            status.message()
        );
        let mut unknown = batch(&[40003, 40004]);
        unknown.tags[1].target = Some(claim("shop", "nope"));
        let status = api.tag_flows(Request::new(unknown)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().starts_with("tags[1].claim `shop/nope`"));
        // Neither bad batch tagged anything.
        assert_eq!(api.agent.lock().unwrap().dp.flow_tags.len(), 3);

        let too_many: Vec<u32> = (0..=MAX_TAGS_PER_CALL as u32)
            .map(|i| 1 + i % 60000)
            .collect();
        let status = api
            .tag_flows(Request::new(batch(&too_many)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("at most 10000 per call"));
    }

    #[tokio::test]
    async fn a_batch_with_more_new_connections_than_the_table_is_resource_exhausted() {
        let api = api(2);
        let request = pb::TagFlowsRequest {
            tags: (40000..40003)
                .map(|port| tag_request(port, claim("shop", "catalogue")))
                .collect(),
        };
        let status = api.tag_flows(Request::new(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("3 connections in one request"));
        assert!(api.agent.lock().unwrap().dp.flow_tags.is_empty());
    }

    #[tokio::test]
    async fn validate_returns_every_error_with_its_field() {
        let api = api(1);
        let yaml = CLAIM.replace("10mbit", "10mps").replace("3306", "0");
        let response = api
            .validate(Request::new(pb::ValidateRequest { yaml }))
            .await
            .unwrap()
            .into_inner();
        assert!(!response.valid);
        let fields: Vec<&str> = response.errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.trafficQoS.qos_group.rate"),
            "{fields:?}"
        );
        assert!(
            fields.iter().any(|f| f.contains("endpoints[0].port")),
            "{fields:?}"
        );
        let empty = api
            .validate(Request::new(pb::ValidateRequest { yaml: " ".into() }))
            .await
            .unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn validate_warns_of_claims_whose_selectors_overlap() {
        let api = api(1);
        let one = format!("{CLAIM}    direction: both\n    sql: {{users: [reporter]}}\n");
        let two = one.replace("catalogue", "exports");
        let response = api
            .validate(Request::new(pb::ValidateRequest {
                yaml: format!("{one}---\n{two}"),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(response.valid, "{:#?}", response.errors);
        assert_eq!(response.valid_claims, 2);
        assert!(
            response
                .warnings
                .iter()
                .any(|w| w.starts_with("claim shop/catalogue:") && w.contains("exports")),
            "{:#?}",
            response.warnings
        );
    }

    /// Nobody asking: the background tick reads nothing. The first
    /// GetStats measures its own window (a real rate, not a zero), and the
    /// tick samples from then on.
    #[tokio::test]
    async fn rates_are_sampled_only_while_clients_ask_and_never_start_at_zero() {
        let api = api(1);
        api.sample_rates();
        api.sample_rates();
        assert!(
            api.samples.lock().unwrap().previous.is_none(),
            "sampled with no client asking"
        );
        let id = *api
            .agent
            .lock()
            .unwrap()
            .plan
            .classes
            .keys()
            .next()
            .unwrap();
        let bump = async {
            tokio::time::sleep(FIRST_WINDOW / 2).await;
            let mut agent = api.agent.lock().unwrap();
            agent.dp.stats.entry(id).or_default().bytes += 125_000;
        };
        let (stats, ()) = tokio::join!(api.get_stats(Request::new(pb::GetStatsRequest {})), bump);
        let class = &stats.unwrap().into_inner().classes[0];
        // 125,000 bytes in a window of at least FIRST_WINDOW (250 ms).
        assert!(
            class.achieved_bytes_per_second > 100_000.0
                && class.achieved_bytes_per_second <= 500_000.0,
            "{}",
            class.achieved_bytes_per_second
        );
        api.sample_rates();
        assert!(
            api.samples.lock().unwrap().previous.is_some(),
            "a client asked: the tick samples"
        );
    }

    #[tokio::test]
    async fn list_classes_carries_sql_identity_counts_for_the_node_and_each_claim() {
        let api = api(1);
        let key = crate::spec::ClaimKey::new("shop", "catalogue");
        {
            let mut agent = api.agent.lock().unwrap();
            agent.identity.node.insert(Outcome::Identified, 3);
            agent.identity.node.insert(Outcome::Tls, 1);
            agent
                .identity
                .claims
                .entry(key.clone())
                .or_default()
                .insert(Outcome::Identified, 3);
        }
        let reply = api
            .list_classes(Request::new(pb::ListClassesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.sql_identity["identified"], 3);
        assert_eq!(reply.sql_identity["tls"], 1);
        assert_eq!(
            reply.sql_identity.len(),
            Outcome::ALL.len(),
            "every outcome is listed, zeros included"
        );
        let claim = reply
            .claims
            .iter()
            .find(|c| c.claim.as_ref().is_some_and(|r| r.name == "catalogue"))
            .unwrap();
        assert_eq!(claim.sql_identity["identified"], 3);
        assert_eq!(claim.client_prefixes, 0);
    }

    #[tokio::test]
    async fn watch_interval_out_of_bounds_is_invalid() {
        let api = api(1);
        for interval_ms in [0, 99, 60_001] {
            let Err(status) = api
                .watch_stats(Request::new(pb::WatchStatsRequest { interval_ms }))
                .await
            else {
                panic!("interval {interval_ms} accepted");
            };
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with("interval_ms"));
        }
    }

    #[test]
    fn removing_a_claim_removes_its_tags() {
        let api = api(10);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(api.tag_flow(Request::new(tag_request(40000, claim("shop", "catalogue")))))
            .unwrap();
        let mut agent = api.agent.lock().unwrap();
        agent.update(&[SourceSnapshot {
            name: "claims.yaml".into(),
            documents: Ok(vec![]),
        }]);
        agent.reconcile().unwrap();
        assert!(agent.tags.is_empty());
        assert!(agent.dp.flow_tags.is_empty());
    }
}
