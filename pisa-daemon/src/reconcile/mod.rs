//! Plan vs kernel -> the minimal operations, applied in a safe order.
//! Level-triggered: the same plan against the same kernel yields no
//! operations, so running it again is always harmless.

pub mod agent;
mod edits;
pub mod held;

use std::collections::BTreeSet;

use crate::{
    kernel::{ClassSpec, ClientPrefix, Dataplane, KernelError, RuleMatch, RuleTarget},
    plan::Plan,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Attach(String),
    /// Create, or change in place (`tc class change`): never delete+add.
    PutClass(ClassSpec),
    PutClient(ClientPrefix, u32),
    PutRule(RuleMatch, RuleTarget),
    DeleteRule(RuleMatch),
    DeleteClient(ClientPrefix),
    DeleteClass(u32),
    Detach(String),
    /// What the dataplane defers to the end of a batch (`Dataplane::flush`):
    /// `apply` runs it after every batch; `diff` never plans it.
    Flush,
}

/// Operations that turn `dp`'s state into `plan` on `ifaces`. Ordered so
/// packets never meet a half-built state: new interfaces and classes
/// before the client prefixes and rules that point at them; stale rules
/// before the client prefixes under them, and both before their class.
pub fn diff<D: Dataplane + ?Sized>(plan: &Plan, dp: &D, ifaces: &BTreeSet<String>) -> Vec<Op> {
    let attached = dp.interfaces();
    // Interfaces no longer wanted go first: one that vanished with its Pod
    // must not hold up class changes on the others, and detaching never
    // affects packets elsewhere.
    let mut ops: Vec<Op> = attached
        .difference(ifaces)
        .map(|iface| Op::Detach(iface.clone()))
        .collect();
    ops.extend(
        ifaces
            .difference(&attached)
            .map(|iface| Op::Attach(iface.clone())),
    );
    for (id, planned) in &plan.classes {
        if dp.classes().get(id) != Some(&planned.spec) {
            ops.push(Op::PutClass(planned.spec));
        }
    }
    for (client, id) in &plan.clients {
        if dp.clients().get(client) != Some(id) {
            ops.push(Op::PutClient(*client, *id));
        }
    }
    for (rule, target) in &plan.rules {
        if dp.rules().get(rule) != Some(target) {
            ops.push(Op::PutRule(*rule, *target));
        }
    }
    for rule in dp.rules().keys() {
        if !plan.rules.contains_key(rule) {
            ops.push(Op::DeleteRule(*rule));
        }
    }
    for client in dp.clients().keys() {
        if !plan.clients.contains_key(client) {
            ops.push(Op::DeleteClient(*client));
        }
    }
    for id in dp.classes().keys() {
        if !plan.classes.contains_key(id) {
            ops.push(Op::DeleteClass(*id));
        }
    }
    ops
}

/// The operation that failed, with the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("{op:?} failed: {source}")]
pub struct ApplyError {
    pub op: Op,
    #[source]
    pub source: KernelError,
}

/// Applies `ops` in order, stopping at the first failure (the next
/// reconcile retries from the then-current kernel state), then flushes
/// what the dataplane deferred, for the part that went in too.
pub fn apply<D: Dataplane + ?Sized>(dp: &mut D, ops: &[Op]) -> Result<(), ApplyError> {
    let applied = ops.iter().try_for_each(|op| apply_one(dp, op));
    let flushed = apply_one(dp, &Op::Flush);
    applied.and(flushed)
}

fn apply_one<D: Dataplane + ?Sized>(dp: &mut D, op: &Op) -> Result<(), ApplyError> {
    let result = match op {
        Op::Attach(iface) => dp.attach(iface).map(|_| ()),
        Op::PutClass(class) => dp.put_class(class),
        Op::PutClient(client, id) => dp.put_client(client, *id),
        Op::PutRule(rule, target) => dp.put_rule(rule, target),
        Op::DeleteRule(rule) => dp.delete_rule(rule),
        Op::DeleteClient(client) => dp.delete_client(client),
        Op::DeleteClass(id) => dp.delete_class(*id),
        Op::Detach(iface) => dp.detach(iface).map(|_| ()),
        Op::Flush => dp.flush(),
    };
    result.map_err(|source| ApplyError {
        op: op.clone(),
        source,
    })
}

/// Diffs and applies in one step; returns how many operations it took.
pub fn converge<D: Dataplane + ?Sized>(
    dp: &mut D,
    plan: &Plan,
    ifaces: &BTreeSet<String>,
) -> Result<usize, ApplyError> {
    let ops = diff(plan, dp, ifaces);
    apply(dp, &ops)?;
    Ok(ops.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        kernel::{FakeDataplane, Protocol, ShapingMode, Side},
        plan::PlannedClass,
        spec::ClaimKey,
    };

    fn class(id: u32, rate: u64) -> ClassSpec {
        ClassSpec {
            class_id: id,
            mode: ShapingMode::Htb,
            rate_bytes: rate,
            ceil_bytes: rate,
            burst_bytes: 65536,
            priority: 4,
            horizon_ns: 0,
            claim_hash: u64::from(id),
        }
    }

    fn rule(host: &str) -> RuleMatch {
        RuleMatch {
            side: Side::Destination,
            addr: host.parse().unwrap(),
            prefix_len: 32,
            protocol: Protocol::Tcp,
            port: 5432,
        }
    }

    fn plan_of(classes: &[(u32, u64, &str)]) -> Plan {
        let mut plan = Plan::default();
        for (id, rate, host) in classes {
            plan.classes.insert(
                *id,
                PlannedClass {
                    claim: ClaimKey::new("ns", format!("c{id}")),
                    spec: class(*id, *rate),
                },
            );
            plan.rules.insert(rule(host), RuleTarget::class(*id));
        }
        plan
    }

    fn ifaces(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_kernel_gets_attach_then_classes_then_rules() {
        let dp = FakeDataplane::default();
        let ops = diff(&plan_of(&[(7, 1000, "10.0.0.7")]), &dp, &ifaces(&["eth0"]));
        assert_eq!(
            ops,
            vec![
                Op::Attach("eth0".into()),
                Op::PutClass(class(7, 1000)),
                Op::PutRule(rule("10.0.0.7"), RuleTarget::class(7))
            ]
        );
    }

    #[test]
    fn applying_twice_is_idempotent() {
        let mut dp = FakeDataplane::default();
        let plan = plan_of(&[(7, 1000, "10.0.0.7"), (9, 2000, "10.0.0.9")]);
        let wanted = ifaces(&["eth0"]);
        converge(&mut dp, &plan, &wanted).unwrap();
        assert!(diff(&plan, &dp, &wanted).is_empty());
    }

    #[test]
    fn changing_one_claim_touches_only_its_class() {
        let mut dp = FakeDataplane::default();
        let wanted = ifaces(&["eth0"]);
        let before = plan_of(&[(7, 1000, "10.0.0.7"), (9, 2000, "10.0.0.9")]);
        converge(&mut dp, &before, &wanted).unwrap();
        dp.log.clear();
        let after = plan_of(&[(7, 5000, "10.0.0.7"), (9, 2000, "10.0.0.9")]);
        converge(&mut dp, &after, &wanted).unwrap();
        assert_eq!(dp.log, vec!["put_class 7".to_string()]);
    }

    #[test]
    fn removing_a_claim_removes_its_rule_before_its_class_and_nothing_else() {
        let mut dp = FakeDataplane::default();
        let wanted = ifaces(&["eth0"]);
        converge(
            &mut dp,
            &plan_of(&[(7, 1000, "10.0.0.7"), (9, 2000, "10.0.0.9")]),
            &wanted,
        )
        .unwrap();
        dp.log.clear();
        converge(&mut dp, &plan_of(&[(9, 2000, "10.0.0.9")]), &wanted).unwrap();
        assert_eq!(
            dp.log,
            vec![
                "delete_rule Destination 10.0.0.7/32 Tcp:5432".to_string(),
                "delete_class 7".to_string()
            ]
        );
    }

    #[test]
    fn a_failed_operation_stops_and_the_next_run_resumes() {
        let mut dp = FakeDataplane::default();
        let wanted = ifaces(&["eth0"]);
        let plan = plan_of(&[(7, 1000, "10.0.0.7")]);
        dp.fail_next = Some("eth0".into());
        let err = converge(&mut dp, &plan, &wanted).unwrap_err();
        assert_eq!(err.op, Op::Attach("eth0".into()));
        assert!(
            matches!(err.source, KernelError::InterfaceNotFound { .. }),
            "{err}"
        );
        converge(&mut dp, &plan, &wanted).unwrap();
        assert!(diff(&plan, &dp, &wanted).is_empty());
        assert_eq!(dp.classes, BTreeMap::from([(7, class(7, 1000))]));
    }

    #[test]
    fn every_batch_is_flushed_also_one_that_stopped_at_a_failure() {
        let mut dp = FakeDataplane::default();
        let wanted = ifaces(&["eth0"]);
        let plan = plan_of(&[(7, 1000, "10.0.0.7")]);
        dp.fail_next = Some("eth0".into());
        converge(&mut dp, &plan, &wanted).unwrap_err();
        assert_eq!(dp.flushes, 1, "what went in before the failure is flushed");
        converge(&mut dp, &plan, &wanted).unwrap();
        assert_eq!(dp.flushes, 2);
        // A batch with nothing to do flushes too: what an earlier flush
        // could not write is written then.
        dp.fail_flush = Some("eth0".into());
        let err = converge(&mut dp, &plan, &wanted).unwrap_err();
        assert_eq!(err.op, Op::Flush);
        converge(&mut dp, &plan, &wanted).unwrap();
        assert_eq!(dp.flushes, 4);
    }

    #[test]
    fn interfaces_no_longer_wanted_are_detached_first() {
        let mut dp = FakeDataplane::default();
        converge(&mut dp, &Plan::default(), &ifaces(&["a", "b"])).unwrap();
        let ops = diff(&plan_of(&[(1, 10, "10.0.0.1")]), &dp, &ifaces(&["a", "c"]));
        assert_eq!(ops[0], Op::Detach("b".into()));
        assert_eq!(ops[1], Op::Attach("c".into()));
    }
}
