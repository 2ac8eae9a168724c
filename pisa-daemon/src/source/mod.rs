//! Where desired state comes from. `file`: a YAML file or a directory of
//! them (the embedded default).

pub mod file;
pub mod kube;
pub mod tags;
