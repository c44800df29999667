//! Potluck's Kubernetes API: the `StoragePool`, `StorageNode`, `Bucket` and `Share` custom resources
//! (`potluck.dev/v1alpha1`), shared by the operator and the node agent.
//!
//! The CRDs in `deploy/crds.yaml` are generated from these types by
//! `cargo run --bin crdgen > deploy/crds.yaml`, never edited by hand; a unit test fails when
//! the committed file and the types disagree.

pub mod bucket;
pub mod condition;
pub mod duration;
pub mod node;
pub mod pool;
pub mod share;

#[cfg(test)]
mod crd_tests;

pub use bucket::{Bucket, BucketError, BucketSpec, BucketStatus};
pub use node::{NodePhase, StorageNode, StorageNodeSpec, StorageNodeStatus};
pub use pool::{
    PoolHealth, PoolParams, SpecError, StoragePool, StoragePoolSpec, StoragePoolStatus,
};
pub use share::{Share, ShareSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Potluck resource.
pub const GROUP: &str = "potluck.dev";
/// The one version served and stored.
pub const VERSION: &str = "v1alpha1";

/// The command that regenerates `deploy/crds.yaml`.
pub const CRDGEN_COMMAND: &str = "cargo run --bin crdgen > deploy/crds.yaml";

/// Every CRD of the project, in the order they are written to `deploy/crds.yaml`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        StoragePool::crd(),
        StorageNode::crd(),
        Bucket::crd(),
        Share::crd(),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum CrdYamlError {
    #[error("cannot convert a CRD to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write a CRD as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// The CRDs as one multi-document YAML file, exactly as `deploy/crds.yaml` should read.
///
/// Mapping keys are sorted at every level, so that the output does not depend on whether some
/// crate in the build turns on `serde_json`'s `preserve_order`.
pub fn crds_yaml() -> Result<String, CrdYamlError> {
    let mut out = format!(
        "# Generated from the Rust types in api/ by `{CRDGEN_COMMAND}`.\n\
         # Do not edit: change the types and regenerate.\n"
    );
    for crd in crds() {
        let value = sorted(serde_json::to_value(&crd)?);
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&value)?);
    }
    Ok(out)
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
