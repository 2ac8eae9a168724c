//! The `Dataplane` trait: everything the reconciler may ask of the kernel,
//! in domain terms (classes, rules, interfaces), with the real kernel
//! (`Kernel`) and, for tests, an in-memory fake (`fake::FakeDataplane`).

use std::collections::{BTreeMap, BTreeSet};

use pisa_daemon_common::{ClassStats, FlowKey, FlowTag, IfaceStats};

use super::{Attachment, KernelError};
use crate::model::{ClassSpec, ClientPrefix, LinkRate, RuleMatch, RuleTarget};

/// Kernel features that decide what can be enforced where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// TCX links (Linux 6.6+); otherwise clsact + cls_bpf.
    pub tcx: bool,
    /// sch_fq, which EDT pacing needs.
    pub sch_fq: bool,
    /// fq_codel, the fair queue inside each HTB class (else a bfifo).
    pub fq_codel: bool,
    /// Kernel BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
}

/// One direction of a flow tag to write, with what the caller's table
/// knows the key held before, so a failed batch is undone without reading
/// the map back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTagWrite {
    pub key: FlowKey,
    pub tag: FlowTag,
    pub previous: Option<FlowTag>,
}

/// Everything the reconciler needs from the kernel. Order of operations is
/// the caller's job: classes before the rules that point at them, rules
/// removed before their class.
pub trait Dataplane {
    fn features(&self) -> Features;
    /// Attaches at egress of `iface` and brings its qdisc tree up to date.
    fn attach(&mut self, iface: &str) -> Result<Attachment, KernelError>;
    fn detach(&mut self, iface: &str) -> Result<bool, KernelError>;
    /// Interfaces currently attached.
    fn interfaces(&self) -> BTreeSet<String>;
    /// Each attached interface's link rate, and where it came from.
    fn link_rates(&self) -> BTreeMap<String, LinkRate>;
    /// Active classes by id.
    fn classes(&self) -> &BTreeMap<u32, ClassSpec>;
    /// Creates or changes a class in place (map entry and, for HTB, the
    /// leaf class on every attached interface).
    fn put_class(&mut self, class: &ClassSpec) -> Result<(), KernelError>;
    fn delete_class(&mut self, class_id: u32) -> Result<(), KernelError>;
    /// Endpoint rules: match -> class and selector flags.
    fn rules(&self) -> &BTreeMap<RuleMatch, RuleTarget>;
    fn put_rule(&mut self, rule: &RuleMatch, target: &RuleTarget) -> Result<(), KernelError>;
    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError>;
    /// Client prefixes of rules shared by claims with client selectors.
    fn clients(&self) -> &BTreeMap<ClientPrefix, u32>;
    fn put_client(&mut self, client: &ClientPrefix, class_id: u32) -> Result<(), KernelError>;
    fn delete_client(&mut self, client: &ClientPrefix) -> Result<(), KernelError>;
    /// Summed per-CPU SQL-identity counters, indexed by `sql_reason::*`.
    fn sql_stats(&self) -> Result<Vec<u64>, KernelError>;
    /// Summed per-CPU counters of active classes.
    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError>;
    /// Summed per-CPU reason counters, indexed by `reason::*`.
    fn reason_stats(&self) -> Result<Vec<u64>, KernelError>;
    /// Summed egress counters of attached interfaces.
    fn interface_stats(&self) -> Result<BTreeMap<String, IfaceStats>, KernelError>;
    /// Writes flow tags (connection direction -> class), all or none.
    fn put_flow_tags(&mut self, writes: &[FlowTagWrite]) -> Result<(), KernelError>;
    /// Removes flow tags; keys without a tag are skipped.
    fn delete_flow_tags(&mut self, keys: &[FlowKey]) -> Result<(), KernelError>;
    /// Removes every flow tag; returns how many there were.
    fn clear_flow_tags(&mut self) -> Result<usize, KernelError>;
    /// Writes what the dataplane keeps over several classes and so
    /// defers to the end of a batch of operations (an HTB group's rate is
    /// the sum of its leaves'). `reconcile::apply` calls it after every
    /// batch, including one that stopped at a failure.
    fn flush(&mut self) -> Result<(), KernelError> {
        Ok(())
    }
    /// Repacks what the dataplane remembers of the kernel after a full
    /// reconcile (`model::packed`); nothing to do for one that keeps little.
    fn compact(&mut self) {}
}
