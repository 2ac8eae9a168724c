//! Pacing arithmetic shared by the kernel program (which enforces it) and
//! the agent's tests (which check it). It is a GCRA, the virtual-time form of
//! a token bucket: one `u64` per class (`tat_ns`) instead of a token count
//! and a timestamp, so that one compare-and-swap updates it atomically.
//!
//! `tat_ns` is the time at which every byte sent so far would have finished
//! at the configured rate. A class that idles accumulates credit, but never
//! more than its burst: `tat_ns` is clamped to `now - burst_time`.

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds it takes to send `bytes` at `rate_bytes` bytes per second.
/// A zero rate means "unlimited" and costs nothing. Saturates instead of
/// overflowing (a 4 GiB packet at 1 byte/s still fits in u64 ns).
#[inline(always)]
pub fn transmit_ns(bytes: u64, rate_bytes: u64) -> u64 {
    if rate_bytes == 0 {
        return 0;
    }
    bytes.saturating_mul(NSEC_PER_SEC) / rate_bytes
}

/// What the pacer decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceDecision {
    /// Earliest time the packet may leave (EDT `skb->tstamp`); equal to
    /// `now` when the class has credit left.
    pub departure_ns: u64,
    /// The class's new theoretical arrival time, if the packet is sent.
    pub next_tat_ns: u64,
}

/// Charge one packet of `cost_ns` against a class whose state is `tat_ns`.
#[inline(always)]
pub fn pace(tat_ns: u64, now_ns: u64, cost_ns: u64, burst_ns: u64) -> PaceDecision {
    let floor = now_ns.saturating_sub(burst_ns);
    let start = if tat_ns > floor { tat_ns } else { floor };
    let next_tat_ns = start.saturating_add(cost_ns);
    let departure_ns = if next_tat_ns > now_ns {
        next_tat_ns
    } else {
        now_ns
    };
    PaceDecision {
        departure_ns,
        next_tat_ns,
    }
}

/// Police: the packet conforms when the bucket holds enough credit to send
/// it now, i.e. it would not have to wait.
#[inline(always)]
pub fn police_conforms(decision: &PaceDecision, now_ns: u64) -> bool {
    decision.departure_ns <= now_ns
}

/// EDT: the packet is dropped when it would wait longer than the horizon
/// (its queue would otherwise grow without bound under overload).
#[inline(always)]
pub fn beyond_horizon(decision: &PaceDecision, now_ns: u64, horizon_ns: u64) -> bool {
    decision.departure_ns.saturating_sub(now_ns) > horizon_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmit_ns_is_bytes_over_rate() {
        // 1500 bytes at 1.25 MB/s (10 Mbit/s) take 1.2 ms.
        assert_eq!(transmit_ns(1500, 1_250_000), 1_200_000);
        assert_eq!(transmit_ns(1, 1_000_000_000), 1);
        assert_eq!(transmit_ns(1500, 0), 0);
        assert_eq!(transmit_ns(u64::MAX, 1), u64::MAX, "saturates");
    }

    #[test]
    fn pace_spaces_back_to_back_packets_by_size_over_rate() {
        let cost = transmit_ns(1000, 1_000_000); // 1 ms
        let now = 10 * NSEC_PER_SEC;
        let first = pace(0, now, cost, 0);
        assert_eq!(first.next_tat_ns, now + cost);
        assert_eq!(first.departure_ns, now + cost);
        let second = pace(first.next_tat_ns, now, cost, 0);
        assert_eq!(second.departure_ns, now + 2 * cost);
    }

    #[test]
    fn pace_lets_a_burst_through_after_idle_but_no_more() {
        let cost = 1_000_000;
        let burst = 3 * cost;
        let now = 50 * NSEC_PER_SEC;
        let mut tat = 0;
        let mut sent_now = 0;
        for _ in 0..5 {
            let d = pace(tat, now, cost, burst);
            if police_conforms(&d, now) {
                sent_now += 1;
                tat = d.next_tat_ns;
            }
        }
        assert_eq!(sent_now, 3, "exactly burst/cost packets conform at once");
    }

    #[test]
    fn police_holds_long_run_rate() {
        let rate = 1_250_000; // 10 Mbit/s
        let size = 1500;
        let cost = transmit_ns(size, rate);
        let burst = transmit_ns(16 * 1024, rate);
        let mut tat = 0;
        let mut sent = 0u64;
        // Offer 10x the rate for one simulated second.
        let step = cost / 10;
        let mut now = NSEC_PER_SEC;
        while now < 2 * NSEC_PER_SEC {
            let d = pace(tat, now, cost, burst);
            if police_conforms(&d, now) {
                tat = d.next_tat_ns;
                sent += size;
            }
            now += step;
        }
        let max = rate + 16 * 1024 + size;
        assert!(sent <= max && sent >= rate - size, "sent {sent} bytes");
    }

    #[test]
    fn horizon_drops_only_far_future_departures() {
        let now = 1_000;
        let d = PaceDecision {
            departure_ns: now + 500,
            next_tat_ns: now + 500,
        };
        assert!(!beyond_horizon(&d, now, 500));
        assert!(beyond_horizon(&d, now, 499));
    }
}
