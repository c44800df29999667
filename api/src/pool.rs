//! `StoragePool`: how objects are cut and spread (k, m, chunk size, PGs, failure domains),
//! and how the operator reports the pool's health.
//!
//! The same limits are enforced twice: by the API server, from the schema and CEL rules
//! generated here (so `kubectl apply` refuses an invalid pool with a message saying what to
//! change), and by [`StoragePoolSpec::validate`], which the operator runs on what it reads
//! (an object stored before a rule existed, or a cluster whose CRD is out of date, still gets
//! a `Ready=False` condition with the same advice rather than a crash).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{parse_duration, DurationError, DURATION_PATTERN, MAX_DURATION};

/// Most shards (`k + m`) per stripe: the write path tracks a stripe's missing shards in a
/// 32-bit mask, and wider stripes would make every stripe touch much of a small fleet.
pub const MAX_SHARDS: i32 = 32;
/// Smallest chunk: below it per-shard overhead (hash, RPC, key) outweighs the data.
pub const MIN_CHUNK_SIZE: i64 = 4 * 1024;
/// Largest chunk: a gateway holds `k` chunks of a stripe in memory.
pub const MAX_CHUNK_SIZE: i64 = 64 * 1024 * 1024;
/// Chunks are whole multiples of the widest SIMD vector the erasure coder uses (AVX-512).
pub const CHUNK_ALIGN: i64 = 64;
/// Most placement groups; more buys no balance for any realistic fleet, only a bigger map.
pub const MAX_PG_COUNT: i32 = 65_536;

pub const DEFAULT_CHUNK_SIZE: i64 = 1024 * 1024;
pub const DEFAULT_PG_COUNT: i32 = 128;
pub const DEFAULT_FAILURE_DOMAIN_KEY: &str = "kubernetes.io/hostname";
pub const DEFAULT_DOWN_AFTER: &str = "30s";
pub const DEFAULT_OUT_AFTER: &str = "5m";
/// Longest pool name: agents put it, length-prefixed in one byte, in every shard key.
pub const MAX_POOL_NAME: usize = 63;
/// Shortest `downAfter`: Lease renewals are seconds apart, so anything shorter only flaps.
pub const MIN_DOWN_AFTER: Duration = Duration::from_secs(1);

/// A pool of erasure-coded storage spread over the members (`StorageNode`s) it selects.
///
/// Every object is cut into stripes of `k` data chunks plus `m` parity chunks, and the
/// `k + m` shards of a stripe are put on members in distinct failure domains, so that any `m`
/// of them can be lost without losing data.
// kube's `printcolumn(name = .., type_ = ..)` lists look to clippy like repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "potluck.dev",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    shortname = "spool",
    category = "potluck",
    status = "StoragePoolStatus",
    derive = "PartialEq",
    validation = pool_name_rule(),
    doc = "A pool of erasure-coded storage: objects are cut into stripes of k data and m parity shards, spread over members in distinct failure domains.",
    printcolumn(
        name = "K",
        type_ = "integer",
        json_path = ".spec.k",
        description = "Data shards per stripe"
    ),
    printcolumn(
        name = "M",
        type_ = "integer",
        json_path = ".spec.m",
        description = "Parity shards per stripe: members that may be lost"
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.members",
        description = "Members holding the pool's shards"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        json_path = ".status.usedBytes",
        description = "Bytes stored, parity included"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "integer",
        json_path = ".status.capacityBytes",
        description = "Bytes the members offer"
    ),
    printcolumn(
        name = "Health",
        type_ = "string",
        json_path = ".status.health",
        description = "Healthy, Degraded, Unavailable or Pending; see the Ready and Degraded conditions"
    ),
    printcolumn(
        name = "ETA",
        type_ = "integer",
        json_path = ".status.healEtaSeconds",
        description = "Seconds until the bytes still to heal are rebuilt at the current rate; empty when nothing heals"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.mapEpoch",
        description = "Cluster map epoch the status was computed at"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "PGs",
        type_ = "integer",
        json_path = ".spec.pgCount",
        priority = 1,
        description = "Placement groups"
    ),
    printcolumn(
        name = "Degraded PGs",
        type_ = "integer",
        json_path = ".status.pgsDegraded",
        priority = 1,
        description = "PGs short of shards"
    ),
    printcolumn(
        name = "To Heal",
        type_ = "integer",
        json_path = ".status.bytesToHeal",
        priority = 1,
        description = "Bytes still to rebuild"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1,
        description = "Why the pool is or is not Ready"
    )
)]
#[x_kube(validation = k_plus_m_rule(), validation = write_quorum_rule(), validation = out_after_rule())]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolSpec {
    /// Data shards per stripe. Fixed at creation: stored objects are striped over it.
    #[schemars(range(min = 1, max = MAX_SHARDS - 1))]
    #[x_kube(validation = immutable_rule("k"))]
    pub k: i32,

    /// Parity shards per stripe: how many members may be lost without losing data. Fixed at
    /// creation: stored objects are encoded with it.
    #[schemars(range(min = 1, max = MAX_SHARDS - 1))]
    #[x_kube(validation = immutable_rule("m"))]
    pub m: i32,

    /// Bytes per chunk (shard of a stripe), a multiple of 64 from 4 KiB to 64 MiB. A change
    /// applies to objects written afterwards; each object keeps the chunk size it was written with.
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = MIN_CHUNK_SIZE, max = MAX_CHUNK_SIZE))]
    #[x_kube(validation = chunk_size_rule())]
    pub chunk_size: i64,

    /// Placement groups, a power of two. Aim for about 100 shard positions per member:
    /// pgCount * (k+m) / members close to 100.
    #[serde(default = "default_pg_count")]
    #[schemars(range(min = 1, max = MAX_PG_COUNT))]
    #[x_kube(validation = pg_count_rule())]
    pub pg_count: i32,

    /// Node label whose value names a member's failure domain; no two shards of a stripe go
    /// to members in the same domain.
    #[serde(default = "default_failure_domain_key")]
    #[schemars(length(min = 1, max = 317))]
    pub failure_domain_key: String,

    /// Shards that must be stored before a write succeeds, from k to k+m. Unset means k+1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub write_quorum: Option<i32>,

    /// Which StorageNodes (by their labels) may hold this pool's shards. Unset selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_selector: Option<LabelSelector>,

    /// How long a member's Lease may go unrenewed before it is Down: skipped for new writes,
    /// but still holding its shards. A duration such as 30s or 1m30s, at least 1s.
    #[serde(default = "default_down_after")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = duration_rule("downAfter", "1s"))]
    pub down_after: String,

    /// How long a member may stay Down before it is Out: its shards are rebuilt on other
    /// members. A duration such as 5m or 1h, longer than downAfter.
    #[serde(default = "default_out_after")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = duration_rule("outAfter", "1s"))]
    pub out_after: String,
}

/// What the operator has observed of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// `Ready` (the pool takes reads and writes), `Degraded` (some PGs are short of shards),
    /// `Progressing` (a new map is being rolled out or data is being recovered).
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One word for `kubectl get`: the gist of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<PoolHealth>,

    /// Members (Up, Down or Draining) in the pool's current map.
    #[serde(default)]
    pub members: i32,

    /// PGs whose every shard position is on an Up member with its data in place.
    #[serde(default)]
    pub pgs_clean: i32,

    /// PGs with a position that is Down, being recovered, or without a member.
    #[serde(default)]
    pub pgs_degraded: i32,

    /// Bytes offered by the pool's members.
    #[serde(default)]
    pub capacity_bytes: i64,

    /// Bytes stored on the pool's members, parity included.
    #[serde(default)]
    pub used_bytes: i64,

    /// PGs whose members now named for them are still being given their shards.
    #[serde(default)]
    pub pgs_recovering: i32,

    /// Bytes the PGs' leaders found missing and are rebuilding; a lower bound, since a PG not
    /// checked yet counts nothing.
    #[serde(default)]
    pub bytes_to_heal: i64,

    /// Bytes rebuilt per second across the fleet, over the operator's recent passes.
    #[serde(default)]
    pub heal_rate_bytes_per_second: i64,

    /// Seconds until bytesToHeal is rebuilt at the current rate; unset when nothing is being
    /// healed or no rate is known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_eta_seconds: Option<i64>,

    /// Epoch of the cluster map this status describes; it only ever rises.
    #[serde(default)]
    pub map_epoch: i64,

    /// `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A pool's health at a glance; the conditions carry the reason and what to do.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolHealth {
    /// Not reconciled yet, or waiting for its first map.
    Pending,
    /// Ready, and every PG is clean.
    Healthy,
    /// Ready, but some PGs are short of shards: less redundancy until recovery ends.
    Degraded,
    /// Not Ready: the pool cannot be placed or too many members are gone.
    Unavailable,
}

fn default_chunk_size() -> i64 {
    DEFAULT_CHUNK_SIZE
}

fn default_pg_count() -> i32 {
    DEFAULT_PG_COUNT
}

fn default_failure_domain_key() -> String {
    DEFAULT_FAILURE_DOMAIN_KEY.to_owned()
}

fn default_down_after() -> String {
    DEFAULT_DOWN_AFTER.to_owned()
}

fn default_out_after() -> String {
    DEFAULT_OUT_AFTER.to_owned()
}

// ---- CEL rules (the API server's side of `StoragePoolSpec::validate`) ----

fn rule(expr: String, message: String) -> Rule {
    Rule::new(expr).message(Message::Message(message))
}

fn pool_name_rule() -> Rule {
    rule(
        format!("size(self.metadata.name) <= {MAX_POOL_NAME}"),
        format!(
            "a StoragePool name is at most {MAX_POOL_NAME} characters (agents store it in every \
             shard key); choose a shorter name"
        ),
    )
}

fn immutable_rule(field: &str) -> Rule {
    rule(
        "self == oldSelf".into(),
        format!(
            "{field} cannot change after the pool is created: stored objects are encoded with it. \
             To use another {field}, create a new StoragePool and copy the data into it"
        ),
    )
    .reason(Reason::FieldValueForbidden)
}

fn k_plus_m_rule() -> Rule {
    rule(
        format!("self.k + self.m <= {MAX_SHARDS}"),
        format!("k+m must be at most {MAX_SHARDS} shards per stripe; lower k or m"),
    )
}

fn write_quorum_rule() -> Rule {
    rule(
        "!has(self.writeQuorum) || (self.writeQuorum >= self.k && self.writeQuorum <= self.k + self.m)"
            .into(),
        "writeQuorum must be between k and k+m; pick a value in that range, or leave it unset for k+1"
            .into(),
    )
    .field_path(".writeQuorum")
}

fn chunk_size_rule() -> Rule {
    rule(
        format!("self % {CHUNK_ALIGN} == 0"),
        format!(
            "chunkSize must be a multiple of {CHUNK_ALIGN} bytes; \
             round it, or leave it unset for {DEFAULT_CHUNK_SIZE} (1 MiB)"
        ),
    )
}

/// The powers of two from 1 to `MAX_PG_COUNT`, as a CEL list (CEL has no bit operations).
fn pg_count_rule() -> Rule {
    let powers: Vec<String> = std::iter::successors(Some(1i64), |p| Some(p * 2))
        .take_while(|p| *p <= i64::from(MAX_PG_COUNT))
        .map(|p| p.to_string())
        .collect();
    rule(
        format!("self in [{}]", powers.join(", ")),
        format!(
            "pgCount must be a power of two from 1 to {MAX_PG_COUNT}, such as 128, 1024 or 4096; \
             pick one close to 100 * members / (k+m)"
        ),
    )
}

/// Writing `matches(...)` first keeps a malformed value a plain validation failure with this
/// message, rather than a CEL runtime error from `duration()`.
fn duration_rule(field: &str, min: &str) -> Rule {
    let max_hours = MAX_DURATION.as_secs() / 3600;
    rule(
        format!(
            "self.matches('{DURATION_PATTERN}') && duration(self) >= duration('{min}') \
             && duration(self) < duration('{max_hours}h')"
        ),
        format!(
            "{field} must be a duration of at least {min} and below {max_hours}h, \
             written as whole numbers with units h, m, s or ms, such as 30s, 5m or 1m30s"
        ),
    )
}

fn out_after_rule() -> Rule {
    rule(
        format!(
            "!self.downAfter.matches('{DURATION_PATTERN}') || !self.outAfter.matches('{DURATION_PATTERN}') \
             || duration(self.outAfter) > duration(self.downAfter)"
        ),
        "outAfter must be longer than downAfter: a silent member is first marked Down and only \
         later Out; raise outAfter or lower downAfter"
            .into(),
    )
    .field_path(".outAfter")
}

// ---- The operator's side ----

/// A pool spec that passed [`StoragePoolSpec::validate`], in the types the data path uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    pub k: u32,
    pub m: u32,
    pub chunk_size: u64,
    pub pg_count: u32,
    /// The effective quorum: the spec's, or `k + 1`.
    pub write_quorum: u32,
    pub failure_domain_key: String,
    pub down_after: Duration,
    pub out_after: Duration,
}

/// Why a pool spec cannot be used. Each message says what to change; the operator puts it in
/// the pool's `Ready=False` condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "the pool name {0:?} is longer than {MAX_POOL_NAME} characters (agents store it in every \
         shard key); create the pool again under a shorter name"
    )]
    NameTooLong(String),
    #[error("k is {0}; a stripe needs at least one data shard: set k to 1 or more")]
    KTooSmall(i32),
    #[error("m is {0}; without parity, losing one member loses data: set m to 1 or more")]
    MTooSmall(i32),
    #[error("k+m is {0}, but at most {MAX_SHARDS} shards per stripe are supported; lower k or m")]
    TooManyShards(i64),
    #[error(
        "chunkSize is {0} bytes; use a multiple of {CHUNK_ALIGN} from {MIN_CHUNK_SIZE} (4 KiB) \
         to {MAX_CHUNK_SIZE} (64 MiB), such as {DEFAULT_CHUNK_SIZE} (1 MiB)"
    )]
    ChunkSize(i64),
    #[error(
        "pgCount is {0}; use a power of two from 1 to {MAX_PG_COUNT}, such as 128, 1024 or 4096, \
         close to 100 * members / (k+m)"
    )]
    PgCount(i32),
    #[error(
        "writeQuorum is {quorum}; pick a value from k to k+m ({k} to {width}), or leave it unset for k+1"
    )]
    WriteQuorum { quorum: i32, k: i32, width: i64 },
    #[error("failureDomainKey is empty; name a node label such as {DEFAULT_FAILURE_DOMAIN_KEY}")]
    EmptyFailureDomainKey,
    #[error("downAfter: {0}")]
    DownAfter(DurationError),
    #[error("outAfter: {0}")]
    OutAfter(DurationError),
    #[error(
        "downAfter is {0:?}, below the minimum of 1s; Lease renewals are seconds apart: raise it"
    )]
    DownAfterTooShort(Duration),
    #[error(
        "outAfter ({out_after:?}) must be longer than downAfter ({down_after:?}): a silent member \
         is first marked Down and only later Out; raise outAfter or lower downAfter"
    )]
    OutNotAfterDown {
        down_after: Duration,
        out_after: Duration,
    },
}

impl StoragePool {
    /// [`StoragePoolSpec::validate`], plus the limit on the pool's name.
    pub fn validate(&self) -> Result<PoolParams, SpecError> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        if name.len() > MAX_POOL_NAME {
            return Err(SpecError::NameTooLong(name.to_owned()));
        }
        self.spec.validate()
    }
}

impl StoragePoolSpec {
    /// A spec with the given `k` and `m` and every other field at its default, as the API
    /// server would default it.
    pub fn with_defaults(k: i32, m: i32) -> Self {
        Self {
            k,
            m,
            chunk_size: DEFAULT_CHUNK_SIZE,
            pg_count: DEFAULT_PG_COUNT,
            failure_domain_key: default_failure_domain_key(),
            write_quorum: None,
            member_selector: None,
            down_after: default_down_after(),
            out_after: default_out_after(),
        }
    }

    /// The write quorum in force: the spec's, or `k + 1` (which `m >= 1` keeps within `k + m`).
    pub fn effective_write_quorum(&self) -> i32 {
        self.write_quorum.unwrap_or(self.k.saturating_add(1))
    }

    /// Checks everything the CRD's schema and CEL rules check on creation (immutability aside),
    /// and converts to the data path's types.
    pub fn validate(&self) -> Result<PoolParams, SpecError> {
        if self.k < 1 {
            return Err(SpecError::KTooSmall(self.k));
        }
        if self.m < 1 {
            return Err(SpecError::MTooSmall(self.m));
        }
        let width = i64::from(self.k) + i64::from(self.m);
        if width > i64::from(MAX_SHARDS) {
            return Err(SpecError::TooManyShards(width));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || self.chunk_size % CHUNK_ALIGN != 0
        {
            return Err(SpecError::ChunkSize(self.chunk_size));
        }
        if self.pg_count < 1
            || self.pg_count > MAX_PG_COUNT
            || !self.pg_count.unsigned_abs().is_power_of_two()
        {
            return Err(SpecError::PgCount(self.pg_count));
        }
        let quorum = self.effective_write_quorum();
        if i64::from(quorum) < i64::from(self.k) || i64::from(quorum) > width {
            return Err(SpecError::WriteQuorum {
                quorum,
                k: self.k,
                width,
            });
        }
        if self.failure_domain_key.is_empty() {
            return Err(SpecError::EmptyFailureDomainKey);
        }
        let down_after = parse_duration(&self.down_after).map_err(SpecError::DownAfter)?;
        let out_after = parse_duration(&self.out_after).map_err(SpecError::OutAfter)?;
        if down_after < MIN_DOWN_AFTER {
            return Err(SpecError::DownAfterTooShort(down_after));
        }
        if out_after <= down_after {
            return Err(SpecError::OutNotAfterDown {
                down_after,
                out_after,
            });
        }
        // Every value was checked positive and bounded above, so the casts are exact.
        Ok(PoolParams {
            k: self.k.unsigned_abs(),
            m: self.m.unsigned_abs(),
            chunk_size: self.chunk_size.unsigned_abs(),
            pg_count: self.pg_count.unsigned_abs(),
            write_quorum: quorum.unsigned_abs(),
            failure_domain_key: self.failure_domain_key.clone(),
            down_after,
            out_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(k: i32, m: i32) -> StoragePoolSpec {
        StoragePoolSpec::with_defaults(k, m)
    }

    #[test]
    fn defaults_fill_in_what_the_user_left_out() {
        let pool: StoragePool = serde_json::from_value(serde_json::json!({
            "apiVersion": "potluck.dev/v1alpha1",
            "kind": "StoragePool",
            "metadata": {"name": "default"},
            "spec": {"k": 4, "m": 2}
        }))
        .unwrap();
        assert_eq!(pool.spec, spec(4, 2));
        assert_eq!(pool.status, None);

        let params = pool.spec.validate().unwrap();
        assert_eq!(
            params,
            PoolParams {
                k: 4,
                m: 2,
                chunk_size: 1 << 20,
                pg_count: 128,
                write_quorum: 5,
                failure_domain_key: "kubernetes.io/hostname".into(),
                down_after: Duration::from_secs(30),
                out_after: Duration::from_secs(300),
            }
        );
    }

    #[test]
    fn serializes_camel_case_and_leaves_unset_options_out() {
        let value = serde_json::to_value(spec(2, 1)).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "k",
            "m",
            "chunkSize",
            "pgCount",
            "failureDomainKey",
            "downAfter",
            "outAfter",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(!keys.contains(&"writeQuorum"));
        assert!(!keys.contains(&"memberSelector"));
    }

    #[test]
    fn explicit_values_are_converted() {
        let mut s = spec(10, 4);
        s.chunk_size = 4096;
        s.pg_count = 4096;
        s.write_quorum = Some(14);
        s.down_after = "1m30s".into();
        s.out_after = "2h".into();
        let p = s.validate().unwrap();
        assert_eq!((p.k, p.m, p.chunk_size, p.pg_count), (10, 4, 4096, 4096));
        assert_eq!(p.write_quorum, 14);
        assert_eq!(p.down_after, Duration::from_secs(90));
        assert_eq!(p.out_after, Duration::from_secs(7200));
    }

    #[test]
    fn each_invalid_field_is_named_with_what_to_do() {
        let cases: Vec<(StoragePoolSpec, SpecError, &str)> = vec![
            (spec(0, 2), SpecError::KTooSmall(0), "set k to 1 or more"),
            (spec(2, 0), SpecError::MTooSmall(0), "set m to 1 or more"),
            (spec(-3, 2), SpecError::KTooSmall(-3), "set k to 1 or more"),
            (spec(30, 3), SpecError::TooManyShards(33), "lower k or m"),
            (
                StoragePoolSpec {
                    chunk_size: 1000,
                    ..spec(2, 1)
                },
                SpecError::ChunkSize(1000),
                "multiple of 64",
            ),
            (
                StoragePoolSpec {
                    chunk_size: 128 << 20,
                    ..spec(2, 1)
                },
                SpecError::ChunkSize(128 << 20),
                "to 67108864 (64 MiB)",
            ),
            (
                StoragePoolSpec {
                    pg_count: 100,
                    ..spec(2, 1)
                },
                SpecError::PgCount(100),
                "power of two",
            ),
            (
                StoragePoolSpec {
                    pg_count: 0,
                    ..spec(2, 1)
                },
                SpecError::PgCount(0),
                "power of two",
            ),
            (
                StoragePoolSpec {
                    pg_count: 131_072,
                    ..spec(2, 1)
                },
                SpecError::PgCount(131_072),
                "from 1 to 65536",
            ),
            (
                StoragePoolSpec {
                    write_quorum: Some(3),
                    ..spec(4, 2)
                },
                SpecError::WriteQuorum {
                    quorum: 3,
                    k: 4,
                    width: 6,
                },
                "from k to k+m (4 to 6)",
            ),
            (
                StoragePoolSpec {
                    write_quorum: Some(7),
                    ..spec(4, 2)
                },
                SpecError::WriteQuorum {
                    quorum: 7,
                    k: 4,
                    width: 6,
                },
                "leave it unset for k+1",
            ),
            (
                StoragePoolSpec {
                    failure_domain_key: String::new(),
                    ..spec(2, 1)
                },
                SpecError::EmptyFailureDomainKey,
                "kubernetes.io/hostname",
            ),
            (
                StoragePoolSpec {
                    down_after: "30".into(),
                    ..spec(2, 1)
                },
                SpecError::DownAfter(DurationError::MissingUnit { input: "30".into() }),
                "downAfter: \"30\" has a number without a unit",
            ),
            (
                StoragePoolSpec {
                    out_after: "5 minutes".into(),
                    ..spec(2, 1)
                },
                SpecError::OutAfter(DurationError::UnknownUnit {
                    input: "5 minutes".into(),
                    unit: " minutes".into(),
                }),
                "such as 30s, 5m or 1m30s",
            ),
            (
                StoragePoolSpec {
                    down_after: "500ms".into(),
                    ..spec(2, 1)
                },
                SpecError::DownAfterTooShort(Duration::from_millis(500)),
                "raise it",
            ),
            (
                StoragePoolSpec {
                    down_after: "5m".into(),
                    out_after: "5m".into(),
                    ..spec(2, 1)
                },
                SpecError::OutNotAfterDown {
                    down_after: Duration::from_secs(300),
                    out_after: Duration::from_secs(300),
                },
                "raise outAfter or lower downAfter",
            ),
        ];
        for (spec, want, advice) in cases {
            let got = spec.validate().unwrap_err();
            assert_eq!(got, want, "{spec:?}");
            let message = got.to_string();
            assert!(message.contains(advice), "{message:?} lacks {advice:?}");
        }
    }

    #[test]
    fn boundaries_are_accepted() {
        for s in [
            spec(1, 1),
            spec(31, 1),
            spec(1, 31),
            spec(16, 16),
            StoragePoolSpec {
                chunk_size: MIN_CHUNK_SIZE,
                pg_count: 1,
                write_quorum: Some(1),
                ..spec(1, 1)
            },
            StoragePoolSpec {
                chunk_size: MAX_CHUNK_SIZE,
                pg_count: MAX_PG_COUNT,
                write_quorum: Some(32),
                ..spec(16, 16)
            },
            StoragePoolSpec {
                down_after: "1s".into(),
                out_after: "1001ms".into(),
                ..spec(2, 1)
            },
        ] {
            assert!(s.validate().is_ok(), "{s:?}: {:?}", s.validate());
        }
    }

    #[test]
    fn long_pool_names_are_refused() {
        let mut pool = StoragePool::new(&"p".repeat(MAX_POOL_NAME), spec(2, 1));
        assert!(pool.validate().is_ok());
        pool.metadata.name = Some("p".repeat(MAX_POOL_NAME + 1));
        let err = pool.validate().unwrap_err();
        assert!(matches!(err, SpecError::NameTooLong(_)), "{err}");
        assert!(err.to_string().contains("shorter name"), "{err}");
    }

    #[test]
    fn effective_write_quorum_defaults_to_k_plus_one() {
        assert_eq!(spec(4, 2).effective_write_quorum(), 5);
        assert_eq!(spec(1, 1).effective_write_quorum(), 2);
        let explicit = StoragePoolSpec {
            write_quorum: Some(4),
            ..spec(4, 2)
        };
        assert_eq!(explicit.effective_write_quorum(), 4);
    }

    #[test]
    fn pg_count_rule_lists_every_power_of_two_up_to_the_limit() {
        let rule = pg_count_rule().rule;
        assert!(rule.starts_with("self in [1, 2, 4, 8, "), "{rule}");
        assert!(rule.ends_with(", 32768, 65536]"), "{rule}");
        assert_eq!(rule.matches(", ").count(), 16);
    }
}
