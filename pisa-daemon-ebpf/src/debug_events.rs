//! Debug events for the daemon's log (aya-log), off by default. Every event
//! sits behind one array read of `KERNEL_LOG`, and only on paths a packet
//! rarely takes (it failed to parse; a connection start or close was, or
//! was not, handed up), so the common path pays nothing and an enabled node
//! logs no more than those paths see. A full log ring drops events; the
//! counters (`REASON_STATS`, `SQL_STATS`) still count every one.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use core::net::{Ipv4Addr, Ipv6Addr};
use pisa_daemon_common::{sql_reason, FlowKey, FAMILY_V4, KERNEL_LOG_OFF};

use crate::maps::KERNEL_LOG;

#[inline(always)]
fn enabled() -> bool {
    KERNEL_LOG
        .get(0)
        .is_some_and(|level| *level != KERNEL_LOG_OFF)
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context's skb is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// A packet passed because it could not be parsed (`reason`, a
/// `pisa_daemon_common::reason` index).
#[inline(always)]
pub fn fail_open(ctx: &TcContext, reason: u32) {
    if enabled() {
        debug!(
            ctx,
            "fail open: reason {} on ifindex {}",
            reason,
            ifindex(ctx)
        );
    }
}

/// `sql`'s hooks. Each hook gets its own copy of the event code: aya-log's
/// macro wraps every event in a closure, and a closure with one caller is
/// inlined, while one shared by both programs would be a BPF subprogram
/// that this toolchain emits without the function info the verifier wants.
pub const EGRESS: u8 = 0;
pub const INGRESS: u8 = 1;

/// What became of a connection start or close on the SQL-identity path
/// (one call per program: see `EGRESS`).
#[inline(always)]
pub fn sql<const HOOK: u8>(ctx: &TcContext, flow: &FlowKey, outcome: u32) {
    if !enabled() {
        return;
    }
    let what = match outcome {
        sql_reason::STARTS_SENT => "start handed up",
        sql_reason::CLOSES_SENT => "close handed up",
        sql_reason::THROTTLED => "not handed up: over the event budget",
        sql_reason::RING_FULL => "not handed up: ring full",
        _ => "not handed up: unreadable",
    };
    let src_port = u16::from_be(flow.src_port_be);
    let dst_port = u16::from_be(flow.dst_port_be);
    let ifindex = ifindex(ctx);
    if flow.family == FAMILY_V4 {
        let src = Ipv4Addr::new(
            flow.src_addr[0],
            flow.src_addr[1],
            flow.src_addr[2],
            flow.src_addr[3],
        );
        let dst = Ipv4Addr::new(
            flow.dst_addr[0],
            flow.dst_addr[1],
            flow.dst_addr[2],
            flow.dst_addr[3],
        );
        debug!(
            ctx,
            "sql identity: {} {}:{} -> {}:{} on ifindex {}",
            what,
            src,
            src_port,
            dst,
            dst_port,
            ifindex
        );
    } else {
        let src = Ipv6Addr::from(flow.src_addr);
        let dst = Ipv6Addr::from(flow.dst_addr);
        debug!(
            ctx,
            "sql identity: {} [{}]:{} -> [{}]:{} on ifindex {}",
            what,
            src,
            src_port,
            dst,
            dst_port,
            ifindex
        );
    }
}
