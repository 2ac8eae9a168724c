//! Messages <-> domain types. Every request field is checked here, and a
//! bad one becomes `INVALID_ARGUMENT` naming the field, the value, the
//! reason and what is valid.

use std::net::{IpAddr, SocketAddr};

use tonic::{Code, Status};

use super::pb;
use crate::{
    identity::Outcome,
    kernel::{Protocol, RuleMatch, ShapingMode, Side},
    spec::{ClaimError, ClaimKey},
    tags::{Flow, TagError, MAX_TTL_SECONDS},
};

/// Bounds of `WatchStatsRequest.interval_ms`.
pub const WATCH_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=60_000;

/// SQL identity's counts of one claim, by outcome label.
pub fn outcome_counts(
    counts: &std::collections::BTreeMap<Outcome, u64>,
) -> std::collections::HashMap<String, u64> {
    counts
        .iter()
        .map(|(outcome, n)| (outcome.label().to_owned(), *n))
        .collect()
}

/// `INVALID_ARGUMENT` for `field` = `value`.
pub fn invalid(field: &str, value: impl std::fmt::Display, reason: &str) -> Status {
    Status::invalid_argument(format!("{field} `{value}`: {reason}"))
}

/// The same error, its field named inside `prefix`: every message here
/// starts with the field (`flow.src_port `70000`: …`), so an entry of a
/// batch reads `tags[3].flow.src_port `70000`: …`.
pub fn within(prefix: &str, status: Status) -> Status {
    Status::new(status.code(), format!("{prefix}.{}", status.message()))
}

/// What a TagFlow request names as the class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Claim(ClaimKey),
    ClassId(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRequest {
    pub flow: Flow,
    pub target: Target,
    pub ttl_seconds: u32,
}

pub fn tag_request(request: &pb::TagFlowRequest) -> Result<TagRequest, Status> {
    let flow = flow(request.flow.as_ref(), "flow")?;
    let target = match &request.target {
        None => {
            return Err(invalid(
                "target",
                "",
                "missing; set `claim` (namespace and name) or `class_id`",
            ))
        }
        Some(pb::tag_flow_request::Target::ClassId(0)) => {
            return Err(invalid(
                "class_id",
                0,
                "class ids start at 1; see ListClasses",
            ))
        }
        Some(pb::tag_flow_request::Target::ClassId(id)) => Target::ClassId(*id),
        Some(pb::tag_flow_request::Target::Claim(claim)) => {
            if claim.name.is_empty() {
                return Err(invalid("claim.name", "", "must not be empty"));
            }
            let namespace = if claim.namespace.is_empty() {
                "default"
            } else {
                &claim.namespace
            };
            Target::Claim(ClaimKey::new(namespace, &claim.name))
        }
    };
    if !(1..=MAX_TTL_SECONDS).contains(&request.ttl_seconds) {
        return Err(invalid(
            "ttl_seconds",
            request.ttl_seconds,
            &format!("must be 1-{MAX_TTL_SECONDS} seconds"),
        ));
    }
    Ok(TagRequest {
        flow,
        target,
        ttl_seconds: request.ttl_seconds,
    })
}

/// A `FlowTuple` under the message field `prefix`.
pub fn flow(tuple: Option<&pb::FlowTuple>, prefix: &str) -> Result<Flow, Status> {
    let Some(tuple) = tuple else {
        return Err(invalid(
            prefix,
            "",
            "missing; give the connection's 5-tuple",
        ));
    };
    let protocol = match pb::Protocol::try_from(tuple.protocol) {
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        _ => {
            return Err(invalid(
                &format!("{prefix}.protocol"),
                tuple.protocol,
                "valid protocols are PROTOCOL_TCP (1) and PROTOCOL_UDP (2)",
            ))
        }
    };
    let src = endpoint(prefix, "src", &tuple.src_ip, tuple.src_port)?;
    let dst = endpoint(prefix, "dst", &tuple.dst_ip, tuple.dst_port)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(invalid(
            &format!("{prefix}.dst_ip"),
            &tuple.dst_ip,
            &format!(
                "is {} but src_ip `{}` is {}; both ends must be the same family",
                family(dst.ip()),
                tuple.src_ip,
                family(src.ip())
            ),
        ));
    }
    Ok(Flow { protocol, src, dst })
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn endpoint(prefix: &str, side: &str, ip: &str, port: u32) -> Result<SocketAddr, Status> {
    let ip: IpAddr = ip.parse().map_err(|_| {
        invalid(
            &format!("{prefix}.{side}_ip"),
            ip,
            "not an IP address; give an IPv4 (10.0.0.7) or IPv6 (fd00::7) address",
        )
    })?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(&format!("{prefix}.{side}_port"), port, "ports are 1-65535"))?;
    Ok(SocketAddr::new(ip, port))
}

pub fn tag_error(error: TagError) -> Status {
    match error {
        TagError::Full { .. } => Status::new(Code::ResourceExhausted, error.to_string()),
        TagError::Kernel { .. } | TagError::Clock { .. } => Status::unavailable(error.to_string()),
    }
}

pub fn mode(mode: ShapingMode) -> pb::Mode {
    match mode {
        ShapingMode::Htb => pb::Mode::Htb,
        ShapingMode::Edt => pb::Mode::Edt,
        ShapingMode::Police => pb::Mode::Police,
    }
}

pub fn claim_ref(key: &ClaimKey) -> pb::ClaimRef {
    pb::ClaimRef {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
    }
}

/// `tcp dst 10.0.0.5/32:3306`; port 0 is any port.
pub fn rule_text(rule: &RuleMatch) -> String {
    let protocol = match rule.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let side = match rule.side {
        Side::Destination => "dst",
        Side::Source => "src",
    };
    let port = if rule.port == 0 {
        "*".to_string()
    } else {
        rule.port.to_string()
    };
    match rule.addr {
        IpAddr::V4(_) => format!("{protocol} {side} {}/{}:{port}", rule.addr, rule.prefix_len),
        IpAddr::V6(_) => format!(
            "{protocol} {side} [{}/{}]:{port}",
            rule.addr, rule.prefix_len
        ),
    }
}

pub fn validation_error(error: &ClaimError) -> pb::ValidationError {
    pb::ValidationError {
        claim: error
            .claim
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        message: error.to_string(),
        field: error.field.clone(),
        value: error.value.clone(),
        reason: error.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn tuple() -> pb::FlowTuple {
        pb::FlowTuple {
            src_ip: "10.0.0.1".into(),
            src_port: 40000,
            dst_ip: "10.0.0.2".into(),
            dst_port: 3306,
            protocol: pb::Protocol::Tcp as i32,
        }
    }

    fn request() -> pb::TagFlowRequest {
        pb::TagFlowRequest {
            flow: Some(tuple()),
            target: Some(pb::tag_flow_request::Target::Claim(pb::ClaimRef {
                namespace: "shop".into(),
                name: "catalogue".into(),
            })),
            ttl_seconds: 30,
        }
    }

    #[test]
    fn tag_request_round_trips_through_the_wire_and_converts() {
        let bytes = request().encode_to_vec();
        let decoded = pb::TagFlowRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, request());
        let parsed = tag_request(&decoded).unwrap();
        assert_eq!(
            parsed.target,
            Target::Claim(ClaimKey::new("shop", "catalogue"))
        );
        assert_eq!(parsed.flow.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(parsed.flow.protocol, Protocol::Tcp);
        assert_eq!(parsed.ttl_seconds, 30);
    }

    #[test]
    fn stats_round_trip_keeps_every_field() {
        let stats = pb::GetStatsResponse {
            classes: vec![pb::ClassStats {
                class_id: 7,
                claim: Some(claim_ref(&ClaimKey::new("a", "b"))),
                rate_bytes_per_second: 1,
                ceil_bytes_per_second: 2,
                packets: 3,
                bytes: 4,
                drops: 5,
                delayed: 6,
                achieved_bytes_per_second: 7.5,
            }],
            reasons: vec![pb::ReasonCount {
                reason: "unmatched".into(),
                packets: 9,
            }],
            active_tags: 2,
            generation: u64::MAX,
            sampled_unix_ms: 1,
            tag_capacity: 3,
            tags_evicted: 4,
        };
        let decoded = pb::GetStatsResponse::decode(stats.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, stats);
    }

    #[test]
    fn each_bad_field_is_named_with_its_value() {
        type Mutation = Box<dyn Fn(&mut pb::TagFlowRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.flow = None), "flow ``: missing"),
            (
                Box::new(|r| r.flow.as_mut().unwrap().src_ip = "10.0.0.300".into()),
                "flow.src_ip `10.0.0.300`: not an IP address",
            ),
            (
                Box::new(|r| r.flow.as_mut().unwrap().dst_port = 0),
                "flow.dst_port `0`: ports are 1-65535",
            ),
            (
                Box::new(|r| r.flow.as_mut().unwrap().src_port = 70000),
                "flow.src_port `70000`: ports are 1-65535",
            ),
            (
                Box::new(|r| r.flow.as_mut().unwrap().protocol = 0),
                "flow.protocol `0`: valid protocols are PROTOCOL_TCP (1) and PROTOCOL_UDP (2)",
            ),
            (
                Box::new(|r| r.flow.as_mut().unwrap().dst_ip = "fd00::2".into()),
                "flow.dst_ip `fd00::2`: is IPv6 but src_ip `10.0.0.1` is IPv4",
            ),
            (Box::new(|r| r.target = None), "target ``: missing"),
            (
                Box::new(|r| r.target = Some(pb::tag_flow_request::Target::ClassId(0))),
                "class_id `0`: class ids start at 1",
            ),
            (
                Box::new(|r| {
                    r.target = Some(pb::tag_flow_request::Target::Claim(pb::ClaimRef::default()))
                }),
                "claim.name ``: must not be empty",
            ),
            (
                Box::new(|r| r.ttl_seconds = 0),
                "ttl_seconds `0`: must be 1-86400 seconds",
            ),
            (
                Box::new(|r| r.ttl_seconds = 86_401),
                "ttl_seconds `86401`: must be 1-86400 seconds",
            ),
        ];
        for (mutate, expected) in cases {
            let mut r = request();
            mutate(&mut r);
            let status = tag_request(&r).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
            assert!(
                status.message().starts_with(expected),
                "{:?} does not start with {expected:?}",
                status.message()
            );
        }
    }

    #[test]
    fn an_empty_namespace_means_default() {
        let mut r = request();
        r.target = Some(pb::tag_flow_request::Target::Claim(pb::ClaimRef {
            namespace: String::new(),
            name: "x".into(),
        }));
        assert_eq!(
            tag_request(&r).unwrap().target,
            Target::Claim(ClaimKey::new("default", "x"))
        );
    }

    #[test]
    fn rules_read_like_tc_filters() {
        let rule = RuleMatch {
            side: Side::Destination,
            addr: "fd00::".parse().unwrap(),
            prefix_len: 64,
            protocol: Protocol::Tcp,
            port: 0,
        };
        assert_eq!(rule_text(&rule), "tcp dst [fd00::/64]:*");
    }
}
