use std::net::SocketAddr;

use pisa_daemon_common::{SqlEvent, SQL_CAPTURE_BYTES, TAG_ORIGIN_PROXY};

use super::*;
use crate::{
    kernel::FakeDataplane,
    model::{Prefix, Protocol, RuleMatch, Side, SqlMatch},
    spec::Direction,
};

const DB: &str = "10.0.0.5:5432";

fn route(name: &str, class_id: u32, users: &[&str], clients: &[&str]) -> SqlRoute {
    SqlRoute {
        claim: ClaimKey::new("db", name),
        class_id,
        endpoints: vec![RuleMatch {
            side: Side::Destination,
            addr: "10.0.0.5".parse().unwrap(),
            prefix_len: 32,
            protocol: Protocol::Tcp,
            port: 5432,
        }],
        clients: clients
            .iter()
            .map(|c| {
                let (addr, len) = c.split_once('/').unwrap();
                Prefix {
                    addr: addr.parse().unwrap(),
                    len: len.parse().unwrap(),
                }
            })
            .collect(),
        selector: SqlMatch {
            users: users.iter().map(|u| u.to_string()).collect(),
            ..SqlMatch::default()
        },
        direction: Direction::Both,
    }
}

fn flow(client: &str) -> Flow {
    Flow {
        protocol: Protocol::Tcp,
        src: client.parse::<SocketAddr>().unwrap(),
        dst: DB.parse().unwrap(),
    }
}

fn event(kind: u32, flow: &Flow, payload: &[u8]) -> SqlEvent {
    let mut bytes = [0u8; SQL_CAPTURE_BYTES];
    let n = payload.len().min(SQL_CAPTURE_BYTES);
    bytes[..n].copy_from_slice(&payload[..n]);
    SqlEvent {
        kind,
        ifindex: 1,
        seen_ns: 1_000,
        payload_len: payload.len() as u32,
        captured: n as u32,
        flow: flow.key(),
        bytes,
    }
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

struct World {
    dp: FakeDataplane,
    tags: TagTable,
    stats: IdentityStats,
}

impl World {
    fn new() -> Self {
        Self {
            dp: FakeDataplane::default(),
            tags: TagTable::new(100),
            stats: IdentityStats::default(),
        }
    }

    fn handle(&mut self, event: &SqlEvent, routes: &[SqlRoute]) -> Option<Outcome> {
        let clock = || 5_000u64;
        let mut sink = Sink {
            tags: &mut self.tags,
            dp: &mut self.dp,
            stats: &mut self.stats,
            clock: &clock,
        };
        handle(event, routes, &mut sink)
    }
}

#[test]
fn the_first_claim_whose_selector_matches_tags_the_connection() {
    let routes = [
        route("a-reports", 7, &["reporter"], &[]),
        route("b-also-reports", 8, &["reporter"], &[]),
    ];
    let mut w = World::new();
    let f = flow("10.1.0.9:40000");
    let outcome = w.handle(&event(SQL_EVENT_START, &f, &startup("reporter")), &routes);
    assert_eq!(outcome, Some(Outcome::Identified));
    let entry = w.dp.flow_tags[&f.key().canonical()];
    assert_eq!((entry.class_id, entry.origin), (7, TAG_ORIGIN_SQL));
    assert_eq!(w.dp.flow_tags.len(), 1);
    assert_eq!(
        w.stats.claims[&ClaimKey::new("db", "a-reports")][&Outcome::Identified],
        1
    );
    assert_eq!(w.stats.latencies_ns.back(), Some(&4_000));
    // Its close removes the tag.
    let closed = w.handle(&event(SQL_EVENT_CLOSE, &f.reversed(), &[]), &routes);
    assert_eq!(closed, Some(Outcome::Closed));
    assert!(w.dp.flow_tags.is_empty());
}

#[test]
fn another_identity_tls_and_garbage_stay_untagged_and_are_counted() {
    let routes = [route("reports", 7, &["reporter"], &[])];
    let mut w = World::new();
    let cases: [(&[u8], Outcome); 4] = [
        (&startup("orders"), Outcome::OtherIdentity),
        (&[0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F], Outcome::SslRequested),
        (
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01],
            Outcome::Tls,
        ),
        (b"GET / HTTP/1.1\r\n", Outcome::Unknown),
    ];
    for (port, (payload, expected)) in cases.iter().enumerate() {
        let f = flow(&format!("10.1.0.9:{}", 40_000 + port));
        assert_eq!(
            w.handle(&event(SQL_EVENT_START, &f, payload), &routes),
            Some(*expected)
        );
    }
    assert!(w.dp.flow_tags.is_empty());
    let counts = &w.stats.claims[&ClaimKey::new("db", "reports")];
    assert_eq!(counts[&Outcome::Tls], 1);
    assert_eq!(counts[&Outcome::OtherIdentity], 1);
}

#[test]
fn client_networks_narrow_a_route_and_a_proxy_tag_is_never_replaced() {
    let routes = [route("reports", 7, &["reporter"], &["10.2.0.0/16"])];
    let mut w = World::new();
    let outside = flow("10.1.0.9:40000");
    assert_eq!(
        w.handle(
            &event(SQL_EVENT_START, &outside, &startup("reporter")),
            &routes
        ),
        Some(Outcome::NoClaim)
    );
    let inside = flow("10.2.0.9:40000");
    let proxy = Tag {
        class_id: 3,
        origin: TAG_ORIGIN_PROXY,
        expires_ns: 0,
    };
    w.tags.tag(&mut w.dp, &inside, proxy, 0).unwrap();
    assert_eq!(
        w.handle(
            &event(SQL_EVENT_START, &inside, &startup("reporter")),
            &routes
        ),
        Some(Outcome::ProxyTagged)
    );
    assert_eq!(w.dp.flow_tags[&inside.key().canonical()].class_id, 3);
    // The proxy's tag is not the daemon's to remove on close either.
    assert_eq!(
        w.handle(&event(SQL_EVENT_CLOSE, &inside, &[]), &routes),
        None
    );
    assert_eq!(w.dp.flow_tags.len(), 1);
}

#[test]
fn a_full_table_makes_room_by_evicting_the_tag_that_lapses_soonest() {
    let routes = [route("reports", 7, &["reporter"], &[])];
    let mut w = World::new();
    w.tags = TagTable::new(1);
    let first = flow("10.1.0.9:40000");
    let second = flow("10.1.0.9:40001");
    assert_eq!(
        w.handle(
            &event(SQL_EVENT_START, &first, &startup("reporter")),
            &routes
        ),
        Some(Outcome::Identified)
    );
    assert_eq!(
        w.handle(
            &event(SQL_EVENT_START, &second, &startup("reporter")),
            &routes
        ),
        Some(Outcome::Identified)
    );
    assert!(w.tags.get(&first).is_none());
    assert_eq!(w.tags.get(&second).map(|t| t.class_id), Some(7));
    assert_eq!(w.tags.evictions().sql, 1);
    assert_eq!(w.dp.flow_tags.len(), 1);
}
