//! `Bucket`: a tenant's bucket, bound to one StoragePool, and the credentials that open it.
//!
//! Buckets are namespaced so that a tenant's namespace holds both the Bucket and its
//! credentials Secret, and RBAC on that namespace decides who may read the keys. The name
//! clients use on the data path is global (agents know buckets by name alone), so two
//! Buckets in different namespaces cannot share one: the older keeps it and the newer reports
//! `NameTaken`.
//!
//! The operator creates the Secret when it is missing. An admin may create it first with
//! their own values (the same keys); it is then used as it is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::pool::MAX_POOL_NAME;

/// Keys of the credentials Secret. `accessKeyId` and `secretAccessKey` are what a client
/// sends; `bucket` and `pool` are there so that the Secret alone says what it opens.
pub const SECRET_ACCESS_KEY_ID: &str = "accessKeyId";
pub const SECRET_SECRET_ACCESS_KEY: &str = "secretAccessKey";
pub const SECRET_BUCKET: &str = "bucket";
pub const SECRET_POOL: &str = "pool";
/// Appended to the Bucket's name when `spec.secretName` is not given.
pub const SECRET_SUFFIX: &str = "-credentials";

/// Bucket names on the data path: what agents accept (3-63 characters of a-z, 0-9, '-' and
/// '.', starting and ending with a letter or digit, no "..").
pub const BUCKET_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// Longest access key id; ids are sent in every request's metadata.
pub const MAX_ACCESS_KEY_ID: usize = 128;
/// Shortest secret the operator accepts in an admin-supplied Secret. Agents store only an
/// unsalted hash of it, which is safe only for secrets nobody can guess: generated ones are
/// 256 random bits in 43 base64url characters.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest secret accepted.
pub const MAX_SECRET_LEN: usize = 256;

/// `Ready` reasons, for people and for tests.
pub const REASON_PUBLISHED: &str = "Published";
pub const REASON_PENDING: &str = "Pending";
pub const REASON_POOL_NOT_FOUND: &str = "PoolNotFound";
pub const REASON_NAME_TAKEN: &str = "NameTaken";
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_INVALID_SECRET: &str = "InvalidSecret";
pub const REASON_KEY_TAKEN: &str = "KeyTaken";

/// A bucket clients reach with the keys in its credentials Secret.
// kube's `printcolumn(name = .., type_ = ..)` lists look to clippy like repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "potluck.dev",
    version = "v1alpha1",
    kind = "Bucket",
    plural = "buckets",
    shortname = "pbucket",
    category = "potluck",
    namespaced,
    status = "BucketStatus",
    derive = "PartialEq",
    validation = default_bucket_name_rule(),
    validation = default_secret_name_rule(),
    doc = "A bucket bound to a StoragePool; the operator publishes it to the agents with the access key in its credentials Secret.",
    printcolumn(
        name = "Bucket",
        type_ = "string",
        json_path = ".status.bucketName",
        description = "Name clients use on the data path"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        description = "StoragePool holding the bucket's objects"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The agents accept the bucket's key"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the bucket is or is not Ready"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        description = "Secret in this namespace holding accessKeyId and secretAccessKey"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Key ID",
        type_ = "string",
        json_path = ".status.accessKeyId",
        priority = 1,
        description = "Public half of the bucket's credentials"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.mapEpoch",
        priority = 1,
        description = "Cluster map epoch that publishes the bucket"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1,
        description = "What to do when the bucket is not Ready"
    )
)]
#[x_kube(validation = bucket_name_immutable_rule())]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    /// StoragePool holding the bucket's objects. Fixed at creation: the objects stay in the
    /// pool they were written to.
    #[schemars(length(min = 1, max = MAX_POOL_NAME))]
    #[x_kube(validation = immutable_rule("pool"))]
    pub pool: String,

    /// The name clients use on the data path, unique across the fleet; defaults to the
    /// Bucket's own name. 3-63 characters of a-z, 0-9, '-' and '.', starting and ending with
    /// a letter or digit. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = bucket_name_rule())]
    pub bucket_name: Option<String>,

    /// Secret in the Bucket's namespace holding accessKeyId and secretAccessKey; defaults to
    /// `<name>-credentials`. The operator creates it when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule())]
    pub secret_name: Option<String>,
}

/// What the operator has observed of a bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketStatus {
    /// `Ready`: True once a published cluster map grants the bucket's key; False with
    /// PoolNotFound, NameTaken, InvalidSpec, InvalidSecret, KeyTaken or Pending.
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The name clients use: spec.bucketName, or the Bucket's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,

    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// The public half of the credentials (the secret stays in the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,

    /// Epoch of the cluster map that grants the key; 0 while none does.
    #[serde(default)]
    pub map_epoch: i64,

    /// `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Why a Bucket or its Secret cannot be used; each message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    #[error(
        "bucket name {0:?} is invalid: use 3-63 characters of a-z, 0-9, '-' and '.', starting \
         and ending with a letter or digit (set spec.bucketName when the Bucket's own name does \
         not qualify)"
    )]
    BucketName(String),
    #[error(
        "the Secret has no {0} key; add it, or delete the Secret and the operator writes a new one"
    )]
    MissingKey(&'static str),
    #[error(
        "accessKeyId {0:?} is invalid: use 1-{MAX_ACCESS_KEY_ID} characters of A-Z, a-z, 0-9, \
         '-', '_' and '.'"
    )]
    AccessKeyId(String),
    #[error(
        "secretAccessKey is {0} characters long: use {MIN_SECRET_LEN}-{MAX_SECRET_LEN} printable \
         ASCII characters without spaces, random (such as 32 random bytes in base64url)"
    )]
    Secret(usize),
}

impl Bucket {
    /// The name clients use on the data path.
    pub fn bucket_name(&self) -> String {
        self.spec
            .bucket_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The credentials Secret's name, in the Bucket's namespace.
    pub fn secret_name(&self) -> String {
        self.spec.secret_name.clone().unwrap_or_else(|| {
            format!(
                "{}{SECRET_SUFFIX}",
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }

    /// Checks what the CRD's rules check, for objects stored before a rule existed.
    pub fn validate(&self) -> Result<String, BucketError> {
        let name = self.bucket_name();
        validate_bucket_name(&name)?;
        Ok(name)
    }
}

/// The agent's rule for bucket names (`validate::bucket` in the agent), so that the operator
/// never publishes a bucket no client could address.
pub fn validate_bucket_name(name: &str) -> Result<(), BucketError> {
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends && !name.contains("..") {
        Ok(())
    } else {
        Err(BucketError::BucketName(name.to_owned()))
    }
}

/// Access key ids travel in `authorization: Bearer <id>:<secret>`, so they may hold neither
/// ':' nor spaces.
pub fn validate_access_key_id(id: &str) -> Result<(), BucketError> {
    let ok = (1..=MAX_ACCESS_KEY_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(BucketError::AccessKeyId(id.to_owned()))
    }
}

pub fn validate_secret(secret: &str) -> Result<(), BucketError> {
    let ok = (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(BucketError::Secret(secret.len()))
    }
}

// ---- CEL rules ----

fn rule(expr: String, message: &str) -> Rule {
    Rule::new(expr).message(Message::Message(message.to_owned()))
}

fn bucket_name_rule() -> Rule {
    rule(
        format!("self.matches('{BUCKET_NAME_PATTERN}') && !self.contains('..')"),
        "bucketName must be 3-63 characters of a-z, 0-9, '-' and '.', starting and ending with a \
         letter or digit, without '..'",
    )
}

/// Without spec.bucketName the Bucket's own name is the data-path name, so it must qualify
/// (a namespaced name already is lowercase alphanumerics, '-' and '.'; only its length can
/// be wrong).
fn default_bucket_name_rule() -> Rule {
    rule(
        "has(self.spec.bucketName) || (size(self.metadata.name) >= 3 && size(self.metadata.name) <= 63)"
            .into(),
        "a Bucket without spec.bucketName is known to clients by its own name, which must then \
         be 3-63 characters; set spec.bucketName or rename the Bucket",
    )
}

fn default_secret_name_rule() -> Rule {
    rule(
        format!(
            "has(self.spec.secretName) || size(self.metadata.name) <= {}",
            253 - SECRET_SUFFIX.len()
        ),
        "the default Secret name (<name>-credentials) would be longer than 253 characters; set \
         spec.secretName",
    )
}

fn secret_name_rule() -> Rule {
    rule(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
            .into(),
        "secretName must be a valid Secret name: lowercase letters, digits, '-' and '.'",
    )
}

fn immutable_rule(field: &str) -> Rule {
    rule(
        "self == oldSelf".into(),
        &format!(
            "{field} cannot change after the Bucket is created: its objects stay where they were \
             written. Create a new Bucket and copy the objects instead"
        ),
    )
    .reason(Reason::FieldValueForbidden)
}

/// On the spec, since a field-level rule does not run when the field is added or removed.
fn bucket_name_immutable_rule() -> Rule {
    rule(
        "has(self.bucketName) == has(oldSelf.bucketName) && \
         (!has(self.bucketName) || self.bucketName == oldSelf.bucketName)"
            .into(),
        "bucketName cannot change after the Bucket is created: clients and stored objects know \
         the bucket by it. Create a new Bucket instead",
    )
    .field_path(".bucketName")
    .reason(Reason::FieldValueForbidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(name: &str, spec: serde_json::Value) -> Bucket {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "potluck.dev/v1alpha1",
            "kind": "Bucket",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn names_default_to_the_bucket_name() {
        let b = bucket("photos", serde_json::json!({"pool": "default"}));
        assert_eq!(b.bucket_name(), "photos");
        assert_eq!(b.secret_name(), "photos-credentials");
        assert_eq!(b.validate(), Ok("photos".into()));
        let b = bucket(
            "x",
            serde_json::json!({"pool": "p", "bucketName": "team-a.photos", "secretName": "keys"}),
        );
        assert_eq!(b.bucket_name(), "team-a.photos");
        assert_eq!(b.secret_name(), "keys");
        // Unset options stay out of what the operator or a person applies.
        let value =
            serde_json::to_value(&bucket("y", serde_json::json!({"pool": "p"})).spec).unwrap();
        assert_eq!(value, serde_json::json!({"pool": "p"}));
    }

    #[test]
    fn bucket_names_follow_the_agents_rule() {
        for ok in ["abc", "my-bucket.2024", "a1b", &"a".repeat(63)] {
            assert_eq!(validate_bucket_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "ABC",
            "-abc",
            "abc-",
            "a..b",
            &"a".repeat(64),
            "a b",
            "naïve",
        ] {
            let err = validate_bucket_name(bad).unwrap_err();
            assert!(err.to_string().contains("3-63 characters"), "{bad}: {err}");
        }
        let b = bucket("xy", serde_json::json!({"pool": "p"}));
        assert!(matches!(b.validate(), Err(BucketError::BucketName(_))));
    }

    #[test]
    fn credentials_must_be_sendable_and_unguessable() {
        assert_eq!(validate_access_key_id("pk_0123abcd"), Ok(()));
        for bad in ["", "a:b", "a b", &"k".repeat(129)] {
            assert!(validate_access_key_id(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_secret(&"s".repeat(43)), Ok(()));
        let short = validate_secret("hunter2").unwrap_err();
        assert!(short.to_string().contains("32-256"), "{short}");
        assert!(validate_secret(&format!("{} x", "s".repeat(40))).is_err());
    }
}
