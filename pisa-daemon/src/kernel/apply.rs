//! `Dataplane` for the real kernel: map writes through aya, HTB through
//! rtnetlink. Caches of classes and rules are read back from the pinned
//! maps when the daemon starts (adoption) and kept in step on every write.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, LpmTrie, PerCpuArray, PerCpuValues};
use pisa_daemon_common::{
    names::{MAP_CLASS_CONFIG, MAP_CLASS_PACE, MAP_CLASS_STATS, MAP_ENDPOINTS, MAP_REASONS},
    reason, ClassConfig, ClassPace, ClassStats, EndpointMatch, EndpointRule, ReasonStats,
    CLASS_STATE_ACTIVE, MAX_CLASSES,
};
use tracing::{debug, info};

use crate::model::LeafQueue;

use super::{
    default_burst,
    htb::{self, ClassWrite, HtbClass, RootQdisc, LINK_CLASS_MINOR},
    iface,
    netlink::RtNetlink,
    Attachment, ClassSpec, Dataplane, Features, Kernel, KernelError, RuleMatch, ShapingMode,
};

pub(super) fn map_err(
    map: &'static str,
    action: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map {
        map,
        action,
        source,
    }
}

impl Kernel {
    pub(super) fn map_mut(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf
            .map_mut(name)
            .ok_or(KernelError::MapMissing { map: name })
    }

    pub(super) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf
            .map(name)
            .ok_or(KernelError::MapMissing { map: name })
    }

    /// Reads active classes and rules from the pinned maps (adoption).
    pub(super) fn load_caches(&mut self) -> Result<(), KernelError> {
        let config: Array<_, ClassConfig> = Array::try_from(self.map(MAP_CLASS_CONFIG)?)
            .map_err(map_err(MAP_CLASS_CONFIG, "opening"))?;
        let mut classes = BTreeMap::new();
        for class_id in 1..MAX_CLASSES {
            let raw = config
                .get(&class_id, 0)
                .map_err(map_err(MAP_CLASS_CONFIG, "reading"))?;
            if let Some(spec) = ClassSpec::from_slot(class_id, &raw) {
                classes.insert(class_id, spec);
            }
        }
        let trie: LpmTrie<_, EndpointMatch, EndpointRule> =
            LpmTrie::try_from(self.map(MAP_ENDPOINTS)?)
                .map_err(map_err(MAP_ENDPOINTS, "opening"))?;
        let mut rules = BTreeMap::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(MAP_ENDPOINTS, "listing"))?;
            let value = trie
                .get(&key, 0)
                .map_err(map_err(MAP_ENDPOINTS, "reading"))?;
            if let Some(rule) = RuleMatch::from_kernel(key.prefix_len(), &key.data()) {
                rules.insert(rule, value.class_id);
            }
        }
        let ifaces: BTreeSet<String> = self.layout.pinned_egress_links()?.into_iter().collect();
        if !classes.is_empty() || !rules.is_empty() {
            info!(
                classes = classes.len(),
                rules = rules.len(),
                "adopted pinned classes and rules"
            );
        }
        let tags = self.pinned_flow_tag_count()?;
        self.classes = classes;
        self.rules = BTreeMap::new();
        self.summary = pisa_daemon_common::Summary {
            flow_tags: tags,
            ..Default::default()
        };
        for rule in rules.keys() {
            *self.summary_slot(rule) += 1;
        }
        self.rules = rules;
        self.ifaces = ifaces;
        self.write_summary()
    }

    fn netlink(&mut self) -> Result<&mut RtNetlink, KernelError> {
        if self.netlink.is_none() {
            let nl = RtNetlink::open().map_err(netlink_err("", "opening rtnetlink"))?;
            self.netlink = Some(nl);
        }
        self.netlink
            .as_mut()
            .ok_or(KernelError::MapMissing { map: "rtnetlink" })
    }

    fn link_class(&self) -> HtbClass {
        HtbClass {
            minor: LINK_CLASS_MINOR,
            parent_minor: 0,
            rate_bytes: self.link_rate_bytes,
            ceil_bytes: self.link_rate_bytes,
            burst_bytes: default_burst(self.link_rate_bytes),
            cburst_bytes: default_burst(self.link_rate_bytes),
            prio: 0,
        }
    }

    fn refuse_foreign_root(&mut self, iface_name: &str) -> Result<(), KernelError> {
        let itf = iface::lookup(iface_name)?;
        let nl = self.netlink()?;
        match htb::root_qdisc(nl, itf.ifindex)
            .map_err(netlink_err(iface_name, "reading root qdisc"))?
        {
            RootQdisc::Foreign { kind, handle } => Err(KernelError::ForeignQdisc {
                iface: iface_name.to_owned(),
                kind,
                handle,
            }),
            _ => Ok(()),
        }
    }

    /// Makes sure `iface` has our HTB root and link class. Remembered per
    /// interface index, so a re-created interface (new index) is set up again.
    fn ensure_htb_root(&mut self, iface_name: &str, class_id: u32) -> Result<u32, KernelError> {
        let itf = iface::lookup(iface_name)?;
        if self.htb_roots.get(iface_name) == Some(&itf.ifindex) {
            return Ok(itf.ifindex);
        }
        let link_class = self.link_class();
        let nl = self.netlink()?;
        let nl_err = |action| netlink_err(iface_name, action);
        match htb::root_qdisc(nl, itf.ifindex).map_err(nl_err("reading root qdisc"))? {
            RootQdisc::OursFq => {
                return Err(KernelError::ModeConflict {
                    class_id,
                    mode: "htb",
                    other: "edt (sch_fq)",
                    iface: iface_name.to_owned(),
                })
            }
            RootQdisc::Ours => {
                let minors =
                    htb::class_minors(nl, itf.ifindex).map_err(nl_err("listing classes"))?;
                let write = if minors.contains(&LINK_CLASS_MINOR) {
                    ClassWrite::Change
                } else {
                    ClassWrite::Create
                };
                htb::write_class(nl, itf.ifindex, &link_class, write)
                    .map_err(nl_err("writing the link class"))?;
            }
            RootQdisc::KernelDefault { kind } => {
                debug!(iface = iface_name, replaced = %kind, "installing HTB root");
                htb::create_root(nl, itf.ifindex).map_err(nl_err("creating the HTB root qdisc"))?;
                htb::write_class(nl, itf.ifindex, &link_class, ClassWrite::Create)
                    .map_err(nl_err("creating the link class"))?;
            }
            RootQdisc::Foreign { kind, handle } => {
                return Err(KernelError::ForeignQdisc {
                    iface: iface_name.to_owned(),
                    kind,
                    handle,
                })
            }
        }
        self.htb_roots.insert(iface_name.to_owned(), itf.ifindex);
        Ok(itf.ifindex)
    }

    /// Makes sure `iface` paces with our sch_fq. Refuses when HTB classes
    /// live on it: one interface has one root qdisc.
    fn ensure_fq_root(&mut self, iface_name: &str, class_id: u32) -> Result<(), KernelError> {
        let itf = iface::lookup(iface_name)?;
        let htb_in_use = self.classes.values().any(|c| c.mode == ShapingMode::Htb);
        let nl = self.netlink()?;
        let nl_err = |action| netlink_err(iface_name, action);
        match htb::root_qdisc(nl, itf.ifindex).map_err(nl_err("reading root qdisc"))? {
            RootQdisc::OursFq => Ok(()),
            RootQdisc::Ours if htb_in_use => Err(KernelError::ModeConflict {
                class_id,
                mode: "edt",
                other: "htb",
                iface: iface_name.to_owned(),
            }),
            RootQdisc::Ours | RootQdisc::KernelDefault { .. } => {
                htb::create_fq_root(nl, itf.ifindex).map_err(nl_err("installing sch_fq"))?;
                self.htb_roots.remove(iface_name);
                Ok(())
            }
            RootQdisc::Foreign { kind, handle } => Err(KernelError::ForeignQdisc {
                iface: iface_name.to_owned(),
                kind,
                handle,
            }),
        }
    }

    /// Writes one leaf. `likely_exists` picks the first attempt (change in
    /// place, or create); the other is the fallback, so no class dump is
    /// needed and 10,000 classes cost 10,000 requests, not 10,000 dumps.
    fn write_htb_leaf(
        &mut self,
        iface_name: &str,
        class: &ClassSpec,
        likely_exists: bool,
    ) -> Result<(), KernelError> {
        let ifindex = self.ensure_htb_root(iface_name, class.class_id)?;
        let leaf = HtbClass {
            minor: class.class_id as u16,
            parent_minor: LINK_CLASS_MINOR,
            rate_bytes: class.rate_bytes,
            ceil_bytes: class.ceil_bytes,
            burst_bytes: class.burst_bytes,
            cburst_bytes: class.burst_bytes,
            prio: u32::from(class.priority.min(7)),
        };
        let queue = LeafQueue::for_class(class.ceil_bytes, self.features.fq_codel);
        let nl = self.netlink()?;
        let (first, second) = if likely_exists {
            (ClassWrite::Change, ClassWrite::Create)
        } else {
            (ClassWrite::Create, ClassWrite::Change)
        };
        let result = match htb::write_class(nl, ifindex, &leaf, first) {
            // Change of a missing class, or create of an existing one.
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EEXIST)) => {
                htb::write_class(nl, ifindex, &leaf, second)
            }
            other => other,
        };
        result.map_err(netlink_err(iface_name, "writing an HTB class"))?;
        match htb::write_leaf_queue(nl, ifindex, leaf.minor, queue) {
            // A queue of another kind under the same handle (fq_codel became
            // available since): replace it whole.
            Err(e) if e.errno() == Some(libc::EINVAL) => {
                htb::delete_leaf_queue(nl, ifindex, leaf.minor)
                    .and_then(|()| htb::write_leaf_queue(nl, ifindex, leaf.minor, queue))
            }
            other => other,
        }
        .map_err(netlink_err(iface_name, "writing the queue of an HTB class"))
    }

    fn delete_htb_leaf(&mut self, iface_name: &str, class_id: u32) -> Result<(), KernelError> {
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(()); // the interface is gone, and its classes with it
        };
        let nl = self.netlink()?;
        match htb::delete_class(nl, itf.ifindex, class_id as u16) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            Err(source) => Err(netlink_err(iface_name, "deleting an HTB class")(source)),
        }
    }

    /// Removes our HTB root from `iface`, if it is ours.
    pub(super) fn delete_htb_root(&mut self, iface_name: &str) -> Result<(), KernelError> {
        self.htb_roots.remove(iface_name);
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(());
        };
        let nl = self.netlink()?;
        remove_our_root(nl, iface_name, itf.ifindex)
    }

    /// Publishes the rule and tag counts the program uses to skip lookups.
    pub(super) fn write_summary(&mut self) -> Result<(), KernelError> {
        let name = pisa_daemon_common::names::MAP_SUMMARY;
        let summary = self.summary;
        let mut map: Array<_, pisa_daemon_common::Summary> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name, "opening"))?;
        map.set(0, summary, 0).map_err(map_err(name, "writing"))
    }

    /// The counter of `rule`'s kind in the summary.
    fn summary_slot(&mut self, rule: &RuleMatch) -> &mut u32 {
        match (rule.side, rule.port == 0) {
            (super::Side::Destination, false) => &mut self.summary.dst_port_rules,
            (super::Side::Destination, true) => &mut self.summary.dst_any_rules,
            (super::Side::Source, false) => &mut self.summary.src_port_rules,
            (super::Side::Source, true) => &mut self.summary.src_any_rules,
        }
    }

    fn write_class_config(
        &mut self,
        class_id: u32,
        config: ClassConfig,
    ) -> Result<(), KernelError> {
        let mut map: Array<_, ClassConfig> = Array::try_from(self.map_mut(MAP_CLASS_CONFIG)?)
            .map_err(map_err(MAP_CLASS_CONFIG, "opening"))?;
        map.set(class_id, config, 0)
            .map_err(map_err(MAP_CLASS_CONFIG, "writing"))
    }

    /// A reused slot starts clean: counters and pacing state of a deleted
    /// class must not leak into a new one.
    fn reset_class_slot(&mut self, class_id: u32) -> Result<(), KernelError> {
        let mut pace: Array<_, ClassPace> = Array::try_from(self.map_mut(MAP_CLASS_PACE)?)
            .map_err(map_err(MAP_CLASS_PACE, "opening"))?;
        pace.set(class_id, ClassPace::default(), 0)
            .map_err(map_err(MAP_CLASS_PACE, "writing"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| {
            KernelError::io("counting CPUs in", "/sys/devices/system/cpu/possible", e)
        })?;
        let zeros = PerCpuValues::try_from(vec![ClassStats::default(); cpus])
            .map_err(|e| KernelError::io("building per-CPU zeros for", "CLASS_STATS", e))?;
        let mut stats: PerCpuArray<_, ClassStats> =
            PerCpuArray::try_from(self.map_mut(MAP_CLASS_STATS)?)
                .map_err(map_err(MAP_CLASS_STATS, "opening"))?;
        stats
            .set(class_id, zeros, 0)
            .map_err(map_err(MAP_CLASS_STATS, "writing"))
    }

    fn check_mode(&self, class: &ClassSpec) -> Result<(), KernelError> {
        if class.mode == ShapingMode::Edt && !self.features.sch_fq {
            return Err(KernelError::EdtNeedsFq {
                class_id: class.class_id,
            });
        }
        Ok(())
    }
}

/// Wraps an rtnetlink failure with the interface and what was being done.
fn netlink_err(
    iface: &str,
    action: &'static str,
) -> impl FnOnce(super::netlink::NetlinkError) -> KernelError {
    let iface = iface.to_owned();
    move |source| KernelError::Netlink {
        iface,
        action,
        source,
    }
}

fn remove_our_root(nl: &mut RtNetlink, iface_name: &str, ifindex: u32) -> Result<(), KernelError> {
    let root =
        htb::root_qdisc(nl, ifindex).map_err(netlink_err(iface_name, "reading root qdisc"))?;
    if !matches!(root, RootQdisc::Ours | RootQdisc::OursFq) {
        return Ok(());
    }
    htb::delete_root(nl, ifindex).map_err(netlink_err(iface_name, "deleting the HTB root qdisc"))
}

/// Removes our HTB root from an interface without a loaded program (cleanup).
pub(super) fn remove_htb_root(iface_name: &str) -> Result<(), KernelError> {
    let Ok(itf) = iface::lookup(iface_name) else {
        return Ok(());
    };
    let mut nl = RtNetlink::open().map_err(netlink_err(iface_name, "opening rtnetlink"))?;
    remove_our_root(&mut nl, iface_name, itf.ifindex)
}

fn to_config(class: &ClassSpec) -> ClassConfig {
    ClassConfig {
        rate_bytes: class.rate_bytes,
        ceil_bytes: class.ceil_bytes,
        horizon_ns: class.horizon_ns,
        burst_bytes: class.burst_bytes,
        htb_handle: htb::htb_handle(class.class_id),
        mode: class.mode.as_raw(),
        priority: class.priority,
        state: CLASS_STATE_ACTIVE,
        _pad: [0; 5],
        claim_hash: class.claim_hash,
    }
}

impl Dataplane for Kernel {
    fn features(&self) -> Features {
        self.features
    }

    fn attach(&mut self, iface_name: &str) -> Result<Attachment, KernelError> {
        // Shaping needs the root qdisc. Refusing here, before anything is
        // attached, keeps someone else's qdisc from failing every later
        // class change on every interface.
        self.refuse_foreign_root(iface_name)?;
        let attachment = self.attach_egress(iface_name)?;
        let htb_classes: Vec<ClassSpec> = self
            .classes
            .values()
            .filter(|c| c.mode == ShapingMode::Htb)
            .copied()
            .collect();
        for class in &htb_classes {
            // Adopted interfaces already hold their leaves; new ones do not.
            self.write_htb_leaf(iface_name, class, attachment.adopted)?;
        }
        if let Some(edt) = self.classes.values().find(|c| c.mode == ShapingMode::Edt) {
            let class_id = edt.class_id;
            self.ensure_fq_root(iface_name, class_id)?;
        }
        self.ifaces.insert(iface_name.to_owned());
        Ok(attachment)
    }

    fn detach(&mut self, iface_name: &str) -> Result<bool, KernelError> {
        let was = self.detach_egress(iface_name)?;
        self.delete_htb_root(iface_name)?;
        self.ifaces.remove(iface_name);
        Ok(was)
    }

    fn interfaces(&self) -> BTreeSet<String> {
        self.ifaces.clone()
    }

    fn classes(&self) -> &BTreeMap<u32, ClassSpec> {
        &self.classes
    }

    fn put_class(&mut self, class: &ClassSpec) -> Result<(), KernelError> {
        self.check_mode(class)?;
        let previous = self.classes.get(&class.class_id).copied();
        let ifaces: Vec<String> = self.ifaces.iter().cloned().collect();
        // The HTB leaf exists before the program may point packets at it.
        match class.mode {
            ShapingMode::Htb => {
                let had_leaf = previous.is_some_and(|p| p.mode == ShapingMode::Htb);
                for iface in &ifaces {
                    self.write_htb_leaf(iface, class, had_leaf)?;
                }
            }
            ShapingMode::Edt => {
                for iface in &ifaces {
                    self.ensure_fq_root(iface, class.class_id)?;
                }
            }
            ShapingMode::Police => {}
        }
        if previous.is_none() {
            self.reset_class_slot(class.class_id)?;
        }
        self.write_class_config(class.class_id, to_config(class))?;
        if previous.is_some_and(|p| p.mode == ShapingMode::Htb) && class.mode != ShapingMode::Htb {
            for iface in &ifaces {
                self.delete_htb_leaf(iface, class.class_id)?;
            }
        }
        self.classes.insert(class.class_id, *class);
        Ok(())
    }

    fn delete_class(&mut self, class_id: u32) -> Result<(), KernelError> {
        let Some(previous) = self.classes.get(&class_id).copied() else {
            return Ok(());
        };
        // The program stops using the class first; then its leaf goes.
        self.write_class_config(class_id, ClassConfig::default())?;
        if previous.mode == ShapingMode::Htb {
            let ifaces: Vec<String> = self.ifaces.iter().cloned().collect();
            for iface in &ifaces {
                self.delete_htb_leaf(iface, class_id)?;
            }
        }
        self.classes.remove(&class_id);
        Ok(())
    }

    fn rules(&self) -> &BTreeMap<RuleMatch, u32> {
        &self.rules
    }

    fn put_rule(&mut self, rule: &RuleMatch, class_id: u32) -> Result<(), KernelError> {
        if !self.rules.contains_key(rule) {
            // Count first: the program must never skip a side that has rules.
            *self.summary_slot(rule) += 1;
            self.write_summary()?;
        }
        let (prefix_len, data) = rule.to_kernel();
        let mut trie: LpmTrie<_, EndpointMatch, EndpointRule> =
            LpmTrie::try_from(self.map_mut(MAP_ENDPOINTS)?)
                .map_err(map_err(MAP_ENDPOINTS, "opening"))?;
        let value = EndpointRule {
            class_id,
            addr_prefix_len: u32::from(rule.prefix_len),
        };
        trie.insert(&aya::maps::lpm_trie::Key::new(prefix_len, data), value, 0)
            .map_err(map_err(MAP_ENDPOINTS, "inserting"))?;
        self.rules.insert(*rule, class_id);
        Ok(())
    }

    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError> {
        let (prefix_len, data) = rule.to_kernel();
        let mut trie: LpmTrie<_, EndpointMatch, EndpointRule> =
            LpmTrie::try_from(self.map_mut(MAP_ENDPOINTS)?)
                .map_err(map_err(MAP_ENDPOINTS, "opening"))?;
        match trie.remove(&aya::maps::lpm_trie::Key::new(prefix_len, data)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_err(MAP_ENDPOINTS, "removing")(source)),
        }
        if self.rules.remove(rule).is_some() {
            let slot = self.summary_slot(rule);
            *slot = slot.saturating_sub(1);
            self.write_summary()?;
        }
        Ok(())
    }

    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError> {
        let stats: PerCpuArray<_, ClassStats> = PerCpuArray::try_from(self.map(MAP_CLASS_STATS)?)
            .map_err(map_err(MAP_CLASS_STATS, "opening"))?;
        let mut out = BTreeMap::new();
        for class_id in self.classes.keys() {
            let per_cpu = stats
                .get(class_id, 0)
                .map_err(map_err(MAP_CLASS_STATS, "reading"))?;
            out.insert(*class_id, sum_class_stats(per_cpu.iter()));
        }
        Ok(out)
    }

    fn interface_stats(
        &self,
    ) -> Result<BTreeMap<String, pisa_daemon_common::IfaceStats>, KernelError> {
        let name = pisa_daemon_common::names::MAP_IFACE_STATS;
        let stats: aya::maps::PerCpuHashMap<
            _,
            pisa_daemon_common::IfaceKey,
            pisa_daemon_common::IfaceStats,
        > = aya::maps::PerCpuHashMap::try_from(self.map(name)?)
            .map_err(map_err(name, "opening"))?;
        let mut out = BTreeMap::new();
        for iface_name in &self.ifaces {
            let Ok(itf) = iface::lookup(iface_name) else {
                continue;
            };
            let key = pisa_daemon_common::IfaceKey {
                ifindex: itf.ifindex,
                direction: pisa_daemon_common::DIRECTION_EGRESS,
            };
            let sum = match stats.get(&key, 0) {
                Ok(per_cpu) => {
                    per_cpu
                        .iter()
                        .fold(pisa_daemon_common::IfaceStats::default(), |a, s| {
                            pisa_daemon_common::IfaceStats {
                                packets: a.packets + s.packets,
                                bytes: a.bytes + s.bytes,
                                ..a
                            }
                        })
                }
                Err(aya::maps::MapError::KeyNotFound) => pisa_daemon_common::IfaceStats::default(),
                Err(source) => return Err(map_err(name, "reading")(source)),
            };
            out.insert(iface_name.clone(), sum);
        }
        Ok(out)
    }

    fn put_flow_tags(
        &mut self,
        entries: &[(pisa_daemon_common::FlowKey, pisa_daemon_common::FlowTag)],
    ) -> Result<(), KernelError> {
        self.put_flow_tags_atomically(entries)
    }

    fn delete_flow_tags(
        &mut self,
        keys: &[pisa_daemon_common::FlowKey],
    ) -> Result<(), KernelError> {
        keys.iter().try_for_each(|key| self.delete_flow_tag(key))
    }

    fn clear_flow_tags(&mut self) -> Result<usize, KernelError> {
        self.clear_pinned_flow_tags()
    }

    fn reason_stats(&self) -> Result<Vec<u64>, KernelError> {
        let stats: PerCpuArray<_, ReasonStats> = PerCpuArray::try_from(self.map(MAP_REASONS)?)
            .map_err(map_err(MAP_REASONS, "opening"))?;
        (0..reason::COUNT)
            .map(|index| {
                stats
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().map(|s| s.packets).sum())
                    .map_err(map_err(MAP_REASONS, "reading"))
            })
            .collect()
    }
}

pub fn sum_class_stats<'a>(per_cpu: impl Iterator<Item = &'a ClassStats>) -> ClassStats {
    per_cpu.fold(ClassStats::default(), |acc, s| ClassStats {
        packets: acc.packets + s.packets,
        bytes: acc.bytes + s.bytes,
        drops: acc.drops + s.drops,
        delayed: acc.delayed + s.delayed,
    })
}

impl Kernel {
    /// Sets the interface's L3 flag without attaching (for program tests
    /// that run crafted packets "as if" on that device).
    pub fn set_iface_l3(&mut self, ifindex: u32, l3_only: bool) -> Result<(), KernelError> {
        let flags = if l3_only {
            pisa_daemon_common::IFACE_FLAG_L3
        } else {
            0
        };
        self.configure_iface(ifindex, flags)
    }

    /// Records the interface in `IFACE_CONFIG` and copies its flags into
    /// every CPU's `IFACE_STATS` value, where the program reads them. The
    /// counters are rewritten only when the flags change, so adopting an
    /// interface under traffic never loses counts.
    pub(super) fn configure_iface(&mut self, ifindex: u32, flags: u32) -> Result<(), KernelError> {
        use pisa_daemon_common::{names::MAP_IFACE_STATS, IfaceKey, IfaceStats, DIRECTION_EGRESS};
        self.iface_config()?
            .insert(
                ifindex,
                pisa_daemon_common::IfaceConfig { flags, _pad: 0 },
                0,
            )
            .map_err(map_err(
                pisa_daemon_common::names::MAP_IFACE_CONFIG,
                "inserting",
            ))?;
        let key = IfaceKey {
            ifindex,
            direction: DIRECTION_EGRESS,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| {
            KernelError::io("counting CPUs in", "/sys/devices/system/cpu/possible", e)
        })?;
        let mut stats = self.iface_stats()?;
        let current: Vec<IfaceStats> = match stats.get(&key, 0) {
            Ok(per_cpu) if per_cpu.iter().all(|s| s.flags == flags) => return Ok(()),
            Ok(per_cpu) => per_cpu.iter().copied().collect(),
            Err(aya::maps::MapError::KeyNotFound) => vec![IfaceStats::default(); cpus],
            Err(source) => return Err(map_err(MAP_IFACE_STATS, "reading")(source)),
        };
        let updated: Vec<IfaceStats> = current
            .into_iter()
            .map(|s| IfaceStats { flags, ..s })
            .collect();
        let values = PerCpuValues::try_from(updated)
            .map_err(|e| KernelError::io("building per-CPU values for", MAP_IFACE_STATS, e))?;
        stats
            .insert(key, values, 0)
            .map_err(map_err(MAP_IFACE_STATS, "writing"))
    }

    /// Replaces the probed features. For tests that exercise the program's
    /// EDT arithmetic on a kernel without sch_fq (nothing paces there, but
    /// the stamped departure times can still be checked).
    pub fn override_features(&mut self, features: Features) {
        self.features = features;
    }

    /// The loaded classifier, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &aya::programs::SchedClassifier {
        &self.program
    }
}
