//! Attaching the programs to interfaces: the classifier at egress, the
//! SQL-identity observer at ingress.
//!
//! TCX (Linux 6.6+) gives a link object that we pin per interface and hook:
//! the attachment then outlives the daemon, and re-opening the pin on start
//! is how a restarted daemon adopts it. A daemon whose program differs from
//! the one a pinned link runs (an upgrade) swaps it in place with
//! `BPF_LINK_UPDATE`: never a moment without the program. Older kernels get
//! clsact + cls_bpf over netlink with a fixed priority and handle, so a
//! restart finds (and replaces in place) its own filter instead of stacking
//! a second one.

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};
use pisa_daemon_common::{
    names::{PROG_EGRESS, PROG_INGRESS},
    IFACE_FLAG_L3,
};
use tracing::{info, warn};

use super::{iface, Kernel, KernelError, PinLayout};

/// cls_bpf priority and handle used on kernels without TCX.
const NETLINK_PRIORITY: u16 = 0x5150;
const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x5150);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Netlink,
}

impl AttachMode {
    /// TCX arrived in Linux 6.6 (commit e420bed02507).
    pub fn probe() -> Self {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => Self::Tcx,
            _ => Self::Netlink,
        }
    }
}

/// Where on an interface a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The classifier: shapes what leaves the interface.
    Egress,
    /// The observer: sees connection starts that arrive (never shapes).
    Ingress,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Egress, Hook::Ingress];

    pub fn program_name(self) -> &'static str {
        match self {
            Self::Egress => PROG_EGRESS,
            Self::Ingress => PROG_INGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::Egress => TcAttachType::Egress,
            Self::Ingress => TcAttachType::Ingress,
        }
    }

    /// bpftool's name of the TCX hook (`bpftool net detach <it> dev X`).
    fn tcx_name(self) -> &'static str {
        match self {
            Self::Egress => "tcx_egress",
            Self::Ingress => "tcx_ingress",
        }
    }

    /// tc's name of the clsact hook (`tc filter del dev X <it> pref P`).
    fn clsact_name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }

    fn link_path(self, layout: &PinLayout, iface: &str) -> std::path::PathBuf {
        match self {
            Self::Egress => layout.egress_link(iface),
            Self::Ingress => layout.ingress_link(iface),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// TCX link id of the egress classifier (`bpftool link show id …`).
    pub link_id: Option<u32>,
    /// The egress attachment existed already (pinned by an earlier run).
    pub adopted: bool,
}

/// One hook's attachment.
struct Hooked {
    link_id: Option<u32>,
    adopted: bool,
}

impl Kernel {
    /// Attaches the classifier at egress of `iface` and the observer at its
    /// ingress, or adopts attachments made by this bpffs root (upgrading
    /// their program in place when this daemon's differs). Idempotent.
    pub fn attach_egress(&mut self, iface_name: &str) -> Result<Attachment, KernelError> {
        let itf = iface::lookup(iface_name)?;
        let flags = if itf.l3_only { IFACE_FLAG_L3 } else { 0 };
        // Without TCX there is no pinned link to prove a filter is ours:
        // this root's own record of the interface is what does.
        let known = self.iface_configured(itf.ifindex);
        self.configure_iface(itf.ifindex, flags)?;
        // The link rate, resolved once here, is what the HTB root (if any)
        // and the borrowing pacer both use, and what reports show.
        let link_rate = self.resolve_link_rate(&itf.name);
        self.write_link_pace(itf.ifindex, link_rate.bytes)?;
        self.link_rates_in_force.insert(itf.name.clone(), link_rate);
        let mode = AttachMode::probe();
        let mut egress = None;
        for hook in Hook::ALL {
            let hooked = match mode {
                AttachMode::Tcx => self.attach_tcx(&itf, hook)?,
                AttachMode::Netlink => self.attach_netlink(&itf, hook, known)?,
            };
            if hook == Hook::Egress {
                egress = Some(hooked);
            }
        }
        let egress = egress.unwrap_or(Hooked {
            link_id: None,
            adopted: false,
        });
        let attachment = Attachment {
            iface: itf.name.clone(),
            ifindex: itf.ifindex,
            mode,
            link_id: egress.link_id,
            adopted: egress.adopted,
        };
        info!(
            iface = %attachment.iface,
            ifindex = attachment.ifindex,
            mode = ?attachment.mode,
            link_id = attachment.link_id,
            adopted = attachment.adopted,
            "classifier attached at egress, observer at ingress"
        );
        Ok(attachment)
    }

    fn attach_tcx(&mut self, itf: &iface::Interface, hook: Hook) -> Result<Hooked, KernelError> {
        let link_path = hook.link_path(&self.layout, &itf.name);
        let attached_ids = tcx_programs(&itf.name, hook)?;
        let our_id = self.program_id_of(hook);
        if link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(|source| KernelError::Link {
                iface: itf.name.clone(),
                action: "opening pinned",
                source,
            })?;
            let fd_link = FdLink::from(pinned);
            let link_info = fd_link.info().map_err(|source| KernelError::Link {
                iface: itf.name.clone(),
                action: "reading info of",
                source,
            })?;
            let linked = link_info.program_id();
            if attached_ids.iter().any(|(id, _)| *id == linked) {
                if linked != our_id {
                    // An upgrade: swap this daemon's program into the live
                    // link; the pin keeps naming the same link.
                    let link = SchedClassifierLink::try_from(fd_link).map_err(|source| {
                        KernelError::Link {
                            iface: itf.name.clone(),
                            action: "typing",
                            source,
                        }
                    })?;
                    let program = self.program_mut(hook);
                    let id = program
                        .attach_to_link(link)
                        .map_err(|source| attach_error(&itf.name, source))?;
                    // Dropping the taken handle closes our fd; the pin stays.
                    drop(take_link(program, id, &itf.name)?);
                    info!(iface = %itf.name, ?hook, from = linked, to = our_id, "program replaced in place");
                }
                return Ok(Hooked {
                    link_id: Some(link_info.id()),
                    adopted: true,
                });
            }
            // The interface was re-created (a pod restarted) and the old
            // link went defunct: drop the stale pin and attach afresh.
            warn!(iface = %itf.name, ?hook, "pinned link is stale; re-attaching");
            std::fs::remove_file(&link_path)
                .map_err(|e| KernelError::io("removing stale link pin", &link_path, e))?;
        }
        if let Some((prog_id, name)) = attached_ids
            .iter()
            .find(|(id, name)| name == hook.program_name() && *id != our_id)
        {
            return Err(KernelError::ForeignProgram {
                iface: itf.name.clone(),
                name: name.clone(),
                prog_id: *prog_id,
                root: self.layout.root().to_path_buf(),
                detach: format!("bpftool net detach {} dev {}", hook.tcx_name(), itf.name),
            });
        }
        let program = self.program_mut(hook);
        let link_id = program
            .attach_with_options(
                &itf.name,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| attach_error(&itf.name, source))?;
        let link = take_link(program, link_id, &itf.name)?;
        let fd_link = FdLink::try_from(link).map_err(|source| KernelError::Link {
            iface: itf.name.clone(),
            action: "converting",
            source,
        })?;
        let link_info_id = fd_link.info().ok().map(|i| i.id());
        fd_link.pin(&link_path).map_err(|source| KernelError::Pin {
            path: link_path.clone(),
            source,
        })?;
        Ok(Hooked {
            link_id: link_info_id,
            adopted: false,
        })
    }

    /// `known`: this root had configured the interface before (a restart
    /// or an upgrade), so a filter at our priority running an earlier
    /// program is this root's own.
    fn attach_netlink(
        &mut self,
        itf: &iface::Interface,
        hook: Hook,
        known: bool,
    ) -> Result<Hooked, KernelError> {
        match tc::qdisc_add_clsact(&itf.name) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(attach_error(
                    &itf.name,
                    aya::programs::ProgramError::from(e),
                ))
            }
        }
        let options = NlOptions {
            priority: NETLINK_PRIORITY,
            handle: NETLINK_HANDLE,
            ..NlOptions::default()
        };
        let upgraded = self.program_upgraded(hook);
        let attached = self.program_mut(hook).attach_with_options(
            &itf.name,
            hook.attach_type(),
            TcAttachOptions::Netlink(options),
        );
        let adopted = match attached {
            Ok(link_id) => {
                // The filter must outlive this process: forget the handle
                // whose Drop would delete it.
                let link = take_link(self.program_mut(hook), link_id, &itf.name)?;
                std::mem::forget(link);
                false
            }
            Err(aya::programs::ProgramError::TcError(tc::TcError::NetlinkError(e)))
                if e.raw_os_error() == Some(libc::EEXIST) =>
            {
                let our_id = self.program_id_of(hook);
                let running = self.netlink_filter_program(itf, hook)?;
                let theirs = running
                    .iter()
                    .find(|(id, _)| *id != our_id && !(upgraded && known));
                if let Some((prog_id, name)) = theirs {
                    // Another root's classifier (TCX kernels refuse the same
                    // way): adopting it would shape nothing of ours.
                    return Err(KernelError::ForeignProgram {
                        iface: itf.name.clone(),
                        name: name.clone(),
                        prog_id: *prog_id,
                        root: self.layout.root().to_path_buf(),
                        detach: format!(
                            "tc filter del dev {} {} pref {NETLINK_PRIORITY}",
                            itf.name,
                            hook.clsact_name()
                        ),
                    });
                }
                let program = self.program_mut(hook);
                if upgraded {
                    // Our filter runs an earlier program: replace it in place.
                    let existing = SchedClassifierLink::attached(
                        &itf.name,
                        hook.attach_type(),
                        NETLINK_PRIORITY,
                        NETLINK_HANDLE,
                        None,
                    )
                    .map_err(|e| KernelError::io("finding the filter on", &itf.name, e))?;
                    let id = program
                        .attach_to_link(existing)
                        .map_err(|source| attach_error(&itf.name, source))?;
                    std::mem::forget(take_link(program, id, &itf.name)?);
                }
                true
            }
            Err(source) => return Err(attach_error(&itf.name, source)),
        };
        Ok(Hooked {
            link_id: None,
            adopted,
        })
    }

    /// The programs the bpf filters on `itf`'s clsact `hook` run: (id, name).
    fn netlink_filter_program(
        &mut self,
        itf: &iface::Interface,
        hook: Hook,
    ) -> Result<Vec<(u32, String)>, KernelError> {
        let nl = self.netlink()?;
        super::tc_filters::bpf_filter_programs(nl, itf.ifindex, hook == Hook::Egress).map_err(|e| {
            KernelError::Netlink {
                iface: itf.name.clone(),
                action: "listing the filters of",
                source: e,
            }
        })
    }

    /// Detaches from `iface` and forgets its per-interface entries.
    /// Returns whether anything was attached.
    pub fn detach_egress(&mut self, iface_name: &str) -> Result<bool, KernelError> {
        let was_attached = detach_pinned(&self.layout, iface_name)?;
        self.link_rates_in_force.remove(iface_name);
        let Ok(itf) = iface::lookup(iface_name) else {
            // Gone (a Pod's veth): its index is unknown now, so sweep.
            self.forget_vanished_ifindexes()?;
            return Ok(was_attached);
        };
        // Absent keys are fine: the interface may never have seen traffic.
        let _ = self.iface_config()?.remove(&itf.ifindex);
        let _ = self.link_pace()?.remove(&itf.ifindex);
        for direction in [
            pisa_daemon_common::DIRECTION_EGRESS,
            pisa_daemon_common::DIRECTION_INGRESS,
        ] {
            let key = pisa_daemon_common::IfaceKey {
                ifindex: itf.ifindex,
                direction,
            };
            let _ = self.iface_stats()?.remove(&key);
        }
        Ok(was_attached)
    }

    /// Lets go of what earlier runs attached to interfaces that no longer
    /// exist (Pods deleted while no daemon ran): their link pins, which
    /// would otherwise stay behind in bpffs for good (a run without a claim
    /// source never detaches), and their per-interface map entries.
    /// Returns the names released.
    pub fn release_vanished_interfaces(&mut self) -> Result<Vec<String>, KernelError> {
        let mut released = Vec::new();
        for iface_name in self.layout.pinned_egress_links()? {
            if iface::lookup(&iface_name).is_err() {
                detach_pinned(&self.layout, &iface_name)?;
                self.ifaces.remove(&iface_name);
                self.htb_roots.remove(&iface_name);
                self.htb_groups.remove(&iface_name);
                self.flat_leaves.remove(&iface_name);
                self.link_rates_in_force.remove(&iface_name);
                released.push(iface_name);
            }
        }
        self.forget_vanished_ifindexes()?;
        Ok(released)
    }

    /// Drops per-interface map entries whose interface index no longer
    /// exists. Returns how many entries went.
    fn forget_vanished_ifindexes(&mut self) -> Result<usize, KernelError> {
        let vanished = |ifindex: u32| nix::net::if_::if_indextoname(ifindex).is_err();
        // Absent keys are fine: the program may have raced us to nothing.
        let mut config_map = self.iface_config()?;
        let configs: Vec<u32> = config_map
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| vanished(*ifindex))
            .collect();
        for ifindex in &configs {
            let _ = config_map.remove(ifindex);
        }
        let mut link_map = self.link_pace()?;
        let links: Vec<u32> = link_map
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| vanished(*ifindex))
            .collect();
        for ifindex in &links {
            let _ = link_map.remove(ifindex);
        }
        let mut stats_map = self.iface_stats()?;
        let stats: Vec<pisa_daemon_common::IfaceKey> = stats_map
            .keys()
            .filter_map(Result::ok)
            .filter(|key| vanished(key.ifindex))
            .collect();
        for key in &stats {
            let _ = stats_map.remove(key);
        }
        Ok(configs.len() + stats.len())
    }
}

/// Detaches what `layout` attached to `iface_name` at either hook (TCX
/// pins or our netlink filters), without needing the programs loaded.
/// Used by cleanup too. Returns whether the egress classifier was attached.
pub(super) fn detach_pinned(layout: &PinLayout, iface_name: &str) -> Result<bool, KernelError> {
    let mut egress_attached = false;
    for hook in Hook::ALL {
        let detached = detach_hook(layout, iface_name, hook)?;
        if hook == Hook::Egress {
            egress_attached = detached;
        }
    }
    Ok(egress_attached)
}

fn detach_hook(layout: &PinLayout, iface_name: &str, hook: Hook) -> Result<bool, KernelError> {
    let link_path = hook.link_path(layout, iface_name);
    if link_path.exists() {
        let program_id = PinnedLink::from_pin(&link_path)
            .ok()
            .and_then(|pinned| FdLink::from(pinned).info().ok())
            .map(|info| info.program_id());
        // Removing the last reference (the pin) destroys the link, which
        // detaches the program from the interface.
        std::fs::remove_file(&link_path)
            .map_err(|e| KernelError::io("removing link pin", &link_path, e))?;
        if let Some(program_id) = program_id {
            wait_for_tcx_release(iface_name, hook, program_id);
        }
        return Ok(true);
    }
    if AttachMode::probe() == AttachMode::Netlink && iface::lookup(iface_name).is_ok() {
        return match tc::qdisc_detach_program(iface_name, hook.attach_type(), hook.program_name()) {
            Ok(()) => Ok(true),
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(attach_error(
                iface_name,
                aya::programs::ProgramError::from(e),
            )),
        };
    }
    Ok(false)
}

/// The kernel frees a TCX link from a workqueue after its last reference
/// goes, so the program stays attached for a moment after the unpin. Wait
/// for that, so that detach is synchronous and an immediate re-attach does
/// not fail with EEXIST.
fn wait_for_tcx_release(iface: &str, hook: Hook, program_id: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match tcx_programs(iface, hook) {
            Ok(ids) if ids.iter().any(|(id, _)| *id == program_id) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => return,
        }
    }
    warn!(
        iface,
        ?hook,
        program_id,
        "TCX link still attached 2 s after unpin"
    );
}

fn take_link(
    program: &mut SchedClassifier,
    link_id: tc::SchedClassifierLinkId,
    iface: &str,
) -> Result<SchedClassifierLink, KernelError> {
    program
        .take_link(link_id)
        .map_err(|source| attach_error(iface, source))
}

fn attach_error(iface: &str, source: aya::programs::ProgramError) -> KernelError {
    KernelError::Attach {
        iface: iface.to_owned(),
        source,
    }
}

/// Programs attached at TCX `hook` of `iface`: (id, name).
fn tcx_programs(iface: &str, hook: Hook) -> Result<Vec<(u32, String)>, KernelError> {
    let (_revision, programs) =
        SchedClassifier::query_tcx(iface, hook.attach_type()).map_err(|source| {
            KernelError::Program {
                program: hook.program_name(),
                action: "querying TCX programs",
                source,
            }
        })?;
    Ok(programs
        .iter()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect())
}
