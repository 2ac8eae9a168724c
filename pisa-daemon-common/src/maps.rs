//! Map keys and values. Field names are part of the operator interface:
//! `bpftool map dump pinned …` prints them through BTF.

/// Class ids are indices into the class arrays. Id 0 means "no class".
pub const MAX_CLASSES: u32 = 16384;
/// Capacity of the endpoint-rule LPM trie.
pub const MAX_ENDPOINT_RULES: u32 = 65536;
/// Connections the flow-tag table holds unless `--max-flow-tags` says
/// otherwise. Each connection takes one `FLOW_TAGS` entry, keyed by its
/// canonical direction (`FlowKey::canonical`).
pub const DEFAULT_FLOW_TAG_CONNECTIONS: u32 = 65536;
/// The most connections `--max-flow-tags` may ask for: 2^22 (about 512 MiB
/// of kernel memory when all are used).
pub const MAX_FLOW_TAG_CONNECTIONS: u32 = 4_194_304;
/// Entries of `FLOW_TAGS` in the object; the daemon sizes the map at load
/// to `--max-flow-tags`.
pub const MAX_FLOW_TAGS: u32 = DEFAULT_FLOW_TAG_CONNECTIONS;
/// `FLOW_TAGS` map flags: `BPF_F_NO_PREALLOC`. Entries are allocated as
/// tags arrive, so a node sized for a million connections pays only for
/// the ones it tags (the bucket array, 16 bytes per entry rounded up to a
/// power of two, is allocated at creation either way).
pub const FLOW_TAGS_MAP_FLAGS: u32 = 1;
/// Capacity of the per-interface maps.
pub const MAX_IFACES: u32 = 4096;

/// `IfaceKey::direction` for the egress hook.
pub const DIRECTION_EGRESS: u32 = 0;
/// `IfaceKey::direction` for the ingress hook.
pub const DIRECTION_INGRESS: u32 = 1;

/// Key of `IFACE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub ifindex: u32,
    /// `DIRECTION_EGRESS` or `DIRECTION_INGRESS`.
    pub direction: u32,
}

/// Value of `IFACE_STATS` (one per CPU; sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub packets: u64,
    /// `skb->len` at the hook: the frame including its MAC header, if any.
    pub bytes: u64,
    /// `IFACE_FLAG_*`, written on every CPU by the agent when it attaches.
    /// Kept beside the counters so one lookup per packet serves both.
    pub flags: u32,
    pub _pad: u32,
}

/// `IfaceConfig::flags`: the device has no MAC header (tunnels such as
/// `tunl0`, `wg0`); parsing starts at the IP header.
pub const IFACE_FLAG_L3: u32 = 1;

/// Value of `IFACE_CONFIG`, keyed by ifindex (`u32`): the agent's record of
/// the interfaces it configured (the program reads the copy in `IfaceStats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    pub flags: u32,
    pub _pad: u32,
}

/// Shaping modes (`ClassConfig::mode`).
pub const MODE_NONE: u8 = 0;
/// Set `skb->priority` to the class's HTB handle; the qdisc shapes.
pub const MODE_HTB: u8 = 1;
/// Earliest departure time in `skb->tstamp`; sch_fq paces.
pub const MODE_EDT: u8 = 2;
/// Token bucket in the program; packets over rate + burst are dropped.
pub const MODE_POLICE: u8 = 3;

/// `ClassConfig::state`: the slot is free; rules pointing here are ignored.
pub const CLASS_STATE_FREE: u8 = 0;
/// `ClassConfig::state`: the class is in force.
pub const CLASS_STATE_ACTIVE: u8 = 1;

/// Value of `CLASS_CONFIG`, indexed by class id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassConfig {
    /// Guaranteed rate, bytes per second (wire bytes).
    pub rate_bytes: u64,
    /// Ceiling the class may borrow up to, bytes per second.
    pub ceil_bytes: u64,
    /// EDT: packets that would leave later than this are dropped.
    pub horizon_ns: u64,
    /// Bucket depth in bytes: the most a class may send at once after idling.
    pub burst_bytes: u32,
    /// HTB mode: the value written to `skb->priority` (major << 16 | minor).
    pub htb_handle: u32,
    /// One of the `MODE_*` constants.
    pub mode: u8,
    /// 0 (guaranteed) .. 7; mirrors the HTB prio of the class.
    pub priority: u8,
    /// `CLASS_STATE_FREE` or `CLASS_STATE_ACTIVE`.
    pub state: u8,
    pub _pad: [u8; 5],
    /// FNV-1a of the owning claim's `namespace/name`; the program ignores
    /// it, the agent uses it to keep class ids stable across restarts.
    pub claim_hash: u64,
}

/// Value of `CLASS_PACE`, indexed by class id. Shared by all CPUs and updated
/// with compare-and-swap, so several CPUs pacing one class stay exact.
/// Kept apart from `ClassConfig` so that a rate change never resets it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassPace {
    /// Theoretical arrival time (GCRA) on the `bpf_ktime_get_ns` clock.
    pub tat_ns: u64,
}

/// Value of `LINK_PACE`, keyed by ifindex: the interface's link rate and a
/// clock at that rate that every paced class on it charges, so that classes
/// borrowing up to their ceil share what the link has left. Written by the
/// daemon when it attaches (the rate; the clock is the program's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkPace {
    pub rate_bytes: u64,
    pub tat_ns: u64,
}

/// Value of `CLASS_STATS` (one per CPU; sum them), indexed by class id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by the police bucket or beyond the EDT horizon.
    pub drops: u64,
    /// EDT: sent with a departure time in the future.
    pub delayed: u64,
}

/// `EndpointMatch::side`: the rule matches the packet's destination
/// (requests to the database).
pub const SIDE_DST: u8 = 1;
/// `EndpointMatch::side`: the rule matches the packet's source
/// (responses from the database).
pub const SIDE_SRC: u8 = 2;

/// Address family in keys (`EndpointMatch::family`, `FlowKey::family`).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The LPM trie matches this many bits of `EndpointMatch` before the address
/// starts; a rule for `addr/len` uses `prefix_len = ENDPOINT_FIXED_BITS + len`.
pub const ENDPOINT_FIXED_BITS: u32 = 64;

/// Data part of an `ENDPOINTS` LPM key (the kernel key is
/// `{prefix_len: u32, data: EndpointMatch}`).
/// IPv4 addresses occupy the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointMatch {
    /// `SIDE_DST` or `SIDE_SRC`.
    pub side: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    pub _pad: u8,
    /// Network byte order; 0 is the any-port rule.
    pub port_be: u16,
    pub _pad2: u16,
    pub addr: [u8; 16],
}

/// Value of `ENDPOINTS`.
///
/// The layout reads the same as the earlier `{class_id: u32,
/// addr_prefix_len: u32}` for rules without selectors (flags and rule id
/// zero), so entries pinned by an earlier release stay valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointRule {
    /// The class of any client of this endpoint; 0 when only claims with
    /// client or SQL selectors cover it (their traffic then goes unshaped
    /// unless a selector matches).
    pub class_id: u32,
    /// The address prefix length of the rule (0..=128), so the program can
    /// compare an exact-port match against a wildcard-port match.
    pub addr_prefix_len: u8,
    /// `RULE_FLAG_*`.
    pub flags: u8,
    /// Names this rule in `CLIENTS` keys (1..); 0 when it has no client
    /// selectors.
    pub rule_id: u16,
}

/// `EndpointRule::flags`: claims with client selectors share this endpoint;
/// look the client's address up in `CLIENTS` under the rule's id.
pub const RULE_FLAG_CLIENTS: u8 = 1;
/// `EndpointRule::flags`: a claim selects this endpoint's connections by
/// SQL identity; hand connection starts to userspace (`SQL_EVENTS`).
pub const RULE_FLAG_SQL: u8 = 2;

/// The `CLIENTS` LPM trie matches this many bits before the client address.
pub const CLIENT_FIXED_BITS: u32 = 64;
/// Capacity of the client-prefix trie: (endpoint rule, client prefix) pairs.
pub const MAX_CLIENT_RULES: u32 = 262_144;

/// Data part of a `CLIENTS` LPM key: an endpoint rule's id, then the
/// client's address (the source of a request, the destination of a
/// response). IPv4 addresses occupy the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientMatch {
    pub rule_id: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// Value of `CLIENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRule {
    pub class_id: u32,
    /// The client prefix length (0..=128), for reading the trie back.
    pub addr_prefix_len: u32,
}

/// Key of `FLOW_TAGS`: a connection, by its canonical direction
/// (`FlowKey::canonical`): one entry serves the packets of both directions.
/// Also how the program names the direction a packet travels in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub family: u8,
    pub protocol: u8,
    pub _pad: u16,
    /// Network byte order.
    pub src_port_be: u16,
    /// Network byte order.
    pub dst_port_be: u16,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

impl FlowKey {
    /// The other direction of the same connection.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            ..*self
        }
    }

    /// Turns the key into the other direction, in place (the program's
    /// stack has no room for a second key).
    #[inline(always)]
    pub fn reverse(&mut self) {
        core::mem::swap(&mut self.src_port_be, &mut self.dst_port_be);
        core::mem::swap(&mut self.src_addr, &mut self.dst_addr);
    }

    /// Whether this is the direction that names the connection in
    /// `FLOW_TAGS`: the one whose source (address, then port) sorts first,
    /// comparing addresses as big-endian numbers. The program and the agent
    /// both use this, so either end of a connection finds the one entry.
    #[inline(always)]
    pub fn is_canonical(&self) -> bool {
        let src = (
            be_half(&self.src_addr, 0),
            be_half(&self.src_addr, 8),
            u16::from_be(self.src_port_be),
        );
        let dst = (
            be_half(&self.dst_addr, 0),
            be_half(&self.dst_addr, 8),
            u16::from_be(self.dst_port_be),
        );
        src <= dst
    }

    /// The canonical direction of the same connection (`is_canonical`).
    #[inline(always)]
    pub fn canonical(&self) -> Self {
        if self.is_canonical() {
            *self
        } else {
            self.reversed()
        }
    }
}

/// Eight bytes of an address, the first (`at == 0`) or the last eight,
/// as a big-endian number. Constant indexes: no bounds checks to verify.
#[inline(always)]
fn be_half(a: &[u8; 16], at: usize) -> u64 {
    if at == 0 {
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]])
    } else {
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]])
    }
}

/// Value of `FLOW_TAGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTag {
    pub class_id: u32,
    /// `TAG_ORIGIN_*`: who tagged the connection (was padding, always 0,
    /// in earlier releases: their tags read as proxy tags).
    pub origin: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) after which the tag is ignored;
    /// 0 means it never expires.
    pub expires_ns: u64,
}

/// `FlowTag::origin`: the SQL proxy (gRPC `TagFlow`).
pub const TAG_ORIGIN_PROXY: u32 = 0;
/// `FlowTag::origin`: the daemon, from the connection's start message; the
/// program reports the connection's FIN or RST so the tag is removed.
pub const TAG_ORIGIN_SQL: u32 = 1;

/// Indices of `REASON_STATS`: why a packet was not shaped.
pub mod reason {
    /// Parsed fine; no flow tag and no endpoint rule matched.
    pub const UNMATCHED: u32 = 0;
    /// Not IPv4/IPv6 (ARP, LLDP, …): passes untouched.
    pub const NOT_IP: u32 = 1;
    /// Fail open: a header runs past the end of the packet.
    pub const TRUNCATED: u32 = 2;
    /// Fail open: IP version or header length is impossible.
    pub const BAD_IP_HEADER: u32 = 3;
    /// Fail open: more IPv6 extension headers than the bounded walk allows.
    pub const IPV6_EXT_LIMIT: u32 = 4;
    /// Fail open: a non-first fragment carries no ports.
    pub const FRAGMENT: u32 = 5;
    /// Parsed fine, but neither TCP nor UDP (ICMP, SCTP, …).
    pub const OTHER_L4: u32 = 6;
    /// A flow tag matched but had expired; endpoint rules were used instead.
    pub const TAG_EXPIRED: u32 = 7;
    /// A rule or tag pointed at a class slot that is not active.
    pub const CLASS_INACTIVE: u32 = 8;
    /// Fail open: more than one VLAN tag (QinQ) in the packet.
    pub const VLAN_DEPTH: u32 = 9;
    /// Number of reasons; the size of `REASON_STATS`.
    pub const COUNT: u32 = 10;

    /// Names used in metrics labels and `status` output, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "unmatched",
        "not_ip",
        "truncated",
        "bad_ip_header",
        "ipv6_ext_limit",
        "fragment",
        "other_l4",
        "tag_expired",
        "class_inactive",
        "vlan_depth",
    ];

    /// Reasons where the program could not fully parse the packet and let it
    /// pass ("fail open"), as opposed to traffic that is simply not ours.
    pub const fn is_fail_open(reason: u32) -> bool {
        matches!(
            reason,
            TRUNCATED | BAD_IP_HEADER | IPV6_EXT_LIMIT | FRAGMENT | VLAN_DEPTH
        )
    }
}

/// Value of `SUMMARY[0]`: how many rules and tags of each kind exist, kept
/// by the agent so the program skips lookups that cannot match (an empty
/// LPM side or an empty tag table costs nothing). The agent raises a count
/// before inserting and lowers it after deleting, so a set count never
/// hides an existing entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Destination-side rules with an exact port.
    pub dst_port_rules: u32,
    /// Destination-side any-port rules.
    pub dst_any_rules: u32,
    pub src_port_rules: u32,
    pub src_any_rules: u32,
    /// Flow tags in `FLOW_TAGS`.
    pub flow_tags: u32,
    /// Endpoint rules with `RULE_FLAG_SQL`: the ingress program does
    /// nothing while this is 0. (Padding, always 0, in earlier releases.)
    pub sql_rules: u32,
}

/// Value of `REASON_STATS` (one per CPU; sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonStats {
    pub packets: u64,
}

/// How many payload bytes of a connection start reach userspace.
pub const SQL_CAPTURE_BYTES: usize = 512;
/// `SqlEvent::kind`: the first bytes of a client-to-server stream.
pub const SQL_EVENT_START: u32 = 1;
/// `SqlEvent::kind`: a FIN or RST on a connection the daemon tagged.
pub const SQL_EVENT_CLOSE: u32 = 2;
/// Size of the `SQL_EVENTS` ring buffer (a power of two, page multiple).
pub const SQL_EVENTS_BYTES: u32 = 256 * 1024;
/// Each CPU may hand at most this many events to userspace per window;
/// more are counted (`sql_reason::THROTTLED`) and let through unread, so
/// one busy CPU cannot fill the ring for the others.
pub const SQL_BUDGET_EVENTS: u32 = 128;
pub const SQL_BUDGET_WINDOW_NS: u64 = 10_000_000;

/// A record of the `SQL_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlEvent {
    /// `SQL_EVENT_START` or `SQL_EVENT_CLOSE`.
    pub kind: u32,
    /// The interface the packet was seen on.
    pub ifindex: u32,
    /// `bpf_ktime_get_ns` when the program saw the packet.
    pub seen_ns: u64,
    /// TCP payload bytes in the packet.
    pub payload_len: u32,
    /// How many of them are in `bytes` (at most `SQL_CAPTURE_BYTES`).
    pub captured: u32,
    /// The packet's direction of the connection (client to server for a start).
    pub flow: FlowKey,
    pub bytes: [u8; SQL_CAPTURE_BYTES],
}

/// Value of `SQL_BUDGET[0]` (one per CPU): events handed up in the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqlBudget {
    pub window_start_ns: u64,
    pub events: u32,
    pub _pad: u32,
}

/// Indices of `SQL_STATS` (per CPU; sum them): what the kernel did with
/// connection starts and closes.
pub mod sql_reason {
    /// A start message went to userspace.
    pub const STARTS_SENT: u32 = 0;
    /// A close of a daemon-tagged connection went to userspace.
    pub const CLOSES_SENT: u32 = 1;
    /// The CPU's event budget was spent; the packet passed unread.
    pub const THROTTLED: u32 = 2;
    /// The ring buffer was full (userspace behind); the packet passed unread.
    pub const RING_FULL: u32 = 3;
    /// The payload could not be copied out of the packet.
    pub const UNREADABLE: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = [
        "starts_sent",
        "closes_sent",
        "throttled",
        "ring_full",
        "unreadable",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceStats {}
    unsafe impl aya::Pod for IfaceConfig {}
    unsafe impl aya::Pod for ClassConfig {}
    unsafe impl aya::Pod for ClassPace {}
    unsafe impl aya::Pod for LinkPace {}
    unsafe impl aya::Pod for ClassStats {}
    unsafe impl aya::Pod for EndpointMatch {}
    unsafe impl aya::Pod for EndpointRule {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowTag {}
    unsafe impl aya::Pod for ReasonStats {}
    unsafe impl aya::Pod for Summary {}
    unsafe impl aya::Pod for ClientMatch {}
    unsafe impl aya::Pod for ClientRule {}
    unsafe impl aya::Pod for SqlBudget {}
}

// Layouts are part of the pinned-map ABI: assert them so a reordered field
// fails the build rather than a running node.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<IfaceKey>() == 8);
    assert!(size_of::<IfaceStats>() == 24);
    assert!(size_of::<IfaceConfig>() == 8);
    assert!(size_of::<ClassConfig>() == 48);
    assert!(offset_of!(ClassConfig, claim_hash) == 40);
    assert!(offset_of!(ClassConfig, burst_bytes) == 24);
    assert!(offset_of!(ClassConfig, htb_handle) == 28);
    assert!(offset_of!(ClassConfig, mode) == 32);
    assert!(offset_of!(ClassConfig, state) == 34);
    assert!(size_of::<ClassPace>() == 8);
    assert!(size_of::<LinkPace>() == 16);
    assert!(size_of::<ClassStats>() == 32);
    assert!(size_of::<EndpointMatch>() == 24);
    assert!(offset_of!(EndpointMatch, port_be) == 4);
    assert!(offset_of!(EndpointMatch, addr) == 8);
    assert!(ENDPOINT_FIXED_BITS as usize == offset_of!(EndpointMatch, addr) * 8);
    assert!(size_of::<EndpointRule>() == 8);
    assert!(offset_of!(EndpointRule, addr_prefix_len) == 4);
    assert!(size_of::<ClientMatch>() == 24);
    assert!(CLIENT_FIXED_BITS as usize == offset_of!(ClientMatch, addr) * 8);
    assert!(size_of::<ClientRule>() == 8);
    assert!(size_of::<SqlEvent>() == 64 + SQL_CAPTURE_BYTES);
    assert!(size_of::<SqlEvent>().is_multiple_of(8));
    assert!(size_of::<SqlBudget>() == 16);
    assert!(sql_reason::NAMES.len() == sql_reason::COUNT as usize);
    assert!(size_of::<FlowKey>() == 40);
    assert!(offset_of!(FlowKey, src_addr) == 8);
    assert!(offset_of!(FlowKey, dst_addr) == 24);
    assert!(size_of::<FlowTag>() == 16);
    assert!(size_of::<ReasonStats>() == 8);
    assert!(size_of::<Summary>() == 24);
    assert!(align_of::<ClassConfig>() == 8);
    assert!(reason::NAMES.len() == reason::COUNT as usize);
};

/// Value of `KERNEL_LOG[0]`: the program writes no debug events (the
/// default; each rare path then pays one array read).
pub const KERNEL_LOG_OFF: u32 = 0;
/// Value of `KERNEL_LOG[0]`: the program writes debug events on its rare
/// paths (fail open, connection starts and closes handed up or not), which
/// the daemon drains into its log.
pub const KERNEL_LOG_DEBUG: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        let mut key = FlowKey {
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            src_port_be: sport.to_be(),
            dst_port_be: dport.to_be(),
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&src);
        key.dst_addr[..4].copy_from_slice(&dst);
        key
    }

    #[test]
    fn both_directions_of_a_connection_have_one_canonical_key() {
        let cases = [
            // Addresses decide, compared as numbers: 9.x sorts before 10.x.
            v4([10, 0, 0, 1], 40000, [9, 255, 0, 0], 5432),
            v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 65535),
            // Same address: the port decides, as a number (not its bytes).
            v4([10, 0, 0, 1], 256, [10, 0, 0, 1], 1),
        ];
        for key in cases {
            let back = key.reversed();
            assert_eq!(key.canonical(), back.canonical(), "{key:?}");
            assert_ne!(key.is_canonical(), back.is_canonical(), "{key:?}");
            let mut turned = key;
            turned.reverse();
            assert_eq!(turned, back);
        }
        assert!(!cases[0].is_canonical(), "9.255.0.0 sorts first");
        assert!(cases[1].is_canonical());
        assert!(!cases[2].is_canonical(), "port 1 sorts before port 256");
    }
}
