//! The vocabulary every layer shares: how a class is enforced, what a rule
//! matches, what a class is. Plain data with the conversions to and from
//! the kernel's map layouts (`pisa-daemon-common`); no I/O, so `spec`,
//! `plan` and `api` can use it without depending on `kernel`.

use std::net::IpAddr;

mod link_rate;
mod packed;
pub use link_rate::{
    interface_name_problem, LinkRate, LinkRateSource, LinkRates, FALLBACK_LINK_RATE_BYTES,
};
pub use packed::packed;

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

/// Where an endpoint rule sends a packet in the kernel (`EndpointRule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleTarget {
    /// The class of any client; 0 when only selector claims cover the
    /// endpoint and nothing less specific does either.
    pub class_id: u32,
    /// Claims with client selectors share the rule: `CLIENTS` entries under
    /// `rule_id` refine the class by the client's address.
    pub clients: bool,
    /// A claim selects the rule's connections by SQL identity.
    pub sql: bool,
    /// 1.. when `clients`; else 0.
    pub rule_id: u16,
}

impl RuleTarget {
    /// A rule with neither selector: the class of every client.
    pub fn class(class_id: u32) -> Self {
        Self {
            class_id,
            ..Self::default()
        }
    }

    pub fn to_kernel(&self, prefix_len: u8) -> pisa_daemon_common::EndpointRule {
        let mut flags = 0;
        if self.clients {
            flags |= pisa_daemon_common::RULE_FLAG_CLIENTS;
        }
        if self.sql {
            flags |= pisa_daemon_common::RULE_FLAG_SQL;
        }
        pisa_daemon_common::EndpointRule {
            class_id: self.class_id,
            addr_prefix_len: prefix_len,
            flags,
            rule_id: self.rule_id,
        }
    }

    pub fn from_kernel(raw: &pisa_daemon_common::EndpointRule) -> Self {
        Self {
            class_id: raw.class_id,
            clients: raw.flags & pisa_daemon_common::RULE_FLAG_CLIENTS != 0,
            sql: raw.flags & pisa_daemon_common::RULE_FLAG_SQL != 0,
            rule_id: raw.rule_id,
        }
    }
}

/// A network: address with host bits zero, and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `addr` is inside this network (same family only).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is inside this network.
    pub fn covers(&self, other: &Prefix) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One client prefix of an endpoint rule: a `CLIENTS` trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientPrefix {
    pub rule_id: u16,
    pub client: Prefix,
}

impl ClientPrefix {
    /// The LPM key; `prefix_len` counts the fixed bits too.
    pub fn to_kernel(&self) -> (u32, pisa_daemon_common::ClientMatch) {
        let mut data = pisa_daemon_common::ClientMatch {
            rule_id: u32::from(self.rule_id),
            ..Default::default()
        };
        match self.client.addr {
            IpAddr::V4(v4) => data.addr[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => data.addr = v6.octets(),
        }
        (
            pisa_daemon_common::CLIENT_FIXED_BITS + u32::from(self.client.len),
            data,
        )
    }

    /// The entry read back; `v4` says which family the rule has (the key
    /// does not carry it).
    pub fn from_kernel(
        prefix_len: u32,
        data: &pisa_daemon_common::ClientMatch,
        v4: bool,
    ) -> Option<Self> {
        let len =
            u8::try_from(prefix_len.checked_sub(pisa_daemon_common::CLIENT_FIXED_BITS)?).ok()?;
        let addr = if v4 {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&data.addr[..4]);
            IpAddr::from(octets)
        } else {
            IpAddr::from(data.addr)
        };
        Some(Self {
            rule_id: u16::try_from(data.rule_id).ok()?,
            client: Prefix { addr, len },
        })
    }
}

/// Connections chosen by the identity a client states when it connects;
/// each list is OR (empty: any), the fields are AND.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlMatch {
    pub users: Vec<String>,
    pub databases: Vec<String>,
    pub applications: Vec<String>,
}

/// Who a connection says it is, from its start message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlIdentity {
    pub user: Option<String>,
    pub database: Option<String>,
    /// PostgreSQL's `application_name`, MySQL's `program_name` attribute.
    pub application: Option<String>,
}

impl SqlMatch {
    pub fn matches(&self, who: &SqlIdentity) -> bool {
        fn one_of(list: &[String], value: &Option<String>) -> bool {
            list.is_empty() || value.as_ref().is_some_and(|v| list.iter().any(|l| l == v))
        }
        one_of(&self.users, &who.user)
            && one_of(&self.databases, &who.database)
            && one_of(&self.applications, &who.application)
    }

    /// `users [reporter], databases [analytics]`, for status and errors.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, list) in [
            ("users", &self.users),
            ("databases", &self.databases),
            ("applications", &self.applications),
        ] {
            if !list.is_empty() {
                parts.push(format!("{name} [{}]", list.join(", ")));
            }
        }
        parts.join(", ")
    }
}

/// Burst when a claim gives none: 10 ms at the rate, and never less than
/// one 64 KiB GSO super-packet, so HTB does not stall on segmentation
/// offload sized skbs.
pub fn default_burst(rate_bytes: u64) -> u32 {
    (rate_bytes / 100).clamp(64 * 1024, u64::from(u32::MAX)) as u32
}

/// How long a class's own queue may hold at its ceil when the kernel has
/// no fq_codel: a few milliseconds, the delay one bulk backlog may add to
/// every other connection of the class.
pub const LEAF_QUEUE_DELAY_NS: u64 = 5_000_000;
/// The smallest byte limit of a class queue: two 64 KiB GSO packets and a
/// frame, since bfifo drops a packet that does not fit whole and a smaller
/// queue would drop every GSO packet that arrives behind another.
pub const LEAF_QUEUE_MIN_BYTES: u64 = 2 * 65_536 + 1_514;

/// The queue inside an HTB class. HTB's default leaf is a 1000-packet FIFO
/// of up to 64 KiB GSO packets: seconds of queue at database rates, which
/// one bulk connection fills for every other connection of the class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafQueue {
    /// Flow-fair with CoDel's 5 ms target: a sparse OLTP flow is served
    /// before a bulk flow's backlog (Linux 3.5+, where the kernel has it).
    FqCodel,
    /// A byte-bounded FIFO of `LEAF_QUEUE_DELAY_NS` at the class's ceil.
    Bfifo { limit_bytes: u32 },
}

impl LeafQueue {
    /// The queue a class with `ceil_bytes` gets on a kernel with (or
    /// without) fq_codel.
    pub fn for_class(ceil_bytes: u64, fq_codel: bool) -> Self {
        if fq_codel {
            return Self::FqCodel;
        }
        let at_ceil = (u128::from(ceil_bytes) * u128::from(LEAF_QUEUE_DELAY_NS) / 1_000_000_000)
            .min(u128::from(u32::MAX)) as u64;
        Self::Bfifo {
            limit_bytes: at_ceil.max(LEAF_QUEUE_MIN_BYTES) as u32,
        }
    }

    /// The qdisc kind (`tc qdisc show`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::FqCodel => "fq_codel",
            Self::Bfifo { .. } => "bfifo",
        }
    }

    /// For `status`: `fq_codel`, or `bfifo 132KiB`.
    pub fn describe(self) -> String {
        match self {
            Self::FqCodel => "fq_codel".into(),
            Self::Bfifo { limit_bytes } => format!("bfifo {}KiB", limit_bytes.div_ceil(1024)),
        }
    }
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

    #[test]
    fn class_queues_are_fq_codel_where_the_kernel_has_it_else_a_few_ms_of_bytes() {
        assert_eq!(LeafQueue::for_class(12_500_000, true), LeafQueue::FqCodel);
        // 1 Gbit ceil: 5 ms is 625,000 bytes.
        assert_eq!(
            LeafQueue::for_class(125_000_000, false),
            LeafQueue::Bfifo {
                limit_bytes: 625_000
            }
        );
        // 100 Mbit: 5 ms is 62,500 bytes, below two GSO packets.
        let small = LeafQueue::for_class(12_500_000, false);
        assert_eq!(
            small,
            LeafQueue::Bfifo {
                limit_bytes: LEAF_QUEUE_MIN_BYTES as u32
            }
        );
        assert_eq!(small.describe(), "bfifo 130KiB");
        // 100 Gbit does not overflow.
        assert!(matches!(
            LeafQueue::for_class(u64::MAX, false),
            LeafQueue::Bfifo {
                limit_bytes: u32::MAX
            }
        ));
    }
}
