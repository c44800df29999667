//! Background collection of shards of overwritten and deleted object versions.
//!
//! Every manifest holder that replaces a version queues it (in the same
//! RocksDB write), so a collection survives restarts. Deletes are idempotent,
//! so several holders collecting the same version only repeat cheap calls.
//!
//! A holder may have applied a newer manifest whose write then failed to
//! reach its quorum (the client was told the overwrite failed). So before
//! deleting anything, the collector asks the key's PG and goes ahead only
//! when a write quorum of members holds something newer; otherwise the old
//! version may still be what readers see, and the entry waits.
//!
//! The same worker deletes the data of pools the map no longer has (a deleted StoragePool),
//! once they have been gone for `orphan_grace`: a pool deleted by mistake and created again
//! within that time finds its data still there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::ShardKey;
use crate::layout::{stripe_pg, StripeLayout};
use crate::node::{now_unix_ms, Node};
use crate::shard_store::GcEntry;

const BATCH: usize = 16;
/// Shards (and manifests) of a retired pool deleted per tick.
const PURGE_PAGE: usize = 1000;
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.tuning.gc_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retired: HashMap<String, Instant> = HashMap::new();
    let mut swept = Instant::now();
    loop {
        tick.tick().await;
        purge_retired_pools(&node, &mut retired).await;
        if swept.elapsed() >= UPLOAD_SWEEP_INTERVAL.min(node.tuning.orphan_grace / 4) {
            swept = Instant::now();
            sweep_upload_records(&node).await;
        }
        let due = match node.with_store(|s| s.due_gc(now_unix_ms(), BATCH)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("gc: reading the queue failed: {e}");
                continue;
            }
        };
        for entry in due {
            let finished = collect(&node, &entry, &retired).await;
            let retry = (!finished).then(|| now_unix_ms() + RETRY_AFTER.as_millis() as u64);
            let e = entry.clone();
            if let Err(err) = node.with_store(move |s| s.settle_gc(&e, retry)).await {
                tracing::warn!("gc: updating the queue failed: {err}");
            }
        }
    }
}

/// How often records of resumable uploads are checked for expiry.
const UPLOAD_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes upload records untouched for the orphan grace: their uploads can no longer commit
/// (a put must commit within half the grace), and the PG leaders collect their stripes as
/// abandoned.
async fn sweep_upload_records(node: &Arc<Node>) {
    let uploads = node.uploads.clone();
    let grace = node.tuning.orphan_grace;
    match tokio::task::spawn_blocking(move || uploads.sweep(grace)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(records = n, "swept expired upload records"),
        Ok(Err(e)) => tracing::warn!("sweeping upload records failed: {e}"),
        Err(e) => tracing::warn!("upload record sweep task failed: {e}"),
    }
}

/// Deletes a page of the local data of each pool that has been missing from the map for the
/// orphan grace. `retired` remembers since when each was seen missing (a restart starts the
/// wait over, which only delays the purge).
async fn purge_retired_pools(node: &Arc<Node>, retired: &mut HashMap<String, Instant>) {
    let view = node.cluster.view();
    if view.epoch() == 0 {
        return;
    }
    let local = match node.with_store(|s| s.local_pools()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("gc: listing local pools failed: {e}");
            return;
        }
    };
    retired.retain(|p, _| local.contains(p) && view.pool(p).is_none());
    for pool in local {
        if view.pool(&pool).is_some() {
            continue;
        }
        let since = *retired.entry(pool.clone()).or_insert_with(|| {
            tracing::info!(%pool, grace = ?node.tuning.orphan_grace, "pool is no longer in the map; its data here will be deleted after the grace");
            Instant::now()
        });
        if since.elapsed() < node.tuning.orphan_grace {
            continue;
        }
        // A map bringing the pool back may have arrived since the tick began.
        if node.cluster.view().pool(&pool).is_some() {
            continue;
        }
        let name = pool.clone();
        match node
            .with_store(move |s| s.purge_pool(&name, PURGE_PAGE))
            .await
        {
            Ok((shards, manifests)) if shards + manifests > 0 => {
                node.metrics.gc_shards_deleted.inc_by(shards);
                tracing::info!(%pool, shards, manifests, "deleted data of a pool the map no longer has");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%pool, "gc: deleting a retired pool's data failed: {e}"),
        }
    }
}

/// Deletes every shard of one old version; true when all holders answered.
async fn collect(node: &Arc<Node>, entry: &GcEntry, retired: &HashMap<String, Instant>) -> bool {
    let m = &entry.manifest;
    let view = node.cluster.view();
    if view.epoch() == 0 {
        return false;
    }
    let Some(pool) = view.pool(&m.pool) else {
        // The pool was deleted: its shards go with the rest of its data once the grace is
        // over; until then it may come back, and this entry with it.
        // Not in `retired` means no local data of the pool is left to wait for.
        return retired
            .get(&m.pool)
            .is_none_or(|since| since.elapsed() >= node.tuning.orphan_grace);
    };
    if !pool.unplaceable_reason.is_empty() {
        return false;
    }
    if let Err(why) = crate::layout::check_manifest(m, None) {
        tracing::warn!(
            "gc: dropping malformed entry for {}/{}: {why}",
            m.bucket,
            m.key
        );
        return true;
    }
    let Ok(object_id) = <[u8; 16]>::try_from(m.object_id.as_ref()) else {
        return true;
    };
    match superseded(node, &view, pool, m).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::debug!(
                "gc: cannot confirm {}/{} was superseded: {e}",
                m.bucket,
                m.key
            );
            return false;
        }
    }
    let layout = StripeLayout::new(m.size, m.k, m.chunk_size);
    let width = (m.k + m.m) as usize;
    let mut all_ok = true;
    for s in 0..layout.stripe_count() {
        let pg = stripe_pg(&object_id, s, pool.pg_count);
        let Some(set) = pool.pgs.get(pg as usize) else {
            return false;
        };
        let deletes = set
            .members
            .iter()
            .take(width)
            .enumerate()
            .map(|(i, member)| {
                let key = ShardKey {
                    pool: m.pool.clone(),
                    pg,
                    object_id,
                    stripe: s as u32,
                    shard: i as u8,
                };
                node.delete_shard(&view, member, key)
            });
        for r in futures::future::join_all(deletes).await {
            match r {
                Ok(true) => node.metrics.gc_shards_deleted.inc(),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("gc: {e}");
                    all_ok = false;
                }
            }
        }
    }
    all_ok
}

/// Whether a write quorum of the key's PG holds a version newer than `old`.
async fn superseded(
    node: &Arc<Node>,
    view: &crate::cluster::MapView,
    pool: &potluck_proto::v1::PoolMap,
    old: &potluck_proto::v1::Manifest,
) -> Result<bool, String> {
    let pg = crate::layout::manifest_pg(&old.bucket, &old.key, pool.pg_count);
    let set = &pool
        .pgs
        .get(pg as usize)
        .ok_or_else(|| format!("PG {pg} missing from the map"))?
        .members;
    let reads = set
        .iter()
        .map(|member| node.get_manifest(view, member, &pool.name, &old.bucket, &old.key));
    let newer = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|r| {
            matches!(r, Ok(Some(n)) if (n.version, &n.object_id) > (old.version, &old.object_id))
        })
        .count();
    Ok(newer >= crate::gateway::manifests::write_quorum(set.len()))
}
