//! ShardService: what peers call on this member. Writes from a caller whose
//! map is older than ours are refused, so no shard lands by a stale placement.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pb::shard_service_server::ShardService;
use potluck_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::keys::{self, ShardKey};
use crate::node::{now_unix_ms, Node};
use crate::peers::{FrameCollector, FRAME_BYTES};
use crate::shard_store::StoreError;
use crate::validate;
use potluck_format::frames::check_shard_header;

/// Largest shard a peer may send: the largest chunk size a pool can have.
const MAX_SHARD_BYTES: u64 = 64 << 20;
const MAX_LIST: u32 = 10_000;
/// Whole manifests per page when listing a PG's for recovery: each carries 192 B of shard
/// hashes per stripe, so pages stay small to stay within the message limit.
const MAX_PG_MANIFESTS: usize = 16;

pub struct ShardServer {
    node: Arc<Node>,
}

impl ShardServer {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn observe<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        self.node
            .metrics
            .observe_result("ShardService", method, started, r);
    }

    /// Every request carries the caller's epoch; a newer one than ours means
    /// we missed a map push, so we fetch it rather than wait for the next one.
    fn saw_epoch(&self, epoch: u64) {
        crate::map_catchup::observe_epoch(&self.node, epoch);
    }

    fn check_write_epoch(&self, epoch: u64) -> Result<(), Status> {
        let mine = self.node.cluster.epoch();
        if epoch < mine {
            return Err(Status::failed_precondition(format!(
                "stale cluster map: caller has epoch {epoch}, member {} has {mine}; fetch the newest map and retry",
                self.node.id
            )));
        }
        Ok(())
    }
}

pub fn store_status_code(e: &StoreError) -> tonic::Code {
    match e {
        StoreError::Corrupt { .. } | StoreError::HashMismatch => tonic::Code::DataLoss,
        StoreError::Full { .. } => tonic::Code::ResourceExhausted,
        StoreError::Key(_) => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

pub fn store_status(e: StoreError) -> Status {
    Status::new(store_status_code(&e), e.to_string())
}

fn key_status(e: keys::KeyError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The next message of a shard stream, by `deadline`: the shard deadline senders use, so a
/// peer that stalls part way (or sends no deadline of its own) cannot hold a handler and
/// the frames it sent.
async fn next_by<T>(
    stream: &mut Streaming<T>,
    deadline: tokio::time::Instant,
) -> Result<Option<T>, Status> {
    tokio::time::timeout_at(deadline, stream.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded("shard stream did not complete within the shard deadline")
        })?
}

/// Names a peer sends to look up manifests: they go into RocksDB keys behind one-byte
/// lengths, so anything longer than a valid name could alias another key.
fn check_names(pool: &str, bucket: &str) -> Result<(), Status> {
    if pool.is_empty() || pool.len() > keys::MAX_POOL_NAME {
        return Err(Status::invalid_argument(format!(
            "pool name must be 1-{} bytes",
            keys::MAX_POOL_NAME
        )));
    }
    if !bucket.is_empty() {
        validate::bucket(bucket)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl ShardService for ShardServer {
    async fn put_shard(
        &self,
        req: Request<Streaming<pb::PutShardRequest>>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let mut stream = req.into_inner();
            let deadline = tokio::time::Instant::now() + self.node.tuning.shard_timeout;
            let first = next_by(&mut stream, deadline).await?.ok_or_else(|| {
                Status::invalid_argument("empty PutShard stream: send the header first")
            })?;
            self.saw_epoch(first.epoch);
            self.check_write_epoch(first.epoch)?;
            let header = check_shard_header(first.header.as_ref(), MAX_SHARD_BYTES)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let mut frames = FrameCollector::new(header.length);
            let too_long = || {
                Status::invalid_argument(format!(
                    "shard data exceeds the length in its header, or a frame exceeds {FRAME_BYTES} bytes"
                ))
            };
            if !frames.push(first.data) {
                return Err(too_long());
            }
            while let Some(m) = next_by(&mut stream, deadline).await? {
                if !frames.push(m.data) {
                    return Err(too_long());
                }
            }
            if !frames.is_complete() {
                return Err(Status::invalid_argument(format!(
                    "shard stream ended after {} of {} bytes",
                    frames.len(),
                    header.length
                )));
            }
            let data = frames.finish();
            let len = data.len() as u64;
            let (key, hash) = (header.key, header.hash);
            self.node
                .with_store(move |s| s.put_shard(&key, &data, &hash))
                .await
                .map_err(store_status)?;
            self.node
                .metrics
                .peer_bytes
                .with_label_values(&["in"])
                .inc_by(len);
            Ok(pb::PutShardResponse {})
        }
        .await;
        self.observe("PutShard", t, &r);
        r.map(Response::new)
    }

    type GetShardStream = ReceiverStream<Result<pb::GetShardResponse, Status>>;

    async fn get_shard(
        &self,
        req: Request<pb::GetShardRequest>,
    ) -> Result<Response<Self::GetShardStream>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            let key = ShardKey::from_proto(req.id.as_ref()).map_err(key_status)?;
            let id = key.to_proto();
            if !self.node.tuning.serve_delay.is_zero() {
                tokio::time::sleep(self.node.tuning.serve_delay).await;
            }
            let found = self.node.with_store(move |s| s.get_shard(&key)).await;
            let (data, meta) = match found {
                Ok(Some(x)) => x,
                Ok(None) => return Err(Status::not_found("shard not held by this member")),
                Err(e) => {
                    if matches!(e, StoreError::Corrupt { .. }) {
                        self.node.metrics.corrupt_shards.inc();
                    }
                    tracing::warn!("serving shard failed: {e}");
                    return Err(store_status(e));
                }
            };
            let data = Bytes::from(data);
            self.node
                .metrics
                .peer_bytes
                .with_label_values(&["out"])
                .inc_by(data.len() as u64);
            let header = pb::ShardHeader {
                id: Some(id),
                length: meta.len,
                blake3: Bytes::copy_from_slice(&meta.hash),
            };
            let frames = crate::peers::put_shard_messages(0, header, data);
            let (tx, rx) = mpsc::channel(frames.len().max(1));
            for f in frames {
                // Capacity equals the frame count: never blocks.
                let _ = tx.try_send(Ok(pb::GetShardResponse {
                    header: f.header,
                    data: f.data,
                }));
            }
            Ok(ReceiverStream::new(rx))
        }
        .await;
        self.observe("GetShard", t, &r);
        r.map(Response::new)
    }

    async fn delete_shard(
        &self,
        req: Request<pb::DeleteShardRequest>,
    ) -> Result<Response<pb::DeleteShardResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            self.check_write_epoch(req.epoch)?;
            let key = ShardKey::from_proto(req.id.as_ref()).map_err(key_status)?;
            let existed = self
                .node
                .with_store(move |s| s.delete_shard(&key))
                .await
                .map_err(store_status)?;
            Ok(pb::DeleteShardResponse { existed })
        }
        .await;
        self.observe("DeleteShard", t, &r);
        r.map(Response::new)
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            let after = match &req.after {
                Some(id) => Some(ShardKey::from_proto(Some(id)).map_err(key_status)?),
                None => None,
            };
            let limit = match req.limit {
                0 => 1000,
                n => n.min(MAX_LIST),
            } as usize;
            let (pool, pg) = (req.pool.clone(), req.pg);
            let (list, truncated) = self
                .node
                .with_store(move |s| s.list_shards(&pool, pg, after.as_ref(), limit))
                .await
                .map_err(store_status)?;
            Ok(pb::ListShardsResponse {
                shards: list
                    .into_iter()
                    .map(|(k, m)| pb::ShardHeader {
                        id: Some(k.to_proto()),
                        length: m.len,
                        blake3: Bytes::copy_from_slice(&m.hash),
                    })
                    .collect(),
                truncated,
            })
        }
        .await;
        self.observe("ListShards", t, &r);
        r.map(Response::new)
    }

    async fn put_manifest(
        &self,
        req: Request<pb::PutManifestRequest>,
    ) -> Result<Response<pb::PutManifestResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            self.check_write_epoch(req.epoch)?;
            let m = req
                .manifest
                .ok_or_else(|| Status::invalid_argument("PutManifest without a manifest"))?;
            validate::bucket(&m.bucket)?;
            validate::key(&m.key)?;
            if m.pool.is_empty() || m.pool.len() > keys::MAX_POOL_NAME {
                return Err(Status::invalid_argument("manifest names no valid pool"));
            }
            let code = self.node.cluster.view().pool(&m.pool).map(|p| (p.k, p.m));
            crate::layout::check_manifest(&m, code)
                .map_err(|why| Status::invalid_argument(format!("malformed manifest: {why}")))?;
            let delay = self.node.tuning.gc_delay.as_millis() as u64;
            let applied = self
                .node
                .with_store(move |s| s.put_manifest(&m, now_unix_ms(), delay))
                .await
                .map_err(store_status)?;
            Ok(pb::PutManifestResponse { applied })
        }
        .await;
        self.observe("PutManifest", t, &r);
        r.map(Response::new)
    }

    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            check_names(&req.pool, &req.bucket)?;
            validate::key(&req.key)?;
            let manifest = self
                .node
                .with_store(move |s| s.get_manifest(&req.pool, &req.bucket, &req.key))
                .await
                .map_err(store_status)?;
            Ok(pb::GetManifestResponse { manifest })
        }
        .await;
        self.observe("GetManifest", t, &r);
        r.map(Response::new)
    }

    async fn list_manifests(
        &self,
        req: Request<pb::ListManifestsRequest>,
    ) -> Result<Response<pb::ListManifestsResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            check_names(&req.pool, &req.bucket)?;
            check_names(&req.pool, &req.start_after_bucket)?;
            validate::prefix(&req.prefix)?;
            validate::prefix(&req.start_after)?;
            let limit = match req.limit {
                0 => 1000,
                n => n.min(MAX_LIST),
            } as usize;
            let (manifests, truncated) = if req.pg_count > 0 {
                if req.pg >= req.pg_count {
                    return Err(Status::invalid_argument(format!(
                        "pg {} is out of range for {} PGs",
                        req.pg, req.pg_count
                    )));
                }
                // Whole manifests are bigger: smaller pages keep a message within its limit.
                let limit = limit.min(MAX_PG_MANIFESTS);
                self.node
                    .with_store(move |s| {
                        let after = (!req.start_after_bucket.is_empty()
                            || !req.start_after.is_empty())
                        .then_some((req.start_after_bucket.as_str(), req.start_after.as_str()));
                        s.list_pg_manifests(&req.pool, req.pg, req.pg_count, after, limit)
                    })
                    .await
                    .map_err(store_status)?
            } else {
                self.node
                    .with_store(move |s| {
                        s.list_manifests(
                            &req.pool,
                            &req.bucket,
                            &req.prefix,
                            &req.start_after,
                            limit,
                        )
                    })
                    .await
                    .map_err(store_status)?
            };
            Ok(pb::ListManifestsResponse {
                manifests,
                truncated,
            })
        }
        .await;
        self.observe("ListManifests", t, &r);
        r.map(Response::new)
    }

    async fn put_upload_record(
        &self,
        req: Request<pb::PutUploadRecordRequest>,
    ) -> Result<Response<pb::PutUploadRecordResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            let record = req
                .record
                .ok_or_else(|| Status::invalid_argument("PutUploadRecord without a record"))?;
            check_names(&record.pool, &record.bucket)?;
            validate::key(&record.key)?;
            let view = self.node.cluster.view();
            let stripes = self
                .node
                .put_upload_record(&view, &self.node.id, record, req.first_stripe)
                .await
                .map_err(local_status)?;
            Ok(pb::PutUploadRecordResponse { stripes })
        }
        .await;
        self.observe("PutUploadRecord", t, &r);
        r.map(Response::new)
    }

    async fn get_upload_record(
        &self,
        req: Request<pb::GetUploadRecordRequest>,
    ) -> Result<Response<pb::GetUploadRecordResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            let view = self.node.cluster.view();
            let record = self
                .node
                .get_upload_record(&view, &self.node.id, req.upload_id)
                .await
                .map_err(local_status)?;
            Ok(pb::GetUploadRecordResponse { record })
        }
        .await;
        self.observe("GetUploadRecord", t, &r);
        r.map(Response::new)
    }

    async fn delete_upload_record(
        &self,
        req: Request<pb::DeleteUploadRecordRequest>,
    ) -> Result<Response<pb::DeleteUploadRecordResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let req = req.into_inner();
            self.saw_epoch(req.epoch);
            let view = self.node.cluster.view();
            self.node
                .delete_upload_record(&view, &self.node.id, req.upload_id)
                .await
                .map_err(local_status)?;
            Ok(pb::DeleteUploadRecordResponse {})
        }
        .await;
        self.observe("DeleteUploadRecord", t, &r);
        r.map(Response::new)
    }
}

/// A local upload-record failure as the status a peer sees.
fn local_status(e: crate::peers::PeerError) -> Status {
    Status::new(
        e.member_code().unwrap_or(tonic::Code::Internal),
        e.to_string(),
    )
}
