//! The userspace side of `RULE_PORTS`: how many exact-port rules name each
//! (side, port), so a port's bit is set while at least one does and
//! cleared when the last goes. The program skips a side's exact-port
//! lookup when the bit is clear, so a bit must be set before its rule is
//! written and cleared only after its last rule is gone.

use std::collections::BTreeMap;

use pisa_daemon_common::{rule_port_bit, RULE_PORT_WORDS, SIDE_DST, SIDE_SRC};

use crate::model::{RuleMatch, Side};

#[derive(Debug, Default)]
pub struct RulePorts {
    counts: BTreeMap<(u8, u16), u32>,
}

/// A `RULE_PORTS` entry to write: (word index, value).
pub type PortWord = (u32, u64);

impl RulePorts {
    pub fn from_rules<'a>(rules: impl Iterator<Item = &'a RuleMatch>) -> Self {
        let mut ports = Self::default();
        for rule in rules {
            ports.add(rule);
        }
        ports
    }

    /// Counts a new rule; the word to write when its port's bit turns on.
    pub fn add(&mut self, rule: &RuleMatch) -> Option<PortWord> {
        let slot = slot(rule)?;
        let count = self.counts.entry(slot).or_default();
        *count += 1;
        (*count == 1).then(|| self.word_of(slot))
    }

    /// Uncounts a removed rule; the word to write when its port's bit
    /// turns off.
    pub fn remove(&mut self, rule: &RuleMatch) -> Option<PortWord> {
        let slot = slot(rule)?;
        let count = self.counts.get_mut(&slot)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.counts.remove(&slot);
        Some(self.word_of(slot))
    }

    /// Every word of the map, for a start that found the map holding
    /// whatever an earlier run left.
    pub fn all_words(&self) -> Vec<PortWord> {
        let mut words = vec![0u64; RULE_PORT_WORDS as usize];
        for &(side, port) in self.counts.keys() {
            let (index, bit) = rule_port_bit(side, port);
            words[index as usize] |= bit;
        }
        (0..RULE_PORT_WORDS).zip(words).collect()
    }

    fn word_of(&self, (side, port): (u8, u16)) -> PortWord {
        let first = port & !63;
        let (index, _) = rule_port_bit(side, port);
        let value = self
            .counts
            .range((side, first)..=(side, first | 63))
            .fold(0u64, |word, (&(s, p), _)| word | rule_port_bit(s, p).1);
        (index, value)
    }
}

/// The (side, port) a rule's bit stands for; `None` for any-port rules,
/// which the program always looks up.
fn slot(rule: &RuleMatch) -> Option<(u8, u16)> {
    let side = match rule.side {
        Side::Destination => SIDE_DST,
        Side::Source => SIDE_SRC,
    };
    (rule.port != 0).then_some((side, rule.port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn rule(side: Side, host: &str, port: u16) -> RuleMatch {
        RuleMatch {
            side,
            addr: host.parse().unwrap(),
            prefix_len: 32,
            protocol: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn a_ports_bit_stays_while_any_rule_names_it() {
        let mut ports = RulePorts::default();
        let a = rule(Side::Destination, "10.0.0.1", 5432);
        let b = rule(Side::Destination, "10.0.0.2", 5432);
        let (index, bit) = rule_port_bit(SIDE_DST, 5432);
        assert_eq!(ports.add(&a), Some((index, bit)));
        assert_eq!(ports.add(&b), None, "already set");
        // A neighbour in the same word keeps 5432's bit in what is written.
        let near = rule(Side::Destination, "10.0.0.3", 5433);
        assert_eq!(ports.add(&near), Some((index, bit | bit << 1)));
        assert_eq!(ports.remove(&a), None, "b still names 5432");
        assert_eq!(ports.remove(&b), Some((index, bit << 1)));
        assert_eq!(ports.remove(&b), None, "removing twice changes nothing");
    }

    #[test]
    fn sides_have_their_own_bits_and_any_port_rules_none() {
        let mut ports = RulePorts::default();
        let dst = ports.add(&rule(Side::Destination, "10.0.0.1", 3306));
        let src = ports.add(&rule(Side::Source, "10.0.0.1", 3306));
        assert_ne!(dst.map(|w| w.0), src.map(|w| w.0));
        assert_eq!(ports.add(&rule(Side::Source, "10.0.0.9", 0)), None);
        let set: Vec<PortWord> = ports
            .all_words()
            .into_iter()
            .filter(|(_, value)| *value != 0)
            .collect();
        assert_eq!(set.len(), 2);
        assert_eq!(
            ports.all_words().len(),
            RULE_PORT_WORDS as usize,
            "every word, so stale bits are cleared"
        );
    }
}
