//! AgentControl: the operator (or `potluck dev up`) pushes cluster maps here.

use std::sync::Arc;
use std::time::Instant;

use pb::agent_control_server::AgentControl;
use potluck_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::cluster::MapError;
use crate::node::Node;

pub struct Control {
    node: Arc<Node>,
}

impl Control {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
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
        }))
    }
}
