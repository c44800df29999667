use super::*;

const TB: u64 = 1_000_000_000_000;
const NOW: u64 = 1_764_000_000_000;

fn member(i: usize, zones: usize) -> MemberSpec {
    MemberSpec {
        id: format!("node-{i:02}"),
        endpoint: format!("10.0.0.{i}:7400"),
        failure_domain: format!("zone-{}", i % zones),
        capacity_bytes: [1, 2, 4][i % 3] * TB,
        state: MemberState::Up,
    }
}

fn fleet(n: usize, zones: usize) -> Vec<MemberSpec> {
    // Reversed so that the map's sorting is exercised.
    (0..n).rev().map(|i| member(i, zones)).collect()
}

fn pool(name: &str, k: u32, m: u32, pg_count: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        k,
        m,
        chunk_size: 1 << 20,
        pg_count,
        write_quorum: None,
    }
}

/// About 100 positions per member in each pool, as the design asks for balance.
fn pools() -> Vec<PoolSpec> {
    vec![pool("media", 4, 2, 512), pool("backups", 2, 1, 1024)]
}

fn map(previous: Option<&ClusterMap>, members: &[MemberSpec], pools: &[PoolSpec]) -> ClusterMap {
    match next_map(previous, members, pools, NOW) {
        Ok(m) => m,
        Err(e) => panic!("next_map failed: {e}"),
    }
}

fn pool_of<'a>(map: &'a ClusterMap, name: &str) -> &'a PoolMap {
    match map.pools.iter().find(|p| p.name == name) {
        Some(p) => p,
        None => panic!("no pool {name}"),
    }
}

fn positions_of(pool: &PoolMap, id: &str) -> usize {
    pool.pgs
        .iter()
        .flat_map(|s| &s.members)
        .filter(|m| *m == id)
        .count()
}

/// Positions that differ between two maps' acting sets of a pool, each checked to have been
/// held by `only` before.
fn changed_positions(before: &PoolMap, after: &PoolMap, only: &str) -> usize {
    assert_eq!(before.pgs.len(), after.pgs.len());
    let mut changed = 0;
    for (pg, (b, a)) in before.pgs.iter().zip(&after.pgs).enumerate() {
        for (pos, (x, y)) in b.members.iter().zip(&a.members).enumerate() {
            if x != y {
                assert_eq!(
                    x, only,
                    "{}: pg {pg} position {pos}: {x} -> {y}",
                    before.name
                );
                changed += 1;
            }
        }
    }
    changed
}

#[test]
fn first_map_is_epoch_one_sorted_and_fully_placed() {
    let members = fleet(12, 6);
    let m = map(None, &members, &pools());
    assert_eq!(m.epoch, 1);
    assert_eq!(m.created_unix_ms, NOW);
    let ids: Vec<&str> = m.members.iter().map(|x| x.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 12);
    let names: Vec<&str> = m.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["backups", "media"]);
    for p in &m.pools {
        assert_eq!(p.unplaceable_reason, "");
        assert_eq!(p.pgs.len(), p.pg_count as usize);
        assert_eq!(p.write_quorum, p.k + 1);
        for set in &p.pgs {
            assert_eq!(set.members.len(), (p.k + p.m) as usize);
        }
    }
    assert_eq!(m.members[0].state, MemberState::Up as i32);
}

#[test]
fn unchanged_inputs_keep_the_epoch() {
    let members = fleet(12, 6);
    let first = map(None, &members, &pools());
    let mut shuffled = members.clone();
    shuffled.rotate_left(5);
    let mut pools_shuffled = pools();
    pools_shuffled.reverse();
    let second = match next_map(Some(&first), &shuffled, &pools_shuffled, NOW + 60_000) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(second, first);
    assert_eq!(second.created_unix_ms, NOW);
}

#[test]
fn removed_member_bumps_epoch_and_moves_only_its_positions() {
    let members = fleet(30, 10);
    let first = map(None, &members, &pools());
    let gone = "node-05";
    let rest: Vec<MemberSpec> = members.iter().filter(|m| m.id != gone).cloned().collect();
    let second = match next_map(Some(&first), &rest, &pools(), NOW + 1) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(second.epoch, 2);
    assert_eq!(second.created_unix_ms, NOW + 1);
    assert!(second.members.iter().all(|m| m.id != gone));
    for name in ["media", "backups"] {
        let before = pool_of(&first, name);
        let after = pool_of(&second, name);
        let held = positions_of(before, gone);
        assert!(held > 0);
        assert_eq!(changed_positions(before, after, gone), held);
        assert_eq!(positions_of(after, gone), 0);
    }
}

#[test]
fn down_member_keeps_its_positions() {
    let mut members = fleet(30, 10);
    let first = map(None, &members, &pools());
    let i = members.iter().position(|m| m.id == "node-03").unwrap_or(0);
    members[i].state = MemberState::Down;
    let second = map(Some(&first), &members, &pools());
    assert_eq!(second.epoch, 2, "a state change is a map change");
    assert_eq!(second.pools, first.pools);
    let info = second.members.iter().find(|m| m.id == "node-03");
    assert_eq!(info.map(|m| m.state), Some(MemberState::Down as i32));
}

#[test]
fn out_member_leaves_the_map_and_loses_its_positions() {
    let mut members = fleet(30, 10);
    let first = map(None, &members, &pools());
    let i = members.iter().position(|m| m.id == "node-07").unwrap_or(0);
    members[i].state = MemberState::Out;
    let second = map(Some(&first), &members, &pools());
    assert_eq!(second.epoch, 2);
    assert!(second.members.iter().all(|m| m.id != "node-07"));
    for name in ["media", "backups"] {
        let before = pool_of(&first, name);
        let after = pool_of(&second, name);
        assert_eq!(positions_of(after, "node-07"), 0);
        assert_eq!(
            changed_positions(before, after, "node-07"),
            positions_of(before, "node-07")
        );
    }
}

#[test]
fn draining_member_stays_listed_but_holds_nothing() {
    let mut members = fleet(30, 10);
    let first = map(None, &members, &pools());
    let i = members.iter().position(|m| m.id == "node-02").unwrap_or(0);
    members[i].state = MemberState::Draining;
    let second = map(Some(&first), &members, &pools());
    let info = second.members.iter().find(|m| m.id == "node-02");
    assert_eq!(info.map(|m| m.state), Some(MemberState::Draining as i32));
    for name in ["media", "backups"] {
        let before = pool_of(&first, name);
        let after = pool_of(&second, name);
        assert_eq!(positions_of(after, "node-02"), 0);
        assert_eq!(
            changed_positions(before, after, "node-02"),
            positions_of(before, "node-02")
        );
    }
}

#[test]
fn endpoint_change_bumps_epoch_without_moving_data() {
    let mut members = fleet(12, 6);
    let first = map(None, &members, &pools());
    members[0].endpoint = "10.9.9.9:7400".into();
    let second = map(Some(&first), &members, &pools());
    assert_eq!(second.epoch, 2);
    assert_eq!(second.pools, first.pools);
}

#[test]
fn joining_member_takes_about_its_share() {
    let members = fleet(30, 10);
    let pools = vec![pool("media", 4, 2, 512)];
    let first = map(None, &members, &pools);
    let mut grown = members.clone();
    grown.push(member(30, 10));
    let second = map(Some(&first), &grown, &pools);
    let before = pool_of(&first, "media");
    let after = pool_of(&second, "media");
    let moved: usize = before
        .pgs
        .iter()
        .zip(&after.pgs)
        .map(|(b, a)| {
            b.members
                .iter()
                .zip(&a.members)
                .filter(|(x, y)| x != y)
                .count()
        })
        .sum();
    let total_weight: u64 = grown.iter().map(|m| m.capacity_bytes).sum();
    let share = 512.0 * 6.0 * grown[30].capacity_bytes as f64 / total_weight as f64;
    eprintln!("join through next_map: moved {moved} positions for a fair share of {share:.1}");
    assert!(
        (moved as f64) <= 1.1 * share,
        "moved {moved}, share {share:.1}"
    );
}

#[test]
fn unplaceable_pool_says_why_and_does_not_block_others() {
    let members = fleet(12, 6);
    let pools = vec![pool("wide", 6, 2, 64), pool("narrow", 4, 2, 64)];
    let m = map(None, &members, &pools);
    let wide = pool_of(&m, "wide");
    assert!(wide.pgs.is_empty());
    assert_eq!(
        wide.unplaceable_reason,
        "pool needs 8 members in distinct failure domains but only 6 domains have members; add members in new failure domains or lower k+m"
    );
    let narrow = pool_of(&m, "narrow");
    assert_eq!(narrow.unplaceable_reason, "");
    assert_eq!(narrow.pgs.len(), 64);
    // Once enough domains join, the pool is placed in a new epoch.
    let mut grown = members.clone();
    for (i, zone) in [(12, "zone-6"), (13, "zone-7")] {
        grown.push(MemberSpec {
            failure_domain: zone.into(),
            ..member(i, 6)
        });
    }
    let next = map(Some(&m), &grown, &pools);
    assert_eq!(next.epoch, 2);
    assert_eq!(pool_of(&next, "wide").pgs.len(), 64);
    assert_eq!(pool_of(&next, "wide").unplaceable_reason, "");
}

#[test]
fn pool_without_capacity_is_unplaceable() {
    let mut members = fleet(6, 6);
    for m in &mut members {
        m.state = MemberState::Draining;
    }
    let m = map(None, &members, &[pool("p", 2, 1, 8)]);
    let p = pool_of(&m, "p");
    assert!(p.pgs.is_empty());
    assert!(
        p.unplaceable_reason.contains("add members"),
        "{}",
        p.unplaceable_reason
    );
}

#[test]
fn invalid_pools_are_rejected_with_what_to_do() {
    let cases: Vec<(PoolSpec, &str)> = vec![
        (pool("", 4, 2, 64), "give the pool a name"),
        (pool("p", 0, 2, 64), "set k >= 1"),
        (pool("p", 4, 0, 64), "set m >= 1"),
        (pool("p", 30, 3, 64), "k+m is 33 but at most 32"),
        (pool("p", u32::MAX, u32::MAX, 64), "lower k or m"),
        (
            PoolSpec {
                chunk_size: 1024,
                ..pool("p", 4, 2, 64)
            },
            "outside 4 KiB to 64 MiB",
        ),
        (
            PoolSpec {
                chunk_size: 128 << 20,
                ..pool("p", 4, 2, 64)
            },
            "outside 4 KiB to 64 MiB",
        ),
        (
            PoolSpec {
                chunk_size: 5000,
                ..pool("p", 4, 2, 64)
            },
            "round it, for example to 5056",
        ),
        (pool("p", 4, 2, 0), "pg_count 0 is not a power of two"),
        (pool("p", 4, 2, 100), "pg_count 100 is not a power of two"),
        (pool("p", 4, 2, 131_072), "between 1 and 65536"),
        (
            PoolSpec {
                write_quorum: Some(3),
                ..pool("p", 4, 2, 64)
            },
            "write_quorum 3 is outside k..=k+m (4..=6)",
        ),
        (
            PoolSpec {
                write_quorum: Some(7),
                ..pool("p", 4, 2, 64)
            },
            "leave it unset for k+1",
        ),
    ];
    for (spec, expected) in cases {
        let err = match validate_pool(&spec) {
            Ok(()) => panic!("{spec:?} accepted"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(text.contains(expected), "{text:?} lacks {expected:?}");
        assert!(matches!(err, MapError::InvalidPool { .. }));
        assert_eq!(next_map(None, &fleet(8, 8), &[spec], NOW), Err(err));
    }
    for ok in [
        pool("p", 1, 1, 1),
        pool("p", 16, 16, 65_536),
        PoolSpec {
            chunk_size: 4096,
            write_quorum: Some(6),
            ..pool("p", 4, 2, 64)
        },
        PoolSpec {
            chunk_size: 64 << 20,
            write_quorum: Some(4),
            ..pool("p", 4, 2, 64)
        },
    ] {
        assert_eq!(validate_pool(&ok), Ok(()), "{ok:?}");
    }
}

#[test]
fn write_quorum_is_k_plus_one_unless_given() {
    let p = pool("p", 4, 2, 64);
    assert_eq!(p.effective_write_quorum(), 5);
    let m = map(None, &fleet(8, 8), std::slice::from_ref(&p));
    assert_eq!(pool_of(&m, "p").write_quorum, 5);
    let given = PoolSpec {
        write_quorum: Some(6),
        ..p
    };
    assert_eq!(given.effective_write_quorum(), 6);
}

#[test]
fn duplicates_and_bad_members_are_rejected() {
    let mut members = fleet(8, 8);
    members.push(members[3].clone());
    assert_eq!(
        next_map(None, &members, &pools(), NOW),
        Err(MapError::DuplicateMember(members[3].id.clone()))
    );
    let twice = vec![pool("a", 2, 1, 8), pool("a", 4, 2, 8)];
    assert_eq!(
        next_map(None, &fleet(8, 8), &twice, NOW),
        Err(MapError::DuplicatePool("a".into()))
    );
    let mut unspecified = fleet(8, 8);
    unspecified[0].state = MemberState::Unspecified;
    let err = next_map(None, &unspecified, &pools(), NOW);
    assert!(matches!(err, Err(MapError::InvalidMember { .. })));
    let mut no_id = fleet(8, 8);
    no_id[0].id.clear();
    assert!(matches!(
        next_map(None, &no_id, &pools(), NOW),
        Err(MapError::InvalidMember { .. })
    ));
}

#[test]
fn removing_a_pool_or_changing_its_shape_bumps_the_epoch() {
    let members = fleet(12, 6);
    let first = map(None, &members, &pools());
    let only_media = vec![pool("media", 4, 2, 512)];
    let second = map(Some(&first), &members, &only_media);
    assert_eq!(second.epoch, 2);
    assert_eq!(second.pools.len(), 1);
    assert_eq!(pool_of(&second, "media"), pool_of(&first, "media"));
    // Doubling the PG count splits each PG onto its parent's members: nothing moves yet.
    let doubled = vec![pool("media", 4, 2, 1024)];
    let third = map(Some(&second), &members, &doubled);
    assert_eq!(third.epoch, 3);
    let before = pool_of(&second, "media");
    let after = pool_of(&third, "media");
    for (pg, set) in after.pgs.iter().enumerate() {
        assert_eq!(set, &before.pgs[pg % 512]);
    }
}

#[test]
fn epoch_overflow_is_an_error_not_a_wrap() {
    let members = fleet(8, 8);
    let mut first = map(None, &members, &pools());
    first.epoch = u64::MAX;
    let mut changed = members.clone();
    changed[0].endpoint = "elsewhere:1".into();
    assert_eq!(
        next_map(Some(&first), &changed, &pools(), NOW),
        Err(MapError::EpochExhausted(u64::MAX))
    );
}

#[test]
fn a_pool_that_cannot_be_replaced_keeps_its_sets_and_lists_the_out_member_as_down() {
    // Six members in six domains hold a 4+2 pool: losing one leaves five domains for six
    // positions, so nothing can move. The data must stay mapped where it is.
    let mut members = fleet(6, 6);
    let first = map(None, &members, &[pool("media", 4, 2, 64)]);
    let i = members.iter().position(|m| m.id == "node-03").unwrap_or(0);
    members[i].state = MemberState::Out;
    let second = map(Some(&first), &members, &[pool("media", 4, 2, 64)]);
    let p = pool_of(&second, "media");
    assert_eq!(p.unplaceable_reason, "");
    assert_eq!(p.pgs, pool_of(&first, "media").pgs);
    let listed = second
        .members
        .iter()
        .find(|m| m.id == "node-03")
        .expect("still listed");
    assert_eq!(listed.state, MemberState::Down as i32);
    assert_eq!(second.epoch, 2, "the state change is news");
    let ids: Vec<&str> = second.members.iter().map(|m| m.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    // The same inputs again change nothing.
    let third = map(Some(&second), &members, &[pool("media", 4, 2, 64)]);
    assert_eq!(third.epoch, 2);
    // A member deleted outright is still listed from the previous map.
    members.remove(i);
    let fourth = map(Some(&third), &members, &[pool("media", 4, 2, 64)]);
    assert_eq!(fourth.epoch, 2);
    assert_eq!(pool_of(&fourth, "media").pgs, pool_of(&first, "media").pgs);
}

fn access(name: &str, key: &str) -> BucketAccess {
    BucketAccess {
        name: name.into(),
        pool: "media".into(),
        keys: vec![potluck_proto::v1::AccessKey {
            id: key.into(),
            secret_blake3: vec![7; 32].into(),
        }],
    }
}

#[test]
fn bucket_changes_mint_an_epoch_and_unchanged_access_does_not() {
    let members = fleet(6, 6);
    let pools = vec![pool("media", 4, 2, 16)];
    let first = with_access(map(None, &members, &pools), None, vec![], true, NOW).unwrap();
    assert_eq!((first.epoch, first.require_auth), (1, true));

    // Same fleet, same (no) buckets: the same map, no new epoch.
    let same = with_access(
        map(Some(&first), &members, &pools),
        Some(&first),
        vec![],
        true,
        NOW + 1,
    )
    .unwrap();
    assert_eq!(same, first);

    // A bucket appears: one new epoch, placement untouched.
    let granted = vec![access("photos", "pk-a")];
    let second = with_access(
        map(Some(&same), &members, &pools),
        Some(&same),
        granted.clone(),
        true,
        NOW + 2,
    )
    .unwrap();
    assert_eq!(second.epoch, 2);
    assert_eq!(second.created_unix_ms, NOW + 2);
    assert_eq!(second.pools, first.pools);
    assert_eq!(second.buckets, granted);
    let again = with_access(
        map(Some(&second), &members, &pools),
        Some(&second),
        granted.clone(),
        true,
        NOW + 3,
    )
    .unwrap();
    assert_eq!(again, second);

    // A member leaves and a bucket goes at once: still one epoch.
    let third = with_access(
        map(Some(&second), &members[1..], &pools),
        Some(&second),
        vec![],
        true,
        NOW + 4,
    )
    .unwrap();
    assert_eq!(third.epoch, 3);
    assert!(third.buckets.is_empty());

    // Turning authentication off is a change too.
    let fourth = with_access(
        map(Some(&third), &members[1..], &pools),
        Some(&third),
        vec![],
        false,
        NOW + 5,
    )
    .unwrap();
    assert_eq!((fourth.epoch, fourth.require_auth), (4, false));
}
