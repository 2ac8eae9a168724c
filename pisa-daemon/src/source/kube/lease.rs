//! Leader election over a `coordination.k8s.io` Lease, the way
//! client-go's leaderelection does it: the holder renews the Lease every
//! few seconds; another candidate takes it over only after it has seen the
//! same record unchanged for a whole lease duration by its own clock, so
//! clock skew between nodes cannot make two leaders. Every write carries
//! the resourceVersion it read, so of two candidates racing for an expired
//! Lease exactly one wins (the other gets 409 Conflict).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    api::{Api, PostParams},
    Client,
};

/// How long a Lease holds without renewal, and how often it is renewed
/// (kube-controller-manager's own figures).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// What a candidate does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It is ours: renew it.
    Renew,
    /// Nobody holds it, or its holder let it lapse: take it.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decides from the holder and how long this candidate has seen the
/// record unchanged.
pub fn step(holder: Option<&str>, me: &str, unchanged_for: Duration, duration: Duration) -> Step {
    match holder {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) if unchanged_for >= duration => Step::TakeOver,
        Some(_) => Step::Follow,
    }
}

/// What identifies one renewal of a Lease: its holder and renew time.
type Record = (Option<String>, Option<MicroTime>);

/// One candidate for one Lease.
pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The record (holder, renew time) last seen, and when it was first
    /// seen by this candidate's clock.
    observed: Option<(Record, Instant)>,
    duration: Duration,
    leading: bool,
}

impl LeaderLease {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            observed: None,
            duration: LEASE_DURATION,
            leading: false,
        }
    }

    /// A shorter lease, for tests and the status simulation.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    /// Reads the Lease and renews, takes over or follows. Returns whether
    /// this candidate leads now. An error (the API server unreachable)
    /// means not leading: a leader that cannot renew must stop acting
    /// before its lease can lapse for the others.
    pub async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let result = self.attempt().await;
        self.leading = matches!(result, Ok(true));
        result
    }

    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.held_spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(error) if is_conflict(&error) => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let seen_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = match step(
            spec.holder_identity.as_deref(),
            &self.identity,
            seen_at.elapsed(),
            self.duration,
        ) {
            Step::Follow => return Ok(false),
            Step::Renew => {
                let acquired = spec.acquire_time.map_or(now, |t| t.0);
                self.held_spec(acquired, now, transitions)
            }
            Step::TakeOver => self.held_spec(now, now, transitions.saturating_add(1)),
        };
        let mut updated = current;
        updated.spec = Some(next);
        // `replace` sends the resourceVersion read above: a concurrent
        // writer makes this a 409, not a second leader.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn held_spec(
        &self,
        acquired: jiff::Timestamp,
        renewed: jiff::Timestamp,
        transitions: i32,
    ) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.duration.as_secs().max(1)).ok(),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// 409: AlreadyExists on create, Conflict on a stale resourceVersion.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = LEASE_DURATION;

    #[test]
    fn the_holder_renews_and_others_wait_out_a_whole_duration() {
        assert_eq!(step(Some("n1"), "n1", Duration::ZERO, D), Step::Renew);
        assert_eq!(step(Some("n1"), "n1", D * 10, D), Step::Renew);
        assert_eq!(step(Some("n1"), "n2", Duration::ZERO, D), Step::Follow);
        assert_eq!(
            step(Some("n1"), "n2", D - Duration::from_millis(1), D),
            Step::Follow
        );
        assert_eq!(step(Some("n1"), "n2", D, D), Step::TakeOver);
    }

    #[test]
    fn an_unheld_lease_is_taken_at_once() {
        assert_eq!(step(None, "n2", Duration::ZERO, D), Step::TakeOver);
        assert_eq!(step(Some(""), "n2", Duration::ZERO, D), Step::TakeOver);
    }
}
