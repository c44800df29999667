//! Recovery: every PG's leader (the first member of its acting set that is up) brings the PG
//! back to full strength.
//!
//! The leader compares what the PG's members hold rather than what the maps say changed: it
//! lists each member's shards and manifests of the PG, rebuilds every stripe's missing shards
//! from any k present ones, writes them to the members now named for them, and copies the
//! newest manifest of every key to the members that lack it. The same pass therefore heals a
//! member that went Out and was replaced, a member that joined and took positions, shards a
//! degraded write never stored, and manifests a replaced member never had; and it needs no
//! history, so a restarted agent or a changed leader simply runs it again.
//!
//! A pass runs when the map epoch changes, again every few seconds while something is left to
//! do, and otherwise every `recovery_interval`. It surveys every PG it leads, then rebuilds
//! the stripes with the fewest shards left first, `recovery_concurrency` at a time, keeping
//! its writes under `recovery_bandwidth` so client I/O keeps its share of the disk and
//! network. Each PG's outcome is kept as a [`pb::PgReport`] that `GetStatus` hands to the
//! operator, which clears a PG from its "recovering" set once its leader reports it clean.
//!
//! Shards a member holds for a position it no longer has (it was replaced, drained, or the
//! PG's acting set moved) are strays. Each member deletes its own strays of a PG only once
//! the PG's leader reports the PG clean at the current epoch *and* the member now holding each
//! stray's position is seen holding that very shard: until then they may be the only copies.
//! The leader also reads strays as sources, so a PG whose every position moved in one epoch
//! is rebuilt from its previous holders.
//!
//! Stripes no manifest names (a put that died half way, or an old version whose collection
//! was missed) are deleted once older than `orphan_grace` ([`crate::orphans`]). Not done yet:
//! stray manifests (harmless: reads only ask the PG's acting set).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use potluck_proto::v1 as pb;
use prometheus::{IntCounter, IntGaugeVec, Opts};

use crate::cluster::MapView;
use crate::keys::{ShardKey, OBJECT_ID_LEN};
use crate::node::Node;
use crate::orphans::ManifestIndex;
use crate::throttle::Throttle;

/// A stripe of an object version: (object id, stripe index).
pub(crate) type StripeId = ([u8; OBJECT_ID_LEN], u32);

/// Shards asked for per listing call.
const LIST_PAGE: u32 = 1000;
/// How soon a pass is repeated while a PG is not clean (a member not answering, a write that
/// failed): short, since this is when redundancy is lowest.
const RETRY: Duration = Duration::from_secs(3);
/// How often the worker looks for a new map epoch.
const EPOCH_POLL: Duration = Duration::from_millis(250);

/// The last report of every PG this member leads.
#[derive(Default)]
pub struct RecoveryState {
    reports: Mutex<HashMap<(String, u32), pb::PgReport>>,
    recovered_bytes: std::sync::atomic::AtomicU64,
    /// Stripes found unnamed by any manifest, waiting out the GC delay.
    pub suspects: crate::orphans::Suspects,
}

impl RecoveryState {
    /// Bytes rebuilt and written since the agent started.
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn reports(&self) -> Vec<pb::PgReport> {
        let mut out: Vec<pb::PgReport> = self
            .reports
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| (&a.pool, a.pg).cmp(&(&b.pool, b.pg)));
        out
    }

    fn set(&self, report: pb::PgReport) {
        if let Ok(mut r) = self.reports.lock() {
            r.insert((report.pool.clone(), report.pg), report);
        }
    }

    fn retain(&self, keep: impl Fn(&str, u32) -> bool) {
        if let Ok(mut r) = self.reports.lock() {
            r.retain(|(pool, pg), _| keep(pool, *pg));
        }
    }
}

struct RecoveryMetrics {
    strays: IntCounter,
    shards: IntCounter,
    bytes: IntCounter,
    manifests: IntCounter,
    orphans: IntCounter,
    pgs: IntGaugeVec,
}

impl RecoveryMetrics {
    fn new(node: &Node) -> Option<Self> {
        let r = &node.metrics.registry;
        let shards = IntCounter::new(
            "potluck_recovery_shards_total",
            "Shards this member rebuilt and wrote to the members now holding their positions",
        )
        .ok()?;
        let bytes = IntCounter::new(
            "potluck_recovery_bytes_total",
            "Bytes of shards this member rebuilt and wrote",
        )
        .ok()?;
        let strays = IntCounter::new(
            "potluck_recovery_strays_deleted_total",
            "Shards this member deleted because it no longer holds their position and the PG is clean",
        )
        .ok()?;
        let manifests = IntCounter::new(
            "potluck_recovery_manifests_total",
            "Manifests this member copied to PG members that lacked them",
        )
        .ok()?;
        let orphans = IntCounter::new(
            "potluck_recovery_orphan_shards_deleted_total",
            "Shards of stripes no manifest names, older than the orphan grace, that this member deleted as PG leader",
        )
        .ok()?;
        let pgs = IntGaugeVec::new(
            Opts::new(
                "potluck_recovery_pgs",
                "PGs this member leads, by state after its last pass (clean, degraded)",
            ),
            &["state"],
        )
        .ok()?;
        r.register(Box::new(strays.clone())).ok()?;
        r.register(Box::new(shards.clone())).ok()?;
        r.register(Box::new(bytes.clone())).ok()?;
        r.register(Box::new(manifests.clone())).ok()?;
        r.register(Box::new(orphans.clone())).ok()?;
        r.register(Box::new(pgs.clone())).ok()?;
        Some(Self {
            strays,
            shards,
            bytes,
            manifests,
            orphans,
            pgs,
        })
    }
}

/// The worker: runs until the agent stops.
pub async fn run(node: Arc<Node>) {
    let Some(metrics) = RecoveryMetrics::new(&node) else {
        tracing::error!("cannot register recovery metrics; recovery is off");
        return;
    };
    let mut last_epoch = 0u64;
    let mut next_pass = Instant::now();
    // Complete abandoned stripes look healthy, so only a sweep finds them; a quarter of the
    // grace keeps their lifetime under 1.25 × grace without listing manifests on every pass.
    let sweep_every = node.tuning.orphan_grace / 4;
    let mut next_sweep = Instant::now() + sweep_every;
    loop {
        let view = node.cluster.view();
        if view.epoch() > 0 && (view.epoch() != last_epoch || Instant::now() >= next_pass) {
            last_epoch = view.epoch();
            let sweep = Instant::now() >= next_sweep;
            if sweep {
                next_sweep = Instant::now() + sweep_every;
            }
            let led_clean = pass(&node, &view, &metrics, sweep).await;
            node.recovery.suspects.expire(node.tuning.orphan_grace * 2);
            let strays_gone = collect_strays(&node, &view, &metrics).await;
            let all_clean = led_clean && strays_gone;
            next_pass = Instant::now()
                + if all_clean {
                    node.tuning.recovery_interval
                } else {
                    RETRY.min(node.tuning.recovery_interval)
                };
        }
        tokio::time::sleep(EPOCH_POLL).await;
    }
}

pub(crate) fn is_up(view: &MapView, member: &str) -> bool {
    view.member(member).is_some_and(|m| {
        matches!(
            pb::MemberState::try_from(m.state),
            Ok(pb::MemberState::Up | pb::MemberState::Draining)
        )
    })
}

/// One pass over the PGs this member leads. Returns whether every one of them is clean.
///
/// Every led PG is surveyed first, so that rebuilding can start with the stripes that have
/// the fewest shards left anywhere, whichever PG they are in; `recovery_concurrency` stripes
/// are then rebuilt at once under one bandwidth budget. `sweep` also looks for abandoned
/// stripes that are complete (see [`orphans`](crate::orphans)); incomplete ones are checked on
/// every pass since they would otherwise keep their PG from ever being clean.
async fn pass(node: &Node, view: &MapView, metrics: &RecoveryMetrics, sweep: bool) -> bool {
    let mut led = Vec::new();
    for pool in &view.map.pools {
        for (pg, set) in pool.pgs.iter().enumerate() {
            let leader = set.members.iter().find(|m| is_up(view, m));
            if leader == Some(&node.id) {
                if let Ok(pg) = u32::try_from(pg) {
                    led.push((pool, pg, set));
                }
            }
        }
    }
    node.recovery
        .retain(|pool, pg| led.iter().any(|(p, n, _)| p.name == pool && *n == pg));

    let mut manifests = ManifestIndex::default();
    let mut surveys = Vec::with_capacity(led.len());
    for (pool, pg, set) in led {
        if node.cluster.epoch() != view.epoch() {
            // A newer map: its pass starts over with the new acting sets.
            return false;
        }
        let mut survey = survey_pg(node, view, pool, pg, &set.members).await;
        let gone = crate::orphans::collect(node, view, &mut survey, &mut manifests, sweep).await;
        metrics.orphans.inc_by(gone);
        node.recovery.set(survey.pending());
        surveys.push(survey);
    }

    // Most degraded first: fewest positions held anywhere.
    let mut work: Vec<(usize, StripeId, u32)> = Vec::new();
    for (i, s) in surveys.iter().enumerate() {
        for (id, info) in &s.stripes {
            if !s.wanted(info).is_empty() {
                work.push((i, *id, s.held_positions(id, info)));
            }
        }
    }
    work.sort_by_key(|(_, _, held)| *held);
    let throttle = tokio::sync::Mutex::new(Throttle::new(node.tuning.recovery_bandwidth));
    let outcomes: Vec<(usize, Rebuild)> = futures::stream::iter(work)
        .map(|(i, id, _)| {
            let (s, throttle) = (&surveys[i], &throttle);
            async move {
                (
                    i,
                    rebuild_stripe(node, view, s, id, throttle, metrics).await,
                )
            }
        })
        .buffer_unordered(node.tuning.recovery_concurrency.max(1))
        .collect()
        .await;
    let mut reports: Vec<pb::PgReport> = surveys.iter().map(|s| s.report()).collect();
    for (i, outcome) in outcomes {
        let r = &mut reports[i];
        match outcome {
            Rebuild::Done => {}
            Rebuild::Short { shards, bytes } => {
                r.missing_shards += shards;
                r.missing_bytes += bytes;
            }
            Rebuild::Unrecoverable { shards, bytes } => {
                r.unrecoverable_stripes += 1;
                r.missing_shards += shards;
                r.missing_bytes += bytes;
            }
        }
    }

    let (mut clean, mut degraded) = (0i64, 0i64);
    for (survey, mut report) in surveys.iter().zip(reports) {
        if node.cluster.epoch() != view.epoch() {
            // Copies under the old map would be refused as stale; the next pass redoes it.
            return false;
        }
        let manifests_ok = sync_manifests(
            node,
            view,
            survey.pool,
            survey.pg,
            survey.members,
            &survey.live,
            metrics,
        )
        .await;
        report.clean = survey.live.iter().all(|l| *l)
            && report.missing_shards == 0
            && report.unrecoverable_stripes == 0
            && manifests_ok;
        if report.clean {
            clean += 1;
        } else {
            degraded += 1;
            tracing::debug!(pool = %report.pool, pg = report.pg, missing = report.missing_shards, unrecoverable = report.unrecoverable_stripes, "PG not clean yet");
        }
        node.recovery.set(report);
    }
    metrics.pgs.with_label_values(&["clean"]).set(clean);
    metrics.pgs.with_label_values(&["degraded"]).set(degraded);
    degraded == 0
}

/// Deletes this member's shards of positions it does not hold in the current map, PG by PG,
/// once the PG's leader reports it clean at this epoch. Returns whether none are left.
async fn collect_strays(node: &Node, view: &MapView, metrics: &RecoveryMetrics) -> bool {
    let mut leader_reports: HashMap<String, Option<Vec<pb::PgReport>>> = HashMap::new();
    let mut none_left = true;
    for pool in &view.map.pools {
        for (pg, set) in pool.pgs.iter().enumerate() {
            let Ok(pg) = u32::try_from(pg) else { break };
            let mine = set.members.iter().position(|m| m == &node.id);
            let strays = match local_strays(node, &pool.name, pg, mine).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(pool = %pool.name, pg, "cannot list local shards: {e}");
                    none_left = false;
                    continue;
                }
            };
            if strays.is_empty() {
                continue;
            }
            let Some(leader) = set.members.iter().find(|m| is_up(view, m)) else {
                none_left = false;
                continue;
            };
            let clean = if leader == &node.id {
                node.recovery.reports().iter().any(|r| {
                    r.pool == pool.name && r.pg == pg && r.clean && r.epoch == view.epoch()
                })
            } else {
                if !leader_reports.contains_key(leader) {
                    let reports = leader_status(node, view, leader).await;
                    leader_reports.insert(leader.clone(), reports);
                }
                leader_reports
                    .get(leader)
                    .and_then(|r| r.as_ref())
                    .is_some_and(|reports| {
                        reports.iter().any(|r| {
                            r.pool == pool.name && r.pg == pg && r.clean && r.epoch == view.epoch()
                        })
                    })
            };
            if !clean {
                none_left = false;
                continue;
            }
            // A clean report is a snapshot: delete a stray only when the member now holding
            // its position is seen holding the same shard, so that a write that reached the
            // old holders after the report, or a PG whose leader never saw these stripes,
            // cannot lose its last copies.
            let mut held: HashMap<usize, std::collections::HashSet<StripeId>> = HashMap::new();
            let mut deletable = Vec::new();
            for key in strays {
                let pos = usize::from(key.shard);
                let Some(holder) = set.members.get(pos) else {
                    none_left = false;
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = held.entry(pos) {
                    let copies = if is_up(view, holder) {
                        list_pg_shards(node, view, holder, &pool.name, pg)
                            .await
                            .map(|items| {
                                items
                                    .into_iter()
                                    .filter(|(k, _)| usize::from(k.shard) == pos)
                                    .map(|(k, _)| (k.object_id, k.stripe))
                                    .collect()
                            })
                            .unwrap_or_default()
                    } else {
                        Default::default()
                    };
                    slot.insert(copies);
                }
                if held
                    .get(&pos)
                    .is_some_and(|h| h.contains(&(key.object_id, key.stripe)))
                {
                    deletable.push(key);
                } else {
                    none_left = false;
                }
            }
            for key in deletable {
                match node.with_store(move |s| s.delete_shard(&key)).await {
                    Ok(true) => metrics.strays.inc(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("cannot delete a stray shard: {e}");
                        none_left = false;
                    }
                }
            }
        }
    }
    none_left
}

/// This member's shards of the PG that are not for `position` (all of them when it holds
/// none), at most `MAX_STRAYS` per call; the next pass takes the rest.
async fn local_strays(
    node: &Node,
    pool: &str,
    pg: u32,
    position: Option<usize>,
) -> Result<Vec<ShardKey>, crate::shard_store::StoreError> {
    const MAX_STRAYS: usize = 10_000;
    let mut out = Vec::new();
    let mut after: Option<ShardKey> = None;
    loop {
        let pool = pool.to_string();
        let from = after.clone();
        let (items, more) = node
            .with_store(move |s| s.list_shards(&pool, pg, from.as_ref(), LIST_PAGE as usize))
            .await?;
        after = items.last().map(|(k, _)| k.clone());
        out.extend(
            items
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| Some(usize::from(k.shard)) != position),
        );
        if !more || after.is_none() || out.len() >= MAX_STRAYS {
            return Ok(out);
        }
    }
}

async fn leader_status(node: &Node, view: &MapView, leader: &str) -> Option<Vec<pb::PgReport>> {
    let info = view.member(leader)?;
    let mut client = node.peers.control_client(leader, &info.endpoint).ok()?;
    let mut req = tonic::Request::new(pb::GetStatusRequest {});
    req.set_timeout(node.tuning.manifest_timeout);
    client
        .get_status(req)
        .await
        .ok()
        .map(|r| r.into_inner().pgs)
}

/// Every shard of the PG on `member`, with its length.
async fn list_pg_shards(
    node: &Node,
    view: &MapView,
    member: &str,
    pool: &str,
    pg: u32,
) -> Result<Vec<(ShardKey, u64)>, crate::peers::PeerError> {
    let mut out = Vec::new();
    let mut after: Option<ShardKey> = None;
    loop {
        let (items, more) = node
            .list_shards(view, member, pool, pg, after.clone(), LIST_PAGE)
            .await?;
        after = items.last().map(|(k, _)| k.clone());
        out.extend(items);
        if !more || after.is_none() {
            return Ok(out);
        }
    }
}

#[derive(Default)]
pub(crate) struct StripeInfo {
    pub(crate) len: u64,
    /// Positions whose member in the acting set holds its shard.
    pub(crate) present: u32,
}

/// What the members hold of one PG, gathered before anything is rebuilt.
pub(crate) struct PgSurvey<'a> {
    pub(crate) pool: &'a pb::PoolMap,
    pub(crate) pg: u32,
    pub(crate) members: &'a [String],
    /// Positions whose member is up and answered every listing.
    pub(crate) live: Vec<bool>,
    pub(crate) stripes: BTreeMap<StripeId, StripeInfo>,
    /// Shards on members outside the acting set: the previous holders of positions that
    /// moved. They are sources for rebuilding (when every position of a PG moves in one epoch
    /// they are the only ones), and they keep them until the new holders have copies.
    pub(crate) elsewhere: HashMap<StripeId, Vec<(usize, String)>>,
    epoch: u64,
}

impl PgSurvey<'_> {
    /// Live positions lacking the stripe's shard.
    fn wanted(&self, info: &StripeInfo) -> Vec<usize> {
        (0..self.members.len())
            .filter(|p| self.live[*p] && info.present & (1 << p) == 0)
            .collect()
    }

    /// Distinct positions of the stripe held by anyone: the fewer, the closer to loss.
    pub(crate) fn held_positions(&self, id: &StripeId, info: &StripeInfo) -> u32 {
        let mut held = info.present;
        for (pos, _) in self.elsewhere.get(id).into_iter().flatten() {
            held |= 1 << pos;
        }
        held.count_ones()
    }

    fn report(&self) -> pb::PgReport {
        pb::PgReport {
            pool: self.pool.name.clone(),
            pg: self.pg,
            epoch: self.epoch,
            clean: false,
            ..Default::default()
        }
    }

    /// What is missing, published before the rebuild starts so that the operator can show
    /// the bytes still to heal while this PG is worked on.
    fn pending(&self) -> pb::PgReport {
        let mut r = self.report();
        for info in self.stripes.values() {
            let want = self.wanted(info).len() as u64;
            r.missing_shards += want;
            r.missing_bytes += want * info.len;
        }
        r
    }
}

async fn survey_pg<'a>(
    node: &Node,
    view: &MapView,
    pool: &'a pb::PoolMap,
    pg: u32,
    members: &'a [String],
) -> PgSurvey<'a> {
    let width = members.len();
    let mut s = PgSurvey {
        pool,
        pg,
        members,
        live: members.iter().map(|m| is_up(view, m)).collect(),
        stripes: BTreeMap::new(),
        elsewhere: HashMap::new(),
        epoch: view.epoch(),
    };
    for (pos, member) in members.iter().enumerate() {
        if !s.live[pos] {
            continue;
        }
        match list_pg_shards(node, view, member, &pool.name, pg).await {
            Ok(items) => {
                for (key, len) in &items {
                    if usize::from(key.shard) == pos {
                        let info = s.stripes.entry((key.object_id, key.stripe)).or_default();
                        info.len = *len;
                        info.present |= 1 << pos;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%member, pool = %pool.name, pg, "cannot list shards: {e}");
                s.live[pos] = false;
            }
        }
    }
    let outsiders: Vec<String> = view
        .members()
        .filter(|m| !members.contains(&m.id) && is_up(view, &m.id))
        .map(|m| m.id.clone())
        .collect();
    for member in outsiders {
        let Ok(items) = list_pg_shards(node, view, &member, &pool.name, pg).await else {
            continue;
        };
        for (key, len) in items {
            let pos = usize::from(key.shard);
            if pos >= width {
                continue;
            }
            let info = s.stripes.entry((key.object_id, key.stripe)).or_default();
            info.len = len;
            s.elsewhere
                .entry((key.object_id, key.stripe))
                .or_default()
                .push((pos, member.clone()));
        }
    }
    s
}

/// How one stripe's rebuild ended.
enum Rebuild {
    Done,
    /// Some wanted shards were not written (a write failed, or the map moved on).
    Short {
        shards: u64,
        bytes: u64,
    },
    /// Fewer than k shards could be read anywhere.
    Unrecoverable {
        shards: u64,
        bytes: u64,
    },
}

/// Reads k shards of a stripe (the acting holders first, then older copies; k fetches at
/// once, more only when some fail), rebuilds the missing ones and writes them.
async fn rebuild_stripe(
    node: &Node,
    view: &MapView,
    s: &PgSurvey<'_>,
    id: StripeId,
    throttle: &tokio::sync::Mutex<Throttle>,
    metrics: &RecoveryMetrics,
) -> Rebuild {
    let Some(info) = s.stripes.get(&id) else {
        return Rebuild::Done;
    };
    let want = s.wanted(info);
    let short = |n: usize| Rebuild::Short {
        shards: n as u64,
        bytes: n as u64 * info.len,
    };
    if node.cluster.epoch() != view.epoch() {
        return short(want.len());
    }
    let codec = match node.codecs.get(s.pool.k, s.pool.m) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(pool = %s.pool.name, "no codec for the pool: {e}");
            return short(want.len());
        }
    };
    let (width, k) = (s.members.len(), s.pool.k as usize);
    let (object_id, stripe) = id;
    let key = |pos: usize| ShardKey {
        pool: s.pool.name.clone(),
        pg: s.pg,
        object_id,
        stripe,
        shard: pos as u8,
    };
    let mut sources: Vec<(usize, &str)> = (0..width)
        .filter(|p| info.present & (1 << p) != 0)
        .map(|p| (p, s.members[p].as_str()))
        .collect();
    if let Some(more) = s.elsewhere.get(&id) {
        sources.extend(more.iter().map(|(p, m)| (*p, m.as_str())));
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; width];
    let mut got = 0;
    let mut next = 0;
    while got < k && next < sources.len() {
        let mut batch: Vec<(usize, &str)> = Vec::new();
        while batch.len() < k - got && next < sources.len() {
            let (pos, member) = sources[next];
            next += 1;
            if shards[pos].is_none() && batch.iter().all(|(p, _)| *p != pos) {
                batch.push((pos, member));
            }
        }
        let fetched = futures::future::join_all(
            batch
                .iter()
                .map(|(pos, member)| node.get_shard(view, member, key(*pos))),
        )
        .await;
        for ((pos, _), r) in batch.iter().zip(fetched) {
            if let Ok(Some(data)) = r {
                if data.len() as u64 == info.len && shards[*pos].is_none() {
                    shards[*pos] = Some(data.to_vec());
                    got += 1;
                }
            }
        }
    }
    if got < k {
        return Rebuild::Unrecoverable {
            shards: want.len() as u64,
            bytes: info.len * want.len() as u64,
        };
    }
    let rebuilt =
        tokio::task::spawn_blocking(move || codec.reconstruct_all(&mut shards).map(|()| shards))
            .await;
    let shards = match rebuilt {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(pool = %s.pool.name, pg = s.pg, "cannot rebuild a stripe: {e}");
            return short(want.len());
        }
        Err(e) => {
            tracing::warn!("rebuild task failed: {e}");
            return short(want.len());
        }
    };
    let writes = want.iter().map(|&pos| {
        let data = shards.get(pos).and_then(|d| d.clone());
        let member = &s.members[pos];
        async move {
            let data = data.ok_or_else(|| "the codec returned no shard".to_string())?;
            let hash = *blake3::hash(&data).as_bytes();
            let len = data.len() as u64;
            node.put_shard(view, member, key(pos), Bytes::from(data), hash)
                .await
                .map(|()| len)
                .map_err(|e| format!("recovery write to {member} failed: {e}"))
        }
    });
    let (mut failed, mut written) = (0usize, 0u64);
    for r in futures::future::join_all(writes).await {
        match r {
            Ok(len) => {
                metrics.shards.inc();
                metrics.bytes.inc_by(len);
                node.recovery
                    .recovered_bytes
                    .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                written += len;
            }
            Err(e) => {
                tracing::debug!("{e}");
                failed += 1;
            }
        }
    }
    throttle.lock().await.spent(written).await;
    if failed > 0 {
        short(failed)
    } else {
        Rebuild::Done
    }
}

/// Copies the newest manifest of every key hashed to `pg` onto the live members that lack it
/// or hold an older one. Returns whether every copy that was needed landed.
async fn sync_manifests(
    node: &Node,
    view: &MapView,
    pool: &pb::PoolMap,
    pg: u32,
    members: &[String],
    live: &[bool],
    metrics: &RecoveryMetrics,
) -> bool {
    type Version = (u64, Bytes);
    let mut newest: BTreeMap<(String, String), pb::Manifest> = BTreeMap::new();
    let mut held: Vec<HashMap<(String, String), Version>> = vec![HashMap::new(); members.len()];
    let mut ok = true;
    for (pos, member) in members.iter().enumerate() {
        if !live[pos] {
            continue;
        }
        let mut after: Option<(String, String)> = None;
        loop {
            match node
                .list_pg_manifests(view, member, &pool.name, pg, pool.pg_count, after.clone())
                .await
            {
                Ok((page, more)) => {
                    for m in page {
                        let id = (m.bucket.clone(), m.key.clone());
                        let version = (m.version, m.object_id.clone());
                        after = Some(id.clone());
                        held[pos].insert(id.clone(), version.clone());
                        let newer = newest
                            .get(&id)
                            .is_none_or(|n| (n.version, n.object_id.clone()) < version);
                        if newer {
                            newest.insert(id, m);
                        }
                    }
                    if !more || after.is_none() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(%member, pool = %pool.name, pg, "cannot list manifests: {e}");
                    ok = false;
                    break;
                }
            }
        }
    }
    for (id, manifest) in &newest {
        let version = (manifest.version, manifest.object_id.clone());
        for (pos, member) in members.iter().enumerate() {
            if !live[pos] || held[pos].get(id) == Some(&version) {
                continue;
            }
            match node.put_manifest(view, member, pg, manifest.clone()).await {
                Ok(_) => metrics.manifests.inc(),
                Err(e) => {
                    tracing::debug!(%member, "manifest copy failed: {e}");
                    ok = false;
                }
            }
        }
    }
    ok
}
