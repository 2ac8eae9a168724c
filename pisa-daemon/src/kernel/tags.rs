//! The `FLOW_TAGS` map: connection direction -> class, with an expiry the
//! program checks. The userspace table in `tags` decides what goes in and
//! knows what each key held; this module only writes it, all or nothing,
//! and keeps `SUMMARY.flow_tags` counting the entries (the program skips
//! the lookup while it is zero, so it is raised before entries appear and
//! lowered after they are gone).

use aya::maps::{HashMap, MapData, MapError};
use pisa_daemon_common::{names::MAP_FLOW_TAGS, FlowKey, FlowTag};

use super::{dataplane::FlowTagWrite, maps::map_err, Kernel, KernelError};

impl Kernel {
    fn flow_tags(&self) -> Result<HashMap<&MapData, FlowKey, FlowTag>, KernelError> {
        HashMap::try_from(self.map(MAP_FLOW_TAGS)?).map_err(map_err(MAP_FLOW_TAGS, "opening"))
    }

    fn flow_tags_mut(&mut self) -> Result<HashMap<&mut MapData, FlowKey, FlowTag>, KernelError> {
        HashMap::try_from(self.map_mut(MAP_FLOW_TAGS)?).map_err(map_err(MAP_FLOW_TAGS, "opening"))
    }

    /// Tags one direction of a connection with a class (tests and tools;
    /// the daemon writes through `put_flow_tags_atomically`).
    /// `tag.expires_ns` is on the CLOCK_MONOTONIC clock (`bpf_ktime_get_ns`).
    pub fn put_flow_tag(&mut self, key: &FlowKey, tag: &FlowTag) -> Result<(), KernelError> {
        let previous = self.flow_tags()?.get(key, 0).ok();
        self.put_flow_tags_atomically(&[FlowTagWrite {
            key: *key,
            tag: *tag,
            previous,
        }])
    }

    /// Removes one direction of a connection's tag; a missing tag is fine.
    pub fn delete_flow_tag(&mut self, key: &FlowKey) -> Result<(), KernelError> {
        self.delete_flow_tags_counted(std::slice::from_ref(key))
    }

    /// Writes every entry, or none: on a failure the entries already
    /// written by this call get back what `previous` says they held.
    pub(super) fn put_flow_tags_atomically(
        &mut self,
        writes: &[FlowTagWrite],
    ) -> Result<(), KernelError> {
        let added = writes.iter().filter(|w| w.previous.is_none()).count() as u32;
        if added > 0 {
            self.summary.flow_tags += added;
            self.write_summary()?;
        }
        let failure = {
            let mut tags = self.flow_tags_mut()?;
            let mut failure = None;
            for (done, write) in writes.iter().enumerate() {
                if let Err(source) = tags.insert(write.key, write.tag, 0) {
                    for undo in writes[..done].iter().rev() {
                        // Best effort: the original error is the one to report.
                        let _ = match undo.previous {
                            Some(tag) => tags.insert(undo.key, tag, 0),
                            None => tags.remove(&undo.key),
                        };
                    }
                    failure = Some(source);
                    break;
                }
            }
            failure
        };
        let Some(source) = failure else {
            return Ok(());
        };
        if added > 0 {
            self.summary.flow_tags = self.summary.flow_tags.saturating_sub(added);
            self.write_summary()?;
        }
        let full = matches!(&source, MapError::SyscallError(e)
            if e.io_error.raw_os_error() == Some(libc::E2BIG));
        if full {
            Err(KernelError::FlowTagsFull {
                capacity: self.flow_tag_entries,
            })
        } else {
            Err(map_err(MAP_FLOW_TAGS, "inserting")(source))
        }
    }

    /// Removes entries (missing ones are skipped), then lowers the count
    /// once for all of them.
    pub(super) fn delete_flow_tags_counted(&mut self, keys: &[FlowKey]) -> Result<(), KernelError> {
        let (removed, failure) = {
            let mut tags = self.flow_tags_mut()?;
            let mut removed = 0u32;
            let mut failure = None;
            for key in keys {
                match tags.remove(key) {
                    Ok(()) => removed += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(source) => {
                        failure = Some(source);
                        break;
                    }
                }
            }
            (removed, failure)
        };
        if removed > 0 {
            self.summary.flow_tags = self.summary.flow_tags.saturating_sub(removed);
            self.write_summary()?;
        }
        match failure {
            None => Ok(()),
            Some(source) => Err(map_err(MAP_FLOW_TAGS, "removing")(source)),
        }
    }

    /// At a daemon start: removes the proxy's tags (the proxy re-tags on
    /// the new generation) and returns the daemon's own SQL-identity tags,
    /// which nobody else could restore: their connections started before
    /// this process did, so their starts will never be seen again.
    pub fn take_over_flow_tags(&mut self) -> Result<(usize, Vec<(FlowKey, FlowTag)>), KernelError> {
        let entries: Vec<(FlowKey, FlowTag)> =
            self.flow_tags()?.iter().filter_map(Result::ok).collect();
        let (kept, dropped): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(_, tag)| tag.origin == pisa_daemon_common::TAG_ORIGIN_SQL);
        let dropped: Vec<FlowKey> = dropped.into_iter().map(|(key, _)| key).collect();
        self.delete_flow_tags_counted(&dropped)?;
        self.summary.flow_tags = kept.len() as u32;
        self.write_summary()?;
        Ok((dropped.len(), kept))
    }

    /// Removes every tag.
    pub(super) fn clear_pinned_flow_tags(&mut self) -> Result<usize, KernelError> {
        let keys: Vec<FlowKey> = self.flow_tags()?.keys().filter_map(Result::ok).collect();
        self.delete_flow_tags_counted(&keys)?;
        self.summary.flow_tags = 0;
        self.write_summary()?;
        Ok(keys.len())
    }

    pub(super) fn pinned_flow_tag_count(&self) -> Result<u32, KernelError> {
        Ok(self.flow_tags()?.keys().filter(Result::is_ok).count() as u32)
    }

    /// Entries `FLOW_TAGS` was created with (two per connection).
    pub fn flow_tag_entries(&self) -> u32 {
        self.flow_tag_entries
    }
}
