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
