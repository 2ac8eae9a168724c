//! Why a reconcile failed, as one typed value: its `reason` is the bounded
//! label that metrics, logs and the published state all use.

use crate::{kernel::KernelError, reconcile::ApplyError, source::file::SourceError};

/// The bounded set of reasons a reconcile (or a part of it) fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The claim source could not be read at all.
    Source,
    /// An interface is missing or misnamed.
    Interface,
    /// A qdisc or class change was refused (rtnetlink).
    Netlink,
    /// A BPF map write or read failed.
    Map,
    /// Attaching the program failed.
    Attach,
    /// Anything else the kernel refused.
    Kernel,
}

impl Reason {
    /// Every reason, so that metrics can show each at 0 from the start.
    pub const ALL: [Reason; 6] = [
        Reason::Source,
        Reason::Interface,
        Reason::Netlink,
        Reason::Map,
        Reason::Attach,
        Reason::Kernel,
    ];

    /// The `reason` label of `pisa_reconcile_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Source => "source",
            Reason::Interface => "interface",
            Reason::Netlink => "netlink",
            Reason::Map => "map",
            Reason::Attach => "attach",
            Reason::Kernel => "kernel",
        }
    }

    /// The reason a kernel error belongs to.
    pub fn of_kernel(error: &KernelError) -> Self {
        match error {
            KernelError::InterfaceNotFound { .. } | KernelError::InvalidInterfaceName { .. } => {
                Reason::Interface
            }
            KernelError::Netlink { .. } | KernelError::ForeignQdisc { .. } => Reason::Netlink,
            KernelError::Map { .. } | KernelError::MapMissing { .. } => Reason::Map,
            KernelError::Attach { .. } | KernelError::ForeignProgram { .. } => Reason::Attach,
            _ => Reason::Kernel,
        }
    }
}

/// A failed reconcile. The previous kernel state stays in force; the loop
/// retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The claims could not be read; the previous claims stay in force.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A kernel operation failed part way; the next run resumes from the
    /// kernel's state then.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl ReconcileError {
    pub fn reason(&self) -> Reason {
        match self {
            ReconcileError::Source(_) => Reason::Source,
            ReconcileError::Apply(error) => Reason::of_kernel(&error.source),
        }
    }
}
