//! A pool's status, worked out from the published map and what the agents report.
//!
//! Pure, so that every condition transition can be tested without an API server; the
//! controller only writes the result when it differs from what is stored.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use potluck_api::condition::{self, DEGRADED, PROGRESSING, READY};
use potluck_api::{PoolHealth, SpecError, StoragePoolStatus};
use potluck_proto::v1::{ClusterMap, MemberState};

/// What an agent said the last time the operator asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub epoch: u64,
    pub stored_bytes: u64,
    pub shard_count: u64,
    pub version: String,
    /// PGs this agent leads that its last recovery pass found clean, with the epoch of the map
    /// that pass checked against.
    pub clean_pgs: Vec<(String, u32, u64)>,
    /// PGs it leads that are not clean, with the bytes found missing: `(pool, pg, bytes)`.
    pub missing: Vec<(String, u32, u64)>,
    /// Bytes it has rebuilt since it started.
    pub recovered_bytes: u64,
}

/// Everything a pool's status depends on.
pub struct PoolInputs<'a> {
    pub name: &'a str,
    pub generation: Option<i64>,
    /// The spec check's verdict; an invalid pool is kept out of the map.
    pub spec: Result<(), &'a SpecError>,
    pub map: Option<&'a ClusterMap>,
    /// PGs of this pool whose new members do not hold their shards yet.
    pub recovering: Option<&'a BTreeSet<u32>>,
    /// Members that are Out but still hold positions, because too few failure domains are left
    /// to move them to.
    pub stuck: &'a [String],
    /// Bytes rebuilt per second across the fleet lately.
    pub heal_rate: u64,
    pub reports: &'a HashMap<String, AgentReport>,
    pub now: Time,
}

/// The status the pool should have, starting from the stored one so that condition transition
/// times only move when a condition's status does.
pub fn pool_status(previous: &StoragePoolStatus, inputs: &PoolInputs<'_>) -> StoragePoolStatus {
    let mut status = previous.clone();
    status.observed_generation = inputs.generation;
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition::new_condition(
            type_,
            ok,
            reason,
            message,
            inputs.generation,
            inputs.now.clone(),
        )
    };

    if let Err(e) = inputs.spec {
        status.health = Some(PoolHealth::Unavailable);
        status.members = 0;
        status.pgs_clean = 0;
        status.pgs_degraded = 0;
        status.capacity_bytes = 0;
        status.used_bytes = 0;
        let c = &mut status.conditions;
        condition::set_condition(c, cond(READY, false, "InvalidSpec", e.to_string()));
        condition::set_condition(
            c,
            cond(
                DEGRADED,
                false,
                "InvalidSpec",
                "the pool is not placed until its spec is fixed".into(),
            ),
        );
        condition::set_condition(
            c,
            cond(
                PROGRESSING,
                false,
                "InvalidSpec",
                "waiting for a valid spec".into(),
            ),
        );
        return status;
    }

    let Some((map, pool)) = inputs.map.and_then(|m| {
        m.pools
            .iter()
            .find(|p| p.name == inputs.name)
            .map(|p| (m, p))
    }) else {
        status.health = Some(PoolHealth::Pending);
        let c = &mut status.conditions;
        condition::set_condition(
            c,
            cond(
                READY,
                false,
                "Pending",
                "no cluster map includes this pool yet; the operator places it on its next pass"
                    .into(),
            ),
        );
        return status;
    };

    let states: HashMap<&str, MemberState> = map
        .members
        .iter()
        .map(|m| {
            (
                m.id.as_str(),
                MemberState::try_from(m.state).unwrap_or(MemberState::Unspecified),
            )
        })
        .collect();
    let up = |id: &str| {
        matches!(
            states.get(id),
            Some(MemberState::Up | MemberState::Draining)
        )
    };
    status.map_epoch = i64::try_from(map.epoch).unwrap_or(i64::MAX);
    status.members = count(map.members.len());
    status.capacity_bytes = clamp(
        map.members
            .iter()
            .filter(|m| up(&m.id))
            .map(|m| m.capacity_bytes)
            .sum(),
    );
    status.used_bytes = clamp(
        map.members
            .iter()
            .filter_map(|m| inputs.reports.get(&m.id))
            .map(|r| r.stored_bytes)
            .sum(),
    );
    let mut down: Vec<&str> = map
        .members
        .iter()
        .filter(|m| !up(&m.id))
        .map(|m| m.id.as_str())
        .collect();
    down.sort_unstable();

    let (clean, short_of_quorum) = if pool.unplaceable_reason.is_empty() {
        let mut clean = 0usize;
        let mut short = 0usize;
        for (i, set) in pool.pgs.iter().enumerate() {
            let live = set.members.iter().filter(|m| up(m)).count();
            let pending = u32::try_from(i)
                .ok()
                .is_some_and(|pg| inputs.recovering.is_some_and(|r| r.contains(&pg)));
            if live == set.members.len() && !pending {
                clean += 1;
            }
            if live < pool.write_quorum as usize {
                short += 1;
            }
        }
        (clean, short)
    } else {
        (0, pool.pgs.len())
    };
    status.pgs_clean = count(clean);
    let degraded = if pool.unplaceable_reason.is_empty() {
        pool.pgs.len() - clean
    } else {
        pool.pg_count as usize
    };
    status.pgs_degraded = count(degraded);

    let ready = if !pool.unplaceable_reason.is_empty() {
        cond(
            READY,
            false,
            "Unplaceable",
            format!(
                "cannot place {}+{} shards per stripe: {}",
                pool.k, pool.m, pool.unplaceable_reason
            ),
        )
    } else if short_of_quorum > 0 {
        cond(
            READY,
            false,
            "QuorumLost",
            format!(
                "{short_of_quorum} of {} PGs have fewer than {} members up, so writes to them fail \
                 until members come back (not up: {}); bring those members back or wait for \
                 outAfter to move their shards",
                pool.pgs.len(),
                pool.write_quorum,
                down.join(", ")
            ),
        )
    } else {
        cond(
            READY,
            true,
            "Placed",
            format!(
                "map epoch {}: {} PGs of {}+{} on {} members",
                map.epoch,
                pool.pgs.len(),
                pool.k,
                pool.m,
                map.members.len()
            ),
        )
    };
    let is_ready = ready.status == "True";
    let degraded_cond = if degraded > 0 && pool.unplaceable_reason.is_empty() {
        cond(
            DEGRADED,
            true,
            "MembersDown",
            degraded_message(
                degraded,
                pool.pgs.len(),
                &down,
                inputs.recovering,
                inputs.stuck,
            ),
        )
    } else if degraded > 0 {
        cond(
            DEGRADED,
            true,
            "Unplaceable",
            "no PG is placed; see the Ready condition".into(),
        )
    } else {
        cond(
            DEGRADED,
            false,
            "AllPGsClean",
            "every PG has all its shard positions on members that are up".into(),
        )
    };
    let is_degraded = degraded_cond.status == "True";

    let live: Vec<&str> = map
        .members
        .iter()
        .filter(|m| up(&m.id))
        .map(|m| m.id.as_str())
        .collect();
    let behind: Vec<&str> = live
        .iter()
        .copied()
        .filter(|id| inputs.reports.get(*id).is_none_or(|r| r.epoch < map.epoch))
        .collect();
    let rebuilding = inputs.recovering.map_or(0, BTreeSet::len);
    status.pgs_recovering = count(rebuilding);
    let to_heal: u64 = inputs
        .reports
        .values()
        .flat_map(|r| r.missing.iter())
        .filter(|(pool, pg, _)| {
            pool == inputs.name && inputs.recovering.is_some_and(|r| r.contains(pg))
        })
        .map(|(_, _, bytes)| *bytes)
        .sum();
    status.bytes_to_heal = clamp(to_heal);
    status.heal_rate_bytes_per_second = clamp(inputs.heal_rate);
    status.heal_eta_seconds =
        (rebuilding > 0 && inputs.heal_rate > 0).then(|| clamp(to_heal.div_ceil(inputs.heal_rate)));
    let progressing = if behind.is_empty() && rebuilding > 0 {
        cond(
            PROGRESSING,
            true,
            "Recovering",
            format!(
                "{rebuilding} PGs are being rebuilt onto the members now holding their positions"
            ),
        )
    } else if behind.is_empty() {
        cond(
            PROGRESSING,
            false,
            "MapApplied",
            format!(
                "every member that is up runs map epoch {} or later",
                map.epoch
            ),
        )
    } else {
        cond(
            PROGRESSING,
            true,
            "RollingOutMap",
            format!(
                "map epoch {} is applied by {} of {} members that are up; waiting for {}",
                map.epoch,
                live.len() - behind.len(),
                live.len(),
                behind.join(", ")
            ),
        )
    };

    let c = &mut status.conditions;
    condition::set_condition(c, ready);
    condition::set_condition(c, degraded_cond);
    condition::set_condition(c, progressing);
    status.health = Some(if !is_ready {
        PoolHealth::Unavailable
    } else if is_degraded {
        PoolHealth::Degraded
    } else {
        PoolHealth::Healthy
    });
    status
}

fn degraded_message(
    degraded: usize,
    pgs: usize,
    down: &[&str],
    recovering: Option<&BTreeSet<u32>>,
    stuck: &[String],
) -> String {
    let mut why = Vec::new();
    if !down.is_empty() {
        why.push(format!("members not up: {}", down.join(", ")));
    }
    let moving = recovering.map_or(0, BTreeSet::len);
    if moving > 0 {
        why.push(format!(
            "{moving} PGs have positions moved to members that do not hold their shards yet"
        ));
    }
    let mut text = format!(
        "{degraded} of {pgs} PGs have less redundancy than k+m ({}); they are whole again when \
         the members return, or once their shards are rebuilt on the members now named for them",
        why.join("; ")
    );
    if !stuck.is_empty() {
        text.push_str(&format!(
            ". {} Out but still in the map: the members left span too few failure domains to \
             take over its positions; bring it back or add members in new failure domains",
            stuck.join(", ")
        ));
    }
    text
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Conditions whose status differs between two statuses, as `(type, new status)`: what gets an
/// Event.
pub fn transitions(before: &StoragePoolStatus, after: &StoragePoolStatus) -> Vec<(String, bool)> {
    after
        .conditions
        .iter()
        .filter(|c| {
            condition::find_condition(&before.conditions, &c.type_)
                .is_none_or(|old| old.status != c.status)
        })
        .map(|c| (c.type_.clone(), c.status == "True"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use potluck_proto::v1::{ActingSet, MemberInfo, PoolMap};

    fn now(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn map(states: &[(&str, MemberState)], unplaceable: &str) -> ClusterMap {
        let members: Vec<MemberInfo> = states
            .iter()
            .map(|(id, s)| MemberInfo {
                id: (*id).into(),
                endpoint: format!("{id}:7100"),
                failure_domain: (*id).into(),
                capacity_bytes: 100,
                state: *s as i32,
            })
            .collect();
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let pgs = if unplaceable.is_empty() {
            // Two PGs: the first on the first three members, the second on the last three.
            vec![
                ActingSet {
                    members: ids[..3].to_vec(),
                },
                ActingSet {
                    members: ids[ids.len() - 3..].to_vec(),
                },
            ]
        } else {
            vec![]
        };
        ClusterMap {
            epoch: 7,
            members,
            pools: vec![PoolMap {
                name: "p".into(),
                k: 2,
                m: 1,
                chunk_size: 4096,
                pg_count: 2,
                write_quorum: 3,
                pgs,
                unplaceable_reason: unplaceable.into(),
            }],
            created_unix_ms: 0,
            ..Default::default()
        }
    }

    fn reports(ids: &[&str], epoch: u64) -> HashMap<String, AgentReport> {
        ids.iter()
            .map(|id| {
                (
                    (*id).to_string(),
                    AgentReport {
                        epoch,
                        stored_bytes: 10,
                        shard_count: 1,
                        version: "0.1.0".into(),
                        clean_pgs: vec![],
                        missing: vec![],
                        recovered_bytes: 0,
                    },
                )
            })
            .collect()
    }

    fn inputs<'a>(
        map: Option<&'a ClusterMap>,
        reports: &'a HashMap<String, AgentReport>,
        t: i64,
    ) -> PoolInputs<'a> {
        PoolInputs {
            name: "p",
            generation: Some(1),
            spec: Ok(()),
            map,
            recovering: None,
            stuck: &[],
            heal_rate: 0,
            reports,
            now: now(t),
        }
    }

    fn cond<'a>(
        s: &'a StoragePoolStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        condition::find_condition(&s.conditions, t).expect("condition present")
    }

    use MemberState::{Down, Up};

    #[test]
    fn all_up_and_applied_is_healthy() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up), ("d", Up)], "");
        let r = reports(&["a", "b", "c", "d"], 7);
        let s = pool_status(&StoragePoolStatus::default(), &inputs(Some(&m), &r, 0));
        assert_eq!(s.health, Some(PoolHealth::Healthy));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!((s.pgs_clean, s.pgs_degraded), (2, 0));
        assert_eq!((s.members, s.capacity_bytes, s.used_bytes), (4, 400, 40));
        assert_eq!(s.map_epoch, 7);
    }

    #[test]
    fn a_down_member_degrades_and_then_loses_quorum() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up), ("d", Down)], "");
        let r = reports(&["a", "b", "c"], 7);
        let all = reports(&["a", "b", "c", "d"], 7);
        let healthy = pool_status(
            &StoragePoolStatus::default(),
            &inputs(
                Some(&map(&[("a", Up), ("b", Up), ("c", Up), ("d", Up)], "")),
                &all,
                0,
            ),
        );
        let s = pool_status(&healthy, &inputs(Some(&m), &r, 60));
        // PG 1 is on b, c, d: one position down, quorum 3 not met for it.
        assert_eq!((s.pgs_clean, s.pgs_degraded), (1, 1));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert!(cond(&s, DEGRADED).message.contains('d'));
        assert_eq!(cond(&s, READY).reason, "QuorumLost");
        let stuck = ["d".to_string()];
        let mut i = inputs(Some(&m), &r, 60);
        i.stuck = &stuck;
        let with_stuck = pool_status(&healthy, &i);
        assert!(cond(&with_stuck, DEGRADED)
            .message
            .contains("d Out but still in the map"));
        assert_eq!(s.health, Some(PoolHealth::Unavailable));
        assert_eq!(s.capacity_bytes, 300);
        // The Ready transition time moved; Progressing's did not.
        assert_eq!(cond(&s, READY).last_transition_time, now(60));
        assert_eq!(cond(&s, PROGRESSING).last_transition_time, now(0));
        let mut flips = transitions(&healthy, &s);
        flips.sort();
        assert_eq!(
            flips,
            vec![(DEGRADED.to_string(), true), (READY.to_string(), false)]
        );
    }

    #[test]
    fn degraded_but_ready_when_quorum_holds() {
        let mut m = map(&[("a", Up), ("b", Up), ("c", Up), ("d", Down)], "");
        m.pools[0].write_quorum = 2;
        let r = reports(&["a", "b", "c"], 7);
        let s = pool_status(&StoragePoolStatus::default(), &inputs(Some(&m), &r, 0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(s.health, Some(PoolHealth::Degraded));
    }

    #[test]
    fn moved_positions_keep_the_pool_degraded_with_every_member_up() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up)], "");
        let r = reports(&["a", "b", "c"], 7);
        let pending = BTreeSet::from([1]);
        let mut i = inputs(Some(&m), &r, 0);
        i.recovering = Some(&pending);
        let s = pool_status(&StoragePoolStatus::default(), &i);
        assert_eq!((s.pgs_clean, s.pgs_degraded), (1, 1));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert!(cond(&s, DEGRADED)
            .message
            .contains("do not hold their shards yet"));
        assert_eq!(s.health, Some(PoolHealth::Degraded));
        assert_eq!(cond(&s, PROGRESSING).reason, "Recovering");
    }

    #[test]
    fn healing_progress_gives_bytes_to_heal_and_an_eta() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up)], "");
        let mut r = reports(&["a", "b", "c"], 7);
        if let Some(a) = r.get_mut("a") {
            a.missing = vec![
                ("p".into(), 1, 3000),
                ("p".into(), 0, 500),
                ("other".into(), 1, 9),
            ];
        }
        let pending = BTreeSet::from([1]);
        let mut i = inputs(Some(&m), &r, 0);
        i.recovering = Some(&pending);
        i.heal_rate = 1000;
        let s = pool_status(&StoragePoolStatus::default(), &i);
        // Only this pool's recovering PGs count.
        assert_eq!(s.bytes_to_heal, 3000);
        assert_eq!(s.pgs_recovering, 1);
        assert_eq!(s.heal_eta_seconds, Some(3));
        assert_eq!(s.heal_rate_bytes_per_second, 1000);
        // No rate yet: no ETA rather than a made-up one.
        i.heal_rate = 0;
        let s = pool_status(&StoragePoolStatus::default(), &i);
        assert_eq!(s.heal_eta_seconds, None);
    }

    #[test]
    fn members_behind_the_map_mean_progressing() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up)], "");
        let mut r = reports(&["a", "b"], 7);
        r.insert(
            "c".into(),
            AgentReport {
                epoch: 6,
                stored_bytes: 0,
                shard_count: 0,
                version: "0.1.0".into(),
                clean_pgs: vec![],
                missing: vec![],
                recovered_bytes: 0,
            },
        );
        let s = pool_status(&StoragePoolStatus::default(), &inputs(Some(&m), &r, 0));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert!(cond(&s, PROGRESSING).message.contains("waiting for c"));
    }

    #[test]
    fn an_unplaceable_pool_is_not_ready_and_says_why() {
        let m = map(&[("a", Up), ("b", Up)], "pool needs 3 members in distinct failure domains but only 2 domains have members; add members in new failure domains or lower k+m");
        let r = reports(&["a", "b"], 7);
        let s = pool_status(&StoragePoolStatus::default(), &inputs(Some(&m), &r, 0));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "Unplaceable");
        assert!(cond(&s, READY).message.contains("only 2 domains"));
        assert_eq!((s.pgs_clean, s.pgs_degraded), (0, 2));
        assert_eq!(s.health, Some(PoolHealth::Unavailable));
    }

    #[test]
    fn an_invalid_spec_is_not_ready_with_the_spec_error() {
        let e = SpecError::KTooSmall(0);
        let r = HashMap::new();
        let mut i = inputs(None, &r, 0);
        i.spec = Err(&e);
        let s = pool_status(&StoragePoolStatus::default(), &i);
        assert_eq!(cond(&s, READY).reason, "InvalidSpec");
        assert!(cond(&s, READY).message.contains("set k to 1 or more"));
    }

    #[test]
    fn a_pool_missing_from_the_map_is_pending() {
        let r = HashMap::new();
        let s = pool_status(&StoragePoolStatus::default(), &inputs(None, &r, 0));
        assert_eq!(s.health, Some(PoolHealth::Pending));
        assert_eq!(cond(&s, READY).reason, "Pending");
    }

    #[test]
    fn an_unchanged_world_gives_an_identical_status() {
        let m = map(&[("a", Up), ("b", Up), ("c", Up)], "");
        let r = reports(&["a", "b", "c"], 7);
        let first = pool_status(&StoragePoolStatus::default(), &inputs(Some(&m), &r, 0));
        let second = pool_status(&first, &inputs(Some(&m), &r, 30));
        assert_eq!(first, second);
        assert!(transitions(&first, &second).is_empty());
    }
}
