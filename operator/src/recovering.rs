//! Which PGs have shard positions on members that do not hold their shards yet.
//!
//! When a new map moves a position (a member went Out, joined, or is draining), the member now
//! named for it starts empty: the PG has less redundancy than its acting set suggests until
//! recovery copies the shards over. The operator tracks those PGs from map to map, so that a
//! pool is reported Degraded for exactly as long as data still has to move, including across
//! operator restarts (the set is stored with the map). A member that comes back from Down
//! counts too: writes while it was Down skipped it, so its PGs lack those shards.

use std::collections::{BTreeSet, HashSet};

use potluck_proto::v1::{ClusterMap, MemberState};

use crate::map_store::Recovering;

/// The PGs still to recover after `previous` is replaced by `next`: the ones already pending,
/// plus every PG whose acting set gained a member or holds a member that was Down and is up
/// again. A pool whose shape changed is pending as a whole; a pool that was not placed before
/// has nothing stored, so nothing to recover.
pub fn after_publish(pending: &Recovering, previous: &ClusterMap, next: &ClusterMap) -> Recovering {
    let was_down: HashSet<&str> = previous
        .members
        .iter()
        .filter(|m| m.state == MemberState::Down as i32)
        .map(|m| m.id.as_str())
        .collect();
    let returned: HashSet<&str> = next
        .members
        .iter()
        .filter(|m| {
            was_down.contains(m.id.as_str())
                && (m.state == MemberState::Up as i32 || m.state == MemberState::Draining as i32)
        })
        .map(|m| m.id.as_str())
        .collect();
    let mut out = Recovering::new();
    for pool in &next.pools {
        let Some(before) = previous.pools.iter().find(|p| p.name == pool.name) else {
            continue;
        };
        if before.pgs.is_empty() || pool.pgs.is_empty() {
            continue;
        }
        let mut set: BTreeSet<u32> = BTreeSet::new();
        let same_shape =
            before.k == pool.k && before.m == pool.m && before.pg_count == pool.pg_count;
        for (i, acting) in pool.pgs.iter().enumerate() {
            let Ok(pg) = u32::try_from(i) else { break };
            let gained = if same_shape {
                let old: HashSet<&String> = before
                    .pgs
                    .get(i)
                    .map(|s| s.members.iter().collect())
                    .unwrap_or_default();
                acting.members.iter().any(|m| !old.contains(m))
            } else {
                true
            };
            let was_pending =
                same_shape && pending.get(&pool.name).is_some_and(|p| p.contains(&pg));
            let back = acting.members.iter().any(|m| returned.contains(m.as_str()));
            if gained || was_pending || back {
                set.insert(pg);
            }
        }
        if !set.is_empty() {
            out.insert(pool.name.clone(), set);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_proto::v1::{ActingSet, PoolMap};

    fn map(epoch: u64, sets: &[&[&str]]) -> ClusterMap {
        ClusterMap {
            epoch,
            members: vec![],
            pools: vec![PoolMap {
                name: "p".into(),
                k: 2,
                m: 1,
                chunk_size: 4096,
                pg_count: sets.len() as u32,
                write_quorum: 3,
                pgs: sets
                    .iter()
                    .map(|s| ActingSet {
                        members: s.iter().map(|m| m.to_string()).collect(),
                    })
                    .collect(),
                unplaceable_reason: String::new(),
            }],
            created_unix_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_pg_that_gains_a_member_is_pending_and_stays_so() {
        let a = map(1, &[&["x", "y", "z"], &["x", "y", "w"]]);
        let b = map(2, &[&["x", "y", "v"], &["x", "y", "w"]]);
        let pending = after_publish(&Recovering::new(), &a, &b);
        assert_eq!(
            pending,
            Recovering::from([("p".into(), BTreeSet::from([0]))])
        );
        // A later map that moves nothing keeps PG 0 pending; only recovery clears it.
        let c = map(3, &[&["x", "y", "v"], &["x", "y", "w"]]);
        assert_eq!(after_publish(&pending, &b, &c), pending);
        // Reordering the same members is not a move.
        let d = map(4, &[&["v", "x", "y"], &["x", "w", "y"]]);
        assert_eq!(after_publish(&Recovering::new(), &c, &d), Recovering::new());
    }

    #[test]
    fn a_member_back_from_down_makes_its_pgs_pending() {
        use potluck_proto::v1::MemberInfo;
        let with_states = |epoch, w_state: MemberState| {
            let mut m = map(epoch, &[&["x", "y", "z"], &["x", "y", "w"]]);
            m.members = ["x", "y", "z", "w"]
                .iter()
                .map(|id| MemberInfo {
                    id: id.to_string(),
                    state: if *id == "w" { w_state } else { MemberState::Up } as i32,
                    ..Default::default()
                })
                .collect();
            m
        };
        let up = with_states(1, MemberState::Up);
        let down = with_states(2, MemberState::Down);
        let back = with_states(3, MemberState::Up);
        assert!(after_publish(&Recovering::new(), &up, &down).is_empty());
        assert_eq!(
            after_publish(&Recovering::new(), &down, &back),
            Recovering::from([("p".into(), BTreeSet::from([1]))]),
            "only the PG holding the returned member"
        );
    }

    #[test]
    fn a_new_pool_or_a_first_placement_has_nothing_to_recover() {
        let mut empty = map(1, &[&["x", "y", "z"]]);
        empty.pools[0].pgs.clear();
        let placed = map(2, &[&["x", "y", "z"]]);
        assert!(after_publish(&Recovering::new(), &empty, &placed).is_empty());
        let none = ClusterMap::default();
        assert!(after_publish(&Recovering::new(), &none, &placed).is_empty());
    }

    #[test]
    fn a_reshaped_pool_is_pending_everywhere_and_a_removed_one_is_forgotten() {
        let a = map(1, &[&["x", "y", "z"]]);
        let b = map(2, &[&["x", "y", "z"], &["x", "y", "z"]]);
        assert_eq!(
            after_publish(&Recovering::new(), &a, &b),
            Recovering::from([("p".into(), BTreeSet::from([0, 1]))])
        );
        let pending = Recovering::from([("p".into(), BTreeSet::from([0]))]);
        assert!(after_publish(&pending, &a, &ClusterMap::default()).is_empty());
    }
}
