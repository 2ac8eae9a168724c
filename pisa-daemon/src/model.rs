//! The vocabulary every layer shares: how a class is enforced, what a rule
//! matches, what a class is. Plain data with the conversions to and from
//! the kernel's map layouts (`pisa-daemon-common`); no I/O, so `spec`,
//! `plan` and `api` can use it without depending on `kernel`.

use std::net::IpAddr;

use pisa_daemon_common::{
    EndpointMatch, FAMILY_V4, FAMILY_V6, MODE_EDT, MODE_HTB, MODE_POLICE, PROTO_TCP, PROTO_UDP,
    SIDE_DST, SIDE_SRC,
};

/// How a class is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShapingMode {
    /// HTB leaf class per interface; rate + ceil + borrowing.
    Htb,
    /// Earliest departure time for sch_fq; lockless.
    Edt,
    /// Token bucket in the program: drop above rate + burst.
    Police,
}

impl ShapingMode {
    pub fn as_raw(self) -> u8 {
        match self {
            Self::Htb => MODE_HTB,
            Self::Edt => MODE_EDT,
            Self::Police => MODE_POLICE,
        }
    }

    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            MODE_HTB => Some(Self::Htb),
            MODE_EDT => Some(Self::Edt),
            MODE_POLICE => Some(Self::Police),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Htb => "htb",
            Self::Edt => "edt",
            Self::Police => "police",
        }
    }
}

/// One QoS class as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    /// 1 ..= MAX_CLASSES - 1; also the HTB minor.
    pub class_id: u32,
    pub mode: ShapingMode,
    /// Bytes per second on the wire.
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    pub burst_bytes: u32,
    /// 0 (guaranteed) .. 7 (best effort): HTB prio when borrowing.
    pub priority: u8,
    /// EDT drop horizon.
    pub horizon_ns: u64,
    /// Hash of the owning claim (`spec::ClaimKey::hash`), stored with the
    /// class so a restarted agent gives every claim its old id back.
    pub claim_hash: u64,
}

impl ClassSpec {
    /// The class a `CLASS_CONFIG` slot holds, if the slot is active.
    pub fn from_slot(class_id: u32, raw: &pisa_daemon_common::ClassConfig) -> Option<Self> {
        if raw.state != pisa_daemon_common::CLASS_STATE_ACTIVE {
            return None;
        }
        Some(Self {
            class_id,
            mode: ShapingMode::from_raw(raw.mode)?,
            rate_bytes: raw.rate_bytes,
            ceil_bytes: raw.ceil_bytes,
            burst_bytes: raw.burst_bytes,
            priority: raw.priority,
            horizon_ns: raw.horizon_ns,
            claim_hash: raw.claim_hash,
        })
    }
}

/// Which address of a packet a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The destination: requests to the database.
    Destination,
    /// The source: responses from the database.
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

/// What an endpoint rule matches; the key of the rule table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleMatch {
    pub side: Side,
    /// Network address (host bits zero) and prefix length.
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub protocol: Protocol,
    /// 0 matches any port.
    pub port: u16,
}

impl RuleMatch {
    /// The LPM key: fixed fields, then the address; `prefix_len` counts the
    /// fixed bits too.
    pub fn to_kernel(&self) -> (u32, EndpointMatch) {
        let mut data = EndpointMatch {
            side: match self.side {
                Side::Destination => SIDE_DST,
                Side::Source => SIDE_SRC,
            },
            protocol: self.protocol.number(),
            port_be: self.port.to_be(),
            ..EndpointMatch::default()
        };
        match self.addr {
            IpAddr::V4(v4) => {
                data.family = FAMILY_V4;
                data.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                data.family = FAMILY_V6;
                data.addr = v6.octets();
            }
        }
        (
            pisa_daemon_common::ENDPOINT_FIXED_BITS + u32::from(self.prefix_len),
            data,
        )
    }

    pub fn from_kernel(prefix_len: u32, data: &EndpointMatch) -> Option<Self> {
        let side = match data.side {
            SIDE_DST => Side::Destination,
            SIDE_SRC => Side::Source,
            _ => return None,
        };
        let protocol = match data.protocol {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        let addr = match data.family {
            FAMILY_V4 => {
                let mut v4 = [0u8; 4];
                v4.copy_from_slice(&data.addr[..4]);
                IpAddr::from(v4)
            }
            FAMILY_V6 => IpAddr::from(data.addr),
            _ => return None,
        };
        let prefix_len = prefix_len.checked_sub(pisa_daemon_common::ENDPOINT_FIXED_BITS)?;
        Some(Self {
            side,
            addr,
            prefix_len: u8::try_from(prefix_len).ok()?,
            protocol,
            port: u16::from_be(data.port_be),
        })
    }
}

/// Burst when a claim gives none: 10 ms at the rate, and never less than
/// one 64 KiB GSO super-packet, so HTB does not stall on segmentation
/// offload sized skbs.
pub fn default_burst(rate_bytes: u64) -> u32 {
    (rate_bytes / 100).clamp(64 * 1024, u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_match_round_trips_through_the_kernel_key() {
        for rule in [
            RuleMatch {
                side: Side::Destination,
                addr: "10.0.0.5".parse().unwrap(),
                prefix_len: 32,
                protocol: Protocol::Tcp,
                port: 3306,
            },
            RuleMatch {
                side: Side::Source,
                addr: "fd00::".parse().unwrap(),
                prefix_len: 64,
                protocol: Protocol::Udp,
                port: 0,
            },
        ] {
            let (prefix, data) = rule.to_kernel();
            assert_eq!(RuleMatch::from_kernel(prefix, &data), Some(rule));
        }
    }

    #[test]
    fn kernel_key_puts_port_in_network_order_and_counts_fixed_bits() {
        let rule = RuleMatch {
            side: Side::Destination,
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 24,
            protocol: Protocol::Tcp,
            port: 5432,
        };
        let (prefix, data) = rule.to_kernel();
        assert_eq!(prefix, 64 + 24);
        assert_eq!(data.port_be.to_ne_bytes(), 5432u16.to_be_bytes());
        assert_eq!(&data.addr[..4], &[10, 0, 0, 0]);
        assert_eq!(data.side, SIDE_DST);
    }
}
