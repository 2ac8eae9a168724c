//! Map definitions. All are BTF maps (`.maps` section) so that the kernel
//! knows their key and value types and bpftool prints field names.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use pisa_daemon_common::{
    reason, sql_reason, ClassConfig, ClassPace, ClassStats, ClientMatch, ClientRule, EndpointMatch,
    EndpointRule, FlowKey, FlowTag, IfaceConfig, IfaceKey, IfaceStats, LinkPace, ReasonStats,
    SqlBudget, SqlEvent, Summary, FLOW_TAGS_MAP_FLAGS, MAX_CLASSES, MAX_CLIENT_RULES,
    MAX_ENDPOINT_RULES, MAX_FLOW_TAGS, MAX_IFACES, SQL_EVENTS_BYTES,
};

#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceStats, { MAX_IFACES as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static IFACE_CONFIG: HashMap<u32, IfaceConfig, { MAX_IFACES as usize }> = HashMap::new();

#[btf_map]
pub static CLASS_CONFIG: Array<ClassConfig, { MAX_CLASSES as usize }> = Array::new();

#[btf_map]
pub static CLASS_PACE: Array<ClassPace, { MAX_CLASSES as usize }> = Array::new();

/// Each class's clock at its ceil, for borrowing (see `shape::borrowing`).
#[btf_map]
pub static CLASS_CEIL_PACE: Array<ClassPace, { MAX_CLASSES as usize }> = Array::new();

/// Each attached interface's link rate and clock, by ifindex.
#[btf_map]
pub static LINK_PACE: HashMap<u32, LinkPace, { MAX_IFACES as usize }> = HashMap::new();

#[btf_map]
pub static CLASS_STATS: PerCpuArray<ClassStats, { MAX_CLASSES as usize }> = PerCpuArray::new();

#[btf_map]
pub static ENDPOINTS: LpmTrie<EndpointMatch, EndpointRule, { MAX_ENDPOINT_RULES as usize }> =
    LpmTrie::new();

#[btf_map]
pub static FLOW_TAGS: HashMap<
    FlowKey,
    FlowTag,
    { MAX_FLOW_TAGS as usize },
    { FLOW_TAGS_MAP_FLAGS as usize },
> = HashMap::new();

#[btf_map]
pub static REASON_STATS: PerCpuArray<ReasonStats, { reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static SUMMARY: Array<Summary, 1> = Array::new();

#[btf_map]
pub static CLIENTS: LpmTrie<ClientMatch, ClientRule, { MAX_CLIENT_RULES as usize }> =
    LpmTrie::new();

#[btf_map]
pub static SQL_EVENTS: RingBuf<SqlEvent, { SQL_EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map]
pub static SQL_BUDGET: PerCpuArray<SqlBudget, 1> = PerCpuArray::new();

#[btf_map]
pub static SQL_STATS: PerCpuArray<ReasonStats, { sql_reason::COUNT as usize }> = PerCpuArray::new();

/// `KERNEL_LOG_OFF` or `KERNEL_LOG_DEBUG`, written by the daemon.
#[btf_map]
pub static KERNEL_LOG: Array<u32, 1> = Array::new();
