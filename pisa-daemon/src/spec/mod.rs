//! The QoSClaim API (`core.database-mesh.io/v1alpha1`): types, tc units,
//! loading from YAML, and validation. No I/O happens here: callers hand in
//! text and get typed claims or precise errors back.

mod claim;
mod load;
pub mod units;
mod validate;

pub use claim::*;
pub use load::{load_documents, Document};
pub use validate::{validate, ClaimError, Limits, ValidClaim, Validated};

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;
