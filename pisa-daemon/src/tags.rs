//! Flow tags from the SQL proxy: which connection carries which class, and
//! until when. This table is the userspace side of `FLOW_TAGS`: it bounds
//! the number of tags (a full table evicts the tag that would lapse
//! soonest, and counts it), sweeps expired tags out of the kernel, and
//! drops tags whose class went away.
//!
//! A connection is one map entry under its canonical direction
//! (`FlowKey::canonical`), which the program looks up for packets of
//! either direction, so requests and responses are both shaped whichever
//! way the proxy names the tuple. Tags live only
//! as long as the daemon: a restarted daemon clears them and changes its
//! generation, and the proxy re-tags.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use indexmap::IndexMap;
use pisa_daemon_common::{FlowKey, FlowTag, FAMILY_V4, FAMILY_V6};

use crate::kernel::{Dataplane, FlowTagWrite, KernelError, Protocol};

/// Connections tagged at once unless `--max-flow-tags` says otherwise.
pub const DEFAULT_TAGS: usize = pisa_daemon_common::DEFAULT_FLOW_TAG_CONNECTIONS as usize;
/// The most `--max-flow-tags` may ask for; each connection takes two
/// kernel entries.
pub const MAX_TAGS: usize = pisa_daemon_common::MAX_FLOW_TAG_CONNECTIONS as usize;
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
        "{connections} connections in one request are more than the flow-tag table holds \
         ({capacity}, --max-flow-tags); send at most {capacity}"
    )]
    Full { connections: usize, capacity: usize },
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

/// How many tags sampled at random the eviction compares when the table
/// is full (a table this small or smaller is compared whole).
const EVICTION_SAMPLE: usize = 16;

/// Live tags displaced to make room, by who had tagged them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub proxy: u64,
    pub sql: u64,
}

/// The tags in force, keyed by the canonical direction's map key (40 bytes
/// a connection, where a `Flow` takes 68).
///
/// A full table never refuses: the tag that would lapse soonest among
/// `EVICTION_SAMPLE` sampled at random (an expired one if the sample holds
/// any) makes room, and a live one displaced so is counted in `Evictions`.
/// Proxies re-tag live connections, so the soonest to lapse is
/// approximately the least recently tagged: an LRU by tag time, without
/// the ordered index an exact LRU would need for a million entries.
#[derive(Debug)]
pub struct TagTable {
    capacity: usize,
    tags: IndexMap<FlowKey, Tag>,
    /// No tag lapses before this (a lower bound): a sweep before it has
    /// nothing to do and does not walk the table.
    earliest_expiry: u64,
    evictions: Evictions,
    /// xorshift64 state for sampling victims.
    sample_state: u64,
}

/// What one tagging call did besides tagging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tagged {
    /// Live tags of other connections displaced to make room.
    pub evicted: usize,
}

impl TagTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tags: IndexMap::new(),
            earliest_expiry: u64::MAX,
            evictions: Evictions::default(),
            sample_state: 0x9E37_79B9_7F4A_7C15,
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

    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    pub fn get(&self, flow: &Flow) -> Option<&Tag> {
        self.tags.get(&flow.key().canonical())
    }

    /// Tags (or re-tags) a connection, evicting another if the table is
    /// full.
    pub fn tag<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        flow: &Flow,
        tag: Tag,
        now_ns: u64,
    ) -> Result<Tagged, TagError> {
        self.tag_all(dp, &[(*flow, tag)], now_ns)
    }

    /// Tags many connections in one kernel write, all or none (a later
    /// entry for the same connection wins). Room for the new ones is made
    /// first by eviction; tags evicted stay evicted if the write then
    /// fails.
    pub fn tag_all<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        batch: &[(Flow, Tag)],
        now_ns: u64,
    ) -> Result<Tagged, TagError> {
        let wanted = later_wins(batch);
        let mut held: Vec<Option<usize>> = wanted
            .iter()
            .map(|(key, _)| self.tags.get_index_of(key))
            .collect();
        let new = held.iter().filter(|slot| slot.is_none()).count();
        if new > self.capacity {
            return Err(TagError::Full {
                connections: new,
                capacity: self.capacity,
            });
        }
        let room = self.capacity - self.tags.len();
        let mut evicted = 0;
        if new > room {
            let keep: HashSet<FlowKey> = wanted.iter().map(|(key, _)| *key).collect();
            evicted = self
                .evict(dp, new - room, &keep, now_ns)
                .map_err(|source| TagError::Kernel { source })?;
            // Eviction moves entries within the table.
            held = wanted
                .iter()
                .map(|(key, _)| self.tags.get_index_of(key))
                .collect();
        }
        let writes: Vec<FlowTagWrite> = wanted
            .iter()
            .zip(&held)
            .map(|((key, tag), slot)| FlowTagWrite {
                key: *key,
                tag: kernel_value(tag),
                previous: slot
                    .and_then(|i| self.tags.get_index(i))
                    .map(|(_, tag)| kernel_value(tag)),
            })
            .collect();
        dp.put_flow_tags(&writes)
            .map_err(|source| TagError::Kernel { source })?;
        for ((key, tag), slot) in wanted.into_iter().zip(held) {
            self.earliest_expiry = self.earliest_expiry.min(lapse(&tag));
            match slot.and_then(|i| self.tags.get_index_mut(i)) {
                Some((_, held)) => *held = tag,
                None => {
                    self.tags.insert(key, tag);
                }
            }
        }
        Ok(Tagged { evicted })
    }

    /// Removes `count` tags not in `keep`: expired ones if the samples
    /// find them, else live ones (counted).
    fn evict<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        count: usize,
        keep: &HashSet<FlowKey>,
        now_ns: u64,
    ) -> Result<usize, KernelError> {
        let mut victims: Vec<FlowKey> = Vec::with_capacity(count);
        let mut live = Evictions::default();
        for _ in 0..count {
            let Some(index) = self.pick_victim(keep) else {
                break;
            };
            let Some((key, tag)) = self.tags.swap_remove_index(index) else {
                break;
            };
            if lapse(&tag) > now_ns {
                match tag.origin {
                    pisa_daemon_common::TAG_ORIGIN_SQL => live.sql += 1,
                    _ => live.proxy += 1,
                }
            }
            victims.push(key);
        }
        // The victims are gone from the table whatever the kernel says: a
        // key the kernel failed to delete is retried by no one, but it
        // lapses there on its own (every tag has an expiry).
        dp.delete_flow_tags(&victims)?;
        self.evictions.proxy += live.proxy;
        self.evictions.sql += live.sql;
        Ok((live.proxy + live.sql) as usize)
    }

    /// The index of the sampled tag that lapses soonest, skipping `keep`.
    fn pick_victim(&mut self, keep: &HashSet<FlowKey>) -> Option<usize> {
        let len = self.tags.len();
        let candidates: Vec<usize> = if len <= EVICTION_SAMPLE {
            (0..len).collect()
        } else {
            (0..EVICTION_SAMPLE)
                .map(|_| (self.next_random() % len as u64) as usize)
                .collect()
        };
        candidates
            .into_iter()
            .filter_map(|i| self.tags.get_index(i).map(|(key, tag)| (i, key, tag)))
            .filter(|(_, key, _)| !keep.contains(*key))
            .min_by_key(|(_, _, tag)| lapse(tag))
            .map(|(i, _, _)| i)
            .or_else(|| {
                // Every sampled tag is being re-tagged: take any other.
                self.tags.keys().position(|key| !keep.contains(key))
            })
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.sample_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.sample_state = x;
        x
    }

    /// Takes over tags already in the kernel (a restarted daemon's own
    /// SQL-identity tags). An entry that is not a connection's canonical
    /// direction (an earlier release kept one per direction), or beyond
    /// capacity, or unreadable, is returned for removal.
    pub fn adopt(&mut self, entries: &[(FlowKey, FlowTag)]) -> Vec<FlowKey> {
        let mut orphans = Vec::new();
        for (key, tag) in entries {
            let readable = Flow::from_key(key).is_some();
            if !readable || key.canonical() != *key || self.tags.len() >= self.capacity {
                orphans.push(*key);
                continue;
            }
            let tag = Tag {
                class_id: tag.class_id,
                origin: tag.origin,
                expires_ns: tag.expires_ns,
            };
            self.earliest_expiry = self.earliest_expiry.min(lapse(&tag));
            self.tags.insert(*key, tag);
        }
        orphans
    }

    /// Removes a connection's tag; returns whether it had one.
    pub fn untag<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        flow: &Flow,
    ) -> Result<bool, KernelError> {
        let key = flow.key().canonical();
        if !self.tags.contains_key(&key) {
            return Ok(false);
        }
        dp.delete_flow_tags(&[key])?;
        self.tags.swap_remove(&key);
        Ok(true)
    }

    /// Removes tags that expired by `now_ns`; returns how many. Walks the
    /// table only when some tag may have lapsed.
    pub fn sweep<D: Dataplane + ?Sized>(
        &mut self,
        dp: &mut D,
        now_ns: u64,
    ) -> Result<usize, KernelError> {
        if self.earliest_expiry > now_ns {
            return Ok(0);
        }
        let removed = self.remove_where(dp, |tag| lapse(tag) <= now_ns)?;
        self.earliest_expiry = self.tags.values().map(lapse).min().unwrap_or(u64::MAX);
        Ok(removed)
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
        let keys: Vec<FlowKey> = self
            .tags
            .iter()
            .filter(|(_, tag)| doomed(tag))
            .map(|(key, _)| *key)
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        dp.delete_flow_tags(&keys)?;
        self.tags.retain(|_, tag| !doomed(tag));
        Ok(keys.len())
    }
}

/// The batch's connections by canonical key, in order, each with the
/// last tag the batch gives it.
fn later_wins(batch: &[(Flow, Tag)]) -> Vec<(FlowKey, Tag)> {
    let mut wanted: Vec<(FlowKey, Tag)> = Vec::with_capacity(batch.len());
    if let [(flow, tag)] = batch {
        wanted.push((flow.key().canonical(), *tag));
        return wanted;
    }
    let mut at: HashMap<FlowKey, usize> = HashMap::with_capacity(batch.len());
    for (flow, tag) in batch {
        let key = flow.key().canonical();
        match at.entry(key) {
            std::collections::hash_map::Entry::Occupied(slot) => wanted[*slot.get()].1 = *tag,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(wanted.len());
                wanted.push((key, *tag));
            }
        }
    }
    wanted
}

/// When a tag stops counting; a tag without expiry (0) never does.
fn lapse(tag: &Tag) -> u64 {
    match tag.expires_ns {
        0 => u64::MAX,
        at => at,
    }
}

fn kernel_value(tag: &Tag) -> FlowTag {
    FlowTag {
        class_id: tag.class_id,
        origin: tag.origin,
        expires_ns: tag.expires_ns,
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
    fn a_tag_is_one_entry_under_the_canonical_direction_whichever_name_is_given() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(10);
        let f = flow("10.0.0.1:40000", "10.0.0.2:3306");
        let tag = Tag {
            class_id: 7,
            origin: 0,
            expires_ns: 100,
        };
        // Named from the server's side: still the client's direction
        // (10.0.0.1 sorts first) in the kernel.
        table.tag(&mut dp, &f.reversed(), tag, 0).unwrap();
        assert_eq!(dp.flow_tags.len(), 1);
        assert_eq!(dp.flow_tags[&f.key()].class_id, 7);
        assert!(f.key().is_canonical() && !f.reversed().key().is_canonical());
        assert_eq!(table.get(&f), Some(&tag));
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

    fn tag_at(class_id: u32, expires_ns: u64) -> Tag {
        Tag {
            class_id,
            origin: 0,
            expires_ns,
        }
    }

    #[test]
    fn a_full_table_evicts_the_tag_that_lapses_soonest_and_counts_it_if_live() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(2);
        let (a, b, c, d) = (
            flow("10.0.0.1:1", "10.0.0.2:2"),
            flow("10.0.0.1:3", "10.0.0.2:2"),
            flow("10.0.0.1:5", "10.0.0.2:2"),
            flow("10.0.0.1:7", "10.0.0.2:2"),
        );
        table.tag(&mut dp, &a, tag_at(1, 1_000), 0).unwrap();
        table.tag(&mut dp, &b, tag_at(1, 10), 0).unwrap();
        // Re-tagging a held connection is not growth.
        let retag = table
            .tag(&mut dp, &a.reversed(), tag_at(1, 1_000), 5)
            .unwrap();
        assert_eq!(retag, Tagged { evicted: 0 });
        // `b` lapses first, and is still live at 5: evicted and counted.
        let tagged = table.tag(&mut dp, &c, tag_at(2, 3_000), 5).unwrap();
        assert_eq!(tagged, Tagged { evicted: 1 });
        assert_eq!(table.evictions(), Evictions { proxy: 1, sql: 0 });
        assert!(table.get(&b).is_none());
        assert_eq!(dp.flow_tags.len(), 2);
        assert!(!dp.flow_tags.contains_key(&b.key()));
        // At 2000 `a` has expired: making room with it evicts nothing live.
        let tagged = table.tag(&mut dp, &d, tag_at(2, 3_000), 2_000).unwrap();
        assert_eq!(tagged, Tagged { evicted: 0 });
        assert!(table.get(&a).is_none());
        assert_eq!(table.evictions(), Evictions { proxy: 1, sql: 0 });
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_batch_is_written_once_and_the_later_tag_of_a_connection_wins() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(10);
        let (a, b) = (
            flow("10.0.0.1:1", "10.0.0.2:2"),
            flow("10.0.0.1:3", "10.0.0.2:2"),
        );
        let batch = [
            (a, tag_at(1, 100)),
            (b, tag_at(1, 100)),
            (a.reversed(), tag_at(3, 100)),
        ];
        table.tag_all(&mut dp, &batch, 0).unwrap();
        assert_eq!(dp.log, vec!["put_flow_tags 2".to_string()]);
        assert_eq!(table.get(&a).unwrap().class_id, 3);
        assert_eq!(dp.flow_tags[&a.key()].class_id, 3);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_batch_larger_than_the_table_is_refused_whole() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(2);
        let held = flow("10.0.0.1:1", "10.0.0.2:2");
        table.tag(&mut dp, &held, tag_at(1, 100), 0).unwrap();
        let batch: Vec<(Flow, Tag)> = (10..13)
            .map(|port| {
                (
                    flow(&format!("10.0.0.1:{port}"), "10.0.0.2:2"),
                    tag_at(1, 100),
                )
            })
            .collect();
        let error = table.tag_all(&mut dp, &batch, 0).unwrap_err();
        assert!(matches!(
            error,
            TagError::Full {
                connections: 3,
                capacity: 2
            }
        ));
        assert!(error.to_string().contains("--max-flow-tags"), "{error}");
        assert!(table.get(&held).is_some());
        assert_eq!(dp.flow_tags.len(), 1);
        assert_eq!(table.evictions(), Evictions::default());
    }

    #[test]
    fn a_kernel_refusal_leaves_the_table_unchanged() {
        let mut dp = FakeDataplane {
            flow_tag_capacity: 1,
            ..Default::default()
        };
        let mut table = TagTable::new(10);
        table
            .tag(&mut dp, &flow("10.0.0.1:1", "10.0.0.2:2"), tag_at(1, 0), 0)
            .unwrap();
        let second = flow("10.0.0.1:3", "10.0.0.2:2");
        assert!(matches!(
            table.tag(&mut dp, &second, tag_at(1, 0), 0),
            Err(TagError::Kernel { .. })
        ));
        assert!(table.get(&second).is_none());
        assert_eq!(dp.flow_tags.len(), 1);
    }

    #[test]
    fn a_sweep_before_the_earliest_expiry_touches_nothing() {
        let mut dp = FakeDataplane::default();
        let mut table = TagTable::new(10);
        table
            .tag(
                &mut dp,
                &flow("10.0.0.1:1", "10.0.0.2:2"),
                tag_at(1, 100),
                0,
            )
            .unwrap();
        dp.log.clear();
        assert_eq!(table.sweep(&mut dp, 99).unwrap(), 0);
        assert!(dp.log.is_empty(), "{:?}", dp.log);
        assert_eq!(table.sweep(&mut dp, 100).unwrap(), 1);
        assert_eq!(dp.log, vec!["delete_flow_tags 1".to_string()]);
        assert!(table.is_empty());
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
        assert_eq!(dp.flow_tags.len(), 2);
        assert_eq!(
            table.retain_classes(&mut dp, &BTreeSet::from([2])).unwrap(),
            1
        );
        assert_eq!(dp.flow_tags.len(), 1);
        assert_eq!(table.count_by_class(), BTreeMap::from([(2, 1)]));
    }

    #[test]
    fn adopting_keeps_canonical_entries_and_hands_back_an_earlier_release_s_other_halves() {
        let mut table = TagTable::new(10);
        let whole = flow("10.0.0.1:1", "10.0.0.2:5432");
        let other = flow("10.0.0.1:2", "10.0.0.2:5432");
        let value = FlowTag {
            class_id: 4,
            origin: pisa_daemon_common::TAG_ORIGIN_SQL,
            expires_ns: 99,
        };
        // An earlier release's pair for `whole`; only the server's half of
        // `other` survived.
        let orphans = table.adopt(&[
            (whole.key(), value),
            (whole.reversed().key(), value),
            (other.reversed().key(), value),
        ]);
        assert_eq!(
            orphans,
            vec![whole.reversed().key(), other.reversed().key()]
        );
        assert_eq!(table.len(), 1);
        let tag = table.get(&whole).unwrap();
        assert_eq!((tag.class_id, tag.origin, tag.expires_ns), (4, 1, 99));
        assert_eq!(Flow::from_key(&other.key()), Some(other));
    }
}
