//! Shaping by class mode.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use pisa_daemon_common::{
    pacing::{beyond_horizon, pace, police_conforms, transmit_ns},
    MODE_EDT, MODE_HTB, MODE_POLICE,
};

use crate::{
    classify::Matched,
    maps::CLASS_PACE,
    stats::{count_class, ClassEvent},
};

/// Compare-and-swap attempts before the pacer falls back to an
/// unconditional add; only reached when several CPUs race on one class.
const PACE_CAS_ATTEMPTS: usize = 4;

#[inline(always)]
pub fn shape(ctx: &TcContext, matched: &Matched) -> i32 {
    let len = u64::from(ctx.len());
    match matched.config.mode {
        MODE_HTB => {
            // HTB reads skb->priority before running its own filters
            // (htb_classify, since Linux 2.6), so the class is chosen here.
            // SAFETY: writable __sk_buff field for sched_cls programs.
            unsafe { (*ctx.skb.skb).priority = matched.config.htb_handle };
            count_class(matched.class_id, len, ClassEvent::Sent);
            TC_ACT_OK
        }
        MODE_EDT | MODE_POLICE => paced(ctx, matched, len, wire_len(ctx, len)),
        _ => TC_ACT_OK,
    }
}

/// The bytes this packet puts on the wire, as HTB charges them: a GSO
/// packet leaves as several segments, each with its own headers, which
/// `skb->len` counts once. The stack computes the wire length before the
/// egress hook (`qdisc_pkt_len_init`) and exposes it as `wire_len` (Linux
/// 5.0); zero means it was not set, and then `len` is what leaves.
#[inline(always)]
fn wire_len(ctx: &TcContext, len: u64) -> u64 {
    // SAFETY: readable __sk_buff field for sched_cls programs.
    let wire = u64::from(unsafe { (*ctx.skb.skb).wire_len });
    if wire > len {
        wire
    } else {
        len
    }
}

/// Paces (EDT) or polices the packet. The class is charged `wire` bytes;
/// its counters count `len`, as the interface's do.
#[inline(always)]
fn paced(ctx: &TcContext, matched: &Matched, len: u64, wire: u64) -> i32 {
    let Some(pace_state) = CLASS_PACE.get_ptr_mut(matched.class_id) else {
        return TC_ACT_OK;
    };
    let config = &matched.config;
    let police = config.mode == MODE_POLICE;
    // The value is 8-byte aligned map memory shared by all CPUs; atomics are
    // the only access to it from the data plane. (core's Atomic* types have
    // no CAS on the bpf target, so the intrinsics are used directly; they
    // lower to BPF_ATOMIC cmpxchg/fetch-add, Linux 5.12+.)
    let tat = pace_state.cast::<u64>();
    let now = unsafe { bpf_ktime_get_ns() };
    let cost = transmit_ns(wire, config.rate_bytes);
    let burst = transmit_ns(u64::from(config.burst_bytes), config.rate_bytes);

    for _ in 0..PACE_CAS_ATTEMPTS {
        // An aligned 8-byte load is single-copy atomic on BPF; the CAS below
        // catches any concurrent change. SAFETY: see above.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let decision = pace(old, now, cost, burst);
        let drop = if police {
            !police_conforms(&decision, now)
        } else {
            beyond_horizon(&decision, now, config.horizon_ns)
        };
        if drop {
            count_class(matched.class_id, len, ClassEvent::Dropped);
            return TC_ACT_SHOT;
        }
        // SAFETY: see above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(tat, old, decision.next_tat_ns)
        };
        if swapped {
            return send(ctx, matched, len, decision.departure_ns, now);
        }
    }
    // Heavy contention: charge the packet anyway so the class cannot exceed
    // its rate, and send it at the current pace.
    // SAFETY: see above.
    let previous = unsafe { atomic_xadd::<u64, u64, { Relaxed }>(tat, cost) };
    let departure = previous.saturating_add(cost);
    send(ctx, matched, len, departure, now)
}

#[inline(always)]
fn send(ctx: &TcContext, matched: &Matched, len: u64, departure: u64, now: u64) -> i32 {
    if matched.config.mode == MODE_EDT && departure > now {
        // SAFETY: writable __sk_buff field at tc egress; sch_fq honours it.
        unsafe { (*ctx.skb.skb).tstamp = departure };
        count_class(matched.class_id, len, ClassEvent::Delayed);
    } else {
        count_class(matched.class_id, len, ClassEvent::Sent);
    }
    TC_ACT_OK
}
