//! The agent's shared state, and shard/manifest access that is the same call
//! whether the member holding the data is this agent or a peer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use potluck_proto::v1 as pb;
use tokio::sync::Semaphore;

use crate::buffers::BufferPool;
use crate::cluster::{Cluster, MapError, MapView};
use crate::codec::CodecCache;
use crate::keys::ShardKey;
use crate::metrics::Metrics;
use crate::peers::{put_shard_messages, FrameCollector, PeerError, Peers};
use crate::shard_store::{ShardStore, StoreError};

/// Tunables; the defaults suit a LAN fleet of modest machines.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Stripes of one put or get being encoded, sent or fetched at once.
    pub stripes_in_flight: usize,
    /// Deadline of one shard transfer to or from a peer.
    pub shard_timeout: Duration,
    /// Deadline of one manifest call.
    pub manifest_timeout: Duration,
    /// Grace before an overwritten version's shards are deleted, so reads
    /// already under way finish.
    pub gc_delay: Duration,
    pub gc_interval: Duration,
    /// Blocking store operations running at once.
    pub store_concurrency: usize,
    /// Stripe buffers all puts on this agent may hold at once, in bytes: a
    /// put waits (and so slows its client) rather than growing past it.
    pub put_memory_bytes: usize,
    /// How often a PG's leader re-checks a PG that was clean (a new map epoch triggers a
    /// check at once).
    pub recovery_interval: Duration,
    /// Bytes per second recovery may write, so client I/O keeps its share.
    pub recovery_bandwidth: u64,
    /// Time between full scrub passes (every local shard re-read against its hash); zero
    /// leaves scrubbing to `AgentControl.Scrub`.
    pub scrub_interval: Duration,
    /// Bytes per second a scrub pass may read and rewrite: a pass touches the whole disk, so
    /// it must stay a background trickle.
    pub scrub_bandwidth: u64,
    /// Age after which a stripe that no manifest names is collected as left over by a put that
    /// died half way; puts must commit within half of it. The same on every agent.
    pub orphan_grace: Duration,
    /// Stripes one PG leader rebuilds at once.
    pub recovery_concurrency: usize,
    /// Extra members a full-stripe read asks at once, decoding from the first k answers.
    pub read_hedge: usize,
    /// Fault injection for tests and benchmarks: every shard this member serves to a peer
    /// waits this long first, like a slow disk or link.
    pub serve_delay: Duration,
    /// Bytes of recently read stripes kept for further readers; 0 turns the cache off.
    pub stripe_cache_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            stripes_in_flight: 4,
            shard_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(5),
            gc_delay: Duration::from_secs(60),
            gc_interval: Duration::from_secs(2),
            store_concurrency: 32,
            put_memory_bytes: 256 << 20,
            recovery_interval: Duration::from_secs(300),
            recovery_bandwidth: 64 << 20,
            scrub_interval: Duration::from_secs(86_400),
            scrub_bandwidth: 32 << 20,
            orphan_grace: Duration::from_secs(6 * 3600),
            recovery_concurrency: 4,
            read_hedge: 1,
            serve_delay: Duration::ZERO,
            stripe_cache_bytes: 256 << 20,
        }
    }
}

pub struct Node {
    pub id: String,
    pub store: Arc<ShardStore>,
    pub cluster: Cluster,
    pub peers: Peers,
    pub codecs: CodecCache,
    pub buffers: BufferPool,
    pub metrics: Arc<Metrics>,
    pub tuning: Tuning,
    pub started: Instant,
    /// Budget for stripe buffers of puts, in MiB units (see `Tuning`).
    pub put_memory: Arc<Semaphore>,
    /// At most one fetch of a newer map from peers at a time.
    pub catchup: crate::map_catchup::CatchupState,
    /// What recovery last found in each PG this member leads.
    pub recovery: crate::recovery::RecoveryState,
    /// How long shard fetches from peers take, for hedged reads.
    pub shard_latency: crate::gateway::hedge::LatencyTracker,
    /// Stripes recently read through this agent.
    pub stripe_cache: crate::gateway::stripe_cache::StripeCache,
    /// Where share grants are recorded and where links point (set at start-up).
    pub sharing: crate::shares::Sharing,
    /// Records of resumable uploads whose key's PG this member is in.
    pub uploads: Arc<crate::uploads::UploadRecords>,
    store_slots: Semaphore,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl Node {
    pub fn new(
        id: String,
        store: Arc<ShardStore>,
        cluster: Cluster,
        metrics: Arc<Metrics>,
        tuning: Tuning,
    ) -> Self {
        let uploads_dir = store
            .path()
            .parent()
            .unwrap_or(store.path())
            .join("uploads");
        Self {
            id,
            uploads: Arc::new(crate::uploads::UploadRecords::new(uploads_dir)),
            store,
            cluster,
            peers: Peers::default(),
            codecs: CodecCache::default(),
            buffers: BufferPool::new(16),
            metrics,
            store_slots: Semaphore::new(tuning.store_concurrency),
            put_memory: Arc::new(Semaphore::new((tuning.put_memory_bytes >> 20).max(1))),
            catchup: crate::map_catchup::CatchupState::default(),
            recovery: crate::recovery::RecoveryState::default(),
            shard_latency: Default::default(),
            stripe_cache: crate::gateway::stripe_cache::StripeCache::new(tuning.stripe_cache_bytes),
            sharing: Default::default(),
            tuning,
            started: Instant::now(),
        }
    }

    /// Replaces the map if `map` is newer, persisting it first (blocking: call
    /// from `spawn_blocking`). Whoever hands us the map (operator push or a
    /// peer during catch-up) goes through the same rule and bookkeeping.
    pub fn apply_map(&self, map: pb::ClusterMap) -> Result<(Arc<MapView>, bool), MapError> {
        let store = self.store.clone();
        let (view, changed) = self.cluster.apply(map, |m| {
            store
                .save_map(m)
                .map_err(|e| MapError::Invalid(format!("could not persist the map: {e}")))
        })?;
        if changed {
            self.metrics.map_epoch.set(view.epoch() as i64);
            tracing::info!(epoch = view.epoch(), "applied cluster map");
        }
        Ok((view, changed))
    }

    /// Runs a blocking store operation off the async workers, bounded.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ShardStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _slot = self
            .store_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Malformed("store is shutting down".into()))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Malformed(format!("store task failed: {e}")))?
    }

    fn local_err(&self, e: StoreError) -> PeerError {
        PeerError::Local {
            member: self.id.clone(),
            status_code: crate::shard_service::store_status_code(&e),
            detail: e.to_string(),
        }
    }

    fn peer(
        &self,
        view: &MapView,
        member: &str,
    ) -> Result<
        potluck_proto::v1::shard_service_client::ShardServiceClient<tonic::transport::Channel>,
        PeerError,
    > {
        let info = view
            .member(member)
            .ok_or_else(|| PeerError::UnknownMember {
                member: member.to_string(),
                epoch: view.epoch(),
            })?;
        self.peers.client(member, &info.endpoint)
    }

    fn note_peer_error(&self, member: &str) {
        self.metrics.peer_errors.with_label_values(&[member]).inc();
    }

    pub async fn put_shard(
        &self,
        view: &MapView,
        member: &str,
        key: ShardKey,
        data: Bytes,
        hash: [u8; 32],
    ) -> Result<(), PeerError> {
        let len = data.len() as u64;
        let r = if member == self.id {
            self.with_store(move |s| s.put_shard(&key, &data, &hash))
                .await
                .map_err(|e| self.local_err(e))
        } else {
            let mut client = self.peer(view, member)?;
            let header = pb::ShardHeader {
                id: Some(key.to_proto()),
                length: len,
                blake3: Bytes::copy_from_slice(&hash),
            };
            let msgs = put_shard_messages(view.epoch(), header, data);
            let mut req = tonic::Request::new(tokio_stream::iter(msgs));
            req.set_timeout(self.tuning.shard_timeout);
            client
                .put_shard(req)
                .await
                .map(|_| ())
                .map_err(|s| PeerError::call(member, s))
        };
        match &r {
            Ok(()) => self
                .metrics
                .peer_bytes
                .with_label_values(&["out"])
                .inc_by(len),
            Err(_) => self.note_peer_error(member),
        }
        r
    }

    /// Fetches a shard. `Ok(None)`: the member answered but does not hold it.
    pub async fn get_shard(
        &self,
        view: &MapView,
        member: &str,
        key: ShardKey,
    ) -> Result<Option<Bytes>, PeerError> {
        let r = if member == self.id {
            self.with_store(move |s| s.get_shard(&key))
                .await
                .map(|o| o.map(|(d, _)| Bytes::from(d)))
                .map_err(|e| {
                    if matches!(e, StoreError::Corrupt { .. }) {
                        self.metrics.corrupt_shards.inc();
                    }
                    self.local_err(e)
                })
        } else {
            // The call's own deadline covers only the answer's headers; this one covers the
            // shard's frames too, so a peer that stalls mid-stream cannot hang a read.
            tokio::time::timeout(
                self.tuning.shard_timeout,
                self.get_remote_shard(view, member, key),
            )
            .await
            .unwrap_or_else(|_| {
                Err(PeerError::call(
                    member,
                    tonic::Status::deadline_exceeded("shard stream stalled"),
                ))
            })
        };
        match &r {
            Ok(Some(d)) => self
                .metrics
                .peer_bytes
                .with_label_values(&["in"])
                .inc_by(d.len() as u64),
            Ok(None) => {}
            Err(_) => self.note_peer_error(member),
        }
        r
    }

    async fn get_remote_shard(
        &self,
        view: &MapView,
        member: &str,
        key: ShardKey,
    ) -> Result<Option<Bytes>, PeerError> {
        let mut client = self.peer(view, member)?;
        let mut req = tonic::Request::new(pb::GetShardRequest {
            epoch: view.epoch(),
            id: Some(key.to_proto()),
        });
        req.set_timeout(self.tuning.shard_timeout);
        let call = |s| PeerError::call(member, s);
        let mut stream = match client.get_shard(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(call(s)),
        };
        let first = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(call(tonic::Status::data_loss("empty shard stream"))),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(call(s)),
        };
        let len = first.header.as_ref().map(|h| h.length).unwrap_or(0);
        if len > crate::layout::MAX_CHUNK_SIZE {
            return Err(call(tonic::Status::data_loss(format!(
                "peer announced a {len} byte shard, larger than any chunk"
            ))));
        }
        let mut frames = FrameCollector::new(len);
        if !frames.push(first.data) {
            return Err(call(tonic::Status::data_loss(
                "shard longer than announced",
            )));
        }
        while frames.len() < len {
            let pushed = match stream.message().await.map_err(call)? {
                Some(m) => frames.push(m.data),
                None => false,
            };
            if !pushed {
                return Err(call(tonic::Status::data_loss("shard stream cut short")));
            }
        }
        Ok(Some(frames.finish()))
    }

    pub async fn delete_shard(
        &self,
        view: &MapView,
        member: &str,
        key: ShardKey,
    ) -> Result<bool, PeerError> {
        if member == self.id {
            return self
                .with_store(move |s| s.delete_shard(&key))
                .await
                .map_err(|e| self.local_err(e));
        }
        let mut client = self.peer(view, member)?;
        let mut req = tonic::Request::new(pb::DeleteShardRequest {
            epoch: view.epoch(),
            id: Some(key.to_proto()),
        });
        req.set_timeout(self.tuning.manifest_timeout);
        client
            .delete_shard(req)
            .await
            .map(|r| r.into_inner().existed)
            .map_err(|s| PeerError::call(member, s))
    }

    /// One page of a PG's shards on `member`, ordered by key.
    pub async fn list_shards(
        &self,
        view: &MapView,
        member: &str,
        pool: &str,
        pg: u32,
        after: Option<ShardKey>,
        limit: u32,
    ) -> Result<(Vec<(ShardKey, u64)>, bool), PeerError> {
        if member == self.id {
            let pool = pool.to_string();
            return self
                .with_store(move |s| s.list_shards(&pool, pg, after.as_ref(), limit as usize))
                .await
                .map(|(items, more)| {
                    (
                        items.into_iter().map(|(k, meta)| (k, meta.len)).collect(),
                        more,
                    )
                })
                .map_err(|e| self.local_err(e));
        }
        let mut client = self.peer(view, member)?;
        let mut req = tonic::Request::new(pb::ListShardsRequest {
            epoch: view.epoch(),
            pool: pool.to_string(),
            pg,
            after: after.map(|k| k.to_proto()),
            limit,
        });
        req.set_timeout(self.tuning.manifest_timeout);
        let resp = client
            .list_shards(req)
            .await
            .map_err(|s| PeerError::call(member, s))?
            .into_inner();
        let mut out = Vec::with_capacity(resp.shards.len());
        for h in resp.shards {
            let key = ShardKey::from_proto(h.id.as_ref()).map_err(|e| {
                PeerError::call(
                    member,
                    tonic::Status::data_loss(format!("bad shard id: {e}")),
                )
            })?;
            out.push((key, h.length));
        }
        Ok((out, resp.truncated))
    }

    /// One page of the manifests on `member` whose keys hash to `pg`, whole.
    pub async fn list_pg_manifests(
        &self,
        view: &MapView,
        member: &str,
        pool: &str,
        pg: u32,
        pg_count: u32,
        after: Option<(String, String)>,
    ) -> Result<(Vec<pb::Manifest>, bool), PeerError> {
        if member == self.id {
            let pool = pool.to_string();
            return self
                .with_store(move |s| {
                    let after = after.as_ref().map(|(b, k)| (b.as_str(), k.as_str()));
                    s.list_pg_manifests(&pool, pg, pg_count, after, 16)
                })
                .await
                .map_err(|e| self.local_err(e));
        }
        let mut client = self.peer(view, member)?;
        let (start_after_bucket, start_after) = after.unwrap_or_default();
        let mut req = tonic::Request::new(pb::ListManifestsRequest {
            epoch: view.epoch(),
            pool: pool.to_string(),
            pg,
            pg_count,
            start_after_bucket,
            start_after,
            limit: 16,
            ..Default::default()
        });
        req.set_timeout(self.tuning.manifest_timeout);
        let resp = client
            .list_manifests(req)
            .await
            .map_err(|s| PeerError::call(member, s))?
            .into_inner();
        Ok((resp.manifests, resp.truncated))
    }

    pub async fn put_manifest(
        &self,
        view: &MapView,
        member: &str,
        pg: u32,
        manifest: pb::Manifest,
    ) -> Result<bool, PeerError> {
        let r = if member == self.id {
            let delay = self.tuning.gc_delay.as_millis() as u64;
            self.with_store(move |s| s.put_manifest(&manifest, now_unix_ms(), delay))
                .await
                .map_err(|e| self.local_err(e))
        } else {
            let mut client = self.peer(view, member)?;
            let mut req = tonic::Request::new(pb::PutManifestRequest {
                epoch: view.epoch(),
                pg,
                manifest: Some(manifest),
            });
            req.set_timeout(self.tuning.manifest_timeout);
            client
                .put_manifest(req)
                .await
                .map(|r| r.into_inner().applied)
                .map_err(|s| PeerError::call(member, s))
        };
        if r.is_err() {
            self.note_peer_error(member);
        }
        r
    }

    pub async fn get_manifest(
        &self,
        view: &MapView,
        member: &str,
        pool: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<pb::Manifest>, PeerError> {
        let r = if member == self.id {
            let (p, b, k) = (pool.to_string(), bucket.to_string(), key.to_string());
            self.with_store(move |s| s.get_manifest(&p, &b, &k))
                .await
                .map_err(|e| self.local_err(e))
        } else {
            let mut client = self.peer(view, member)?;
            let mut req = tonic::Request::new(pb::GetManifestRequest {
                epoch: view.epoch(),
                pool: pool.to_string(),
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
            req.set_timeout(self.tuning.manifest_timeout);
            client
                .get_manifest(req)
                .await
                .map(|r| r.into_inner().manifest)
                .map_err(|s| PeerError::call(member, s))
        };
        if r.is_err() {
            self.note_peer_error(member);
        }
        r
    }

    pub async fn list_manifests(
        &self,
        view: &MapView,
        member: &str,
        req: pb::ListManifestsRequest,
    ) -> Result<pb::ListManifestsResponse, PeerError> {
        if member == self.id {
            return self
                .with_store(move |s| {
                    s.list_manifests(
                        &req.pool,
                        &req.bucket,
                        &req.prefix,
                        &req.start_after,
                        req.limit as usize,
                    )
                })
                .await
                .map(|(manifests, truncated)| pb::ListManifestsResponse {
                    manifests,
                    truncated,
                })
                .map_err(|e| self.local_err(e));
        }
        let mut client = self.peer(view, member)?;
        let mut req = tonic::Request::new(req);
        req.set_timeout(self.tuning.manifest_timeout);
        client
            .list_manifests(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                self.note_peer_error(member);
                PeerError::call(member, s)
            })
    }

    /// Runs a blocking upload-record operation off the async workers.
    async fn with_uploads<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::uploads::UploadRecords) -> Result<T, crate::uploads::UploadError>
            + Send
            + 'static,
    ) -> Result<T, PeerError> {
        let uploads = self.uploads.clone();
        let r = tokio::task::spawn_blocking(move || f(&uploads))
            .await
            .map_err(|e| crate::uploads::UploadError::Malformed(format!("record task failed: {e}")))
            .and_then(|r| r);
        r.map_err(|e| PeerError::Local {
            member: self.id.clone(),
            status_code: match e {
                crate::uploads::UploadError::Io(_) => tonic::Code::Internal,
                crate::uploads::UploadError::Gap { .. }
                | crate::uploads::UploadError::Mismatch { .. } => tonic::Code::FailedPrecondition,
                _ => tonic::Code::InvalidArgument,
            },
            detail: e.to_string(),
        })
    }

    /// Appends stripes to an upload record on `member`; the stripes it now holds.
    pub async fn put_upload_record(
        &self,
        view: &MapView,
        member: &str,
        record: pb::UploadRecord,
        first_stripe: u64,
    ) -> Result<u64, PeerError> {
        let r = if member == self.id {
            self.with_uploads(move |u| u.put(&record, first_stripe))
                .await
        } else {
            let mut client = self.peer(view, member)?;
            let mut req = tonic::Request::new(pb::PutUploadRecordRequest {
                epoch: view.epoch(),
                record: Some(record),
                first_stripe,
            });
            req.set_timeout(self.tuning.manifest_timeout);
            client
                .put_upload_record(req)
                .await
                .map(|r| r.into_inner().stripes)
                .map_err(|s| PeerError::call(member, s))
        };
        if r.is_err() {
            self.note_peer_error(member);
        }
        r
    }

    pub async fn get_upload_record(
        &self,
        view: &MapView,
        member: &str,
        upload_id: Bytes,
    ) -> Result<Option<pb::UploadRecord>, PeerError> {
        let r = if member == self.id {
            self.with_uploads(move |u| u.get(&upload_id)).await
        } else {
            let mut client = self.peer(view, member)?;
            let mut req = tonic::Request::new(pb::GetUploadRecordRequest {
                epoch: view.epoch(),
                upload_id,
            });
            req.set_timeout(self.tuning.manifest_timeout);
            client
                .get_upload_record(req)
                .await
                .map(|r| r.into_inner().record)
                .map_err(|s| PeerError::call(member, s))
        };
        if r.is_err() {
            self.note_peer_error(member);
        }
        r
    }

    pub async fn delete_upload_record(
        &self,
        view: &MapView,
        member: &str,
        upload_id: Bytes,
    ) -> Result<(), PeerError> {
        if member == self.id {
            return self
                .with_uploads(move |u| u.delete(&upload_id).map(|_| ()))
                .await;
        }
        let mut client = self.peer(view, member)?;
        let mut req = tonic::Request::new(pb::DeleteUploadRecordRequest {
            epoch: view.epoch(),
            upload_id,
        });
        req.set_timeout(self.tuning.manifest_timeout);
        client
            .delete_upload_record(req)
            .await
            .map(|_| ())
            .map_err(|s| PeerError::call(member, s))
    }
}
