//! The one front end for checking a batch of claim sources. The agent, the
//! CLI's `validate` and the API's `Validate` all go through `check`, so the
//! same text gets the same errors and the same warnings wherever it is
//! checked (before, each did its own loading and only shared the validator).

use std::collections::BTreeMap;

use super::{overlaps, validate, ClaimError, ClaimKey, Limits, SourceSnapshot, Validated};

/// What a batch of sources amounts to.
#[derive(Debug, Default)]
pub struct Checked {
    /// The documents of every readable source, validated together (so a
    /// claim defined twice across files is caught).
    pub validated: Validated,
    /// Sources whose YAML stream could not be read at all, by name: their
    /// claims are unknown, so a caller keeps what it had from them.
    pub unreadable: Vec<(String, ClaimError)>,
    /// Valid claims whose selectors can match the same connections as
    /// another claim's, with one line per overlap.
    pub overlaps: BTreeMap<ClaimKey, Vec<String>>,
}

impl Checked {
    /// Every error: unreadable sources first, then claim by claim, then
    /// those that cannot be pinned on a claim.
    pub fn errors(&self) -> Vec<&ClaimError> {
        self.unreadable
            .iter()
            .map(|(_, error)| error)
            .chain(self.validated.errors())
            .collect()
    }

    /// The overlaps as lines that name their claim (`validate` prints them).
    pub fn warnings(&self) -> Vec<String> {
        self.overlaps
            .iter()
            .flat_map(|(claim, lines)| lines.iter().map(move |l| format!("claim {claim}: {l}")))
            .collect()
    }

    pub fn valid_claims(&self) -> usize {
        self.validated.valid.len()
    }
}

/// Loads nothing (sources arrive read) and decides everything else.
pub fn check(sources: &[SourceSnapshot], limits: Limits) -> Checked {
    let mut documents = Vec::new();
    let mut unreadable = Vec::new();
    for source in sources {
        match &source.documents {
            Ok(docs) => documents.extend(docs.iter().cloned()),
            Err(error) => unreadable.push((source.name.clone(), error.clone())),
        }
    }
    let validated = validate(&documents, limits);
    let overlaps = overlaps(&validated.valid);
    Checked {
        validated,
        unreadable,
        overlaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::load_documents;

    fn source(name: &str, text: &str) -> SourceSnapshot {
        SourceSnapshot {
            name: name.into(),
            documents: load_documents(name, text),
        }
    }

    const LIMITS: Limits = Limits {
        max_classes: 10,
        edt_available: false,
        pod_selectors: false,
    };

    fn claim(name: &str, rate: &str, extra: &str) -> String {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}}}\n\
             spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}}}\n    \
             endpoints: [{{host: 10.0.0.5, port: 5432}}]\n{extra}"
        )
    }

    #[test]
    fn errors_of_every_kind_come_out_together_and_in_order() {
        let checked = check(
            &[
                source("broken.yaml", "key: [unclosed\n"),
                source("a.yaml", &claim("orders", "10mbit", "")),
                source("b.yaml", &claim("reports", "fast", "")),
            ],
            LIMITS,
        );
        let errors: Vec<String> = checked.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].contains("broken.yaml"), "{errors:#?}");
        assert!(
            errors[1].contains("rate") && errors[1].contains("fast"),
            "{errors:#?}"
        );
        assert_eq!(checked.unreadable[0].0, "broken.yaml");
        assert_eq!(checked.valid_claims(), 1);
    }

    #[test]
    fn a_claim_defined_in_two_sources_is_caught_across_them() {
        let checked = check(
            &[
                source("a.yaml", &claim("orders", "10mbit", "")),
                source("b.yaml", &claim("orders", "20mbit", "")),
            ],
            LIMITS,
        );
        assert_eq!(checked.valid_claims(), 0);
        let errors: Vec<String> = checked.errors().iter().map(|e| e.to_string()).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("a.yaml") && e.contains("b.yaml")),
            "{errors:#?}"
        );
    }

    #[test]
    fn overlapping_selectors_are_warnings_naming_both_claims() {
        let sql = "    sql: {users: [reporter]}\n    direction: both\n";
        let checked = check(
            &[
                source("a.yaml", &claim("one", "10mbit", sql)),
                source("b.yaml", &claim("two", "10mbit", sql)),
            ],
            LIMITS,
        );
        assert!(checked.errors().is_empty(), "{:#?}", checked.errors());
        let warnings = checked.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("claim default/one:") && w.contains("two")),
            "{warnings:#?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("claim default/two:") && w.contains("one")),
            "{warnings:#?}"
        );
    }
}
