//! The `FLOW_TAGS` map: connection direction -> class, with an expiry the
//! program checks. The userspace table in `tags` decides what goes
//! in; this module only writes it, all or nothing.

use aya::maps::{HashMap, MapError};
use pisa_daemon_common::{names::MAP_FLOW_TAGS, FlowKey, FlowTag, MAX_FLOW_TAGS};

use super::{maps::map_err, Kernel, KernelError};

impl Kernel {
    /// Tags one direction of a connection with a class.
    /// `tag.expires_ns` is on the CLOCK_MONOTONIC clock (`bpf_ktime_get_ns`).
    pub fn put_flow_tag(&mut self, key: &FlowKey, tag: &FlowTag) -> Result<(), KernelError> {
        let exists = {
            let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(self.map(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
            tags.get(key, 0).is_ok()
        };
        if !exists {
            // Count first: the program must never skip a non-empty tag table.
            self.summary.flow_tags += 1;
            self.write_summary()?;
        }
        let mut tags: HashMap<_, FlowKey, FlowTag> =
            HashMap::try_from(self.map_mut(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
        match tags.insert(key, tag, 0) {
            Ok(()) => Ok(()),
            Err(source) => {
                let full = matches!(&source, MapError::SyscallError(e)
                    if e.io_error.raw_os_error() == Some(libc::E2BIG));
                if !exists {
                    self.summary.flow_tags = self.summary.flow_tags.saturating_sub(1);
                    self.write_summary()?;
                }
                if full {
                    Err(KernelError::FlowTagsFull {
                        capacity: MAX_FLOW_TAGS,
                    })
                } else {
                    Err(map_err(MAP_FLOW_TAGS, "inserting")(source))
                }
            }
        }
    }

    /// Removes one direction of a connection's tag; a missing tag is fine.
    pub fn delete_flow_tag(&mut self, key: &FlowKey) -> Result<(), KernelError> {
        let mut tags: HashMap<_, FlowKey, FlowTag> =
            HashMap::try_from(self.map_mut(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
        match tags.remove(key) {
            Ok(()) => {
                self.summary.flow_tags = self.summary.flow_tags.saturating_sub(1);
                self.write_summary()
            }
            Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_err(MAP_FLOW_TAGS, "removing")(source)),
        }
    }

    /// Writes every entry, or none: on a failure the entries already
    /// written by this call are removed again.
    pub(super) fn put_flow_tags_atomically(
        &mut self,
        entries: &[(FlowKey, FlowTag)],
    ) -> Result<(), KernelError> {
        let previous: Vec<Option<FlowTag>> = {
            let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(self.map(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
            entries.iter().map(|(k, _)| tags.get(k, 0).ok()).collect()
        };
        for (done, (key, tag)) in entries.iter().enumerate() {
            if let Err(e) = self.put_flow_tag(key, tag) {
                for ((key, _), before) in entries[..done].iter().zip(&previous) {
                    // Best effort: the original error is the one to report.
                    let _ = match before {
                        Some(tag) => self.put_flow_tag(key, tag),
                        None => self.delete_flow_tag(key),
                    };
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// At a daemon start: removes the proxy's tags (the proxy re-tags on
    /// the new generation) and returns the daemon's own SQL-identity tags,
    /// which nobody else could restore: their connections started before
    /// this process did, so their starts will never be seen again.
    pub fn take_over_flow_tags(&mut self) -> Result<(usize, Vec<(FlowKey, FlowTag)>), KernelError> {
        let entries: Vec<(FlowKey, FlowTag)> = {
            let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(self.map(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
            tags.iter().filter_map(Result::ok).collect()
        };
        let (kept, dropped): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(_, tag)| tag.origin == pisa_daemon_common::TAG_ORIGIN_SQL);
        for (key, _) in &dropped {
            self.delete_flow_tag(key)?;
        }
        self.summary.flow_tags = kept.len() as u32;
        self.write_summary()?;
        Ok((dropped.len(), kept))
    }

    /// Removes every tag.
    pub(super) fn clear_pinned_flow_tags(&mut self) -> Result<usize, KernelError> {
        let keys: Vec<FlowKey> = {
            let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(self.map(MAP_FLOW_TAGS)?)
                .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
            tags.keys().filter_map(Result::ok).collect()
        };
        for key in &keys {
            self.delete_flow_tag(key)?;
        }
        self.summary.flow_tags = 0;
        self.write_summary()?;
        Ok(keys.len())
    }

    pub(super) fn pinned_flow_tag_count(&self) -> Result<u32, KernelError> {
        let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(self.map(MAP_FLOW_TAGS)?)
            .map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
        Ok(tags.keys().filter(Result::is_ok).count() as u32)
    }
}
