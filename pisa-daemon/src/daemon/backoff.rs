//! One shape of retry for everything the daemon retries (a failed
//! reconcile, a failed status write): exponential, capped, reset by a
//! success.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff between `min` and `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The delay the next failure waits.
    next_delay: Duration,
    /// When the pending retry is due; `None` while all is well.
    due: Option<Instant>,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next_delay: min,
            due: None,
        }
    }

    /// Records a failure at `now`: a retry is due after the current delay,
    /// and the delay after that doubles (up to `max`). Returns the delay.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.next_delay;
        self.due = Some(now + delay);
        self.next_delay = (delay * 2).min(self.max);
        delay
    }

    /// Records a success: nothing is due, the delay is back to `min`.
    pub fn succeeded(&mut self) {
        self.next_delay = self.min;
        self.due = None;
    }

    /// When the pending retry is due, if one is.
    pub fn due_at(&self) -> Option<Instant> {
        self.due
    }

    /// The delay the next failure will wait.
    pub fn next_delay(&self) -> Duration {
        self.next_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_a_success_resets_them() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let now = Instant::now();
        let delays: Vec<u128> = (0..5).map(|_| backoff.failed(now).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.due_at(), Some(now + Duration::from_secs(1)));
        backoff.succeeded();
        assert_eq!(backoff.due_at(), None);
        assert_eq!(backoff.failed(now), Duration::from_millis(200));
    }
}
