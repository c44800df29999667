//! From pool specs, members and the previous map to the next versioned `ClusterMap`.
//!
//! Agents refuse requests from peers on an older epoch, so a new epoch is only minted when
//! something in the map really changed: a spurious bump would make every agent refetch and
//! briefly reject traffic for nothing. Placement is planned from the previous map's acting
//! sets, so positions stay where they are across epochs and only what changed moves.

use std::collections::{BTreeMap, BTreeSet};

use potluck_placement::{Member, Placement, Rule};
use potluck_proto::v1::{ActingSet, BucketAccess, ClusterMap, MemberInfo, MemberState, PoolMap};

/// More shards per stripe than this would make every stripe touch a large part of a small
/// fleet, and the write path keeps a per-stripe bitmap of missing shards in a `u32`.
pub const MAX_SHARDS: u32 = 32;
/// Smaller chunks spend more on per-shard overhead (hash, RPC, key) than on data.
pub const MIN_CHUNK_SIZE: u64 = 4 * 1024;
/// A stripe is buffered whole in memory on the gateway: `k` chunks of this size.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Multiples of 64 bytes keep every shard a whole number of the widest SIMD vectors
/// (AVX-512) that the erasure coder works in.
pub const CHUNK_ALIGN: u64 = 64;
/// More PGs than this buys no balance for any realistic fleet, only a bigger map.
pub const MAX_PG_COUNT: u32 = 65_536;

/// A pool as its owner asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub k: u32,
    pub m: u32,
    pub chunk_size: u64,
    pub pg_count: u32,
    /// Shards that must be acknowledged before a put succeeds; `None` means `k + 1`, which
    /// survives one more loss than the bare minimum while tolerating `m - 1` slow members.
    pub write_quorum: Option<u32>,
}

impl PoolSpec {
    /// The quorum written into the map: the given one, or `k + 1` capped at `k + m`.
    pub fn effective_write_quorum(&self) -> u32 {
        let width = self.k.saturating_add(self.m);
        self.write_quorum
            .unwrap_or_else(|| self.k.saturating_add(1).min(width))
    }
}

/// A member as the membership controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: String,
    pub endpoint: String,
    pub failure_domain: String,
    pub capacity_bytes: u64,
    pub state: MemberState,
}

/// Why no map can be produced. Each message names what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("pool {pool:?} is invalid: {reason}")]
    InvalidPool { pool: String, reason: String },
    #[error("pool {0:?} is listed more than once; give every pool a unique name")]
    DuplicatePool(String),
    #[error("member id {0:?} is listed more than once; give every member a unique id")]
    DuplicateMember(String),
    #[error("member {member:?} is invalid: {reason}")]
    InvalidMember { member: String, reason: String },
    #[error(
        "the previous map is at epoch {0}, the last representable one; start a new map history"
    )]
    EpochExhausted(u64),
}

fn invalid(spec: &PoolSpec, reason: String) -> MapError {
    MapError::InvalidPool {
        pool: spec.name.clone(),
        reason,
    }
}

/// Checks a pool spec against what the data path supports. The reason names the limit and
/// how to get within it.
pub fn validate_pool(spec: &PoolSpec) -> Result<(), MapError> {
    if spec.name.is_empty() {
        return Err(invalid(
            spec,
            "the name is empty; give the pool a name".into(),
        ));
    }
    if spec.k == 0 {
        return Err(invalid(
            spec,
            "k is 0; a stripe needs at least one data chunk, set k >= 1".into(),
        ));
    }
    if spec.m == 0 {
        return Err(invalid(
            spec,
            "m is 0; without parity losing one member loses data, set m >= 1".into(),
        ));
    }
    let width = u64::from(spec.k) + u64::from(spec.m);
    if width > u64::from(MAX_SHARDS) {
        return Err(invalid(
            spec,
            format!(
                "k+m is {width} but at most {MAX_SHARDS} shards per stripe are supported; lower k or m"
            ),
        ));
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&spec.chunk_size) {
        return Err(invalid(
            spec,
            format!(
                "chunk_size {} is outside 4 KiB to 64 MiB; pick a size in that range, such as 1 MiB (1048576)",
                spec.chunk_size
            ),
        ));
    }
    let rounded = spec.chunk_size.div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
    if rounded != spec.chunk_size {
        return Err(invalid(
            spec,
            format!(
                "chunk_size {} is not a multiple of {CHUNK_ALIGN} bytes; round it, for example to {rounded}",
                spec.chunk_size
            ),
        ));
    }
    if !spec.pg_count.is_power_of_two() || spec.pg_count > MAX_PG_COUNT {
        return Err(invalid(
            spec,
            format!(
                "pg_count {} is not a power of two between 1 and {MAX_PG_COUNT}; pick a power of two near 100 x members / (k+m)",
                spec.pg_count
            ),
        ));
    }
    if let Some(q) = spec.write_quorum {
        if u64::from(q) < u64::from(spec.k) || u64::from(q) > width {
            return Err(invalid(
                spec,
                format!(
                    "write_quorum {q} is outside k..=k+m ({}..={width}); pick a value in that range or leave it unset for k+1",
                    spec.k
                ),
            ));
        }
    }
    Ok(())
}

fn validate_member(spec: &MemberSpec) -> Result<(), MapError> {
    let reason = if spec.id.is_empty() {
        "the id is empty; give every member a non-empty unique id"
    } else if spec.state == MemberState::Unspecified {
        "its state is unspecified; set it to UP, DOWN, DRAINING or OUT"
    } else {
        return Ok(());
    };
    Err(MapError::InvalidMember {
        member: spec.id.clone(),
        reason: reason.into(),
    })
}

/// Returns the next map. If nothing changed versus `previous` (members, states, endpoints,
/// pools, acting sets), returns `previous` unchanged (same epoch, same timestamp); otherwise
/// the epoch is `previous.epoch + 1` (1 without a previous map) stamped with `now_unix_ms`.
///
/// Members in state OUT are left out of the map and of placement. DOWN members keep their
/// positions (they are expected back; healing waits for OUT). DRAINING members stay listed so
/// that peers can still read from them, but take part in placement with weight 0, so that
/// their positions move elsewhere. A pool that cannot be placed, for instance with fewer
/// failure domains than `k+m`, gets no acting sets and says why in `unplaceable_reason`,
/// without holding back the other pools; but a pool that *was* placed keeps its previous
/// acting sets when it can no longer be re-placed, with the OUT members they name listed as
/// DOWN, so that losing one domain too many degrades the pool instead of unmapping it.
pub fn next_map(
    previous: Option<&ClusterMap>,
    members: &[MemberSpec],
    pools: &[PoolSpec],
    now_unix_ms: u64,
) -> Result<ClusterMap, MapError> {
    let mut seen = BTreeSet::new();
    for m in members {
        validate_member(m)?;
        if !seen.insert(m.id.as_str()) {
            return Err(MapError::DuplicateMember(m.id.clone()));
        }
    }
    let mut by_name: BTreeMap<&str, &PoolSpec> = BTreeMap::new();
    for p in pools {
        validate_pool(p)?;
        if by_name.insert(p.name.as_str(), p).is_some() {
            return Err(MapError::DuplicatePool(p.name.clone()));
        }
    }

    let mut listed: Vec<&MemberSpec> = members
        .iter()
        .filter(|m| m.state != MemberState::Out)
        .collect();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let member_infos: Vec<MemberInfo> = listed
        .iter()
        .map(|m| MemberInfo {
            id: m.id.clone(),
            endpoint: m.endpoint.clone(),
            failure_domain: m.failure_domain.clone(),
            capacity_bytes: m.capacity_bytes,
            state: m.state as i32,
        })
        .collect();
    let candidates: Vec<Member> = listed
        .iter()
        .filter(|m| matches!(m.state, MemberState::Up | MemberState::Down))
        .map(|m| Member {
            id: m.id.clone(),
            weight: m.capacity_bytes,
            domain: m.failure_domain.clone(),
        })
        .collect();

    let pool_maps: Vec<PoolMap> = by_name
        .values()
        .map(|spec| pool_map(spec, &candidates, previous))
        .collect();

    // Acting sets kept from the previous map (see `pool_map`) may name members that are now
    // OUT or gone. They stay listed, as DOWN, because their positions still point at them and
    // agents refuse a map naming unknown members.
    let mut member_infos = member_infos;
    let listed_ids: BTreeSet<String> = member_infos.iter().map(|m| m.id.clone()).collect();
    let kept: BTreeSet<&String> = pool_maps
        .iter()
        .flat_map(|p| p.pgs.iter())
        .flat_map(|set| set.members.iter())
        .filter(|id| !listed_ids.contains(*id))
        .collect();
    for id in kept {
        let info = members
            .iter()
            .find(|m| &m.id == id)
            .map(|m| MemberInfo {
                id: m.id.clone(),
                endpoint: m.endpoint.clone(),
                failure_domain: m.failure_domain.clone(),
                capacity_bytes: m.capacity_bytes,
                state: MemberState::Down as i32,
            })
            .or_else(|| {
                previous?
                    .members
                    .iter()
                    .find(|m| &m.id == id)
                    .map(|m| MemberInfo {
                        state: MemberState::Down as i32,
                        ..m.clone()
                    })
            });
        if let Some(info) = info {
            member_infos.push(info);
        }
    }
    member_infos.sort_by(|a, b| a.id.cmp(&b.id));

    if let Some(prev) = previous {
        if prev.members == member_infos && prev.pools == pool_maps {
            return Ok(prev.clone());
        }
    }
    let epoch = match previous {
        Some(prev) => prev
            .epoch
            .checked_add(1)
            .ok_or(MapError::EpochExhausted(prev.epoch))?,
        None => 1,
    };
    Ok(ClusterMap {
        epoch,
        members: member_infos,
        pools: pool_maps,
        created_unix_ms: now_unix_ms,
        // Filled in by `with_access`; `next_map` decides placement only.
        buckets: Vec::new(),
        require_auth: false,
        // Filled in by `shares::with_revocations`.
        revoked_shares: Vec::new(),
        // Revoked certificate serials are added by whoever publishes the map.
        revoked_certificates: Vec::new(),
    })
}

/// Puts bucket access into the map `next_map` returned for `previous`, minting one more epoch
/// when access is all that changed (agents apply only newer epochs, so new keys would never
/// reach them otherwise). `buckets` must be sorted as [`crate::buckets::plan`] sorts them, so
/// that unchanged access compares equal and costs no epoch.
pub fn with_access(
    mut next: ClusterMap,
    previous: Option<&ClusterMap>,
    buckets: Vec<BucketAccess>,
    require_auth: bool,
    now_unix_ms: u64,
) -> Result<ClusterMap, MapError> {
    if next.buckets == buckets && next.require_auth == require_auth {
        return Ok(next);
    }
    next.buckets = buckets;
    next.require_auth = require_auth;
    next_epoch_if_reused(next, previous, now_unix_ms)
}

/// `next` with one more epoch if it still carries `previous`'s: for changes beyond placement
/// (access, revocations), which `next_map` does not see but agents must, and they apply only
/// newer epochs.
pub fn next_epoch_if_reused(
    mut next: ClusterMap,
    previous: Option<&ClusterMap>,
    now_unix_ms: u64,
) -> Result<ClusterMap, MapError> {
    let reused = previous.is_some_and(|p| p.epoch == next.epoch);
    if reused {
        next.epoch = next
            .epoch
            .checked_add(1)
            .ok_or(MapError::EpochExhausted(next.epoch))?;
        next.created_unix_ms = now_unix_ms;
    }
    Ok(next)
}

/// The previous acting sets of a pool, if they describe the same stripe shape: with another
/// `k` or `m` the stored shards are a different encoding and positions mean nothing.
fn previous_placement(spec: &PoolSpec, previous: Option<&ClusterMap>) -> Option<Placement> {
    let pool = previous?.pools.iter().find(|p| p.name == spec.name)?;
    if pool.k != spec.k || pool.m != spec.m || pool.pgs.is_empty() {
        return None;
    }
    Some(Placement {
        acting_sets: pool.pgs.iter().map(|set| set.members.clone()).collect(),
    })
}

fn pool_map(spec: &PoolSpec, candidates: &[Member], previous: Option<&ClusterMap>) -> PoolMap {
    // `validate_pool` bounds k+m by MAX_SHARDS, so the conversion cannot truncate.
    let rule = Rule {
        width: (spec.k + spec.m) as usize,
        pg_count: spec.pg_count,
    };
    let hint = previous_placement(spec, previous);
    let (pgs, unplaceable_reason) = match potluck_placement::plan(&rule, candidates, hint.as_ref())
    {
        Ok(placement) => (
            placement
                .acting_sets
                .into_iter()
                .map(|members| ActingSet { members })
                .collect(),
            String::new(),
        ),
        // A pool that was placed and can no longer be re-placed (its members' failure domains
        // fell below k+m) keeps its acting sets: the shards are still where they were and every
        // stripe stays readable from the members left. Dropping the sets would make all of the
        // pool's data unreachable over what may be one lost machine.
        Err(e) => match hint {
            Some(h) if h.acting_sets.len() == spec.pg_count as usize => (
                h.acting_sets
                    .into_iter()
                    .map(|members| ActingSet { members })
                    .collect(),
                String::new(),
            ),
            _ => (Vec::new(), e.to_string()),
        },
    };
    PoolMap {
        name: spec.name.clone(),
        k: spec.k,
        m: spec.m,
        chunk_size: spec.chunk_size,
        pg_count: spec.pg_count,
        write_quorum: spec.effective_write_quorum(),
        pgs,
        unplaceable_reason,
    }
}

#[cfg(test)]
mod tests;
