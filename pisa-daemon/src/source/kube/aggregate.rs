//! A claim's status from the nodes' reports: how many nodes enforce its
//! current generation, how many rejected it, how many are not there yet,
//! and the `Ready` and `Degraded` conditions. Pure: the aggregator loop
//! (`aggregator`) reads the reports and writes what this computes.

use std::collections::BTreeMap;

use crate::spec::{ClaimCondition, ClaimKey, NodePhase, QoSClaimStatus, QoSNodeReportSpec};

/// The `Degraded` message names this many failing nodes and counts the rest.
const NAMED_FAILING_NODES: usize = 5;

/// The nodes' view of one claim at its current generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub applied: u32,
    pub failed: u32,
    pub pending: u32,
    /// Failing nodes, sorted.
    pub failing_nodes: Vec<String>,
}

impl Tally {
    pub fn reporting(&self) -> u32 {
        self.applied + self.failed + self.pending
    }
}

/// Tallies every report entry against its claim's current generation
/// (`claims`: key → metadata.generation). An entry for an older generation
/// counts as pending whatever its phase: that node has not caught up. An
/// entry for a claim not in `claims` is ignored. One pass over the entries.
pub fn tally<'a>(
    claims: &BTreeMap<ClaimKey, Option<i64>>,
    reports: impl IntoIterator<Item = &'a QoSNodeReportSpec>,
) -> BTreeMap<ClaimKey, Tally> {
    let by_text: BTreeMap<String, (&ClaimKey, Option<i64>)> = claims
        .iter()
        .map(|(key, generation)| (key.to_string(), (key, *generation)))
        .collect();
    let mut tallies: BTreeMap<ClaimKey, Tally> = claims
        .keys()
        .map(|key| (key.clone(), Tally::default()))
        .collect();
    for report in reports {
        for entry in &report.claims {
            let Some((key, generation)) = by_text.get(&entry.claim) else {
                continue;
            };
            let Some(tally) = tallies.get_mut(*key) else {
                continue;
            };
            match (entry.generation == *generation, entry.phase) {
                (true, NodePhase::Applied) => tally.applied += 1,
                (true, NodePhase::Invalid) => {
                    tally.failed += 1;
                    tally.failing_nodes.push(report.node.clone());
                }
                (true, NodePhase::Pending) | (false, _) => tally.pending += 1,
            }
        }
    }
    for tally in tallies.values_mut() {
        tally.failing_nodes.sort();
    }
    tallies
}

/// The claim's status for `tally`, keeping each condition's transition
/// time from `previous` where its status did not change.
pub fn claim_status(
    generation: Option<i64>,
    tally: &Tally,
    previous: Option<&QoSClaimStatus>,
    now: &str,
) -> QoSClaimStatus {
    let reporting = tally.reporting();
    let described = match generation {
        Some(generation) => format!("generation {generation}"),
        None => "the claim".to_owned(),
    };
    let ready = if reporting == 0 {
        (
            "False",
            "NoNodeReports",
            "no node reports the claim yet".to_owned(),
        )
    } else if tally.applied == reporting {
        (
            "True",
            "AllNodesApplied",
            format!("{reporting} of {reporting} nodes enforce {described}"),
        )
    } else {
        (
            "False",
            if tally.failed > 0 {
                "NodesFailed"
            } else {
                "NodesPending"
            },
            format!(
                "{} of {reporting} nodes enforce {described}; {} failed, {} pending",
                tally.applied, tally.failed, tally.pending
            ),
        )
    };
    let degraded = if tally.failed == 0 {
        ("False", "NoNodeRejected", String::new())
    } else {
        ("True", "NodesRejected", failing_message(tally))
    };
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        let last = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone());
        ClaimCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: last.unwrap_or_else(|| now.to_owned()),
        }
    };
    QoSClaimStatus {
        observed_generation: generation,
        nodes_applied: Some(tally.applied),
        nodes_failed: Some(tally.failed),
        nodes_pending: Some(tally.pending),
        nodes_reporting: Some(reporting),
        conditions: vec![condition("Ready", ready), condition("Degraded", degraded)],
        nodes: Vec::new(),
    }
}

fn failing_message(tally: &Tally) -> String {
    let named = tally
        .failing_nodes
        .iter()
        .take(NAMED_FAILING_NODES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let rest = tally
        .failing_nodes
        .len()
        .saturating_sub(NAMED_FAILING_NODES);
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    format!(
        "rejected on {named}{more}: see their QoSNodeReports (kubectl get qnr -n <daemon namespace>)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ReportCounts, ReportedClaim};

    fn report(node: &str, entries: &[(&str, i64, NodePhase)]) -> QoSNodeReportSpec {
        QoSNodeReportSpec {
            node: node.into(),
            counts: ReportCounts::default(),
            claims: entries
                .iter()
                .map(|(claim, generation, phase)| ReportedClaim {
                    claim: (*claim).into(),
                    generation: Some(*generation),
                    phase: *phase,
                    message: String::new(),
                })
                .collect(),
        }
    }

    fn claims() -> BTreeMap<ClaimKey, Option<i64>> {
        BTreeMap::from([
            (ClaimKey::new("shop", "orders"), Some(3)),
            (ClaimKey::new("shop", "reports"), Some(1)),
        ])
    }

    #[test]
    fn entries_count_at_the_current_generation_and_older_ones_are_pending() {
        use NodePhase::*;
        let reports = [
            report(
                "n1",
                &[("shop/orders", 3, Applied), ("shop/reports", 1, Applied)],
            ),
            report(
                "n2",
                &[("shop/orders", 2, Applied), ("shop/reports", 1, Invalid)],
            ),
            report(
                "n3",
                &[("shop/orders", 3, Invalid), ("shop/gone", 1, Applied)],
            ),
            report("n4", &[("shop/orders", 3, Pending)]),
        ];
        let tallies = tally(&claims(), &reports);
        let orders = &tallies[&ClaimKey::new("shop", "orders")];
        assert_eq!(
            (
                orders.applied,
                orders.failed,
                orders.pending,
                orders.reporting()
            ),
            (1, 1, 2, 4)
        );
        assert_eq!(orders.failing_nodes, ["n3"]);
        let reports_claim = &tallies[&ClaimKey::new("shop", "reports")];
        assert_eq!(
            (
                reports_claim.applied,
                reports_claim.failed,
                reports_claim.reporting()
            ),
            (1, 1, 2)
        );
        assert_eq!(tallies.len(), 2, "a claim no longer listed is not tallied");
    }

    #[test]
    fn ready_when_every_reporting_node_applied_and_transition_times_are_kept() {
        let all = Tally {
            applied: 3,
            ..Tally::default()
        };
        let first = claim_status(Some(3), &all, None, "2026-12-03T10:00:00Z");
        assert_eq!(first.nodes_applied, Some(3));
        assert_eq!(first.nodes_reporting, Some(3));
        assert_eq!(first.conditions[0].type_, "Ready");
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(
            first.conditions[0].message,
            "3 of 3 nodes enforce generation 3"
        );
        assert_eq!(first.conditions[1].status, "False");

        // Same status later: the transition time stays.
        let again = claim_status(Some(3), &all, Some(&first), "2026-12-03T10:05:00Z");
        assert_eq!(again, first);

        // One node rejects it: Ready flips (new time), Degraded flips.
        let one_failed = Tally {
            applied: 2,
            failed: 1,
            pending: 0,
            failing_nodes: vec!["n9".into()],
        };
        let later = claim_status(Some(3), &one_failed, Some(&first), "2026-12-03T10:06:00Z");
        assert_eq!(later.conditions[0].status, "False");
        assert_eq!(later.conditions[0].reason, "NodesFailed");
        assert_eq!(
            later.conditions[0].last_transition_time,
            "2026-12-03T10:06:00Z"
        );
        assert_eq!(
            later.conditions[0].message,
            "2 of 3 nodes enforce generation 3; 1 failed, 0 pending"
        );
        assert_eq!(later.conditions[1].status, "True");
        assert!(later.conditions[1].message.starts_with("rejected on n9: "));
    }

    #[test]
    fn degraded_names_five_failing_nodes_and_counts_the_rest() {
        let failing_nodes: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let tally = Tally {
            applied: 0,
            failed: 8,
            pending: 0,
            failing_nodes,
        };
        let status = claim_status(Some(1), &tally, None, "t");
        assert!(
            status.conditions[1]
                .message
                .starts_with("rejected on n0, n1, n2, n3, n4 and 3 more: "),
            "{}",
            status.conditions[1].message
        );
    }

    #[test]
    fn no_reports_is_not_ready() {
        let status = claim_status(Some(1), &Tally::default(), None, "t");
        assert_eq!(status.conditions[0].reason, "NoNodeReports");
        assert_eq!(status.nodes_reporting, Some(0));
    }
}
