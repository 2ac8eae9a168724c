//! Names of kernel objects. The kernel truncates object names to 15 bytes,
//! so every name here fits; `bpftool prog show` and `bpftool map show` print
//! exactly these strings.

/// The egress classifier program.
pub const PROG_EGRESS: &str = "pisa_tc_egress";
/// The ingress observer: sees connection starts that arrive on an
/// interface (it never shapes or drops).
pub const PROG_INGRESS: &str = "pisa_tc_ingress";
/// The classifier at the root of the HTB tree: hands each packet to the
/// group holding its class's leaf (see `htb_tree`).
pub const PROG_HTB_GROUP: &str = "pisa_htb_group";

/// Per-interface, per-direction packet and byte counters (per CPU).
pub const MAP_IFACE_STATS: &str = "IFACE_STATS";
/// Per-interface settings written by the agent (L3 device or not).
pub const MAP_IFACE_CONFIG: &str = "IFACE_CONFIG";
/// Per-class configuration: mode, rate, ceil, burst, priority, state.
pub const MAP_CLASS_CONFIG: &str = "CLASS_CONFIG";
/// Per-class pacing state shared by all CPUs (the theoretical arrival time).
pub const MAP_CLASS_PACE: &str = "CLASS_PACE";
/// Each class's second clock, at its ceil (EDT and police borrowing).
pub const MAP_CLASS_CEIL_PACE: &str = "CLASS_CEIL_PACE";
/// Each interface's link rate and clock (EDT and police borrowing).
pub const MAP_LINK_PACE: &str = "LINK_PACE";
/// Per-class counters (per CPU): packets, bytes, drops, delayed.
pub const MAP_CLASS_STATS: &str = "CLASS_STATS";
/// Endpoint rules: LPM trie of (side, family, protocol, port, address).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// Flow tags from the SQL proxy: 5-tuple to class, with an expiry time.
pub const MAP_FLOW_TAGS: &str = "FLOW_TAGS";
/// Reason counters (per CPU): unmatched traffic and fail-open reasons.
pub const MAP_REASONS: &str = "REASON_STATS";

/// Counts of rules and tags, so the program skips empty lookups.
pub const MAP_SUMMARY: &str = "SUMMARY";
/// Client prefixes of endpoint rules shared by claims with client selectors.
pub const MAP_CLIENTS: &str = "CLIENTS";
/// Ring buffer of connection starts and closes for SQL identity.
pub const MAP_SQL_EVENTS: &str = "SQL_EVENTS";
/// Per-CPU event budget of `SQL_EVENTS`.
pub const MAP_SQL_BUDGET: &str = "SQL_BUDGET";
/// Per-CPU counters of the SQL-identity path (`sql_reason`).
pub const MAP_SQL_STATS: &str = "SQL_STATS";

/// Whether the program writes debug events (`KERNEL_LOG_*`): off unless
/// the daemon runs with `--kernel-log debug`.
pub const MAP_KERNEL_LOG: &str = "KERNEL_LOG";
/// aya-log's ring buffer of those events (aya-log names it).
pub const MAP_AYA_LOGS: &str = "AYA_LOGS";

/// Every map the program defines, in a stable order (used for pinning and cleanup).
pub const ALL_MAPS: [&str; 17] = [
    MAP_IFACE_STATS,
    MAP_IFACE_CONFIG,
    MAP_CLASS_CONFIG,
    MAP_CLASS_PACE,
    MAP_CLASS_CEIL_PACE,
    MAP_LINK_PACE,
    MAP_CLASS_STATS,
    MAP_ENDPOINTS,
    MAP_FLOW_TAGS,
    MAP_REASONS,
    MAP_SUMMARY,
    MAP_CLIENTS,
    MAP_SQL_EVENTS,
    MAP_SQL_BUDGET,
    MAP_SQL_STATS,
    MAP_KERNEL_LOG,
    MAP_AYA_LOGS,
];

const _: () = {
    assert!(PROG_EGRESS.len() <= 15);
    assert!(PROG_INGRESS.len() <= 15);
    let mut i = 0;
    while i < ALL_MAPS.len() {
        assert!(ALL_MAPS[i].len() <= 15);
        i += 1;
    }
};
