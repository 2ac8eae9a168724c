//! Selectors of different claims that can match the same connection on a
//! shared endpoint: two client networks that overlap, or two SQL selectors
//! some identity satisfies both. Not errors (precedence decides: the
//! longer client prefix, then the first claim in `namespace/name` order),
//! but both claims name each other in their status, and `validate` prints
//! them, so an overlap is never a surprise.

use std::collections::BTreeMap;

use super::{ClaimKey, ValidClaim};
use crate::model::{RuleMatch, SqlMatch};

/// For each claim, one line per other claim its selectors overlap with.
pub fn overlaps(claims: &BTreeMap<ClaimKey, ValidClaim>) -> BTreeMap<ClaimKey, Vec<String>> {
    let mut by_rule: BTreeMap<RuleMatch, Vec<&ValidClaim>> = BTreeMap::new();
    for claim in claims.values().filter(|c| !c.is_plain()) {
        for rule in claim.request_rules() {
            by_rule.entry(rule).or_default().push(claim);
        }
    }
    let mut out: BTreeMap<ClaimKey, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for group in by_rule.values() {
        for (i, first) in group.iter().enumerate() {
            for second in &group[i + 1..] {
                if !seen.insert((first.key.clone(), second.key.clone())) {
                    continue;
                }
                let Some(what) = overlap(first, second) else {
                    continue;
                };
                let (a, b) = (&first.key, &second.key);
                out.entry(a.clone()).or_default().push(format!(
                    "overlaps claim {b} ({what}); on a tie {a} wins (namespace/name order)"
                ));
                out.entry(b.clone()).or_default().push(format!(
                    "overlaps claim {a} ({what}); on a tie {a} wins (namespace/name order)"
                ));
            }
        }
    }
    out
}

/// How two claims on one endpoint can both match a connection, if they can.
fn overlap(a: &ValidClaim, b: &ValidClaim) -> Option<String> {
    match (&a.sql, &b.sql) {
        (Some(x), Some(y)) => {
            if !sql_can_overlap(x, y) || !clients_can_overlap(a, b) {
                return None;
            }
            Some(if x == y {
                "the same SQL selector".into()
            } else {
                "SQL selectors some connection can satisfy both".into()
            })
        }
        // SQL identity outranks a client selector: no tie to break.
        (Some(_), None) | (None, Some(_)) => None,
        (None, None) => {
            let pair = a.clients.iter().find_map(|x| {
                b.clients
                    .iter()
                    .find(|y| x.covers(y) || y.covers(x))
                    .map(|y| (x, y))
            })?;
            Some(format!("client networks {} and {}", pair.0, pair.1))
        }
    }
}

fn clients_can_overlap(a: &ValidClaim, b: &ValidClaim) -> bool {
    if a.clients.is_empty() || b.clients.is_empty() {
        return true;
    }
    a.clients
        .iter()
        .any(|x| b.clients.iter().any(|y| x.covers(y) || y.covers(x)))
}

/// Each field either unconstrained on one side or sharing a value.
fn sql_can_overlap(a: &SqlMatch, b: &SqlMatch) -> bool {
    let field = |x: &[String], y: &[String]| {
        x.is_empty() || y.is_empty() || x.iter().any(|v| y.contains(v))
    };
    field(&a.users, &b.users)
        && field(&a.databases, &b.databases)
        && field(&a.applications, &b.applications)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load_documents, validate, Limits};

    fn claims(extra: &[(&str, &str)]) -> BTreeMap<ClaimKey, ValidClaim> {
        let yaml: String = extra
            .iter()
            .map(|(name, selector)| {
                format!(
                    "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
                     metadata: {{name: {name}, namespace: db}}\nspec:\n  trafficQoS:\n    \
                     name: {name}\n    qos_group: {{rate: 1mbit}}\n    \
                     endpoints: [{{host: 10.0.0.5, port: 5432}}]\n    {selector}\n---\n"
                )
            })
            .collect();
        let limits = Limits {
            max_classes: 10,
            edt_available: false,
            pod_selectors: false,
        };
        let validated = validate(&load_documents("t", &yaml).unwrap(), limits);
        assert!(validated.invalid.is_empty(), "{:?}", validated.errors());
        validated.valid
    }

    #[test]
    fn overlapping_client_networks_and_sql_selectors_name_both_claims() {
        let found = overlaps(&claims(&[
            ("a", "clients: [{cidr: 10.1.0.0/16}]"),
            ("b", "clients: [{cidr: 10.1.2.0/24}]"),
            ("c", "clients: [{cidr: 10.9.0.0/16}]"),
            ("d", "sql: {users: [reporter]}"),
            ("e", "sql: {users: [reporter]}"),
            ("f", "sql: {users: [orders]}"),
        ]));
        let named = |claim: &str| found.get(&ClaimKey::new("db", claim)).cloned();
        let a = named("a").expect("a overlaps b");
        assert!(
            a[0].contains("db/b") && a[0].contains("10.1.0.0/16 and 10.1.2.0/24"),
            "{a:?}"
        );
        assert!(named("b").unwrap()[0].contains("db/a"));
        assert!(named("c").is_none(), "a disjoint network overlaps nothing");
        let d = named("d").expect("d overlaps e");
        assert!(
            d[0].contains("the same SQL selector") && d[0].contains("db/d wins"),
            "{d:?}"
        );
        assert!(named("f").is_none(), "another user overlaps nothing");
    }
}
