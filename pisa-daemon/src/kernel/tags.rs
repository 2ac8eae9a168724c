//! The `FLOW_TAGS` map: connection (canonical direction) -> class, with an expiry the
//! program checks. The userspace table in `tags` decides what goes in and
//! knows what each key held; this module only writes it, all or nothing,
//! and keeps `SUMMARY.flow_tags` counting the entries (the program skips
//! the lookup while it is zero, so it is raised before entries appear and
//! lowered after they are gone).

use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::{
    maps::{HashMap, MapData, MapError},
    sys::SyscallError,
};
use pisa_daemon_common::{names::MAP_FLOW_TAGS, FlowKey, FlowTag};

use super::{batch, dataplane::FlowTagWrite, maps::map_err, Kernel, KernelError};

impl Kernel {
    fn flow_tags(&self) -> Result<HashMap<&MapData, FlowKey, FlowTag>, KernelError> {
        HashMap::try_from(self.map(MAP_FLOW_TAGS)?).map_err(map_err(MAP_FLOW_TAGS, "opening"))
    }

    fn flow_tags_mut(&mut self) -> Result<HashMap<&mut MapData, FlowKey, FlowTag>, KernelError> {
        HashMap::try_from(self.map_mut(MAP_FLOW_TAGS)?).map_err(map_err(MAP_FLOW_TAGS, "opening"))
    }

    /// Tags the connection `key` names (either direction) with a class
    /// (tests and tools; the daemon writes through
    /// `put_flow_tags_atomically`). `tag.expires_ns` is on the
    /// CLOCK_MONOTONIC clock (`bpf_ktime_get_ns`).
    pub fn put_flow_tag(&mut self, key: &FlowKey, tag: &FlowTag) -> Result<(), KernelError> {
        let key = key.canonical();
        let previous = self.flow_tags()?.get(&key, 0).ok();
        self.put_flow_tags_atomically(&[FlowTagWrite {
            key,
            tag: *tag,
            previous,
        }])
    }

    /// Removes the tag of the connection `key` names (either direction); a
    /// missing tag is fine.
    pub fn delete_flow_tag(&mut self, key: &FlowKey) -> Result<(), KernelError> {
        self.delete_flow_tags_counted(&[key.canonical()])
    }

    fn flow_tags_fd(&self) -> Result<RawFd, KernelError> {
        match self.map(MAP_FLOW_TAGS)? {
            aya::maps::Map::HashMap(data) => Ok(data.fd().as_fd().as_raw_fd()),
            _ => Err(KernelError::MapMissing { map: MAP_FLOW_TAGS }),
        }
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
        let Some(error) = self.write_flow_tags(writes)? else {
            return Ok(());
        };
        if added > 0 {
            self.summary.flow_tags = self.summary.flow_tags.saturating_sub(added);
            self.write_summary()?;
        }
        if error.raw_os_error() == Some(libc::E2BIG) {
            Err(KernelError::FlowTagsFull {
                capacity: self.flow_tag_entries,
            })
        } else {
            Err(map_err(MAP_FLOW_TAGS, "inserting")(MapError::SyscallError(
                SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: error,
                },
            )))
        }
    }

    /// One batch write; on a failure the part written is undone and the
    /// error returned. Kernels without batch operations get one syscall
    /// per entry.
    fn write_flow_tags(
        &mut self,
        writes: &[FlowTagWrite],
    ) -> Result<Option<std::io::Error>, KernelError> {
        let fd = self.flow_tags_fd()?;
        let keys: Vec<FlowKey> = writes.iter().map(|w| w.key).collect();
        let values: Vec<FlowTag> = writes.iter().map(|w| w.tag).collect();
        let outcome = batch::update(fd, &keys, &values);
        let (done, error) = match outcome.error {
            None => return Ok(None),
            Some(error) if outcome.done == 0 && batch::unsupported(&error) => {
                let mut tags = self.flow_tags_mut()?;
                let mut done = 0;
                let mut failure = None;
                for write in writes {
                    if let Err(e) = tags.insert(write.key, write.tag, 0) {
                        failure = Some(match e {
                            MapError::SyscallError(e) => e.io_error,
                            other => std::io::Error::other(other.to_string()),
                        });
                        break;
                    }
                    done += 1;
                }
                match failure {
                    None => return Ok(None),
                    Some(error) => (done, error),
                }
            }
            Some(error) => (outcome.done, error),
        };
        // Best effort: the original error is the one to report.
        let (restore, remove): (Vec<&FlowTagWrite>, Vec<&FlowTagWrite>) =
            writes[..done].iter().partition(|w| w.previous.is_some());
        let restore_keys: Vec<FlowKey> = restore.iter().map(|w| w.key).collect();
        let restore_values: Vec<FlowTag> = restore.iter().filter_map(|w| w.previous).collect();
        let _ = batch::update(fd, &restore_keys, &restore_values);
        let remove_keys: Vec<FlowKey> = remove.iter().map(|w| w.key).collect();
        let _ = self.delete_keys(&remove_keys);
        Ok(Some(error))
    }

    /// Deletes `keys`, skipping missing ones: how many it removed, and the
    /// error that stopped it, if one did. It leaves `SUMMARY` to the
    /// caller, who knows whether the removed entries were ever counted.
    fn delete_keys(&mut self, keys: &[FlowKey]) -> Result<(u32, Option<KernelError>), KernelError> {
        let fd = self.flow_tags_fd()?;
        let mut removed = 0u32;
        let mut rest = keys;
        while !rest.is_empty() {
            let outcome = batch::delete(fd, rest);
            removed += outcome.done as u32;
            let Some(error) = outcome.error else {
                break;
            };
            if error.raw_os_error() == Some(libc::ENOENT) {
                // A key that is not there: skip it and go on.
                rest = &rest[outcome.done + 1..];
            } else if outcome.done == 0 && batch::unsupported(&error) {
                let mut tags = self.flow_tags_mut()?;
                for key in rest {
                    match tags.remove(key) {
                        Ok(()) => removed += 1,
                        Err(MapError::KeyNotFound) => {}
                        Err(source) => {
                            return Ok((removed, Some(map_err(MAP_FLOW_TAGS, "removing")(source))))
                        }
                    }
                }
                break;
            } else {
                let source = MapError::SyscallError(SyscallError {
                    call: "bpf_map_delete_batch",
                    io_error: error,
                });
                return Ok((removed, Some(map_err(MAP_FLOW_TAGS, "removing")(source))));
            }
        }
        Ok((removed, None))
    }

    /// Removes entries (missing ones are skipped), then lowers the count
    /// once for all it removed, even when an error stopped it part way.
    pub(super) fn delete_flow_tags_counted(&mut self, keys: &[FlowKey]) -> Result<(), KernelError> {
        let (removed, failure) = self.delete_keys(keys)?;
        if removed > 0 {
            self.summary.flow_tags = self.summary.flow_tags.saturating_sub(removed);
            self.write_summary()?;
        }
        failure.map_or(Ok(()), Err)
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

    /// Entries `FLOW_TAGS` was created with (one per connection).
    pub fn flow_tag_entries(&self) -> u32 {
        self.flow_tag_entries
    }
}
