//! `Dataplane` for the real kernel: each operation composed from the map
//! writes (`maps.rs`) and the qdisc changes (`qdisc.rs`) in the order that
//! keeps packets from meeting a half-built state.

use std::collections::{BTreeMap, BTreeSet};

use pisa_daemon_common::{ClassConfig, ClassStats};

use super::{
    maps::to_config, Attachment, ClassSpec, Dataplane, Features, Kernel, KernelError, RuleMatch,
    ShapingMode,
};
use crate::model::{ClientPrefix, LinkRate, RuleTarget};

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
        for class in &self.htb_classes() {
            // Adopted interfaces already hold their leaves; new ones do not.
            self.write_htb_leaf(iface_name, class, attachment.adopted)?;
        }
        self.finish_flat_tree_migration(iface_name)?;
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

    fn link_rates(&self) -> BTreeMap<String, LinkRate> {
        // An interface without our HTB root (EDT, police, nothing shaped
        // yet) shows what its root would be set up with.
        self.ifaces
            .iter()
            .map(|iface| {
                let rate = match self.link_rates_in_force.get(iface) {
                    Some(rate) => *rate,
                    None => self.resolve_link_rate(iface),
                };
                (iface.clone(), rate)
            })
            .collect()
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

    fn rules(&self) -> &BTreeMap<RuleMatch, RuleTarget> {
        &self.rules
    }

    fn put_rule(&mut self, rule: &RuleMatch, target: &RuleTarget) -> Result<(), KernelError> {
        let before = self.rules.get(rule).copied();
        // Count first: the program must never skip a side (or the ingress
        // observer a SQL rule) that exists.
        let new_rule = before.is_none();
        let new_sql = target.sql && !before.is_some_and(|b| b.sql);
        if new_rule {
            *self.summary_slot(rule) += 1;
        }
        if new_sql {
            self.summary.sql_rules += 1;
        }
        if new_rule || new_sql {
            self.write_summary()?;
        }
        self.insert_rule(rule, target)?;
        self.rules.insert(*rule, *target);
        if before.is_some_and(|b| b.sql) && !target.sql {
            self.summary.sql_rules = self.summary.sql_rules.saturating_sub(1);
            self.write_summary()?;
        }
        Ok(())
    }

    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError> {
        self.remove_rule(rule)?;
        if let Some(target) = self.rules.remove(rule) {
            let slot = self.summary_slot(rule);
            *slot = slot.saturating_sub(1);
            if target.sql {
                self.summary.sql_rules = self.summary.sql_rules.saturating_sub(1);
            }
            self.write_summary()?;
        }
        Ok(())
    }

    fn clients(&self) -> &BTreeMap<ClientPrefix, u32> {
        &self.clients
    }

    fn put_client(&mut self, client: &ClientPrefix, class_id: u32) -> Result<(), KernelError> {
        self.insert_client(client, class_id)?;
        self.clients.insert(*client, class_id);
        Ok(())
    }

    fn delete_client(&mut self, client: &ClientPrefix) -> Result<(), KernelError> {
        self.remove_client(client)?;
        self.clients.remove(client);
        Ok(())
    }

    fn sql_stats(&self) -> Result<Vec<u64>, KernelError> {
        self.read_sql_stats()
    }

    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError> {
        self.read_class_stats()
    }

    fn interface_stats(
        &self,
    ) -> Result<BTreeMap<String, pisa_daemon_common::IfaceStats>, KernelError> {
        self.read_interface_stats()
    }

    fn put_flow_tags(
        &mut self,
        writes: &[super::dataplane::FlowTagWrite],
    ) -> Result<(), KernelError> {
        self.put_flow_tags_atomically(writes)
    }

    fn delete_flow_tags(
        &mut self,
        keys: &[pisa_daemon_common::FlowKey],
    ) -> Result<(), KernelError> {
        self.delete_flow_tags_counted(keys)
    }

    fn clear_flow_tags(&mut self) -> Result<usize, KernelError> {
        self.clear_pinned_flow_tags()
    }

    fn reason_stats(&self) -> Result<Vec<u64>, KernelError> {
        self.read_reason_stats()
    }

    fn flush(&mut self) -> Result<(), KernelError> {
        self.flush_groups()
    }

    fn compact(&mut self) {
        use crate::model::packed;
        self.classes = packed(std::mem::take(&mut self.classes));
        self.rules = packed(std::mem::take(&mut self.rules));
        self.clients = packed(std::mem::take(&mut self.clients));
    }
}

impl Kernel {
    fn check_mode(&self, class: &ClassSpec) -> Result<(), KernelError> {
        if class.mode == ShapingMode::Edt && !self.features.sch_fq {
            return Err(KernelError::EdtNeedsFq {
                class_id: class.class_id,
            });
        }
        Ok(())
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
