//! Resumable uploads, gateway side: reading an upload's record from its key's PG, answering
//! GetUpload, and the recorder that appends each stripe to the record once it is durable.
//!
//! The record is written to every member of the manifest PG of the upload's key, so any
//! gateway finds it. Every copy is correct as far as it goes (a stripe is appended only
//! after its write quorum succeeded, and in order), so a reader takes the longest copy it can
//! get; a copy that missed appends only makes the client send a little more.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use potluck_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::MapView;
use crate::layout::manifest_pg;
use crate::node::{now_unix_ms, Node};
use crate::uploads::UPLOAD_ID_LEN;
use crate::validate;

/// Stripes waiting for the recorder; the put waits when it is this far behind.
const RECORDER_QUEUE: usize = 256;

pub fn check_upload_id(id: &[u8]) -> Result<(), Status> {
    if id.len() != UPLOAD_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "upload id must be {UPLOAD_ID_LEN} bytes, got {}; let the client pick 16 random bytes",
            id.len()
        )));
    }
    Ok(())
}

fn pg_members(pool: &pb::PoolMap, bucket: &str, key: &str) -> Vec<String> {
    let pg = manifest_pg(bucket, key, pool.pg_count);
    pool.pgs
        .get(pg as usize)
        .map(|p| p.members.clone())
        .unwrap_or_default()
}

/// How long a record can be resumed: a put must commit within half the orphan grace of its
/// object id's time (`put`), so an older upload could not finish anyway.
pub fn resumable_for(node: &Node) -> Duration {
    node.tuning.orphan_grace / 2
}

/// The longest copy of the record the PG's members hold, if it belongs to `bucket/key` in
/// `pool` and has not expired.
pub async fn load(
    node: &Arc<Node>,
    view: &MapView,
    pool: &pb::PoolMap,
    bucket: &str,
    key: &str,
    upload_id: &Bytes,
) -> Result<Option<pb::UploadRecord>, Status> {
    let members = pg_members(pool, bucket, key);
    let calls = members
        .iter()
        .map(|m| node.get_upload_record(view, m, upload_id.clone()));
    let mut best: Option<pb::UploadRecord> = None;
    let mut errors = Vec::new();
    let mut answered = 0;
    for r in join_all(calls).await {
        match r {
            Ok(found) => {
                answered += 1;
                let Some(rec) = found else { continue };
                if (rec.bucket.as_str(), rec.key.as_str(), rec.pool.as_str())
                    != (bucket, key, pool.name.as_str())
                {
                    return Err(Status::failed_precondition(format!(
                        "upload {} belongs to {}/{} in pool {}, not {bucket}/{key}; start a new upload",
                        hex::encode(upload_id),
                        rec.bucket,
                        rec.key,
                        rec.pool
                    )));
                }
                // Copies of an upload that started over carry the newer object id and time.
                let better = best.as_ref().is_none_or(|b| {
                    (rec.created_unix_ms, rec.stripes.len()) > (b.created_unix_ms, b.stripes.len())
                });
                if better {
                    best = Some(rec);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if answered == 0 && !members.is_empty() {
        return Err(Status::unavailable(format!(
            "no member of the upload's PG answered; bring members back and retry ({})",
            errors.join("; ")
        )));
    }
    let limit = resumable_for(node).as_millis() as u64;
    Ok(best.filter(|r| now_unix_ms().saturating_sub(r.created_unix_ms) <= limit))
}

pub async fn get_upload(
    node: Arc<Node>,
    req: pb::GetUploadRequest,
) -> Result<pb::GetUploadResponse, Status> {
    validate::bucket(&req.bucket)?;
    validate::key(&req.key)?;
    check_upload_id(&req.upload_id)?;
    let view = node.cluster.view();
    let pool = super::resolve_pool(&view, &req.pool)?.clone();
    let Some(rec) = load(&node, &view, &pool, &req.bucket, &req.key, &req.upload_id).await? else {
        return Err(Status::not_found(format!(
            "no upload {} of {}/{} in progress (finished, expired after {}s, or never started); start it from the beginning",
            hex::encode(&req.upload_id),
            req.bucket,
            req.key,
            resumable_for(&node).as_secs()
        )));
    };
    let k = rec.k as usize;
    Ok(pb::GetUploadResponse {
        size: rec.size,
        k: rec.k,
        m: rec.m,
        chunk_size: rec.chunk_size,
        committed_stripes: rec.stripes.len() as u64,
        stripe_hashes: rec
            .stripes
            .iter()
            .map(|s| s.shard_hashes.slice(..(k * 32).min(s.shard_hashes.len())))
            .collect(),
        created_unix_ms: rec.created_unix_ms,
    })
}

/// The digest a client sends for the stripes it skips: BLAKE3 over their data-shard hashes.
pub fn skipped_digest(stripes: &[pb::UploadStripe], k: usize) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for s in stripes {
        h.update(&s.shard_hashes[..(k * 32).min(s.shard_hashes.len())]);
    }
    *h.finalize().as_bytes()
}

/// Appends stripes to the record as the put completes them, in order, off the put's path:
/// the put hands each stripe over a bounded queue and goes on; the recorder sends whatever
/// has queued up in one call per member.
pub struct Recorder {
    tx: Option<mpsc::Sender<pb::UploadStripe>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Starts recording `header` (its `stripes` are those already recorded, kept).
    pub fn start(node: Arc<Node>, pool: pb::PoolMap, header: pb::UploadRecord) -> Self {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        let task = tokio::spawn(record(node, pool, header, rx));
        Self {
            tx: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stripe_done(&self, stripe: pb::UploadStripe) {
        if let Some(tx) = &self.tx {
            // A recorder that stopped only means later stripes are sent again on a resume.
            let _ = tx.send(stripe).await;
        }
    }

    /// Waits until everything queued was sent (for tests and a clean end).
    pub async fn flush(mut self) {
        self.tx.take();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn record(
    node: Arc<Node>,
    pool: pb::PoolMap,
    header: pb::UploadRecord,
    mut rx: mpsc::Receiver<pb::UploadStripe>,
) {
    let members = pg_members(&pool, &header.bucket, &header.key);
    let mut stripes = header.stripes.clone();
    let mut bare = header;
    bare.stripes.clear();
    // Stripes each member is known to hold; a member that refuses an append (it missed
    // earlier ones) gets the whole record next time.
    let mut acked = vec![0u64; members.len()];
    let mut first_round = true;
    loop {
        if !first_round {
            let Some(s) = rx.recv().await else { return };
            stripes.push(s);
            while let Ok(s) = rx.try_recv() {
                stripes.push(s);
            }
        }
        first_round = false;
        let view = node.cluster.view();
        let calls = members.iter().zip(acked.iter()).map(|(member, &from)| {
            let from = (from as usize).min(stripes.len());
            let mut rec = bare.clone();
            rec.stripes = stripes[from..].to_vec();
            let view = &view;
            let node = &node;
            async move { node.put_upload_record(view, member, rec, from as u64).await }
        });
        for (i, r) in join_all(calls).await.into_iter().enumerate() {
            match r {
                Ok(n) => acked[i] = n,
                Err(e) => {
                    if e.member_code() == Some(tonic::Code::FailedPrecondition) {
                        acked[i] = 0;
                    }
                    tracing::debug!("recording an upload's stripes: {e}");
                }
            }
        }
    }
}

/// Deletes the record from the PG's members once the object is committed. Best effort: a
/// copy left behind is swept after the orphan grace and cannot be resumed after half of it.
pub async fn forget(node: Arc<Node>, pool: pb::PoolMap, bucket: String, key: String, id: Bytes) {
    let view = node.cluster.view();
    let members = pg_members(&pool, &bucket, &key);
    let calls = members
        .iter()
        .map(|m| node.delete_upload_record(&view, m, id.clone()));
    for r in join_all(calls).await {
        if let Err(e) = r {
            tracing::debug!("deleting a finished upload's record: {e}");
        }
    }
}
