//! Where desired state comes from. `file`: a YAML file or a directory of
//! them (the embedded default); `kube`: QoSClaims and VirtualDatabases from
//! the API server, and `pods`: the Pods of this node, whose interfaces are
//! attached while they run; `tags`: the connections the SQL proxy tagged.

pub mod file;
pub mod kube;
#[cfg(test)]
pub(crate) mod mock_api;
pub mod pods;
pub mod tags;
