//! A pinned `FLOW_TAGS` whose size or flags differ from what this start
//! asks for (`--max-flow-tags` changed, or an earlier release pinned a
//! preallocated map) cannot be resized in place: the kernel fixes both at
//! creation. So the old map is set aside before the object is loaded, the
//! loader creates and pins a new one, the daemon's own SQL-identity tags
//! are copied across, and the programs are replaced so every link reads
//! the new map. If loading fails the old map is put back, so the pinned
//! state stays consistent for the next start.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapInfo};
use pisa_daemon_common::{
    names::MAP_FLOW_TAGS, FlowKey, FlowTag, FLOW_TAGS_MAP_FLAGS, TAG_ORIGIN_SQL,
};
use tracing::{info, warn};

use super::{maps::map_err, KernelError, PinLayout};

/// The old `FLOW_TAGS`, moved aside under the maps directory.
pub(super) struct SetAside {
    pin: PathBuf,
    aside: PathBuf,
    /// The SQL-identity tags it held, to copy into the new map.
    sql_tags: Vec<(FlowKey, FlowTag)>,
    old_entries: u32,
}

/// Sets the pinned `FLOW_TAGS` aside when it is not `entries` entries with
/// this build's flags. `None` when there is none or it already fits.
pub(super) fn set_aside_if_resized(
    layout: &PinLayout,
    entries: u32,
) -> Result<Option<SetAside>, KernelError> {
    let pin = layout.map(MAP_FLOW_TAGS);
    if !pin.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&pin).map_err(map_err(MAP_FLOW_TAGS, "reading info of"))?;
    if info.max_entries() == entries && info.map_flags() == FLOW_TAGS_MAP_FLAGS {
        return Ok(None);
    }
    let data = MapData::from_pin(&pin).map_err(map_err(MAP_FLOW_TAGS, "opening pinned"))?;
    // bpffs has no rename (and no dots in names): the map is pinned a
    // second time under another name, then unpinned.
    let aside = aside_path(&pin);
    data.pin(&aside).map_err(|source| KernelError::Pin {
        path: aside.clone(),
        source,
    })?;
    std::fs::remove_file(&pin)
        .map_err(|e| KernelError::io("setting aside the resized map", &pin, e))?;
    let tags: HashMap<_, FlowKey, FlowTag> = HashMap::try_from(aya::maps::Map::HashMap(data))
        .map_err(map_err(MAP_FLOW_TAGS, "typing pinned"))?;
    // Proxy tags are cleared at every start anyway; only the daemon's own
    // tags are worth carrying over.
    let sql_tags = tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, tag)| tag.origin == TAG_ORIGIN_SQL)
        .collect();
    info!(
        from_entries = info.max_entries(),
        from_flags = info.map_flags(),
        to_entries = entries,
        to_flags = FLOW_TAGS_MAP_FLAGS,
        "resizing the pinned flow-tag map"
    );
    Ok(Some(SetAside {
        pin,
        aside,
        sql_tags,
        old_entries: info.max_entries(),
    }))
}

/// Pins the map at `from` also at `to`, then unpins `from`.
fn move_pin(from: &Path, to: &Path) -> Result<(), String> {
    let data = MapData::from_pin(from).map_err(|e| e.to_string())?;
    data.pin(to).map_err(|e| e.to_string())?;
    std::fs::remove_file(from).map_err(|e| e.to_string())
}

fn aside_path(pin: &Path) -> PathBuf {
    pin.with_file_name(format!("{MAP_FLOW_TAGS}_RESIZING"))
}

/// A `_RESIZING` pin a crashed start left behind: nothing reads it.
pub(super) fn remove_stale_aside(layout: &PinLayout) {
    let stale = aside_path(&layout.map(MAP_FLOW_TAGS));
    if stale.exists() && !layout.map(MAP_FLOW_TAGS).exists() {
        // The new map was never pinned: the stale one is the only copy.
        if let Err(e) = move_pin(&stale, &layout.map(MAP_FLOW_TAGS)) {
            warn!(error = %e, path = %stale.display(), "could not restore a set-aside flow-tag map");
        }
    } else if stale.exists() {
        if let Err(e) = std::fs::remove_file(&stale) {
            warn!(error = %e, path = %stale.display(), "could not remove a stale set-aside flow-tag map");
        }
    }
}

impl SetAside {
    /// Loading failed: the old map goes back where it was, for the
    /// programs still pinned and attached with it.
    pub(super) fn restore(self) {
        let _ = std::fs::remove_file(&self.pin);
        if let Err(e) = move_pin(&self.aside, &self.pin) {
            warn!(error = %e, path = %self.pin.display(), "could not put the flow-tag map back");
        }
    }

    /// The new map is pinned and the programs replaced: copies the SQL
    /// tags into it (as many as fit) and drops the old pin, so the old map
    /// is freed once the last old program lets go of it.
    pub(super) fn finish(self, new_map: &mut aya::maps::Map) -> Result<usize, KernelError> {
        let mut tags: HashMap<&mut MapData, FlowKey, FlowTag> =
            HashMap::try_from(new_map).map_err(map_err(MAP_FLOW_TAGS, "opening"))?;
        let mut copied = 0;
        for (key, tag) in &self.sql_tags {
            match tags.insert(key, tag, 0) {
                Ok(()) => copied += 1,
                Err(e) => {
                    warn!(error = %e, "the resized flow-tag map took only {copied} of {} SQL tags", self.sql_tags.len());
                    break;
                }
            }
        }
        std::fs::remove_file(&self.aside)
            .map_err(|e| KernelError::io("removing the set-aside map", &self.aside, e))?;
        info!(
            from_entries = self.old_entries,
            copied, "flow-tag map resized; SQL identity tags carried over"
        );
        Ok(copied)
    }
}
