//! The QoSClaim API (`core.database-mesh.io/v1alpha1`): types, tc units,
//! loading from YAML, and validation. No I/O happens here: callers hand in
//! text and get typed claims or precise errors back.

mod batch;
mod claim;
mod doc_cache;
mod link_rate;
mod load;
mod overlap;
mod report;
mod snapshot;
mod status;
pub mod units;
mod validate;

pub use batch::{check, Checked};
pub use claim::*;
pub use doc_cache::DocumentCache;
pub use link_rate::{parse_link_rates, LinkRateError};
pub use load::{load_documents, Document};
pub use overlap::overlaps;
pub use report::{QoSNodeReportResource, QoSNodeReportSpec, ReportCounts, ReportedClaim};
pub use snapshot::SourceSnapshot;
pub use status::{ClaimCondition, ClaimStatus, NodePhase, Phase};
pub use validate::{
    check_one, key_of, validate, ClaimError, Limits, PodClients, ValidClaim, Validated,
};

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;

/// The CRDs by plural, as `manifests/crd/<plural>.yaml` holds them
/// (`cargo xtask codegen` writes those files from this).
pub const CRD_NAMES: [&str; 2] = ["qosclaims", "qosnodereports"];

/// One CRD as YAML: `qosclaims` or `qosnodereports`.
pub fn crd_yaml(plural: &str) -> Result<String, CrdError> {
    let crd = match plural {
        "qosclaims" => <QoSClaimResource as kube::CustomResourceExt>::crd(),
        "qosnodereports" => <QoSNodeReportResource as kube::CustomResourceExt>::crd(),
        other => {
            return Err(CrdError::Unknown {
                name: other.to_owned(),
                valid: CRD_NAMES.join(", "),
            })
        }
    };
    Ok(format!(
        "# Generated from pisa-daemon/src/spec by `cargo xtask codegen`; do not edit.\n{}",
        serde_norway::to_string(&crd)?
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("crd `{name}`: no such CRD; valid: {valid}")]
    Unknown { name: String, valid: String },
    #[error("rendering the CRD as YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

#[cfg(test)]
mod crd_tests {
    #[test]
    fn committed_crds_match_the_rust_types() {
        for name in super::CRD_NAMES {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../manifests/crd/{name}.yaml"));
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask codegen`", path.display()));
            assert!(
                committed == super::crd_yaml(name).unwrap(),
                "{} is stale: run `cargo xtask codegen` and commit the result",
                path.display()
            );
        }
    }

    #[test]
    fn an_unknown_crd_name_lists_the_valid_ones() {
        let error = super::crd_yaml("qosclaim").unwrap_err().to_string();
        assert_eq!(
            error,
            "crd `qosclaim`: no such CRD; valid: qosclaims, qosnodereports"
        );
    }
}
