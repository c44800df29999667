//! RocksDB on the member's disk: shards, their hashes, manifests, node metadata.
//!
//! Column families keep data of different shapes apart: shard bytes go to
//! `shards`, whose large values live in blob files (integrated BlobDB) so
//! compaction never rewrites them; the small per-shard record (length and
//! BLAKE3) goes to `shard_meta`, which listing and start-up accounting scan
//! without touching blob files. Every write is synced before it returns.
//!
//! All methods block; async callers go through `spawn_blocking`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prost::Message;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

use crate::keys::{self, ShardKey};
use potluck_proto::v1 as pb;

const CF_SHARDS: &str = "shards";
const CF_SHARD_META: &str = "shard_meta";
const CF_MANIFESTS: &str = "manifests";
const CF_GC: &str = "gc";
/// (pool, key hash, bucket, key) → nothing: a PG's manifests as one range, for recovery's
/// per-PG listings (the `manifests` family is ordered by bucket and key, for ListObjects).
const CF_MANIFEST_INDEX: &str = "manifest_index";
const CF_META: &str = "meta";

const META_MAP: &[u8] = b"cluster_map";
const META_MEMBER: &[u8] = b"member_id";
const META_SCRUB: &[u8] = b"scrub_last_unix_ms";
const META_FORMAT: &[u8] = b"format";
const META_INDEXED: &[u8] = b"manifest_index_built";
/// Format 3: object ids carry their creation time and their key's hash
/// (`layout::new_object_id`), which abandoned-stripe collection relies on (data written with
/// the random ids of format 1 would look abandoned to it), and the manifest index is in
/// `layout::index_order` (format 2, briefly, ordered it otherwise).
const FORMAT: &[u8] = b"3";

/// Values at least this large go to blob files.
const MIN_BLOB_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("shard {key} is corrupt on disk ({detail}); it will be read from parity instead")]
    Corrupt { key: String, detail: String },
    #[error("shard data does not match its BLAKE3 hash; resend it")]
    HashMismatch,
    #[error(
        "member is full: {used} of {capacity} bytes used, {needed} more needed; add members or free space"
    )]
    Full {
        used: u64,
        capacity: u64,
        needed: u64,
    },
    #[error(
        "data directory belongs to member {found:?}, not {expected:?}; use the right --data-dir"
    )]
    WrongMember { expected: String, found: String },
    #[error(
        "data directory holds data in an older format ({found}), whose object ids this version would take for abandoned uploads and delete; copy the objects out with the older version and start this member with an empty --data-dir"
    )]
    OldFormat { found: String },
    #[error("stored record is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

/// Length and hash of a stored shard, as kept in `shard_meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    pub len: u64,
    pub hash: [u8; 32],
}

impl ShardMeta {
    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..].copy_from_slice(&self.hash);
        b
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != 40 {
            return Err(StoreError::Malformed(format!(
                "shard meta of {} bytes",
                b.len()
            )));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[8..]);
        Ok(Self {
            len: u64::from_le_bytes(len),
            hash,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub shards: u64,
    pub bytes: u64,
    pub manifests: u64,
    pub capacity: u64,
}

/// An old object version whose shards wait for collection.
#[derive(Clone, Debug)]
pub struct GcEntry {
    pub id: Vec<u8>,
    pub due_unix_ms: u64,
    pub manifest: pb::Manifest,
}

pub struct ShardStore {
    db: DB,
    sync: WriteOptions,
    capacity: u64,
    shards: AtomicU64,
    bytes: AtomicU64,
    manifests: AtomicU64,
    /// Manifest writes are read-compare-write; they are small and rare next to
    /// shard writes, so one lock is simpler than per-key locking.
    manifest_lock: Mutex<()>,
    /// Shard writes and deletes read the old record to keep the byte count
    /// right; two of them on one key at once (several manifest holders
    /// collecting the same old version) must not both count it. Striped by
    /// key hash so unrelated shards never wait on each other.
    shard_locks: Vec<Mutex<()>>,
}

const SHARD_LOCK_STRIPES: usize = 64;

fn shard_cf_options() -> Options {
    let mut o = Options::default();
    o.set_enable_blob_files(true);
    o.set_min_blob_size(MIN_BLOB_SIZE);
    o.set_blob_file_size(256 << 20);
    // Shards are usually compressed or encrypted content: compressing costs CPU
    // for nothing.
    o.set_blob_compression_type(DBCompressionType::None);
    o.set_enable_blob_gc(true);
    o.set_write_buffer_size(64 << 20);
    o
}

impl ShardStore {
    /// Opens (or creates) the store, checks it belongs to `member_id`, and
    /// counts what it holds.
    pub fn open(path: &Path, member_id: &str, capacity: u64) -> Result<Self, StoreError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_SHARDS, shard_cf_options()),
            ColumnFamilyDescriptor::new(CF_SHARD_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_MANIFESTS, Options::default()),
            ColumnFamilyDescriptor::new(CF_GC, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_MANIFEST_INDEX, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let store = Self {
            db,
            sync,
            capacity,
            shards: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            manifests: AtomicU64::new(0),
            manifest_lock: Mutex::new(()),
            shard_locks: (0..SHARD_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        };
        store.claim(member_id)?;
        store.recount()?;
        store.check_format()?;
        store.build_manifest_index()?;
        Ok(store)
    }

    /// Indexes every manifest once, for stores written before the index existed.
    fn build_manifest_index(&self) -> Result<(), StoreError> {
        let meta = self.cf(CF_META)?;
        if self.db.get_cf(meta, META_INDEXED)?.is_some() {
            return Ok(());
        }
        let index = self.cf(CF_MANIFEST_INDEX)?;
        let mut batch = WriteBatch::default();
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS)?, IteratorMode::Start)
        {
            let (_, v) = item?;
            let m = decode_manifest(&v)?;
            let hash = crate::layout::key_hash(&m.bucket, &m.key);
            batch.put_cf(
                index,
                keys::manifest_index_key(&m.pool, hash, &m.bucket, &m.key),
                [],
            );
        }
        batch.put_cf(meta, META_INDEXED, b"1");
        Ok(self.db.write_opt(batch, &self.sync)?)
    }

    /// Marks a new store with the current format, and refuses one written in an older format.
    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, META_FORMAT)? {
            Some(f) if f == FORMAT => Ok(()),
            Some(f) => Err(StoreError::OldFormat {
                found: String::from_utf8_lossy(&f).into_owned(),
            }),
            None if self.shards.load(Ordering::Relaxed)
                + self.manifests.load(Ordering::Relaxed)
                > 0 =>
            {
                Err(StoreError::OldFormat { found: "1".into() })
            }
            None => Ok(self.db.put_cf_opt(meta, META_FORMAT, FORMAT, &self.sync)?),
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Malformed(format!("column family {name} missing")))
    }

    fn lock_key(&self, k: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let h = blake3::hash(k);
        let i = h.as_bytes()[0] as usize % self.shard_locks.len();
        match self.shard_locks[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn claim(&self, member_id: &str) -> Result<(), StoreError> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, META_MEMBER)? {
            Some(found) if found != member_id.as_bytes() => Err(StoreError::WrongMember {
                expected: member_id.to_string(),
                found: String::from_utf8_lossy(&found).into_owned(),
            }),
            Some(_) => Ok(()),
            None => Ok(self
                .db
                .put_cf_opt(meta, META_MEMBER, member_id.as_bytes(), &self.sync)?),
        }
    }

    fn recount(&self) -> Result<(), StoreError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in self
            .db
            .iterator_cf(self.cf(CF_SHARD_META)?, IteratorMode::Start)
        {
            let (_, v) = item?;
            n += 1;
            bytes += ShardMeta::decode(&v)?.len;
        }
        let mut m = 0u64;
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS)?, IteratorMode::Start)
        {
            item?;
            m += 1;
        }
        self.shards.store(n, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.manifests.store(m, Ordering::Relaxed);
        Ok(())
    }

    /// The RocksDB directory; the agent keeps small files of its own (upload records) next
    /// to it.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            shards: self.shards.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            manifests: self.manifests.load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }

    /// Stores a shard after checking `data` against `hash`; durable on return.
    pub fn put_shard(
        &self,
        key: &ShardKey,
        data: &[u8],
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        if blake3::hash(data).as_bytes() != hash {
            return Err(StoreError::HashMismatch);
        }
        let k = key.encode();
        let meta_cf = self.cf(CF_SHARD_META)?;
        let _guard = self.lock_key(&k);
        let old = self
            .db
            .get_cf(meta_cf, &k)?
            .map(|v| ShardMeta::decode(&v))
            .transpose()?;
        let old_len = old.map_or(0, |o| o.len);
        let new_len = data.len() as u64;
        let meta = ShardMeta {
            len: new_len,
            hash: *hash,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SHARDS)?, &k, data);
        batch.put_cf(meta_cf, &k, meta.encode());
        // Reserve the growth before writing: shards of different keys are
        // written concurrently (a put keeps several stripes in flight), and a
        // check followed by a later add would let them all pass the same check.
        let grow = new_len.saturating_sub(old_len);
        let capacity = self.capacity;
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + grow <= capacity).then_some(used + grow)
            })
            .map_err(|used| StoreError::Full {
                used,
                capacity,
                needed: grow,
            })?;
        if let Err(e) = self.db.write_opt(batch, &self.sync) {
            self.bytes.fetch_sub(grow, Ordering::AcqRel);
            return Err(e.into());
        }
        if old.is_none() {
            self.shards.fetch_add(1, Ordering::Relaxed);
        }
        // A shorter replacement gives back what it no longer uses.
        self.bytes
            .fetch_sub(old_len.saturating_sub(new_len), Ordering::AcqRel);
        Ok(())
    }

    /// Reads a shard and verifies it against its stored hash. `Ok(None)` when
    /// absent; `Err(Corrupt)` when the bytes on disk no longer match.
    pub fn get_shard(&self, key: &ShardKey) -> Result<Option<(Vec<u8>, ShardMeta)>, StoreError> {
        let k = key.encode();
        let Some(meta) = self.db.get_cf(self.cf(CF_SHARD_META)?, &k)? else {
            return Ok(None);
        };
        let meta = ShardMeta::decode(&meta)?;
        let corrupt = |detail: String| StoreError::Corrupt {
            key: format!("{key:?}"),
            detail,
        };
        let data = match self.db.get_cf(self.cf(CF_SHARDS)?, &k) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(corrupt("data missing".into())),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                return Err(corrupt(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        if data.len() as u64 != meta.len || blake3::hash(&data).as_bytes() != &meta.hash {
            return Err(corrupt("BLAKE3 mismatch".into()));
        }
        Ok(Some((data, meta)))
    }

    pub fn delete_shard(&self, key: &ShardKey) -> Result<bool, StoreError> {
        let k = key.encode();
        let meta_cf = self.cf(CF_SHARD_META)?;
        let _guard = self.lock_key(&k);
        let Some(old) = self.db.get_cf(meta_cf, &k)? else {
            return Ok(false);
        };
        let old = ShardMeta::decode(&old)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_SHARDS)?, &k);
        batch.delete_cf(meta_cf, &k);
        self.db.write_opt(batch, &self.sync)?;
        self.shards.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(old.len, Ordering::Relaxed);
        Ok(true)
    }

    /// Shards of one PG in key order, after `after` (exclusive).
    pub fn list_shards(
        &self,
        pool: &str,
        pg: u32,
        after: Option<&ShardKey>,
        limit: usize,
    ) -> Result<(Vec<(ShardKey, ShardMeta)>, bool), StoreError> {
        self.scan_shard_meta(&keys::pg_prefix(pool, pg), after, limit)
    }

    /// Every shard held (of `pool`, or of all pools) in key order, after `after` (exclusive):
    /// what the scrubber walks. Reads only `shard_meta`, so a page costs no blob reads.
    pub fn list_all_shards(
        &self,
        pool: Option<&str>,
        after: Option<&ShardKey>,
        limit: usize,
    ) -> Result<(Vec<(ShardKey, ShardMeta)>, bool), StoreError> {
        let prefix = pool.map(keys::pool_prefix).unwrap_or_default();
        self.scan_shard_meta(&prefix, after, limit)
    }

    /// One page of `shard_meta` entries under `prefix`, after `after` (exclusive); the flag
    /// says whether more follow.
    fn scan_shard_meta(
        &self,
        prefix: &[u8],
        after: Option<&ShardKey>,
        limit: usize,
    ) -> Result<(Vec<(ShardKey, ShardMeta)>, bool), StoreError> {
        let start = match after {
            Some(a) => {
                let mut k = a.encode();
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_SHARD_META)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((ShardKey::decode(&k)?, ShardMeta::decode(&v)?));
        }
        Ok((out, false))
    }

    /// Overwrites a shard with repaired bytes, but only while its record is still `seen` (what
    /// the scrubber found corrupt): if GC deleted it or a writer replaced it meanwhile, the
    /// repair would resurrect or clobber data, so it is dropped and `Ok(false)` returned.
    pub fn repair_shard(
        &self,
        key: &ShardKey,
        data: &[u8],
        seen: &ShardMeta,
    ) -> Result<bool, StoreError> {
        if data.len() as u64 != seen.len || blake3::hash(data).as_bytes() != &seen.hash {
            return Err(StoreError::HashMismatch);
        }
        let k = key.encode();
        let meta_cf = self.cf(CF_SHARD_META)?;
        let _guard = self.lock_key(&k);
        match self.db.get_cf(meta_cf, &k)? {
            Some(v) if ShardMeta::decode(&v)? == *seen => {}
            _ => return Ok(false),
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SHARDS)?, &k, data);
        batch.put_cf(meta_cf, &k, seen.encode());
        self.db.write_opt(batch, &self.sync)?;
        Ok(true)
    }

    /// When the last full scrub pass ended (unix ms), kept so a restart neither repeats nor
    /// postpones the schedule.
    pub fn last_scrub(&self) -> Result<Option<u64>, StoreError> {
        match self.db.get_cf(self.cf(CF_META)?, META_SCRUB)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    StoreError::Malformed(format!("scrub time of {} bytes", v.len()))
                })?;
                Ok(Some(u64::from_le_bytes(b)))
            }
        }
    }

    pub fn save_last_scrub(&self, unix_ms: u64) -> Result<(), StoreError> {
        Ok(self.db.put_cf_opt(
            self.cf(CF_META)?,
            META_SCRUB,
            unix_ms.to_le_bytes(),
            &self.sync,
        )?)
    }

    /// Stores `m` unless a newer (version, object id) is already there.
    /// Returns whether it was applied. A replaced object version is queued for
    /// shard collection `gc_delay_ms` from now, in the same atomic write.
    pub fn put_manifest(
        &self,
        m: &pb::Manifest,
        now_unix_ms: u64,
        gc_delay_ms: u64,
    ) -> Result<bool, StoreError> {
        let k = keys::manifest_key(&m.pool, &m.bucket, &m.key);
        let cf = self.cf(CF_MANIFESTS)?;
        let _guard = self
            .manifest_lock
            .lock()
            .map_err(|_| StoreError::Malformed("manifest lock poisoned".into()))?;
        let old = match self.db.get_cf(cf, &k)? {
            Some(v) => Some(decode_manifest(&v)?),
            None => None,
        };
        if let Some(o) = &old {
            if (o.version, &o.object_id) >= (m.version, &m.object_id) {
                return Ok(false);
            }
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, &k, m.encode_to_vec());
        if old.is_none() {
            let hash = crate::layout::key_hash(&m.bucket, &m.key);
            batch.put_cf(
                self.cf(CF_MANIFEST_INDEX)?,
                keys::manifest_index_key(&m.pool, hash, &m.bucket, &m.key),
                [],
            );
        }
        if let Some(o) = old.as_ref().filter(|o| !o.tombstone && o.size > 0) {
            let due = now_unix_ms + gc_delay_ms;
            batch.put_cf(self.cf(CF_GC)?, gc_key(due, o), o.encode_to_vec());
        }
        self.db.write_opt(batch, &self.sync)?;
        if old.is_none() {
            self.manifests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    pub fn get_manifest(
        &self,
        pool: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<pb::Manifest>, StoreError> {
        let k = keys::manifest_key(pool, bucket, key);
        self.db
            .get_cf(self.cf(CF_MANIFESTS)?, k)?
            .map(|v| decode_manifest(&v))
            .transpose()
    }

    /// Manifests of `bucket` whose key starts with `prefix` and sorts after
    /// `start_after`, tombstones included, without their shard hashes.
    pub fn list_manifests(
        &self,
        pool: &str,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Manifest>, bool), StoreError> {
        let bp = keys::bucket_prefix(pool, bucket);
        let full_prefix = keys::manifest_key(pool, bucket, prefix);
        let mut start = keys::manifest_key(pool, bucket, start_after);
        if start_after.is_empty() || start < full_prefix {
            start = full_prefix.clone();
        } else {
            start.push(0);
        }
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_MANIFESTS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) || !k.starts_with(&bp) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            // Listing needs no shard hashes; a big object's would make a page
            // of manifests outgrow the message limit.
            let mut m = decode_manifest(&v)?;
            m.shard_hashes.clear();
            m.missing.clear();
            out.push(m);
        }
        Ok((out, false))
    }

    /// Whole manifests (shard hashes included) of every bucket of `pool` whose key hashes to
    /// `pg`, in key-hash order, after `(bucket, key)`: what a PG's leader compares across its
    /// members. One range of the manifest index, so it costs the PG's manifests, not the pool's.
    pub fn list_pg_manifests(
        &self,
        pool: &str,
        pg: u32,
        pg_count: u32,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<(Vec<pb::Manifest>, bool), StoreError> {
        // A power-of-two PG count (always, for pools the operator places) makes the PG one
        // range of the index; otherwise the whole pool's range is scanned and filtered.
        let (lo, hi) = crate::layout::pg_index_range(pg, pg_count).unwrap_or((0, 1 << 32));
        let from = keys::manifest_index_from(pool, lo);
        let start = match after {
            Some((b, k)) => {
                let mut s = keys::manifest_index_key(pool, crate::layout::key_hash(b, k), b, k);
                s.push(0);
                // A cursor from outside the PG's range must not list other PGs.
                s.max(from)
            }
            None => from,
        };
        let end = keys::manifest_index_from(pool, hi);
        let manifests = self.cf(CF_MANIFESTS)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_MANIFEST_INDEX)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            let Some(manifest_key) = keys::manifest_key_of_index(pool, &k) else {
                return Err(StoreError::Malformed(format!(
                    "manifest index key of {} bytes",
                    k.len()
                )));
            };
            // Purged along with its manifest; a missing one is a race with a purge.
            let Some(v) = self.db.get_cf(manifests, &manifest_key)? else {
                continue;
            };
            let m = decode_manifest(&v)?;
            if crate::layout::manifest_pg(&m.bucket, &m.key, pg_count) != pg {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(m);
        }
        Ok((out, false))
    }

    /// Queued collections whose time has come.
    pub fn due_gc(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<GcEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            let (k, v) = item?;
            let due = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Malformed("gc key".into()))?;
            if due > now_unix_ms || out.len() == limit {
                break;
            }
            out.push(GcEntry {
                id: k.to_vec(),
                due_unix_ms: due,
                manifest: decode_manifest(&v)?,
            });
        }
        Ok(out)
    }

    pub fn gc_pending(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes a finished entry, or moves it to `retry_at` when not finished.
    pub fn settle_gc(&self, entry: &GcEntry, retry_at: Option<u64>) -> Result<(), StoreError> {
        let cf = self.cf(CF_GC)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, &entry.id);
        if let Some(at) = retry_at {
            batch.put_cf(
                cf,
                gc_key(at, &entry.manifest),
                entry.manifest.encode_to_vec(),
            );
        }
        Ok(self.db.write_opt(batch, &self.sync)?)
    }

    pub fn save_map(&self, map: &pb::ClusterMap) -> Result<(), StoreError> {
        Ok(self
            .db
            .put_cf_opt(self.cf(CF_META)?, META_MAP, map.encode_to_vec(), &self.sync)?)
    }

    pub fn load_map(&self) -> Result<Option<pb::ClusterMap>, StoreError> {
        self.db
            .get_cf(self.cf(CF_META)?, META_MAP)?
            .map(|v| {
                pb::ClusterMap::decode(v.as_slice())
                    .map_err(|e| StoreError::Malformed(format!("cluster map: {e}")))
            })
            .transpose()
    }

    /// Pools this store holds shards or manifests of: one seek per pool and column family,
    /// jumping from each pool's keys to the next pool's.
    pub fn local_pools(&self) -> Result<Vec<String>, StoreError> {
        let mut pools = std::collections::BTreeSet::new();
        for cf in [CF_SHARD_META, CF_MANIFESTS] {
            let mut from = Vec::new();
            loop {
                let mut iter = self
                    .db
                    .iterator_cf(self.cf(cf)?, IteratorMode::From(&from, Direction::Forward));
                let Some(item) = iter.next() else { break };
                let (k, _) = item?;
                let malformed = || StoreError::Malformed(format!("key of {} bytes", k.len()));
                let len = usize::from(*k.first().ok_or_else(malformed)?);
                let name = k
                    .get(1..1 + len)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .ok_or_else(malformed)?;
                pools.insert(name.to_string());
                match keys::prefix_end(&keys::pool_prefix(name)) {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        Ok(pools.into_iter().collect())
    }

    /// Deletes up to `limit` shards and up to `limit` manifests of a pool the map no longer
    /// has; returns how many of each went, (0, 0) once nothing is left.
    pub fn purge_pool(&self, pool: &str, limit: usize) -> Result<(u64, u64), StoreError> {
        let (shards, _) = self.list_all_shards(Some(pool), None, limit)?;
        let mut gone = 0;
        for (key, _) in shards {
            if self.delete_shard(&key)? {
                gone += 1;
            }
        }
        let prefix = keys::pool_prefix(pool);
        let cf = self.cf(CF_MANIFESTS)?;
        let _guard = self
            .manifest_lock
            .lock()
            .map_err(|_| StoreError::Malformed("manifest lock poisoned".into()))?;
        let mut batch = WriteBatch::default();
        let mut manifests = 0u64;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || manifests as usize == limit {
                break;
            }
            batch.delete_cf(cf, &k);
            manifests += 1;
        }
        if manifests < limit as u64 {
            // Every manifest of the pool is in this batch: drop its index range too.
            if let Some(end) = keys::prefix_end(&prefix) {
                batch.delete_range_cf(self.cf(CF_MANIFEST_INDEX)?, &prefix, &end);
            }
        }
        if !batch.is_empty() {
            self.db.write_opt(batch, &self.sync)?;
            self.manifests.fetch_sub(manifests, Ordering::Relaxed);
        }
        Ok((gone, manifests))
    }

    /// Moves memtables to SST and blob files, so a clean stop leaves the WAL empty.
    pub fn flush(&self) -> Result<(), StoreError> {
        for cf in [
            CF_SHARDS,
            CF_SHARD_META,
            CF_MANIFESTS,
            CF_GC,
            CF_META,
            CF_MANIFEST_INDEX,
        ] {
            self.db.flush_cf(self.cf(cf)?)?;
        }
        Ok(())
    }

    /// RocksDB's integer property of the shard column family, for metrics.
    pub fn shard_cf_property(&self, name: &str) -> Option<u64> {
        let cf = self.cf(CF_SHARDS).ok()?;
        self.db.property_int_value_cf(cf, name).ok().flatten()
    }

    #[cfg(test)]
    fn overwrite_raw(&self, key: &ShardKey, data: &[u8]) {
        self.db
            .put_cf(self.cf(CF_SHARDS).unwrap(), key.encode(), data)
            .unwrap();
    }
}

fn gc_key(due: u64, m: &pb::Manifest) -> Vec<u8> {
    let mut k = due.to_be_bytes().to_vec();
    k.extend_from_slice(&m.object_id);
    k
}

fn decode_manifest(v: &[u8]) -> Result<pb::Manifest, StoreError> {
    pb::Manifest::decode(v).map_err(|e| StoreError::Malformed(format!("manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pg: u32, stripe: u32, shard: u8) -> ShardKey {
        ShardKey {
            pool: "default".into(),
            pg,
            object_id: [1; 16],
            stripe,
            shard,
        }
    }

    fn put(store: &ShardStore, k: &ShardKey, data: &[u8]) {
        store
            .put_shard(k, data, blake3::hash(data).as_bytes())
            .unwrap();
    }

    #[test]
    fn a_pgs_manifests_are_listed_from_the_index_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = |pool: &str, key: String| pb::Manifest {
            pool: pool.into(),
            bucket: "bkt".into(),
            key,
            version: 1,
            object_id: vec![1; 16].into(),
            ..Default::default()
        };
        {
            let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
            for i in 0..40 {
                assert!(s
                    .put_manifest(&manifest("p", format!("k{i}")), 0, 0)
                    .unwrap());
                assert!(s
                    .put_manifest(&manifest("q", format!("k{i}")), 0, 0)
                    .unwrap());
            }
            // A store from before the index: the next open rebuilds it.
            let meta = s.cf(CF_META).unwrap();
            s.db.delete_cf(meta, META_INDEXED).unwrap();
            let index = s.cf(CF_MANIFEST_INDEX).unwrap();
            let all: Vec<_> =
                s.db.iterator_cf(index, IteratorMode::Start)
                    .map(|i| i.unwrap().0)
                    .collect();
            for k in all {
                s.db.delete_cf(index, k).unwrap();
            }
        }
        let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
        let pg_count = 4;
        let mut seen = 0;
        for pg in 0..pg_count {
            let mut after: Option<(String, String)> = None;
            loop {
                let (page, more) = s
                    .list_pg_manifests(
                        "p",
                        pg,
                        pg_count,
                        after.as_ref().map(|(b, k)| (b.as_str(), k.as_str())),
                        3,
                    )
                    .unwrap();
                for m in &page {
                    assert_eq!(m.pool, "p");
                    assert_eq!(crate::layout::manifest_pg(&m.bucket, &m.key, pg_count), pg);
                    seen += 1;
                }
                after = page.last().map(|m| (m.bucket.clone(), m.key.clone()));
                if !more {
                    break;
                }
            }
        }
        assert_eq!(seen, 40, "every manifest of the pool, once, in its own PG");
    }

    #[test]
    fn a_store_with_data_but_no_format_mark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
            put(&s, &key(1, 0, 0), b"x");
            s.db.delete_cf(s.cf(CF_META).unwrap(), META_FORMAT).unwrap();
        }
        let err = ShardStore::open(dir.path(), "a", 1 << 30).err().unwrap();
        assert!(matches!(err, StoreError::OldFormat { .. }), "{err}");
        let fresh = tempfile::tempdir().unwrap();
        drop(ShardStore::open(fresh.path(), "a", 1 << 30).unwrap());
        ShardStore::open(fresh.path(), "a", 1 << 30).expect("a store it marked itself opens");
    }

    #[test]
    fn retired_pools_are_found_and_purged_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
        let mut k = key(1, 0, 0);
        for pool in ["ab", "abc", "b"] {
            k.pool = pool.into();
            for stripe in 0..3 {
                k.stripe = stripe;
                put(&s, &k, pool.as_bytes());
            }
        }
        let m = pb::Manifest {
            pool: "zz".into(),
            bucket: "bkt".into(),
            key: "x".into(),
            version: 1,
            object_id: vec![1; 16].into(),
            ..Default::default()
        };
        assert!(s.put_manifest(&m, 0, 0).unwrap());
        assert_eq!(s.local_pools().unwrap(), ["ab", "abc", "b", "zz"]);

        assert_eq!(s.purge_pool("ab", 2).unwrap(), (2, 0));
        assert_eq!(s.purge_pool("ab", 2).unwrap(), (1, 0));
        assert_eq!(s.purge_pool("ab", 2).unwrap(), (0, 0));
        assert_eq!(s.purge_pool("zz", 2).unwrap(), (0, 1));
        assert_eq!(s.local_pools().unwrap(), ["abc", "b"]);
        assert_eq!(
            s.stats().shards,
            6,
            "pool abc, a longer name, kept its shards"
        );
        assert_eq!(s.stats().manifests, 0);
    }

    #[test]
    fn shards_round_trip_survive_reopen_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 100_000];
        {
            let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
            put(&s, &key(1, 0, 0), &big);
            put(&s, &key(1, 0, 1), b"small");
            put(&s, &key(2, 0, 0), b"other pg");
            assert_eq!(s.stats().shards, 3);
            s.flush().unwrap();
        }
        let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
        assert_eq!(s.stats().shards, 3);
        assert_eq!(s.stats().bytes, 100_000 + 5 + 8);
        assert_eq!(s.get_shard(&key(1, 0, 0)).unwrap().unwrap().0, big);
        let (listed, more) = s.list_shards("default", 1, None, 10).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(!more);
        let (page, more) = s.list_shards("default", 1, None, 1).unwrap();
        assert!(more);
        let (rest, _) = s.list_shards("default", 1, Some(&page[0].0), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert!(s.delete_shard(&key(1, 0, 1)).unwrap());
        assert!(!s.delete_shard(&key(1, 0, 1)).unwrap());
        assert_eq!(s.stats().shards, 2);
        drop(s);
        assert!(matches!(
            ShardStore::open(dir.path(), "b", 1),
            Err(StoreError::WrongMember { .. })
        ));
    }

    #[test]
    fn bad_hashes_full_disks_and_corruption_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 10_000).unwrap();
        assert!(matches!(
            s.put_shard(&key(0, 0, 0), b"abc", &[0; 32]),
            Err(StoreError::HashMismatch)
        ));
        let big = vec![1u8; 20_000];
        assert!(matches!(
            s.put_shard(&key(0, 0, 0), &big, blake3::hash(&big).as_bytes()),
            Err(StoreError::Full { .. })
        ));
        put(&s, &key(0, 0, 1), b"good bytes");
        s.overwrite_raw(&key(0, 0, 1), b"evil bytes");
        assert!(matches!(
            s.get_shard(&key(0, 0, 1)),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn concurrent_puts_never_overfill_a_member() {
        // 16 writers race for room for 5 shards: exactly 5 may land, and the
        // byte count matches what is stored.
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 5 * 4096).unwrap();
        let data = vec![7u8; 4096];
        let hash = *blake3::hash(&data).as_bytes();
        let stored = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..16u32)
                .map(|i| {
                    let (s, data) = (&s, &data);
                    scope.spawn(move || s.put_shard(&key(i, 0, 0), data, &hash).is_ok())
                })
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().unwrap())
                .filter(|&ok| ok)
                .count()
        });
        assert_eq!(stored, 5);
        assert_eq!(s.stats().bytes, 5 * 4096);
        assert_eq!(s.stats().shards, 5);
    }

    #[test]
    fn scrub_walks_every_shard_and_repairs_only_what_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 1 << 30).unwrap();
        let other = ShardKey {
            pool: "other".into(),
            ..key(0, 0, 0)
        };
        for k in [key(1, 0, 0), key(2, 0, 1), key(2, 1, 0), other.clone()] {
            put(&s, &k, &[k.pg as u8; 5000]);
        }
        let (all, more) = s.list_all_shards(None, None, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert!(!more);
        let (page, more) = s.list_all_shards(Some("default"), None, 2).unwrap();
        assert!(more);
        let (rest, more) = s
            .list_all_shards(Some("default"), Some(&page[1].0), 2)
            .unwrap();
        assert_eq!((rest.len(), more), (1, false));
        assert_eq!(
            s.list_all_shards(Some("other"), None, 10).unwrap().0[0].0,
            other
        );

        let k = key(2, 0, 1);
        let good = [2u8; 5000];
        let seen = s.get_shard(&k).unwrap().unwrap().1;
        s.overwrite_raw(&k, &[9u8; 5000]);
        assert!(matches!(s.get_shard(&k), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            s.repair_shard(&k, &[9u8; 5000], &seen),
            Err(StoreError::HashMismatch)
        ));
        let before = s.stats();
        assert!(s.repair_shard(&k, &good, &seen).unwrap());
        assert_eq!(s.get_shard(&k).unwrap().unwrap().0, good);
        assert_eq!(s.stats(), before, "a repair changes no counts");
        // Collected meanwhile: the repair must not bring it back.
        s.delete_shard(&k).unwrap();
        assert!(!s.repair_shard(&k, &good, &seen).unwrap());
        assert!(s.get_shard(&k).unwrap().is_none());

        assert_eq!(s.last_scrub().unwrap(), None);
        s.save_last_scrub(1234).unwrap();
        assert_eq!(s.last_scrub().unwrap(), Some(1234));
    }

    #[test]
    fn concurrent_deletes_of_one_shard_count_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(ShardStore::open(dir.path(), "a", 1 << 30).unwrap());
        for round in 0..20u32 {
            put(&s, &key(0, round, 0), &[1u8; 5000]);
            put(&s, &key(0, round, 1), &[2u8; 7000]);
            std::thread::scope(|sc| {
                for _ in 0..6 {
                    let s = s.clone();
                    sc.spawn(move || s.delete_shard(&key(0, round, 0)).unwrap());
                }
            });
        }
        assert_eq!(s.stats().shards, 20);
        assert_eq!(s.stats().bytes, 20 * 7000);
    }

    fn manifest(key: &str, version: u64, tombstone: bool) -> pb::Manifest {
        pb::Manifest {
            bucket: "b".into(),
            key: key.into(),
            pool: "default".into(),
            version,
            object_id: bytes::Bytes::from(vec![version as u8; 16]),
            tombstone,
            size: 10,
            ..Default::default()
        }
    }

    #[test]
    fn newest_manifest_wins_and_replaced_versions_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 1 << 20).unwrap();
        assert!(s.put_manifest(&manifest("k", 2, false), 1000, 50).unwrap());
        assert!(!s.put_manifest(&manifest("k", 1, false), 1000, 50).unwrap());
        assert_eq!(
            s.get_manifest("default", "b", "k")
                .unwrap()
                .unwrap()
                .version,
            2
        );
        assert!(s.put_manifest(&manifest("k", 3, true), 1000, 50).unwrap());
        assert!(s.due_gc(1049, 10).unwrap().is_empty());
        let due = s.due_gc(1050, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].manifest.version, 2);
        s.settle_gc(&due[0], Some(2000)).unwrap();
        assert!(s.due_gc(1999, 10).unwrap().is_empty());
        let due = s.due_gc(2000, 10).unwrap();
        s.settle_gc(&due[0], None).unwrap();
        assert_eq!(s.gc_pending().unwrap(), 0);
    }

    #[test]
    fn manifests_list_by_prefix_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), "a", 1 << 20).unwrap();
        for k in ["a/1", "a/2", "b/1", "a/3"] {
            s.put_manifest(&manifest(k, 1, false), 0, 0).unwrap();
        }
        let keys = |v: Vec<pb::Manifest>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
        let (all, more) = s.list_manifests("default", "b", "a/", "", 10).unwrap();
        assert_eq!(keys(all), ["a/1", "a/2", "a/3"]);
        assert!(!more);
        let (page, more) = s.list_manifests("default", "b", "a/", "a/1", 1).unwrap();
        assert_eq!(keys(page), ["a/2"]);
        assert!(more);
        let (none, _) = s.list_manifests("default", "other", "", "", 10).unwrap();
        assert!(none.is_empty());
    }
}
