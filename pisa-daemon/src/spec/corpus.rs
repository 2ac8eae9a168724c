//! The bad-input corpus: every way a claim file can be wrong that we know
//! of, each with the exact message an operator sees.

use super::{load_documents, validate, Limits};

const LIMITS: Limits = Limits {
    max_classes: 2,
    edt_available: false,
    pod_selectors: false,
};

/// A claim `shop/catalogue` with `qos_group` and extra `trafficQoS` lines.
fn claim(qos_group: &str, extra: &str) -> String {
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: catalogue, namespace: shop}}\nspec:\n  trafficQoS:\n    \
         name: catalogue\n    qos_group: {qos_group}\n{extra}"
    )
}

fn extra(line: &str) -> String {
    claim("{rate: 10mbit, ceil: 20mbit}", &format!("    {line}\n"))
}

fn group(inner: &str) -> String {
    claim(inner, "")
}

/// All error lines for a YAML source named `claims.yaml`.
pub fn messages(yaml: &str) -> Vec<String> {
    match load_documents("claims.yaml", yaml) {
        Err(e) => vec![e.to_string()],
        Ok(documents) => validate(&documents, LIMITS)
            .errors()
            .iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

pub fn cases() -> Vec<(&'static str, String)> {
    let other = |name: &str, endpoints: &str| {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
             metadata: {{name: {name}}}\nspec:\n  trafficQoS:\n    name: {name}\n    \
             qos_group: {{rate: 1mbit}}\n    endpoints: {endpoints}\n"
        )
    };
    vec![
        ("unknown_rate_unit_pisanix_typo", group("{rate: 1mps}")),
        ("unknown_rate_unit_far", group("{rate: 10furlongs}")),
        ("rate_without_unit", group("{rate: \"10\"}")),
        ("rate_without_number", group("{rate: mbit}")),
        ("rate_zero", group("{rate: 0mbit}")),
        ("rate_below_one_byte", group("{rate: 7bit}")),
        ("rate_overflow", group("{rate: 99999999999tbit}")),
        ("rate_malformed_decimal", group("{rate: 1.2.3mbit}")),
        ("rate_negative", group("{rate: -5mbit}")),
        ("rate_number_not_string", group("{rate: 10}")),
        ("rate_missing", group("{ceil: 10mbit}")),
        ("ceil_below_rate", group("{rate: 10mbit, ceil: 5mbit}")),
        ("ceil_unknown_unit", group("{rate: 10mbit, ceil: 20mbitz}")),
        ("unknown_field_in_qos_group", group("{rat: 10mbit}")),
        ("burst_too_small", extra("burst: 1kb")),
        ("burst_too_large", extra("burst: 2gb")),
        ("burst_unknown_unit", extra("burst: 64kbs")),
        ("priority_unknown", extra("priority: urgent")),
        ("direction_unknown", extra("direction: sideways")),
        ("mode_unknown", extra("mode: fast")),
        ("mode_edt_without_fq", extra("mode: edt")),
        ("unknown_field_in_traffic_qos", extra("prioritee: guaranteed")),
        ("empty_binding_name", claim("{rate: 1mbit}", "").replace("name: catalogue\n    qos", "name: \"\"\n    qos")),
        ("endpoint_host_not_ip", extra("endpoints: [{host: db.example.com, port: 3306}]")),
        ("endpoint_host_and_cidr", extra("endpoints: [{host: 10.0.0.5, cidr: 10.0.0.0/24}]")),
        ("endpoint_neither_host_nor_cidr", extra("endpoints: [{port: 3306}]")),
        ("endpoint_cidr_host_bits", extra("endpoints: [{cidr: 10.0.0.5/24}]")),
        ("endpoint_cidr_no_prefix", extra("endpoints: [{cidr: 10.0.0.0}]")),
        ("endpoint_cidr_prefix_too_long_v4", extra("endpoints: [{cidr: 10.0.0.0/33}]")),
        ("endpoint_cidr_prefix_too_long_v6", extra("endpoints: [{cidr: \"fd00::/129\"}]")),
        ("endpoint_cidr_bad_address", extra("endpoints: [{cidr: 10.0.0.300/24}]")),
        ("endpoint_port_zero", extra("endpoints: [{host: 10.0.0.5, port: 0}]")),
        ("endpoint_port_too_large", extra("endpoints: [{host: 10.0.0.5, port: 70000}]")),
        ("endpoint_port_negative", extra("endpoints: [{host: 10.0.0.5, port: -1}]")),
        ("endpoint_port_string", extra("endpoints: [{host: 10.0.0.5, port: mysql}]")),
        ("endpoint_protocol_unknown", extra("endpoints: [{host: 10.0.0.5, protocol: SCTP}]")),
        ("endpoint_unknown_field", extra("endpoints: [{hots: 10.0.0.5}]")),
        ("endpoints_not_a_list", extra("endpoints: {host: 10.0.0.5}")),
        ("clients_pod_selector_in_a_file", extra("endpoints: [{host: 10.0.0.5, port: 5432}]\n    clients: [{podSelector: {matchLabels: {app: reports}}}]")),
        ("clients_cidr_and_pod_selector", extra("endpoints: [{host: 10.0.0.5}]\n    clients: [{cidr: 10.1.0.0/16, podSelector: {}}]")),
        ("clients_cidr_host_bits", extra("endpoints: [{host: 10.0.0.5}]\n    clients: [{cidr: 10.1.0.5/16}]")),
        ("clients_namespace_selector_with_cidr", extra("endpoints: [{host: 10.0.0.5}]\n    clients: [{cidr: 10.1.0.0/16, namespaceSelector: {}}]")),
        ("clients_empty_list", extra("endpoints: [{host: 10.0.0.5}]\n    clients: []")),
        ("clients_without_endpoints", extra("clients: [{cidr: 10.1.0.0/16}]")),
        ("clients_unknown_field", extra("endpoints: [{host: 10.0.0.5}]\n    clients: [{network: 10.1.0.0/16}]")),
        ("sql_selects_nothing", extra("endpoints: [{host: 10.0.0.5}]\n    sql: {}")),
        ("sql_empty_list", extra("endpoints: [{host: 10.0.0.5}]\n    sql: {users: []}")),
        ("sql_name_too_long", extra(&format!("endpoints: [{{host: 10.0.0.5}}]\n    sql: {{databases: [{}]}}", "d".repeat(64)))),
        ("sql_unknown_field", extra("endpoints: [{host: 10.0.0.5}]\n    sql: {user: [reporter]}")),
        ("sql_with_one_direction", extra("endpoints: [{host: 10.0.0.5}]\n    direction: from\n    sql: {users: [reporter]}")),
        ("sql_on_udp", extra("endpoints: [{host: 10.0.0.5, port: 5432, protocol: UDP}]\n    sql: {users: [reporter]}")),
        ("several_errors_in_one_claim", group("{rate: 1mps, ceil: 2mps}")),
        ("wrong_kind", "apiVersion: core.database-mesh.io/v1alpha1\nkind: QosClaim\nmetadata: {name: x}\nspec: {}\n".into()),
        ("wrong_api_version", "apiVersion: core.database-mesh.io/v1\nkind: QoSClaim\nmetadata: {name: x}\nspec: {}\n".into()),
        ("missing_spec", "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {name: x}\n".into()),
        ("misspelled_spec", "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {name: x}\nsepc: {}\n".into()),
        ("misspelled_traffic_qos", "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {name: x}\nspec: {trafficQos: {}}\n".into()),
        ("document_not_a_mapping", "- just\n- a list\n".into()),
        ("malformed_yaml", "apiVersion: [unclosed\n".into()),
        ("tab_indentation", "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata:\n\tname: x\n".into()),
        ("duplicate_claim", format!("{}---\n{}", group("{rate: 1mbit}"), group("{rate: 2mbit}"))),
        (
            "two_claims_share_an_endpoint",
            format!(
                "{}---\n{}",
                other("alpha", "[{host: 10.0.0.5, port: 3306}]"),
                other("beta", "[{host: 10.0.0.5, port: 3306}]")
            ),
        ),
        (
            "more_claims_than_max_classes",
            format!(
                "{}---\n{}---\n{}",
                other("a1", "[{host: 10.0.0.1}]"),
                other("a2", "[{host: 10.0.0.2}]"),
                other("a3", "[{host: 10.0.0.3}]")
            ),
        ),
    ]
}
