//! Desired claims -> kernel plan (classes with stable ids, endpoint
//! rules, client prefixes, SQL routes). Pure: no I/O, table-tested.
//!
//! Precedence, most specific first: a proxy's flow tag, then SQL identity
//! (a tag the daemon writes from the connection's start), then a client
//! selector (the longest client prefix), then the endpoint alone (the
//! longest endpoint prefix, exact port before any port). Ties between
//! claims of one kind go to the first in `namespace/name` order.

use std::collections::BTreeMap;

use pisa_daemon_common::MAX_CLASSES;

use crate::{
    model::{default_burst, ClassSpec, ClientPrefix, Prefix, RuleMatch, RuleTarget, SqlMatch},
    spec::{ClaimKey, Direction, ValidClaim},
};

/// EDT drop horizon: packets that would wait longer than this are dropped
/// rather than queued (Cilium uses the same 2 s bound).
pub const EDT_HORIZON_NS: u64 = 2_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedClass {
    pub claim: ClaimKey,
    pub spec: ClassSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub classes: BTreeMap<u32, PlannedClass>,
    pub rules: BTreeMap<RuleMatch, RuleTarget>,
    pub clients: BTreeMap<ClientPrefix, u32>,
    /// Claims that select by SQL identity, in `namespace/name` order (the
    /// first that matches a connection wins).
    pub sql: Vec<SqlRoute>,
    pub ids: BTreeMap<ClaimKey, u32>,
    /// Client prefixes each claim put in force on this node.
    pub client_counts: BTreeMap<ClaimKey, usize>,
}

/// What a connection must show to be tagged with a claim's class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlRoute {
    pub claim: ClaimKey,
    pub class_id: u32,
    /// Request-side rules of the claim's endpoints.
    pub endpoints: Vec<RuleMatch>,
    /// Client networks; empty: any client.
    pub clients: Vec<Prefix>,
    pub selector: SqlMatch,
    /// Which directions of the connection the tag covers.
    pub direction: Direction,
}

impl SqlRoute {
    /// Whether a connection from `client` to `server` on `protocol` is one
    /// of this route's endpoints and clients.
    pub fn covers(
        &self,
        protocol: crate::model::Protocol,
        client: std::net::IpAddr,
        server: std::net::SocketAddr,
    ) -> bool {
        let endpoint = self.endpoints.iter().any(|rule| {
            rule.protocol == protocol
                && (rule.port == 0 || rule.port == server.port())
                && Prefix {
                    addr: rule.addr,
                    len: rule.prefix_len,
                }
                .contains(server.ip())
        });
        endpoint && (self.clients.is_empty() || self.clients.iter().any(|p| p.contains(client)))
    }
}

/// Client prefixes of the first `u16::MAX` shared rules have ids; that is
/// also the most shared endpoints one node can hold.
pub const MAX_SHARED_RULES: usize = u16::MAX as usize;

/// The id a claim gets when nothing else holds it: a pure function of
/// `namespace/name`, so every node agrees.
pub fn preferred_id(key: &ClaimKey) -> u32 {
    1 + (key.hash() % u64::from(MAX_CLASSES - 1)) as u32
}

/// Gives every claim an id. A claim keeps the id it already has in the
/// kernel (found by its hash), so adding a colliding claim never moves an
/// existing class; new claims take their preferred id or the next free one.
pub fn assign_ids<'a>(
    claims: impl Iterator<Item = &'a ClaimKey>,
    existing: &BTreeMap<u32, ClassSpec>,
) -> BTreeMap<ClaimKey, u32> {
    let mut by_hash: BTreeMap<u64, u32> = BTreeMap::new();
    for (id, class) in existing {
        by_hash.entry(class.claim_hash).or_insert(*id);
    }
    let claims: Vec<&ClaimKey> = claims.collect();
    let mut taken = std::collections::BTreeSet::new();
    let mut ids = BTreeMap::new();
    for key in &claims {
        if let Some(id) = by_hash.get(&key.hash()) {
            if taken.insert(*id) {
                ids.insert((*key).clone(), *id);
            }
        }
    }
    for key in claims {
        if ids.contains_key(key) {
            continue;
        }
        let mut id = preferred_id(key);
        while taken.contains(&id) {
            id = if id + 1 >= MAX_CLASSES { 1 } else { id + 1 };
        }
        taken.insert(id);
        ids.insert(key.clone(), id);
    }
    ids
}

pub fn plan(claims: &BTreeMap<ClaimKey, ValidClaim>, existing: &BTreeMap<u32, ClassSpec>) -> Plan {
    let ids = assign_ids(claims.keys(), existing);
    let mut out = Plan {
        ids: ids.clone(),
        ..Plan::default()
    };
    for (key, claim) in claims {
        let class_id = ids[key];
        out.classes.insert(
            class_id,
            PlannedClass {
                claim: key.clone(),
                spec: class_spec(key, claim, class_id),
            },
        );
        if claim.is_plain() {
            for rule in &claim.rules {
                out.rules.insert(*rule, RuleTarget::class(class_id));
            }
        }
    }
    share_rules(claims, &ids, &mut out);
    // Kept until the next full reconcile: packed (model::packed).
    out.classes = crate::model::packed(out.classes);
    out.rules = crate::model::packed(out.rules);
    out.ids = crate::model::packed(out.ids);
    out
}

/// The class a claim gets under `class_id`.
pub fn class_spec(key: &ClaimKey, claim: &ValidClaim, class_id: u32) -> ClassSpec {
    let burst = claim
        .burst_bytes
        .map(|b| b.min(u64::from(u32::MAX)) as u32)
        .unwrap_or_else(|| default_burst(claim.rate_bytes));
    ClassSpec {
        class_id,
        mode: claim.mode,
        rate_bytes: claim.rate_bytes,
        ceil_bytes: claim.ceil_bytes,
        burst_bytes: burst,
        priority: claim.priority.htb_prio(),
        horizon_ns: EDT_HORIZON_NS,
        claim_hash: key.hash(),
    }
}

/// Adds what claims with selectors need: their rules (flagged, pointing at
/// the class less specific rules would give), client prefixes under rule
/// ids, and SQL routes.
fn share_rules(
    claims: &BTreeMap<ClaimKey, ValidClaim>,
    ids: &BTreeMap<ClaimKey, u32>,
    out: &mut Plan,
) {
    let plain = out.rules.clone();
    let mut prefixes: BTreeMap<RuleMatch, BTreeMap<Prefix, u32>> = BTreeMap::new();
    for (key, claim) in claims.iter().filter(|(_, c)| !c.is_plain()) {
        let class_id = ids[key];
        if let Some(selector) = &claim.sql {
            let endpoints = claim.request_rules();
            for rule in &endpoints {
                shared(out, &plain, rule).sql = true;
            }
            out.sql.push(SqlRoute {
                claim: key.clone(),
                class_id,
                endpoints,
                clients: claim.clients.clone(),
                selector: (**selector).clone(),
                direction: claim.direction,
            });
            continue;
        }
        for rule in &claim.rules {
            shared(out, &plain, rule);
            let by_prefix = prefixes.entry(*rule).or_default();
            for client in claim
                .clients
                .iter()
                .filter(|c| c.addr.is_ipv4() == rule.addr.is_ipv4())
            {
                // Claims come in namespace/name order: the first keeps a tie.
                by_prefix.entry(*client).or_insert(class_id);
            }
        }
    }
    let mut in_force: BTreeMap<u32, std::collections::BTreeSet<Prefix>> = BTreeMap::new();
    for (index, (rule, by_prefix)) in prefixes.into_iter().take(MAX_SHARED_RULES).enumerate() {
        let rule_id = (index + 1) as u16;
        let target = shared(out, &plain, &rule);
        target.clients = true;
        target.rule_id = rule_id;
        for (client, class_id) in by_prefix {
            in_force.entry(class_id).or_default().insert(client);
            out.clients
                .insert(ClientPrefix { rule_id, client }, class_id);
        }
    }
    // Distinct prefixes a claim won on any of its rules (both directions
    // of one endpoint hold the same prefix twice).
    for (key, claim) in claims.iter().filter(|(_, c)| c.selects_clients()) {
        if claim.sql.is_none() {
            let won = in_force.get(&ids[key]).map_or(0, |p| p.len());
            out.client_counts.insert(key.clone(), won);
        }
    }
}

/// The rule's target, created if only selector claims have it: it then
/// points at the class the best less specific plain rule gives, so that
/// clients no selector picks are shaped as if the rule were not there.
fn shared<'a>(
    out: &'a mut Plan,
    plain: &BTreeMap<RuleMatch, RuleTarget>,
    rule: &RuleMatch,
) -> &'a mut RuleTarget {
    out.rules
        .entry(*rule)
        .or_insert_with(|| RuleTarget::class(fallback_class(plain, rule)))
}

/// The class of the most specific plain rule that covers every packet
/// `rule` matches (same side, protocol and family; a prefix containing its
/// prefix; the same port or any port), or 0.
pub fn fallback_class(plain: &BTreeMap<RuleMatch, RuleTarget>, rule: &RuleMatch) -> u32 {
    let inner = Prefix {
        addr: rule.addr,
        len: rule.prefix_len,
    };
    plain
        .iter()
        .filter(|(p, _)| {
            p.side == rule.side
                && p.protocol == rule.protocol
                && (p.port == 0 || p.port == rule.port)
                && Prefix {
                    addr: p.addr,
                    len: p.prefix_len,
                }
                .covers(&inner)
        })
        .max_by_key(|(p, _)| u32::from(p.prefix_len) * 2 + u32::from(p.port != 0))
        .map_or(0, |(_, t)| t.class_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Protocol, ShapingMode, Side, SqlMatch},
        spec::{Direction, Priority},
    };

    fn claim(ns: &str, name: &str, rate: u64, hosts: &[&str]) -> ValidClaim {
        ValidClaim {
            key: ClaimKey::new(ns, name),
            origin: "t#1".into(),
            generation: None,
            binding: name.into(),
            rate_bytes: rate,
            ceil_bytes: rate * 2,
            burst_bytes: None,
            priority: Priority::Guaranteed,
            direction: Direction::To,
            mode: ShapingMode::Htb,
            rules: hosts
                .iter()
                .map(|h| RuleMatch {
                    side: Side::Destination,
                    addr: h.parse().unwrap(),
                    prefix_len: 32,
                    protocol: Protocol::Tcp,
                    port: 3306,
                })
                .collect(),
            clients: Vec::new(),
            pod_clients: Vec::new(),
            sql: None,
        }
    }

    fn claims(list: Vec<ValidClaim>) -> BTreeMap<ClaimKey, ValidClaim> {
        list.into_iter().map(|c| (c.key.clone(), c)).collect()
    }

    #[test]
    fn ids_are_deterministic_and_independent_of_other_claims() {
        let a = claims(vec![claim("shop", "catalogue", 1000, &["10.0.0.1"])]);
        let b = claims(vec![
            claim("shop", "catalogue", 1000, &["10.0.0.1"]),
            claim("shop", "orders", 1000, &["10.0.0.2"]),
        ]);
        let key = ClaimKey::new("shop", "catalogue");
        let id_alone = plan(&a, &BTreeMap::new()).ids[&key];
        let id_with_others = plan(&b, &BTreeMap::new()).ids[&key];
        assert_eq!(id_alone, id_with_others);
        assert_eq!(id_alone, preferred_id(&key));
        assert!((1..MAX_CLASSES).contains(&id_alone));
    }

    #[test]
    fn an_existing_class_keeps_its_id_even_when_a_new_claim_prefers_it() {
        let old = ClaimKey::new("a", "old");
        let new = ClaimKey::new("a", "new");
        // The kernel holds `old` at the id `new` would prefer.
        let contested = preferred_id(&new);
        let existing = BTreeMap::from([(
            contested,
            ClassSpec {
                class_id: contested,
                mode: ShapingMode::Htb,
                rate_bytes: 1,
                ceil_bytes: 1,
                burst_bytes: 1,
                priority: 0,
                horizon_ns: 0,
                claim_hash: old.hash(),
            },
        )]);
        let ids = assign_ids([&new, &old].into_iter(), &existing);
        assert_eq!(ids[&old], contested, "the adopted class keeps its id");
        assert_ne!(ids[&new], contested, "the newcomer probes onwards");
    }

    #[test]
    fn plan_maps_claims_to_classes_and_rules() {
        let c = claims(vec![claim(
            "shop",
            "catalogue",
            1_250_000,
            &["10.0.0.5", "10.0.0.6"],
        )]);
        let p = plan(&c, &BTreeMap::new());
        let id = p.ids[&ClaimKey::new("shop", "catalogue")];
        let class = &p.classes[&id].spec;
        assert_eq!(class.rate_bytes, 1_250_000);
        assert_eq!(class.ceil_bytes, 2_500_000);
        assert_eq!(class.burst_bytes, 65_536, "default burst floor");
        assert_eq!(class.priority, 0);
        assert_eq!(class.claim_hash, ClaimKey::new("shop", "catalogue").hash());
        assert_eq!(p.rules.len(), 2);
        assert!(p.rules.values().all(|v| *v == RuleTarget::class(id)));
    }

    #[test]
    fn ids_are_unique_for_many_claims() {
        let many: Vec<ValidClaim> = (0..5000)
            .map(|i| claim("ns", &format!("c{i}"), 1000, &[]))
            .collect();
        let p = plan(&claims(many), &BTreeMap::new());
        let unique: std::collections::BTreeSet<u32> = p.ids.values().copied().collect();
        assert_eq!(unique.len(), 5000);
        assert!(unique.iter().all(|id| (1..MAX_CLASSES).contains(id)));
    }

    fn prefix(text: &str) -> Prefix {
        let (addr, len) = text.split_once('/').unwrap();
        Prefix {
            addr: addr.parse().unwrap(),
            len: len.parse().unwrap(),
        }
    }

    #[test]
    fn client_selectors_share_an_endpoint_under_one_rule_id() {
        let mut orders = claim("db", "orders", 1000, &["10.0.0.5"]);
        orders.clients = vec![prefix("10.1.0.0/16")];
        let mut reports = claim("db", "reports", 1000, &["10.0.0.5"]);
        reports.clients = vec![prefix("10.2.0.0/16"), prefix("10.1.7.0/24")];
        // Same prefix as orders, later in namespace/name order: loses the tie.
        let mut zed = claim("db", "zed", 1000, &["10.0.0.5"]);
        zed.clients = vec![prefix("10.1.0.0/16")];
        let p = plan(&claims(vec![orders, reports, zed]), &BTreeMap::new());
        let id = |name: &str| p.ids[&ClaimKey::new("db", name)];
        assert_eq!(p.rules.len(), 1);
        let target = p.rules.values().next().unwrap();
        assert!(target.clients && !target.sql);
        assert_eq!(target.rule_id, 1);
        assert_eq!(target.class_id, 0, "no claim covers every client");
        let by_prefix: BTreeMap<Prefix, u32> =
            p.clients.iter().map(|(c, id)| (c.client, *id)).collect();
        assert_eq!(by_prefix[&prefix("10.1.0.0/16")], id("orders"));
        assert_eq!(by_prefix[&prefix("10.1.7.0/24")], id("reports"));
        assert_eq!(by_prefix[&prefix("10.2.0.0/16")], id("reports"));
        assert_eq!(p.client_counts[&ClaimKey::new("db", "reports")], 2);
        assert_eq!(
            p.client_counts[&ClaimKey::new("db", "zed")],
            0,
            "lost the tie"
        );
    }

    #[test]
    fn unselected_clients_fall_back_to_the_best_plain_rule_that_covers_the_endpoint() {
        let mut wide = claim("db", "subnet", 1000, &[]);
        wide.rules = vec![RuleMatch {
            side: Side::Destination,
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 24,
            protocol: Protocol::Tcp,
            port: 0,
        }];
        let mut reports = claim("db", "reports", 1000, &["10.0.0.5"]);
        reports.sql = Some(Box::new(SqlMatch {
            users: vec!["reporter".into()],
            ..SqlMatch::default()
        }));
        let p = plan(&claims(vec![wide, reports]), &BTreeMap::new());
        let host_rule = p
            .rules
            .iter()
            .find(|(r, _)| r.prefix_len == 32)
            .map(|(_, t)| *t)
            .unwrap();
        assert!(host_rule.sql && !host_rule.clients);
        assert_eq!(host_rule.class_id, p.ids[&ClaimKey::new("db", "subnet")]);
        assert_eq!(p.sql.len(), 1);
        assert_eq!(p.sql[0].class_id, p.ids[&ClaimKey::new("db", "reports")]);
        assert!(p.sql[0].covers(
            Protocol::Tcp,
            "10.9.9.9".parse().unwrap(),
            "10.0.0.5:3306".parse().unwrap()
        ));
        assert!(!p.sql[0].covers(
            Protocol::Tcp,
            "10.9.9.9".parse().unwrap(),
            "10.0.0.6:3306".parse().unwrap()
        ));
    }

    #[test]
    fn a_sql_claim_beside_the_endpoint_owner_flags_the_owner_rule() {
        let orders = claim("db", "orders", 1000, &["10.0.0.5"]);
        let mut reports = claim("db", "reports", 1000, &["10.0.0.5"]);
        reports.sql = Some(Box::new(SqlMatch {
            users: vec!["reporter".into()],
            ..SqlMatch::default()
        }));
        let p = plan(&claims(vec![orders, reports]), &BTreeMap::new());
        let target = p.rules.values().next().unwrap();
        assert_eq!(p.rules.len(), 1);
        assert_eq!(target.class_id, p.ids[&ClaimKey::new("db", "orders")]);
        assert!(target.sql);
    }
}
