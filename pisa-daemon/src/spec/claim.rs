//! QoSClaim as users write it. Pisanix's objects (`spec.trafficQoS.name`,
//! `qos_group.rate`/`ceil`) are accepted unchanged; every extension is
//! optional. Unknown fields under `spec` are errors: a typo must never be
//! silently ignored.

use std::{borrow::Cow, collections::BTreeMap, fmt, sync::Arc};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::status::{NodeStatus, QoSClaimStatus};

pub const API_VERSION: &str = "core.database-mesh.io/v1alpha1";
pub const KIND: &str = "QoSClaim";

/// `namespace/name`: how claims are identified everywhere. The two names
/// are shared, not copied: a key is kept in the claims in force, their
/// statuses, the plan and the overlaps, a claim each.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClaimKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ClaimKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: Arc::from(namespace.as_ref()),
            name: Arc::from(name.as_ref()),
        }
    }

    /// FNV-1a (64-bit) of `namespace/name`: the same on every node and in
    /// every release, which is what makes class ids deterministic.
    pub fn hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self
            .namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.name.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }
}

impl fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QoSClaim {
    /// The constant every claim carries is shared, not copied (two
    /// allocations a claim otherwise, kept for as long as the claim is).
    #[serde(deserialize_with = "shared_text")]
    pub api_version: Cow<'static, str>,
    #[serde(deserialize_with = "shared_text")]
    pub kind: Cow<'static, str>,
    pub metadata: ObjectMeta,
    pub spec: QoSClaimSpec,
    /// Written by the cluster; tolerated and ignored on input.
    /// Boxed: almost never there, and 72 bytes inline in every claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<serde_norway::Value>>,
}

/// `apiVersion` or `kind` as read: the expected value as the constant,
/// anything else as written (validation names it in its error).
fn shared_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Cow<'static, str>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(match text.as_str() {
        API_VERSION => Cow::Borrowed(API_VERSION),
        KIND => Cow::Borrowed(KIND),
        _ => Cow::Owned(text),
    })
}

/// Kubernetes object metadata. Only `name`, `namespace` and `generation`
/// matter here; everything else a cluster adds (labels, uid, …) is kept
/// opaque rather than rejected.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_norway::Value>,
}

// The CRD (`manifests/crd/qosclaims.yaml`) is generated from these types
// by `cargo xtask codegen`: doc comments become `kubectl explain` text.

/// A QoS claim on a database's traffic: every node shapes the traffic of
/// the claim's endpoints (or of the connections the SQL proxy tags with it)
/// to its rate, borrowing up to its ceil. `kubectl get qc` shows how many
/// nodes applied it.
// clippy reads each `printcolumn(type_ = …)` as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, CustomResource, JsonSchema)]
#[kube(
    group = "core.database-mesh.io",
    version = "v1alpha1",
    kind = "QoSClaim",
    root = "QoSClaimResource",
    plural = "qosclaims",
    namespaced,
    status = "QoSClaimStatus",
    shortname = "qc",
    category = "pisanix",
    doc = "QoSClaim: traffic QoS for a database, enforced in the kernel of every node by Pisa-Daemon.",
    printcolumn(
        name = "Rate",
        type_ = "string",
        json_path = ".spec.trafficQoS.qos_group.rate"
    ),
    printcolumn(
        name = "Ceil",
        type_ = "string",
        json_path = ".spec.trafficQoS.qos_group.ceil"
    ),
    printcolumn(
        name = "Priority",
        type_ = "string",
        json_path = ".spec.trafficQoS.priority"
    ),
    printcolumn(
        name = "Applied",
        type_ = "integer",
        description = "Nodes that enforce the claim's current generation",
        json_path = ".status.nodesApplied"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        description = "Nodes that rejected the claim (their QoSNodeReport says why)",
        json_path = ".status.nodesFailed"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        description = "Nodes that report the claim",
        json_path = ".status.nodesReporting"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields)]
pub struct QoSClaimSpec {
    /// The claim's traffic QoS (Pisanix's field name).
    #[serde(rename = "trafficQoS")]
    pub traffic_qos: TrafficQoS,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficQoS {
    /// The VirtualDatabase service this claim binds to (Pisanix): a
    /// VirtualDatabase whose `services[].qosClaim` names this claim supplies
    /// the endpoints (`databaseMySQL.host`/`port`) when `endpoints` is empty.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Rate and ceil of the claim's class.
    pub qos_group: QosGroup,
    /// Who is served first when classes borrow idle bandwidth: guaranteed
    /// (HTB prio 0), burstable (the default, prio 4) or besteffort (prio 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Bucket depth in tc size units (`64kb`, `1mb`, `1500b`); by default
    /// enough for 10 ms at the rate, and at least 64kb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9]+(\.[0-9]+)?([bB]|[kKmMgG]([iI]?[bB])?|[kKmMgG][bB][iI][tT])$"
    ))]
    #[schemars(length(max = 32))]
    pub burst: Option<String>,
    /// Which packets are shaped: `to` the database (requests, matched on
    /// destination), `from` it (responses, matched on source), or `both`
    /// (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// How the kernel enforces the rate: `auto` (= htb), `htb` (queue with
    /// rate, ceil and borrowing), `edt` (pacing, needs sch_fq on the node)
    /// or `police` (drop above rate + burst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The database's addresses. Empty: endpoints come from the bound
    /// VirtualDatabase, or only connections the SQL proxy tags are shaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub endpoints: Option<Vec<Endpoint>>,
    /// Which clients of the endpoints the claim covers (any entry matches);
    /// absent: every client. Several claims may share an endpoint when
    /// they select different clients; the longest matching client prefix
    /// wins, then the first claim in namespace/name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub clients: Option<Vec<ClientSelector>>,
    /// Connections selected by the identity the client states when it
    /// connects (PostgreSQL StartupMessage, MySQL HandshakeResponse), read
    /// by the node with no proxy. TLS connections, and connections opened
    /// before the daemon started, stay in the endpoint's class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<Box<SqlSelector>>,
}

/// One set of clients: a network (`cidr`), or Pods by label (`--kube`
/// only), in the claim's namespace unless `namespaceSelector` says which.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.cidr) != has(self.podSelector)",
    "message": "give exactly one of cidr or podSelector",
}]))]
pub struct ClientSelector {
    /// An IPv4 or IPv6 network of clients, e.g. `10.1.0.0/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 49))]
    pub cidr: Option<String>,
    /// Pods whose labels match (their IPs, followed as Pods come and go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces of those Pods, by label; absent: the claim's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The addresses of the selected Pods, filled in by the Kubernetes
    /// source from its Pod and Namespace watches (never read from input).
    #[serde(skip)]
    #[schemars(skip)]
    pub resolved: Option<Vec<std::net::IpAddr>>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` entry and every
    /// `matchExpressions` requirement (Kubernetes' semantics; validation
    /// has rejected unknown operators).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let exact = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        exact
            && self.match_expressions.iter().flatten().all(|e| {
                let values = e.values.as_deref().unwrap_or_default();
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions` AND-ed;
/// empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with exactly these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelExpression>>,
}

/// `key operator values`: operator In, NotIn, Exists or DoesNotExist.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// The label's key.
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: String,
    /// The values for In and NotIn; none for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Who the client says it is when it connects. Each list matches any of
/// its values (exact, case-sensitive); the given fields must all match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSelector {
    /// Database user names (PostgreSQL role, MySQL user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub users: Option<Vec<String>>,
    /// Database names the connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub databases: Option<Vec<String>>,
    /// Application names: PostgreSQL `application_name`, MySQL connection
    /// attribute `program_name`. Clients choose these freely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub applications: Option<Vec<String>>,
}

/// The CEL rule that keeps `ceil >= rate`, unit-aware: each value's number
/// times its unit's bits per second (tc's units, case-insensitive).
pub const CEIL_AT_LEAST_RATE_RULE: &str = "!has(self.ceil) || \
double(self.ceil.find('^[0-9.]+')) * {'bit': 1.0, 'kbit': 1e3, 'mbit': 1e6, 'gbit': 1e9, 'tbit': 1e12, \
'kibit': 1024.0, 'mibit': 1048576.0, 'gibit': 1073741824.0, 'tibit': 1099511627776.0, \
'bps': 8.0, 'kbps': 8e3, 'mbps': 8e6, 'gbps': 8e9, 'tbps': 8e12, \
'kibps': 8192.0, 'mibps': 8388608.0, 'gibps': 8589934592.0, 'tibps': 8796093022208.0}\
[self.ceil.lowerAscii().find('[a-z]+$')] >= \
double(self.rate.find('^[0-9.]+')) * {'bit': 1.0, 'kbit': 1e3, 'mbit': 1e6, 'gbit': 1e9, 'tbit': 1e12, \
'kibit': 1024.0, 'mibit': 1048576.0, 'gibit': 1073741824.0, 'tibit': 1099511627776.0, \
'bps': 8.0, 'kbps': 8e3, 'mbps': 8e6, 'gbps': 8e9, 'tbps': 8e12, \
'kibps': 8192.0, 'mibps': 8388608.0, 'gibps': 8589934592.0, 'tibps': 8796093022208.0}\
[self.rate.lowerAscii().find('[a-z]+$')]";

/// tc rate units: `bit kbit mbit gbit tbit` (bits/s), `bps kbps mbps gbps
/// tbps` (bytes/s), their `ki mi gi ti` 1024-based forms, any case.
const RATE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?([kKmMgGtT][iI]?)?([bB][iI][tT]|[bB][pP][sS])$";

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": CEIL_AT_LEAST_RATE_RULE,
    "message": "ceil must be at least rate",
    "fieldPath": ".ceil",
    "reason": "FieldValueInvalid",
}]))]
pub struct QosGroup {
    /// Guaranteed rate in tc units: `40mbit` is 40 megabits per second,
    /// `5mbps` is 5 megaBYTES per second.
    #[schemars(regex(pattern = RATE_PATTERN), length(max = 32))]
    pub rate: String,
    /// Ceiling reachable by borrowing idle bandwidth, tc units; defaults to
    /// `rate`, and must not be below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = RATE_PATTERN), length(max = 32))]
    pub ceil: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first when classes borrow (HTB prio 0).
    Guaranteed,
    /// The default (HTB prio 4).
    #[default]
    Burstable,
    /// Served last (HTB prio 7).
    Besteffort,
}

impl Priority {
    pub fn htb_prio(self) -> u8 {
        match self {
            Self::Guaranteed => 0,
            Self::Burstable => 4,
            Self::Besteffort => 7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::Besteffort => "besteffort",
        }
    }
}

/// Which traffic the class shapes, relative to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Requests to the database (matched on destination).
    To,
    /// Responses from the database (matched on source).
    From,
    /// Both.
    #[default]
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `htb`: rate, ceil and borrowing, and TCP-friendly queueing.
    #[default]
    Auto,
    Htb,
    Edt,
    Police,
}

/// One database endpoint: exactly one of `host` or `cidr`, with an
/// optional port and protocol.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.host) != has(self.cidr)",
    "message": "give exactly one of host or cidr",
}]))]
pub struct Endpoint {
    /// An IPv4 or IPv6 address, e.g. `10.0.0.5` or `fd00::5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 45))]
    pub host: Option<String>,
    /// An IPv4 or IPv6 network, e.g. `10.0.0.0/24` or `fd00::/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 49))]
    pub cidr: Option<String>,
    /// The database's port, 1-65535; absent means any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// `TCP` (the default) or `UDP`, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([tT][cC][pP]|[uU][dD][pP])$"))]
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_hash_is_fnv1a_of_namespace_slash_name() {
        // FNV-1a("a/b") computed independently.
        assert_eq!(ClaimKey::new("a", "b").hash(), 0xe620_c319_0468_cf61);
        assert_ne!(
            ClaimKey::new("ab", "c").hash(),
            ClaimKey::new("a", "bc").hash()
        );
    }
}
