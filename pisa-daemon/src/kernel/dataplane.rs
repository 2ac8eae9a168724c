//! The `Dataplane` trait: everything the reconciler may ask of the kernel,
//! in domain terms (classes, rules, interfaces), with the real kernel
//! (`Kernel`) and an in-memory fake (`FakeDataplane`) behind it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use pisa_daemon_common::{
    ClassStats, EndpointMatch, FlowKey, FlowTag, IfaceStats, FAMILY_V4, FAMILY_V6, MODE_EDT,
    MODE_HTB, MODE_POLICE, PROTO_TCP, PROTO_UDP, SIDE_DST, SIDE_SRC,
};

use super::{Attachment, KernelError};

/// How a class is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShapingMode {
    /// HTB leaf class per interface; rate + ceil + borrowing.
    Htb,
    /// Earliest departure time for sch_fq; lockless.
    Edt,
    /// Token bucket in the program: drop above rate + burst.
    Police,
}

impl ShapingMode {
    pub fn as_raw(self) -> u8 {
        match self {
            Self::Htb => MODE_HTB,
            Self::Edt => MODE_EDT,
            Self::Police => MODE_POLICE,
        }
    }

    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            MODE_HTB => Some(Self::Htb),
            MODE_EDT => Some(Self::Edt),
            MODE_POLICE => Some(Self::Police),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Htb => "htb",
            Self::Edt => "edt",
            Self::Police => "police",
        }
    }
}

/// One QoS class as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    /// 1 ..= MAX_CLASSES - 1; also the HTB minor.
    pub class_id: u32,
    pub mode: ShapingMode,
    /// Bytes per second on the wire.
    pub rate_bytes: u64,
    pub ceil_bytes: u64,
    pub burst_bytes: u32,
    /// 0 (guaranteed) .. 7 (best effort): HTB prio when borrowing.
    pub priority: u8,
    /// EDT drop horizon.
    pub horizon_ns: u64,
    /// Hash of the owning claim (`spec::ClaimKey::hash`), stored with the
    /// class so a restarted agent gives every claim its old id back.
    pub claim_hash: u64,
}

impl ClassSpec {
    /// The class a `CLASS_CONFIG` slot holds, if the slot is active.
    pub fn from_slot(class_id: u32, raw: &pisa_daemon_common::ClassConfig) -> Option<Self> {
        if raw.state != pisa_daemon_common::CLASS_STATE_ACTIVE {
            return None;
        }
        Some(Self {
            class_id,
            mode: ShapingMode::from_raw(raw.mode)?,
            rate_bytes: raw.rate_bytes,
            ceil_bytes: raw.ceil_bytes,
            burst_bytes: raw.burst_bytes,
            priority: raw.priority,
            horizon_ns: raw.horizon_ns,
            claim_hash: raw.claim_hash,
        })
    }
}

/// Which address of a packet a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The destination: requests to the database.
    Destination,
    /// The source: responses from the database.
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

/// What an endpoint rule matches; the key of the rule table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleMatch {
    pub side: Side,
    /// Network address (host bits zero) and prefix length.
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub protocol: Protocol,
    /// 0 matches any port.
    pub port: u16,
}

impl RuleMatch {
    /// The LPM key: fixed fields, then the address; `prefix_len` counts the
    /// fixed bits too.
    pub fn to_kernel(&self) -> (u32, EndpointMatch) {
        let mut data = EndpointMatch {
            side: match self.side {
                Side::Destination => SIDE_DST,
                Side::Source => SIDE_SRC,
            },
            protocol: self.protocol.number(),
            port_be: self.port.to_be(),
            ..EndpointMatch::default()
        };
        match self.addr {
            IpAddr::V4(v4) => {
                data.family = FAMILY_V4;
                data.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                data.family = FAMILY_V6;
                data.addr = v6.octets();
            }
        }
        (
            pisa_daemon_common::ENDPOINT_FIXED_BITS + u32::from(self.prefix_len),
            data,
        )
    }

    pub fn from_kernel(prefix_len: u32, data: &EndpointMatch) -> Option<Self> {
        let side = match data.side {
            SIDE_DST => Side::Destination,
            SIDE_SRC => Side::Source,
            _ => return None,
        };
        let protocol = match data.protocol {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        let addr = match data.family {
            FAMILY_V4 => {
                let mut v4 = [0u8; 4];
                v4.copy_from_slice(&data.addr[..4]);
                IpAddr::from(v4)
            }
            FAMILY_V6 => IpAddr::from(data.addr),
            _ => return None,
        };
        let prefix_len = prefix_len.checked_sub(pisa_daemon_common::ENDPOINT_FIXED_BITS)?;
        Some(Self {
            side,
            addr,
            prefix_len: u8::try_from(prefix_len).ok()?,
            protocol,
            port: u16::from_be(data.port_be),
        })
    }
}

/// Kernel features that decide what can be enforced where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// TCX links (Linux 6.6+); otherwise clsact + cls_bpf.
    pub tcx: bool,
    /// sch_fq, which EDT pacing needs.
    pub sch_fq: bool,
    /// Kernel BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
}

/// Everything the reconciler needs from the kernel. Order of operations is
/// the caller's job: classes before the rules that point at them, rules
/// removed before their class.
pub trait Dataplane {
    fn features(&self) -> Features;
    /// Attaches at egress of `iface` and brings its qdisc tree up to date.
    fn attach(&mut self, iface: &str) -> Result<Attachment, KernelError>;
    fn detach(&mut self, iface: &str) -> Result<bool, KernelError>;
    /// Interfaces currently attached.
    fn interfaces(&self) -> BTreeSet<String>;
    /// Active classes by id.
    fn classes(&self) -> &BTreeMap<u32, ClassSpec>;
    /// Creates or changes a class in place (map entry and, for HTB, the
    /// leaf class on every attached interface).
    fn put_class(&mut self, class: &ClassSpec) -> Result<(), KernelError>;
    fn delete_class(&mut self, class_id: u32) -> Result<(), KernelError>;
    /// Endpoint rules: match -> class id.
    fn rules(&self) -> &BTreeMap<RuleMatch, u32>;
    fn put_rule(&mut self, rule: &RuleMatch, class_id: u32) -> Result<(), KernelError>;
    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError>;
    /// Summed per-CPU counters of active classes.
    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError>;
    /// Summed per-CPU reason counters, indexed by `reason::*`.
    fn reason_stats(&self) -> Result<Vec<u64>, KernelError>;
    /// Summed egress counters of attached interfaces.
    fn interface_stats(&self) -> Result<BTreeMap<String, IfaceStats>, KernelError>;
    /// Writes flow tags (connection direction -> class), all or none.
    fn put_flow_tags(&mut self, entries: &[(FlowKey, FlowTag)]) -> Result<(), KernelError>;
    /// Removes flow tags; keys without a tag are skipped.
    fn delete_flow_tags(&mut self, keys: &[FlowKey]) -> Result<(), KernelError>;
    /// Removes every flow tag; returns how many there were.
    fn clear_flow_tags(&mut self) -> Result<usize, KernelError>;
}

/// An in-memory `Dataplane` for reconciler tests: it records every call so
/// tests can assert exactly which operations a change caused.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub features: Features,
    pub ifaces: BTreeSet<String>,
    pub classes: BTreeMap<u32, ClassSpec>,
    pub rules: BTreeMap<RuleMatch, u32>,
    pub stats: BTreeMap<u32, ClassStats>,
    /// Every mutating call, in order, e.g. `put_class 7`.
    pub log: Vec<String>,
    /// When set, the next mutating call fails with this interface error.
    pub fail_next: Option<String>,
    pub flow_tags: BTreeMap<FlowKey, FlowTag>,
    /// Most flow-tag entries the fake "kernel" map holds (0: no limit).
    pub flow_tag_capacity: usize,
}

impl FakeDataplane {
    fn maybe_fail(&mut self) -> Result<(), KernelError> {
        match self.fail_next.take() {
            Some(iface) => Err(KernelError::InterfaceNotFound { iface }),
            None => Ok(()),
        }
    }
}

impl Dataplane for FakeDataplane {
    fn features(&self) -> Features {
        self.features
    }

    fn attach(&mut self, iface: &str) -> Result<Attachment, KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("attach {iface}"));
        let adopted = !self.ifaces.insert(iface.to_owned());
        Ok(Attachment {
            iface: iface.to_owned(),
            ifindex: 0,
            mode: super::AttachMode::Tcx,
            link_id: None,
            adopted,
        })
    }

    fn detach(&mut self, iface: &str) -> Result<bool, KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("detach {iface}"));
        Ok(self.ifaces.remove(iface))
    }

    fn interfaces(&self) -> BTreeSet<String> {
        self.ifaces.clone()
    }

    fn classes(&self) -> &BTreeMap<u32, ClassSpec> {
        &self.classes
    }

    fn put_class(&mut self, class: &ClassSpec) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("put_class {}", class.class_id));
        self.classes.insert(class.class_id, *class);
        Ok(())
    }

    fn delete_class(&mut self, class_id: u32) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("delete_class {class_id}"));
        self.classes.remove(&class_id);
        Ok(())
    }

    fn rules(&self) -> &BTreeMap<RuleMatch, u32> {
        &self.rules
    }

    fn put_rule(&mut self, rule: &RuleMatch, class_id: u32) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "put_rule {:?} {}/{} {:?}:{} -> {class_id}",
            rule.side, rule.addr, rule.prefix_len, rule.protocol, rule.port
        ));
        self.rules.insert(*rule, class_id);
        Ok(())
    }

    fn delete_rule(&mut self, rule: &RuleMatch) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!(
            "delete_rule {:?} {}/{} {:?}:{}",
            rule.side, rule.addr, rule.prefix_len, rule.protocol, rule.port
        ));
        self.rules.remove(rule);
        Ok(())
    }

    fn class_stats(&self) -> Result<BTreeMap<u32, ClassStats>, KernelError> {
        Ok(self.stats.clone())
    }

    fn reason_stats(&self) -> Result<Vec<u64>, KernelError> {
        Ok(vec![0; pisa_daemon_common::reason::COUNT as usize])
    }

    fn interface_stats(&self) -> Result<BTreeMap<String, IfaceStats>, KernelError> {
        Ok(self
            .ifaces
            .iter()
            .map(|i| (i.clone(), IfaceStats::default()))
            .collect())
    }

    fn put_flow_tags(&mut self, entries: &[(FlowKey, FlowTag)]) -> Result<(), KernelError> {
        self.maybe_fail()?;
        let new = entries
            .iter()
            .filter(|(k, _)| !self.flow_tags.contains_key(k))
            .count();
        if self.flow_tag_capacity != 0 && self.flow_tags.len() + new > self.flow_tag_capacity {
            return Err(KernelError::FlowTagsFull {
                capacity: self.flow_tag_capacity as u32,
            });
        }
        self.log.push(format!("put_flow_tags {}", entries.len()));
        self.flow_tags.extend(entries.iter().copied());
        Ok(())
    }

    fn delete_flow_tags(&mut self, keys: &[FlowKey]) -> Result<(), KernelError> {
        self.maybe_fail()?;
        self.log.push(format!("delete_flow_tags {}", keys.len()));
        for key in keys {
            self.flow_tags.remove(key);
        }
        Ok(())
    }

    fn clear_flow_tags(&mut self) -> Result<usize, KernelError> {
        let count = self.flow_tags.len();
        self.flow_tags.clear();
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_match_round_trips_through_the_kernel_key() {
        for rule in [
            RuleMatch {
                side: Side::Destination,
                addr: "10.0.0.5".parse().unwrap(),
                prefix_len: 32,
                protocol: Protocol::Tcp,
                port: 3306,
            },
            RuleMatch {
                side: Side::Source,
                addr: "fd00::".parse().unwrap(),
                prefix_len: 64,
                protocol: Protocol::Udp,
                port: 0,
            },
        ] {
            let (prefix, data) = rule.to_kernel();
            assert_eq!(RuleMatch::from_kernel(prefix, &data), Some(rule));
        }
    }

    #[test]
    fn kernel_key_puts_port_in_network_order_and_counts_fixed_bits() {
        let rule = RuleMatch {
            side: Side::Destination,
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 24,
            protocol: Protocol::Tcp,
            port: 5432,
        };
        let (prefix, data) = rule.to_kernel();
        assert_eq!(prefix, 64 + 24);
        assert_eq!(data.port_be.to_ne_bytes(), 5432u16.to_be_bytes());
        assert_eq!(&data.addr[..4], &[10, 0, 0, 0]);
        assert_eq!(data.side, SIDE_DST);
    }
}
