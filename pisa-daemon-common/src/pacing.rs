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

/// Police: the bucket is at least as deep as the packet in hand. A packet
/// that costs more than the configured burst (a 64 KiB GSO packet against
/// a 32 KiB bucket) would otherwise never conform, and a policed TCP class
/// would pass nothing at all. With this it conforms on a full bucket, its
/// whole cost is charged, and the packets after it wait for that debt: the
/// class still averages its rate.
#[inline(always)]
pub fn police_burst_ns(burst_ns: u64, cost_ns: u64) -> u64 {
    burst_ns.max(cost_ns)
}

/// EDT: the packet is dropped when it would wait longer than the horizon
/// (its queue would otherwise grow without bound under overload).
#[inline(always)]
pub fn beyond_horizon(decision: &PaceDecision, now_ns: u64, horizon_ns: u64) -> bool {
    decision.departure_ns.saturating_sub(now_ns) > horizon_ns
}

/// The three clocks a class that may borrow is paced by: its own at its
/// rate (what it is guaranteed), its own at its ceil (what it may reach),
/// and its interface's at the link rate (what the link has left).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    pub rate_tat_ns: u64,
    pub ceil_tat_ns: u64,
    pub link_tat_ns: u64,
}

/// One packet's cost and the bursts, in each clock's time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    pub rate_ns: u64,
    pub rate_burst_ns: u64,
    pub ceil_ns: u64,
    pub ceil_burst_ns: u64,
    pub link_ns: u64,
    pub link_burst_ns: u64,
}

/// What the borrowing pacer decided for one packet, and the clocks after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BorrowDecision {
    pub departure_ns: u64,
    /// Sent on borrowed time (the link had room before the class's rate
    /// allowed it), so the class's rate clock was not charged.
    pub borrowed: bool,
    pub next: Clocks,
}

/// EDT (and police) with a ceil, in the manner of HTB's borrowing: a packet
/// leaves at the earlier of its guaranteed time (the class's rate clock)
/// and its borrowed time (the later of the class's ceil clock and the
/// link's clock). Every packet charges the ceil and link clocks, so the
/// class never exceeds its ceil and all classes together never exceed the
/// link; only guaranteed packets charge the rate clock, so while a class
/// borrows its guarantee stays available: once the link fills with other
/// traffic, its packets leave on the rate clock again, at once.
#[inline(always)]
pub fn pace_borrowing(clocks: &Clocks, now_ns: u64, costs: &Costs) -> BorrowDecision {
    let guaranteed = pace(
        clocks.rate_tat_ns,
        now_ns,
        costs.rate_ns,
        costs.rate_burst_ns,
    );
    let ceil = pace(
        clocks.ceil_tat_ns,
        now_ns,
        costs.ceil_ns,
        costs.ceil_burst_ns,
    );
    let link = pace(
        clocks.link_tat_ns,
        now_ns,
        costs.link_ns,
        costs.link_burst_ns,
    );
    let borrowed_departure = if ceil.departure_ns > link.departure_ns {
        ceil.departure_ns
    } else {
        link.departure_ns
    };
    let borrowed = borrowed_departure < guaranteed.departure_ns;
    BorrowDecision {
        departure_ns: if borrowed {
            borrowed_departure
        } else {
            guaranteed.departure_ns
        },
        borrowed,
        next: Clocks {
            rate_tat_ns: if borrowed {
                clocks.rate_tat_ns
            } else {
                guaranteed.next_tat_ns
            },
            ceil_tat_ns: ceil.next_tat_ns,
            link_tat_ns: link.next_tat_ns,
        },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const MBIT: u64 = 1_000_000 / 8;

    #[test]
    fn police_passes_a_packet_larger_than_its_burst_on_a_full_bucket_and_keeps_its_rate() {
        // 1000 B/s with a 1000-byte bucket; 3000-byte packets (3 s each).
        let (burst, cost) = (NSEC_PER_SEC, 3 * NSEC_PER_SEC);
        let now = 100 * NSEC_PER_SEC;
        let check = |tat: u64, at: u64| {
            let decision = pace(tat, at, cost, police_burst_ns(burst, cost));
            (police_conforms(&decision, at), decision.next_tat_ns)
        };
        assert!(
            !police_conforms(&pace(0, now, cost, burst), now),
            "without the rule the packet could never conform"
        );
        let (first, tat) = check(0, now);
        assert!(first, "an idle class passes one oversized packet");
        assert!(!check(tat, now + NSEC_PER_SEC).0, "then owes its cost");
        let (later, next) = check(tat, now + 3 * NSEC_PER_SEC);
        assert!(later, "and passes the next once the debt is paid");
        assert_eq!(next - tat, cost, "every packet is charged in full");
        assert_eq!(police_burst_ns(burst, burst / 2), burst);
    }

    /// Classes (rate, ceil) on one link, each offered far more than the
    /// link in 1500-byte packets, each sending only when its last packet
    /// has left (a window of one, as a paced flow behaves); returns the
    /// bytes each sent over one simulated second.
    fn simulate(link_rate: u64, classes: &[(u64, u64)]) -> Vec<u64> {
        let size = 1500;
        let mut link = 0;
        let mut state: Vec<(Clocks, u64, u64)> = classes
            .iter()
            .map(|_| (Clocks::default(), NSEC_PER_SEC, 0))
            .collect();
        loop {
            // The class whose next packet is ready first goes next.
            let (i, _) = state
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, ready, _))| *ready)
                .unwrap();
            let now = state[i].1;
            if now >= 2 * NSEC_PER_SEC {
                break;
            }
            let (rate, ceil) = classes[i];
            let mut clocks = state[i].0;
            clocks.link_tat_ns = link;
            let costs = Costs {
                rate_ns: transmit_ns(size, rate),
                ceil_ns: transmit_ns(size, ceil),
                link_ns: transmit_ns(size, link_rate),
                ..Costs::default()
            };
            let d = pace_borrowing(&clocks, now, &costs);
            link = d.next.link_tat_ns;
            state[i].0 = d.next;
            state[i].1 = d.departure_ns.max(now + 1);
            state[i].2 += size;
        }
        state.iter().map(|(_, _, sent)| *sent).collect()
    }

    fn mbit(bytes: u64) -> f64 {
        bytes as f64 / MBIT as f64
    }

    #[test]
    fn alone_a_class_borrows_up_to_its_ceil() {
        let sent = simulate(100 * MBIT, &[(20 * MBIT, 100 * MBIT)]);
        assert!((99.0..=100.5).contains(&mbit(sent[0])), "{}", mbit(sent[0]));
        let sent = simulate(100 * MBIT, &[(20 * MBIT, 50 * MBIT)]);
        assert!(
            (49.5..=50.5).contains(&mbit(sent[0])),
            "ceil 50: {}",
            mbit(sent[0])
        );
    }

    #[test]
    fn two_borrowers_share_the_link_and_never_exceed_it() {
        let sent = simulate(
            100 * MBIT,
            &[(20 * MBIT, 100 * MBIT), (20 * MBIT, 100 * MBIT)],
        );
        let (a, b) = (mbit(sent[0]), mbit(sent[1]));
        assert!(
            (45.0..=55.0).contains(&a) && (45.0..=55.0).contains(&b),
            "{a} {b}"
        );
        assert!(a + b <= 100.5, "{a} + {b}");
    }

    #[test]
    fn a_guaranteed_class_keeps_its_rate_against_a_borrower() {
        let sent = simulate(
            100 * MBIT,
            &[(60 * MBIT, 100 * MBIT), (10 * MBIT, 100 * MBIT)],
        );
        let (a, b) = (mbit(sent[0]), mbit(sent[1]));
        assert!(a >= 60.0, "the guarantee: {a}");
        assert!(b >= 10.0, "the other's guarantee: {b}");
        assert!(a + b <= 100.5, "{a} + {b}");
    }

    #[test]
    fn without_room_on_the_link_a_class_gets_its_rate_at_once() {
        // The link's clock is a second ahead (others filled it): the class
        // still sends on its own rate clock, one packet's time from now.
        let now = 10 * NSEC_PER_SEC;
        let clocks = Clocks {
            link_tat_ns: now + NSEC_PER_SEC,
            ..Clocks::default()
        };
        let costs = Costs {
            rate_ns: 1_000,
            ceil_ns: 200,
            link_ns: 200,
            ..Costs::default()
        };
        let d = pace_borrowing(&clocks, now, &costs);
        assert!(!d.borrowed);
        assert_eq!(d.departure_ns, now + 1_000);
        assert_eq!(d.next.rate_tat_ns, now + 1_000);
        assert_eq!(
            d.next.link_tat_ns,
            now + NSEC_PER_SEC + 200,
            "the link is charged too"
        );
    }

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
