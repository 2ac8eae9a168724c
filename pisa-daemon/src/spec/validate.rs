//! Validation: every rule a claim must satisfy, each error naming the
//! claim, the field, the value, the reason and (where there is a closed
//! set) the valid choices. Invalid claims are rejected whole; the other
//! claims are unaffected.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use super::{
    units::{self, format_rate},
    ClaimKey, Direction, Document, Mode, Priority, QoSClaim,
};
use crate::model::{Prefix, Protocol, RuleMatch, ShapingMode, Side, SqlMatch};

/// Node-level bounds validation depends on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most classes (valid claims) this node will hold.
    pub max_classes: usize,
    /// Whether `mode: edt` can be enforced here (sch_fq present).
    pub edt_available: bool,
    /// Whether client `podSelector`s can be resolved (`--kube`); a claims
    /// file has no Pods to select.
    pub pod_selectors: bool,
}

/// Most values in one `sql` list.
pub const MAX_SQL_VALUES: usize = 64;
/// Longest user, database or application name: PostgreSQL's limit for
/// names (NAMEDATALEN - 1) and application_name alike.
pub const MAX_SQL_NAME: usize = 63;

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
    /// Shared with the document it came from: kept a claim each.
    pub origin: Arc<str>,
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
    /// Client networks the claim covers; empty with no `podSelector`
    /// either: every client.
    pub clients: Vec<Prefix>,
    /// Client Pods by label, resolved to addresses by the planner (`--kube`).
    pub pod_clients: Vec<PodClients>,
    /// Connections selected by SQL identity.
    pub sql: Option<Box<SqlMatch>>,
}

impl ValidClaim {
    /// Whether the claim covers only some clients of its endpoints.
    pub fn selects_clients(&self) -> bool {
        !self.clients.is_empty() || !self.pod_clients.is_empty()
    }

    /// Neither client nor SQL selectors: the claim owns its endpoints.
    pub fn is_plain(&self) -> bool {
        !self.selects_clients() && self.sql.is_none()
    }

    /// The request-side rules of the claim's endpoints, whatever its
    /// direction: where connection starts are seen.
    pub fn request_rules(&self) -> Vec<RuleMatch> {
        let mut rules: Vec<RuleMatch> = self
            .rules
            .iter()
            .map(|rule| RuleMatch {
                side: Side::Destination,
                ..*rule
            })
            .collect();
        rules.sort();
        rules.dedup();
        rules
    }
}

/// Client Pods chosen by label (`clients[].podSelector`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClients {
    pub pods: super::LabelSelector,
    /// `None`: the claim's own namespace.
    pub namespaces: Option<super::LabelSelector>,
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
                        .push(document.origin.to_string());
                    out.invalid
                        .entry(key.clone())
                        .or_default()
                        .push((**error).clone());
                }
                None => out.unattributed.push((**error).clone()),
            },
            Ok(claim) => {
                let key = key_of(claim);
                seen.entry(key.clone())
                    .or_default()
                    .push(document.origin.to_string());
                match check_one(&document.origin, &key, claim, limits) {
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

/// The claim's `namespace/name` (`default` when it names no namespace).
pub fn key_of(claim: &QoSClaim) -> ClaimKey {
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
                    value: key.name.to_string(),
                    reason: format!(
                        "duplicate claim: {key} is also defined at {}; a claim must be defined once",
                        others.join(", ")
                    ),
                },
            );
        }
    }
}

/// One endpoint rule has one owner among the claims without selectors:
/// the first claim in `namespace/name` order keeps it, later ones are
/// rejected naming the owner. Claims with client or SQL selectors share
/// endpoints by design (see `plan`).
fn reject_shared_endpoints(out: &mut Validated) {
    let mut owners: BTreeMap<RuleMatch, ClaimKey> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (key, claim) in out.valid.iter().filter(|(_, c)| c.is_plain()) {
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
                origin: origin.to_string(),
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
        .map(|(k, c)| (k.clone(), c.origin.to_string()))
        .collect();
    for (key, origin) in over {
        out.reject(
            &key,
            ClaimError {
                origin,
                claim: Some(key.clone()),
                field: "metadata.name".into(),
                value: key.name.to_string(),
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

/// One claim checked on its own: what `validate` does for each claim
/// before the checks across claims.
pub fn check_one(
    origin: &Arc<str>,
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
    // Kept for as long as the claim is in force: a claim has one or two
    // rules, and `push` left room for four (0.6 MiB at 10,000 claims).
    rules.shrink_to_fit();
    let (clients, pod_clients) = client_selectors(&mut c, qos, limits);
    let sql = qos.sql.as_ref().and_then(|sql| sql_selector(&mut c, sql));
    let selects = !clients.is_empty() || !pod_clients.is_empty() || sql.is_some();
    if selects && qos.endpoints.as_ref().is_none_or(Vec::is_empty) {
        c.fail(
            format!("{QOS}.endpoints"),
            "",
            "clients and sql select among an endpoint's connections, so they need \
             spec.trafficQoS.endpoints (a bound VirtualDatabase supplies them too)",
        );
    }
    if sql.is_some() && direction != Direction::Both {
        c.fail(
            format!("{QOS}.direction"),
            format!("{direction:?}").to_lowercase(),
            "a claim with sql shapes whole connections (its tag covers both directions); \
             valid with sql: both",
        );
    }
    if sql.is_some() {
        if let Some(rule) = rules.iter().find(|r| r.protocol == Protocol::Udp) {
            c.fail(
                format!("{QOS}.sql"),
                describe_rule(rule),
                "SQL identity is read from a TCP connection's start; valid: TCP endpoints",
            );
        }
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let (Some(rate_bytes), Some(ceil_bytes)) = (rate, ceil) else {
        return Err(c.errors);
    };
    Ok(ValidClaim {
        key: key.clone(),
        origin: Arc::clone(origin),
        generation: claim.metadata.generation,
        binding: qos.name.clone(),
        rate_bytes,
        ceil_bytes,
        burst_bytes: burst,
        priority: qos.priority.unwrap_or_default(),
        direction,
        mode,
        rules,
        clients,
        pod_clients,
        // Boxed: most claims have none, and a `ValidClaim` is kept a claim each.
        sql: sql.map(Box::new),
    })
}

fn client_selectors(
    c: &mut Checker<'_>,
    qos: &super::TrafficQoS,
    limits: Limits,
) -> (Vec<Prefix>, Vec<PodClients>) {
    let (mut prefixes, mut pods) = (Vec::new(), Vec::new());
    let Some(clients) = &qos.clients else {
        return (prefixes, pods);
    };
    if clients.is_empty() {
        c.fail(
            format!("{QOS}.clients"),
            "[]",
            "an empty list selects no client; leave clients out to cover every client",
        );
    }
    for (index, selector) in clients.iter().enumerate() {
        let field = format!("{QOS}.clients[{index}]");
        match (&selector.cidr, &selector.pod_selector) {
            (Some(cidr), None) => {
                if selector.namespace_selector.is_some() {
                    c.fail(
                        format!("{field}.namespaceSelector"),
                        "",
                        "a namespaceSelector narrows a podSelector; it means nothing next to a cidr",
                    );
                }
                if let Some((addr, len)) = parse_cidr(c, &format!("{field}.cidr"), cidr) {
                    prefixes.push(Prefix { addr, len });
                }
            }
            (None, Some(pods_selector)) => {
                if !limits.pod_selectors {
                    c.fail(
                        format!("{field}.podSelector"),
                        "",
                        "Pod selectors need a cluster (run --kube); a claims file selects \
                         clients by cidr; valid here: cidr",
                    );
                    continue;
                }
                // The Kubernetes source resolved the Pods' addresses.
                for addr in selector.resolved.iter().flatten() {
                    let len = if addr.is_ipv4() { 32 } else { 128 };
                    prefixes.push(Prefix { addr: *addr, len });
                }
                for (name, selector) in [
                    ("podSelector", Some(pods_selector)),
                    ("namespaceSelector", selector.namespace_selector.as_ref()),
                ] {
                    if let Some(selector) = selector {
                        check_label_selector(c, &format!("{field}.{name}"), selector);
                    }
                }
                pods.push(PodClients {
                    pods: pods_selector.clone(),
                    namespaces: selector.namespace_selector.clone(),
                });
            }
            (Some(_), Some(_)) => c.fail(field, "", "set either cidr or podSelector, not both"),
            (None, None) => c.fail(
                field,
                "",
                "needs a cidr (client network) or a podSelector (client Pods)",
            ),
        }
    }
    prefixes.sort();
    prefixes.dedup();
    (prefixes, pods)
}

fn check_label_selector(c: &mut Checker<'_>, field: &str, selector: &super::LabelSelector) {
    const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];
    for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{index}]");
        let values = expression.values.as_ref().map_or(0, Vec::len);
        match expression.operator.as_str() {
            "In" | "NotIn" if values == 0 => c.fail(
                format!("{field}.values"),
                "",
                format!("operator {} needs at least one value", expression.operator),
            ),
            "Exists" | "DoesNotExist" if values > 0 => c.fail(
                format!("{field}.values"),
                "",
                format!("operator {} takes no values", expression.operator),
            ),
            op if !OPERATORS.contains(&op) => c.fail(
                format!("{field}.operator"),
                op,
                format!("unknown operator; valid: {}", OPERATORS.join(", ")),
            ),
            _ => {}
        }
    }
}

fn sql_selector(c: &mut Checker<'_>, sql: &super::SqlSelector) -> Option<SqlMatch> {
    let mut out = SqlMatch::default();
    let mut ok = true;
    for (name, list, target) in [
        ("users", &sql.users, &mut out.users),
        ("databases", &sql.databases, &mut out.databases),
        ("applications", &sql.applications, &mut out.applications),
    ] {
        let Some(list) = list else { continue };
        let field = format!("{QOS}.sql.{name}");
        if list.is_empty() {
            c.fail(
                &field,
                "[]",
                "an empty list matches nothing; leave the field out to match any",
            );
            ok = false;
        }
        if list.len() > MAX_SQL_VALUES {
            c.fail(
                &field,
                list.len().to_string(),
                format!("at most {MAX_SQL_VALUES} values"),
            );
            ok = false;
        }
        for (index, value) in list.iter().enumerate() {
            if value.is_empty() || value.len() > MAX_SQL_NAME || value.contains('\0') {
                c.fail(
                    format!("{field}[{index}]"),
                    value,
                    format!(
                        "names are 1-{MAX_SQL_NAME} bytes without NUL (the longest name \
                         PostgreSQL keeps)"
                    ),
                );
                ok = false;
            }
        }
        target.extend(list.iter().cloned());
        target.sort();
        target.dedup();
    }
    if out == SqlMatch::default() && ok {
        c.fail(
            format!("{QOS}.sql"),
            "{}",
            "selects nothing; give users, databases and/or applications",
        );
        return None;
    }
    ok.then_some(out)
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
