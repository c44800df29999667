//! `Share`: the record of one share grant (a signed link to one object or a prefix of a
//! bucket), so that grants can be listed and revoked.
//!
//! The link itself is a self-describing signed token that every agent checks alone; this
//! resource exists for what a token cannot do by itself: be listed (`potluck share ls`) and
//! be revoked before it expires (`spec.revoked`, which the operator publishes in the cluster
//! map). Agents create Shares in their own namespace on a CreateShare call made with the
//! bucket's key; anyone with access to that namespace may also revoke one with
//! `kubectl patch share share-<id> --type merge -p '{"spec":{"revoked":true}}'`. The operator
//! deletes Shares whose expiry has passed: an expired token opens nothing anyway.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Share resources are named this followed by the grant id in hex.
pub const NAME_PREFIX: &str = "share-";

/// One share grant.
// kube's `printcolumn(name = .., type_ = ..)` lists look to clippy like repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "potluck.dev",
    version = "v1alpha1",
    kind = "Share",
    plural = "shares",
    shortname = "pshare",
    category = "potluck",
    namespaced,
    derive = "PartialEq",
    doc = "A share grant: a signed link reading one object or prefix of a bucket until it expires or spec.revoked is set.",
    printcolumn(name = "Bucket", type_ = "string", json_path = ".spec.bucket"),
    printcolumn(
        name = "Path",
        type_ = "string",
        json_path = ".spec.path",
        description = "Object key, or prefix when Prefix is true"
    ),
    printcolumn(name = "Prefix", type_ = "boolean", json_path = ".spec.prefix"),
    printcolumn(
        name = "Expires",
        type_ = "integer",
        json_path = ".spec.expiresUnix",
        description = "Unix seconds"
    ),
    printcolumn(name = "Revoked", type_ = "boolean", json_path = ".spec.revoked"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ShareSpec {
    /// The grant id, 32 hex digits (also in the token).
    #[schemars(length(min = 32, max = 32))]
    pub id: String,
    /// The bucket name clients use on the data path.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// An object key, or a prefix when `prefix` is true.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub path: String,
    #[serde(default)]
    pub prefix: bool,
    /// Unix seconds after which the token opens nothing.
    pub expires_unix: i64,
    /// The access key id that signed the token; rotating that key also kills the link.
    #[serde(default)]
    pub access_key_id: String,
    /// Set to true to revoke the link before its expiry; agents refuse it once the map that
    /// carries the revocation reaches them.
    #[serde(default)]
    pub revoked: bool,
}
