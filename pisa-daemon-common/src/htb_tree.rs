//! Where each class sits in the two-level HTB tree the `htb` mode builds,
//! shared by the agent (which builds the tree and writes each class's
//! `skb->priority`) and the group classifier (which reads it back).
//!
//! ```text
//! 5150:          root qdisc htb, default 0 (unclassified -> direct queue)
//! │  filter: pisa_htb_group (cls_bpf), group major -> group class
//! └─ 5150:ffff   link class: rate = ceil = the link
//!    ├─ 5150:4000+g   group g: rate = sum of its leaves' rates, ceil = link
//!    │  └─ 5200+g:    the group's own htb qdisc
//!    │     └─ 5200+g:ffff   rate = ceil = the link
//!    │        ├─ 5200+g:<id>   one leaf per class id in the group
//!    │        │  └─ 1000+id:   its short queue
//! ```
//!
//! Why two levels: the kernel walks every class of a qdisc each time one is
//! created (`tc_bind_tclass`), so 10,000 classes under one qdisc cost 6.4 s
//! to create; in groups of 128 they cost 0.7 s (docs/benchmarks.md).

/// Our root qdisc's handle major.
pub const HTB_MAJOR: u16 = 0x5150;
/// Minor of the link class at the top of every tree we build.
pub const LINK_CLASS_MINOR: u16 = 0xFFFF;
/// Class ids per group (a power of two: a group is `class_id >> 7`).
pub const GROUP_SHIFT: u32 = 7;
/// How many groups class ids 1..16383 fall into.
pub const GROUPS: u16 = 128;
/// Minor of group 0's class under the link class. Flat trees of earlier
/// releases used minors below this one for their leaves, so an upgrade
/// builds the groups beside them and no handle is ever reused.
pub const GROUP_CLASS_MINOR_BASE: u16 = 0x4000;
/// Handle major of group 0's own htb qdisc.
pub const GROUP_QDISC_MAJOR_BASE: u16 = 0x5200;
/// Handle major of class 0's leaf queue (a range apart from the flat
/// tree's `0x8000 | id`, for the same reason).
pub const LEAF_QUEUE_MAJOR_BASE: u16 = 0x1000;

/// The group a class id belongs to.
pub const fn group_of(class_id: u32) -> u16 {
    ((class_id & 0x3FFF) >> GROUP_SHIFT) as u16
}

/// The handle major of group `group`'s htb qdisc.
pub const fn group_qdisc_major(group: u16) -> u16 {
    GROUP_QDISC_MAJOR_BASE + (group % GROUPS)
}

/// The minor of group `group`'s class under our root's link class.
pub const fn group_class_minor(group: u16) -> u16 {
    GROUP_CLASS_MINOR_BASE + (group % GROUPS)
}

/// The handle major of the queue inside class `class_id`'s leaf.
pub const fn leaf_queue_major(class_id: u32) -> u16 {
    LEAF_QUEUE_MAJOR_BASE + (class_id & 0x3FFF) as u16
}

/// `skb->priority` (and the HTB class handle) of class `class_id`'s leaf.
pub const fn leaf_handle(class_id: u32) -> u32 {
    ((group_qdisc_major(group_of(class_id)) as u32) << 16) | (class_id & 0x3FFF)
}

/// What the group classifier returns for a packet whose `skb->priority`
/// is `priority`: the group class the root qdisc must hand it to, or 0
/// ("no match": the root's default, its unshaped direct queue) for a
/// priority that names no leaf of ours.
pub const fn group_class_for(priority: u32) -> u32 {
    let major = (priority >> 16) as u16;
    if major < GROUP_QDISC_MAJOR_BASE || major >= GROUP_QDISC_MAJOR_BASE + GROUPS {
        return 0;
    }
    ((HTB_MAJOR as u32) << 16) | group_class_minor(major - GROUP_QDISC_MAJOR_BASE) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_id_has_its_own_handles_and_a_group_that_finds_it() {
        for id in 1..16384u32 {
            let group = group_of(id);
            assert!(group < GROUPS);
            let handle = leaf_handle(id);
            assert_eq!(handle & 0xFFFF, id);
            assert_eq!(
                group_class_for(handle),
                (0x5150 << 16) | u32::from(group_class_minor(group))
            );
            let queue = leaf_queue_major(id);
            // No queue handle meets a qdisc of the tree, the flat tree's
            // queues, or the clsact/ingress handle ffff:.
            assert!(queue < HTB_MAJOR && queue > 0, "{id}: {queue:#x}");
        }
        assert_eq!(leaf_handle(7), 0x5200_0007);
        assert_eq!(leaf_handle(128), 0x5201_0080);
        assert_eq!(leaf_handle(16383), 0x527F_3FFF);
    }

    #[test]
    fn priorities_that_are_not_our_leaves_match_nothing() {
        for priority in [
            0,
            6,
            0x5150_0001,
            0x5150_FFFF,
            0x51FF_0001,
            0x5280_0001,
            0xFFFF_FFFF,
        ] {
            assert_eq!(group_class_for(priority), 0, "{priority:#x}");
        }
    }
}
