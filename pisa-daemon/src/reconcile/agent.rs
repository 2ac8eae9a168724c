//! The agent's memory between reconciles: the last good state of every
//! claim, and what each claim's status is.
//!
//! An invalid claim is rejected whole, but if it was valid before, its last
//! good version stays in force. A source whose YAML cannot be read at all
//! keeps every claim it held. Claims that disappear from a readable source
//! are removed. The last good versions held this way survive a restart
//! (`held`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    apply, converge,
    edits::class_only_edits,
    held::{self, HeldClaim},
    ApplyError, Op,
};
use crate::{
    identity::IdentityStats,
    kernel::{Dataplane, KernelError},
    plan::{self, Plan},
    spec::{check, key_of, ClaimKey, ClaimStatus, Limits, Phase, SourceSnapshot, ValidClaim},
    tags::{TagTable, DEFAULT_TAGS},
};

pub struct Agent<D: Dataplane> {
    pub dp: D,
    pub ifaces: BTreeSet<String>,
    pub limits: Limits,
    /// The claims in force (valid now, or last good).
    pub effective: BTreeMap<ClaimKey, ValidClaim>,
    pub statuses: BTreeMap<ClaimKey, ClaimStatus>,
    /// Errors not attributable to a claim (broken YAML), for logs and status.
    pub source_errors: Vec<String>,
    /// Selectors of other claims that can match the same connections, by
    /// claim (`spec::overlaps`): shown in status, never an error.
    pub overlaps: BTreeMap<ClaimKey, Vec<String>>,
    pub plan: Plan,
    /// Set after the first successful reconcile (`/readyz`).
    pub ready: bool,
    /// Connections tagged by the SQL proxy (gRPC) or by SQL identity.
    pub tags: TagTable,
    /// What became of the connection starts SQL identity read.
    pub identity: IdentityStats,
    validity: (usize, usize),
    /// Take the quick path for class-only edits (`edits`); off only in
    /// tests that compare it with the full path.
    pub quick_edits: bool,
    /// Updates that took the quick path, since the start.
    pub quick_updates: u64,
    /// The sources of the last update, to tell what the next one changed.
    last_sources: Vec<SourceSnapshot>,
    /// Claims the last update edited on the quick path, for `reconcile`.
    class_edits: Option<Vec<ClaimKey>>,
    /// The kernel holds exactly `plan` on `ifaces`: the last reconcile
    /// succeeded and nothing was attached or detached since.
    in_sync: bool,
    /// The last good document of each claim held in force although its
    /// current version is not valid: what a restart needs to keep it.
    held: BTreeMap<ClaimKey, HeldClaim>,
    /// Bumped whenever `held` changes, so it is written out only then.
    held_changes: u64,
}

impl<D: Dataplane> Agent<D> {
    pub fn new(dp: D, ifaces: BTreeSet<String>, limits: Limits) -> Self {
        Self {
            dp,
            ifaces,
            limits,
            effective: BTreeMap::new(),
            statuses: BTreeMap::new(),
            source_errors: Vec::new(),
            overlaps: BTreeMap::new(),
            plan: Plan::default(),
            ready: false,
            tags: TagTable::new(DEFAULT_TAGS),
            identity: IdentityStats::default(),
            validity: (0, 0),
            quick_edits: true,
            quick_updates: 0,
            last_sources: Vec::new(),
            class_edits: None,
            in_sync: false,
            held: BTreeMap::new(),
            held_changes: 0,
        }
    }

    /// The claims held in force at their last good version, and a count
    /// that moves whenever they change.
    pub fn held(&self) -> (impl Iterator<Item = &HeldClaim>, u64) {
        (self.held.values(), self.held_changes)
    }

    /// Takes the claims a previous run held at their last good version,
    /// before the first update: each is validated again and held in force
    /// until its source has a valid version or no longer has it. Returns
    /// the keys taken and the errors of those dropped.
    pub fn restore_held(
        &mut self,
        previous: Vec<HeldClaim>,
    ) -> (Vec<ClaimKey>, Vec<crate::spec::ClaimError>) {
        let (valid, errors) = held::revalidate(previous, self.limits);
        let keys = valid.keys().cloned().collect();
        for (key, (document, claim)) in valid {
            self.effective.insert(key.clone(), claim);
            self.held.insert(key, document);
        }
        (keys, errors)
    }

    /// (valid, invalid) claim counts of the last update.
    pub fn validity(&self) -> (usize, usize) {
        self.validity
    }

    /// Takes the sources as read now and works out the claims in force.
    pub fn update(&mut self, sources: &[SourceSnapshot]) {
        self.class_edits = None;
        let edits = if self.quick_edits && self.in_sync {
            class_only_edits(
                &self.last_sources,
                sources,
                &self.effective,
                &self.statuses,
                self.limits,
            )
        } else {
            None
        };
        let previous = std::mem::replace(&mut self.last_sources, sources.to_vec());
        match edits {
            Some(edits) => self.take_class_edits(edits),
            None => self.update_all(sources, &previous),
        }
    }

    /// The quick path: the edited claims replace their versions in force;
    /// everything else stands.
    fn take_class_edits(&mut self, edits: Vec<ValidClaim>) {
        self.quick_updates += 1;
        let mut keys = Vec::with_capacity(edits.len());
        for claim in edits {
            if let Some(status) = self.statuses.get_mut(&claim.key) {
                fill(status, &claim);
            }
            if self.held.remove(&claim.key).is_some() {
                self.held_changes += 1;
            }
            keys.push(claim.key.clone());
            self.effective.insert(claim.key.clone(), claim);
        }
        self.class_edits = Some(keys);
    }

    fn update_all(&mut self, sources: &[SourceSnapshot], previous: &[SourceSnapshot]) {
        let mut checked = check(sources, self.limits);
        let broken: BTreeSet<&str> = checked
            .unreadable
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        self.source_errors = checked
            .unreadable
            .iter()
            .map(|(_, error)| error)
            .chain(&checked.validated.unattributed)
            .map(ToString::to_string)
            .collect();
        // Moved, not cloned: at 10,000 claims a copy is several MiB that
        // would stay resident after it is freed.
        let mut effective = std::mem::take(&mut checked.validated.valid);
        let validated = &checked.validated;
        let valid_count = effective.len();
        let mut statuses = BTreeMap::new();
        let invalid_generations = generations_of(sources, &validated.invalid);
        // Claims in force at a last good version rather than their current one.
        let mut holding = Vec::new();
        for (key, errors) in &validated.invalid {
            let kept = self.effective.get(key).cloned();
            let mut message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if let Some(kept) = kept {
                message.push_str("; the last good version stays in force");
                effective.insert(key.clone(), kept);
                holding.push(key);
            }
            let mut invalid = status(key, Phase::Invalid, message, None);
            invalid.observed_generation = invalid_generations.get(key).copied().flatten();
            statuses.insert(key.clone(), invalid);
        }
        // A source we could not read keeps what it had.
        for (key, claim) in &self.effective {
            let source = claim.origin.rsplit_once('#').map(|(s, _)| s).unwrap_or("");
            if broken.contains(source)
                && !effective.contains_key(key)
                && !validated.invalid.contains_key(key)
            {
                effective.insert(key.clone(), claim.clone());
                holding.push(key);
            }
        }
        let held: BTreeMap<ClaimKey, HeldClaim> = holding
            .into_iter()
            .filter_map(|key| {
                let document = self
                    .held
                    .get(key)
                    .cloned()
                    .or_else(|| held::find(previous, key))?;
                Some((key.clone(), document))
            })
            .collect();
        if held != self.held {
            self.held = held;
            self.held_changes += 1;
        }
        for (key, claim) in &effective {
            statuses.entry(key.clone()).or_insert_with(|| {
                status(key, Phase::Pending, "not yet applied".into(), Some(claim))
            });
        }
        self.validity = (valid_count, validated.invalid.len());
        // Kept versions can overlap too; without any, the check's stand.
        self.overlaps = if effective.len() == valid_count {
            checked.overlaps
        } else {
            crate::spec::overlaps(&effective)
        };
        // Kept until the next full read: packed (model::packed).
        self.effective = crate::model::packed(effective);
        self.statuses = crate::model::packed(statuses);
    }

    /// Sets the interfaces to shape: `required` ones (the operator's
    /// `--iface`; failing to attach one fails the reconcile) and `followed`
    /// ones (Pods' interfaces). Followed ones are attached here, one by one,
    /// so that one that cannot be attached (gone in a race, a foreign root
    /// qdisc) is left out and reported instead of holding up every other
    /// change. A failed attach is rolled back. Returns those left out.
    pub fn set_interfaces(
        &mut self,
        required: &BTreeSet<String>,
        followed: &BTreeSet<String>,
    ) -> Vec<(String, KernelError)> {
        let attached = self.dp.interfaces();
        let mut wanted = required.clone();
        let mut left_out = Vec::new();
        for iface in followed.difference(required) {
            if attached.contains(iface) {
                wanted.insert(iface.clone());
                continue;
            }
            match self.dp.attach(iface) {
                Ok(_) => {
                    wanted.insert(iface.clone());
                }
                Err(error) => {
                    // Nothing half-attached stays behind (a pin without its
                    // HTB leaves); a missing interface has nothing to undo.
                    let _ = self.dp.detach(iface);
                    left_out.push((iface.clone(), error));
                }
            }
        }
        if self.ifaces != wanted {
            self.in_sync = false;
        }
        self.ifaces = wanted;
        left_out
    }

    /// With no claim source: attaches the wanted interfaces and leaves the
    /// classes and rules already pinned exactly as they are. Returns the
    /// number of interfaces it attached.
    pub fn attach_only(&mut self) -> Result<usize, ApplyError> {
        let attached = self.dp.interfaces();
        let ops: Vec<Op> = self
            .ifaces
            .difference(&attached)
            .map(|iface| Op::Attach(iface.clone()))
            .collect();
        self.in_sync = false;
        apply(&mut self.dp, &ops)?;
        self.ready = true;
        Ok(ops.len())
    }

    /// Plans the effective claims and brings the kernel to that plan.
    /// Returns the number of operations it took.
    pub fn reconcile(&mut self) -> Result<usize, ApplyError> {
        if let Some(keys) = self.class_edits.take() {
            if self.in_sync {
                if let Some(count) = self.reconcile_class_edits(&keys) {
                    return Ok(count);
                }
            }
        }
        self.reconcile_all()
    }

    /// The quick path's kernel side: the edited classes changed in place.
    /// `None` when that cannot be done (a class not in the plan, an
    /// operation failed): then the full path runs, as it would have.
    fn reconcile_class_edits(&mut self, keys: &[ClaimKey]) -> Option<usize> {
        let mut ops = Vec::with_capacity(keys.len());
        for key in keys {
            let id = *self.plan.ids.get(key)?;
            let claim = self.effective.get(key)?;
            let spec = plan::class_spec(key, claim, id);
            self.plan.classes.get_mut(&id)?.spec = spec;
            if self.dp.classes().get(&id) != Some(&spec) {
                ops.push(Op::PutClass(spec));
            }
        }
        if let Err(error) = apply(&mut self.dp, &ops) {
            tracing::debug!(%error, "quick class edit failed; reconciling every claim");
            self.in_sync = false;
            return None;
        }
        for key in keys {
            if let Some(status) = self.statuses.get_mut(key) {
                settle(
                    status,
                    key,
                    &self.plan,
                    &self.effective,
                    &self.overlaps,
                    None,
                );
            }
        }
        Some(ops.len())
    }

    fn reconcile_all(&mut self) -> Result<usize, ApplyError> {
        let plan = plan::plan(&self.effective, self.dp.classes());
        // A class whose claim goes away takes its tagged connections with
        // it, before the class itself goes. Tags that cannot be removed
        // now stay in the table and are tried again next time.
        let planned = plan.classes.keys().copied().collect();
        if let Err(error) = self.tags.retain_classes(&mut self.dp, &planned) {
            tracing::warn!(%error, "could not untag connections of removed classes");
        }
        let result = converge(&mut self.dp, &plan, &self.ifaces);
        for (key, status) in self.statuses.iter_mut() {
            settle(
                status,
                key,
                &plan,
                &self.effective,
                &self.overlaps,
                result.as_ref().err(),
            );
        }
        self.identity.retain_claims(&plan.sql);
        self.plan = plan;
        self.dp.compact();
        self.in_sync = result.is_ok();
        let count = result?;
        self.ready = true;
        Ok(count)
    }
}

/// A claim's status after a reconcile that planned `plan` and ended with
/// `failed` (or succeeded).
fn settle(
    status: &mut ClaimStatus,
    key: &ClaimKey,
    plan: &Plan,
    effective: &BTreeMap<ClaimKey, ValidClaim>,
    overlaps: &BTreeMap<ClaimKey, Vec<String>>,
    failed: Option<&ApplyError>,
) {
    let Some(id) = plan.ids.get(key) else {
        return;
    };
    status.class_id = Some(*id);
    status.client_prefixes = plan.client_counts.get(key).copied().unwrap_or(0);
    let claim = effective.get(key);
    if status.phase == Phase::Invalid {
        // The version kept in force describes the class, but the status
        // names the generation that was rejected: the aggregate counts a
        // node as failed only for the claim's current generation, so the
        // kept one's would leave the node "pending" for good.
        if let Some(claim) = claim {
            let rejected = status.observed_generation;
            fill(status, claim);
            status.observed_generation = rejected;
        }
        return;
    }
    if let Some(claim) = claim {
        fill(status, claim);
    }
    match (failed, claim) {
        (Some(e), _) => {
            status.phase = Phase::Pending;
            status.message = format!("kernel update failed, retrying: {e}");
        }
        (None, Some(claim)) if claim.rules.is_empty() => {
            status.phase = Phase::Pending;
            status.message = format!(
                "class {id} is in place but matches no traffic: add \
                 spec.trafficQoS.endpoints, or bind VirtualDatabase `{}`",
                claim.binding
            );
        }
        (None, claim) => {
            status.phase = Phase::Applied;
            // No interface count here: Pods coming and going would
            // otherwise rewrite every claim's status on every node.
            status.message = format!("class {id} in force");
            if let Some(claim) = claim {
                status
                    .message
                    .push_str(&selector_summary(claim, status.client_prefixes));
            }
            if let Some(overlaps) = overlaps.get(key) {
                for overlap in overlaps {
                    status.message.push_str("; ");
                    status.message.push_str(overlap);
                }
            }
        }
    }
}

/// The metadata.generation of each rejected claim that parsed, so its
/// status says which generation was rejected (the status aggregator counts
/// a node as failed only for the claim's current generation).
fn generations_of<T>(
    sources: &[SourceSnapshot],
    invalid: &BTreeMap<ClaimKey, T>,
) -> BTreeMap<ClaimKey, Option<i64>> {
    if invalid.is_empty() {
        return BTreeMap::new();
    }
    sources
        .iter()
        .filter_map(|source| source.documents.as_ref().ok())
        .flatten()
        .filter_map(|document| document.result.as_ref().ok())
        .map(|claim| (key_of(claim), claim.metadata.generation))
        .filter(|(key, _)| invalid.contains_key(key))
        .collect()
}

fn status(
    key: &ClaimKey,
    phase: Phase,
    message: String,
    claim: Option<&ValidClaim>,
) -> ClaimStatus {
    let mut status = ClaimStatus {
        claim: key.clone(),
        phase,
        message,
        class_id: None,
        observed_generation: None,
        mode: None,
        rate_bytes: None,
        ceil_bytes: None,
        priority: None,
        client_prefixes: 0,
    };
    if let Some(claim) = claim {
        fill(&mut status, claim);
    }
    status
}

/// What the claim selects beyond its endpoints, for its status message.
fn selector_summary(claim: &ValidClaim, client_prefixes: usize) -> String {
    let mut out = String::new();
    if claim.selects_clients() && claim.sql.is_none() {
        out.push_str(&format!("; {client_prefixes} client prefix(es)"));
    }
    if let Some(sql) = &claim.sql {
        out.push_str(&format!("; SQL identity: {}", sql.describe()));
        if claim.selects_clients() {
            out.push_str(&format!(" from {} client network(s)", claim.clients.len()));
        }
    }
    out
}

fn fill(status: &mut ClaimStatus, claim: &ValidClaim) {
    status.observed_generation = claim.generation;
    status.mode = Some(claim.mode.name());
    status.rate_bytes = Some(claim.rate_bytes);
    status.ceil_bytes = Some(claim.ceil_bytes);
    status.priority = Some(claim.priority.name());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::FakeDataplane, spec::load_documents};

    const LIMITS: Limits = Limits {
        max_classes: 100,
        edt_available: false,
        pod_selectors: false,
    };

    fn source(name: &str, yaml: &str) -> SourceSnapshot {
        SourceSnapshot {
            name: name.into(),
            documents: load_documents(name, yaml),
        }
    }

    fn claim(name: &str, rate: &str, host: &str) -> String {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}}}\n\
             spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}}}\n    \
             endpoints: [{{host: {host}, port: 5432}}]\n---\n"
        )
    }

    fn agent() -> Agent<FakeDataplane> {
        Agent::new(
            FakeDataplane::default(),
            ["eth0".to_string()].into(),
            LIMITS,
        )
    }

    #[test]
    fn valid_claims_are_applied() {
        let mut a = agent();
        a.update(&[source("c.yaml", &claim("db", "10mbit", "10.0.0.1"))]);
        a.reconcile().unwrap();
        let st = &a.statuses[&ClaimKey::new("default", "db")];
        assert_eq!(st.phase, Phase::Applied);
        assert_eq!(a.dp.classes.len(), 1);
        assert_eq!(a.dp.rules.len(), 2, "direction both: to + from");
        assert!(a.ready);
    }

    #[test]
    fn a_pod_interface_that_cannot_be_attached_is_left_out_not_fatal() {
        let mut a = agent();
        a.update(&[source("c.yaml", &claim("db", "10mbit", "10.0.0.1"))]);
        let required: BTreeSet<String> = ["eth0".to_string()].into();
        let followed: BTreeSet<String> = ["cali-gone".to_string(), "cali-ok".to_string()].into();
        a.dp.fail_next = Some("cali-gone".into());
        let left_out = a.set_interfaces(&required, &followed);
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].0, "cali-gone");
        assert!(left_out[0].1.to_string().contains("cali-gone"));
        assert_eq!(a.ifaces, ["cali-ok".to_string(), "eth0".to_string()].into());
        // The rest converges: eth0 attached, the claim applied.
        a.reconcile().unwrap();
        assert_eq!(a.dp.ifaces, a.ifaces);
        assert_eq!(
            a.statuses[&ClaimKey::new("default", "db")].phase,
            Phase::Applied
        );
        // Next time it attaches; a Pod that went is detached.
        let left_out = a.set_interfaces(&required, &["cali-gone".to_string()].into());
        assert!(left_out.is_empty());
        a.reconcile().unwrap();
        assert_eq!(
            a.dp.ifaces,
            ["cali-gone".to_string(), "eth0".to_string()].into()
        );
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_good_version_and_other_claims_apply() {
        let mut a = agent();
        a.update(&[source(
            "c.yaml",
            &(claim("db", "10mbit", "10.0.0.1") + &claim("other", "1mbit", "10.0.0.2")),
        )]);
        a.reconcile().unwrap();
        a.update(&[source(
            "c.yaml",
            &(claim("db", "10mps", "10.0.0.1") + &claim("other", "2mbit", "10.0.0.2")),
        )]);
        a.reconcile().unwrap();
        let db = &a.statuses[&ClaimKey::new("default", "db")];
        assert_eq!(db.phase, Phase::Invalid);
        assert!(db.message.contains("unknown unit `mps`"), "{}", db.message);
        assert!(db.message.contains("last good version stays in force"));
        let rates: Vec<u64> = a.dp.classes.values().map(|c| c.rate_bytes).collect();
        assert!(rates.contains(&1_250_000), "db keeps 10mbit: {rates:?}");
        assert!(rates.contains(&250_000), "other moved to 2mbit: {rates:?}");
        assert_eq!(a.validity(), (1, 1));
    }

    /// A kube claim's generation, as the kube source renders it.
    fn claim_at(generation: i64, rate: &str) -> String {
        claim("db", rate, "10.0.0.1").replace(
            "metadata: {name: db}",
            &format!("metadata: {{name: db, generation: {generation}}}"),
        )
    }

    #[test]
    fn an_invalid_edit_reports_the_rejected_generation_not_the_kept_one() {
        let mut a = agent();
        a.update(&[source("kube:default/db", &claim_at(1, "10mbit"))]);
        a.reconcile().unwrap();
        let key = ClaimKey::new("default", "db");
        assert_eq!(a.statuses[&key].observed_generation, Some(1));
        a.update(&[source("kube:default/db", &claim_at(2, "10mps"))]);
        a.reconcile().unwrap();
        let db = &a.statuses[&key];
        assert_eq!(db.phase, Phase::Invalid);
        assert_eq!(db.observed_generation, Some(2), "{db:?}");
        assert_eq!(db.rate_bytes, Some(1_250_000), "the kept version's rate");
        // Fixed at generation 3: applied, and says so.
        a.update(&[source("kube:default/db", &claim_at(3, "20mbit"))]);
        a.reconcile().unwrap();
        let db = &a.statuses[&key];
        assert_eq!(
            (db.phase, db.observed_generation),
            (Phase::Applied, Some(3))
        );
    }

    fn held_rates(a: &Agent<FakeDataplane>) -> Vec<(String, String)> {
        a.held()
            .0
            .map(|h| {
                let rate = h.claim.spec.traffic_qos.qos_group.rate.clone();
                (h.origin.to_string(), format!("{rate:?}"))
            })
            .collect()
    }

    #[test]
    fn a_claim_held_at_its_last_good_version_is_remembered_until_valid_again() {
        let mut a = agent();
        a.update(&[source("kube:default/db", &claim_at(1, "10mbit"))]);
        a.reconcile().unwrap();
        let (_, unchanged) = a.held();
        assert!(held_rates(&a).is_empty());
        a.update(&[source("kube:default/db", &claim_at(2, "10mps"))]);
        let (_, changed) = a.held();
        assert_ne!(changed, unchanged);
        let held = held_rates(&a);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, "kube:default/db#1");
        assert!(held[0].1.contains("10mbit"), "{held:?}");
        // Still invalid: the same document stays held, nothing to write.
        a.update(&[source("kube:default/db", &claim_at(3, "20mps"))]);
        assert_eq!(a.held().1, changed);
        assert!(held_rates(&a)[0].1.contains("10mbit"));
        a.update(&[source("kube:default/db", &claim_at(4, "20mbit"))]);
        assert!(held_rates(&a).is_empty());
    }

    #[test]
    fn a_restarted_agent_holds_what_the_last_one_held_and_drops_it_once_valid() {
        let mut before = agent();
        before.update(&[source("kube:default/db", &claim_at(1, "10mbit"))]);
        before.reconcile().unwrap();
        before.update(&[source("kube:default/db", &claim_at(2, "10mps"))]);
        // Through the file's JSON, as a restart reads it.
        let json = serde_json::to_string(&held::HeldFileOut::of(before.held().0)).unwrap();
        let file: held::HeldFileIn = serde_json::from_str(&json).unwrap();

        let mut after = agent();
        let (taken, dropped) = after.restore_held(file.into_held());
        assert_eq!(taken, vec![ClaimKey::new("default", "db")]);
        assert!(dropped.is_empty(), "{dropped:?}");
        after.update(&[source("kube:default/db", &claim_at(2, "10mps"))]);
        after.reconcile().unwrap();
        let db = &after.statuses[&ClaimKey::new("default", "db")];
        assert_eq!(
            (db.phase, db.observed_generation),
            (Phase::Invalid, Some(2))
        );
        assert!(db.message.contains("last good version stays in force"));
        let rates: Vec<u64> = after.dp.classes.values().map(|c| c.rate_bytes).collect();
        assert_eq!(rates, vec![1_250_000], "generation 1's 10mbit in force");
        assert_eq!(
            held_rates(&after).len(),
            1,
            "still held, for the next restart"
        );

        // Valid again: that version applies and nothing is held.
        after.update(&[source("kube:default/db", &claim_at(3, "20mbit"))]);
        after.reconcile().unwrap();
        assert!(held_rates(&after).is_empty());
        let rates: Vec<u64> = after.dp.classes.values().map(|c| c.rate_bytes).collect();
        assert_eq!(rates, vec![2_500_000]);
    }

    #[test]
    fn a_restored_claim_that_its_source_no_longer_has_goes() {
        let mut before = agent();
        before.update(&[source("c.yaml", &claim("db", "10mbit", "10.0.0.1"))]);
        before.reconcile().unwrap();
        before.update(&[source("c.yaml", "apiVersion: [broken\n")]);
        let held = before.held().0.cloned().collect::<Vec<_>>();
        assert_eq!(held.len(), 1, "an unreadable file holds its claims");

        let mut after = agent();
        after.restore_held(held.clone());
        // Still unreadable after the restart: held, and in the kernel.
        after.update(&[source("c.yaml", "apiVersion: [broken\n")]);
        after.reconcile().unwrap();
        assert_eq!(after.dp.classes.len(), 1);
        // Readable without it: it goes.
        after.update(&[source("c.yaml", &claim("other", "1mbit", "10.0.0.2"))]);
        after.reconcile().unwrap();
        assert!(held_rates(&after).is_empty());
        assert!(!after
            .effective
            .contains_key(&ClaimKey::new("default", "db")));
    }

    #[test]
    fn a_broken_file_keeps_its_claims_and_a_removed_claim_goes() {
        let mut a = agent();
        a.update(&[source(
            "c.yaml",
            &(claim("db", "10mbit", "10.0.0.1") + &claim("x", "1mbit", "10.0.0.3")),
        )]);
        a.reconcile().unwrap();
        a.update(&[source("c.yaml", "apiVersion: [broken\n")]);
        a.reconcile().unwrap();
        assert_eq!(a.dp.classes.len(), 2, "unreadable file: keep everything");
        assert_eq!(a.source_errors.len(), 1);
        a.update(&[source("c.yaml", &claim("db", "10mbit", "10.0.0.1"))]);
        a.reconcile().unwrap();
        assert_eq!(a.dp.classes.len(), 1, "x was removed from a readable file");
    }

    #[test]
    fn a_claim_without_endpoints_is_pending_with_advice() {
        let mut a = agent();
        let yaml = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {name: catalogue}\n\
                    spec:\n  trafficQoS:\n    name: catalogue\n    qos_group: {rate: 10mbit, ceil: 20mbit}\n";
        a.update(&[source("c.yaml", yaml)]);
        a.reconcile().unwrap();
        let st = &a.statuses[&ClaimKey::new("default", "catalogue")];
        assert_eq!(st.phase, Phase::Pending);
        assert!(
            st.message.contains("bind VirtualDatabase `catalogue`"),
            "{}",
            st.message
        );
    }

    /// A claim with every knob the quick path may or may not take.
    fn knobs(name: &str, rate: &str, ceil: &str, extra: &str) -> String {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}}}\n\
             spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}, ceil: {ceil}}}\n{extra}---\n"
        )
    }

    /// One file's claims, edited step by step: (the file, whether the
    /// step is a class-only edit the quick path must take).
    fn edits() -> Vec<(String, bool)> {
        let sql = "    endpoints: [{host: 10.0.0.9, port: 5432}]\n    sql: {users: [reporter]}\n    direction: both\n";
        let clients =
            "    endpoints: [{host: 10.0.0.9, port: 5432}]\n    clients: [{cidr: 10.1.0.0/16}]\n";
        let file = |db_rate: &str, db_extra: &str, report_rate: &str, tail: &str| -> String {
            let ends = |host: &str| format!("    endpoints: [{{host: {host}, port: 5432}}]\n");
            knobs(
                "db",
                db_rate,
                "100mbit",
                &format!("{}{db_extra}", ends("10.0.0.1")),
            ) + &knobs("other", "1mbit", "1mbit", &ends("10.0.0.2"))
                + &knobs("reports", report_rate, "50mbit", sql)
                + &knobs("batch", "5mbit", "5mbit", clients)
                + tail
        };
        vec![
            (file("10mbit", "", "5mbit", ""), false),
            (file("20mbit", "", "5mbit", ""), true),
            (
                file("20mbit", "    priority: guaranteed\n", "5mbit", ""),
                true,
            ),
            (
                file(
                    "20mbit",
                    "    priority: guaranteed\n    burst: 128kb\n",
                    "6mbit",
                    "",
                ),
                true,
            ),
            // Invalid (rate above ceil): the last good version stays.
            (file("200mbit", "", "6mbit", ""), false),
            (file("30mbit", "", "6mbit", ""), false),
            (file("31mbit", "", "6mbit", ""), true),
            // What a claim matches changed: full path.
            (file("31mbit", "    direction: to\n", "6mbit", ""), false),
            (
                file(
                    "31mbit",
                    "    direction: to\n",
                    "6mbit",
                    &knobs("new", "1mbit", "1mbit", ""),
                ),
                false,
            ),
            (
                file(
                    "32mbit",
                    "    direction: to\n",
                    "6mbit",
                    &knobs("new", "2mbit", "2mbit", ""),
                ),
                true,
            ),
            // Nothing changed: the full path (it is cheap to be sure).
            (
                file(
                    "32mbit",
                    "    direction: to\n",
                    "6mbit",
                    &knobs("new", "2mbit", "2mbit", ""),
                ),
                false,
            ),
            (file("32mbit", "    direction: to\n", "6mbit", ""), false),
        ]
    }

    #[test]
    fn class_only_edits_on_the_quick_path_end_exactly_where_the_full_path_does() {
        let mut quick = agent();
        let mut full = agent();
        full.quick_edits = false;
        for (step, (text, class_only)) in edits().iter().enumerate() {
            let before = quick.quick_updates;
            for a in [&mut quick, &mut full] {
                a.dp.log.clear();
                a.update(&[source("c.yaml", text)]);
                a.reconcile().unwrap();
            }
            assert_eq!(
                quick.quick_updates - before,
                u64::from(*class_only),
                "step {step}: quick path taken?"
            );
            assert_eq!(quick.effective, full.effective, "step {step}");
            assert_eq!(quick.statuses, full.statuses, "step {step}");
            assert_eq!(quick.plan, full.plan, "step {step}");
            assert_eq!(quick.overlaps, full.overlaps, "step {step}");
            assert_eq!(quick.validity(), full.validity(), "step {step}");
            assert_eq!(quick.dp.classes, full.dp.classes, "step {step}");
            assert_eq!(quick.dp.rules, full.dp.rules, "step {step}");
            assert_eq!(quick.dp.clients, full.dp.clients, "step {step}");
            assert_eq!(quick.dp.log, full.dp.log, "step {step}: kernel operations");
        }
        assert_eq!(full.quick_updates, 0);
    }

    #[test]
    fn a_failed_quick_edit_falls_back_to_the_full_path() {
        let mut a = agent();
        let text = |rate: &str| claim("db", rate, "10.0.0.1") + &claim("x", "1mbit", "10.0.0.3");
        a.update(&[source("c.yaml", &text("10mbit"))]);
        a.reconcile().unwrap();
        a.update(&[source("c.yaml", &text("20mbit"))]);
        assert_eq!(a.quick_updates, 1);
        a.dp.fail_next = Some("put_class".into());
        a.dp.log.clear();
        // The quick path's one operation fails; the full path then plans
        // every claim and lands the rate (the fake fails only once).
        a.reconcile().unwrap();
        assert!(a.dp.classes.values().any(|c| c.rate_bytes == 2_500_000));
        assert_eq!(
            a.statuses[&ClaimKey::new("default", "db")].phase,
            Phase::Applied
        );
        assert!(
            a.dp.log.len() == 1,
            "only the retried class: {:?}",
            a.dp.log
        );
        // Back in sync: the next edit is quick again.
        a.update(&[source("c.yaml", &text("30mbit"))]);
        a.reconcile().unwrap();
        assert_eq!(a.quick_updates, 2);
    }
}
