//! Pisa-Daemon's tc program.
//!
//! Theory of operation. One program, `pisa_tc_egress`, sits at the egress
//! hook (TCX, or clsact + cls_bpf on kernels before 6.6) of every interface
//! the agent manages: node uplinks and the host side of pod veths. Requests
//! to a database leave through the egress of the interface facing the
//! database, responses through the one facing the client, so shaping both
//! happens at an egress queue and no ifb is needed.
//!
//! For every packet it:
//! 1. counts it per interface (`IFACE_STATS`);
//! 2. parses L2 (Ethernet with one 802.1Q tag, or none on L3 devices), L3
//!    (IPv4 with options, IPv6 with a bounded extension-header walk) and L4
//!    (TCP/UDP ports) — see `parse`;
//! 3. classifies it: a flow tag set by the SQL proxy wins, then the longest
//!    endpoint prefix, exact port before any-port — see `classify`;
//! 4. shapes it by the class's mode: HTB (set `skb->priority` so the HTB
//!    qdisc the agent built enqueues it in the class), EDT (stamp a departure
//!    time for sch_fq) or police (drop above rate + burst) — see `shape`.
//!
//! A second program, `pisa_tc_ingress`, observes the ingress of the same
//! interfaces for SQL identity only (see `identity`). A third,
//! `pisa_tc_floor`, does nothing and is never attached: the dataplane bench
//! runs it beside the others as the floor of its measurement.
//!
//! It never blocks traffic it does not understand: any parse failure passes
//! the packet (fail open) and bumps a reason counter (`REASON_STATS`).
#![no_std]
#![no_main]
// CAS on the class pacing state; see shape.rs.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod classify;
mod debug_events;
mod identity;
mod maps;
mod parse;
mod shape;
mod stats;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use pisa_daemon_common::{reason, DIRECTION_EGRESS};

#[classifier]
pub fn pisa_tc_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(verdict) => verdict,
        // Errors are reasons to let the packet go; they were counted already.
        Err(verdict) => verdict,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    let iface_flags = stats::count_iface(ctx, DIRECTION_EGRESS);
    let packet = match parse::parse(ctx, iface_flags) {
        Ok(packet) => packet,
        Err(why) => {
            stats::count_reason(why);
            if reason::is_fail_open(why) {
                debug_events::fail_open(ctx, why);
            }
            return Err(TC_ACT_OK);
        }
    };
    let mut sql_outcome = None;
    let matched = classify::classify(ctx, &packet, &mut sql_outcome);
    let verdict = match matched {
        Some(matched) => shape::shape(ctx, &matched),
        None => {
            stats::count_reason(reason::UNMATCHED);
            TC_ACT_OK
        }
    };
    // The debug event comes after the verdict, so that no value of the
    // packet path is live across its many formatted arguments. Before it,
    // LLVM shared stack slots between the two, and kernels before 6.18
    // rejected a path through them ("invalid size of register fill").
    if let Some(outcome) = sql_outcome {
        debug_events::sql::<{ debug_events::EGRESS }>(ctx, &packet.flow, outcome);
    }
    Ok(verdict)
}

/// Sees what arrives on an interface, for SQL identity only: a connection
/// start reaches a node through the ingress of the interface facing the
/// client, and where that node has no egress toward the database (it only
/// shapes the responses) this is the one hook that sees it. Never shapes,
/// never drops, counts nothing (egress counts): while no claim selects by
/// SQL identity it returns after one array read.
#[classifier]
pub fn pisa_tc_ingress(ctx: TcContext) -> i32 {
    if classify::sql_rules_exist() {
        let iface_flags = stats::iface_flags(&ctx);
        if let Ok(mut packet) = parse::parse(&ctx, iface_flags) {
            if let Some(outcome) = classify::observe(&ctx, &mut packet) {
                debug_events::sql::<{ debug_events::INGRESS }>(&ctx, &packet.flow, outcome);
            }
        }
    }
    TC_ACT_OK
}

/// The filter at the root of the HTB tree, run by cls_bpf in classic mode
/// (not direct action): its return value is the class id. HTB finds a leaf
/// by `skb->priority` only among its own classes, and the leaves live in
/// the groups' qdiscs, so the root needs this one step: the priority's
/// major names the group. Anything else returns 0, "no match", and takes
/// the root's unshaped direct queue.
#[classifier]
pub fn pisa_htb_group(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the skb the kernel passed in.
    let priority = unsafe { (*ctx.skb.skb).priority };
    pisa_daemon_common::htb_tree::group_class_for(priority) as i32
}

/// Does nothing: the floor the dataplane bench measures beside the real
/// programs (what `BPF_PROG_TEST_RUN` costs per run by itself), so their
/// figures read as a cost above it. The daemon never loads it.
#[classifier]
pub fn pisa_tc_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
