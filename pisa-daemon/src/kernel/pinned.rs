//! Operations on the pinned objects alone, without loading the program:
//! reading counters (for `status` and tests) and removing everything.

use aya::maps::{Map, MapData, PerCpuHashMap};
use pisa_daemon_common::{
    names::{ALL_MAPS, MAP_IFACE_CONFIG, MAP_IFACE_STATS, PROG_EGRESS, PROG_INGRESS},
    IfaceKey, IfaceStats,
};
use tracing::info;

use super::{attach::detach_pinned, bpffs, qdisc::remove_htb_root, KernelError, PinLayout};

fn open_map(layout: &PinLayout, name: &'static str) -> Result<Map, KernelError> {
    let data = MapData::from_pin(layout.map(name)).map_err(|source| KernelError::Map {
        map: name,
        action: "opening pinned",
        source,
    })?;
    Map::from_map_data(data).map_err(|source| KernelError::Map {
        map: name,
        action: "typing pinned",
        source,
    })
}

/// Sum of the per-CPU interface counters from the pinned `IFACE_STATS`.
pub fn iface_stats(
    layout: &PinLayout,
    ifindex: u32,
    direction: u32,
) -> Result<IfaceStats, KernelError> {
    let map = open_map(layout, MAP_IFACE_STATS)?;
    let stats: PerCpuHashMap<_, IfaceKey, IfaceStats> =
        PerCpuHashMap::try_from(map).map_err(|source| KernelError::Map {
            map: MAP_IFACE_STATS,
            action: "typing pinned",
            source,
        })?;
    let key = IfaceKey { ifindex, direction };
    match stats.get(&key, 0) {
        Ok(per_cpu) => Ok(per_cpu
            .iter()
            .fold(IfaceStats::default(), |acc, s| IfaceStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
                flags: s.flags,
                ..acc
            })),
        Err(aya::maps::MapError::KeyNotFound) => Ok(IfaceStats::default()),
        Err(source) => Err(KernelError::Map {
            map: MAP_IFACE_STATS,
            action: "reading",
            source,
        }),
    }
}

/// What `cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub detached: Vec<String>,
    pub unpinned: usize,
}

/// Detaches every interface this root attached and removes every pin, then
/// the root directory itself. Objects of other roots or tools are untouched.
pub fn cleanup(layout: &PinLayout) -> Result<CleanupReport, KernelError> {
    let mut report = CleanupReport::default();
    if !layout.root().exists() {
        return Ok(report);
    }
    bpffs::ensure_bpffs(layout.root())?;

    let mut ifaces = layout.pinned_egress_links()?;
    // Without TCX nothing is pinned per interface; the interfaces we
    // configured are the keys of IFACE_CONFIG.
    ifaces.extend(configured_interfaces(layout));
    ifaces.sort();
    ifaces.dedup();
    for iface in ifaces {
        let detached = detach_pinned(layout, &iface)?;
        remove_htb_root(&iface)?;
        if detached {
            info!(%iface, "detached");
            report.detached.push(iface);
        }
    }

    // Every pin left under the root goes, including objects of a build
    // that knew others (a map a newer release added, before a downgrade):
    // the root is this daemon's.
    for dir in [layout.links_dir(), layout.maps_dir(), layout.programs_dir()] {
        report.unpinned += remove_pins(&dir)?;
    }
    for dir in [
        layout.links_dir(),
        layout.maps_dir(),
        layout.programs_dir(),
        layout.root().to_path_buf(),
    ] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KernelError::io("removing directory", dir, e)),
        }
    }
    Ok(report)
}

/// Unpins every entry in `dir`; how many there were. Objects this build
/// does not name are logged.
fn remove_pins(dir: &std::path::Path) -> Result<usize, KernelError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(KernelError::io("listing", dir.to_path_buf(), e)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| KernelError::io("listing", dir.to_path_buf(), e))?
            .path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let known = ALL_MAPS.contains(&name) || [PROG_EGRESS, PROG_INGRESS].contains(&name);
                if !known {
                    info!(pin = %path.display(), "unpinned an object this build does not know");
                }
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KernelError::io("unpinning", path, e)),
        }
    }
    Ok(removed)
}

fn configured_interfaces(layout: &PinLayout) -> Vec<String> {
    let Ok(map) = open_map(layout, MAP_IFACE_CONFIG) else {
        return Vec::new();
    };
    let Ok(config) = aya::maps::HashMap::<_, u32, pisa_daemon_common::IfaceConfig>::try_from(map)
    else {
        return Vec::new();
    };
    config
        .keys()
        .filter_map(Result::ok)
        .filter_map(|ifindex| nix::net::if_::if_indextoname(ifindex).ok())
        .filter_map(|name| name.into_string().ok())
        .collect()
}

/// Active classes as recorded in the pinned `CLASS_CONFIG`.
pub fn classes(
    layout: &PinLayout,
) -> Result<std::collections::BTreeMap<u32, super::ClassSpec>, KernelError> {
    use pisa_daemon_common::{names::MAP_CLASS_CONFIG, ClassConfig, MAX_CLASSES};
    let map = open_map(layout, MAP_CLASS_CONFIG)?;
    let config: aya::maps::Array<_, ClassConfig> =
        aya::maps::Array::try_from(map).map_err(|source| KernelError::Map {
            map: MAP_CLASS_CONFIG,
            action: "typing pinned",
            source,
        })?;
    let mut out = std::collections::BTreeMap::new();
    for class_id in 1..MAX_CLASSES {
        let raw = config
            .get(&class_id, 0)
            .map_err(|source| KernelError::Map {
                map: MAP_CLASS_CONFIG,
                action: "reading",
                source,
            })?;
        if let Some(spec) = super::ClassSpec::from_slot(class_id, &raw) {
            out.insert(class_id, spec);
        }
    }
    Ok(out)
}

/// Summed per-CPU counters of `class_ids` from the pinned `CLASS_STATS`.
pub fn class_stats(
    layout: &PinLayout,
    class_ids: impl Iterator<Item = u32>,
) -> Result<std::collections::BTreeMap<u32, pisa_daemon_common::ClassStats>, KernelError> {
    use pisa_daemon_common::{names::MAP_CLASS_STATS, ClassStats};
    let map = open_map(layout, MAP_CLASS_STATS)?;
    let stats: aya::maps::PerCpuArray<_, ClassStats> = aya::maps::PerCpuArray::try_from(map)
        .map_err(|source| KernelError::Map {
            map: MAP_CLASS_STATS,
            action: "typing pinned",
            source,
        })?;
    let mut out = std::collections::BTreeMap::new();
    for class_id in class_ids {
        let per_cpu = stats.get(&class_id, 0).map_err(|source| KernelError::Map {
            map: MAP_CLASS_STATS,
            action: "reading",
            source,
        })?;
        out.insert(class_id, super::maps::sum_class_stats(per_cpu.iter()));
    }
    Ok(out)
}
