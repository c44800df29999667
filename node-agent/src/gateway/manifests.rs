//! Quorum reads and writes of object manifests on the members of their PG.
//!
//! With n = k+m replicas, a write needs a majority W = n/2+1 and a read
//! R = n-W+1 answers: every read quorum meets every write quorum, so a read
//! sees the newest acknowledged version while up to n-W members are gone.

use std::sync::Arc;

use futures::future::join_all;
use potluck_proto::v1 as pb;
use tonic::Status;

use crate::cluster::MapView;
use crate::layout::manifest_pg;
use crate::node::Node;

pub fn write_quorum(n: usize) -> usize {
    n / 2 + 1
}

pub fn read_quorum(n: usize) -> usize {
    n - write_quorum(n) + 1
}

/// Members the map marks Down or Out are not asked: they would only make the call wait out
/// its deadline (a put took seconds instead of milliseconds while a member was Down), and
/// their answer could not count anyway.
fn reachable(view: &MapView, member: &str) -> Result<(), String> {
    match view
        .member(member)
        .map(|m| pb::MemberState::try_from(m.state))
    {
        Some(Ok(pb::MemberState::Down | pb::MemberState::Out)) => {
            Err(format!("member {member} is down in the map"))
        }
        _ => Ok(()),
    }
}

fn newer(a: &pb::Manifest, b: &pb::Manifest) -> bool {
    (a.version, &a.object_id) > (b.version, &b.object_id)
}

/// Writes `m` to a majority of its PG; fails naming who did not answer, or
/// with ABORTED when members already hold a newer version.
pub async fn write(
    node: &Arc<Node>,
    view: &MapView,
    pool: &pb::PoolMap,
    m: pb::Manifest,
) -> Result<(), Status> {
    let pg = manifest_pg(&m.bucket, &m.key, pool.pg_count);
    let set = &pool.pgs[pg as usize].members;
    let calls = set.iter().map(|member| {
        let m = m.clone();
        async move {
            reachable(view, member)?;
            node.put_manifest(view, member, pg, m)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let results = join_all(calls).await;
    // Only members that now hold this version count: one that kept a newer
    // version did not store ours.
    let acks = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let need = write_quorum(set.len());
    if acks >= need {
        return Ok(());
    }
    if results.iter().any(|r| matches!(r, Ok(false))) {
        return Err(Status::aborted(format!(
            "a newer version of {}/{} was written at the same time; this write was not applied (retry to write over it)",
            m.bucket, m.key
        )));
    }
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    Err(Status::unavailable(format!(
        "manifest of {}/{} reached {acks} of {} members of PG {pg}, {need} needed; bring members back and retry ({})",
        m.bucket,
        m.key,
        set.len(),
        errors.join("; ")
    )))
}

/// The newest manifest among a read quorum, tombstones included; `None` when
/// no member holds one.
pub async fn read(
    node: &Arc<Node>,
    view: &MapView,
    pool: &pb::PoolMap,
    bucket: &str,
    key: &str,
) -> Result<Option<pb::Manifest>, Status> {
    let pg = manifest_pg(bucket, key, pool.pg_count);
    let set = &pool.pgs[pg as usize].members;
    let calls = set.iter().map(|member| async move {
        reachable(view, member)?;
        node.get_manifest(view, member, &pool.name, bucket, key)
            .await
            .map_err(|e| e.to_string())
    });
    let results = join_all(calls).await;
    let answered = results.iter().filter(|r| r.is_ok()).count();
    let need = read_quorum(set.len());
    if answered < need {
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        return Err(Status::unavailable(format!(
            "manifest of {bucket}/{key}: {answered} of {} members of PG {pg} answered, {need} needed; bring members back and retry ({})",
            set.len(),
            errors.join("; ")
        )));
    }
    let mut best: Option<pb::Manifest> = None;
    for m in results.into_iter().flatten().flatten() {
        if best.as_ref().is_none_or(|b| newer(&m, b)) {
            best = Some(m);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_overlap() {
        for n in 2..=32 {
            assert!(read_quorum(n) + write_quorum(n) > n, "n={n}");
            assert!(write_quorum(n) <= n);
        }
        assert_eq!((write_quorum(6), read_quorum(6)), (4, 3));
    }
}
