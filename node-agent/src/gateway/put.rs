//! PutObject: stream in, encode stripe by stripe, fan shards out, then commit
//! the manifest.
//!
//! Memory is bounded by `stripes_in_flight` stripe buffers of (k+m) × chunk
//! bytes, whatever the object size: the receive loop waits for the oldest
//! stripe to reach its write quorum before it fills another buffer.
//!
//! A put that fails before its manifest is sent deletes the shards it stored, in
//! the background. If the gateway itself dies, the PG leaders collect those
//! stripes once they are older than `orphan_grace` and no manifest names them
//! (`recovery`); so a put must commit within half that time, or it is refused.
//!
//! A resumable put (`PutObjectHeader.upload`) records every full stripe in the upload's
//! record once it is durable (`uploads`), and a failed one keeps its shards: a later put with
//! the same upload id skips the recorded stripes the client proves it still has, and commits
//! under the same object id. Its first stripes are then read back to hash the content.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use pb::put_object_request::Body;
use potluck_proto::v1 as pb;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::cluster::MapView;
use crate::codec::StripeCodec;
use crate::gateway::{info_of, manifests, resolve_pool, status_from_codec, uploads};
use crate::keys::ShardKey;
use crate::layout::{new_object_id, shard_len_for, stripe_pg};
use crate::node::{now_unix_ms, now_unix_ns, Node};
use crate::validate;

struct StripeDone {
    hashes: Bytes,
    missing: u32,
}

/// Everything a stripe task needs; shared by all stripes of one put.
struct PutContext {
    node: Arc<Node>,
    view: Arc<MapView>,
    pool: pb::PoolMap,
    codec: Arc<StripeCodec>,
    object_id: [u8; 16],
    created_unix_ms: u64,
}

/// How far a put got, so that a failed one knows what to take back.
#[derive(Default)]
struct Progress {
    ctx: Option<Arc<PutContext>>,
    /// Stripes handed to stripe tasks (some may have stored shards).
    stripes: u64,
    /// Manifest writes were sent: from here a failure's outcome is uncertain (a minority of
    /// holders may have applied it and recovery spreads the newest manifest), so the shards
    /// must stay.
    committing: bool,
}

pub async fn put_object(
    node: Arc<Node>,
    caller: crate::auth::Caller,
    stream: tonic::Streaming<pb::PutObjectRequest>,
) -> Result<pb::PutObjectResponse, Status> {
    let mut progress = Progress::default();
    let r = receive_and_commit(node, caller, stream, &mut progress).await;
    if r.is_err() && !progress.committing {
        if let Some(ctx) = progress.ctx.take() {
            if progress.stripes > 0 {
                tokio::spawn(take_back(ctx, progress.stripes));
            }
        }
    }
    r
}

/// Deletes every shard a failed put may have stored, stripe by stripe. Best effort: a member
/// that does not answer keeps its shard until the PG's leader collects it as abandoned.
async fn take_back(ctx: Arc<PutContext>, stripes: u64) {
    let width = (ctx.pool.k + ctx.pool.m) as usize;
    let mut deleted = 0u64;
    for stripe in 0..stripes {
        let (Ok(stripe_idx), pg) = (
            u32::try_from(stripe),
            stripe_pg(&ctx.object_id, stripe, ctx.pool.pg_count),
        ) else {
            break;
        };
        let Some(set) = ctx.pool.pgs.get(pg as usize) else {
            break;
        };
        let view = ctx.node.cluster.view();
        let deletes = set
            .members
            .iter()
            .take(width)
            .enumerate()
            .map(|(i, member)| {
                let key = ShardKey {
                    pool: ctx.pool.name.clone(),
                    pg,
                    object_id: ctx.object_id,
                    stripe: stripe_idx,
                    shard: i as u8,
                };
                ctx.node.delete_shard(&view, member, key)
            });
        for r in futures::future::join_all(deletes).await {
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => tracing::debug!("taking back a failed put's shard: {e}"),
            }
        }
    }
    ctx.node.metrics.gc_shards_deleted.inc_by(deleted);
    tracing::debug!(deleted, stripes, "took back the shards of a failed put");
}

async fn receive_and_commit(
    node: Arc<Node>,
    caller: crate::auth::Caller,
    mut stream: tonic::Streaming<pb::PutObjectRequest>,
    progress: &mut Progress,
) -> Result<pb::PutObjectResponse, Status> {
    let mut header = match next_message(&mut stream).await? {
        Some(pb::PutObjectRequest {
            body: Some(Body::Header(h)),
        }) => h,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first PutObject message must be a header (bucket, key, pool); send it before any data",
            ))
        }
        None => {
            return Err(Status::invalid_argument(
                "empty PutObject stream: send a header, then the data chunks",
            ))
        }
    };
    validate::bucket(&header.bucket)?;
    validate::key(&header.key)?;
    caller.authorize(&header.bucket, &mut header.pool)?;
    let view = node.cluster.view();
    let pool = resolve_pool(&view, &header.pool)?.clone();
    let codec = node.codecs.get(pool.k, pool.m).map_err(status_from_codec)?;
    let stripe_data = pool.k as usize * pool.chunk_size as usize;
    let resume = match header.upload.take() {
        Some(u) => Some(resume_point(&node, &view, &pool, &header, u).await?),
        None => None,
    };
    let created_unix_ms = resume
        .as_ref()
        .map_or_else(now_unix_ms, |r| r.record.created_unix_ms);
    let object_id = match &resume {
        Some(r) => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&r.record.object_id);
            id
        }
        None => new_object_id(&header.bucket, &header.key, created_unix_ms),
    };
    let ctx = Arc::new(PutContext {
        node: node.clone(),
        view: view.clone(),
        codec,
        object_id,
        created_unix_ms,
        pool,
    });
    let (width, chunk) = (
        (ctx.pool.k + ctx.pool.m) as usize,
        ctx.pool.chunk_size as usize,
    );
    let window = node.tuning.stripes_in_flight.max(1);
    let mut inflight: FuturesOrdered<StripeTask> = FuturesOrdered::new();
    let mut done: Vec<StripeDone> = Vec::new();
    let mut hasher = blake3::Hasher::new();
    let mut total: u64 = 0;
    let mut stripe_no: u64 = 0;
    // Stripes that are whole and so may be recorded for a resume (a short last stripe is
    // never recorded: a resume always sends it again).
    let mut recordable = 0u64;
    let recorder = match resume {
        None => {
            // A plain put takes its shards back when it fails.
            progress.ctx = Some(ctx.clone());
            None
        }
        Some(r) => {
            let skip = r.skip as usize;
            recordable = r.record.size / stripe_data as u64;
            if skip > 0 {
                let prefix = pb::Manifest {
                    bucket: header.bucket.clone(),
                    key: header.key.clone(),
                    pool: ctx.pool.name.clone(),
                    object_id: Bytes::copy_from_slice(&ctx.object_id),
                    size: skip as u64 * stripe_data as u64,
                    k: ctx.pool.k,
                    m: ctx.pool.m,
                    chunk_size: ctx.pool.chunk_size,
                    missing: r.record.stripes[..skip].iter().map(|s| s.missing).collect(),
                    shard_hashes: r.record.stripes[..skip]
                        .iter()
                        .map(|s| s.shard_hashes.clone())
                        .collect(),
                    ..Default::default()
                };
                super::get::hash_stored(
                    node.clone(),
                    view.clone(),
                    ctx.pool.clone(),
                    prefix,
                    &mut hasher,
                )
                .await
                .map_err(|e| {
                    Status::new(
                        e.code(),
                        format!(
                            "reading back the upload's committed stripes failed: {}; retry, or start a new upload",
                            e.message()
                        ),
                    )
                })?;
                done.extend(r.record.stripes[..skip].iter().map(|s| StripeDone {
                    hashes: s.shard_hashes.clone(),
                    missing: s.missing,
                }));
                total = skip as u64 * stripe_data as u64;
                stripe_no = skip as u64;
                node.metrics.uploads_resumed.inc();
                node.metrics.upload_bytes_skipped.inc_by(total);
                tracing::info!(
                    upload = hex::encode(&r.record.upload_id),
                    skipped_stripes = skip,
                    "resuming an upload"
                );
            }
            let mut header_rec = r.record;
            header_rec.stripes.truncate(skip);
            Some((
                uploads::Recorder::start(node.clone(), ctx.pool.clone(), header_rec.clone()),
                header_rec.upload_id,
            ))
        }
    };
    let mut buf: Option<BytesMut> = None;
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut filled = 0usize;

    let mut transfer = node.metrics.client_transfer("put");
    let mut finish: Option<pb::PutObjectFinish> = None;
    loop {
        let msg = match next_message(&mut stream).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                settle(&mut inflight, &mut done, &recorder, recordable).await;
                return Err(e);
            }
        };
        if finish.is_some() {
            return Err(Status::invalid_argument(
                "a message arrived after the finish message: finish must be last",
            ));
        }
        let data =
            match msg.body {
                Some(Body::Chunk(d)) => d,
                Some(Body::Finish(f)) => {
                    finish = Some(f);
                    continue;
                }
                Some(Body::Header(_)) => return Err(Status::invalid_argument(
                    "a second header arrived mid-stream: send one header, then only data chunks",
                )),
                None => continue,
            };
        if data.len() > validate::MAX_PUT_CHUNK {
            return Err(Status::invalid_argument(format!(
                "data chunk of {} bytes exceeds the {} byte limit: send smaller chunks",
                data.len(),
                validate::MAX_PUT_CHUNK
            )));
        }
        total += data.len() as u64;
        if let Some(declared) = header.size {
            if total > declared {
                return Err(Status::invalid_argument(format!(
                    "received more than the declared size of {declared} bytes: fix the size in the header"
                )));
            }
        }
        hasher.update(&data);
        transfer.add(data.len());
        let mut rest = &data[..];
        while !rest.is_empty() {
            let b = match buf.as_mut() {
                Some(b) => b,
                None => {
                    permit = Some(reserve(&node, width * chunk).await?);
                    buf.insert(take_buffer(&node, width * chunk))
                }
            };
            let n = rest.len().min(stripe_data - filled);
            b[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
            rest = &rest[n..];
            if filled == stripe_data {
                if inflight.len() >= window {
                    if let Some(r) = inflight.next().await {
                        done.push(joined(r)?);
                        note_done(&recorder, &done, recordable).await;
                    }
                }
                if let Some(b) = buf.take() {
                    inflight.push_back(StripeTask(spawn_stripe(
                        ctx.clone(),
                        stripe_no,
                        b,
                        filled,
                        permit.take(),
                    )));
                }
                stripe_no += 1;
                progress.stripes = stripe_no;
                filled = 0;
            }
        }
        // Record stripes as soon as they are durable, not only when the window is full, so
        // an interruption costs a resume the stripes still in flight and no more.
        if recorder.is_some() {
            while let Some(Some(r)) = inflight.next().now_or_never() {
                done.push(joined(r)?);
                note_done(&recorder, &done, recordable).await;
            }
        }
    }
    // tonic reports a client's cancel as a clean end of stream, so only an
    // explicit finish tells a complete upload from an abandoned one.
    let Some(finish) = finish else {
        settle(&mut inflight, &mut done, &recorder, recordable).await;
        return Err(Status::cancelled(
            "upload ended without a finish message (client cancelled?); nothing was stored: send header, chunks, then finish",
        ));
    };
    if filled > 0 {
        if let Some(b) = buf.take() {
            inflight.push_back(StripeTask(spawn_stripe(
                ctx.clone(),
                stripe_no,
                b,
                filled,
                permit.take(),
            )));
            progress.stripes = stripe_no + 1;
        }
    }
    while let Some(r) = inflight.next().await {
        done.push(joined(r)?);
        note_done(&recorder, &done, recordable).await;
    }
    for declared in [header.size, finish.size].into_iter().flatten() {
        if total != declared {
            return Err(Status::invalid_argument(format!(
                "received {total} bytes but the upload declared {declared}: fix the declared size"
            )));
        }
    }
    let content_hash = hasher.finalize();
    if !finish.blake3.is_empty() && finish.blake3.as_ref() != content_hash.as_bytes() {
        return Err(Status::data_loss(format!(
            "content BLAKE3 is {} but the client sent {}; the bytes were damaged on the way, retry the upload",
            content_hash.to_hex(),
            hex::encode(&finish.blake3)
        )));
    }

    // The map may have moved on while the stripes were sent (a member went Down or Out):
    // members refuse manifest writes carrying an older epoch, so commit with the newest map.
    // The stripes stay where the old map put them; recovery moves them if need be.
    let view = node.cluster.view();
    let Some(commit_pool) = view.pool(&ctx.pool.name).cloned() else {
        return Err(Status::unavailable(format!(
            "pool {} left the cluster map during the upload; nothing was stored",
            ctx.pool.name
        )));
    };
    // Versions come from gateway clocks; never go below what the key already
    // has, or a put through a gateway with a slower clock would be ignored.
    let newest = manifests::read(&node, &view, &commit_pool, &header.bucket, &header.key).await?;
    let version = newest
        .map_or(0, |n| n.version.saturating_add(1))
        .max(now_unix_ns());
    let degraded = done.iter().filter(|d| d.missing != 0).count() as u64;
    let manifest = pb::Manifest {
        bucket: header.bucket,
        key: header.key,
        pool: ctx.pool.name.clone(),
        version,
        object_id: Bytes::copy_from_slice(&ctx.object_id),
        tombstone: false,
        size: total,
        created_unix_ms: now_unix_ms(),
        blake3: Bytes::copy_from_slice(content_hash.as_bytes()),
        k: ctx.pool.k,
        m: ctx.pool.m,
        chunk_size: ctx.pool.chunk_size,
        missing: done.iter().map(|d| d.missing).collect(),
        shard_hashes: done.into_iter().map(|d| d.hashes).collect(),
        epoch: ctx.view.epoch(),
    };
    let info = info_of(&manifest);
    let age = Duration::from_millis(now_unix_ms().saturating_sub(ctx.created_unix_ms));
    let limit = node.tuning.orphan_grace / 2;
    if age > limit {
        return Err(Status::deadline_exceeded(format!(
            "the upload took {}s, longer than half of the agents' --orphan-grace-secs ({}s): its first stripes may already be collected as abandoned, so it was not committed; upload again (faster, or split the object), or raise --orphan-grace-secs on every agent",
            age.as_secs(),
            node.tuning.orphan_grace.as_secs()
        )));
    }
    progress.committing = true;
    let (bucket, key) = (manifest.bucket.clone(), manifest.key.clone());
    manifests::write(&node, &view, &commit_pool, manifest).await?;
    transfer.succeeded();
    if let Some((recorder, id)) = recorder {
        let (node, pool) = (node.clone(), commit_pool.clone());
        tokio::spawn(async move {
            recorder.flush().await;
            uploads::forget(node, pool, bucket, key, id).await;
        });
    }
    Ok(pb::PutObjectResponse {
        info: Some(info),
        degraded_stripes: degraded,
    })
}

/// Where a resumable put starts: the upload's record (from this put's own header when it
/// starts over) and the stripes the client skips.
struct Resume {
    record: pb::UploadRecord,
    skip: u64,
}

/// Checks a resume against the upload's record: same size, and the skipped stripes are the
/// ones recorded (by their data-shard hashes). Anything else is FAILED_PRECONDITION telling
/// the client to start a new upload.
async fn resume_point(
    node: &Arc<Node>,
    view: &Arc<MapView>,
    pool: &pb::PoolMap,
    header: &pb::PutObjectHeader,
    u: pb::UploadResume,
) -> Result<Resume, Status> {
    uploads::check_upload_id(&u.upload_id)?;
    let Some(size) = header.size else {
        return Err(Status::invalid_argument(
            "a resumable upload must declare its size in the header",
        ));
    };
    let id = hex::encode(&u.upload_id);
    if u.skip_stripes == 0 {
        let now = now_unix_ms();
        return Ok(Resume {
            record: pb::UploadRecord {
                upload_id: u.upload_id,
                pool: pool.name.clone(),
                bucket: header.bucket.clone(),
                key: header.key.clone(),
                object_id: Bytes::copy_from_slice(&new_object_id(&header.bucket, &header.key, now)),
                created_unix_ms: now,
                size,
                k: pool.k,
                m: pool.m,
                chunk_size: pool.chunk_size,
                stripes: Vec::new(),
            },
            skip: 0,
        });
    }
    let start_over = "start a new upload (`potluck put --new-upload`, or skip no stripes)";
    let Some(record) =
        uploads::load(node, view, pool, &header.bucket, &header.key, &u.upload_id).await?
    else {
        return Err(Status::failed_precondition(format!(
            "upload {id} of {}/{} is not in progress (finished, or expired after {}s); {start_over}",
            header.bucket,
            header.key,
            uploads::resumable_for(node).as_secs()
        )));
    };
    if record.size != size {
        return Err(Status::failed_precondition(format!(
            "upload {id} was started for {} bytes, this put declares {size}: a different file; {start_over}",
            record.size
        )));
    }
    if (record.k, record.m, record.chunk_size) != (pool.k, pool.m, pool.chunk_size) {
        return Err(Status::failed_precondition(format!(
            "upload {id} was started with {}+{} stripes of {} byte chunks, the pool now has {}+{} of {}; {start_over}",
            record.k, record.m, record.chunk_size, pool.k, pool.m, pool.chunk_size
        )));
    }
    let have = record.stripes.len() as u64;
    if u.skip_stripes > have {
        return Err(Status::failed_precondition(format!(
            "upload {id} has {have} stripes committed, the client skips {}; ask GetUpload again or {start_over}",
            u.skip_stripes
        )));
    }
    let digest =
        uploads::skipped_digest(&record.stripes[..u.skip_stripes as usize], pool.k as usize);
    if u.skipped_digest.as_ref() != digest.as_slice() {
        return Err(Status::failed_precondition(format!(
            "the first {} stripes of upload {id} differ from the ones sent before: the input changed; {start_over}",
            u.skip_stripes
        )));
    }
    Ok(Resume {
        record,
        skip: u.skip_stripes,
    })
}

/// When a resumable put's client goes away, lets the stripes already in flight finish and
/// records them in order (up to the first that fails), so a resume need not send them again.
/// A plain put does not wait: its stripes are aborted and taken back.
async fn settle(
    inflight: &mut FuturesOrdered<StripeTask>,
    done: &mut Vec<StripeDone>,
    recorder: &Option<(uploads::Recorder, Bytes)>,
    recordable: u64,
) {
    if recorder.is_none() {
        return;
    }
    while let Some(r) = inflight.next().await {
        match joined(r) {
            Ok(d) => {
                done.push(d);
                note_done(recorder, done, recordable).await;
            }
            Err(e) => {
                tracing::debug!("a stripe of an interrupted upload failed: {e}");
                return;
            }
        }
    }
}

/// Hands the newest finished stripe to the recorder if it is whole.
async fn note_done(
    recorder: &Option<(uploads::Recorder, Bytes)>,
    done: &[StripeDone],
    recordable: u64,
) {
    let Some((recorder, _)) = recorder else {
        return;
    };
    let Some(last) = done.last() else { return };
    if (done.len() as u64) <= recordable {
        recorder
            .stripe_done(pb::UploadStripe {
                shard_hashes: last.hashes.clone(),
                missing: last.missing,
            })
            .await;
    }
}

/// Longest silence between two messages of an upload. A client that stops sending part
/// way would otherwise hold its stripe buffer (a share of the agent's put memory) for as long
/// as its connection lives.
const PUT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

async fn next_message(
    stream: &mut tonic::Streaming<pb::PutObjectRequest>,
) -> Result<Option<pb::PutObjectRequest>, Status> {
    match tokio::time::timeout(PUT_IDLE_TIMEOUT, stream.message()).await {
        Ok(r) => r.map_err(client_gone),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the upload sent nothing for {}s; nothing was stored: send chunks without long pauses",
            PUT_IDLE_TIMEOUT.as_secs()
        ))),
    }
}

/// A broken request stream is the client going away (a reset shows up as an
/// internal error); count it as cancelled, not as a server fault.
fn client_gone(s: Status) -> Status {
    // tonic's decoder refuses a message over the size limit with OUT_OF_RANGE: that is the
    // client's doing, not it going away, so say what to change.
    if s.code() == tonic::Code::OutOfRange {
        return Status::resource_exhausted(format!(
            "{}; nothing was stored: send data chunks of at most {} bytes",
            s.message(),
            validate::MAX_PUT_CHUNK
        ));
    }
    Status::cancelled(format!(
        "upload stream broke ({}); nothing was stored",
        s.message()
    ))
}

/// Waits for room in the agent-wide budget for one stripe buffer.
async fn reserve(node: &Node, bytes: usize) -> Result<OwnedSemaphorePermit, Status> {
    let units = (bytes.div_ceil(1 << 20) as u32)
        .min(node.tuning.put_memory_bytes as u32 >> 20)
        .max(1);
    node.put_memory
        .clone()
        .acquire_many_owned(units)
        .await
        .map_err(|_| Status::unavailable("agent is shutting down; retry on another agent"))
}

fn take_buffer(node: &Node, len: usize) -> BytesMut {
    let (b, fresh) = node.buffers.take(len);
    if fresh {
        node.metrics.stripe_buffers_allocated.inc();
    }
    b
}

/// A stripe's encode-and-send task, aborted when the put gives up on it (an
/// error elsewhere, or the client going away), so a failed put stops sending
/// shards instead of finishing every stripe already started.
struct StripeTask(JoinHandle<Result<StripeDone, Status>>);

impl std::future::Future for StripeTask {
    type Output = Result<Result<StripeDone, Status>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for StripeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn joined(
    r: Result<Result<StripeDone, Status>, tokio::task::JoinError>,
) -> Result<StripeDone, Status> {
    r.map_err(|e| Status::internal(format!("stripe task failed: {e}")))?
}

/// Lays a short last stripe out at the chunk stride and zero-pads it. Full
/// stripes are already laid out, since the stride is the chunk size.
fn stride_short_stripe(buf: &mut [u8], data_len: usize, k: usize, chunk: usize, shard_len: usize) {
    if shard_len == chunk && data_len == k * chunk {
        return;
    }
    for i in (1..k).rev() {
        let src = i * shard_len;
        let end = (src + shard_len).min(data_len);
        if src < end {
            buf.copy_within(src..end, i * chunk);
        }
    }
    for i in 0..k {
        let valid = data_len.saturating_sub(i * shard_len).min(shard_len);
        buf[i * chunk + valid..i * chunk + shard_len].fill(0);
    }
}

fn spawn_stripe(
    ctx: Arc<PutContext>,
    stripe: u64,
    buf: BytesMut,
    data_len: usize,
    permit: Option<OwnedSemaphorePermit>,
) -> JoinHandle<Result<StripeDone, Status>> {
    tokio::spawn(async move {
        // Held until the stripe is done with its buffer.
        let _permit = permit;
        let (k, width, chunk) = (
            ctx.pool.k as usize,
            (ctx.pool.k + ctx.pool.m) as usize,
            ctx.pool.chunk_size as usize,
        );
        let shard_len = shard_len_for(data_len as u64, ctx.pool.k, chunk as u64) as usize;
        let codec = ctx.codec.clone();
        let (buf, hashes) = tokio::task::spawn_blocking(move || {
            let mut buf = buf;
            stride_short_stripe(&mut buf, data_len, k, chunk, shard_len);
            codec.encode_strided(&mut buf, chunk, shard_len)?;
            let mut hashes = Vec::with_capacity(width * 32);
            for i in 0..width {
                hashes.extend_from_slice(
                    blake3::hash(&buf[i * chunk..i * chunk + shard_len]).as_bytes(),
                );
            }
            Ok::<_, crate::codec::CodecError>((buf, hashes))
        })
        .await
        .map_err(|e| Status::internal(format!("encoding task failed: {e}")))?
        .map_err(status_from_codec)?;

        let frozen = buf.freeze();
        let pg = stripe_pg(&ctx.object_id, stripe, ctx.pool.pg_count);
        let set = &ctx.pool.pgs[pg as usize].members;
        let stripe_idx = u32::try_from(stripe).map_err(|_| {
            Status::invalid_argument(
                "object has too many stripes: use a pool with a larger chunk size",
            )
        })?;
        let sends = set.iter().enumerate().map(|(i, member)| {
            let key = ShardKey {
                pool: ctx.pool.name.clone(),
                pg,
                object_id: ctx.object_id,
                stripe: stripe_idx,
                shard: i as u8,
            };
            let data = frozen.slice(i * chunk..i * chunk + shard_len);
            let mut h = [0u8; 32];
            h.copy_from_slice(&hashes[i * 32..(i + 1) * 32]);
            let ctx = &ctx;
            async move {
                if !writable(&ctx.view, member) {
                    return Err((None, format!("member {member} is down in the map")));
                }
                ctx.node
                    .put_shard(&ctx.view, member, key, data, h)
                    .await
                    .map_err(|e| (e.member_code(), e.to_string()))
            }
        });
        let results = gather(sends, ctx.pool.write_quorum as usize).await;
        ctx.node.buffers.give_back(frozen);
        let mut missing = 0u32;
        let mut errors = Vec::new();
        let mut codes = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            if let Err((code, e)) = r {
                missing |= 1 << i;
                codes.push(code);
                errors.push(e);
            }
        }
        let acks = width - errors.len();
        if acks < ctx.pool.write_quorum as usize {
            // Members that all refused for one reason the client can act on
            // (full disks, a stale map) say so in the code, not only the text.
            let code = match codes.first() {
                Some(Some(
                    c @ (tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition),
                )) if codes.iter().all(|x| x == &Some(*c)) => *c,
                _ => tonic::Code::Unavailable,
            };
            let hint = match code {
                tonic::Code::ResourceExhausted => "add members or free space",
                tonic::Code::FailedPrecondition => "the cluster map changed; retry",
                _ => "bring members back and retry",
            };
            return Err(Status::new(code, format!(
                "stripe {stripe}: {acks} of {width} members stored their shard, write quorum is {}; {hint} ({})",
                ctx.pool.write_quorum,
                errors.join("; ")
            )));
        }
        if missing != 0 {
            ctx.node.metrics.degraded_stripes.inc();
            tracing::warn!(
                stripe,
                pg,
                missing = format!("{missing:#b}"),
                "stripe written degraded"
            );
        }
        Ok(StripeDone {
            hashes: Bytes::from(hashes),
            missing,
        })
    })
}

/// How long a stripe waits for its slowest shard writes once a write quorum has succeeded
/// (or four times what the quorum took, if longer).
const STRAGGLER_GRACE: Duration = Duration::from_secs(1);

type SendResult = Result<(), (Option<tonic::Code>, String)>;

/// Every shard write's result, in position order. Once `quorum` writes succeeded, the rest
/// get [`STRAGGLER_GRACE`] more and are then recorded as missing: a member cut off by the
/// network would otherwise hold the whole put for the shard deadline (30 s) until the map
/// marks it Down, and recovery rebuilds a missing shard anyway.
async fn gather<F>(sends: impl Iterator<Item = F>, quorum: usize) -> Vec<SendResult>
where
    F: std::future::Future<Output = SendResult>,
{
    let started = tokio::time::Instant::now();
    let mut pending: futures::stream::FuturesUnordered<_> = sends
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut results: Vec<Option<SendResult>> = (0..pending.len()).map(|_| None).collect();
    let mut succeeded = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            None => pending.next().await,
            Some(d) => match tokio::time::timeout_at(d, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((i, r)) = next else { break };
        succeeded += usize::from(r.is_ok());
        results[i] = Some(r);
        if succeeded >= quorum && deadline.is_none() {
            let grace = (started.elapsed() * 4).max(STRAGGLER_GRACE);
            deadline = Some(tokio::time::Instant::now() + grace);
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err((
                    None,
                    "no answer within the grace after the write quorum was met".to_string(),
                ))
            })
        })
        .collect()
}

/// Down and Out members get no new writes; their shards count as missing.
fn writable(view: &MapView, member: &str) -> bool {
    view.member(member).is_some_and(|m| {
        let s = m.state;
        s != pb::MemberState::Down as i32 && s != pb::MemberState::Out as i32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stragglers_are_missing_once_the_quorum_has_waited_its_grace() {
        let start = tokio::time::Instant::now();
        let fast = |i: usize| async move {
            if i == 1 {
                Err((None, "refused".to_string()))
            } else {
                Ok(())
            }
        };
        let sends = (0..4).map(|i| {
            let f = fast(i);
            async move {
                if i == 3 {
                    // A member behind a partition: would answer only at its deadline.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                f.await
            }
        });
        let results = gather(sends, 2).await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(results[1].is_err(), "a refusal stays a refusal");
        assert!(results[3].is_err(), "the straggler is recorded missing");

        // Below the quorum nothing is cut short: every answer is awaited.
        let slow_ok = (0..3).map(|i| async move {
            if i == 2 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Ok(())
        });
        let all = gather(slow_ok, 3).await;
        assert!(all.iter().all(|r| r.is_ok()));
    }

    #[test]
    fn short_stripes_are_strided_and_padded() {
        let (k, chunk) = (4, 8);
        let data: Vec<u8> = (1..=10).collect();
        let mut buf = vec![0xAAu8; 6 * chunk];
        buf[..10].copy_from_slice(&data);
        let shard_len = shard_len_for(10, k as u32, chunk as u64) as usize;
        assert_eq!(shard_len, 3);
        stride_short_stripe(&mut buf, 10, k, chunk, shard_len);
        assert_eq!(&buf[0..3], &[1, 2, 3]);
        assert_eq!(&buf[8..11], &[4, 5, 6]);
        assert_eq!(&buf[16..19], &[7, 8, 9]);
        assert_eq!(&buf[24..27], &[10, 0, 0]);
    }
}
