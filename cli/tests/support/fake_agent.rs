//! An in-memory stand-in for the agent's client-facing and control services.
//!
//! It lets the CLI's own tests exercise the client, the fleet and the command
//! without the real agent (built by another crate, possibly not yet ready):
//! no erasure coding, no peers, just the gRPC contract as a client sees it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures::Stream;
use potluck_proto::v1::agent_control_server::AgentControl;
use potluck_proto::v1::object_service_server::ObjectService;
use potluck_proto::v1::put_object_request::Body;
use potluck_proto::v1::{
    AgentStatus, ApplyClusterMapRequest, ApplyClusterMapResponse, ClusterMap, DeleteObjectRequest,
    DeleteObjectResponse, GetClusterMapRequest, GetObjectRequest, GetObjectResponse,
    GetStatusRequest, ListObjectsRequest, ListObjectsResponse, ObjectInfo, PutObjectRequest,
    PutObjectResponse, StatObjectRequest,
};
use tonic::{Request, Response, Status, Streaming};

type Key = (String, String, String);

#[derive(Default)]
pub struct FakeAgent {
    pub id: String,
    objects: Mutex<BTreeMap<Key, (ObjectInfo, Bytes)>>,
    map: Mutex<ClusterMap>,
    versions: AtomicU64,
    /// Puts whose handler is still running: a put the client abandoned must
    /// not linger (its stream is reset, not left open).
    pub active_puts: AtomicU64,
}

struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn pool_name(pool: &str) -> String {
    if pool.is_empty() {
        "default".to_string()
    } else {
        pool.to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The services, over a shared agent (tonic wants an owned service value).
#[derive(Clone)]
pub struct FakeService(pub std::sync::Arc<FakeAgent>);

impl std::ops::Deref for FakeService {
    type Target = FakeAgent;
    fn deref(&self) -> &FakeAgent {
        &self.0
    }
}

impl FakeAgent {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            ..Self::default()
        }
    }

    pub fn keys(&self) -> Vec<String> {
        lock(&self.objects)
            .keys()
            .map(|(_, b, k)| format!("{b}/{k}"))
            .collect()
    }

    pub fn object_count(&self) -> usize {
        lock(&self.objects).len()
    }
}

#[tonic::async_trait]
impl ObjectService for FakeService {
    async fn put_object(
        &self,
        request: Request<Streaming<PutObjectRequest>>,
    ) -> Result<Response<PutObjectResponse>, Status> {
        self.active_puts.fetch_add(1, Ordering::SeqCst);
        let _active = ActiveGuard(&self.active_puts);
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PutObjectRequest {
                body: Some(Body::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the header",
                ))
            }
        };
        if header.bucket.is_empty() || header.key.is_empty() {
            return Err(Status::invalid_argument("bucket and key must not be empty"));
        }
        let mut data = Vec::new();
        let mut hasher = blake3::Hasher::new();
        loop {
            match stream.message().await {
                Ok(Some(PutObjectRequest {
                    body: Some(Body::Chunk(chunk)),
                })) => {
                    hasher.update(&chunk);
                    data.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => return Err(Status::invalid_argument("a second header")),
                Ok(None) => break,
                Err(status) => return Err(status),
            }
        }
        if let Some(size) = header.size {
            if size != data.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "declared {size} bytes, got {}",
                    data.len()
                )));
            }
        }
        let info = ObjectInfo {
            bucket: header.bucket.clone(),
            key: header.key.clone(),
            pool: pool_name(&header.pool),
            size: data.len() as u64,
            version: self.versions.fetch_add(1, Ordering::SeqCst) + 1,
            created_unix_ms: 1_764_084_000_000,
            blake3: hasher.finalize().to_hex().to_string(),
            k: 4,
            m: 2,
            chunk_size: 1 << 20,
        };
        lock(&self.objects).insert(
            (pool_name(&header.pool), header.bucket, header.key),
            (info.clone(), Bytes::from(data)),
        );
        Ok(Response::new(PutObjectResponse {
            info: Some(info),
            degraded_stripes: 0,
        }))
    }

    type GetObjectStream =
        Pin<Box<dyn Stream<Item = Result<GetObjectResponse, Status>> + Send + 'static>>;

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        let r = request.into_inner();
        let (info, data) = lock(&self.objects)
            .get(&(pool_name(&r.pool), r.bucket.clone(), r.key.clone()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no object {}/{}", r.bucket, r.key)))?;
        let offset = r.offset.unwrap_or(0);
        if offset > info.size {
            return Err(Status::out_of_range("offset past the end"));
        }
        let end = match r.length {
            Some(l) if l > 0 => (offset + l).min(info.size),
            _ => info.size,
        };
        let body = data.slice(offset as usize..end as usize);
        let mut messages = Vec::new();
        let mut first = Some(info);
        let mut at = 0;
        loop {
            let upto = (at + (1 << 20)).min(body.len());
            messages.push(Ok(GetObjectResponse {
                info: first.take(),
                chunk: body.slice(at..upto),
            }));
            at = upto;
            if at >= body.len() {
                break;
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn stat_object(
        &self,
        request: Request<StatObjectRequest>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let r = request.into_inner();
        lock(&self.objects)
            .get(&(pool_name(&r.pool), r.bucket.clone(), r.key.clone()))
            .map(|(info, _)| Response::new(info.clone()))
            .ok_or_else(|| Status::not_found(format!("no object {}/{}", r.bucket, r.key)))
    }

    async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectResponse>, Status> {
        let r = request.into_inner();
        lock(&self.objects)
            .remove(&(pool_name(&r.pool), r.bucket.clone(), r.key.clone()))
            .ok_or_else(|| Status::not_found(format!("no object {}/{}", r.bucket, r.key)))?;
        Ok(Response::new(DeleteObjectResponse {
            version: self.versions.fetch_add(1, Ordering::SeqCst) + 1,
        }))
    }

    async fn list_objects(
        &self,
        request: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsResponse>, Status> {
        let r = request.into_inner();
        let page_size = if r.page_size == 0 { 1000 } else { r.page_size } as usize;
        let pool = pool_name(&r.pool);
        let objects = lock(&self.objects);
        let matching: Vec<ObjectInfo> = objects
            .iter()
            .filter(|((p, b, k), _)| {
                *p == pool && *b == r.bucket && k.starts_with(&r.prefix) && **k > *r.page_token
            })
            .map(|(_, (info, _))| info.clone())
            .take(page_size + 1)
            .collect();
        let more = matching.len() > page_size;
        let page: Vec<ObjectInfo> = matching.into_iter().take(page_size).collect();
        let next_page_token = if more {
            page.last().map(|i| i.key.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListObjectsResponse {
            objects: page,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl AgentControl for FakeService {
    async fn apply_cluster_map(
        &self,
        request: Request<ApplyClusterMapRequest>,
    ) -> Result<Response<ApplyClusterMapResponse>, Status> {
        let map = request
            .into_inner()
            .map
            .ok_or_else(|| Status::invalid_argument("no map"))?;
        let mut current = lock(&self.map);
        if map.epoch < current.epoch {
            return Err(Status::failed_precondition(format!(
                "map epoch {} is older than the applied {}",
                map.epoch, current.epoch
            )));
        }
        let epoch = map.epoch;
        *current = map;
        Ok(Response::new(ApplyClusterMapResponse { epoch }))
    }

    async fn get_cluster_map(
        &self,
        _request: Request<GetClusterMapRequest>,
    ) -> Result<Response<ClusterMap>, Status> {
        Ok(Response::new(lock(&self.map).clone()))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<AgentStatus>, Status> {
        Ok(Response::new(AgentStatus {
            member_id: self.id.clone(),
            epoch: lock(&self.map).epoch,
            manifest_count: self.object_count() as u64,
            ..AgentStatus::default()
        }))
    }
}
