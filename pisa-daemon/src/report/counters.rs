//! Reading the kernel's counters for a report. A read that fails is
//! counted (by map, in `ReadErrors`) and logged here, once for every
//! renderer, and leaves its part `None`: no report can show it as zeros.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pisa_daemon_common::{ClassStats, IfaceStats};

use crate::kernel::{Dataplane, KernelError};

/// The counter maps a report reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CounterMap {
    ClassStats,
    ReasonStats,
    IfaceStats,
    SqlStats,
}

impl CounterMap {
    pub const ALL: [Self; 4] = [
        Self::ClassStats,
        Self::ReasonStats,
        Self::IfaceStats,
        Self::SqlStats,
    ];

    /// The pinned map's name (the `map` label of the read-error counter).
    pub fn name(self) -> &'static str {
        match self {
            Self::ClassStats => "CLASS_STATS",
            Self::ReasonStats => "REASON_STATS",
            Self::IfaceStats => "IFACE_STATS",
            Self::SqlStats => "SQL_STATS",
        }
    }
}

/// Failed counter reads by map, shared by every renderer of the process
/// (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct ReadErrors(Arc<[AtomicU64; 4]>);

impl ReadErrors {
    fn count(&self, map: CounterMap, error: &KernelError) {
        self.0[map as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(map = map.name(), %error,
            "reading kernel counters failed; reports leave them out rather than show zeros");
    }

    /// Every map with its failed reads so far (every map listed, so a rate
    /// of 0 is visible).
    pub fn counts(&self) -> Vec<(CounterMap, u64)> {
        CounterMap::ALL
            .iter()
            .map(|map| (*map, self.0[*map as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// The value of a read, or `None` after counting and logging its error.
    fn keep<T>(&self, map: CounterMap, read: Result<T, KernelError>) -> Option<T> {
        read.map_err(|error| self.count(map, &error)).ok()
    }
}

/// The counters one report read; `None`: not asked for, or the read failed
/// (then it is in `failed`).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub classes: Option<BTreeMap<u32, ClassStats>>,
    /// Indexed by `pisa_daemon_common::reason`.
    pub reasons: Option<Vec<u64>>,
    pub interfaces: Option<BTreeMap<String, IfaceStats>>,
    /// Indexed by `pisa_daemon_common::sql_reason`.
    pub sql: Option<Vec<u64>>,
    /// Reads that were asked for and failed.
    pub failed: Vec<CounterMap>,
}

impl Counters {
    /// Reads the maps in `wanted`, each once.
    pub fn read<D: Dataplane>(dp: &D, wanted: &[CounterMap], errors: &ReadErrors) -> Self {
        let mut counters = Self::default();
        for map in wanted {
            let read = match map {
                CounterMap::ClassStats => {
                    counters.classes = errors.keep(*map, dp.class_stats());
                    counters.classes.is_some()
                }
                CounterMap::ReasonStats => {
                    counters.reasons = errors.keep(*map, dp.reason_stats());
                    counters.reasons.is_some()
                }
                CounterMap::IfaceStats => {
                    counters.interfaces = errors.keep(*map, dp.interface_stats());
                    counters.interfaces.is_some()
                }
                CounterMap::SqlStats => {
                    counters.sql = errors.keep(*map, dp.sql_stats());
                    counters.sql.is_some()
                }
            };
            if !read {
                counters.failed.push(*map);
            }
        }
        counters
    }
}
