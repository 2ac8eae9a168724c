//! Flow tags from the SQL proxy: which connection carries which class, and
//! until when. This table is the userspace side of `FLOW_TAGS`: it bounds
//! the number of tags (a full table refuses, it never evicts), sweeps
//! expired tags out of the kernel, and drops tags whose class went away.
//!
//! A connection is tagged in both directions, so requests and responses
//! are both shaped whichever way the proxy names the tuple. Tags live only
//! as long as the daemon: a restarted daemon clears them and changes its
//! generation, and the proxy re-tags.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use pisa_daemon_common::{FlowKey, FlowTag, FAMILY_V4, FAMILY_V6};

use crate::kernel::{Dataplane, KernelError, Protocol};

/// The most tags the kernel map can hold: each tag takes two entries.
pub const MAX_TAGS: usize = pisa_daemon_common::MAX_FLOW_TAGS as usize / 2;
/// The longest TTL a tag may have (a day): a proxy that forgets to untag
/// must not pin a class onto a reused 5-tuple forever.
pub const MAX_TTL_SECONDS: u32 = 86_400;

/// One connection, as the proxy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Flow {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
        }
    }

    /// One name per connection, whichever direction it is given in.
    pub fn canonical(&self) -> Self {
        (*self).min(self.reversed())
    }

    /// The `FLOW_TAGS` key of this direction, laid out as the program
    /// parses packets (IPv4 in the first four bytes).
    pub fn key(&self) -> FlowKey {
        let mut key = FlowKey {
            protocol: self.protocol.number(),
            src_port_be: self.src.port().to_be(),
            dst_port_be: self.dst.port().to_be(),
            ..FlowKey::default()
        };
        for (addr, out) in [
            (self.src.ip(), &mut key.src_addr),
            (self.dst.ip(), &mut key.dst_addr),
        ] {
            match addr {
                IpAddr::V4(v4) => {
                    key.family = FAMILY_V4;
                    out[..4].copy_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    key.family = FAMILY_V6;
                    *out = v6.octets();
                }
            }
        }
        key
    }

    /// The connection a `FLOW_TAGS` key (as the program parsed it) names.
    pub fn from_key(key: &FlowKey) -> Option<Self> {
        let protocol = match key.protocol {
            pisa_daemon_common::PROTO_TCP => Protocol::Tcp,
            pisa_daemon_common::PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        let addr = |bytes: &[u8; 16]| -> Option<IpAddr> {
            match key.family {
                FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
                FAMILY_V6 => Some(IpAddr::from(*bytes)),
                _ => None,
            }
        };
        Some(Self {
            protocol,
            src: SocketAddr::new(addr(&key.src_addr)?, u16::from_be(key.src_port_be)),
            dst: SocketAddr::new(addr(&key.dst_addr)?, u16::from_be(key.dst_port_be)),
        })
    }

    fn keys(&self) -> [FlowKey; 2] {
        [self.key(), self.reversed().key()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub class_id: u32,
    /// `TAG_ORIGIN_PROXY` (gRPC TagFlow) or `TAG_ORIGIN_SQL` (the daemon,
    /// from the connection's start).
    pub origin: u32,
    /// CLOCK_MONOTONIC nanoseconds, the program's clock.
    pub expires_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error(
        "the flow-tag table is full ({capacity} connections); untag connections or \
         wait for tags to expire (nothing is evicted)"
    )]
    Full { capacity: usize },
    #[error("the kernel refused the flow tag: {source}")]
    Kernel {
        #[source]
        source: KernelError,
    },
    /// Without the monotonic clock no expiry can be computed or checked.
    #[error("reading CLOCK_MONOTONIC failed: {source}")]
    Clock {
        #[source]
        source: nix::Error,
    },
}

/// The tags in force, keyed by canonical flow.
#[derive(Debug)]
pub struct TagTable {
    capacity: usize,
    tags: BTreeMap<Flow, Tag>,
}

impl TagTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.min(MAX_TAGS),
            tags: BTreeMap::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn get(&self, flow: &Flow) -> Option<&Tag> {
        self.tags.get(&flow.canonical())
    }

    /// Tags (or re-tags) a connection. When the table is full, expired
    /// tags are swept first; if it is still full the call fails.
    pub fn tag<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        flow: &Flow,
        tag: Tag,
        now_ns: u64,
    ) -> Result<(), TagError> {
        let flow = flow.canonical();
        if !self.tags.contains_key(&flow) && self.tags.len() >= self.capacity {
            self.sweep(dp, now_ns)
                .map_err(|source| TagError::Kernel { source })?;
            if self.tags.len() >= self.capacity {
                return Err(TagError::Full {
                    capacity: self.capacity,
                });
            }
        }
        let value = FlowTag {
            class_id: tag.class_id,
            origin: tag.origin,
            expires_ns: tag.expires_ns,
        };
        let entries = flow.keys().map(|key| (key, value));
        dp.put_flow_tags(&entries).map_err(|source| match source {
            KernelError::FlowTagsFull { .. } => TagError::Full {
                capacity: self.capacity,
            },
            source => TagError::Kernel { source },
        })?;
        self.tags.insert(flow, tag);
        Ok(())
    }

    /// Takes over tags already in the kernel (a restarted daemon's own
    /// SQL-identity tags), as pairs of directions; a direction whose other
    /// half is missing, or beyond capacity, is returned for removal.
    pub fn adopt(&mut self, entries: &[(FlowKey, FlowTag)]) -> Vec<FlowKey> {
        let mut halves: BTreeMap<Flow, Vec<(FlowKey, FlowTag)>> = BTreeMap::new();
        let mut orphans = Vec::new();
        for (key, tag) in entries {
            match Flow::from_key(key) {
                Some(flow) => halves
                    .entry(flow.canonical())
                    .or_default()
                    .push((*key, *tag)),
                None => orphans.push(*key),
            }
        }
        for (flow, pair) in halves {
            if pair.len() != 2 || self.tags.len() >= self.capacity {
                orphans.extend(pair.iter().map(|(k, _)| *k));
                continue;
            }
            let tag = pair[0].1;
            self.tags.insert(
                flow,
                Tag {
                    class_id: tag.class_id,
                    origin: tag.origin,
                    expires_ns: tag.expires_ns,
                },
            );
        }
        orphans
    }

    /// Removes a connection's tag; returns whether it had one.
    pub fn untag<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        flow: &Flow,
    ) -> Result<bool, KernelError> {
        let flow = flow.canonical();
        if !self.tags.contains_key(&flow) {
            return Ok(false);
        }
        dp.delete_flow_tags(&flow.keys())?;
        self.tags.remove(&flow);
        Ok(true)
    }

    /// Removes tags that expired by `now_ns`; returns how many.
    pub fn sweep<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        now_ns: u64,
    ) -> Result<usize, KernelError> {
        self.remove_where(dp, |tag| tag.expires_ns <= now_ns)
    }

    /// Removes tags whose class is no longer in force (its claim was
    /// deleted): the program must not send packets to a vacant class.
    pub fn retain_classes<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        classes: &BTreeSet<u32>,
    ) -> Result<usize, KernelError> {
        self.remove_where(dp, |tag| !classes.contains(&tag.class_id))
    }

    /// Tags per class id, for stats.
    pub fn count_by_class(&self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for tag in self.tags.values() {
            *counts.entry(tag.class_id).or_insert(0) += 1;
        }
        counts
    }

    fn remove_where<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        doomed: impl Fn(&Tag) -> bool,
    ) -> Result<usize, KernelError> {
        let flows: Vec<Flow> = self
            .tags
            .iter()
            .filter(|(_, tag)| doomed(tag))
            .map(|(flow, _)| *flow)
            .collect();
        for flow in &flows {
            dp.delete_flow_tags(&flow.keys())?;
            self.tags.remove(flow);
        }
        Ok(flows.len())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> Result<u64, TagError> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .map_err(|source| TagError::Clock { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::FakeDataplane;

    fn flow(src: &str, dst: &str) -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn a_tag_covers_both_directions_and_either_name_of_the_connection() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(10);
        let f = flow("10.0.0.1:40000", "10.0.0.2:3306");
        let tag = Tag {
            class_id: 7,
            origin: 0,
            expires_ns: 100,
        };
        table.tag(&mut dp, &f, tag, 0).unwrap();
        assert_eq!(dp.flow_tags.len(), 2);
        assert_eq!(dp.flow_tags[&f.key()].class_id, 7);
        assert_eq!(dp.flow_tags[&f.reversed().key()].class_id, 7);
        assert_eq!(table.get(&f.reversed()), Some(&tag));
        assert!(table.untag(&mut dp, &f.reversed()).unwrap());
        assert!(dp.flow_tags.is_empty());
        assert!(!table.untag(&mut dp, &f).unwrap());
    }

    #[test]
    fn ipv4_keys_put_the_address_first_and_ports_in_network_order() {
        let key = flow("10.0.0.1:40000", "10.0.0.2:3306").key();
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(&key.src_addr[..4], &[10, 0, 0, 1]);
        assert_eq!(&key.src_addr[4..], &[0; 12]);
        assert_eq!(key.dst_port_be.to_ne_bytes(), 3306u16.to_be_bytes());
        let v6 = flow("[fd00::1]:40000", "[fd00::2]:5432").key();
        assert_eq!(v6.family, FAMILY_V6);
        assert_eq!(v6.dst_addr[15], 2);
    }

    #[test]
    fn a_full_table_refuses_after_sweeping_and_never_evicts_live_tags() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(2);
        let live = Tag {
            class_id: 1,
            origin: 0,
            expires_ns: 1_000,
        };
        let soon = Tag {
            class_id: 1,
            origin: 0,
            expires_ns: 10,
        };
        table
            .tag(&mut dp, &flow("10.0.0.1:1", "10.0.0.2:2"), live, 0)
            .unwrap();
        table
            .tag(&mut dp, &flow("10.0.0.1:3", "10.0.0.2:2"), soon, 0)
            .unwrap();
        let third = flow("10.0.0.1:5", "10.0.0.2:2");
        assert!(matches!(
            table.tag(&mut dp, &third, live, 5),
            Err(TagError::Full { capacity: 2 })
        ));
        assert_eq!(table.len(), 2);
        // Re-tagging a held connection is not growth.
        table
            .tag(&mut dp, &flow("10.0.0.2:2", "10.0.0.1:1"), live, 5)
            .unwrap();
        // Once `soon` lapses, its slot is reclaimed by the sweep.
        table.tag(&mut dp, &third, live, 20).unwrap();
        assert_eq!(table.len(), 2);
        assert!(table.get(&flow("10.0.0.1:3", "10.0.0.2:2")).is_none());
        assert_eq!(dp.flow_tags.len(), 4);
    }

    #[test]
    fn a_kernel_refusal_leaves_the_table_unchanged() {
        let mut dp = FakeDataplane {
            flow_tag_capacity: 2,
            ..Default::default()
        };
        let mut table = TagTable::new(10);
        let tag = Tag {
            class_id: 1,
            origin: 0,
            expires_ns: 0,
        };
        table
            .tag(&mut dp, &flow("10.0.0.1:1", "10.0.0.2:2"), tag, 0)
            .unwrap();
        let second = flow("10.0.0.1:3", "10.0.0.2:2");
        assert!(matches!(
            table.tag(&mut dp, &second, tag, 0),
            Err(TagError::Full { .. })
        ));
        assert!(table.get(&second).is_none());
        assert_eq!(dp.flow_tags.len(), 2);
    }

    #[test]
    fn sweep_and_vanished_classes_remove_tags_from_the_kernel() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(10);
        for (port, class_id, expires_ns) in [(1, 1, 10), (2, 1, 100), (3, 2, 100)] {
            table
                .tag(
                    &mut dp,
                    &flow(&format!("10.0.0.1:{port}"), "10.0.0.2:9"),
                    Tag {
                        class_id,
                        origin: 0,
                        expires_ns,
                    },
                    0,
                )
                .unwrap();
        }
        assert_eq!(table.sweep(&mut dp, 50).unwrap(), 1);
        assert_eq!(dp.flow_tags.len(), 4);
        assert_eq!(
            table.retain_classes(&mut dp, &BTreeSet::from([2])).unwrap(),
            1
        );
        assert_eq!(dp.flow_tags.len(), 2);
        assert_eq!(table.count_by_class(), BTreeMap::from([(2, 1)]));
    }

    #[test]
    fn adopting_keeps_whole_pairs_and_hands_back_halves() {
        let mut table = TagTable::new(10);
        let whole = flow("10.0.0.1:1", "10.0.0.2:5432");
        let half = flow("10.0.0.1:2", "10.0.0.2:5432");
        let value = FlowTag {
            class_id: 4,
            origin: pisa_daemon_common::TAG_ORIGIN_SQL,
            expires_ns: 99,
        };
        let orphans = table.adopt(&[
            (whole.key(), value),
            (whole.reversed().key(), value),
            (half.key(), value),
        ]);
        assert_eq!(orphans, vec![half.key()]);
        assert_eq!(table.len(), 1);
        let tag = table.get(&whole).unwrap();
        assert_eq!((tag.class_id, tag.origin, tag.expires_ns), (4, 1, 99));
        assert_eq!(Flow::from_key(&half.key()), Some(half));
    }
}
