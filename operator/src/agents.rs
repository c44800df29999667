//! Talking to agents: ask each for its status, and hand the current map to those behind it.
//!
//! One pass asks every member at once, but never more than `concurrency` at a time and never
//! longer than `timeout` each, so a thousand members or a few hung ones cannot stall a
//! reconcile. An agent that does not answer is simply reported as unreachable; whether that
//! makes it Down is the Lease's business, not this module's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::{
    ApplyClusterMapRequest, ClusterMap, GetClusterMapRequest, GetStatusRequest, MemberState,
};
use tonic::transport::{Channel, Endpoint};

use crate::metrics::Metrics;
use crate::pool_status::AgentReport;

/// What one pass over the agents found.
#[derive(Debug, Default)]
pub struct Pass {
    /// Agents that answered, by member id, with the epoch they run after the pass.
    pub reports: HashMap<String, AgentReport>,
    /// The newest map an agent holds, when it is newer than the one pushed: another operator
    /// published it, and this one must build on it rather than reuse its epoch.
    pub newer: Option<ClusterMap>,
}

/// An agent's report, and its map when that is newer than the one pushed; or why it could
/// not be asked.
type AgentAnswer = Result<(AgentReport, Option<ClusterMap>), String>;

/// Maps of large fleets exceed tonic's 4 MiB default; the agent accepts up to 64 MiB.
fn control_client(ch: Channel) -> AgentControlClient<Channel> {
    AgentControlClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub struct Agents {
    timeout: Duration,
    concurrency: usize,
    channels: Mutex<HashMap<String, Channel>>,
    /// The operator's certificate (operator role) when agents speak mutual TLS.
    tls: Mutex<Option<potluck_tls::Material>>,
}

impl Agents {
    pub fn new(timeout: Duration, concurrency: usize) -> Self {
        Self {
            timeout,
            concurrency: concurrency.max(1),
            channels: Mutex::new(HashMap::new()),
            tls: Mutex::new(None),
        }
    }

    /// Calls agents with `material` from now on (None: plaintext). Channels
    /// are dropped so the next calls handshake with it.
    pub fn set_tls(&self, material: Option<potluck_tls::Material>) {
        if let Ok(mut tls) = self.tls.lock() {
            *tls = material;
        }
        if let Ok(mut channels) = self.channels.lock() {
            channels.clear();
        }
    }

    /// A lazily connecting channel per endpoint, kept across passes so that connections are
    /// reused rather than re-established every few seconds.
    fn client(&self, id: &str, endpoint: &str) -> Result<AgentControlClient<Channel>, String> {
        self.channel(id, endpoint).map(control_client)
    }

    /// The object API of member `id`, over the same channel as its control calls.
    pub fn object_client(
        &self,
        id: &str,
        endpoint: &str,
    ) -> Result<potluck_proto::v1::object_service_client::ObjectServiceClient<Channel>, String>
    {
        self.channel(id, endpoint)
            .map(potluck_proto::v1::object_service_client::ObjectServiceClient::new)
    }

    fn channel(&self, id: &str, endpoint: &str) -> Result<Channel, String> {
        let tls = self
            .tls
            .lock()
            .map_err(|_| "TLS settings poisoned".to_string())?
            .clone();
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "agent channel table poisoned".to_string())?;
        if let Some(ch) = channels.get(endpoint) {
            return Ok(ch.clone());
        }
        let not_host_port =
            |e: tonic::transport::Error| format!("endpoint {endpoint:?} is not host:port: {e}");
        let ch = match &tls {
            // The agent must prove it is the member the map says lives there.
            Some(m) => Endpoint::from_shared(format!("https://{endpoint}"))
                .and_then(|e| {
                    e.tls_config(potluck_tls::client_config(
                        m,
                        &potluck_tls::member_server_name(id),
                    ))
                })
                .map_err(not_host_port)?,
            None => Endpoint::from_shared(format!("http://{endpoint}")).map_err(not_host_port)?,
        }
        .connect_timeout(self.timeout)
        .timeout(self.timeout)
        .tcp_nodelay(true)
        .connect_lazy();
        channels.insert(endpoint.to_owned(), ch.clone());
        Ok(ch)
    }

    /// Forgets channels of endpoints no longer in the map.
    fn prune(&self, map: &ClusterMap) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.retain(|ep, _| map.members.iter().any(|m| &m.endpoint == ep));
        }
    }

    /// Asks every member the map lists as up (or draining) for its status, and pushes `map` to
    /// those that run an older epoch.
    pub async fn sync(&self, map: &ClusterMap, metrics: &Metrics) -> Pass {
        self.prune(map);
        // Owned ids and endpoints: a stream over borrowed members trips the compiler's
        // higher-ranked lifetime check once the future has to be `Send` for the controller.
        let live: Vec<(String, String)> = map
            .members
            .iter()
            .filter(|m| {
                matches!(
                    MemberState::try_from(m.state),
                    Ok(MemberState::Up | MemberState::Draining)
                )
            })
            .map(|m| (m.id.clone(), m.endpoint.clone()))
            .collect();
        let results: Vec<(String, AgentAnswer)> = stream::iter(live)
            .map(|(id, endpoint)| async move {
                let r = self.sync_one(&id, &endpoint, map, metrics).await;
                if let Err(e) = &r {
                    tracing::debug!(member = %id, %endpoint, "agent unreachable: {e}");
                }
                (id, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut pass = Pass::default();
        for (id, r) in results {
            if let Ok((report, newer)) = r {
                pass.reports.insert(id, report);
                if let Some(n) = newer {
                    if pass.newer.as_ref().is_none_or(|p| p.epoch < n.epoch) {
                        pass.newer = Some(n);
                    }
                }
            }
        }
        pass
    }

    async fn sync_one(
        &self,
        id: &str,
        endpoint: &str,
        map: &ClusterMap,
        metrics: &Metrics,
    ) -> AgentAnswer {
        let mut client = self.client(id, endpoint)?;
        let status = client.get_status(GetStatusRequest {}).await;
        metrics.agent_call("GetStatus", status.is_ok());
        let status = status
            .map_err(|e| format!("GetStatus: {}", e.message()))?
            .into_inner();
        let mut report = AgentReport {
            epoch: status.epoch,
            stored_bytes: status.stored_bytes,
            shard_count: status.shard_count,
            version: status.version,
            clean_pgs: status
                .pgs
                .iter()
                .filter(|p| p.clean)
                .map(|p| (p.pool.clone(), p.pg, p.epoch))
                .collect(),
            missing: status
                .pgs
                .iter()
                .filter(|p| !p.clean)
                .map(|p| (p.pool.clone(), p.pg, p.missing_bytes))
                .collect(),
            recovered_bytes: status.recovered_bytes,
        };
        if status.epoch > map.epoch {
            let newer = client.get_cluster_map(GetClusterMapRequest {}).await;
            metrics.agent_call("GetClusterMap", newer.is_ok());
            let newer = newer
                .map_err(|e| format!("GetClusterMap: {}", e.message()))?
                .into_inner();
            return Ok((report, Some(newer)));
        }
        if status.epoch < map.epoch {
            let applied = client
                .apply_cluster_map(ApplyClusterMapRequest {
                    map: Some(map.clone()),
                })
                .await;
            metrics.agent_call("ApplyClusterMap", applied.is_ok());
            match applied {
                Ok(r) => report.epoch = r.into_inner().epoch,
                Err(e) => {
                    tracing::warn!(
                        endpoint,
                        epoch = map.epoch,
                        "agent refused the map: {}",
                        e.message()
                    );
                }
            }
        }
        Ok((report, None))
    }
}
