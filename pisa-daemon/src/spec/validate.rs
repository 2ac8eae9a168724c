//! Validation: every rule a claim must satisfy, each error naming the
//! claim, the field, the value, the reason and (where there is a closed
//! set) the valid choices. Invalid claims are rejected whole; the other
//! claims are unaffected.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use super::{
    units::{self, format_rate},
    ClaimKey, Direction, Document, Mode, Priority, QoSClaim,
};
use crate::model::{Protocol, RuleMatch, ShapingMode, Side};

/// Node-level bounds validation depends on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most classes (valid claims) this node will hold.
    pub max_classes: usize,
    /// Whether `mode: edt` can be enforced here (sch_fq present).
    pub edt_available: bool,
}

/// Smallest burst: one full-size Ethernet frame must fit in the bucket, or
/// a policer drops every such frame and HTB stalls.
pub const MIN_BURST: u64 = 2 * 1024;
/// Largest burst: beyond this a "rate" stops meaning anything.
pub const MAX_BURST: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimError {
    /// `claims.yaml#2`.
    pub origin: String,
    pub claim: Option<ClaimKey>,
    /// YAML path, e.g. `spec.trafficQoS.qos_group.rate`.
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(claim) = &self.claim {
            write!(f, "claim {claim}: ")?;
        }
        write!(f, "{}", self.field)?;
        if !self.value.is_empty() {
            write!(f, " `{}`", self.value)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A claim that passed validation, in the terms the planner needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidClaim {
    pub key: ClaimKey,
    pub origin: String,
    pub generation: Option<i64>,
    /// The VirtualDatabase service it binds to.
    pub binding: String,
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    /// None: the planner's default for the rate.
    pub burst_bytes: Option<u64>,
    pub priority: Priority,
    pub direction: Direction,
    pub mode: ShapingMode,
    /// Endpoint rules, already expanded by direction.
    pub rules: Vec<RuleMatch>,
}

#[derive(Clone, Debug, Default)]
pub struct Validated {
    pub valid: BTreeMap<ClaimKey, ValidClaim>,
    pub invalid: BTreeMap<ClaimKey, Vec<ClaimError>>,
    /// Errors that cannot be pinned on a claim (no readable metadata).
    pub unattributed: Vec<ClaimError>,
}

impl Validated {
    /// Every error, claim by claim, then the unattributed ones.
    pub fn errors(&self) -> Vec<&ClaimError> {
        self.invalid
            .values()
            .flatten()
            .chain(self.unattributed.iter())
            .collect()
    }

    fn reject(&mut self, key: &ClaimKey, error: ClaimError) {
        self.valid.remove(key);
        self.invalid.entry(key.clone()).or_default().push(error);
    }
}

pub fn validate(documents: &[Document], limits: Limits) -> Validated {
    let mut out = Validated::default();
    let mut seen: BTreeMap<ClaimKey, Vec<String>> = BTreeMap::new();
    for document in documents {
        match &document.result {
            Err(error) => match &error.claim {
                Some(key) => {
                    seen.entry(key.clone())
                        .or_default()
                        .push(document.origin.clone());
                    out.invalid
                        .entry(key.clone())
                        .or_default()
                        .push(error.clone());
                }
                None => out.unattributed.push(error.clone()),
            },
            Ok(claim) => {
                let key = key_of(claim);
                seen.entry(key.clone())
                    .or_default()
                    .push(document.origin.clone());
                match check_claim(&document.origin, &key, claim, limits) {
                    Ok(valid) => {
                        out.valid.insert(key, valid);
                    }
                    Err(errors) => out.invalid.entry(key).or_default().extend(errors),
                }
            }
        }
    }
    reject_duplicates(&mut out, &seen);
    reject_shared_endpoints(&mut out);
    reject_over_capacity(&mut out, limits.max_classes);
    out
}

fn key_of(claim: &QoSClaim) -> ClaimKey {
    ClaimKey::new(
        claim
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        claim.metadata.name.clone(),
    )
}

fn reject_duplicates(out: &mut Validated, seen: &BTreeMap<ClaimKey, Vec<String>>) {
    for (key, origins) in seen.iter().filter(|(_, o)| o.len() > 1) {
        for origin in origins {
            let others: Vec<&str> = origins
                .iter()
                .filter(|o| *o != origin)
                .map(String::as_str)
                .collect();
            out.reject(
                key,
                ClaimError {
                    origin: origin.clone(),
                    claim: Some(key.clone()),
                    field: "metadata.name".into(),
                    value: key.name.clone(),
                    reason: format!(
                        "duplicate claim: {key} is also defined at {}; a claim must be defined once",
                        others.join(", ")
                    ),
                },
            );
        }
    }
}

/// One endpoint rule has one owner: the first claim in `namespace/name`
/// order keeps it, later ones are rejected naming the owner.
fn reject_shared_endpoints(out: &mut Validated) {
    let mut owners: BTreeMap<RuleMatch, ClaimKey> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (key, claim) in &out.valid {
        for rule in &claim.rules {
            match owners.get(rule) {
                Some(owner) if owner != key => {
                    conflicts.push((key.clone(), claim.origin.clone(), *rule, owner.clone()));
                }
                _ => {
                    owners.insert(*rule, key.clone());
                }
            }
        }
    }
    for (key, origin, rule, owner) in conflicts {
        out.reject(
            &key,
            ClaimError {
                origin,
                claim: Some(key.clone()),
                field: "spec.trafficQoS.endpoints".into(),
                value: describe_rule(&rule),
                reason: format!(
                    "endpoint already owned by claim {owner}; claims {owner} and {key} both \
                     shape it, and a packet can belong to one class only"
                ),
            },
        );
    }
}

fn reject_over_capacity(out: &mut Validated, max_classes: usize) {
    let over: Vec<(ClaimKey, String)> = out
        .valid
        .iter()
        .skip(max_classes)
        .map(|(k, c)| (k.clone(), c.origin.clone()))
        .collect();
    for (key, origin) in over {
        out.reject(
            &key,
            ClaimError {
                origin,
                claim: Some(key.clone()),
                field: "metadata.name".into(),
                value: key.name.clone(),
                reason: format!(
                    "more claims than the configured maximum of {max_classes} classes \
                     (--max-classes); claims are admitted in namespace/name order"
                ),
            },
        );
    }
}

fn describe_rule(rule: &RuleMatch) -> String {
    let side = match rule.side {
        Side::Destination => "to",
        Side::Source => "from",
    };
    let port = if rule.port == 0 {
        "any port".to_owned()
    } else {
        format!("port {}", rule.port)
    };
    let protocol = match rule.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    format!("{side} {}/{} {protocol} {port}", rule.addr, rule.prefix_len)
}

struct Checker<'a> {
    origin: &'a str,
    key: &'a ClaimKey,
    errors: Vec<ClaimError>,
}

impl Checker<'_> {
    fn fail(
        &mut self,
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.errors.push(ClaimError {
            origin: self.origin.to_owned(),
            claim: Some(self.key.clone()),
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        });
    }
}

const QOS: &str = "spec.trafficQoS";

fn check_claim(
    origin: &str,
    key: &ClaimKey,
    claim: &QoSClaim,
    limits: Limits,
) -> Result<ValidClaim, Vec<ClaimError>> {
    let mut c = Checker {
        origin,
        key,
        errors: Vec::new(),
    };
    let qos = &claim.spec.traffic_qos;
    if claim.metadata.name.trim().is_empty() {
        c.fail("metadata.name", "", "must not be empty");
    }
    if qos.name.trim().is_empty() {
        c.fail(
            format!("{QOS}.name"),
            "",
            "must name the VirtualDatabase service the claim binds to",
        );
    }
    let rate = rate_field(
        &mut c,
        &format!("{QOS}.qos_group.rate"),
        &qos.qos_group.rate,
    );
    let ceil = match &qos.qos_group.ceil {
        Some(text) => rate_field(&mut c, &format!("{QOS}.qos_group.ceil"), text),
        None => rate,
    };
    if let (Some(rate), Some(ceil)) = (rate, ceil) {
        if ceil < rate {
            c.fail(
                format!("{QOS}.qos_group.ceil"),
                qos.qos_group.ceil.clone().unwrap_or_default(),
                format!(
                    "ceil ({}) must be greater than or equal to rate ({})",
                    format_rate(ceil),
                    format_rate(rate)
                ),
            );
        }
    }
    let burst = qos.burst.as_ref().and_then(|text| burst(&mut c, text));
    let mode = match qos.mode.unwrap_or_default() {
        Mode::Auto | Mode::Htb => ShapingMode::Htb,
        Mode::Police => ShapingMode::Police,
        Mode::Edt => {
            if !limits.edt_available {
                c.fail(
                    format!("{QOS}.mode"),
                    "edt",
                    "mode edt needs the sch_fq qdisc, which this node's kernel lacks \
                     (CONFIG_NET_SCH_FQ); valid here: auto, htb, police",
                );
            }
            ShapingMode::Edt
        }
    };
    let direction = qos.direction.unwrap_or_default();
    let mut rules = Vec::new();
    for (index, endpoint) in qos.endpoints.iter().flatten().enumerate() {
        let field = format!("{QOS}.endpoints[{index}]");
        if let Some((addr, prefix_len, protocol, port)) = endpoint_target(&mut c, &field, endpoint)
        {
            let sides: &[Side] = match direction {
                Direction::To => &[Side::Destination],
                Direction::From => &[Side::Source],
                Direction::Both => &[Side::Destination, Side::Source],
            };
            for side in sides {
                rules.push(RuleMatch {
                    side: *side,
                    addr,
                    prefix_len,
                    protocol,
                    port,
                });
            }
        }
    }
    rules.sort();
    rules.dedup();
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let (Some(rate_bytes), Some(ceil_bytes)) = (rate, ceil) else {
        return Err(c.errors);
    };
    Ok(ValidClaim {
        key: key.clone(),
        origin: origin.to_owned(),
        generation: claim.metadata.generation,
        binding: qos.name.clone(),
        rate_bytes,
        ceil_bytes,
        burst_bytes: burst,
        priority: qos.priority.unwrap_or_default(),
        direction,
        mode,
        rules,
    })
}

/// A rate in bytes/s, or `None` after recording why it is not one.
fn rate_field(c: &mut Checker<'_>, field: &str, text: &str) -> Option<u64> {
    match units::parse_rate_bits(text) {
        Ok(0) => {
            c.fail(field, text, "must be greater than 0");
            None
        }
        Ok(_) => match units::parse_rate_bytes(text) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                c.fail(field, text, e.to_string());
                None
            }
        },
        Err(e) => {
            c.fail(field, text, e.to_string());
            None
        }
    }
}

fn burst(c: &mut Checker<'_>, text: &str) -> Option<u64> {
    let field = format!("{QOS}.burst");
    match units::parse_size(text) {
        Ok(bytes) if (MIN_BURST..=MAX_BURST).contains(&bytes) => Some(bytes),
        Ok(bytes) => {
            c.fail(
                field,
                text,
                format!(
                    "{bytes} bytes is outside the allowed range 2kb..1gb (2048..1073741824 \
                     bytes); a full-size frame must fit in the bucket"
                ),
            );
            None
        }
        Err(e) => {
            c.fail(field, text, e.to_string());
            None
        }
    }
}

fn endpoint_target(
    c: &mut Checker<'_>,
    field: &str,
    endpoint: &super::Endpoint,
) -> Option<(IpAddr, u8, Protocol, u16)> {
    let network = match (&endpoint.host, &endpoint.cidr) {
        (Some(host), None) => match host.trim().parse::<IpAddr>() {
            Ok(addr) => Some((addr, if addr.is_ipv4() { 32 } else { 128 })),
            Err(_) => {
                c.fail(
                    format!("{field}.host"),
                    host,
                    "not an IPv4 or IPv6 address; DNS names are not resolved in the kernel \
                     (use the database's address, or a cidr)",
                );
                None
            }
        },
        (None, Some(cidr)) => parse_cidr(c, &format!("{field}.cidr"), cidr),
        (Some(_), Some(_)) => {
            c.fail(field, "", "set either host or cidr, not both");
            None
        }
        (None, None) => {
            c.fail(field, "", "needs a host (address) or a cidr (network)");
            None
        }
    };
    let port = match endpoint.port {
        None => Some(0),
        Some(port) if (1..=65535).contains(&port) => Some(port as u16),
        Some(port) => {
            c.fail(
                format!("{field}.port"),
                port.to_string(),
                "ports are 1-65535 (leave port out to match any port)",
            );
            None
        }
    };
    let protocol = match endpoint
        .protocol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some(_) => {
            c.fail(
                format!("{field}.protocol"),
                endpoint.protocol.clone().unwrap_or_default(),
                "unknown protocol; valid: TCP, UDP",
            );
            None
        }
    };
    let (addr, prefix) = network?;
    Some((addr, prefix, protocol?, port?))
}

fn parse_cidr(c: &mut Checker<'_>, field: &str, text: &str) -> Option<(IpAddr, u8)> {
    let Some((addr, len)) = text.trim().split_once('/') else {
        c.fail(
            field,
            text,
            "not a CIDR; write address/prefix, e.g. 10.0.0.0/24 or fd00::/64",
        );
        return None;
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        c.fail(
            field,
            text,
            "the address part is not an IPv4 or IPv6 address",
        );
        return None;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let Some(len) = len.parse::<u8>().ok().filter(|l| *l <= max) else {
        c.fail(
            field,
            text,
            format!(
                "the prefix length must be 0-{max} for an IPv{} network",
                if max == 32 { 4 } else { 6 }
            ),
        );
        return None;
    };
    let network = mask(addr, len);
    if network != addr {
        c.fail(
            field,
            text,
            format!("host bits are set; did you mean {network}/{len}?"),
        );
        return None;
    }
    Some((addr, len))
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::from((bits & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::from((bits & mask).to_be_bytes())
        }
    }
}
