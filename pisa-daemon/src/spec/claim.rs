//! QoSClaim as users write it. Pisanix's objects (`spec.trafficQoS.name`,
//! `qos_group.rate`/`ceil`) are accepted unchanged; every extension is
//! optional. Unknown fields under `spec` are errors: a typo must never be
//! silently ignored.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "core.database-mesh.io/v1alpha1";
pub const KIND: &str = "QoSClaim";

/// `namespace/name`: how claims are identified everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClaimKey {
    pub namespace: String,
    pub name: String,
}

impl ClaimKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
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
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: QoSClaimSpec,
    /// Written by the cluster; tolerated and ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_yaml::Value>,
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
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QoSClaimSpec {
    #[serde(rename = "trafficQoS")]
    pub traffic_qos: TrafficQoS,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficQoS {
    /// The VirtualDatabase service this claim binds to (Pisanix).
    pub name: String,
    pub qos_group: QosGroup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Bucket depth, tc size units (`64kb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QosGroup {
    /// Guaranteed rate, tc rate units (`40mbit`, `5mbps`).
    pub rate: String,
    /// Ceiling reachable by borrowing idle bandwidth; defaults to `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceil: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `htb`: rate, ceil and borrowing, and TCP-friendly queueing.
    #[default]
    Auto,
    Htb,
    Edt,
    Police,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// An IPv4 or IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// An IPv4 or IPv6 network, `10.0.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// 1-65535; absent means any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// `TCP` (default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
