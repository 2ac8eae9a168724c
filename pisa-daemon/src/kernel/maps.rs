//! Every read and write of the program's maps (classes, rules, counters,
//! interface flags, the summary), typed, in one place. The caches of
//! classes and rules are read back from the pinned maps when the daemon
//! starts (adoption). Flow tags have their own file (`tags.rs`).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use pisa_daemon_common::{
    names::{
        MAP_CLASS_CEIL_PACE, MAP_CLASS_CONFIG, MAP_CLASS_PACE, MAP_CLASS_STATS, MAP_ENDPOINTS,
        MAP_LINK_PACE, MAP_REASONS,
    },
    reason, ClassConfig, ClassPace, ClassStats, EndpointMatch, EndpointRule, LinkPace, ReasonStats,
    CLASS_STATE_ACTIVE, MAX_CLASSES,
};
use tracing::info;

use super::{htb, iface, ClassSpec, Kernel, KernelError, RuleMatch};
use crate::model::RuleTarget;

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
                rules.insert(rule, RuleTarget::from_kernel(&value));
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
        for (rule, target) in &rules {
            *self.summary_slot(rule) += 1;
            self.summary.sql_rules += u32::from(target.sql);
        }
        self.clients = self.read_client_prefixes(&rules)?;
        self.rules = rules;
        self.ifaces = ifaces;
        self.write_summary()
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
    pub(super) fn summary_slot(&mut self, rule: &RuleMatch) -> &mut u32 {
        match (rule.side, rule.port == 0) {
            (super::Side::Destination, false) => &mut self.summary.dst_port_rules,
            (super::Side::Destination, true) => &mut self.summary.dst_any_rules,
            (super::Side::Source, false) => &mut self.summary.src_port_rules,
            (super::Side::Source, true) => &mut self.summary.src_any_rules,
        }
    }

    pub(super) fn write_class_config(
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
    pub(super) fn reset_class_slot(&mut self, class_id: u32) -> Result<(), KernelError> {
        let mut pace: Array<_, ClassPace> = Array::try_from(self.map_mut(MAP_CLASS_PACE)?)
            .map_err(map_err(MAP_CLASS_PACE, "opening"))?;
        pace.set(class_id, ClassPace::default(), 0)
            .map_err(map_err(MAP_CLASS_PACE, "writing"))?;
        let mut ceil: Array<_, ClassPace> = Array::try_from(self.map_mut(MAP_CLASS_CEIL_PACE)?)
            .map_err(map_err(MAP_CLASS_CEIL_PACE, "opening"))?;
        ceil.set(class_id, ClassPace::default(), 0)
            .map_err(map_err(MAP_CLASS_CEIL_PACE, "writing"))?;
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

    /// The endpoint rules' LPM trie, for writing.
    fn endpoints_mut(
        &mut self,
    ) -> Result<LpmTrie<&mut aya::maps::MapData, EndpointMatch, EndpointRule>, KernelError> {
        LpmTrie::try_from(self.map_mut(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS, "opening"))
    }

    /// Writes an endpoint rule into the LPM trie.
    pub(super) fn insert_rule(
        &mut self,
        rule: &RuleMatch,
        target: &RuleTarget,
    ) -> Result<(), KernelError> {
        let (prefix_len, data) = rule.to_kernel();
        let mut trie = self.endpoints_mut()?;
        let value = target.to_kernel(rule.prefix_len);
        trie.insert(&aya::maps::lpm_trie::Key::new(prefix_len, data), value, 0)
            .map_err(map_err(MAP_ENDPOINTS, "inserting"))
    }

    /// Removes an endpoint rule from the LPM trie; an absent one is fine.
    pub(super) fn remove_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError> {
        let (prefix_len, data) = rule.to_kernel();
        let mut trie = self.endpoints_mut()?;
        match trie.remove(&aya::maps::lpm_trie::Key::new(prefix_len, data)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_err(MAP_ENDPOINTS, "removing")(source)),
        }
    }

    /// Summed per-CPU counters of the active classes.
    pub(super) fn read_class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError> {
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

    /// Summed egress counters of the attached interfaces.
    pub(super) fn read_interface_stats(
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

    /// Summed per-CPU reason counters, indexed by `reason::*`.
    pub(super) fn read_reason_stats(&self) -> Result<Vec<u64>, KernelError> {
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

    /// Sets `ifindex`'s link rate where the pacer reads it (`LINK_PACE`),
    /// keeping the clock the program already runs there. Attaching does
    /// this; tests of the program call it for the device they run on.
    pub fn write_link_pace(&mut self, ifindex: u32, rate_bytes: u64) -> Result<(), KernelError> {
        let mut map = self.link_pace()?;
        let tat_ns = map.get(&ifindex, 0).map(|p| p.tat_ns).unwrap_or(0);
        map.insert(ifindex, LinkPace { rate_bytes, tat_ns }, 0)
            .map_err(map_err(MAP_LINK_PACE, "inserting"))
    }

    pub(super) fn link_pace(
        &mut self,
    ) -> Result<HashMap<&mut MapData, u32, LinkPace>, KernelError> {
        HashMap::try_from(self.map_mut(MAP_LINK_PACE)?).map_err(map_err(MAP_LINK_PACE, "opening"))
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
}

pub(super) fn to_config(class: &ClassSpec) -> ClassConfig {
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

pub fn sum_class_stats<'a>(per_cpu: impl Iterator<Item = &'a ClassStats>) -> ClassStats {
    per_cpu.fold(ClassStats::default(), |acc, s| ClassStats {
        packets: acc.packets + s.packets,
        bytes: acc.bytes + s.bytes,
        drops: acc.drops + s.drops,
        delayed: acc.delayed + s.delayed,
    })
}
