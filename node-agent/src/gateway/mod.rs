//! ObjectService: any agent is a gateway that encodes, fans out, gathers and
//! decodes on behalf of clients.

pub(crate) mod get;
pub mod hedge;
mod list;
pub mod manifests;
mod put;
pub mod stripe_cache;
pub mod uploads;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pb::object_service_server::ObjectService;
use potluck_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Caller};
use crate::cluster::MapView;
use crate::codec::CodecError;
use crate::node::{now_unix_ms, now_unix_ns, Node};
use crate::validate;

pub struct Gateway {
    node: Arc<Node>,
    auth: Authenticator,
}

impl Gateway {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            auth: Authenticator::new(),
        }
    }

    /// Every call is authenticated before its body is read (`auth`).
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.auth
            .authenticate(&self.node.cluster.view(), req.metadata())
    }

    fn observe<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        self.node
            .metrics
            .observe_result("ObjectService", method, started, r);
    }

    /// Validates an object address and finds its newest live manifest.
    pub(crate) async fn live(
        &self,
        bucket: &str,
        key: &str,
        pool: &str,
    ) -> Result<(Arc<MapView>, pb::PoolMap, pb::Manifest), Status> {
        validate::bucket(bucket)?;
        validate::key(key)?;
        let view = self.node.cluster.view();
        let pool = resolve_pool(&view, pool)?.clone();
        let m = get::live_manifest(&self.node, &view, &pool, bucket, key).await?;
        Ok((view, pool, m))
    }
}

/// The pool a request names, if this agent has a map and the pool can hold data.
pub fn resolve_pool<'a>(view: &'a MapView, name: &str) -> Result<&'a pb::PoolMap, Status> {
    if view.epoch() == 0 {
        return Err(Status::unavailable(
            "this agent has no cluster map yet; wait for the operator (or `potluck dev up`) to push one",
        ));
    }
    let name = validate::pool_name(name);
    let pool = view.pool(name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown pool {name:?}; pools in the cluster map: {:?}",
            view.pool_names()
        ))
    })?;
    if !pool.unplaceable_reason.is_empty() {
        return Err(Status::failed_precondition(format!(
            "pool {name:?} cannot place data: {}",
            pool.unplaceable_reason
        )));
    }
    Ok(pool)
}

pub fn status_from_codec(e: CodecError) -> Status {
    match e {
        CodecError::InvalidCode { .. } => Status::failed_precondition(e.to_string()),
        CodecError::TooFewShards { .. } => Status::unavailable(e.to_string()),
        CodecError::Internal(_) => Status::internal(e.to_string()),
    }
}

pub fn info_of(m: &pb::Manifest) -> pb::ObjectInfo {
    pb::ObjectInfo {
        bucket: m.bucket.clone(),
        key: m.key.clone(),
        pool: m.pool.clone(),
        size: m.size,
        version: m.version,
        created_unix_ms: m.created_unix_ms,
        blake3: hex::encode(&m.blake3),
        k: m.k,
        m: m.m,
        chunk_size: m.chunk_size,
    }
}

#[tonic::async_trait]
impl ObjectService for Gateway {
    async fn put_object(
        &self,
        req: Request<Streaming<pb::PutObjectRequest>>,
    ) -> Result<Response<pb::PutObjectResponse>, Status> {
        let t = Instant::now();
        let caller = self.caller(&req);
        let node = self.node.clone();
        // The put runs in a task of its own: when a client vanishes, the server may drop this
        // call's future before the put notices, and what a failed put does on its way out
        // (take its shards back; for a resumable put, let the stripes in flight finish and
        // record them; count the call) would never run.
        let task = tokio::spawn(async move {
            let r = match caller {
                Ok(caller) => put::put_object(node.clone(), caller, req.into_inner()).await,
                Err(s) => Err(s),
            };
            node.metrics
                .observe_result("ObjectService", "PutObject", t, &r);
            if let Err(s) = &r {
                tracing::info!(code = ?s.code(), "put refused: {}", s.message());
            }
            r
        });
        task.await
            .map_err(|e| Status::internal(format!("put task failed: {e}")))?
            .map(Response::new)
    }

    type GetObjectStream = get::GetStream;

    async fn get_object(
        &self,
        req: Request<pb::GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        let t = Instant::now();
        let r = async {
            let caller = self.caller(&req)?;
            let mut req = req.into_inner();
            caller.authorize_read(&req.bucket, &req.key, &mut req.pool)?;
            get::get_object(self.node.clone(), req).await
        }
        .await;
        self.observe("GetObject", t, &r);
        r.map(Response::new)
    }

    async fn stat_object(
        &self,
        req: Request<pb::StatObjectRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        let t = Instant::now();
        let r = async {
            let caller = self.caller(&req)?;
            let mut req = req.into_inner();
            caller.authorize_read(&req.bucket, &req.key, &mut req.pool)?;
            self.live(&req.bucket, &req.key, &req.pool)
                .await
                .map(|(_, _, m)| info_of(&m))
        }
        .await;
        self.observe("StatObject", t, &r);
        r.map(Response::new)
    }

    async fn delete_object(
        &self,
        req: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let caller = self.caller(&req)?;
            let mut req = req.into_inner();
            caller.authorize(&req.bucket, &mut req.pool)?;
            let (view, pool, live) = self.live(&req.bucket, &req.key, &req.pool).await?;
            let version = now_unix_ns().max(live.version + 1);
            let tombstone = pb::Manifest {
                bucket: req.bucket.clone(),
                key: req.key.clone(),
                pool: pool.name.clone(),
                version,
                object_id: Bytes::copy_from_slice(&crate::layout::new_object_id(
                    &req.bucket,
                    &req.key,
                    now_unix_ms(),
                )),
                tombstone: true,
                created_unix_ms: now_unix_ms(),
                epoch: view.epoch(),
                ..Default::default()
            };
            manifests::write(&self.node, &view, &pool, tombstone).await?;
            Ok(pb::DeleteObjectResponse { version })
        }
        .await;
        self.observe("DeleteObject", t, &r);
        r.map(Response::new)
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let caller = self.caller(&req)?;
            let mut req = req.into_inner();
            caller.authorize_list(&req.bucket, &req.prefix, &mut req.pool)?;
            list::list_objects(&self.node, req).await
        }
        .await;
        self.observe("ListObjects", t, &r);
        r.map(Response::new)
    }

    async fn get_upload(
        &self,
        req: Request<pb::GetUploadRequest>,
    ) -> Result<Response<pb::GetUploadResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let caller = self.caller(&req)?;
            let mut req = req.into_inner();
            caller.authorize(&req.bucket, &mut req.pool)?;
            uploads::get_upload(self.node.clone(), req).await
        }
        .await;
        self.observe("GetUpload", t, &r);
        r.map(Response::new)
    }
}
