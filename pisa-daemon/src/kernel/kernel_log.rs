//! The program's debug events: aya-log records in the pinned `AYA_LOGS`
//! ring, switched on and off through `KERNEL_LOG` (off by default) and
//! drained into the daemon's log under the target `pisa_kernel`. Both maps
//! are pinned, so a restarted daemon reads the same ring and the switch
//! holds what the running daemon set.

use aya::maps::Array;
use aya_log::EbpfLogger;
use pisa_daemon_common::{
    names::{MAP_AYA_LOGS, MAP_KERNEL_LOG},
    KERNEL_LOG_DEBUG, KERNEL_LOG_OFF,
};
use tokio::io::unix::AsyncFd;

use super::{maps::map_err, Kernel, KernelError};

/// Where the program's debug events go: `tracing` events of the target
/// `pisa_kernel` at the record's level, so the daemon's log filter and
/// format apply to them as to every other line.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "pisa_kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "pisa_kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "pisa_kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "pisa_kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "pisa_kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of `AYA_LOGS`, owned by the one task that drains it.
pub struct KernelLog {
    ring: AsyncFd<EbpfLogger<TracingLog>>,
}

impl KernelLog {
    /// Waits until records are there, then writes every one available to
    /// the log.
    pub async fn drain(&mut self) -> Result<(), KernelError> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .map_err(|e| KernelError::io("waiting on", MAP_AYA_LOGS, e))?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
        Ok(())
    }
}

impl Kernel {
    /// Switches the program's debug events on or off, at once, in every
    /// attachment (they all share the pinned switch).
    pub fn set_kernel_log(&mut self, debug: bool) -> Result<(), KernelError> {
        let mut switch: Array<_, u32> = Array::try_from(self.map_mut(MAP_KERNEL_LOG)?)
            .map_err(map_err(MAP_KERNEL_LOG, "opening"))?;
        let value = if debug {
            KERNEL_LOG_DEBUG
        } else {
            KERNEL_LOG_OFF
        };
        switch
            .set(0, value, 0)
            .map_err(map_err(MAP_KERNEL_LOG, "writing"))
    }

    /// Takes the reader of the debug events out of the loaded object; the
    /// second call fails (there is one reader).
    pub fn take_kernel_log(&mut self) -> Result<KernelLog, KernelError> {
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, TracingLog).map_err(|e| {
            KernelError::io(
                "opening",
                MAP_AYA_LOGS,
                std::io::Error::other(e.to_string()),
            )
        })?;
        // SAFETY: the logger owns the ring's map fd and keeps it open,
        // unchanged, for as long as it lives, and the AsyncFd owns it.
        let ring = unsafe { AsyncFd::register(logger) }
            .map_err(|e| KernelError::io("polling", MAP_AYA_LOGS, e.into()))?;
        Ok(KernelLog { ring })
    }
}
