//! AgentControl: the operator (or `potluck dev up`) pushes cluster maps here; operators ask
//! for status and on-demand scrubs.

use std::sync::Arc;
use std::time::Instant;

use pb::agent_control_server::AgentControl;
use potluck_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::cluster::MapError;
use crate::keys::MAX_POOL_NAME;
use crate::node::Node;
use crate::scrub::{ScrubError, Scrubber};

pub struct Control {
    node: Arc<Node>,
    scrubber: Arc<Scrubber>,
}

impl Control {
    pub fn new(node: Arc<Node>, scrubber: Arc<Scrubber>) -> Self {
        Self { node, scrubber }
    }
}

#[tonic::async_trait]
impl AgentControl for Control {
    async fn apply_cluster_map(
        &self,
        req: Request<pb::ApplyClusterMapRequest>,
    ) -> Result<Response<pb::ApplyClusterMapResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let map = req
                .into_inner()
                .map
                .ok_or_else(|| Status::invalid_argument("ApplyClusterMap without a map"))?;
            let node = self.node.clone();
            let result = tokio::task::spawn_blocking(move || node.apply_map(map))
                .await
                .map_err(|e| Status::internal(format!("map task failed: {e}")))?;
            match result {
                Ok((view, _)) => Ok(pb::ApplyClusterMapResponse {
                    epoch: view.epoch(),
                }),
                Err(e @ (MapError::Stale { .. } | MapError::Conflict(_))) => {
                    Err(Status::failed_precondition(e.to_string()))
                }
                Err(e @ MapError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            }
        }
        .await;
        self.node
            .metrics
            .observe_result("AgentControl", "ApplyClusterMap", t, &r);
        r.map(Response::new)
    }

    async fn get_cluster_map(
        &self,
        _req: Request<pb::GetClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMap>, Status> {
        Ok(Response::new(self.node.cluster.view().map.clone()))
    }

    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        let s = self.node.store.stats();
        Ok(Response::new(pb::AgentStatus {
            member_id: self.node.id.clone(),
            epoch: self.node.cluster.epoch(),
            shard_count: s.shards,
            stored_bytes: s.bytes,
            capacity_bytes: s.capacity,
            manifest_count: s.manifests,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.node.started.elapsed().as_secs(),
            pgs: self.node.recovery.reports(),
            recovered_bytes: self.node.recovery.recovered_bytes(),
        }))
    }

    /// Runs a scrub pass and answers when it ends; a pass already running (scheduled or on
    /// demand) makes the call fail at once with ABORTED. A cancelled call stops its pass.
    async fn scrub(
        &self,
        req: Request<pb::ScrubRequest>,
    ) -> Result<Response<pb::ScrubResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let pool = req.into_inner().pool;
            let pool = if pool.is_empty() {
                None
            } else {
                let view = self.node.cluster.view();
                if pool.len() > MAX_POOL_NAME || view.pool(&pool).is_none() {
                    return Err(Status::not_found(format!(
                        "pool {pool:?} is not in the cluster map (epoch {}); pools: {}",
                        view.epoch(),
                        view.pool_names().join(", ")
                    )));
                }
                Some(pool)
            };
            self.scrubber
                .scrub_now(&self.node, pool)
                .await
                .map_err(|e| match e {
                    ScrubError::Busy => Status::aborted(e.to_string()),
                    ScrubError::Store(_) => Status::internal(e.to_string()),
                })
        }
        .await;
        self.node
            .metrics
            .observe_result("AgentControl", "Scrub", t, &r);
        r.map(Response::new)
    }
}
