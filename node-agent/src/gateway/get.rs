//! GetObject: newest manifest, then the needed stripes in order, a few in
//! flight. Healthy stripes need only the data shards the range touches (the
//! code is systematic); a failure, a hash mismatch or a late member makes the
//! read ask the others and rebuild from the first k (`hedge`).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use potluck_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cluster::MapView;
use crate::gateway::{info_of, manifests, resolve_pool, status_from_codec};
use crate::keys::ShardKey;
use crate::layout::{check_manifest, shard_slice, stripe_pg, StripeLayout};
use crate::node::Node;
use crate::validate;

/// Largest data chunk in one GetObject message.
const OUT_CHUNK: usize = 1 << 20;

pub type GetStream = ReceiverStream<Result<pb::GetObjectResponse, Status>>;

/// One object version being read; shared by the stripe fetches.
struct ReadContext {
    node: Arc<Node>,
    view: Arc<MapView>,
    pool: pb::PoolMap,
    manifest: pb::Manifest,
    layout: StripeLayout,
}

/// Finds the newest live manifest or says why there is none.
pub async fn live_manifest(
    node: &Arc<Node>,
    view: &MapView,
    pool: &pb::PoolMap,
    bucket: &str,
    key: &str,
) -> Result<pb::Manifest, Status> {
    match manifests::read(node, view, pool, bucket, key).await? {
        Some(m) if !m.tombstone => Ok(m),
        _ => Err(Status::not_found(format!(
            "object {bucket}/{key} not found in pool {:?}; list the bucket to see its keys",
            pool.name
        ))),
    }
}

pub async fn get_object(node: Arc<Node>, req: pb::GetObjectRequest) -> Result<GetStream, Status> {
    validate::bucket(&req.bucket)?;
    validate::key(&req.key)?;
    let view = node.cluster.view();
    let pool = resolve_pool(&view, &req.pool)?.clone();
    let manifest = live_manifest(&node, &view, &pool, &req.bucket, &req.key).await?;
    let size = manifest.size;
    let start = req.offset.unwrap_or(0);
    if start > size || (start == size && size > 0) {
        return Err(Status::out_of_range(format!(
            "range starts at byte {start} but {}/{} is {size} bytes long; ask for an offset below {size}",
            req.bucket, req.key
        )));
    }
    let end = match req.length {
        None | Some(0) => size,
        Some(len) => start.saturating_add(len).min(size),
    };
    check_manifest(&manifest, Some((pool.k, pool.m))).map_err(|why| {
        Status::data_loss(format!(
            "manifest of {}/{} is malformed ({why}); rewrite the object",
            req.bucket, req.key
        ))
    })?;
    let layout = StripeLayout::new(size, manifest.k, manifest.chunk_size);
    let info = info_of(&manifest);
    let ctx = Arc::new(ReadContext {
        node: node.clone(),
        view,
        pool,
        manifest,
        layout,
    });
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if tx
            .send(Ok(pb::GetObjectResponse {
                info: Some(info),
                chunk: Bytes::new(),
            }))
            .await
            .is_err()
        {
            return;
        }
        let range = start..end;
        let window = ctx.node.tuning.stripes_in_flight.max(1);
        let stripes = ctx.layout.stripes_for(&range);
        let mut fetches = futures::stream::iter(stripes)
            .map(|s| read_stripe(ctx.clone(), s, range.clone()))
            .buffered(window);
        let mut transfer = ctx.node.metrics.client_transfer("get");
        while let Some(r) = fetches.next().await {
            let pieces = match r {
                Ok(p) => p,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            for piece in pieces {
                let mut off = 0;
                while off < piece.len() {
                    let end = (off + OUT_CHUNK).min(piece.len());
                    transfer.add(end - off);
                    let msg = pb::GetObjectResponse {
                        info: None,
                        chunk: piece.slice(off..end),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    off = end;
                }
            }
        }
        transfer.succeeded();
    });
    Ok(ReceiverStream::new(rx))
}

/// Feeds the bytes `manifest` describes (an upload's committed stripes) into `hasher`, read
/// back from their holders like any read: hashes checked, parity on failure. A resumed put
/// needs the content hash of the stripes it did not receive this time, and reading them also
/// proves they are still there.
pub(super) async fn hash_stored(
    node: Arc<Node>,
    view: Arc<MapView>,
    pool: pb::PoolMap,
    manifest: pb::Manifest,
    hasher: &mut blake3::Hasher,
) -> Result<(), Status> {
    let size = manifest.size;
    let layout = StripeLayout::new(size, manifest.k, manifest.chunk_size);
    let ctx = Arc::new(ReadContext {
        node,
        view,
        pool,
        manifest,
        layout,
    });
    let window = ctx.node.tuning.stripes_in_flight.max(1);
    let range = 0..size;
    let mut fetches = futures::stream::iter(ctx.layout.stripes_for(&range))
        .map(|s| read_stripe(ctx.clone(), s, range.clone()))
        .buffered(window);
    while let Some(pieces) = fetches.next().await {
        for piece in pieces? {
            hasher.update(&piece);
        }
    }
    Ok(())
}

fn expected_hash(m: &pb::Manifest, stripe: usize, shard: usize) -> &[u8] {
    &m.shard_hashes[stripe][shard * 32..(shard + 1) * 32]
}

/// Fetches shard `i` of stripe `s` and checks it against the manifest.
async fn fetch(ctx: &ReadContext, s: u64, pg: u32, i: usize) -> Result<Bytes, String> {
    let member = &ctx.pool.pgs[pg as usize].members[i];
    let mut object_id = [0u8; 16];
    object_id.copy_from_slice(&ctx.manifest.object_id);
    let key = ShardKey {
        pool: ctx.pool.name.clone(),
        pg,
        object_id,
        stripe: s as u32,
        shard: i as u8,
    };
    let local = member == &ctx.node.id;
    let started = std::time::Instant::now();
    let fetched = ctx.node.get_shard(&ctx.view, member, key).await;
    if !local && matches!(fetched, Ok(Some(_))) {
        ctx.node.shard_latency.observe(started.elapsed());
    }
    match fetched {
        Ok(Some(data)) => {
            // The local store already checked its own hash; a peer's bytes
            // crossed the network and are checked here.
            if !local
                && blake3::hash(&data).as_bytes() != expected_hash(&ctx.manifest, s as usize, i)
            {
                ctx.node.metrics.corrupt_shards.inc();
                return Err(format!("shard {i} from {member}: BLAKE3 mismatch"));
            }
            Ok(data)
        }
        Ok(None) => Err(format!("shard {i}: {member} does not hold it")),
        // A corrupt local shard was counted by the store read itself.
        Err(e) => Err(format!("shard {i}: {e}")),
    }
}

async fn fetch_numbered(
    ctx: &ReadContext,
    s: u64,
    pg: u32,
    i: usize,
) -> (usize, Result<Bytes, String>) {
    (i, fetch(ctx, s, pg, i).await)
}

/// The bytes of `range` that stripe `s` holds, as slices of its data shards.
async fn read_stripe(
    ctx: Arc<ReadContext>,
    s: u64,
    range: Range<u64>,
) -> Result<Vec<Bytes>, Status> {
    let m = &ctx.manifest;
    let (k, width) = (m.k as usize, (m.k + m.m) as usize);
    let shard_len = ctx.layout.shard_len(s);
    let sr = ctx.layout.stripe_range(s);
    let rel = range.start.max(sr.start) - sr.start..range.end.min(sr.end) - sr.start;
    let pg = stripe_pg(&m.object_id, s, ctx.pool.pg_count);
    let missing = m.missing.get(s as usize).copied().unwrap_or(0);
    let needed: Vec<usize> = (0..k)
        .filter(|&i| shard_slice(i as u32, shard_len, &rel).is_some())
        .collect();
    let mut object_id = [0u8; 16];
    object_id.copy_from_slice(&m.object_id);
    let cached = || {
        let hit = ctx.node.stripe_cache.get(&object_id, s)?;
        ctx.node
            .metrics
            .stripe_cache
            .with_label_values(&["hit"])
            .inc();
        Some(hit)
    };
    if let Some(hit) = cached() {
        return slice_pieces(&hit, &needed, shard_len, &rel, s);
    }
    // A whole-stripe read fills the cache: one reader per stripe at a time, the others find
    // what it fetched.
    let fill = if needed.len() == k {
        ctx.node.stripe_cache.fill_guard(&object_id, s).await
    } else {
        None
    };
    if fill.is_some() {
        if let Some(hit) = cached() {
            return slice_pieces(&hit, &needed, shard_len, &rel, s);
        }
    }
    ctx.node
        .metrics
        .stripe_cache
        .with_label_values(&["miss"])
        .inc();

    let mut got: Vec<Option<Bytes>> = vec![None; width];
    let mut errors = Vec::new();
    // Data shards the range needs first, then the other data shards, then parity.
    let mut order: Vec<usize> = needed.clone();
    order.extend((0..width).filter(|i| !needed.contains(i)));
    order.retain(|i| missing & (1 << i) == 0);
    let hedge = ctx.node.tuning.read_hedge;
    let first = if needed.len() == k {
        k + hedge
    } else {
        needed.len()
    };
    let (first, mut rest) = {
        let split = first.min(order.len());
        (order[..split].to_vec(), order[split..].to_vec())
    };
    let mut pending: futures::stream::FuturesUnordered<_> = first
        .iter()
        .map(|&i| fetch_numbered(&ctx, s, pg, i))
        .collect();
    let late = tokio::time::sleep(ctx.node.shard_latency.hedge_delay());
    tokio::pin!(late);
    loop {
        let have = got.iter().filter(|g| g.is_some()).count();
        if needed.iter().all(|&i| got[i].is_some()) || have >= k {
            break;
        }
        let ask_the_rest = tokio::select! {
            next = pending.next() => match next {
                Some((i, Ok(d))) => {
                    got[i] = Some(d);
                    false
                }
                Some((_, Err(e))) => {
                    errors.push(e);
                    true
                }
                None if rest.is_empty() => break,
                None => true,
            },
            () = &mut late, if hedge > 0 && !rest.is_empty() => {
                ctx.node.metrics.hedged_reads.inc();
                true
            }
        };
        if ask_the_rest {
            for i in rest.drain(..) {
                pending.push(fetch_numbered(&ctx, s, pg, i));
            }
        }
    }
    // Fetches still running are dropped here: their members were the slow ones.
    drop(pending);

    if needed.iter().any(|&i| got[i].is_none()) {
        let usable = got.iter().filter(|g| g.is_some()).count();
        if usable < k {
            return Err(Status::unavailable(format!(
                "{}/{} stripe {s}: only {usable} of {width} shards reachable and intact, {k} needed; bring members back or wait for recovery ({})",
                m.bucket,
                m.key,
                errors.join("; ")
            )));
        }
        let codec = ctx.node.codecs.get(m.k, m.m).map_err(status_from_codec)?;
        let mut shards: Vec<Option<Vec<u8>>> =
            got.iter().map(|g| g.as_ref().map(|b| b.to_vec())).collect();
        let shards = tokio::task::spawn_blocking(move || {
            codec.reconstruct_data(&mut shards).map(|_| shards)
        })
        .await
        .map_err(|e| Status::internal(format!("rebuild task failed: {e}")))?
        .map_err(status_from_codec)?;
        for i in 0..k {
            if got[i].is_none() {
                got[i] = shards[i].clone().map(Bytes::from);
            }
        }
        ctx.node.metrics.reconstructed_stripes.inc();
        if errors.is_empty() {
            tracing::debug!(stripe = s, pg, "stripe decoded around a late member");
        } else {
            tracing::info!(
                stripe = s,
                pg,
                "stripe rebuilt from parity: {}",
                errors.join("; ")
            );
        }
    }

    if got[..k].iter().all(Option::is_some) {
        let data: Vec<Bytes> = got[..k].iter().flatten().cloned().collect();
        let pieces = slice_pieces(&data, &needed, shard_len, &rel, s);
        ctx.node.stripe_cache.put(&object_id, s, data);
        return pieces;
    }
    let data: Vec<Bytes> = got[..k]
        .iter()
        .map(|g| g.clone().unwrap_or_default())
        .collect();
    slice_pieces(&data, &needed, shard_len, &rel, s)
}

/// The parts of data shards `needed` (of a stripe whose shards are `shard_len` long) that hold
/// the stripe-relative range `rel`.
fn slice_pieces(
    data: &[Bytes],
    needed: &[usize],
    shard_len: u64,
    rel: &Range<u64>,
    s: u64,
) -> Result<Vec<Bytes>, Status> {
    let mut pieces = Vec::with_capacity(needed.len());
    for &i in needed {
        let Some(r) = shard_slice(i as u32, shard_len, rel) else {
            continue;
        };
        let data = data.get(i).ok_or_else(|| {
            Status::internal(format!("shard {i} of stripe {s} missing after rebuild"))
        })?;
        if (data.len() as u64) < r.end {
            return Err(Status::data_loss(format!(
                "shard {i} of stripe {s} is {} bytes, expected {shard_len}",
                data.len()
            )));
        }
        pieces.push(data.slice(r.start as usize..r.end as usize));
    }
    Ok(pieces)
}
