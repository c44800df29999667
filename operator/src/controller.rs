//! The StoragePool controller: one pass decides membership, publishes the next map, brings
//! agents up to date, and writes every status that changed.
//!
//! Membership and the map are fleet-wide while reconciles are per pool, so the fleet part runs
//! under one lock: two pools reconciled at once cannot publish competing epochs. Silence is a
//! matter of time, not of events (a dead agent sends none), so every reconcile asks to be
//! requeued after a fraction of the shortest `downAfter`; StorageNode changes (a member
//! registering, a drain) trigger a pass at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use potluck_api::condition::{self, DEGRADED, READY};
use potluck_api::pool::{DEFAULT_DOWN_AFTER, DEFAULT_OUT_AFTER};
use potluck_api::{NodePhase, StorageNode, StorageNodeStatus, StoragePool, StoragePoolStatus};
use potluck_proto::v1::{ClusterMap, MemberInfo, MemberState};

use crate::agents::Agents;
use crate::bucket_controller;
use crate::buckets;
use crate::certificates;
use crate::cluster_map::{next_map, with_access, MapError, MemberSpec, PoolSpec};
use crate::map_store::{MapStore, Recovering, StoreError, Stored};
use crate::membership::{map_state, next_phase, RenewalClock, Timing};
use crate::metrics::Metrics;
use crate::pool_status::{pool_status, transitions, AgentReport, PoolInputs};
use crate::recovering;
use crate::shares;

/// Held by every StoragePool so that deleting one first takes it out of the map.
pub const FINALIZER: &str = "potluck.dev/cluster-map";
/// Agents name their Lease `potluck-agent-<member id>` and label it with this selector.
pub const AGENT_LEASE_PREFIX: &str = "potluck-agent-";
pub const AGENT_LEASE_SELECTOR: &str = "app.kubernetes.io/name=potluck-agent";
/// Field manager of every write the operator makes.
pub const MANAGER: &str = "potluck-operator";

/// A member's `lastSeen` is refreshed at most this often when nothing else changed: it is for
/// people, and writing it on every renewal would turn each Lease renewal into a status write.
const LAST_SEEN_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot compute the cluster map: {0}")]
    Map(#[from] MapError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A deleted Bucket still holds objects (or could not be listed yet); tried again soon.
    #[error("emptying the deleted bucket: {0}")]
    Purging(String),
    #[error(transparent)]
    Secret(#[from] buckets::SecretError),
    #[error("bucket client certificate: {0}")]
    ClientCertificate(#[from] crate::certificates::CertError),
}

impl Error {
    /// A bounded label value for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Store(StoreError::Conflict) => "map_conflict",
            Error::Store(_) => "map_store",
            Error::Map(_) => "map",
            Error::Finalizer(_) => "finalizer",
            Error::Purging(_) => "purging",
            Error::Secret(_) => "secret",
            Error::ClientCertificate(_) => "client_certificate",
        }
    }
}

pub struct Config {
    pub namespace: String,
    /// Published in every map: agents then refuse ObjectService calls without a valid key.
    pub require_auth: bool,
    pub identity: String,
    pub agent_timeout: Duration,
    pub agent_concurrency: usize,
    pub reconcile_concurrency: u16,
    /// The operator's certificate for calling agents over mutual TLS; None calls plaintext.
    pub tls: Option<potluck_tls::Material>,
}

pub struct Context {
    pub(crate) client: Client,
    namespace: String,
    store: MapStore,
    pub(crate) agents: Agents,
    recorder: Recorder,
    pub metrics: Metrics,
    fleet: tokio::sync::Mutex<Fleet>,
    require_auth: bool,
    /// Each Bucket's credentials as its last reconcile read them (by uid).
    pub(crate) bucket_keys: std::sync::Mutex<buckets::Resolved>,
    /// The cluster CA, when the operator keeps one: Buckets get client certificates from it.
    pub(crate) certificates: std::sync::OnceLock<Arc<crate::certificates::Certificates>>,
    /// Keys the operator granted itself to empty deleted Buckets (uid -> id, secret).
    pub(crate) purge_keys: std::sync::Mutex<HashMap<String, (String, String)>>,
}

#[derive(Default)]
struct Fleet {
    /// The fleet's rebuilt-bytes total at the previous pass, and when it was read.
    healed: Option<(Instant, u64)>,
    /// Bytes rebuilt per second, smoothed over passes.
    heal_rate: f64,
    /// When the last pass ended, and the pause it asked for before the next one.
    last_pass: Option<(Instant, Duration)>,
    loaded: bool,
    stored: Option<Stored>,
    clock: RenewalClock,
    reports: HashMap<String, AgentReport>,
    node_written: HashMap<String, Instant>,
}

/// What a fleet pass leaves for the pool being reconciled.
pub(crate) struct Snapshot {
    heal_rate: u64,
    pub(crate) map: Option<ClusterMap>,
    /// Members that are Out yet still in the map, because no one can take their positions.
    stuck: Vec<String>,
    recovering: Recovering,
    reports: HashMap<String, AgentReport>,
    tick: Duration,
    /// What the stored map does for each Bucket, by uid.
    pub(crate) buckets: HashMap<String, buckets::Verdict>,
}

impl Context {
    /// Replaces the certificate the operator calls agents with (a renewal).
    pub fn set_agent_tls(&self, material: Option<potluck_tls::Material>) {
        self.agents.set_tls(material);
    }

    pub fn new(client: Client, cfg: &Config, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(cfg.identity.clone()),
        };
        let agents = Agents::new(cfg.agent_timeout, cfg.agent_concurrency);
        agents.set_tls(cfg.tls.clone());
        Self {
            store: MapStore::new(Api::namespaced(client.clone(), &cfg.namespace)),
            agents,
            recorder: Recorder::new(client.clone(), reporter),
            namespace: cfg.namespace.clone(),
            client,
            metrics,
            fleet: tokio::sync::Mutex::new(Fleet::default()),
            require_auth: cfg.require_auth,
            bucket_keys: std::sync::Mutex::new(buckets::Resolved::new()),
            certificates: std::sync::OnceLock::new(),
            purge_keys: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Hands the cluster CA to the Bucket controller (set once, at start-up).
    pub fn set_certificates(&self, certs: Arc<crate::certificates::Certificates>) {
        let _ = self.certificates.set(certs);
    }

    async fn event(
        &self,
        obj: &impl Resource<DynamicType = ()>,
        warn: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warn {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(reason, "cannot record an Event: {e}");
        }
    }

    /// The map stored now, as the last pass left it (waits for a pass under way to end).
    pub(crate) async fn stored_map(&self) -> Option<ClusterMap> {
        self.fleet
            .lock()
            .await
            .stored
            .as_ref()
            .map(|s| s.map.clone())
    }

    /// The fleet-wide part of a reconcile. `leaving` names a pool being deleted, which is left
    /// out of the map even though it still exists.
    pub(crate) async fn sync_fleet(&self, leaving: Option<&str>) -> Result<Snapshot, Error> {
        let mut fleet = self.fleet.lock().await;
        let lp = ListParams::default();
        let pools = Api::<StoragePool>::all(self.client.clone())
            .list(&lp)
            .await?
            .items;
        let nodes = Api::<StorageNode>::all(self.client.clone())
            .list(&lp)
            .await?
            .items;
        let leases = Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(AGENT_LEASE_SELECTOR))
            .await?
            .items;
        let bucket_list = bucket_controller::list_buckets(&self.client).await?;
        let share_list = shares::list(&self.client, &self.namespace).await?;
        if !fleet.loaded {
            fleet.stored = self.store.load().await?;
            fleet.loaded = true;
            if let Some(s) = &fleet.stored {
                tracing::info!(epoch = s.map.epoch, "loaded the published cluster map");
                self.metrics.set_epoch(s.map.epoch);
            }
        }

        if fleet.stored.is_none() && !nodes.is_empty() {
            // No map was ever stored here (a new control plane, or the ConfigMap deleted), but
            // agents that ran before keep theirs: start from the newest so that no epoch they
            // have seen is minted again with other contents.
            let probe = ClusterMap {
                members: nodes
                    .iter()
                    .map(|n| MemberInfo {
                        id: n.name_any(),
                        endpoint: n.spec.endpoint.clone(),
                        state: MemberState::Up as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            if let Some(newest) = self.agents.sync(&probe, &self.metrics).await.newer {
                tracing::info!(
                    epoch = newest.epoch,
                    "no stored map; continuing from the newest map the agents hold"
                );
                let saved = self.store.save(&newest, &Recovering::new(), None).await;
                if matches!(saved, Err(StoreError::Conflict)) {
                    // Someone stored a map meanwhile: read it on the next pass.
                    fleet.loaded = false;
                }
                let saved = saved?;
                self.metrics.set_epoch(newest.epoch);
                fleet.stored = Some(saved);
            }
        }

        let (specs, timing, domain_key) = placed_pools(&pools, leaving);

        // Membership.
        let renewals: HashMap<String, Option<Timestamp>> = leases
            .iter()
            .filter_map(|l| {
                let id = l.name_any().strip_prefix(AGENT_LEASE_PREFIX)?.to_owned();
                let renewed = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
                    .map(|t| t.0);
                Some((id, renewed))
            })
            .collect();
        let holding: HashSet<String> = fleet
            .stored
            .as_ref()
            .map(|s| positions_held(&s.map))
            .unwrap_or_default();
        let recovering_any = fleet
            .stored
            .as_ref()
            .is_some_and(|s| !s.recovering.is_empty());
        let wall_now = Timestamp::now();
        let now = Instant::now();
        let mut phases = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let id = node.name_any();
            let renewed = renewals.get(&id).copied().flatten();
            let silent = fleet.clock.observe(&id, renewed, wall_now, now);
            let before = node.status.as_ref().and_then(|s| s.phase);
            // A draining member is Drained only once no map position names it, no PG is still
            // being rebuilt (its old shards may be what a rebuild reads), and it has deleted
            // its last shard.
            let holds = holding.contains(&id)
                || (node.spec.drain
                    && (recovering_any
                        || fleet.reports.get(&id).is_none_or(|r| r.shard_count > 0)));
            let after = next_phase(before, node.spec.drain, silent, timing, holds);
            // A revoked certificate takes the member out: its peers refuse it anyway.
            let after = if node.spec.revoke_certificate {
                NodePhase::Out
            } else {
                after
            };
            phases.push((node, before, after, renewed, silent));
        }
        let ids: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        fleet.clock.retain(|id| ids.contains(id));

        // The map.
        let members: Vec<MemberSpec> = phases
            .iter()
            .filter_map(|(node, _, phase, _, _)| {
                let state = map_state(*phase)?;
                Some(MemberSpec {
                    id: node.name_any(),
                    endpoint: node.spec.endpoint.clone(),
                    failure_domain: domain_key
                        .and_then(|k| node.labels().get(k))
                        .cloned()
                        .unwrap_or_else(|| node.spec.failure_domain.clone()),
                    capacity_bytes: u64::try_from(node.spec.capacity_bytes).unwrap_or(0),
                    state,
                })
            })
            .collect();
        let previous = fleet.stored.as_ref().map(|s| &s.map);
        let now_ms = u64::try_from(wall_now.as_millisecond()).unwrap_or(0);
        let pool_names: BTreeSet<String> = pools
            .iter()
            .filter(|p| leaving != Some(p.name_any().as_str()))
            .map(|p| p.name_any())
            .collect();
        let bucket_plan = {
            let mut keys = self
                .bucket_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let uids: HashSet<&str> = bucket_list
                .iter()
                .filter_map(|b| b.metadata.uid.as_deref())
                .collect();
            keys.retain(|uid, _| uids.contains(uid.as_str()));
            buckets::plan(&bucket_list, &pool_names, &keys, previous)
        };
        let next = with_access(
            next_map(previous, &members, &specs, now_ms)?,
            previous,
            bucket_plan.access,
            self.require_auth,
            now_ms,
        )?;
        let now_unix = now_ms / 1000;
        let next = shares::with_revocations(
            next,
            previous,
            shares::revoked(&share_list, now_unix),
            now_ms,
        )?;
        shares::collect_expired(&self.client, &self.namespace, &share_list, now_unix).await;
        let next = certificates::with_revoked_certificates(
            next,
            previous,
            certificates::revoked_serials(&nodes),
            now_ms,
        )?;
        if previous.map(|m| m.epoch) != Some(next.epoch) {
            let rv = fleet.stored.as_ref().map(|s| s.resource_version.clone());
            let pending = match &fleet.stored {
                Some(st) => recovering::after_publish(&st.recovering, &st.map, &next),
                None => Recovering::new(),
            };
            let saved = self.store.save(&next, &pending, rv.as_deref()).await;
            if matches!(saved, Err(StoreError::Conflict)) {
                // Someone else published: start over from what is stored.
                fleet.loaded = false;
            }
            let saved = saved?;
            tracing::info!(
                epoch = next.epoch,
                members = next.members.len(),
                pools = next.pools.len(),
                buckets = next.buckets.len(),
                "published cluster map"
            );
            self.metrics.set_epoch(next.epoch);
            fleet.stored = Some(saved);
        }

        // The agents.
        let map = match &fleet.stored {
            Some(s) => s.map.clone(),
            None => next,
        };
        let pass = self.agents.sync(&map, &self.metrics).await;
        if let Some(newer) = pass.newer.filter(|n| n.epoch > map.epoch) {
            tracing::warn!(
                ours = map.epoch,
                theirs = newer.epoch,
                "an agent runs a newer map than the stored one; adopting it so no epoch is reused"
            );
            let rv = fleet.stored.as_ref().map(|s| s.resource_version.clone());
            let pending = match &fleet.stored {
                Some(st) => recovering::after_publish(&st.recovering, &st.map, &newer),
                None => Recovering::new(),
            };
            let saved = self.store.save(&newer, &pending, rv.as_deref()).await;
            if matches!(saved, Err(StoreError::Conflict)) {
                fleet.loaded = false;
            }
            fleet.stored = Some(saved?);
            self.metrics.set_epoch(newer.epoch);
        }
        for (id, report) in pass.reports {
            fleet.reports.insert(id, report);
        }
        fleet.reports.retain(|id, _| ids.contains(id));

        // The healing rate, from the agents' rebuilt-bytes totals (an agent that restarted
        // starts from zero again, which simply shows as no progress for one pass).
        let total: u64 = fleet.reports.values().map(|r| r.recovered_bytes).sum();
        let now_rate = Instant::now();
        if let Some((at, before)) = fleet.healed {
            let secs = now_rate.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let sample = total.saturating_sub(before) as f64 / secs;
                fleet.heal_rate = 0.5 * fleet.heal_rate + 0.5 * sample;
            }
        }
        fleet.healed = Some((now_rate, total));

        // PGs whose leader found them whole at the current epoch are recovered.
        if let Some(st) = &fleet.stored {
            let epoch = st.map.epoch;
            let healed = |pool: &str, pg: u32| {
                fleet.reports.values().any(|r| {
                    r.clean_pgs
                        .iter()
                        .any(|(p, n, e)| p == pool && *n == pg && *e == epoch)
                })
            };
            let mut pending = st.recovering.clone();
            for (pool, pgs) in pending.iter_mut() {
                pgs.retain(|pg| !healed(pool, *pg));
            }
            pending.retain(|_, pgs| !pgs.is_empty());
            if pending != st.recovering {
                let left: usize = pending.values().map(|s| s.len()).sum();
                tracing::info!(epoch, recovering = left, "PGs recovered");
                let saved = self
                    .store
                    .save(&st.map, &pending, Some(&st.resource_version))
                    .await;
                if matches!(saved, Err(StoreError::Conflict)) {
                    fleet.loaded = false;
                }
                fleet.stored = Some(saved?);
            }
        }

        // Member statuses and Events.
        let node_api = Api::<StorageNode>::all(self.client.clone());
        let mut by_phase: HashMap<NodePhase, usize> = HashMap::new();
        for (node, before, after, renewed, silent) in &phases {
            *by_phase.entry(*after).or_default() += 1;
            let id = node.name_any();
            let current = node.status.clone().unwrap_or_default();
            let desired = node_status(
                &current,
                *after,
                *renewed,
                fleet.reports.get(&id),
                node.metadata.generation,
            );
            let only_last_seen = StorageNodeStatus {
                last_seen: current.last_seen.clone(),
                ..desired.clone()
            } == current;
            let due = fleet
                .node_written
                .get(&id)
                .is_none_or(|t| t.elapsed() >= LAST_SEEN_REFRESH);
            if desired != current && (!only_last_seen || due) {
                // `status.tls` belongs to the agent and to `certificates`: never written back
                // from this (possibly older) read.
                let without_tls = StorageNodeStatus {
                    tls: None,
                    ..desired.clone()
                };
                let patch = serde_json::json!({ "status": without_tls });
                node_api
                    .patch_status(&id, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
                    .await?;
                fleet.node_written.insert(id.clone(), Instant::now());
            }
            if *before != Some(*after) {
                let silent = silent.map_or("no Lease yet".into(), |d| {
                    format!("Lease last renewed {}s ago", d.as_secs())
                });
                let (warn, reason) = match after {
                    NodePhase::Joining => (false, "MemberJoining"),
                    NodePhase::Up => (false, "MemberUp"),
                    NodePhase::Down => (true, "MemberDown"),
                    NodePhase::Out => (true, "MemberOut"),
                    NodePhase::Draining => (false, "MemberDraining"),
                    NodePhase::Drained => (false, "MemberDrained"),
                };
                tracing::info!(member = %id, from = ?before, to = ?after, "member phase changed");
                self.event(
                    *node,
                    warn,
                    reason,
                    format!(
                        "{} -> {:?} ({silent}; downAfter {}s, outAfter {}s)",
                        before.map_or("new".to_string(), |p| format!("{p:?}")),
                        after,
                        timing.down_after.as_secs(),
                        timing.out_after.as_secs()
                    ),
                )
                .await;
            }
        }
        fleet.node_written.retain(|id, _| ids.contains(id));
        for phase in [
            NodePhase::Joining,
            NodePhase::Up,
            NodePhase::Down,
            NodePhase::Out,
            NodePhase::Draining,
            NodePhase::Drained,
        ] {
            self.metrics.set_members(
                &format!("{phase:?}"),
                by_phase.get(&phase).copied().unwrap_or(0),
            );
        }

        let stuck: Vec<String> = match &fleet.stored {
            Some(st) => phases
                .iter()
                .filter(|(_, _, phase, _, _)| *phase == NodePhase::Out)
                .map(|(node, _, _, _, _)| node.name_any())
                .filter(|id| st.map.members.iter().any(|m| &m.id == id))
                .collect(),
            None => Vec::new(),
        };
        let tick = (timing.down_after / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
        fleet.last_pass = Some((Instant::now(), tick));
        Ok(Snapshot {
            heal_rate: fleet.heal_rate.round() as u64,
            stuck,
            map: fleet.stored.as_ref().map(|s| s.map.clone()),
            recovering: fleet
                .stored
                .as_ref()
                .map(|s| s.recovering.clone())
                .unwrap_or_default(),
            reports: fleet.reports.clone(),
            tick,
            buckets: bucket_plan.verdicts,
        })
    }
}

/// The pools that go into the map, the membership timing (the strictest of theirs, since a
/// member is one machine whatever pools it serves), and the failure-domain label if they all
/// agree on one.
fn placed_pools<'a>(
    pools: &'a [StoragePool],
    leaving: Option<&str>,
) -> (Vec<PoolSpec>, Timing, Option<&'a str>) {
    let mut specs = Vec::new();
    let mut timing: Option<Timing> = None;
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for pool in pools {
        let name = pool.name_any();
        if pool.metadata.deletion_timestamp.is_some() || leaving == Some(name.as_str()) {
            continue;
        }
        let Ok(params) = pool.validate() else {
            continue;
        };
        specs.push(PoolSpec {
            name,
            k: params.k,
            m: params.m,
            chunk_size: params.chunk_size,
            pg_count: params.pg_count,
            write_quorum: Some(params.write_quorum),
        });
        timing = Some(match timing {
            None => Timing {
                down_after: params.down_after,
                out_after: params.out_after,
            },
            Some(t) => Timing {
                down_after: t.down_after.min(params.down_after),
                out_after: t.out_after.min(params.out_after),
            },
        });
        keys.insert(pool.spec.failure_domain_key.as_str());
    }
    let timing = timing.unwrap_or_else(default_timing);
    let key = if keys.len() == 1 {
        keys.into_iter().next()
    } else {
        None
    };
    (specs, timing, key)
}

fn default_timing() -> Timing {
    let parse = |s: &str, fallback: u64| {
        potluck_api::duration::parse_duration(s).unwrap_or(Duration::from_secs(fallback))
    };
    Timing {
        down_after: parse(DEFAULT_DOWN_AFTER, 30),
        out_after: parse(DEFAULT_OUT_AFTER, 300),
    }
}

fn positions_held(map: &ClusterMap) -> HashSet<String> {
    map.pools
        .iter()
        .flat_map(|p| p.pgs.iter())
        .flat_map(|set| set.members.iter().cloned())
        .collect()
}

/// A member's status as the operator sees it now. Usage and version come from the agent's last
/// answer and are kept as they were when it does not answer.
fn node_status(
    current: &StorageNodeStatus,
    phase: NodePhase,
    renewed: Option<Timestamp>,
    report: Option<&AgentReport>,
    generation: Option<i64>,
) -> StorageNodeStatus {
    let mut s = current.clone();
    s.phase = Some(phase);
    if let Some(t) = renewed {
        s.last_seen = Some(Time(t));
    }
    if let Some(r) = report {
        s.used_bytes = i64::try_from(r.stored_bytes).unwrap_or(i64::MAX);
        s.shard_count = i64::try_from(r.shard_count).unwrap_or(i64::MAX);
        s.agent_version = Some(r.version.clone());
    }
    s.observed_generation = generation;
    let (ok, reason, message) = match phase {
        NodePhase::Up => (
            true,
            "LeaseRenewed",
            "the agent renews its Lease and serves its shards",
        ),
        NodePhase::Draining => (
            true,
            "Draining",
            "serving while its shard positions move to other members",
        ),
        NodePhase::Drained => (
            true,
            "Drained",
            "no shard position is left on this member; it may be removed",
        ),
        NodePhase::Joining => (
            false,
            "Joining",
            "registered; waiting for the agent's first Lease renewal",
        ),
        NodePhase::Down => (
            false,
            "LeaseExpired",
            "the agent stopped renewing its Lease; check the agent's pod and its machine",
        ),
        NodePhase::Out => (
            false,
            "Out",
            "silent past outAfter: out of the map; its shards are to be rebuilt elsewhere",
        ),
    };
    let now = Time(Timestamp::now());
    let existing = condition::find_condition(&s.conditions, READY).cloned();
    let new = condition::new_condition(READY, ok, reason, message, generation, now);
    // Keep the old condition (and its timestamps) when nothing about it changed.
    if existing.as_ref().is_none_or(|c| {
        c.status != new.status || c.reason != new.reason || c.observed_generation != generation
    }) {
        condition::set_condition(&mut s.conditions, new);
    }
    s
}

async fn apply_pool(pool: Arc<StoragePool>, ctx: &Context) -> Result<Action, Error> {
    let snap = ctx.sync_fleet(None).await?;
    let name = pool.name_any();
    let checked = pool.validate();
    let before = pool.status.clone().unwrap_or_default();
    let after = pool_status(
        &before,
        &PoolInputs {
            name: &name,
            generation: pool.metadata.generation,
            spec: checked.as_ref().map(|_| ()),
            map: snap.map.as_ref(),
            recovering: snap.recovering.get(&name),
            stuck: &snap.stuck,
            heal_rate: snap.heal_rate,
            reports: &snap.reports,
            now: Time(Timestamp::now()),
        },
    );
    write_pool_status(
        &Api::<StoragePool>::all(ctx.client.clone()),
        &name,
        &before,
        &after,
    )
    .await?;
    ctx.metrics.set_pool(
        &name,
        after.pgs_clean,
        after.pgs_degraded,
        snap.recovering.get(&name).map_or(0, BTreeSet::len),
        condition::is_true(&after.conditions, READY),
    );
    ctx.metrics
        .set_healing(&name, after.bytes_to_heal, after.heal_rate_bytes_per_second);
    if after.map_epoch > before.map_epoch {
        ctx.event(
            &*pool,
            false,
            "MapPublished",
            format!("cluster map epoch {} places this pool", after.map_epoch),
        )
        .await;
    }
    for (type_, status) in transitions(&before, &after) {
        let Some(c) = condition::find_condition(&after.conditions, &type_) else {
            continue;
        };
        let (warn, reason) = match (type_.as_str(), status) {
            (READY, true) => (false, "PoolReady".to_string()),
            (READY, false) => (true, c.reason.clone()),
            (DEGRADED, true) => (true, "PoolDegraded".to_string()),
            (DEGRADED, false) => (false, "PoolClean".to_string()),
            _ => continue,
        };
        ctx.event(&*pool, warn, &reason, c.message.clone()).await;
    }
    Ok(Action::requeue(snap.tick))
}

/// Writes a pool's status when it differs from the stored one, and only then: every write is
/// a watch event that brings the pool back to the reconcile queue. Returns whether it wrote.
async fn write_pool_status(
    api: &Api<StoragePool>,
    name: &str,
    before: &StoragePoolStatus,
    after: &StoragePoolStatus,
) -> Result<bool, kube::Error> {
    if after == before {
        return Ok(false);
    }
    let patch = serde_json::json!({ "status": after });
    api.patch_status(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

async fn cleanup_pool(pool: Arc<StoragePool>, ctx: &Context) -> Result<Action, Error> {
    let name = pool.name_any();
    let snap = ctx.sync_fleet(Some(&name)).await?;
    ctx.metrics.forget_pool(&name);
    let epoch = snap.map.as_ref().map_or(0, |m| m.epoch);
    ctx.event(
        &*pool,
        false,
        "PoolRemoved",
        format!("removed from the cluster map at epoch {epoch}; its objects are no longer served"),
    )
    .await;
    Ok(Action::await_change())
}

async fn reconcile(pool: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api = Api::<StoragePool>::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Finalize::Apply(pool) => apply_pool(pool, &ctx).await,
            Finalize::Cleanup(pool) => cleanup_pool(pool, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::kind));
    result
}

fn error_policy(pool: Arc<StoragePool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), "reconcile failed, retrying in 5s: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Keeps membership moving when no pool reconcile does: members register, renew and go
/// silent whether or not a StoragePool exists yet, and their phases must follow.
async fn membership_loop(ctx: Arc<Context>) {
    loop {
        let wait = {
            let fleet = ctx.fleet.lock().await;
            match fleet.last_pass {
                Some((at, tick)) => tick.saturating_sub(at.elapsed()),
                None => Duration::ZERO,
            }
        };
        if wait.is_zero() {
            if let Err(e) = ctx.sync_fleet(None).await {
                tracing::warn!("membership pass failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Runs the controller until the watch streams end.
pub async fn run(ctx: Arc<Context>, concurrency: u16) {
    tokio::spawn(membership_loop(ctx.clone()));
    let pools = Api::<StoragePool>::all(ctx.client.clone());
    let nodes = Api::<StorageNode>::all(ctx.client.clone());
    // The map keeps the operator's ConfigMap; read it once up front so a missing namespace or
    // RBAC rule shows in the log before the first reconcile.
    if let Err(e) = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.namespace)
        .get_opt(crate::map_store::CONFIG_MAP)
        .await
    {
        tracing::error!(namespace = %ctx.namespace, "cannot read the map ConfigMap; check the namespace and RBAC: {e}");
    }
    let controller = Controller::new(pools, watcher::Config::default());
    let store = controller.store();
    let buckets = bucket_controller::run(ctx.clone(), concurrency);
    let pools = controller
        .watches(
            nodes,
            watcher::Config::default(),
            move |_node: StorageNode| {
                store
                    .state()
                    .into_iter()
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller::Config::default().concurrency(concurrency))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("reconcile: {e}");
            }
        });
    futures::join!(pools, buckets);
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_api::StoragePoolSpec;

    fn pool(name: &str, spec: StoragePoolSpec) -> StoragePool {
        StoragePool::new(name, spec)
    }

    #[test]
    fn placed_pools_skip_invalid_and_leaving_and_take_the_strictest_timing() {
        let mut fast = StoragePoolSpec::with_defaults(4, 2);
        fast.down_after = "5s".into();
        fast.out_after = "1m".into();
        let mut slow = StoragePoolSpec::with_defaults(2, 1);
        slow.down_after = "1m".into();
        slow.out_after = "10m".into();
        let invalid = StoragePoolSpec::with_defaults(0, 2);
        let pools = vec![
            pool("fast", fast),
            pool("slow", slow),
            pool("bad", invalid),
            pool("gone", StoragePoolSpec::with_defaults(2, 2)),
        ];
        let (specs, timing, key) = placed_pools(&pools, Some("gone"));
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fast", "slow"]);
        assert_eq!(timing.down_after, Duration::from_secs(5));
        assert_eq!(timing.out_after, Duration::from_secs(60));
        assert_eq!(key, Some("kubernetes.io/hostname"));
        assert_eq!(specs[0].write_quorum, Some(5));
    }

    #[test]
    fn pools_disagreeing_on_the_domain_key_fall_back_to_the_agents_domain() {
        let a = StoragePoolSpec::with_defaults(2, 1);
        let mut b = StoragePoolSpec::with_defaults(2, 1);
        b.failure_domain_key = "topology.kubernetes.io/zone".into();
        let pools = [pool("a", a), pool("b", b)];
        let (_, timing, key) = placed_pools(&pools, None);
        assert_eq!(key, None);
        assert_eq!(timing, default_timing());
    }

    /// A healthy pool loses a member: the reconcile's status write is one merge patch of the
    /// status subresource carrying the new conditions, and an unchanged status writes nothing.
    #[tokio::test]
    async fn a_condition_transition_is_written_once_to_the_status_subresource() {
        use http::{Request, Response};
        use kube::client::Body;
        use potluck_proto::v1::{ActingSet, MemberInfo, PoolMap};
        use std::collections::HashMap;

        let members = |down: &str| -> Vec<MemberInfo> {
            ["a", "b", "c"]
                .iter()
                .map(|id| MemberInfo {
                    id: (*id).into(),
                    endpoint: format!("{id}:7100"),
                    failure_domain: (*id).into(),
                    capacity_bytes: 1,
                    state: if *id == down {
                        MemberState::Down as i32
                    } else {
                        MemberState::Up as i32
                    },
                })
                .collect()
        };
        let map = |epoch: u64, down: &str| ClusterMap {
            epoch,
            members: members(down),
            pools: vec![PoolMap {
                name: "photos".into(),
                k: 1,
                m: 2,
                chunk_size: 4096,
                pg_count: 1,
                write_quorum: 2,
                pgs: vec![ActingSet {
                    members: vec!["a".into(), "b".into(), "c".into()],
                }],
                unplaceable_reason: String::new(),
            }],
            created_unix_ms: 0,
            ..Default::default()
        };
        let reports: HashMap<String, AgentReport> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                (
                    (*id).to_string(),
                    AgentReport {
                        epoch: 2,
                        stored_bytes: 0,
                        shard_count: 0,
                        version: "0.1.0".into(),
                        clean_pgs: vec![],
                        missing: vec![],
                        recovered_bytes: 0,
                    },
                )
            })
            .collect();
        let status = |m: &ClusterMap, before: &StoragePoolStatus| {
            pool_status(
                before,
                &PoolInputs {
                    name: "photos",
                    generation: Some(1),
                    spec: Ok(()),
                    map: Some(m),
                    recovering: None,
                    stuck: &[],
                    heal_rate: 0,
                    reports: &reports,
                    now: Time(Timestamp::now()),
                },
            )
        };
        let healthy = status(&map(1, ""), &StoragePoolStatus::default());
        let degraded = status(&map(2, "c"), &healthy);

        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<StoragePool> = Api::all(Client::new(service, "default"));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one PATCH");
            assert_eq!(req.method(), "PATCH");
            assert_eq!(
                req.uri().path(),
                "/apis/potluck.dev/v1alpha1/storagepools/photos/status"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/merge-patch+json"
            );
            assert!(req
                .uri()
                .query()
                .unwrap_or("")
                .contains("fieldManager=potluck-operator"));
            let body = req.into_body().collect_bytes().await.expect("body");
            let patch: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(patch["status"]["health"], "Degraded");
            assert_eq!(patch["status"]["mapEpoch"], 2);
            assert_eq!(patch["status"]["pgsDegraded"], 1);
            let degraded_cond = patch["status"]["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Degraded")
                .expect("Degraded condition")
                .clone();
            assert_eq!(degraded_cond["status"], "True");
            assert_eq!(degraded_cond["reason"], "MembersDown");
            let mut pool = StoragePool::new("photos", StoragePoolSpec::with_defaults(1, 2));
            pool.status = serde_json::from_value(patch["status"].clone()).ok();
            let bytes = serde_json::to_vec(&pool).expect("pool json");
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(bytes))
                    .expect("response"),
            );
        });
        assert!(write_pool_status(&api, "photos", &healthy, &degraded)
            .await
            .expect("patch"));
        server.await.expect("server side");
        // Nothing changed: no request at all (the mock has no one left to answer one).
        assert!(!write_pool_status(&api, "photos", &degraded, &degraded)
            .await
            .expect("no-op"));
    }

    #[test]
    fn node_status_keeps_usage_when_the_agent_is_silent() {
        let current = StorageNodeStatus {
            used_bytes: 5,
            shard_count: 2,
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        };
        let down = node_status(&current, NodePhase::Down, None, None, Some(1));
        assert_eq!(down.phase, Some(NodePhase::Down));
        assert_eq!((down.used_bytes, down.shard_count), (5, 2));
        let ready = condition::find_condition(&down.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "LeaseExpired")
        );
        // Same inputs again: identical status, so no write.
        let again = node_status(&down, NodePhase::Down, None, None, Some(1));
        assert_eq!(again, down);
    }
}
