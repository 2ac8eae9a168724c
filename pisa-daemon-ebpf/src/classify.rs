//! Classification: flow tag, then endpoint rules (refined by the client's
//! address where claims with client selectors share the endpoint), then
//! nothing (unshaped).

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_ns, programs::TcContext};
use pisa_daemon_common::{
    reason, ClassConfig, ClientMatch, EndpointMatch, FlowKey, FlowTag, Summary, CLASS_STATE_ACTIVE,
    CLIENT_FIXED_BITS, ENDPOINT_FIXED_BITS, FAMILY_V4, PROTO_TCP, RULE_FLAG_CLIENTS, RULE_FLAG_SQL,
    SIDE_DST, SIDE_SRC, TAG_ORIGIN_SQL,
};

use crate::{
    identity,
    maps::{CLASS_CONFIG, CLIENTS, ENDPOINTS, FLOW_TAGS, SUMMARY},
    parse::Packet,
    stats::count_reason,
};

/// A matched, active class and a copy of its configuration.
pub struct Matched {
    pub class_id: u32,
    pub config: ClassConfig,
}

/// `None` means unshaped; the caller counts it as unmatched.
/// Tags first (the SQL proxy, or the connection's own start message, knows
/// better than addresses), then rules. Also where the SQL-identity path
/// looks at a packet: a start on an endpoint selected by SQL identity, or
/// the end of a connection the daemon tagged.
#[inline(always)]
///
/// `sql_outcome` is set when the SQL-identity path handled the packet
/// (`sql_reason`), for the caller's one debug event.
pub fn classify(
    ctx: &TcContext,
    packet: &Packet,
    sql_outcome: &mut Option<u32>,
) -> Option<Matched> {
    // Array lookups are inlined by the verifier: this read is nearly free
    // and saves up to one hash and four LPM lookups per packet.
    let summary = match SUMMARY.get(0) {
        Some(summary) => *summary,
        None => return None,
    };
    if summary.flow_tags != 0 {
        if let Some(tag) = live_tag(&packet.flow) {
            if tag.origin == TAG_ORIGIN_SQL {
                *sql_outcome = identity::watch_close(ctx, packet);
            }
            return active(tag.class_id);
        }
    }
    let flow = &packet.flow;
    let rule = endpoint_rule(flow, &summary, true);
    if rule.rank == 0 {
        return None;
    }
    if rule.flags & u32::from(RULE_FLAG_SQL) != 0
        && rule.side == u32::from(SIDE_DST)
        && flow.protocol == PROTO_TCP
    {
        *sql_outcome = identity::inspect_start(ctx, packet);
    }
    let mut class_id = rule.class_id;
    if rule.flags & u32::from(RULE_FLAG_CLIENTS) != 0 {
        let client = if rule.side == u32::from(SIDE_DST) {
            &flow.src_addr
        } else {
            &flow.dst_addr
        };
        if let Some(selected) = client_class(rule.rule_id, flow.family, client) {
            class_id = selected;
        }
    }
    if class_id == 0 {
        // Only selector claims cover this endpoint and none selected it.
        return None;
    }
    active(class_id)
}

/// Whether any endpoint rule selects by SQL identity (the ingress hook's
/// first and, usually, only question).
#[inline(always)]
pub fn sql_rules_exist() -> bool {
    SUMMARY.get(0).is_some_and(|summary| summary.sql_rules != 0)
}

/// The ingress hook's part: no shaping, only what the SQL-identity path
/// must see of requests that arrive here (their start, and the end of
/// connections the daemon tagged). Free when no claim selects by SQL.
/// What the SQL-identity path made of the packet (`sql_reason`), if it
/// handled it.
#[inline(always)]
pub fn observe(ctx: &TcContext, packet: &mut Packet) -> Option<u32> {
    let summary = SUMMARY.get(0).copied()?;
    if summary.sql_rules == 0 || packet.flow.protocol != PROTO_TCP {
        return None;
    }
    if summary.flow_tags != 0 {
        if let Some(tag) = live_tag_in_place(&mut packet.flow) {
            if tag.origin == TAG_ORIGIN_SQL {
                return identity::watch_close(ctx, packet);
            }
            return None;
        }
    }
    let rule = endpoint_rule(&packet.flow, &summary, false);
    if rule.rank != 0 && rule.flags & u32::from(RULE_FLAG_SQL) != 0 {
        return identity::inspect_start(ctx, packet);
    }
    None
}

/// The live flow tag of the connection a packet belongs to, if any: one
/// entry per connection, under its canonical direction (a copy of the
/// key, turned around if need be).
#[inline(always)]
fn live_tag(flow: &FlowKey) -> Option<FlowTag> {
    let connection = flow.canonical();
    // SAFETY: a valid map value pointer; copied out at once.
    let found = FLOW_TAGS.get_ptr(&connection).map(|tag| unsafe { *tag });
    still_live(found)
}

/// `live_tag` for the ingress program, whose stack has no room for a
/// second 40-byte key: the packet's key is turned around in place for the
/// lookup and back after it. (The egress program keeps the copy: with the
/// key changed in place there, the compiler's register allocation in its
/// debug-event path failed verification.)
#[inline(always)]
fn live_tag_in_place(flow: &mut FlowKey) -> Option<FlowTag> {
    let turned = !flow.is_canonical();
    if turned {
        flow.reverse();
    }
    // SAFETY: a valid map value pointer; copied out at once.
    let found = FLOW_TAGS.get_ptr(&*flow).map(|tag| unsafe { *tag });
    if turned {
        flow.reverse();
    }
    still_live(found)
}

#[inline(always)]
fn still_live(found: Option<FlowTag>) -> Option<FlowTag> {
    let tag = found?;
    if tag.expires_ns == 0 || unsafe { bpf_ktime_get_ns() } < tag.expires_ns {
        return Some(tag);
    }
    count_reason(reason::TAG_EXPIRED);
    None
}

#[inline(always)]
fn active(class_id: u32) -> Option<Matched> {
    let config = match CLASS_CONFIG.get(class_id) {
        Some(config) if config.state == CLASS_STATE_ACTIVE => *config,
        _ => {
            count_reason(reason::CLASS_INACTIVE);
            return None;
        }
    };
    Some(Matched { class_id, config })
}

/// The class the longest client prefix of rule `rule_id` gives `client`.
#[inline(always)]
fn client_class(rule_id: u32, family: u8, client: &[u8; 16]) -> Option<u32> {
    let addr_bits: u32 = if family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        CLIENT_FIXED_BITS + addr_bits,
        ClientMatch {
            rule_id,
            _pad: 0,
            addr: *client,
        },
    );
    CLIENTS.get(&key).map(|rule| rule.class_id)
}

/// A candidate rule match. Plain integers with `rank == 0` meaning "none"
/// rather than `Option<Candidate>`: LLVM may leave an Option's payload
/// undefined, and the verifier rejects reads of uninitialised registers.
#[derive(Clone, Copy)]
struct Candidate {
    class_id: u32,
    /// `addr_prefix_len * 2 + exact_port + 1`; 0 when nothing matched. So
    /// /32:any beats /24:3306, and /24:3306 beats /24:any.
    rank: u32,
    /// `RULE_FLAG_*` of the rule.
    flags: u32,
    rule_id: u32,
    /// `SIDE_DST` or `SIDE_SRC`.
    side: u32,
}

const NO_MATCH: Candidate = Candidate {
    class_id: 0,
    rank: 0,
    flags: 0,
    rule_id: 0,
    side: 0,
};

#[inline(always)]
fn better(a: Candidate, b: Candidate) -> Candidate {
    if b.rank > a.rank {
        b
    } else {
        a
    }
}

/// The best endpoint rule for the packet; `both_sides` false looks at the
/// destination (request) side only.
#[inline(always)]
fn endpoint_rule(flow: &FlowKey, summary: &Summary, both_sides: bool) -> Candidate {
    // Requests to the database match its address as destination; responses
    // from it match as source. On a tie the destination (request) wins.
    let dst = side_match(
        flow,
        SIDE_DST,
        &flow.dst_addr,
        flow.dst_port_be,
        summary.dst_port_rules != 0,
        summary.dst_any_rules != 0,
    );
    if !both_sides {
        return dst;
    }
    let src = side_match(
        flow,
        SIDE_SRC,
        &flow.src_addr,
        flow.src_port_be,
        summary.src_port_rules != 0,
        summary.src_any_rules != 0,
    );
    better(dst, src)
}

#[inline(always)]
fn side_match(
    flow: &FlowKey,
    side: u8,
    addr: &[u8; 16],
    port_be: u16,
    port_rules: bool,
    any_rules: bool,
) -> Candidate {
    if !port_rules && !any_rules {
        return NO_MATCH;
    }
    let addr_bits: u32 = if flow.family == FAMILY_V4 { 32 } else { 128 };
    let mut key = Key::new(
        ENDPOINT_FIXED_BITS + addr_bits,
        EndpointMatch {
            side,
            family: flow.family,
            protocol: flow.protocol,
            _pad: 0,
            port_be,
            _pad2: 0,
            addr: *addr,
        },
    );
    let exact = if port_rules {
        match ENDPOINTS.get(&key) {
            Some(rule) => Candidate {
                class_id: rule.class_id,
                rank: u32::from(rule.addr_prefix_len) * 2 + 2,
                flags: u32::from(rule.flags),
                rule_id: u32::from(rule.rule_id),
                side: u32::from(side),
            },
            None => NO_MATCH,
        }
    } else {
        NO_MATCH
    };
    if !any_rules {
        return exact;
    }
    key.data.port_be = 0;
    let any = match ENDPOINTS.get(&key) {
        Some(rule) => Candidate {
            class_id: rule.class_id,
            rank: u32::from(rule.addr_prefix_len) * 2 + 1,
            flags: u32::from(rule.flags),
            rule_id: u32::from(rule.rule_id),
            side: u32::from(side),
        },
        None => NO_MATCH,
    };
    better(exact, any)
}
