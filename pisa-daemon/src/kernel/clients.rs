//! The `CLIENTS` trie: client prefixes of endpoint rules that claims with
//! client selectors share, each pointing at the selecting claim's class.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, LpmTrie, MapError};
use pisa_daemon_common::{names::MAP_CLIENTS, ClientMatch, ClientRule};

use super::{maps::map_err, Kernel, KernelError, RuleMatch};
use crate::model::{ClientPrefix, RuleTarget};

impl Kernel {
    pub(super) fn insert_client(
        &mut self,
        client: &ClientPrefix,
        class_id: u32,
    ) -> Result<(), KernelError> {
        let (prefix_len, data) = client.to_kernel();
        let mut trie: LpmTrie<_, ClientMatch, ClientRule> =
            LpmTrie::try_from(self.map_mut(MAP_CLIENTS)?)
                .map_err(map_err(MAP_CLIENTS, "opening"))?;
        let value = ClientRule {
            class_id,
            addr_prefix_len: u32::from(client.client.len),
        };
        trie.insert(&Key::new(prefix_len, data), value, 0)
            .map_err(map_err(MAP_CLIENTS, "inserting"))
    }

    /// Removes a client prefix; an absent one is fine.
    pub(super) fn remove_client(&mut self, client: &ClientPrefix) -> Result<(), KernelError> {
        let (prefix_len, data) = client.to_kernel();
        let mut trie: LpmTrie<_, ClientMatch, ClientRule> =
            LpmTrie::try_from(self.map_mut(MAP_CLIENTS)?)
                .map_err(map_err(MAP_CLIENTS, "opening"))?;
        match trie.remove(&Key::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_err(MAP_CLIENTS, "removing")(source)),
        }
    }

    /// The pinned client prefixes (adoption). A key carries no address
    /// family, so it is taken from the endpoint rule with that id; entries
    /// of no current rule are stale and read as IPv6 so the next reconcile
    /// removes them.
    pub(super) fn read_client_prefixes(
        &self,
        rules: &BTreeMap<RuleMatch, RuleTarget>,
    ) -> Result<BTreeMap<ClientPrefix, u32>, KernelError> {
        let v4_rules: BTreeMap<u16, bool> = rules
            .iter()
            .filter(|(_, t)| t.clients)
            .map(|(r, t)| (t.rule_id, r.addr.is_ipv4()))
            .collect();
        let trie: LpmTrie<_, ClientMatch, ClientRule> =
            LpmTrie::try_from(self.map(MAP_CLIENTS)?).map_err(map_err(MAP_CLIENTS, "opening"))?;
        let mut out = BTreeMap::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(MAP_CLIENTS, "listing"))?;
            let value = trie.get(&key, 0).map_err(map_err(MAP_CLIENTS, "reading"))?;
            let data = key.data();
            let v4 = u16::try_from(data.rule_id)
                .ok()
                .and_then(|id| v4_rules.get(&id).copied())
                .unwrap_or(false);
            if let Some(client) = ClientPrefix::from_kernel(key.prefix_len(), &data, v4) {
                out.insert(client, value.class_id);
            }
        }
        Ok(out)
    }
}
