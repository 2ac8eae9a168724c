//! Loading the eBPF object and adopting pinned state.
//!
//! Maps are created pinned (or re-opened if already pinned) through aya's
//! per-map pin paths; the program is loaded once and pinned, and every later
//! start re-opens the pinned program. So a restarted daemon shares the exact
//! kernel objects the previous one left running: nothing is detached, and
//! traffic stays shaped across restarts and upgrades of the agent.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{MapData, PerCpuHashMap},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use pisa_daemon_common::{
    names::{ALL_MAPS, MAP_FLOW_TAGS, MAP_IFACE_CONFIG, MAP_IFACE_STATS, PROG_HTB_GROUP},
    IfaceConfig, IfaceKey, IfaceStats, DEFAULT_FLOW_TAG_CONNECTIONS,
};
use tracing::{debug, info};

use crate::model::{LinkRate, LinkRates};

use super::{
    attach::Hook, bpffs::PinLayout, caps, features, netlink::RtNetlink, resize, ClassSpec,
    Features, KernelError, RuleMatch, EBPF_OBJECT,
};

/// One program of the object, pinned, as this process uses it.
pub(super) struct LoadedProgram {
    pub(super) program: SchedClassifier,
    pub(super) id: u32,
    /// It was pinned already, by an earlier run.
    pub(super) adopted: bool,
    /// The pinned one was an earlier build (its instructions differ); this
    /// process pinned its own in its place and swaps it into the links.
    pub(super) upgraded: bool,
}

/// The loaded (or adopted) program and maps under one bpffs root.
pub struct Kernel {
    pub(super) layout: PinLayout,
    pub(super) ebpf: Ebpf,
    /// The egress classifier.
    pub(super) program: SchedClassifier,
    pub(super) program_id: u32,
    /// The ingress observer (SQL identity).
    pub(super) ingress: LoadedProgram,
    /// Whether the classifier was already pinned when this process started.
    adopted: bool,
    /// Whether the pinned classifier was an earlier build, replaced now.
    upgraded: bool,
    pub(super) features: Features,
    /// The `--link-rate` flags; each interface's rate is resolved from
    /// them and its device's speed when its HTB root is set up.
    pub(super) link_rates: LinkRates,
    /// The link rate each interface's HTB link class was written with.
    pub(super) link_rates_in_force: BTreeMap<String, LinkRate>,
    pub(super) classes: BTreeMap<u32, ClassSpec>,
    pub(super) rules: BTreeMap<RuleMatch, crate::model::RuleTarget>,
    pub(super) clients: BTreeMap<crate::model::ClientPrefix, u32>,
    pub(super) ifaces: BTreeSet<String>,
    pub(super) netlink: Option<RtNetlink>,
    /// Interfaces whose HTB root is known to be in place, by ifindex.
    pub(super) htb_roots: BTreeMap<String, u32>,
    /// The HTB groups in place on each interface, as last written.
    pub(super) htb_groups: BTreeMap<String, BTreeMap<u16, super::htb::HtbClass>>,
    /// Groups whose leaves changed since the last `flush_groups`.
    pub(super) stale_groups: BTreeSet<u16>,
    /// Leaves of an earlier release's flat tree found on an adopted
    /// interface, removed once their classes live in groups.
    pub(super) flat_leaves: BTreeMap<String, Vec<u16>>,
    /// Mirror of the `SUMMARY` map.
    pub(super) summary: pisa_daemon_common::Summary,
    /// Entries `FLOW_TAGS` has (one per connection).
    pub(super) flow_tag_entries: u32,
}

impl Kernel {
    /// Loads the embedded object under `layout`, adopting whatever a previous
    /// run pinned there, with the default flow-tag capacity.
    pub fn open(layout: PinLayout) -> Result<Self, KernelError> {
        Self::open_with(layout, DEFAULT_FLOW_TAG_CONNECTIONS)
    }

    /// Loads as `open` does, with `FLOW_TAGS` sized for `flow_tag_connections`
    /// connections (one entry each). A pinned map of another size is
    /// replaced (see `resize`).
    pub fn open_with(layout: PinLayout, flow_tag_connections: u32) -> Result<Self, KernelError> {
        caps::ensure_capabilities()?;
        layout.prepare()?;
        raise_memlock_limit();

        let flow_tag_entries = flow_tag_connections;
        resize::remove_stale_aside(&layout);
        let set_aside = resize::set_aside_if_resized(&layout, flow_tag_entries)?;
        let loaded = load_object(&layout, flow_tag_entries, set_aside.is_some());
        let (ebpf, egress, ingress) = match (loaded, set_aside) {
            (Ok(loaded), Some(set_aside)) => {
                let (mut ebpf, egress, ingress) = loaded;
                let map = ebpf
                    .map_mut(MAP_FLOW_TAGS)
                    .ok_or(KernelError::MapMissing { map: MAP_FLOW_TAGS })?;
                set_aside.finish(map)?;
                (ebpf, egress, ingress)
            }
            (Ok(loaded), None) => loaded,
            (Err(e), set_aside) => {
                if let Some(set_aside) = set_aside {
                    set_aside.restore();
                }
                return Err(e);
            }
        };
        let (program_id, adopted, upgraded) = (egress.id, egress.adopted, egress.upgraded);
        let mut kernel = Self {
            layout,
            ebpf,
            program: egress.program,
            program_id,
            ingress,
            adopted,
            upgraded,
            features: features::probe(),
            link_rates: LinkRates::default(),
            link_rates_in_force: BTreeMap::new(),
            classes: BTreeMap::new(),
            rules: BTreeMap::new(),
            clients: BTreeMap::new(),
            ifaces: BTreeSet::new(),
            netlink: None,
            htb_roots: BTreeMap::new(),
            htb_groups: BTreeMap::new(),
            stale_groups: BTreeSet::new(),
            flat_leaves: BTreeMap::new(),
            summary: pisa_daemon_common::Summary::default(),
            flow_tag_entries,
        };
        kernel.load_caches()?;
        kernel.refresh_attachments()?;
        kernel.adopt_htb_trees();
        Ok(kernel)
    }

    /// Brings the attachments an earlier run left up to this build: a
    /// program of another build is swapped into each live link, and a hook
    /// that build did not have (the ingress observer) is attached. Nothing
    /// to do when this build pinned or adopted the same programs and every
    /// hook is there. Interfaces that vanished are left to
    /// `release_vanished_interfaces`.
    fn refresh_attachments(&mut self) -> Result<(), KernelError> {
        let upgraded = self.upgraded || self.ingress.upgraded;
        for iface_name in self.ifaces.clone() {
            let missing_hook = !self.layout.ingress_link(&iface_name).exists()
                && super::attach::AttachMode::probe() == super::attach::AttachMode::Tcx;
            if (upgraded || missing_hook) && super::iface::lookup(&iface_name).is_ok() {
                self.attach_egress(&iface_name)?;
            }
        }
        Ok(())
    }

    /// Sets the capacity (bytes/s) of the HTB link class on every interface,
    /// whatever the device reports: what classes share and borrow from.
    /// Applies to interfaces set up later.
    pub fn set_link_rate(&mut self, rate_bytes: u64) {
        self.set_link_rates(LinkRates::uniform(rate_bytes));
    }

    /// Sets the `--link-rate` flags (see `model::LinkRates`). Applies to
    /// interfaces set up later.
    pub fn set_link_rates(&mut self, rates: LinkRates) {
        self.link_rates = rates;
    }

    /// `iface`'s link rate now, from the flags and the device's speed.
    pub(super) fn resolve_link_rate(&self, iface: &str) -> LinkRate {
        self.link_rates
            .resolve(iface, super::iface::speed_bytes(iface))
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The kernel id of the classifier (`bpftool prog show id …`).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// True when this process found the program already pinned and reused it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// True when the pinned classifier was an earlier build that this
    /// process replaced (in the pin and, on attach, in every link).
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    pub(super) fn program_mut(&mut self, hook: Hook) -> &mut SchedClassifier {
        match hook {
            Hook::Egress => &mut self.program,
            Hook::Ingress => &mut self.ingress.program,
        }
    }

    pub(super) fn program_id_of(&self, hook: Hook) -> u32 {
        match hook {
            Hook::Egress => self.program_id,
            Hook::Ingress => self.ingress.id,
        }
    }

    pub(super) fn program_upgraded(&self, hook: Hook) -> bool {
        match hook {
            Hook::Egress => self.upgraded,
            Hook::Ingress => self.ingress.upgraded,
        }
    }

    /// Whether this root had configured `ifindex` (attached to it) before.
    pub(super) fn iface_configured(&mut self, ifindex: u32) -> bool {
        self.iface_config()
            .is_ok_and(|config| config.get(&ifindex, 0).is_ok())
    }

    pub(super) fn iface_config(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut MapData, u32, IfaceConfig>, KernelError> {
        let map = self
            .ebpf
            .map_mut(MAP_IFACE_CONFIG)
            .ok_or(KernelError::MapMissing {
                map: MAP_IFACE_CONFIG,
            })?;
        aya::maps::HashMap::try_from(map).map_err(|source| KernelError::Map {
            map: MAP_IFACE_CONFIG,
            action: "opening",
            source,
        })
    }

    pub(super) fn iface_stats(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut MapData, IfaceKey, IfaceStats>, KernelError> {
        let map = self
            .ebpf
            .map_mut(MAP_IFACE_STATS)
            .ok_or(KernelError::MapMissing {
                map: MAP_IFACE_STATS,
            })?;
        PerCpuHashMap::try_from(map).map_err(|source| KernelError::Map {
            map: MAP_IFACE_STATS,
            action: "opening",
            source,
        })
    }
}

/// Loads the object with its maps pinned under `layout` and both programs
/// loaded (adopted, upgraded or pinned afresh). `maps_replaced`: a pinned
/// map was set aside, so the pinned programs (which read it) are replaced
/// even when their instructions are the same.
fn load_object(
    layout: &PinLayout,
    flow_tag_entries: u32,
    maps_replaced: bool,
) -> Result<(Ebpf, LoadedProgram, LoadedProgram), KernelError> {
    let map_paths: Vec<_> = ALL_MAPS
        .iter()
        .map(|name| (*name, layout.map(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOW_TAGS, flow_tag_entries);
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| KernelError::Load { source })?;
    let egress = load_program(&mut ebpf, layout, Hook::Egress, maps_replaced)?;
    let ingress = load_program(&mut ebpf, layout, Hook::Ingress, maps_replaced)?;
    load_group_classifier(&mut ebpf)?;
    Ok((ebpf, egress, ingress))
}

/// Loads the HTB root's group classifier. It is not pinned: the root
/// filter holds it, and each start swaps its own copy in (`htb_groups`).
fn load_group_classifier(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let err = |action: &'static str| {
        move |source| KernelError::Program {
            program: PROG_HTB_GROUP,
            action,
            source,
        }
    };
    let program: &mut SchedClassifier = ebpf
        .program_mut(PROG_HTB_GROUP)
        .ok_or(KernelError::ProgramMissing {
            program: PROG_HTB_GROUP,
        })?
        .try_into()
        .map_err(err("typing"))?;
    program.load().map_err(err("loading (verifier)"))
}

/// Loads `hook`'s program from the embedded object and compares it with
/// the pinned one: the same instructions (the kernel's program tag) adopt
/// the pinned program; different ones (an upgrade) replace the pin, and
/// the links are swapped over when interfaces are attached.
fn load_program(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    hook: Hook,
    maps_replaced: bool,
) -> Result<LoadedProgram, KernelError> {
    let name = hook.program_name();
    let path = layout.program(name);
    let err = |action: &'static str| {
        move |source| KernelError::Program {
            program: name,
            action,
            source,
        }
    };
    let fresh: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(KernelError::ProgramMissing { program: name })?
        .try_into()
        .map_err(err("typing"))?;
    fresh.load().map_err(err("loading (verifier)"))?;
    let fresh_info = fresh.info().map_err(err("reading info of"))?;
    let pinned = if path.exists() {
        Some(SchedClassifier::from_pin(&path).map_err(err("opening pinned"))?)
    } else {
        None
    };
    let (adopted, upgraded) = match &pinned {
        Some(pinned) => {
            let info = pinned.info().map_err(err("reading info of"))?;
            if maps_replaced {
                (true, true)
            } else {
                ensure_program_uses_pinned_maps(ebpf, &info, layout)?;
                (true, info.tag() != fresh_info.tag())
            }
        }
        None => (false, false),
    };
    if pinned.is_none() || upgraded {
        if upgraded {
            std::fs::remove_file(&path)
                .map_err(|e| KernelError::io("replacing the pin of an earlier build", &path, e))?;
        }
        let fresh: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(KernelError::ProgramMissing { program: name })?
            .try_into()
            .map_err(err("typing"))?;
        fresh.pin(&path).map_err(|source| KernelError::Pin {
            path: path.clone(),
            source,
        })?;
        debug!(path = %path.display(), "pinned program");
    }
    let program = SchedClassifier::from_pin(&path).map_err(err("opening pinned"))?;
    let id = program.info().map_err(err("reading info of"))?.id();
    let root = layout.root().display();
    match (adopted, upgraded) {
        (true, false) => info!(%root, program = name, id, "adopted pinned program"),
        (true, true) => {
            info!(%root, program = name, id, "replaced an earlier build's pinned program")
        }
        _ => info!(%root, program = name, id, "loaded and pinned program"),
    }
    Ok(LoadedProgram {
        program,
        id,
        adopted,
        upgraded,
    })
}

/// A pinned program from an earlier run must only use maps pinned here;
/// if one of its maps is not among them, someone removed and re-created
/// maps by hand, and the program would read maps nobody writes. Refuse.
fn ensure_program_uses_pinned_maps(
    ebpf: &Ebpf,
    info: &aya::programs::ProgramInfo,
    layout: &PinLayout,
) -> Result<(), KernelError> {
    let Ok(Some(program_maps)) = info.map_ids() else {
        return Ok(());
    };
    let program_maps: Vec<u32> = program_maps.into_iter().collect();
    let pinned: BTreeSet<u32> = ebpf
        .maps()
        .filter(|(name, _)| ALL_MAPS.contains(name))
        .filter_map(|(_, map)| map_data(map).and_then(|data| data.info().ok()))
        .map(|info| info.id())
        .collect();
    // The program's read-only data (aya-log's level, its strings) is a
    // frozen map the program owns: it is never written, so it needs no pin.
    let read_only_data = |id: &u32| {
        aya::maps::MapInfo::from_id(*id)
            .ok()
            .and_then(|info| info.name_as_str().map(|name| name.ends_with(".rodata")))
            .unwrap_or(false)
    };
    if let Some(stray) = program_maps
        .iter()
        .find(|id| !pinned.contains(id) && !read_only_data(id))
    {
        return Err(KernelError::io(
            "adopting pinned state under",
            layout.root(),
            std::io::Error::other(format!(
                "the pinned program uses map id {stray}, which is not pinned under this root; \
                 the pinned state is inconsistent: run `pisa-daemon cleanup --bpffs {}` and \
                 start again",
                layout.root().display()
            )),
        ));
    }
    Ok(())
}

fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m) => Some(m),
        _ => None,
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail with a misleading EPERM there. Best effort.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
