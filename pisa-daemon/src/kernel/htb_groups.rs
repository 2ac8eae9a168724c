//! The middle level of the HTB tree: one group per 128 class ids, each a
//! class under the link class with an htb qdisc of its own holding the
//! leaves (the layout is in `pisa_daemon_common::htb_tree`).
//!
//! A group's guaranteed rate is the sum of its leaves' rates, so a leaf
//! keeps its guarantee whatever the other groups do. That sum moves with
//! every leaf, so it is written once per batch of operations (`flush`),
//! not once per leaf: a first apply of 10,000 classes writes each group
//! once. Between a leaf's write and the flush (one batch, milliseconds)
//! the group runs on its previous rate.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::SchedClassifier;
use pisa_daemon_common::{
    htb_tree::{
        group_class_minor, group_of, group_qdisc_major, GROUP_SHIFT, HTB_MAJOR, LINK_CLASS_MINOR,
    },
    names::PROG_HTB_GROUP,
};
use tracing::{info, warn};

use super::{
    default_burst,
    htb::{self, HtbClass, RootQdisc},
    iface,
    maps::to_config,
    qdisc::{netlink_err, write_class_either_way},
    ClassSpec, Kernel, KernelError, ShapingMode,
};

/// The group a leaf's guarantee is summed into.
fn group_class(
    group: u16,
    link_bytes: u64,
    leaves: impl Iterator<Item = ClassSpec>,
) -> Option<HtbClass> {
    let mut class: Option<HtbClass> = None;
    for leaf in leaves {
        let group_class = class.get_or_insert(HtbClass {
            major: HTB_MAJOR,
            minor: group_class_minor(group),
            parent_minor: LINK_CLASS_MINOR,
            rate_bytes: 0,
            ceil_bytes: link_bytes,
            burst_bytes: 0,
            cburst_bytes: default_burst(link_bytes),
            prio: 7,
        });
        // The sums: every leaf keeps its rate and its burst (a burst all
        // of them may spend at once) whatever the other groups do.
        group_class.rate_bytes = group_class.rate_bytes.saturating_add(leaf.rate_bytes);
        group_class.burst_bytes = group_class.burst_bytes.saturating_add(leaf.burst_bytes);
        // Borrowing between groups goes by the group's priority: its most
        // urgent leaf's, so that leaf never waits behind a lower one.
        group_class.prio = group_class.prio.min(u32::from(leaf.priority.min(7)));
    }
    class.map(|mut class| {
        // HTB refuses a zero rate, and a ceil below the rate.
        class.rate_bytes = class.rate_bytes.max(1);
        class.ceil_bytes = class.ceil_bytes.max(class.rate_bytes);
        class
    })
}

impl Kernel {
    /// The HTB leaves of group `group` as this process holds them, with
    /// `with` in place of (or beside) its own id's entry.
    fn group_leaves<'a>(
        &'a self,
        group: u16,
        with: Option<&'a ClassSpec>,
    ) -> impl Iterator<Item = ClassSpec> + 'a {
        let first = u32::from(group) << GROUP_SHIFT;
        let last = first + (1 << GROUP_SHIFT) - 1;
        let replaced = with.map(|class| class.class_id);
        self.classes
            .range(first..=last)
            .map(|(_, class)| *class)
            .filter(move |class| Some(class.class_id) != replaced)
            .chain(with.copied())
            .filter(|class| class.mode == ShapingMode::Htb)
    }

    /// The classes this process holds that have an HTB leaf.
    pub(super) fn htb_classes(&self) -> Vec<ClassSpec> {
        self.classes
            .values()
            .filter(|class| class.mode == ShapingMode::Htb)
            .copied()
            .collect()
    }

    fn link_bytes(&self, iface_name: &str) -> u64 {
        match self.link_rates_in_force.get(iface_name) {
            Some(rate) => rate.bytes,
            None => self.resolve_link_rate(iface_name).bytes,
        }
    }

    /// Makes sure `iface` holds group `group` (its class under the link
    /// class, its qdisc, and the qdisc's own link class) before `leaf` is
    /// written into it. An adopted group is written over in place.
    pub(super) fn ensure_group(
        &mut self,
        iface_name: &str,
        ifindex: u32,
        group: u16,
        leaf: &ClassSpec,
    ) -> Result<(), KernelError> {
        if self
            .htb_groups
            .get(iface_name)
            .is_some_and(|groups| groups.contains_key(&group))
        {
            return Ok(());
        }
        let link_bytes = self.link_bytes(iface_name);
        let Some(class) = group_class(group, link_bytes, self.group_leaves(group, Some(leaf)))
        else {
            return Ok(()); // not an HTB leaf: nothing to hold
        };
        let major = group_qdisc_major(group);
        let inner_link = Self::link_class(major, link_bytes);
        let nl = self.netlink()?;
        let nl_err = |action| netlink_err(iface_name, action);
        write_class_either_way(nl, ifindex, &class, false)
            .map_err(nl_err("writing an HTB group's class"))?;
        htb::create_group_qdisc(nl, ifindex, major, class.minor)
            .map_err(nl_err("creating an HTB group's qdisc"))?;
        write_class_either_way(nl, ifindex, &inner_link, false)
            .map_err(nl_err("writing an HTB group's link class"))?;
        self.htb_groups
            .entry(iface_name.to_owned())
            .or_default()
            .insert(group, class);
        Ok(())
    }

    /// Brings every group a leaf write or delete touched to the sum of
    /// its leaves on every interface, and removes groups left empty. A
    /// group that fails stays to be flushed again by the next batch.
    pub(super) fn flush_groups(&mut self) -> Result<(), KernelError> {
        let groups = std::mem::take(&mut self.stale_groups);
        let ifaces: Vec<String> = self.htb_groups.keys().cloned().collect();
        let mut failure = None;
        for group in &groups {
            for iface_name in &ifaces {
                if let Err(error) = self.flush_group(iface_name, *group) {
                    self.stale_groups.insert(*group);
                    failure.get_or_insert(error);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn flush_group(&mut self, iface_name: &str, group: u16) -> Result<(), KernelError> {
        let Some(in_force) = self
            .htb_groups
            .get(iface_name)
            .and_then(|groups| groups.get(&group))
            .copied()
        else {
            return Ok(()); // never built here (the group's leaves live elsewhere)
        };
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(()); // the interface is gone, its tree with it
        };
        let link_bytes = self.link_bytes(iface_name);
        let wanted = group_class(group, link_bytes, self.group_leaves(group, None));
        let nl = self.netlink()?;
        match wanted {
            Some(class) if class == in_force => {}
            Some(class) => {
                write_class_either_way(nl, itf.ifindex, &class, true)
                    .map_err(netlink_err(iface_name, "writing an HTB group's class"))?;
                if let Some(groups) = self.htb_groups.get_mut(iface_name) {
                    groups.insert(group, class);
                }
            }
            None => {
                match htb::delete_class(nl, itf.ifindex, HTB_MAJOR, in_force.minor) {
                    Err(e) if !matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
                        return Err(netlink_err(iface_name, "deleting an HTB group")(e));
                    }
                    _ => {}
                }
                if let Some(groups) = self.htb_groups.get_mut(iface_name) {
                    groups.remove(&group);
                }
            }
        }
        Ok(())
    }

    /// Takes over the HTB trees an earlier run left on the interfaces this
    /// process adopted. Our own tree: its groups are written with their
    /// sums, so later changes know them. An earlier release's flat tree:
    /// every leaf is built in its group beside the old one, and then the
    /// program is switched over and the old leaves go. No tree at all (its
    /// root was deleted by hand): it is built whole. On failure what is
    /// there keeps shaping and the next change of a class tries again.
    pub(super) fn adopt_htb_trees(&mut self) {
        let htb_classes = self.htb_classes();
        let Some(first) = htb_classes.first() else {
            return;
        };
        for iface_name in self.ifaces.clone() {
            if iface::lookup(&iface_name).is_err() {
                continue; // vanished: `release_vanished_interfaces` handles it
            }
            let adopted = self.adopt_htb_tree(&iface_name, first.class_id, &htb_classes);
            if let Err(error) = adopted {
                warn!(iface = %iface_name, %error, "could not take over the HTB tree; it stays as it was");
            }
        }
    }

    fn adopt_htb_tree(
        &mut self,
        iface_name: &str,
        class_id: u32,
        htb_classes: &[ClassSpec],
    ) -> Result<(), KernelError> {
        let itf = iface::lookup(iface_name)?;
        let root = htb::root_qdisc(self.netlink()?, itf.ifindex)
            .map_err(netlink_err(iface_name, "reading root qdisc"))?;
        let ifindex = self.ensure_htb_root(iface_name, class_id)?;
        // No tree of ours (its root qdisc was deleted while no daemon ran),
        // or an earlier release's flat one: every leaf is built.
        if root != RootQdisc::Ours || self.flat_leaves.contains_key(iface_name) {
            for class in htb_classes {
                self.write_htb_leaf(iface_name, class, false)?;
            }
            self.flush_groups()?;
            return self.finish_flat_tree_migration(iface_name);
        }
        let mut seen = std::collections::BTreeSet::new();
        for class in htb_classes {
            let group = group_of(class.class_id);
            if seen.insert(group) {
                self.ensure_group(iface_name, ifindex, group, class)?;
            }
        }
        Ok(())
    }

    /// Finishes moving an earlier release's flat tree on `iface` into
    /// groups, once `attach` has written every leaf into its group: the
    /// groups get their sums, the program's classes point at the new
    /// leaves, and only then do the old leaves (and their queues) go.
    pub(super) fn finish_flat_tree_migration(
        &mut self,
        iface_name: &str,
    ) -> Result<(), KernelError> {
        let Some(flat) = self.flat_leaves.remove(iface_name) else {
            return Ok(());
        };
        self.flush_groups()?;
        let htb_classes = self.htb_classes();
        for class in &htb_classes {
            self.write_class_config(class.class_id, to_config(class))?;
        }
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(());
        };
        let nl = self.netlink()?;
        for minor in &flat {
            match htb::delete_class(nl, itf.ifindex, HTB_MAJOR, *minor) {
                Err(e) if !matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
                    return Err(netlink_err(iface_name, "deleting a flat-tree leaf")(e));
                }
                _ => {}
            }
        }
        info!(
            iface = iface_name,
            leaves = flat.len(),
            "moved an earlier release's flat HTB tree into groups"
        );
        Ok(())
    }

    /// The descriptor of this process's group classifier, for the root
    /// filter. Loaded at start (never pinned: the filter holds it, and the
    /// next daemon's copy replaces it in place).
    pub(super) fn group_classifier_fd(&self) -> Result<u32, KernelError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(PROG_HTB_GROUP)
            .ok_or(KernelError::ProgramMissing {
                program: PROG_HTB_GROUP,
            })?
            .try_into()
            .map_err(|source| KernelError::Program {
                program: PROG_HTB_GROUP,
                action: "typing",
                source,
            })?;
        let fd = program.fd().map_err(|source| KernelError::Program {
            program: PROG_HTB_GROUP,
            action: "reading the descriptor of",
            source,
        })?;
        Ok(fd.as_fd().as_raw_fd() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(id: u32, rate: u64, priority: u8) -> ClassSpec {
        ClassSpec {
            class_id: id,
            mode: ShapingMode::Htb,
            rate_bytes: rate,
            ceil_bytes: rate * 4,
            burst_bytes: 16_000 + id,
            priority,
            horizon_ns: 0,
            claim_hash: 0,
        }
    }

    #[test]
    fn a_group_guarantees_the_sum_of_its_leaves_and_borrows_at_its_most_urgent_leaf() {
        let class = group_class(
            3,
            125_000_000,
            [leaf(385, 1_000, 5), leaf(390, 2_500, 2)].into_iter(),
        )
        .expect("two leaves make a group");
        assert_eq!(class.minor, 0x4003);
        assert_eq!(class.parent_minor, LINK_CLASS_MINOR);
        assert_eq!(class.rate_bytes, 3_500);
        assert_eq!(class.ceil_bytes, 125_000_000);
        assert_eq!(class.burst_bytes, 16_385 + 16_390);
        assert_eq!(class.prio, 2);
    }

    #[test]
    fn an_empty_group_is_none_and_an_oversubscribed_one_keeps_ceil_at_least_rate() {
        assert_eq!(group_class(0, 1_000, std::iter::empty()), None);
        let class = group_class(0, 1_000, [leaf(1, 5_000, 0)].into_iter()).unwrap();
        assert_eq!((class.rate_bytes, class.ceil_bytes), (5_000, 5_000));
    }
}
