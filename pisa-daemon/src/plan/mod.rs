//! Desired claims -> kernel plan (classes with stable ids, endpoint
//! rules). Pure: no I/O, table-tested.

use std::collections::BTreeMap;

use pisa_daemon_common::MAX_CLASSES;

use crate::{
    model::{default_burst, ClassSpec, RuleMatch},
    spec::{ClaimKey, ValidClaim},
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
    pub rules: BTreeMap<RuleMatch, u32>,
    pub ids: BTreeMap<ClaimKey, u32>,
}

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
        let burst = claim
            .burst_bytes
            .map(|b| b.min(u64::from(u32::MAX)) as u32)
            .unwrap_or_else(|| default_burst(claim.rate_bytes));
        out.classes.insert(
            class_id,
            PlannedClass {
                claim: key.clone(),
                spec: ClassSpec {
                    class_id,
                    mode: claim.mode,
                    rate_bytes: claim.rate_bytes,
                    ceil_bytes: claim.ceil_bytes,
                    burst_bytes: burst,
                    priority: claim.priority.htb_prio(),
                    horizon_ns: EDT_HORIZON_NS,
                    claim_hash: key.hash(),
                },
            },
        );
        for rule in &claim.rules {
            out.rules.insert(*rule, class_id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Protocol, ShapingMode, Side},
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
        assert!(p.rules.values().all(|v| *v == id));
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
}
