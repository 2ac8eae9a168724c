//! Counters. All per-CPU, so the hot path never contends on a cache line;
//! the agent sums them at scrape time.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use pisa_daemon_common::{IfaceKey, IfaceStats};

use crate::maps::{CLASS_STATS, IFACE_STATS, REASON_STATS};

/// Counts the packet on its interface and returns the interface's flags.
#[inline(always)]
pub fn count_iface(ctx: &TcContext, direction: u32) -> u32 {
    // SAFETY: the skb pointer is the one the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfaceKey { ifindex, direction };
    let len = u64::from(ctx.len());
    if let Some(stats) = IFACE_STATS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += len;
            return (*stats).flags;
        }
    }
    // First packet on an interface the agent never configured (so: plain
    // Ethernet, flags 0). A concurrent creator on another CPU wins
    // harmlessly (NOEXIST).
    let first = IfaceStats {
        packets: 1,
        bytes: len,
        flags: 0,
        _pad: 0,
    };
    if IFACE_STATS
        .insert(&key, &first, u64::from(BPF_NOEXIST))
        .is_err()
    {
        if let Some(stats) = IFACE_STATS.get_ptr_mut(&key) {
            // SAFETY: as above.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += len;
                return (*stats).flags;
            }
        }
    }
    0
}

/// The interface's flags (from its egress entry, where the agent writes
/// them), without counting anything; 0 for an interface never configured.
#[inline(always)]
pub fn iface_flags(ctx: &TcContext) -> u32 {
    // SAFETY: the skb pointer is the one the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfaceKey {
        ifindex,
        direction: pisa_daemon_common::DIRECTION_EGRESS,
    };
    match IFACE_STATS.get_ptr(&key) {
        // SAFETY: per-CPU value; a plain read.
        Some(stats) => unsafe { (*stats).flags },
        None => 0,
    }
}

#[inline(always)]
pub fn count_reason(reason: u32) {
    if let Some(stats) = REASON_STATS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).packets += 1 };
    }
}

#[derive(Clone, Copy)]
pub enum ClassEvent {
    Sent,
    Delayed,
    Dropped,
}

#[inline(always)]
pub fn count_class(class_id: u32, len: u64, event: ClassEvent) {
    if let Some(stats) = CLASS_STATS.get_ptr_mut(class_id) {
        // SAFETY: per-CPU value. `packets`/`bytes` count what was let through
        // (the achieved rate); drops are counted apart.
        unsafe {
            match event {
                ClassEvent::Sent => {
                    (*stats).packets += 1;
                    (*stats).bytes += len;
                }
                ClassEvent::Delayed => {
                    (*stats).packets += 1;
                    (*stats).bytes += len;
                    (*stats).delayed += 1;
                }
                ClassEvent::Dropped => (*stats).drops += 1,
            }
        }
    }
}
