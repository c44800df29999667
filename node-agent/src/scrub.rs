//! Scrub: every member re-reads the shards it holds against their BLAKE3 hashes, so bit rot
//! is found while the stripe's other shards can still rebuild it, not when a later failure
//! needs the rotten shard and finds it useless.
//!
//! A pass walks the store's shard records in key order and reads each shard back (the store
//! checks the hash; RocksDB's own blob checksums fail a read too). A shard that fails is
//! rebuilt from k other shards of its stripe, fetched from the members of its PG's acting set
//! in the current map, and accepted only when the rebuilt bytes hash to the value recorded
//! when the shard was first written: that hash was taken from the original data, so a match
//! proves the repair exact. If this member no longer holds the shard's position (the acting
//! set moved on), the corrupt copy is a stray nobody reads, so it is deleted. With fewer than
//! k other shards reachable the shard is left alone, counted and logged; the next pass tries
//! again.
//!
//! Passes run every `scrub_interval` (zero: only on demand), measured from the end of the
//! last full pass, which the store keeps so a restart neither repeats nor postpones one; and
//! on demand through `AgentControl.Scrub`. One pass runs at a time: an on-demand call while
//! one runs is refused rather than queued, since a queued call could wait for hours behind a
//! full scheduled pass. Reads and repair writes together stay under `scrub_bandwidth`, so
//! client I/O keeps its share of the disk.
//!
//! Races: GC may delete a shard while it is being checked; the repair write is conditional on
//! the shard record being unchanged, so a collected shard is never brought back. Recovery only
//! writes shards a member lacks, so it never meets a shard the scrubber repairs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use potluck_proto::v1 as pb;
use prometheus::{IntCounter, IntGauge};

use crate::cluster::MapView;
use crate::keys::ShardKey;
use crate::node::{now_unix_ms, Node};
use crate::shard_store::{ShardMeta, StoreError};
use crate::throttle::Throttle;

/// Shard records listed per store call.
const PAGE: usize = 256;
/// Lines of `problems` in a response: enough to see the pattern, bounded so a disk full of
/// rot cannot outgrow the message.
const MAX_PROBLEMS: usize = 20;
/// Longest wait before the worker looks at the schedule again (an on-demand full pass may
/// have moved it).
const SCHEDULE_POLL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("a scrub is already running; try again when it ends")]
    Busy,
    #[error("scrub stopped: listing this member's shards failed: {0}")]
    Store(#[from] StoreError),
}

struct ScrubMetrics {
    checked: IntCounter,
    bytes: IntCounter,
    errors: IntCounter,
    repaired: IntCounter,
    unrepaired: IntCounter,
    last_pass: IntGauge,
}

impl ScrubMetrics {
    fn new(node: &Node) -> Result<Self, prometheus::Error> {
        let r = &node.metrics.registry;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let m = Self {
            checked: counter(
                "potluck_scrub_shards_checked_total",
                "Shards the scrubber read back and checked against their BLAKE3 hash",
            )?,
            bytes: counter(
                "potluck_scrub_bytes_checked_total",
                "Bytes of shards the scrubber read back and checked",
            )?,
            errors: counter(
                "potluck_scrub_errors_total",
                "Shards the scrubber found corrupt or unreadable",
            )?,
            repaired: counter(
                "potluck_scrub_repaired_total",
                "Corrupt shards rebuilt from their stripe and rewritten, or deleted as strays",
            )?,
            unrepaired: counter(
                "potluck_scrub_unrepaired_total",
                "Corrupt shards a pass could not repair (counted again by every pass that finds them)",
            )?,
            last_pass: IntGauge::new(
                "potluck_scrub_last_pass_timestamp_seconds",
                "Unix time at which the last full scrub pass ended; 0 before the first",
            )?,
        };
        r.register(Box::new(m.last_pass.clone()))?;
        Ok(m)
    }
}

/// The scrubber's shared state: the pass lock, metrics and schedule.
pub struct Scrubber {
    /// Held for a whole pass, so scheduled and on-demand passes never overlap.
    pass: tokio::sync::Mutex<()>,
    metrics: ScrubMetrics,
    /// End of the last full pass, unix ms; 0 when none is known.
    last_full_pass_ms: AtomicU64,
}

impl Scrubber {
    pub fn new(node: &Node) -> Result<Self, prometheus::Error> {
        Ok(Self {
            pass: tokio::sync::Mutex::new(()),
            metrics: ScrubMetrics::new(node)?,
            last_full_pass_ms: AtomicU64::new(0),
        })
    }

    fn note_full_pass(&self, unix_ms: u64) {
        self.last_full_pass_ms.store(unix_ms, Ordering::Relaxed);
        self.metrics.last_pass.set((unix_ms / 1000) as i64);
    }

    /// An on-demand pass over `pool` (all pools when `None`); refused while one runs.
    pub async fn scrub_now(
        &self,
        node: &Node,
        pool: Option<String>,
    ) -> Result<pb::ScrubResponse, ScrubError> {
        let _pass = self.pass.try_lock().map_err(|_| ScrubError::Busy)?;
        Ok(self.pass_locked(node, pool).await?)
    }

    /// One pass; the caller holds `self.pass`.
    async fn pass_locked(
        &self,
        node: &Node,
        pool: Option<String>,
    ) -> Result<pb::ScrubResponse, StoreError> {
        let mut out = pb::ScrubResponse {
            started_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        let mut throttle = Throttle::new(node.tuning.scrub_bandwidth);
        let mut after: Option<ShardKey> = None;
        loop {
            let (p, a) = (pool.clone(), after.take());
            let (page, more) = node
                .with_store(move |s| s.list_all_shards(p.as_deref(), a.as_ref(), PAGE))
                .await?;
            after = page.last().map(|(k, _)| k.clone());
            for (key, meta) in page {
                self.check(node, key, meta, &mut out, &mut throttle).await;
            }
            if !more || after.is_none() {
                break;
            }
        }
        out.finished_unix_ms = now_unix_ms();
        if pool.is_none() {
            let end = out.finished_unix_ms;
            if let Err(e) = node.with_store(move |s| s.save_last_scrub(end)).await {
                tracing::warn!("cannot record the scrub time; the next start scrubs again: {e}");
            }
            self.note_full_pass(end);
        }
        if out.corrupt > 0 {
            tracing::warn!(
                checked = out.shards_checked,
                corrupt = out.corrupt,
                repaired = out.repaired,
                stray_deleted = out.stray_deleted,
                not_repairable = out.not_repairable,
                "scrub pass found corrupt shards"
            );
        } else {
            tracing::info!(
                checked = out.shards_checked,
                bytes = out.bytes_checked,
                "scrub pass found no corrupt shards"
            );
        }
        Ok(out)
    }

    /// Reads one shard back and repairs it when it fails.
    async fn check(
        &self,
        node: &Node,
        key: ShardKey,
        meta: ShardMeta,
        out: &mut pb::ScrubResponse,
        throttle: &mut Throttle,
    ) {
        let k = key.clone();
        let read = node.with_store(move |s| s.get_shard(&k)).await;
        let damage = match read {
            // Collected (GC) since it was listed.
            Ok(None) => return,
            Ok(Some(_)) => None,
            Err(StoreError::Corrupt { detail, .. }) => Some(detail),
            // An I/O error reading the blob loses the shard just as surely as rot.
            Err(StoreError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::IOError => {
                Some(e.to_string())
            }
            Err(e) => {
                tracing::warn!(shard = ?key, "scrub cannot read a shard: {e}");
                note_problem(out, format!("{}: read failed: {e}", describe(&key)));
                return;
            }
        };
        out.shards_checked += 1;
        out.bytes_checked += meta.len;
        self.metrics.checked.inc();
        self.metrics.bytes.inc_by(meta.len);
        throttle.spent(meta.len).await;
        let Some(detail) = damage else { return };

        out.corrupt += 1;
        self.metrics.errors.inc();
        node.metrics.corrupt_shards.inc();
        tracing::warn!(shard = ?key, "scrub found a corrupt shard ({detail}); repairing");
        match repair(node, &key, meta).await {
            Outcome::Repaired => {
                out.repaired += 1;
                self.metrics.repaired.inc();
                throttle.spent(meta.len).await;
                tracing::info!(shard = ?key, "corrupt shard rebuilt and rewritten");
            }
            Outcome::Stray => {
                out.stray_deleted += 1;
                self.metrics.repaired.inc();
                tracing::info!(shard = ?key, "corrupt shard of a position this member no longer holds deleted");
            }
            Outcome::Gone => {
                tracing::debug!(shard = ?key, "corrupt shard was collected during its repair");
            }
            Outcome::NotRepairable(why) => {
                out.not_repairable += 1;
                self.metrics.unrepaired.inc();
                tracing::warn!(shard = ?key, "corrupt shard not repaired: {why}");
                note_problem(out, format!("{}: {why}", describe(&key)));
            }
        }
    }
}

fn note_problem(out: &mut pb::ScrubResponse, line: String) {
    if out.problems.len() < MAX_PROBLEMS {
        out.problems.push(line);
    }
}

fn describe(key: &ShardKey) -> String {
    format!(
        "pool {} pg {} object {} stripe {} shard {}",
        key.pool,
        key.pg,
        hex::encode(key.object_id),
        key.stripe,
        key.shard
    )
}

enum Outcome {
    Repaired,
    Stray,
    /// Deleted by someone else (GC) while being repaired.
    Gone,
    NotRepairable(String),
}

fn is_up(view: &MapView, member: &str) -> bool {
    view.member(member).is_some_and(|m| {
        matches!(
            pb::MemberState::try_from(m.state),
            Ok(pb::MemberState::Up | pb::MemberState::Draining)
        )
    })
}

/// Rebuilds the shard at `key` from k others of its stripe and rewrites it, or deletes it when
/// this member no longer holds its position.
async fn repair(node: &Node, key: &ShardKey, seen: ShardMeta) -> Outcome {
    let view = node.cluster.view();
    let Some(pool) = view.pool(&key.pool) else {
        return Outcome::NotRepairable(format!(
            "pool not in the cluster map (epoch {})",
            view.epoch()
        ));
    };
    let Some(set) = pool.pgs.get(key.pg as usize) else {
        return Outcome::NotRepairable(format!(
            "the pool has no acting set for this PG (epoch {})",
            view.epoch()
        ));
    };
    let members = &set.members;
    let pos = usize::from(key.shard);
    if members.get(pos) != Some(&node.id) {
        let k = key.clone();
        return match node.with_store(move |s| s.delete_shard(&k)).await {
            Ok(true) => Outcome::Stray,
            Ok(false) => Outcome::Gone,
            Err(e) => Outcome::NotRepairable(format!("deleting the stray copy failed: {e}")),
        };
    }
    let k = pool.k as usize;
    let codec = match node.codecs.get(pool.k, pool.m) {
        Ok(c) => c,
        Err(e) => return Outcome::NotRepairable(format!("no codec for the pool: {e}")),
    };
    if members.len() != k + pool.m as usize {
        return Outcome::NotRepairable(format!(
            "acting set has {} members, the pool's code needs {}",
            members.len(),
            k + pool.m as usize
        ));
    }
    let at = |p: usize| ShardKey {
        shard: p as u8,
        ..key.clone()
    };
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; members.len()];
    let mut got = 0;
    for p in (0..members.len()).filter(|p| *p != pos) {
        if got == k {
            break;
        }
        if !is_up(&view, &members[p]) {
            continue;
        }
        match node.get_shard(&view, &members[p], at(p)).await {
            Ok(Some(d)) if d.len() as u64 == seen.len => {
                shards[p] = Some(d.to_vec());
                got += 1;
            }
            Ok(Some(d)) => {
                tracing::debug!(member = %members[p], "shard of {} bytes where {} were expected", d.len(), seen.len);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(member = %members[p], "scrub cannot fetch a shard: {e}"),
        }
    }
    if got < k {
        return Outcome::NotRepairable(format!(
            "only {got} of the {k} other shards needed could be read"
        ));
    }
    let rebuilt = tokio::task::spawn_blocking(move || {
        codec
            .reconstruct_all(&mut shards)
            .map(|()| shards.get_mut(pos).and_then(Option::take))
    })
    .await;
    let data = match rebuilt {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => return Outcome::NotRepairable("rebuild produced no shard".into()),
        Ok(Err(e)) => return Outcome::NotRepairable(format!("rebuild failed: {e}")),
        Err(e) => return Outcome::NotRepairable(format!("rebuild task failed: {e}")),
    };
    // The recorded hash was taken from the shard as first written: only an exact rebuild
    // matches it, so peers holding other versions' bytes cannot slip anything in.
    if blake3::hash(&data).as_bytes() != &seen.hash {
        return Outcome::NotRepairable(
            "the rebuilt shard does not match its recorded hash (the stripe's other shards disagree)"
                .into(),
        );
    }
    let k = key.clone();
    match node
        .with_store(move |s| s.repair_shard(&k, &data, &seen))
        .await
    {
        Ok(true) => Outcome::Repaired,
        Ok(false) => Outcome::Gone,
        Err(e) => Outcome::NotRepairable(format!("rewriting the shard failed: {e}")),
    }
}

/// The scheduled worker: runs until the agent stops.
pub async fn run(node: Arc<Node>, scrubber: Arc<Scrubber>) {
    match node.with_store(|s| s.last_scrub()).await {
        Ok(Some(ms)) => scrubber.note_full_pass(ms),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read when the last scrub ran; scrubbing soon: {e}"),
    }
    let interval = node.tuning.scrub_interval;
    if interval.is_zero() {
        tracing::info!(
            "scheduled scrub is off (--scrub-interval-secs 0); Scrub on demand still works"
        );
        return;
    }
    let interval_ms = interval.as_millis() as u64;
    loop {
        let due = scrubber
            .last_full_pass_ms
            .load(Ordering::Relaxed)
            .saturating_add(interval_ms);
        let now = now_unix_ms();
        if now < due {
            // The schedule itself: wait for the next pass (re-checked, since an on-demand full
            // pass moves it).
            tokio::time::sleep(Duration::from_millis(due - now).min(SCHEDULE_POLL)).await;
            continue;
        }
        let pass_guard = scrubber.pass.lock().await;
        let last = scrubber.last_full_pass_ms.load(Ordering::Relaxed);
        if last.saturating_add(interval_ms) > now_unix_ms() {
            // An on-demand full pass ran while this one waited for the lock.
            continue;
        }
        if let Err(e) = scrubber.pass_locked(&node, None).await {
            tracing::warn!("scheduled scrub pass failed: {e}");
            drop(pass_guard);
            // Wait before trying again, as the schedule would.
            tokio::time::sleep(interval.min(SCHEDULE_POLL)).await;
        }
    }
}
