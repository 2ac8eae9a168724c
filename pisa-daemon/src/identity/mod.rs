//! SQL identity without a proxy: the kernel hands up the first bytes of
//! each new connection to an endpoint a claim selects by SQL identity
//! (`SQL_EVENTS`); here they are read (`startup`), matched against the
//! claims' selectors (`plan::SqlRoute`, first in `namespace/name` order),
//! and the connection is tagged in both directions with the winner's class,
//! exactly as a proxy's `TagFlow` would, except that a proxy's tag always
//! wins. The tag goes when the kernel reports the connection's FIN or RST,
//! and at the latest after a day (the `TagFlow` maximum).
//!
//! Nothing here can hold a packet: the kernel already let it pass. Every
//! outcome is counted, for the node and for each claim the connection
//! could have belonged to.

pub mod startup;

use std::collections::BTreeMap;

use pisa_daemon_common::{SqlEvent, SQL_EVENT_CLOSE, SQL_EVENT_START, TAG_ORIGIN_SQL};

use crate::{
    kernel::Dataplane,
    plan::SqlRoute,
    spec::ClaimKey,
    tags::{Flow, Tag, TagTable, MAX_TTL_SECONDS},
};
use startup::Start;

/// What became of a connection start (or close): metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Tagged with the class of the claim whose selector matched.
    Identified,
    /// Read, but no claim's selector matches who it is.
    OtherIdentity,
    /// TLS hides who it is (PostgreSQL after 'S', MySQL SSL, direct TLS).
    Tls,
    /// PostgreSQL GSSAPI encryption hides who it is.
    GssEncrypted,
    /// A PostgreSQL SSLRequest: what follows says TLS or clear.
    SslRequested,
    /// The start could not be read (`startup::Rejected`).
    Truncated,
    Malformed,
    Oversized,
    Unknown,
    /// A start to an endpoint no SQL claim covers for this client.
    NoClaim,
    /// The SQL proxy tagged the connection first; its tag stands.
    ProxyTagged,
    /// Already tagged from this start (a node that sees it at two hooks).
    AlreadyTagged,
    /// The kernel refused the tag.
    TagError,
    /// The connection ended; its tag was removed.
    Closed,
}

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Self::Identified,
        Self::OtherIdentity,
        Self::Tls,
        Self::GssEncrypted,
        Self::SslRequested,
        Self::Truncated,
        Self::Malformed,
        Self::Oversized,
        Self::Unknown,
        Self::NoClaim,
        Self::ProxyTagged,
        Self::AlreadyTagged,
        Self::TagError,
        Self::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Identified => "identified",
            Self::OtherIdentity => "other_identity",
            Self::Tls => "tls",
            Self::GssEncrypted => "gss_encrypted",
            Self::SslRequested => "ssl_requested",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::Unknown => "unknown",
            Self::NoClaim => "no_claim",
            Self::ProxyTagged => "proxy_tagged",
            Self::AlreadyTagged => "already_tagged",
            Self::TagError => "tag_error",
            Self::Closed => "closed",
        }
    }

    fn rejected(why: startup::Rejected) -> Self {
        match why {
            startup::Rejected::Truncated => Self::Truncated,
            startup::Rejected::Malformed => Self::Malformed,
            startup::Rejected::Oversized => Self::Oversized,
            startup::Rejected::Unknown => Self::Unknown,
        }
    }
}

/// Counts of outcomes, for the node and per claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityStats {
    pub node: BTreeMap<Outcome, u64>,
    pub claims: BTreeMap<ClaimKey, BTreeMap<Outcome, u64>>,
    /// Nanoseconds from the kernel seeing a start to its tag being in
    /// place, for the last `LATENCY_SAMPLES` identified connections.
    pub latencies_ns: std::collections::VecDeque<u64>,
}

/// A latency summary in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// How many start-to-tag latencies are kept for reports.
pub const LATENCY_SAMPLES: usize = 4096;

impl IdentityStats {
    fn count(&mut self, outcome: Outcome, claims: &[&ClaimKey]) {
        *self.node.entry(outcome).or_default() += 1;
        for claim in claims {
            *self
                .claims
                .entry((*claim).clone())
                .or_default()
                .entry(outcome)
                .or_default() += 1;
        }
    }

    fn latency(&mut self, ns: u64) {
        if self.latencies_ns.len() == LATENCY_SAMPLES {
            self.latencies_ns.pop_front();
        }
        self.latencies_ns.push_back(ns);
    }

    /// Median, p99 and maximum start-to-tag latency in microseconds over
    /// the kept samples; `None` before the first identified connection.
    pub fn latency_us(&self) -> Option<Latency> {
        let mut sorted: Vec<u64> = self.latencies_ns.iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Some(Latency {
            samples: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        })
    }

    /// Drops the counts of claims no longer in force.
    pub fn retain_claims(&mut self, routes: &[SqlRoute]) {
        self.claims
            .retain(|claim, _| routes.iter().any(|r| &r.claim == claim));
    }
}

/// Where an event's consequences go: the tag table and the kernel it
/// writes, and the counters.
pub struct Sink<'a, D: Dataplane + ?Sized> {
    pub tags: &'a mut TagTable,
    pub dp: &'a mut D,
    pub stats: &'a mut IdentityStats,
    /// CLOCK_MONOTONIC in ns (the clock the kernel stamps events with).
    pub clock: &'a dyn Fn() -> u64,
}

/// Handles one event from the kernel; returns its outcome.
pub fn handle<D: Dataplane + ?Sized>(
    event: &SqlEvent,
    routes: &[SqlRoute],
    sink: &mut Sink<'_, D>,
) -> Option<Outcome> {
    let flow = Flow::from_key(&event.flow)?;
    match event.kind {
        SQL_EVENT_CLOSE => close(&flow, sink),
        SQL_EVENT_START => Some(start(event, &flow, routes, sink)),
        _ => None,
    }
}

fn close<D: Dataplane + ?Sized>(flow: &Flow, sink: &mut Sink<'_, D>) -> Option<Outcome> {
    // Only the daemon's own tags: a proxy's tag is the proxy's to remove.
    if sink.tags.get(flow)?.origin != TAG_ORIGIN_SQL {
        return None;
    }
    match sink.tags.untag(sink.dp, flow) {
        Ok(true) => {
            sink.stats.count(Outcome::Closed, &[]);
            Some(Outcome::Closed)
        }
        Ok(false) => None,
        Err(error) => {
            tracing::warn!(%error, ?flow, "could not untag a closed connection");
            sink.stats.count(Outcome::TagError, &[]);
            Some(Outcome::TagError)
        }
    }
}

fn start<D: Dataplane + ?Sized>(
    event: &SqlEvent,
    flow: &Flow,
    routes: &[SqlRoute],
    sink: &mut Sink<'_, D>,
) -> Outcome {
    let stats = &mut *sink.stats;
    let candidates: Vec<&SqlRoute> = routes
        .iter()
        .filter(|r| r.covers(flow.protocol, flow.src.ip(), flow.dst))
        .collect();
    let claims: Vec<&ClaimKey> = candidates.iter().map(|r| &r.claim).collect();
    if candidates.is_empty() {
        stats.count(Outcome::NoClaim, &[]);
        return Outcome::NoClaim;
    }
    let captured = (event.captured as usize).min(event.bytes.len());
    let who = match startup::parse(&event.bytes[..captured]) {
        Ok(Start::Identified(who)) => who,
        Ok(Start::PostgresSslRequest) => {
            stats.count(Outcome::SslRequested, &claims);
            return Outcome::SslRequested;
        }
        Ok(Start::PostgresGssRequest) => {
            stats.count(Outcome::GssEncrypted, &claims);
            return Outcome::GssEncrypted;
        }
        Ok(Start::MysqlSslRequest | Start::TlsClientHello) => {
            stats.count(Outcome::Tls, &claims);
            return Outcome::Tls;
        }
        Err(why) => {
            let outcome = Outcome::rejected(why);
            stats.count(outcome, &claims);
            return outcome;
        }
    };
    let Some(route) = candidates.iter().find(|r| r.selector.matches(&who)) else {
        stats.count(Outcome::OtherIdentity, &claims);
        return Outcome::OtherIdentity;
    };
    match sink.tags.get(flow) {
        Some(tag) if tag.origin != TAG_ORIGIN_SQL => {
            stats.count(Outcome::ProxyTagged, &[&route.claim]);
            return Outcome::ProxyTagged;
        }
        Some(tag) if tag.class_id == route.class_id => {
            stats.count(Outcome::AlreadyTagged, &[]);
            return Outcome::AlreadyTagged;
        }
        _ => {}
    }
    let now_ns = (sink.clock)();
    let tag = Tag {
        class_id: route.class_id,
        origin: TAG_ORIGIN_SQL,
        expires_ns: now_ns + u64::from(MAX_TTL_SECONDS) * 1_000_000_000,
    };
    let outcome = match sink.tags.tag(sink.dp, flow, tag, now_ns) {
        // A full table made room by evicting the tag that lapses soonest;
        // the table counts that, by origin.
        Ok(_) => {
            let tagged_ns = (sink.clock)();
            stats.latency(tagged_ns.saturating_sub(event.seen_ns));
            Outcome::Identified
        }
        Err(error) => {
            tracing::warn!(%error, ?flow, "could not tag an identified connection");
            Outcome::TagError
        }
    };
    stats.count(outcome, &[&route.claim]);
    outcome
}

#[cfg(test)]
mod tests;
