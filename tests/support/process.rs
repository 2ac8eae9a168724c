//! Child processes of a test: killed and reaped on drop, their stderr kept
//! for assertions and printed when the test fails.

use std::{
    path::PathBuf,
    process::{Child, ExitStatus},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

/// How long the stderr of an exited child may take to reach us: the pipe's
/// writer is gone, so this only covers the drain thread being scheduled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process killed (SIGKILL) and reaped on drop. Its stderr (if
/// piped) is drained by a thread, so a chatty child never blocks on a full
/// pipe, and the text is kept for assertions.
pub struct ChildGuard {
    pub child: Option<Child>,
    what: String,
    stderr: Arc<Mutex<String>>,
    /// Says when the drain thread has read the pipe to its end.
    drained: Option<mpsc::Receiver<()>>,
    /// A file the child leaves behind when killed (a daemon's API socket).
    leaves_behind: Option<PathBuf>,
}

impl ChildGuard {
    pub fn new(mut child: Child, what: String) -> Self {
        let stderr = Arc::new(Mutex::new(String::new()));
        let drained = child.stderr.take().map(|mut pipe| {
            let sink = stderr.clone();
            let (done, drained) = mpsc::channel();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut text) = sink.lock() {
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                let _ = done.send(());
            });
            drained
        });
        Self {
            child: Some(child),
            what,
            stderr,
            drained,
            leaves_behind: None,
        }
    }

    /// Removes `path` when the child goes (a socket a SIGKILLed daemon
    /// cannot remove itself).
    pub fn removing_on_drop(mut self, path: PathBuf) -> Self {
        self.leaves_behind = Some(path);
        self
    }

    /// What this child is, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Everything the child wrote to stderr so far. To decide on a line
    /// the child writes while it runs, wait for it (`wait_for_log`): it may
    /// be written after the state it reports.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// After the child exited: waits until its stderr is read to the end,
    /// so that `stderr_text` holds every line it wrote.
    fn finish_draining(&mut self) {
        if let Some(drained) = self.drained.take() {
            if drained.recv_timeout(DRAIN_TIMEOUT).is_err() {
                eprintln!(
                    "stderr of {} still open {DRAIN_TIMEOUT:?} after it exited (a grandchild holds it?)",
                    self.what
                );
            }
        }
    }

    /// Sends `signal` and waits up to `timeout` for exit; returns the
    /// status. Afterwards `stderr_text` holds the child's whole stderr.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        self.stop(signal, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} of signal {signal}",
                self.what
            )
        })
    }

    /// Sends `signal` and waits up to `timeout` for exit. Returns the status,
    /// or `None` (the child killed) if it did not exit in time; never panics,
    /// so teardown in `Drop` can use it.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.finish_draining();
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Fails if the child has exited; includes its stderr.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("child already reaped");
        if let Some(status) = child.try_wait().expect("waiting for child") {
            self.finish_draining();
            panic!(
                "{} exited early ({status}): {}",
                self.what,
                self.stderr_text()
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A failing test shows what its children said, e.g. the daemon's log
        // when a wait timed out.
        if std::thread::panicking() {
            eprintln!("--- stderr of {} ---\n{}", self.what, self.stderr_text());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(path) = &self.leaves_behind {
            let _ = std::fs::remove_file(path);
        }
    }
}
