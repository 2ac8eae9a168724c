//! Shaping by class mode.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use pisa_daemon_common::{
    pacing::{
        beyond_horizon, pace, pace_borrowing, police_burst_ns, police_conforms, transmit_ns,
        Clocks, Costs, PaceDecision,
    },
    MODE_EDT, MODE_HTB, MODE_POLICE,
};

use crate::{
    classify::Matched,
    maps::{CLASS_CEIL_PACE, CLASS_PACE, LINK_PACE},
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
    if config.ceil_bytes > config.rate_bytes {
        if let Some(verdict) = borrowing(ctx, matched, len, wire, now, tat) {
            return verdict;
        }
    }
    let (cost, burst) = cost_and_burst(
        wire,
        u64::from(config.burst_bytes),
        config.rate_bytes,
        police,
    );

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
            charge_link(ctx, wire, now);
            return send(ctx, matched, len, decision.departure_ns, now);
        }
    }
    // Heavy contention: charge the packet anyway so the class cannot exceed
    // its rate, and send it at the current pace.
    // SAFETY: see above.
    let previous = unsafe { atomic_xadd::<u64, u64, { Relaxed }>(tat, cost) };
    let departure = previous.saturating_add(cost);
    charge_link(ctx, wire, now);
    send(ctx, matched, len, departure, now)
}

/// A packet's cost and the bucket's depth, in the time of a clock at
/// `rate`. Police: the bucket is at least as deep as the packet (see
/// `police_burst_ns`); EDT delays an oversized packet instead.
#[inline(always)]
fn cost_and_burst(wire: u64, burst_bytes: u64, rate: u64, police: bool) -> (u64, u64) {
    let cost = transmit_ns(wire, rate);
    let burst = transmit_ns(burst_bytes, rate);
    if police {
        (cost, police_burst_ns(burst, cost))
    } else {
        (cost, burst)
    }
}

/// A class that never borrows still uses the link: its packets are charged
/// to the link's clock, so that borrowers see only what is left.
#[inline(always)]
fn charge_link(ctx: &TcContext, wire: u64, now: u64) {
    // SAFETY: the context's skb is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(link) = LINK_PACE.get_ptr_mut(&ifindex) else {
        return;
    };
    // SAFETY: map value, 8-byte aligned, live for the program's run.
    let (link_rate, link_tat) = unsafe { ((*link).rate_bytes, &raw mut (*link).tat_ns) };
    if link_rate == 0 {
        return;
    }
    let cost = transmit_ns(wire, link_rate);
    // SAFETY: an aligned u64 of map memory.
    let old = unsafe { core::ptr::read_volatile(link_tat) };
    commit(link_tat, old, pace(old, now, cost, 0).next_tat_ns, cost);
}

/// A class whose ceil is above its rate, on an interface whose link rate
/// the daemon set: paced by `pace_borrowing` on three clocks (its rate,
/// its ceil, the link). `None` when the class or the link has no clock
/// (an interface attached by an older build): then it is paced at its rate.
///
/// The clocks are read, the decision made, then each clock is written with
/// one compare-and-swap; a clock another CPU moved meanwhile is charged
/// this packet's cost instead, so racing CPUs can only make the class
/// slower, never let it exceed its ceil or the link.
#[inline(always)]
fn borrowing(
    ctx: &TcContext,
    matched: &Matched,
    len: u64,
    wire: u64,
    now: u64,
    rate_tat: *mut u64,
) -> Option<i32> {
    let config = &matched.config;
    let ceil_tat = CLASS_CEIL_PACE.get_ptr_mut(matched.class_id)?.cast::<u64>();
    // SAFETY: the context's skb is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let link = LINK_PACE.get_ptr_mut(&ifindex)?;
    // SAFETY: map values, 8-byte aligned, live for the program's run.
    let (link_rate, link_tat) = unsafe { ((*link).rate_bytes, &raw mut (*link).tat_ns) };
    if link_rate == 0 {
        return None;
    }
    let burst = u64::from(config.burst_bytes);
    let police = config.mode == MODE_POLICE;
    let clock = |rate: u64| cost_and_burst(wire, burst, rate, police);
    let (rate_ns, rate_burst_ns) = clock(config.rate_bytes);
    let (ceil_ns, ceil_burst_ns) = clock(config.ceil_bytes);
    let (link_ns, link_burst_ns) = clock(link_rate);
    let costs = Costs {
        rate_ns,
        rate_burst_ns,
        ceil_ns,
        ceil_burst_ns,
        link_ns,
        link_burst_ns,
    };
    // SAFETY: aligned 8-byte loads of map values (see `paced`).
    let clocks = unsafe {
        Clocks {
            rate_tat_ns: core::ptr::read_volatile(rate_tat),
            ceil_tat_ns: core::ptr::read_volatile(ceil_tat),
            link_tat_ns: core::ptr::read_volatile(link_tat),
        }
    };
    let decision = pace_borrowing(&clocks, now, &costs);
    let chosen = PaceDecision {
        departure_ns: decision.departure_ns,
        next_tat_ns: decision.departure_ns,
    };
    let drop = if police {
        !police_conforms(&chosen, now)
    } else {
        beyond_horizon(&chosen, now, config.horizon_ns)
    };
    if drop {
        count_class(matched.class_id, len, ClassEvent::Dropped);
        return Some(TC_ACT_SHOT);
    }
    if !decision.borrowed {
        commit(
            rate_tat,
            clocks.rate_tat_ns,
            decision.next.rate_tat_ns,
            costs.rate_ns,
        );
    }
    commit(
        ceil_tat,
        clocks.ceil_tat_ns,
        decision.next.ceil_tat_ns,
        costs.ceil_ns,
    );
    commit(
        link_tat,
        clocks.link_tat_ns,
        decision.next.link_tat_ns,
        costs.link_ns,
    );
    Some(send(ctx, matched, len, decision.departure_ns, now))
}

/// Moves a clock from `old` to `new`, or, when another CPU moved it first,
/// adds `cost` to wherever it is now.
#[inline(always)]
fn commit(clock: *mut u64, old: u64, new: u64, cost: u64) {
    // SAFETY: an aligned u64 of map memory (see `paced`).
    let (_, swapped) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(clock, old, new) };
    if !swapped {
        // SAFETY: as above.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(clock, cost) };
    }
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
