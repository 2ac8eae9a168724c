//! The SQL-identity channel out of the kernel: the `SQL_EVENTS` ring
//! buffer (connection starts and closes) and the `SQL_STATS` counters.

use aya::maps::{MapData, PerCpuArray, RingBuf};
use pisa_daemon_common::{
    names::{MAP_SQL_EVENTS, MAP_SQL_STATS},
    sql_reason, ReasonStats, SqlEvent,
};
use tokio::io::unix::AsyncFd;

use super::{maps::map_err, Kernel, KernelError};

/// The reader of `SQL_EVENTS`, owned by the one task that drains it.
pub struct SqlEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl SqlEvents {
    /// Waits until events are there, then takes every one available.
    pub async fn next_batch(&mut self, out: &mut Vec<SqlEvent>) -> Result<(), KernelError> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .map_err(|e| KernelError::io("waiting on", MAP_SQL_EVENTS, e))?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                out.push(event);
            }
        }
        guard.clear_ready();
        Ok(())
    }
}

/// A record as the program wrote it; a short one (never written by this
/// program) is skipped.
fn decode(bytes: &[u8]) -> Option<SqlEvent> {
    if bytes.len() < size_of::<SqlEvent>() {
        return None;
    }
    // SAFETY: length checked; SqlEvent is plain integers and byte arrays,
    // so every bit pattern is valid; read_unaligned copes with alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SqlEvent>()) })
}

impl Kernel {
    /// Takes the ring buffer's reader out of the loaded object; the second
    /// call fails (there is one reader).
    pub fn take_sql_events(&mut self) -> Result<SqlEvents, KernelError> {
        let map = self
            .ebpf
            .take_map(MAP_SQL_EVENTS)
            .ok_or(KernelError::MapMissing {
                map: MAP_SQL_EVENTS,
            })?;
        let ring = RingBuf::try_from(map).map_err(map_err(MAP_SQL_EVENTS, "opening"))?;
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| KernelError::io("polling", MAP_SQL_EVENTS, e.into()))?;
        Ok(SqlEvents { ring })
    }

    /// Summed per-CPU SQL-identity counters, indexed by `sql_reason::*`.
    pub(super) fn read_sql_stats(&self) -> Result<Vec<u64>, KernelError> {
        let stats: PerCpuArray<_, ReasonStats> = PerCpuArray::try_from(self.map(MAP_SQL_STATS)?)
            .map_err(map_err(MAP_SQL_STATS, "opening"))?;
        (0..sql_reason::COUNT)
            .map(|index| {
                stats
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().map(|s| s.packets).sum())
                    .map_err(map_err(MAP_SQL_STATS, "reading"))
            })
            .collect()
    }
}
