//! The task that drains the kernel's SQL-identity channel: each batch of
//! connection starts and closes is handled under the agent's lock, so a
//! tag never races a reconcile that is removing its class.

use std::time::Duration;

use pisa_daemon_common::SqlEvent;
use tracing::{debug, error};

use super::SharedAgent;
use crate::{
    identity::{self, Sink},
    kernel::{sql_events::SqlEvents, Kernel},
    tags::monotonic_ns,
};

/// Runs until the agent's lock is poisoned (the daemon is going down).
pub async fn run(agent: SharedAgent<Kernel>, mut events: SqlEvents) {
    let mut batch: Vec<SqlEvent> = Vec::new();
    loop {
        batch.clear();
        if let Err(error) = events.next_batch(&mut batch).await {
            error!(%error, "reading connection starts from the kernel failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let batch_start = match monotonic_ns() {
            Ok(now) => now,
            Err(error) => {
                // No expiry can be set without the clock: these connections
                // stay in their endpoint's class (nothing is held).
                error!(%error, events = batch.len(), "skipping connection events");
                continue;
            }
        };
        let Ok(mut guard) = agent.lock() else {
            return;
        };
        let agent = &mut *guard;
        let clock = || monotonic_ns().unwrap_or(batch_start);
        let mut sink = Sink {
            tags: &mut agent.tags,
            dp: &mut agent.dp,
            stats: &mut agent.identity,
            clock: &clock,
        };
        for event in &batch {
            let outcome = identity::handle(event, &agent.plan.sql, &mut sink);
            let head = &event.bytes[..(event.captured as usize).min(16)];
            debug!(?outcome, flow = ?event.flow, payload_len = event.payload_len,
                   head = %hex(head), "connection event");
        }
    }
}

/// `00 03 00 00 …`: the first bytes of a start, for debug logs.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
