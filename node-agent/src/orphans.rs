//! Stripes no manifest names: left by a put whose gateway died half way (a put that fails
//! while its gateway lives takes its shards back itself), or by an old version whose
//! collection was missed.
//!
//! Such stripes cost disk forever, and one with fewer than k shards also keeps its PG from
//! ever being clean (it cannot be rebuilt), which would keep its pool Degraded and its strays
//! and drains from finishing. Object ids carry their creation time and the PG of their key's
//! manifest ([`crate::layout::new_object_id`]), so a PG's leader can tell, from the shard
//! keys alone, which stripes are old enough and where to look for a manifest naming them.
//!
//! A stripe is deleted only when
//! - it is older than `orphan_grace` by its id (gateways refuse to commit a put older than
//!   half of it, so no manifest can appear later, given clocks within half the grace) and its
//!   id's time is not before ids carried times at all ([`FIRST_TIMED_ID_MS`]);
//! - every member of the map that is not Out is up and lists no manifest of the stripe's
//!   manifest PG, of any version, naming its object: not only the PG's acting set, since
//!   a PG whose members all changed keeps its manifests on the previous ones until recovery
//!   copies them over;
//! - it was found so at least `gc_delay` earlier too, so reads already under way of a version
//!   just overwritten finish, as with the GC queue.
//!
//! A manifest kept only by a minority after a failed overwrite still names its object, so the
//! data it points to stays.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use potluck_proto::v1 as pb;

use crate::cluster::MapView;
use crate::keys::ShardKey;
use crate::layout::{object_created_ms, object_manifest_pg};
use crate::node::{now_unix_ms, Node};
use crate::recovery::{PgSurvey, StripeId};

/// 2026-11-25T00:00:00Z: object ids began carrying their creation time that day. An id claiming
/// an earlier time is random (written by an older agent) and says nothing about its age or its
/// manifest PG.
pub const FIRST_TIMED_ID_MS: u64 = 1_795_564_800_000;

/// Stripes found unnamed, with when that was first seen; kept across passes.
#[derive(Default)]
pub struct Suspects {
    seen: Mutex<HashMap<(String, StripeId), Instant>>,
}

impl Suspects {
    /// Whether the stripe was already found unnamed at least `wait` ago (recording it now if
    /// it was not found so before).
    fn due(&self, pool: &str, id: StripeId, wait: Duration) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let first = *seen
            .entry((pool.to_string(), id))
            .or_insert_with(Instant::now);
        first.elapsed() >= wait
    }

    fn forget(&self, pool: &str, id: StripeId) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&(pool.to_string(), id));
        }
    }

    /// Drops suspicions older than `age`: the stripe went some other way (collected by GC,
    /// or named after all).
    pub fn expire(&self, age: Duration) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|_, first| first.elapsed() < age);
        }
    }
}

/// Object ids named by the manifests of PGs looked at in one pass; `None` when some member of
/// that PG could not be asked, so nothing it might name is deleted.
#[derive(Default)]
pub struct ManifestIndex {
    pgs: HashMap<(String, u32), Option<HashSet<[u8; 16]>>>,
}

impl ManifestIndex {
    async fn named(
        &mut self,
        node: &Node,
        view: &MapView,
        pool: &pb::PoolMap,
        pg: u32,
    ) -> Option<&HashSet<[u8; 16]>> {
        let slot = (pool.name.clone(), pg);
        if !self.pgs.contains_key(&slot) {
            let ids = list_named(node, view, pool, pg).await;
            self.pgs.insert(slot.clone(), ids);
        }
        self.pgs.get(&slot).and_then(|ids| ids.as_ref())
    }
}

async fn list_named(
    node: &Node,
    view: &MapView,
    pool: &pb::PoolMap,
    pg: u32,
) -> Option<HashSet<[u8; 16]>> {
    pool.pgs.get(pg as usize)?;
    let mut ids = HashSet::new();
    for info in view.members() {
        let member = &info.id;
        if info.state == pb::MemberState::Out as i32 {
            continue;
        }
        if !crate::recovery::is_up(view, member) {
            return None;
        }
        let mut after: Option<(String, String)> = None;
        loop {
            let (page, more) = node
                .list_pg_manifests(view, member, &pool.name, pg, pool.pg_count, after.clone())
                .await
                .map_err(|e| tracing::debug!(%member, pg, "cannot list manifests: {e}"))
                .ok()?;
            for m in &page {
                if let Ok(id) = <[u8; 16]>::try_from(m.object_id.as_ref()) {
                    ids.insert(id);
                }
            }
            after = page.last().map(|m| (m.bucket.clone(), m.key.clone()));
            if !more || after.is_none() {
                break;
            }
        }
    }
    Some(ids)
}

/// Deletes the survey's abandoned stripes from every member holding them and drops them from
/// the survey. Only stripes missing shards are looked at unless `sweep` is set. Returns the
/// number of shards deleted.
pub(crate) async fn collect(
    node: &Node,
    view: &MapView,
    survey: &mut PgSurvey<'_>,
    index: &mut ManifestIndex,
    sweep: bool,
) -> u64 {
    // A silent acting member may hold the shards that make a stripe whole, and nothing says
    // its manifest is not on its way: decide only with everyone present.
    if !survey.live.iter().all(|l| *l) {
        return 0;
    }
    let width = survey.members.len() as u32;
    let now = now_unix_ms();
    let grace = u64::try_from(node.tuning.orphan_grace.as_millis()).unwrap_or(u64::MAX);
    let candidates: Vec<StripeId> = survey
        .stripes
        .iter()
        .filter(|((object_id, _), info)| {
            let created = object_created_ms(object_id);
            let old = created >= FIRST_TIMED_ID_MS && created.saturating_add(grace) < now;
            old && (sweep || info.present.count_ones() < width)
        })
        .map(|(id, _)| *id)
        .collect();
    let mut deleted = 0;
    for id in candidates {
        let (object_id, stripe) = id;
        let manifest_pg = object_manifest_pg(&object_id, survey.pool.pg_count);
        match index.named(node, view, survey.pool, manifest_pg).await {
            Some(named) if !named.contains(&object_id) => {}
            Some(_) => {
                node.recovery.suspects.forget(&survey.pool.name, id);
                continue;
            }
            None => continue,
        }
        if !node
            .recovery
            .suspects
            .due(&survey.pool.name, id, node.tuning.gc_delay)
        {
            continue;
        }
        node.recovery.suspects.forget(&survey.pool.name, id);
        let Some(info) = survey.stripes.remove(&id) else {
            continue;
        };
        let mut holders: Vec<(usize, &str)> = (0..survey.members.len())
            .filter(|p| info.present & (1 << p) != 0)
            .map(|p| (p, survey.members[p].as_str()))
            .collect();
        let elsewhere = survey.elsewhere.remove(&id).unwrap_or_default();
        holders.extend(elsewhere.iter().map(|(p, m)| (*p, m.as_str())));
        let deletes = holders.iter().map(|(pos, member)| {
            let key = ShardKey {
                pool: survey.pool.name.clone(),
                pg: survey.pg,
                object_id,
                stripe,
                shard: *pos as u8,
            };
            node.delete_shard(view, member, key)
        });
        for r in futures::future::join_all(deletes).await {
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => tracing::debug!("deleting an abandoned shard: {e}"),
            }
        }
        tracing::info!(
            pool = %survey.pool.name,
            pg = survey.pg,
            object = %hex::encode(object_id),
            stripe,
            "deleted an abandoned stripe: no manifest names it"
        );
    }
    deleted
}
