//! Maps rebuilt with full nodes before they are kept.
//!
//! A `BTreeMap` filled one insert at a time leaves its nodes about
//! two-thirds full (a node splits in half when it overflows). The daemon
//! keeps several maps with an entry per claim for as long as the claims
//! are in force (the claims, their statuses, the plan, the kernel's view),
//! and at 10,000 claims that empty third is MiBs resident. Built from
//! sorted entries instead, std fills every node but the last few.

use std::collections::BTreeMap;

/// Below this many entries the map is kept as it is: the saving is a
/// few hundred bytes and the rebuild is not free.
const WORTH_PACKING: usize = 256;

/// `map` with its nodes full. Costs one pass over the entries (they come
/// out sorted, so the sort std does before building finds one run).
pub fn packed<K: Ord, V>(map: BTreeMap<K, V>) -> BTreeMap<K, V> {
    if map.len() < WORTH_PACKING {
        return map;
    }
    map.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_every_entry_in_order() {
        let map: BTreeMap<u32, String> = (0..10_000u32)
            .rev()
            .map(|i| (i.wrapping_mul(2_654_435_761) % 100_003, i.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
            .fold(BTreeMap::new(), |mut map, (k, v)| {
                map.insert(k, v);
                map
            });
        let expected: Vec<(u32, String)> = map.clone().into_iter().collect();
        let packed = packed(map);
        assert_eq!(packed.into_iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_small_map_is_left_alone() {
        let map: BTreeMap<u8, u8> = [(3, 1), (1, 2)].into_iter().collect();
        assert_eq!(packed(map.clone()), map);
    }
}
