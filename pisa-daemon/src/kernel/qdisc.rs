//! The qdiscs the `htb` and `edt` modes rely on, per interface: our HTB
//! root and link class, one leaf per class with its own short queue, or our
//! sch_fq root; never anyone else's (see `htb.rs` for the tree).

use tracing::debug;

use pisa_daemon_common::{
    htb_tree::{group_of, group_qdisc_major, GROUP_CLASS_MINOR_BASE, HTB_MAJOR},
    names::PROG_HTB_GROUP,
};

use super::{
    default_burst,
    htb::{self, ClassWrite, HtbClass, RootQdisc, LINK_CLASS_MINOR},
    iface,
    netlink::RtNetlink,
    ClassSpec, Kernel, KernelError, ShapingMode,
};
use crate::model::LeafQueue;

impl Kernel {
    pub(super) fn netlink(&mut self) -> Result<&mut RtNetlink, KernelError> {
        if self.netlink.is_none() {
            let nl = RtNetlink::open().map_err(netlink_err("", "opening rtnetlink"))?;
            self.netlink = Some(nl);
        }
        self.netlink
            .as_mut()
            .ok_or(KernelError::MapMissing { map: "rtnetlink" })
    }

    /// The class at the top of an interface's tree: its whole link rate.
    pub(super) fn link_class(major: u16, rate_bytes: u64) -> HtbClass {
        HtbClass {
            major,
            minor: LINK_CLASS_MINOR,
            parent_minor: 0,
            rate_bytes,
            ceil_bytes: rate_bytes,
            burst_bytes: default_burst(rate_bytes),
            cburst_bytes: default_burst(rate_bytes),
            prio: 0,
        }
    }

    pub(super) fn refuse_foreign_root(&mut self, iface_name: &str) -> Result<(), KernelError> {
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
    pub(super) fn ensure_htb_root(
        &mut self,
        iface_name: &str,
        class_id: u32,
    ) -> Result<u32, KernelError> {
        let itf = iface::lookup(iface_name)?;
        if self.htb_roots.get(iface_name) == Some(&itf.ifindex) {
            return Ok(itf.ifindex);
        }
        let link_rate = match self.link_rates_in_force.get(iface_name) {
            Some(rate) => *rate,
            None => self.resolve_link_rate(iface_name),
        };
        let link_class = Self::link_class(HTB_MAJOR, link_rate.bytes);
        // A tree set up again (the interface was re-created, or is new)
        // holds none of the groups remembered for it.
        self.htb_groups.remove(iface_name);
        self.flat_leaves.remove(iface_name);
        let group_filter = self.group_classifier_fd()?;
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
                htb::write_group_filter(nl, itf.ifindex, group_filter, PROG_HTB_GROUP)
                    .map_err(nl_err("installing the group filter"))?;
                // Leaves straight under the link class are an earlier
                // release's flat tree: `attach` moves them into groups.
                let flat: Vec<u16> = minors
                    .into_iter()
                    .filter(|minor| *minor < GROUP_CLASS_MINOR_BASE)
                    .collect();
                if !flat.is_empty() {
                    self.flat_leaves.insert(iface_name.to_owned(), flat);
                }
            }
            RootQdisc::KernelDefault { kind } => {
                debug!(iface = iface_name, replaced = %kind, "installing HTB root");
                htb::create_root(nl, itf.ifindex).map_err(nl_err("creating the HTB root qdisc"))?;
                htb::write_class(nl, itf.ifindex, &link_class, ClassWrite::Create)
                    .map_err(nl_err("creating the link class"))?;
                htb::write_group_filter(nl, itf.ifindex, group_filter, PROG_HTB_GROUP)
                    .map_err(nl_err("installing the group filter"))?;
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
    pub(super) fn ensure_fq_root(
        &mut self,
        iface_name: &str,
        class_id: u32,
    ) -> Result<(), KernelError> {
        let itf = iface::lookup(iface_name)?;
        let htb_in_use = self.classes.values().any(|c| c.mode == ShapingMode::Htb);
        let tx_queues = iface::tx_queues(iface_name);
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
                htb::create_fq_root(nl, itf.ifindex, tx_queues)
                    .map_err(nl_err("installing sch_fq"))?;
                self.htb_roots.remove(iface_name);
                self.htb_groups.remove(iface_name);
                Ok(())
            }
            RootQdisc::Foreign { kind, handle } => Err(KernelError::ForeignQdisc {
                iface: iface_name.to_owned(),
                kind,
                handle,
            }),
        }
    }

    /// Writes one leaf, in its group (made first if the interface has no
    /// such group yet). `likely_exists` picks the first attempt (change in
    /// place, or create); the other is the fallback, so no class dump is
    /// needed and 10,000 classes cost 10,000 requests, not 10,000 dumps.
    pub(super) fn write_htb_leaf(
        &mut self,
        iface_name: &str,
        class: &ClassSpec,
        likely_exists: bool,
    ) -> Result<(), KernelError> {
        let ifindex = self.ensure_htb_root(iface_name, class.class_id)?;
        let group = group_of(class.class_id);
        self.ensure_group(iface_name, ifindex, group, class)?;
        let leaf = HtbClass {
            major: group_qdisc_major(group),
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
        write_class_either_way(nl, ifindex, &leaf, likely_exists)
            .map_err(netlink_err(iface_name, "writing an HTB class"))?;
        match htb::write_leaf_queue(nl, ifindex, class.class_id, queue) {
            // A queue of another kind under the same handle (fq_codel became
            // available since): replace it whole.
            Err(e) if e.errno() == Some(libc::EINVAL) => {
                htb::delete_leaf_queue(nl, ifindex, class.class_id)
                    .and_then(|()| htb::write_leaf_queue(nl, ifindex, class.class_id, queue))
            }
            other => other,
        }
        .map_err(netlink_err(iface_name, "writing the queue of an HTB class"))?;
        self.stale_groups.insert(group);
        Ok(())
    }

    pub(super) fn delete_htb_leaf(
        &mut self,
        iface_name: &str,
        class_id: u32,
    ) -> Result<(), KernelError> {
        let group = group_of(class_id);
        self.stale_groups.insert(group);
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(()); // the interface is gone, and its classes with it
        };
        let nl = self.netlink()?;
        match htb::delete_class(nl, itf.ifindex, group_qdisc_major(group), class_id as u16) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            Err(source) => Err(netlink_err(iface_name, "deleting an HTB class")(source)),
        }
    }

    /// Removes our HTB root from `iface`, if it is ours.
    pub(super) fn delete_htb_root(&mut self, iface_name: &str) -> Result<(), KernelError> {
        self.htb_roots.remove(iface_name);
        self.htb_groups.remove(iface_name);
        self.flat_leaves.remove(iface_name);
        let Ok(itf) = iface::lookup(iface_name) else {
            return Ok(());
        };
        let nl = self.netlink()?;
        remove_our_root(nl, iface_name, itf.ifindex)
    }
}

/// Writes `class` by change or by create, trying first the one `likely_exists`
/// suggests: a change of a missing class fails with ENOENT, a create of
/// an existing one with EEXIST, and then the other is the right write.
pub(super) fn write_class_either_way(
    nl: &mut RtNetlink,
    ifindex: u32,
    class: &HtbClass,
    likely_exists: bool,
) -> Result<(), super::netlink::NetlinkError> {
    let (first, second) = if likely_exists {
        (ClassWrite::Change, ClassWrite::Create)
    } else {
        (ClassWrite::Create, ClassWrite::Change)
    };
    match htb::write_class(nl, ifindex, class, first) {
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EEXIST)) => {
            htb::write_class(nl, ifindex, class, second)
        }
        other => other,
    }
}

/// Wraps an rtnetlink failure with the interface and what was being done.
pub(super) fn netlink_err(
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
