//! The HTB tree the `htb` shaping mode relies on, built over rtnetlink.
//! Its shape (two levels: groups of 128 leaves, each group its own htb
//! qdisc) and every handle in it are in `pisa_daemon_common::htb_tree`.
//!
//! The program picks the leaf by writing `skb->priority = <group>:<class
//! id>`. The root qdisc's one filter (`pisa_htb_group`, cls_bpf) hands the
//! packet to its group's class, and the group's htb finds the leaf by the
//! same priority (htb_classify honours it before any filter). Traffic no
//! class claims keeps `skb->priority` untouched, matches nothing, and goes
//! to the root's direct queue, which is never rate-limited: unmatched
//! traffic is not shaped.
//!
//! Rates change with `tc class change` semantics (RTM_NEWTCLASS without
//! NLM_F_CREATE): HTB updates the class in place and its queue is kept, so
//! one class's change never drops or resets another's packets.

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use pisa_daemon_common::htb_tree::{leaf_handle, leaf_queue_major};
pub use pisa_daemon_common::htb_tree::{HTB_MAJOR, LINK_CLASS_MINOR};

use super::netlink::{NetlinkError, RtNetlink};
use crate::model::LeafQueue;

/// `skb->priority` value that puts a packet in class `class_id`'s leaf.
pub const fn htb_handle(class_id: u32) -> u32 {
    leaf_handle(class_id)
}

/// HTB's time unit: the kernel converts `buffer` with PSCHED_TICKS2NS,
/// i.e. one tick is 64 ns (PSCHED_SHIFT = 6, Linux 3.4+).
const PSCHED_SHIFT: u32 = 6;
/// linux/pkt_sched.h `TC_LINKLAYER_ETHERNET`: with it set, HTB needs no
/// legacy rate tables (htb_change_class, Linux 3.8+).
const TC_LINKLAYER_ETHERNET: u8 = 1;

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;

/// HTB quantum bounds: below one MTU-sized frame, DRR starves; above
/// 200000 bytes the kernel warns and fairness suffers.
const MIN_QUANTUM: u64 = 1514;
const MAX_QUANTUM: u64 = 200_000;
/// Direct-queue length: unmatched traffic must not be dropped by our qdisc
/// while the device is briefly busy.
const DIRECT_QLEN: u32 = 10_000;

/// One HTB class as the kernel should hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HtbClass {
    /// The major of the htb qdisc the class lives in (its parent's too).
    pub major: u16,
    pub minor: u16,
    pub parent_minor: u16,
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    pub burst_bytes: u32,
    pub cburst_bytes: u32,
    /// 0 (served first when borrowing) .. 7.
    pub prio: u32,
}

/// What sits at the root of an interface, as far as HTB setup cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootQdisc {
    /// Nothing we must preserve: the kernel's default (handle 0:).
    KernelDefault { kind: String },
    /// Our HTB tree.
    Ours,
    /// Our sch_fq (EDT pacing), same handle major: one fq at the root, or
    /// `mq` with an fq under each transmit queue.
    OursFq,
    /// Somebody else's qdisc: do not touch.
    Foreign { kind: String, handle: u32 },
}

pub fn root_qdisc(nl: &mut RtNetlink, ifindex: u32) -> Result<RootQdisc, NetlinkError> {
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    let replies = nl.dump(RouteNetlinkMessage::GetQueueDiscipline(request))?;
    for reply in replies {
        let RouteNetlinkMessage::NewQueueDiscipline(msg) = reply else {
            continue;
        };
        if msg.header.index != ifindex as i32 || msg.header.parent != TcHandle::ROOT {
            continue;
        }
        let kind = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let handle = u32::from(msg.header.handle.major) << 16 | u32::from(msg.header.handle.minor);
        if kind == "htb" && msg.header.handle.major == HTB_MAJOR {
            return Ok(RootQdisc::Ours);
        }
        if (kind == "fq" || kind == "mq") && msg.header.handle.major == HTB_MAJOR {
            return Ok(RootQdisc::OursFq);
        }
        if msg.header.handle.major == 0 {
            return Ok(RootQdisc::KernelDefault { kind });
        }
        return Ok(RootQdisc::Foreign { kind, handle });
    }
    Ok(RootQdisc::KernelDefault {
        kind: "noqueue".into(),
    })
}

/// A message about our root qdisc (handle `HTB_MAJOR:`) on `ifindex`.
fn root_message(ifindex: u32, attributes: Vec<TcAttribute>) -> TcMessage {
    TcMessage::from_parts(
        header(
            ifindex,
            TcHandle {
                major: HTB_MAJOR,
                minor: 0,
            },
            TcHandle::ROOT,
        ),
        attributes,
    )
}

fn header(ifindex: u32, handle: TcHandle, parent: TcHandle) -> TcHeader {
    TcHeader {
        index: ifindex as i32,
        handle,
        parent,
        ..TcHeader::default()
    }
}

/// Installs the root HTB qdisc (replacing a kernel default root qdisc).
pub fn create_root(nl: &mut RtNetlink, ifindex: u32) -> Result<(), NetlinkError> {
    let message = root_message(ifindex, htb_qdisc_attributes());
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Installs group `major`'s htb qdisc inside class `HTB_MAJOR:parent_minor`.
/// One that is there already (an adopted tree) is left as it is.
pub fn create_group_qdisc(
    nl: &mut RtNetlink,
    ifindex: u32,
    major: u16,
    parent_minor: u16,
) -> Result<(), NetlinkError> {
    let message = TcMessage::from_parts(
        header(
            ifindex,
            TcHandle { major, minor: 0 },
            TcHandle {
                major: HTB_MAJOR,
                minor: parent_minor,
            },
        ),
        htb_qdisc_attributes(),
    );
    match nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// `tc qdisc ... htb default 0 direct_qlen 10000`.
fn htb_qdisc_attributes() -> Vec<TcAttribute> {
    let mut glob = Vec::with_capacity(20);
    for field in [3u32, 10, 0, 0, 0] {
        // version 3, rate2quantum 10, defcls 0 (direct), debug, direct_pkts
        glob.extend_from_slice(&field.to_ne_bytes());
    }
    let options = vec![
        TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob)),
        TcOption::Other(DefaultNla::new(
            TCA_HTB_DIRECT_QLEN,
            DIRECT_QLEN.to_ne_bytes().to_vec(),
        )),
    ];
    vec![
        TcAttribute::Kind("htb".into()),
        TcAttribute::Options(options),
    ]
}

/// `ETH_P_ALL`, in the network byte order `tcm_info` carries it in.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// The root filter's preference and handle: there is only ever one.
const GROUP_FILTER_PREF: u16 = 1;
const GROUP_FILTER_HANDLE: u32 = 1;

/// Installs (or swaps in place) the root qdisc's one filter: program
/// `prog_fd` under cls_bpf in classic mode, whose return value is the
/// class. A replace swaps the program atomically, so a restarted daemon's
/// copy takes over without a packet missing its group.
pub fn write_group_filter(
    nl: &mut RtNetlink,
    ifindex: u32,
    prog_fd: u32,
    prog_name: &str,
) -> Result<(), NetlinkError> {
    let mut message = TcMessage::from_parts(
        header(
            ifindex,
            TcHandle {
                major: 0,
                minor: GROUP_FILTER_HANDLE as u16,
            },
            TcHandle {
                major: HTB_MAJOR,
                minor: 0,
            },
        ),
        vec![
            TcAttribute::Kind("bpf".into()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
                TcOption::Bpf(TcFilterBpfOption::ProgName(prog_name.to_owned())),
            ]),
        ],
    );
    message.header.info = (u32::from(GROUP_FILTER_PREF) << 16) | u32::from(ETH_P_ALL_BE);
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Installs sch_fq at the root for EDT classes: fq releases each packet at
/// its `skb->tstamp` (Linux 4.20+, "fq: add EDT support"), with fq's own
/// defaults, including its 10 s drop horizon.
pub fn create_fq_root(
    nl: &mut RtNetlink,
    ifindex: u32,
    tx_queues: u32,
) -> Result<(), NetlinkError> {
    if tx_queues <= 1 {
        let message = root_message(ifindex, vec![TcAttribute::Kind("fq".into())]);
        return nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        );
    }
    // A multiqueue device keeps its queues (and their locks) apart: `mq` at
    // the root and one fq under each transmit queue, which all honour the
    // departure times one shared pacer wrote. One fq at the root would
    // serialise every queue behind one lock, as an HTB root does.
    let message = root_message(ifindex, vec![TcAttribute::Kind("mq".into())]);
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    for queue in 1..=tx_queues {
        let Ok(minor) = u16::try_from(queue) else {
            break;
        };
        let message = TcMessage::from_parts(
            header(
                ifindex,
                TcHandle::UNSPEC,
                TcHandle {
                    major: HTB_MAJOR,
                    minor,
                },
            ),
            vec![TcAttribute::Kind("fq".into())],
        );
        nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(())
}

/// Removes our root qdisc (and with it every class). The kernel restores
/// the interface's default qdisc.
pub fn delete_root(nl: &mut RtNetlink, ifindex: u32) -> Result<(), NetlinkError> {
    let message = root_message(ifindex, vec![]);
    nl.request(RouteNetlinkMessage::DelQueueDiscipline(message), 0)
}

/// `TCA_OPTIONS` (linux/rtnetlink.h): bfifo takes a bare `struct
/// tc_fifo_qopt { __u32 limit; }` there, not nested attributes.
const TCA_OPTIONS: u16 = 2;

/// Installs (or changes in place) the queue inside class `class_id`'s
/// leaf. Replacing a queue of the same kind changes it in place and keeps
/// its packets.
pub fn write_leaf_queue(
    nl: &mut RtNetlink,
    ifindex: u32,
    class_id: u32,
    queue: LeafQueue,
) -> Result<(), NetlinkError> {
    let mut attributes = vec![TcAttribute::Kind(queue.kind().into())];
    if let LeafQueue::Bfifo { limit_bytes } = queue {
        attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            limit_bytes.to_ne_bytes().to_vec(),
        )));
    }
    let message = TcMessage::from_parts(leaf_queue_header(ifindex, class_id), attributes);
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Removes the queue inside class `class_id`'s leaf; HTB falls back to
/// its default.
pub fn delete_leaf_queue(
    nl: &mut RtNetlink,
    ifindex: u32,
    class_id: u32,
) -> Result<(), NetlinkError> {
    let message = TcMessage::from_parts(leaf_queue_header(ifindex, class_id), vec![]);
    nl.request(RouteNetlinkMessage::DelQueueDiscipline(message), 0)
}

fn leaf_queue_header(ifindex: u32, class_id: u32) -> TcHeader {
    let leaf = leaf_handle(class_id);
    header(
        ifindex,
        TcHandle {
            major: leaf_queue_major(class_id),
            minor: 0,
        },
        TcHandle {
            major: (leaf >> 16) as u16,
            minor: leaf as u16,
        },
    )
}

/// How a class write should behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassWrite {
    /// `tc class add`: fails if the class exists.
    Create,
    /// `tc class change`: modifies in place, keeps the queue; fails if absent.
    Change,
}

pub fn write_class(
    nl: &mut RtNetlink,
    ifindex: u32,
    class: &HtbClass,
    write: ClassWrite,
) -> Result<(), NetlinkError> {
    let message = TcMessage::from_parts(
        header(
            ifindex,
            TcHandle {
                major: class.major,
                minor: class.minor,
            },
            TcHandle {
                major: class.major,
                minor: class.parent_minor,
            },
        ),
        vec![
            TcAttribute::Kind("htb".into()),
            TcAttribute::Options(class_options(class)),
        ],
    );
    let flags = match write {
        ClassWrite::Create => NLM_F_CREATE | NLM_F_EXCL,
        ClassWrite::Change => 0,
    };
    nl.request(RouteNetlinkMessage::NewTrafficClass(message), flags)
}

/// Removes class `major:minor`, with its queue (or, for a group's class,
/// the group's qdisc and every leaf in it).
pub fn delete_class(
    nl: &mut RtNetlink,
    ifindex: u32,
    major: u16,
    minor: u16,
) -> Result<(), NetlinkError> {
    let message = TcMessage::from_parts(
        header(ifindex, TcHandle { major, minor }, TcHandle::UNSPEC),
        vec![],
    );
    nl.request(RouteNetlinkMessage::DelTrafficClass(message), 0)
}

/// Minors of the classes present on `ifindex` in our root qdisc (the
/// groups' classes live in qdiscs of their own and are not listed).
pub fn class_minors(nl: &mut RtNetlink, ifindex: u32) -> Result<Vec<u16>, NetlinkError> {
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    // A parent major makes the kernel dump that qdisc's classes only
    // (tc_dump_tclass_qdisc), not the 10,000 leaves in the groups.
    request.header.parent = TcHandle {
        major: HTB_MAJOR,
        minor: 0,
    };
    let replies = nl.dump(RouteNetlinkMessage::GetTrafficClass(request))?;
    let mut minors: Vec<u16> = replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficClass(msg)
                if msg.header.index == ifindex as i32 && msg.header.handle.major == HTB_MAJOR =>
            {
                Some(msg.header.handle.minor)
            }
            _ => None,
        })
        .collect();
    minors.sort_unstable();
    Ok(minors)
}

/// `struct tc_htb_opt` plus 64-bit rates, as iproute2 sends them.
fn class_options(class: &HtbClass) -> Vec<TcOption> {
    let mut parms = Vec::with_capacity(44);
    ratespec(&mut parms, class.rate_bytes);
    ratespec(&mut parms, class.ceil_bytes);
    let buffer = xmit_ticks(u64::from(class.burst_bytes), class.rate_bytes);
    let cbuffer = xmit_ticks(u64::from(class.cburst_bytes), class.ceil_bytes);
    let quantum = (class.rate_bytes / 10).clamp(MIN_QUANTUM, MAX_QUANTUM) as u32;
    for field in [buffer, cbuffer, quantum, 0 /* level */, class.prio] {
        parms.extend_from_slice(&field.to_ne_bytes());
    }
    let mut options = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, parms))];
    if class.rate_bytes > u64::from(u32::MAX) {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_RATE64,
            class.rate_bytes.to_ne_bytes().to_vec(),
        )));
    }
    if class.ceil_bytes > u64::from(u32::MAX) {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_CEIL64,
            class.ceil_bytes.to_ne_bytes().to_vec(),
        )));
    }
    options
}

/// `struct tc_ratespec`: cell_log, linklayer, overhead, cell_align, mpu, rate.
fn ratespec(out: &mut Vec<u8>, rate_bytes: u64) {
    out.push(0); // cell_log: unused with linklayer set
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&(rate_bytes.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
}

/// Time to send `bytes` at `rate_bytes`, in psched ticks (64 ns).
fn xmit_ticks(bytes: u64, rate_bytes: u64) -> u32 {
    let ns = pisa_daemon_common::pacing::transmit_ns(bytes, rate_bytes);
    (ns >> PSCHED_SHIFT).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_puts_class_id_in_the_minor() {
        assert_eq!(htb_handle(7), 0x5200_0007);
        assert_eq!(htb_handle(16383), 0x527F_3FFF);
    }

    #[test]
    fn htb_opt_has_kernel_layout() {
        let class = HtbClass {
            major: HTB_MAJOR,
            minor: 2,
            parent_minor: LINK_CLASS_MINOR,
            rate_bytes: 1_250_000,
            ceil_bytes: 12_500_000,
            burst_bytes: 64 * 1024,
            cburst_bytes: 64 * 1024,
            prio: 3,
        };
        let options = class_options(&class);
        assert_eq!(options.len(), 1, "no 64-bit rates below 4 GB/s");
        let TcOption::Other(nla) = &options[0] else {
            panic!("expected raw TCA_HTB_PARMS");
        };
        let mut buf = vec![0u8; netlink_packet_core::Nla::value_len(nla)];
        netlink_packet_core::Nla::emit_value(nla, &mut buf);
        assert_eq!(buf.len(), 44, "sizeof(struct tc_htb_opt)");
        assert_eq!(buf[1], TC_LINKLAYER_ETHERNET);
        let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        assert_eq!(u32_at(8), 1_250_000, "rate.rate");
        assert_eq!(u32_at(20), 12_500_000, "ceil.rate");
        // 65536 bytes at 1.25 MB/s = 52.4288 ms = 819200 ticks of 64 ns.
        assert_eq!(u32_at(24), 819_200, "buffer");
        assert_eq!(u32_at(32), 125_000, "quantum = rate / 10");
        assert_eq!(u32_at(40), 3, "prio");
    }

    #[test]
    fn rates_above_u32_use_64_bit_attributes() {
        let class = HtbClass {
            major: HTB_MAJOR,
            minor: 2,
            parent_minor: LINK_CLASS_MINOR,
            rate_bytes: 10_000_000_000,
            ceil_bytes: 10_000_000_000,
            burst_bytes: 1 << 20,
            cburst_bytes: 1 << 20,
            prio: 0,
        };
        assert_eq!(class_options(&class).len(), 3);
    }
}
