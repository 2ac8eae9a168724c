//! An in-memory `Dataplane` for unit tests of everything above the kernel.

use std::collections::{BTreeMap, BTreeSet};

use pisa_daemon_common::{ClassStats, FlowKey, FlowTag, IfaceStats};

use super::{Attachment, Dataplane, Features, FlowTagWrite, KernelError};
use crate::model::{ClassSpec, ClientPrefix, LinkRate, LinkRates, RuleMatch, RuleTarget};

/// An in-memory `Dataplane` for reconciler tests: it records every call so
/// tests can assert exactly which operations a change caused.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub features: Features,
    pub ifaces: BTreeSet<String>,
    pub classes: BTreeMap<u32, ClassSpec>,
    pub rules: BTreeMap<RuleMatch, RuleTarget>,
    pub clients: BTreeMap<ClientPrefix, u32>,
    pub stats: BTreeMap<u32, ClassStats>,
    /// Every mutating call, in order, e.g. `put_class 7`.
    pub log: Vec<String>,
    /// When set, the next mutating call fails with this interface error.
    pub fail_next: Option<String>,
    /// Interfaces that do not exist: attaching one fails, every time.
    pub vanished: BTreeSet<String>,
    /// When set, reading the class counters fails (a map read error).
    pub fail_stats: bool,
    pub flow_tags: BTreeMap<FlowKey, FlowTag>,
    /// Most flow-tag entries the fake "kernel" map holds (0: no limit).
    pub flow_tag_capacity: usize,
    /// How many batches were flushed (`Dataplane::flush`).
    pub flushes: usize,
    /// When set, the next flush fails with this interface error.
    pub fail_flush: Option<String>,
}

impl FakeDataplane {
    fn maybe_fail(&mut self) -> Result<(), KernelError> {
        match self.fail_next.take() {
            Some(iface) => Err(KernelError::InterfaceNotFound { iface }),
            None => Ok(()),
        }
    }
}

impl Dataplane for FakeDataplane {
    fn features(&self) -> Features {
        self.features
    }

    fn attach(&mut self, iface: &str) -> Result<Attachment, KernelError> {
        self.maybe_fail()?;
        if self.vanished.contains(iface) {
            return Err(KernelError::InterfaceNotFound {
                iface: iface.to_owned(),
            });
        }
        self.log.push(format!("attach {iface}"));
        let adopted = !self.ifaces.insert(iface.to_owned());
        Ok(Attachment {
            iface: iface.to_owned(),
            ifindex: 0,
            mode: super::AttachMode::Tcx,
            link_id: None,
            adopted,
        })
    }

    fn detach(&mut self, iface: &str) -> Result<bool, KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("detach {iface}"));
        Ok(self.ifaces.remove(iface))
    }

    fn interfaces(&self) -> BTreeSet<String> {
        self.ifaces.clone()
    }

    fn link_rates(&self) -> BTreeMap<String, LinkRate> {
        self.ifaces
            .iter()
            .map(|iface| (iface.clone(), LinkRates::default().resolve(iface, None)))
            .collect()
    }

    fn classes(&self) -> &BTreeMap<u32, ClassSpec> {
        &self.classes
    }

    fn put_class(&mut self, class: &ClassSpec) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("put_class {}", class.class_id));
        self.classes.insert(class.class_id, *class);
        Ok(())
    }

    fn delete_class(&mut self, class_id: u32) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("delete_class {class_id}"));
        self.classes.remove(&class_id);
        Ok(())
    }

    fn rules(&self) -> &BTreeMap<RuleMatch, RuleTarget> {
        &self.rules
    }

    fn put_rule(&mut self, rule: &RuleMatch, target: &RuleTarget) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "put_rule {:?} {}/{} {:?}:{} -> {}",
            rule.side, rule.addr, rule.prefix_len, rule.protocol, rule.port, target.class_id
        ));
        self.rules.insert(*rule, *target);
        Ok(())
    }

    fn clients(&self) -> &BTreeMap<ClientPrefix, u32> {
        &self.clients
    }

    fn put_client(&mut self, client: &ClientPrefix, class_id: u32) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "put_client {} {} -> {class_id}",
            client.rule_id, client.client
        ));
        self.clients.insert(*client, class_id);
        Ok(())
    }

    fn delete_client(&mut self, client: &ClientPrefix) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "delete_client {} {}",
            client.rule_id, client.client
        ));
        self.clients.remove(client);
        Ok(())
    }

    fn sql_stats(&self) -> Result<Vec<u64>, KernelError> {
        Ok(vec![0; pisa_daemon_common::sql_reason::COUNT as usize])
    }

    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "delete_rule {:?} {}/{} {:?}:{}",
            rule.side, rule.addr, rule.prefix_len, rule.protocol, rule.port
        ));
        self.rules.remove(rule);
        Ok(())
    }

    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError> {
        if self.fail_stats {
            return Err(KernelError::MapMissing { map: "CLASS_STATS" });
        }
        Ok(self.stats.clone())
    }

    fn reason_stats(&self) -> Result<Vec<u64>, KernelError> {
        Ok(vec![0; pisa_daemon_common::reason::COUNT as usize])
    }

    fn interface_stats(&self) -> Result<BTreeMap<String, IfaceStats>, KernelError> {
        Ok(self
            .ifaces
            .iter()
            .map(|i| (i.clone(), IfaceStats::default()))
            .collect())
    }

    fn put_flow_tags(&mut self, writes: &[FlowTagWrite]) -> Result<(), KernelError> {
        self.maybe_fail()?;
        let new = writes
            .iter()
            .filter(|w| !self.flow_tags.contains_key(&w.key))
            .count();
        if self.flow_tag_capacity != 0 && self.flow_tags.len() + new > self.flow_tag_capacity {
            return Err(KernelError::FlowTagsFull {
                capacity: self.flow_tag_capacity as u32,
            });
        }
        self.log.push(format!("put_flow_tags {}", writes.len()));
        self.flow_tags.extend(writes.iter().map(|w| (w.key, w.tag)));
        Ok(())
    }

    fn delete_flow_tags(&mut self, keys: &[FlowKey]) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("delete_flow_tags {}", keys.len()));
        for key in keys {
            self.flow_tags.remove(key);
        }
        Ok(())
    }

    fn clear_flow_tags(&mut self) -> Result<usize, KernelError> {
        let count = self.flow_tags.len();
        self.flow_tags.clear();
        Ok(count)
    }

    fn flush(&mut self) -> Result<(), KernelError> {
        self.flushes += 1;
        match self.fail_flush.take() {
            Some(iface) => Err(KernelError::InterfaceNotFound { iface }),
            None => Ok(()),
        }
    }
}
