//! Buckets: their credentials Secrets, which of them the cluster map grants, and their status.
//!
//! Agents know a bucket by its name alone, so the map can grant a name to one Bucket only:
//! the oldest claims it (creation time, then namespace/name), and a newer Bucket with the same
//! name is refused with `NameTaken` rather than taking over someone else's objects. Access key
//! ids are global too (an agent finds the key by id), with the same rule.
//!
//! The map carries BLAKE3 of each secret, never the secret: the map is stored in a ConfigMap
//! and served by every agent's `GetClusterMap`. Generated secrets are 256 random bits and
//! admin-supplied ones must be at least 32 characters, so an unsalted fast hash is enough;
//! there is no password to guess.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use potluck_api::bucket::{
    validate_access_key_id, validate_secret, BucketError, REASON_INVALID_SECRET,
    REASON_INVALID_SPEC, REASON_KEY_TAKEN, REASON_NAME_TAKEN, REASON_PENDING,
    REASON_POOL_NOT_FOUND, REASON_PUBLISHED, SECRET_ACCESS_KEY_ID, SECRET_BUCKET, SECRET_POOL,
    SECRET_SECRET_ACCESS_KEY,
};
use potluck_api::condition::{self, READY};
use potluck_api::{Bucket, BucketStatus};
use potluck_proto::v1::{AccessKey, BucketAccess, ClusterMap};
use rand::RngCore;

/// What a client presents and what agents check it against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMaterial {
    pub id: String,
    pub secret_blake3: [u8; 32],
}

/// A Bucket's credentials as its last reconcile read them, by the Bucket's uid (a Bucket
/// deleted and created again under the same name has a new uid, and a new Secret).
pub type Resolved = HashMap<String, Result<KeyMaterial, BucketError>>;

/// What the map does for one Bucket, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Granted under this name, with this key.
    Granted { name: String, key_id: String },
    /// Not granted; `reason` is a `Ready=False` reason, `message` says what to do.
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// The access the next map grants, and the verdict on every Bucket (by uid).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sorted by name, keys by id: the map compares equal when nothing changed.
    pub access: Vec<BucketAccess>,
    pub verdicts: HashMap<String, Verdict>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Bucket {0} has no namespace or uid yet")]
    Incomplete(String),
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A new access key id (`pk-` and 80 random bits in hex: unique without coordination) and a
/// secret of 256 random bits in base64url.
pub fn generate_credentials() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; 10];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    (
        format!("pk-{}", hex::encode(id)),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    )
}

/// The key material in a credentials Secret, checked as a client would have to send it.
pub fn read_secret(secret: &Secret) -> Result<KeyMaterial, BucketError> {
    let field = |key: &'static str| -> Result<String, BucketError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .cloned()
            })
            .ok_or(BucketError::MissingKey(key))
    };
    let id = field(SECRET_ACCESS_KEY_ID)?;
    let secret = field(SECRET_SECRET_ACCESS_KEY)?;
    validate_access_key_id(&id)?;
    validate_secret(&secret)?;
    Ok(KeyMaterial {
        secret_blake3: hash_secret(&secret),
        id,
    })
}

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The labels of Secrets the operator makes for Buckets; `managed-by` is how it later tells
/// its own Secrets from an admin's.
pub fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), crate::controller::MANAGER.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "potluck".to_owned()),
    ])
}

/// A new credentials Secret for `bucket`, owned by it so that deleting the Bucket deletes it.
pub fn new_secret(bucket: &Bucket, name: &str) -> Secret {
    let (id, secret) = generate_credentials();
    let data = BTreeMap::from([
        (SECRET_ACCESS_KEY_ID.to_owned(), id),
        (SECRET_SECRET_ACCESS_KEY.to_owned(), secret),
        (SECRET_BUCKET.to_owned(), bucket.bucket_name()),
        (SECRET_POOL.to_owned(), bucket.spec.pool.clone()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: bucket.namespace(),
            owner_references: bucket.controller_owner_ref(&()).map(|r| vec![r]),
            labels: Some(managed_labels()),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Reads the Bucket's credentials Secret, creating it first when it does not exist. An
/// existing Secret (an admin's, or one written before) is never changed.
pub async fn ensure_secret(
    client: &kube::Client,
    bucket: &Bucket,
) -> Result<Result<KeyMaterial, BucketError>, SecretError> {
    let namespace = bucket
        .namespace()
        .ok_or_else(|| SecretError::Incomplete(bucket.name_any()))?;
    let name = bucket.secret_name();
    let api_err = |source| SecretError::Api {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if let Some(existing) = api.get_opt(&name).await.map_err(api_err)? {
        return Ok(read_secret(&existing));
    }
    let pp = PostParams {
        field_manager: Some(crate::controller::MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &new_secret(bucket, &name)).await {
        Ok(created) => {
            tracing::info!(%namespace, secret = %name, bucket = %bucket.name_any(), "created bucket credentials");
            Ok(read_secret(&created))
        }
        // Someone (an admin, or another replica) created it meanwhile: use theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await.map_err(api_err)?;
            Ok(read_secret(&existing))
        }
        Err(e) => Err(api_err(e)),
    }
}

/// Decides which Buckets the map grants. `pools` are the StoragePools that exist; `resolved`
/// holds each Bucket's credentials as last read. A Bucket not read yet since this operator
/// started keeps what the previous map granted its name, so that a restart does not take
/// access away (and mint two epochs) until its reconcile has run.
pub fn plan(
    buckets: &[Bucket],
    pools: &BTreeSet<String>,
    resolved: &Resolved,
    previous: Option<&ClusterMap>,
) -> Plan {
    let mut order: Vec<&Bucket> = buckets
        .iter()
        // A deleted Bucket keeps its name while the operator empties it.
        .filter(|b| {
            let purging = b
                .finalizers()
                .iter()
                .any(|f| f == crate::bucket_purge::FINALIZER);
            (b.metadata.deletion_timestamp.is_none() || purging) && b.metadata.uid.is_some()
        })
        .collect();
    order.sort_by_key(|b| {
        (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.namespace().unwrap_or_default(),
            b.name_any(),
        )
    });
    let mut names_taken = HashSet::new();
    let mut keys_taken = HashSet::new();
    let mut plan = Plan::default();
    for bucket in order {
        let uid = bucket.metadata.uid.clone().unwrap_or_default();
        let verdict = verdict(
            bucket,
            pools,
            resolved.get(&uid),
            previous,
            &mut names_taken,
            &mut keys_taken,
            &mut plan.access,
        );
        plan.verdicts.insert(uid, verdict);
    }
    plan.access.sort_by(|a, b| a.name.cmp(&b.name));
    for access in &mut plan.access {
        access.keys.sort_by(|a, b| a.id.cmp(&b.id));
    }
    plan
}

/// What the map holds for a granted Bucket with this key.
pub fn access_of(bucket: &Bucket, material: &KeyMaterial) -> BucketAccess {
    BucketAccess {
        name: bucket.bucket_name(),
        pool: bucket.spec.pool.clone(),
        keys: vec![AccessKey {
            id: material.id.clone(),
            secret_blake3: material.secret_blake3.to_vec().into(),
        }],
    }
}

fn refused(reason: &'static str, message: String) -> Verdict {
    Verdict::Refused { reason, message }
}

fn verdict(
    bucket: &Bucket,
    pools: &BTreeSet<String>,
    resolved: Option<&Result<KeyMaterial, BucketError>>,
    previous: Option<&ClusterMap>,
    names_taken: &mut HashSet<String>,
    keys_taken: &mut HashSet<String>,
    access: &mut Vec<BucketAccess>,
) -> Verdict {
    let name = match bucket.validate() {
        Ok(name) => name,
        Err(e) => return refused(REASON_INVALID_SPEC, e.to_string()),
    };
    // The name is claimed whether or not the rest checks out: a Bucket waiting for its pool
    // must not lose its name to a newer one meanwhile.
    if !names_taken.insert(name.clone()) {
        return refused(
            REASON_NAME_TAKEN,
            format!(
                "bucket name {name:?} belongs to an older Bucket (possibly in another namespace); \
                 set spec.bucketName to a name of your own"
            ),
        );
    }
    let pool = &bucket.spec.pool;
    if !pools.contains(pool) {
        return refused(
            REASON_POOL_NOT_FOUND,
            format!("StoragePool {pool:?} does not exist; create it, or delete this Bucket and create one naming an existing pool"),
        );
    }
    let material = match resolved {
        Some(Ok(m)) => m.clone(),
        Some(Err(e)) => {
            return refused(
                REASON_INVALID_SECRET,
                format!("Secret {}: {e}", bucket.secret_name()),
            )
        }
        None => {
            // Not read since this operator started: keep the previous grant, if any.
            let kept =
                previous.and_then(|m| m.buckets.iter().find(|b| b.name == name && &b.pool == pool));
            return match kept {
                Some(b) => {
                    for key in &b.keys {
                        keys_taken.insert(key.id.clone());
                    }
                    access.push(b.clone());
                    refused(REASON_PENDING, "reading the credentials Secret".into())
                }
                None => refused(REASON_PENDING, "reading the credentials Secret".into()),
            };
        }
    };
    if !keys_taken.insert(material.id.clone()) {
        return refused(
            REASON_KEY_TAKEN,
            format!(
                "access key id {:?} in Secret {} is used by an older Bucket; give this Bucket a \
                 key of its own (delete the Secret and the operator writes a new one)",
                material.id,
                bucket.secret_name()
            ),
        );
    }
    access.push(access_of(bucket, &material));
    Verdict::Granted {
        name,
        key_id: material.id,
    }
}

/// The Bucket's status given its verdict and the map now stored. Ready only once the stored
/// map grants exactly this key: until then the agents would refuse it.
pub fn bucket_status(
    bucket: &Bucket,
    verdict: Option<&Verdict>,
    map: Option<&ClusterMap>,
    key_id: Option<&str>,
    now: Time,
) -> BucketStatus {
    let mut status = bucket.status.clone().unwrap_or_default();
    // The epoch that first granted the current key: later epochs (members coming and going)
    // change nothing for the bucket, and must not each cost a status write.
    let granted_since = (condition::is_true(&status.conditions, READY)
        && status.access_key_id.as_deref() == key_id
        && status.map_epoch > 0)
        .then_some(status.map_epoch);
    let generation = bucket.metadata.generation;
    status.observed_generation = generation;
    status.bucket_name = Some(bucket.bucket_name());
    status.secret_name = Some(bucket.secret_name());
    if let Some(id) = key_id {
        status.access_key_id = Some(id.to_owned());
    }
    let (ok, reason, message) = match verdict {
        Some(Verdict::Granted { name, key_id }) => {
            let published = map.filter(|m| {
                m.buckets
                    .iter()
                    .any(|b| &b.name == name && b.keys.iter().any(|k| &k.id == key_id))
            });
            match published {
                Some(m) => {
                    status.map_epoch =
                        granted_since.unwrap_or_else(|| i64::try_from(m.epoch).unwrap_or(i64::MAX));
                    (
                        true,
                        REASON_PUBLISHED,
                        format!(
                            "agents accept key {key_id} for bucket {name:?} in pool {:?}; clients \
                             send authorization: Bearer <accessKeyId>:<secretAccessKey> from \
                             Secret {}",
                            bucket.spec.pool,
                            bucket.secret_name()
                        ),
                    )
                }
                None => (
                    false,
                    REASON_PENDING,
                    "waiting for the cluster map to be published".to_owned(),
                ),
            }
        }
        Some(Verdict::Refused { reason, message }) => (false, *reason, message.clone()),
        None => (false, REASON_PENDING, "not reconciled yet".to_owned()),
    };
    if !ok {
        status.map_epoch = 0;
    }
    condition::set_condition(
        &mut status.conditions,
        condition::new_condition(READY, ok, reason, message, generation, now),
    );
    status
}

/// Writes a Bucket's status when it changed; every write is a watch event.
pub async fn write_status(
    api: &Api<Bucket>,
    name: &str,
    before: &BucketStatus,
    after: &BucketStatus,
) -> Result<bool, kube::Error> {
    if after == before {
        return Ok(false);
    }
    let patch = serde_json::json!({ "status": after });
    api.patch_status(
        name,
        &PatchParams::apply(crate::controller::MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(true)
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests;
