//! The bad-input corpus: each case asserts the exact messages an operator
//! sees (`pisa-daemon validate` prints the same lines).

use super::corpus::{cases, messages};

const EXPECTED: &[(&str, &[&str])] = &[
    (
        "unknown_rate_unit_pisanix_typo",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `1mps`: `1mps` has unknown unit `mps` (did you mean `mbps`, bytes/s, or `mbit`, bits/s?); valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
        ],
    ),
    (
        "unknown_rate_unit_far",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `10furlongs`: `10furlongs` has unknown unit `furlongs`; valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
        ],
    ),
    (
        "rate_without_unit",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `10`: `10` has no unit; valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
        ],
    ),
    (
        "rate_without_number",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `mbit`: `mbit` has no number; write e.g. `10mbit`",
        ],
    ),
    (
        "rate_zero",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `0mbit`: must be greater than 0",
        ],
    ),
    (
        "rate_below_one_byte",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `7bit`: `7bit` is below 1 byte/s (8bit), the smallest quantity",
        ],
    ),
    (
        "rate_overflow",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `99999999999tbit`: `99999999999tbit` is too large (more than 2^64-1 bit/s)",
        ],
    ),
    (
        "rate_malformed_decimal",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `1.2.3mbit`: `1.2.3mbit` is not a number followed by a unit",
        ],
    ),
    (
        "rate_negative",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `-5mbit`: `-5mbit` has no number; write e.g. `10mbit`",
        ],
    ),
    (
        "rate_number_not_string",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate: invalid type: integer `10`, expected a string",
        ],
    ),
    (
        "rate_missing",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group: missing field `rate`",
        ],
    ),
    (
        "ceil_below_rate",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.ceil `5mbit`: ceil (5Mbit) must be greater than or equal to rate (10Mbit)",
        ],
    ),
    (
        "ceil_unknown_unit",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.ceil `20mbitz`: `20mbitz` has unknown unit `mbitz` (did you mean `mbit`, bits/s?); valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
        ],
    ),
    (
        "unknown_field_in_qos_group",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rat: unknown field `rat`, expected `rate` or `ceil`",
        ],
    ),
    (
        "burst_too_small",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.burst `1kb`: 1024 bytes is outside the allowed range 2kb..1gb (2048..1073741824 bytes); a full-size frame must fit in the bucket",
        ],
    ),
    (
        "burst_too_large",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.burst `2gb`: 2147483648 bytes is outside the allowed range 2kb..1gb (2048..1073741824 bytes); a full-size frame must fit in the bucket",
        ],
    ),
    (
        "burst_unknown_unit",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.burst `64kbs`: `64kbs` has unknown unit `kbs` (did you mean `kb`, KiB?); valid size units are b, kb (or k, kib), mb (or m, mib), gb (or g, gib) in 1024-based bytes as in tc, and kbit mbit gbit",
        ],
    ),
    (
        "priority_unknown",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.priority: unknown variant `urgent`, expected one of `guaranteed`, `burstable`, `besteffort`",
        ],
    ),
    (
        "direction_unknown",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.direction: unknown variant `sideways`, expected one of `to`, `from`, `both`",
        ],
    ),
    (
        "mode_unknown",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.mode: unknown variant `fast`, expected one of `auto`, `htb`, `edt`, `police`",
        ],
    ),
    (
        "mode_edt_without_fq",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.mode `edt`: mode edt needs the sch_fq qdisc, which this node's kernel lacks (CONFIG_NET_SCH_FQ); valid here: auto, htb, police",
        ],
    ),
    (
        "unknown_field_in_traffic_qos",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.prioritee: unknown field `prioritee`, expected one of `name`, `qos_group`, `priority`, `burst`, `direction`, `mode`, `endpoints`, `clients`, `sql`",
        ],
    ),
    (
        "empty_binding_name",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.name: must name the VirtualDatabase service the claim binds to",
        ],
    ),
    (
        "endpoint_host_not_ip",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].host `db.example.com`: not an IPv4 or IPv6 address; DNS names are not resolved in the kernel (use the database's address, or a cidr)",
        ],
    ),
    (
        "endpoint_host_and_cidr",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0]: set either host or cidr, not both",
        ],
    ),
    (
        "endpoint_neither_host_nor_cidr",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0]: needs a host (address) or a cidr (network)",
        ],
    ),
    (
        "endpoint_cidr_host_bits",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].cidr `10.0.0.5/24`: host bits are set; did you mean 10.0.0.0/24?",
        ],
    ),
    (
        "endpoint_cidr_no_prefix",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].cidr `10.0.0.0`: not a CIDR; write address/prefix, e.g. 10.0.0.0/24 or fd00::/64",
        ],
    ),
    (
        "endpoint_cidr_prefix_too_long_v4",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].cidr `10.0.0.0/33`: the prefix length must be 0-32 for an IPv4 network",
        ],
    ),
    (
        "endpoint_cidr_prefix_too_long_v6",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].cidr `fd00::/129`: the prefix length must be 0-128 for an IPv6 network",
        ],
    ),
    (
        "endpoint_cidr_bad_address",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].cidr `10.0.0.300/24`: the address part is not an IPv4 or IPv6 address",
        ],
    ),
    (
        "endpoint_port_zero",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].port `0`: ports are 1-65535 (leave port out to match any port)",
        ],
    ),
    (
        "endpoint_port_too_large",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].port `70000`: ports are 1-65535 (leave port out to match any port)",
        ],
    ),
    (
        "endpoint_port_negative",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].port `-1`: ports are 1-65535 (leave port out to match any port)",
        ],
    ),
    (
        "endpoint_port_string",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].port: invalid type: string \"mysql\", expected an integer port 1-65535",
        ],
    ),
    (
        "endpoint_protocol_unknown",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].protocol `SCTP`: unknown protocol; valid: TCP, UDP",
        ],
    ),
    (
        "endpoint_unknown_field",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints[0].hots: unknown field `hots`, expected one of `host`, `cidr`, `port`, `protocol`",
        ],
    ),
    (
        "endpoints_not_a_list",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints: invalid type: map, expected a sequence",
        ],
    ),
    (
        "several_errors_in_one_claim",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.rate `1mps`: `1mps` has unknown unit `mps` (did you mean `mbps`, bytes/s, or `mbit`, bits/s?); valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.qos_group.ceil `2mps`: `2mps` has unknown unit `mps` (did you mean `mbps`, bytes/s, or `mbit`, bits/s?); valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps",
        ],
    ),
    (
        "wrong_kind",
        &[
            "claims.yaml#1: claim default/x: kind `QosClaim`: unsupported kind; valid: QoSClaim",
        ],
    ),
    (
        "wrong_api_version",
        &[
            "claims.yaml#1: claim default/x: apiVersion `core.database-mesh.io/v1`: unsupported apiVersion; valid: core.database-mesh.io/v1alpha1",
        ],
    ),
    (
        "missing_spec",
        &[
            "claims.yaml#1: claim default/x: (document): missing field `spec`",
        ],
    ),
    (
        "misspelled_spec",
        &[
            "claims.yaml#1: claim default/x: sepc: unknown field `sepc`, expected one of `apiVersion`, `kind`, `metadata`, `spec`, `status`",
        ],
    ),
    (
        "misspelled_traffic_qos",
        &[
            "claims.yaml#1: claim default/x: spec.trafficQos: unknown field `trafficQos`, expected `trafficQoS`",
        ],
    ),
    (
        "document_not_a_mapping",
        &[
            "claims.yaml#1: (document) `- just`: a QoSClaim must be a mapping with apiVersion, kind, metadata and spec",
        ],
    ),
    (
        "malformed_yaml",
        &[
            "claims.yaml#1: (document): malformed YAML: did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 13",
        ],
    ),
    (
        "tab_indentation",
        &[
            "claims.yaml#1: (document): malformed YAML: found character that cannot start any token at line 4 column 1, while scanning for the next token",
        ],
    ),
    (
        "duplicate_claim",
        &[
            "claims.yaml#1: claim shop/catalogue: metadata.name `catalogue`: duplicate claim: shop/catalogue is also defined at claims.yaml#2; a claim must be defined once",
            "claims.yaml#2: claim shop/catalogue: metadata.name `catalogue`: duplicate claim: shop/catalogue is also defined at claims.yaml#1; a claim must be defined once",
        ],
    ),
    (
        "two_claims_share_an_endpoint",
        &[
            "claims.yaml#2: claim default/beta: spec.trafficQoS.endpoints `to 10.0.0.5/32 TCP port 3306`: endpoint already owned by claim default/alpha; claims default/alpha and default/beta both shape it, and a packet can belong to one class only",
            "claims.yaml#2: claim default/beta: spec.trafficQoS.endpoints `from 10.0.0.5/32 TCP port 3306`: endpoint already owned by claim default/alpha; claims default/alpha and default/beta both shape it, and a packet can belong to one class only",
        ],
    ),
    (
        "more_claims_than_max_classes",
        &[
            "claims.yaml#3: claim default/a3: metadata.name `a3`: more claims than the configured maximum of 2 classes (--max-classes); claims are admitted in namespace/name order",
        ],
    ),
    (
        "clients_pod_selector_in_a_file",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients[0].podSelector: Pod selectors need a cluster (run --kube); a claims file selects clients by cidr; valid here: cidr",
        ],
    ),
    (
        "clients_cidr_and_pod_selector",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients[0]: set either cidr or podSelector, not both",
        ],
    ),
    (
        "clients_cidr_host_bits",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients[0].cidr `10.1.0.5/16`: host bits are set; did you mean 10.1.0.0/16?",
        ],
    ),
    (
        "clients_namespace_selector_with_cidr",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients[0].namespaceSelector: a namespaceSelector narrows a podSelector; it means nothing next to a cidr",
        ],
    ),
    (
        "clients_empty_list",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients `[]`: an empty list selects no client; leave clients out to cover every client",
        ],
    ),
    (
        "clients_without_endpoints",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.endpoints: clients and sql select among an endpoint's connections, so they need spec.trafficQoS.endpoints (a bound VirtualDatabase supplies them too)",
        ],
    ),
    (
        "clients_unknown_field",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.clients[0].network: unknown field `network`, expected one of `cidr`, `podSelector`, `namespaceSelector`",
        ],
    ),
    (
        "sql_selects_nothing",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.sql `{}`: selects nothing; give users, databases and/or applications",
        ],
    ),
    (
        "sql_empty_list",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.sql.users `[]`: an empty list matches nothing; leave the field out to match any",
        ],
    ),
    (
        "sql_name_too_long",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.sql.databases[0] `dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd`: names are 1-63 bytes without NUL (the longest name PostgreSQL keeps)",
        ],
    ),
    (
        "sql_unknown_field",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.sql.user: unknown field `user`, expected one of `users`, `databases`, `applications`",
        ],
    ),
    (
        "sql_with_one_direction",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.direction `from`: a claim with sql shapes whole connections (its tag covers both directions); valid with sql: both",
        ],
    ),
    (
        "sql_on_udp",
        &[
            "claims.yaml#1: claim shop/catalogue: spec.trafficQoS.sql `to 10.0.0.5/32 UDP port 5432`: SQL identity is read from a TCP connection's start; valid: TCP endpoints",
        ],
    ),
];

#[test]
fn corpus_has_at_least_forty_cases() {
    assert!(cases().len() >= 40, "{} cases", cases().len());
    assert_eq!(
        cases().len(),
        EXPECTED.len(),
        "every case has its expected messages"
    );
}

#[test]
fn every_bad_input_yields_its_exact_messages() {
    let expected: std::collections::BTreeMap<&str, &[&str]> = EXPECTED.iter().copied().collect();
    for (name, yaml) in cases() {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("case {name} has no expected messages"));
        assert!(!want.is_empty(), "case {name} must be rejected");
        let got = messages(&yaml);
        assert_eq!(got, *want, "case {name}:\n{yaml}");
    }
}

#[test]
fn a_pisanix_claim_is_accepted_unchanged() {
    let yaml = "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
                metadata: {name: catalogue, namespace: default}\n\
                spec:\n  trafficQoS:\n    name: catalogue\n    qos_group: {rate: 10mbit, ceil: 20mbit}\n";
    assert!(messages(yaml).is_empty(), "{:?}", messages(yaml));
}
