//! Classification: flow tag, then endpoint rules, then nothing (unshaped).

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_ns};
use pisa_daemon_common::{
    reason, ClassConfig, EndpointMatch, FlowKey, Summary, CLASS_STATE_ACTIVE, ENDPOINT_FIXED_BITS,
    FAMILY_V4, SIDE_DST, SIDE_SRC,
};

use crate::{
    maps::{CLASS_CONFIG, ENDPOINTS, FLOW_TAGS, SUMMARY},
    stats::count_reason,
};

/// A matched, active class and a copy of its configuration.
pub struct Matched {
    pub class_id: u32,
    pub config: ClassConfig,
}

/// Tags first (the SQL proxy knows better than addresses), then rules.
#[inline(always)]
pub fn classify(flow: &FlowKey) -> Option<Matched> {
    // Array lookups are inlined by the verifier: this read is nearly free
    // and saves up to one hash and four LPM lookups per packet.
    let summary = match SUMMARY.get(0) {
        Some(summary) => *summary,
        None => return None,
    };
    if summary.flow_tags != 0 {
        if let Some(class) = tagged_class(flow) {
            return active(class);
        }
    }
    let class_id = endpoint_class(flow, &summary)?;
    active(class_id)
}

/// The class of a live flow tag, if any.
#[inline(always)]
fn tagged_class(flow: &FlowKey) -> Option<u32> {
    if let Some(tag) = FLOW_TAGS.get_ptr(flow) {
        // SAFETY: a valid map value pointer; copied out at once.
        let tag = unsafe { *tag };
        if tag.expires_ns == 0 || unsafe { bpf_ktime_get_ns() } < tag.expires_ns {
            return Some(tag.class_id);
        }
        count_reason(reason::TAG_EXPIRED);
    }
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

/// A candidate rule match. Plain integers with `rank == 0` meaning "none"
/// rather than `Option<Candidate>`: LLVM may leave an Option's payload
/// undefined, and the verifier rejects reads of uninitialised registers.
#[derive(Clone, Copy)]
struct Candidate {
    class_id: u32,
    /// `addr_prefix_len * 2 + exact_port + 1`; 0 when nothing matched. So
    /// /32:any beats /24:3306, and /24:3306 beats /24:any.
    rank: u32,
}

const NO_MATCH: Candidate = Candidate {
    class_id: 0,
    rank: 0,
};

#[inline(always)]
fn better(a: Candidate, b: Candidate) -> Candidate {
    if b.rank > a.rank {
        b
    } else {
        a
    }
}

#[inline(always)]
fn endpoint_class(flow: &FlowKey, summary: &Summary) -> Option<u32> {
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
    let src = side_match(
        flow,
        SIDE_SRC,
        &flow.src_addr,
        flow.src_port_be,
        summary.src_port_rules != 0,
        summary.src_any_rules != 0,
    );
    let best = better(dst, src);
    if best.rank == 0 {
        None
    } else {
        Some(best.class_id)
    }
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
                rank: rule.addr_prefix_len * 2 + 2,
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
            rank: rule.addr_prefix_len * 2 + 1,
        },
        None => NO_MATCH,
    };
    better(exact, any)
}
