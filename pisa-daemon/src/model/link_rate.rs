//! Link rates: the capacity of each shaped interface, which its HTB root
//! class holds and its classes share and borrow up to.
//!
//! Each interface's rate comes from, in order: `--link-rate IFACE=RATE`;
//! a bare `--link-rate RATE`, for every interface not named; the speed the
//! device reports (`/sys/class/net/IFACE/speed`, what ethtool shows); and
//! 10 Gbit/s where the device reports none (a tunnel, a bridge).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where there is no flag and the device reports no speed.
pub const FALLBACK_LINK_RATE_BYTES: u64 = 10_000_000_000 / 8;

/// Where an interface's link rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkRateSource {
    /// `--link-rate IFACE=RATE`.
    Interface,
    /// A bare `--link-rate RATE`.
    Flag,
    /// The device's own speed.
    Device,
    /// Neither flag nor device speed: 10 Gbit/s.
    Fallback,
}

impl LinkRateSource {
    pub fn name(self) -> &'static str {
        match self {
            LinkRateSource::Interface => "interface",
            LinkRateSource::Flag => "flag",
            LinkRateSource::Device => "device",
            LinkRateSource::Fallback => "fallback",
        }
    }
}

/// One interface's link rate, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRate {
    pub bytes: u64,
    pub source: LinkRateSource,
}

/// Why `iface` cannot be an interface name (IFNAMSIZ and the characters
/// the kernel refuses), or `None`. Shared by `--iface`, `--link-rate
/// IFACE=RATE` and interface lookups.
pub fn interface_name_problem(iface: &str) -> Option<&'static str> {
    if iface.is_empty() {
        Some("it is empty")
    } else if iface.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if iface.contains(['/', '\0']) || iface.chars().any(char::is_whitespace) {
        Some("it contains '/', whitespace or NUL")
    } else if iface == "." || iface == ".." {
        Some("it is '.' or '..'")
    } else {
        None
    }
}

/// The `--link-rate` flags: rates of named interfaces, and one for the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkRates {
    pub per_interface: BTreeMap<String, u64>,
    pub default_bytes: Option<u64>,
}

impl LinkRates {
    /// Every interface at `bytes`, whatever its device reports.
    pub fn uniform(bytes: u64) -> Self {
        Self {
            per_interface: BTreeMap::new(),
            default_bytes: Some(bytes),
        }
    }

    /// `iface`'s rate, given what its device reports (`device_bytes`).
    pub fn resolve(&self, iface: &str, device_bytes: Option<u64>) -> LinkRate {
        let (bytes, source) = if let Some(bytes) = self.per_interface.get(iface) {
            (*bytes, LinkRateSource::Interface)
        } else if let Some(bytes) = self.default_bytes {
            (bytes, LinkRateSource::Flag)
        } else if let Some(bytes) = device_bytes {
            (bytes, LinkRateSource::Device)
        } else {
            (FALLBACK_LINK_RATE_BYTES, LinkRateSource::Fallback)
        };
        LinkRate { bytes, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBIT: u64 = 1_000_000_000 / 8;

    #[test]
    fn a_named_interface_beats_the_bare_rate_which_beats_the_device() {
        let rates = LinkRates {
            per_interface: [("eth0".to_owned(), 25 * GBIT)].into(),
            default_bytes: Some(GBIT),
        };
        assert_eq!(
            rates.resolve("eth0", Some(100 * GBIT)),
            LinkRate {
                bytes: 25 * GBIT,
                source: LinkRateSource::Interface
            }
        );
        assert_eq!(
            rates.resolve("eth1", Some(100 * GBIT)),
            LinkRate {
                bytes: GBIT,
                source: LinkRateSource::Flag
            }
        );
    }

    #[test]
    fn without_a_bare_rate_the_device_speed_then_10_gbit() {
        let rates = LinkRates {
            per_interface: [("eth0".to_owned(), 25 * GBIT)].into(),
            default_bytes: None,
        };
        assert_eq!(
            rates.resolve("eth1", Some(100 * GBIT)),
            LinkRate {
                bytes: 100 * GBIT,
                source: LinkRateSource::Device
            }
        );
        assert_eq!(
            rates.resolve("tun0", None),
            LinkRate {
                bytes: 10 * GBIT,
                source: LinkRateSource::Fallback
            }
        );
    }
}
