//! The QoSClaim API (`core.database-mesh.io/v1alpha1`): types, tc units,
//! loading from YAML, and validation. No I/O happens here: callers hand in
//! text and get typed claims or precise errors back.

mod batch;
mod claim;
mod load;
mod overlap;
mod snapshot;
mod status;
pub mod units;
mod validate;

pub use batch::{check, Checked};
pub use claim::*;
pub use load::{load_documents, Document};
pub use overlap::overlaps;
pub use snapshot::SourceSnapshot;
pub use status::{ClaimStatus, Phase};
pub use validate::{validate, ClaimError, Limits, PodClients, ValidClaim, Validated};

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;

/// The QoSClaim CRD as YAML, exactly as `manifests/crd/qosclaims.yaml`
/// holds it (`cargo xtask codegen` writes that file from this).
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let crd = <QoSClaimResource as kube::CustomResourceExt>::crd();
    Ok(format!(
        "# Generated from pisa-daemon/src/spec by `cargo xtask codegen`; do not edit.\n{}",
        serde_norway::to_string(&crd)?
    ))
}

#[cfg(test)]
mod crd_tests {
    #[test]
    fn committed_crd_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/crd/qosclaims.yaml");
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask codegen`", path.display()));
        assert!(
            committed == super::crd_yaml().unwrap(),
            "{} is stale: run `cargo xtask codegen` and commit the result",
            path.display()
        );
    }
}
