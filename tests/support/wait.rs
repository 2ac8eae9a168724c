//! The one way a test waits: for a named condition, with a deadline, and a
//! failure that says what it waited for. No test sleeps in place of a
//! condition; a sleep is only ever a measurement window.

use std::time::{Duration, Instant};

use super::{net::Netns, process::ChildGuard};

const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns true; fails after `timeout`, naming
/// `what`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until `child` has written `needle` to its stderr, failing early if
/// the child exits first. Log lines may be written after the state they
/// report, so a test that needs the line waits for it rather than reading
/// the log once.
pub fn wait_for_log(child: &mut ChildGuard, needle: &str, timeout: Duration) {
    let what = format!("`{needle}` in the log of {}", child.what());
    wait_until(&what, timeout, || {
        if child.stderr_text().contains(needle) {
            return true;
        }
        child.assert_running();
        false
    });
}

/// Checks that `check` stays true for the whole of `window` (something
/// that must not happen, watched for long enough to have happened).
pub fn assert_holds_for(what: &str, window: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < window {
        assert!(
            check(),
            "{what} stopped holding after {:?}",
            started.elapsed()
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until something listens on TCP `port` inside `ns`. Uses `ss`, not
/// a probe connection: iperf3 treats any connection as a test.
pub fn wait_for_listener(ns: &Netns, port: u16) {
    let filter = format!("sport = :{port}");
    wait_until(
        &format!("a listener on port {port} in netns {}", ns.name),
        Duration::from_secs(10),
        || !ns.exec(&["ss", "-Hltn", &filter]).trim().is_empty(),
    );
}
