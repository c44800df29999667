//! Recovery with the real operator, a real API server and real agents: members die one at a
//! time, the operator marks each Out and moves its positions, the PGs' leaders rebuild the
//! missing shards and copy the manifests, and the pool is whole again each time, so more
//! members than `m` can die in total without losing a byte.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use potluck_api::{PoolHealth, StoragePool, StoragePoolSpec};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{get, metric, object_client, put, random_bytes};
use potluck_proto::v1::{ClusterMap, GetClusterMapRequest, ListShardsRequest, MemberState};

const LIMIT: Duration = Duration::from_secs(90);

fn status_of(pool: &StoragePool) -> potluck_api::StoragePoolStatus {
    pool.status.clone().unwrap_or_default()
}

async fn current_map(cluster: &DevCluster, live: usize) -> ClusterMap {
    let mut c = potluck_e2e::control_client(cluster.fleet.endpoint(live))
        .await
        .expect("connect");
    c.get_cluster_map(GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner()
}

/// Every PG of the pool: the set of stripes each position's member holds its shard of. A whole
/// PG has the same set at every position.
async fn assert_every_pg_whole(map: &ClusterMap) {
    let pool = &map.pools[0];
    let mut stripes_seen = 0usize;
    for (pg, set) in pool.pgs.iter().enumerate() {
        let mut per_position: Vec<BTreeSet<(Vec<u8>, u32)>> = Vec::new();
        for (pos, member) in set.members.iter().enumerate() {
            let info = map
                .members
                .iter()
                .find(|m| &m.id == member)
                .expect("member listed");
            assert_eq!(
                info.state,
                MemberState::Up as i32,
                "PG {pg} position {pos} is on {member}, which is not up"
            );
            let mut c = potluck_e2e::shard_client(format!("http://{}", info.endpoint))
                .await
                .expect("connect");
            let resp = c
                .list_shards(ListShardsRequest {
                    epoch: map.epoch,
                    pool: pool.name.clone(),
                    pg: pg as u32,
                    after: None,
                    limit: 10_000,
                })
                .await
                .expect("list shards")
                .into_inner();
            assert!(!resp.truncated);
            per_position.push(
                resp.shards
                    .iter()
                    .filter_map(|h| h.id.clone())
                    .filter(|id| id.shard as usize == pos)
                    .map(|id| (id.object_id.to_vec(), id.stripe))
                    .collect(),
            );
        }
        let all: BTreeSet<_> = per_position.iter().flatten().cloned().collect();
        for (pos, held) in per_position.iter().enumerate() {
            assert_eq!(
                held.len(),
                all.len(),
                "PG {pg}: position {pos} ({}) holds {} of the PG's {} stripes",
                set.members[pos],
                held.len(),
                all.len()
            );
        }
        stripes_seen += all.len();
    }
    assert!(stripes_seen > 0, "the pool holds no stripes at all");
}

/// `agents` members in Kubernetes mode and a 4+2 pool of 16 PGs with 64 KiB chunks, whose
/// members go Down after 2 s of silence and Out after 4 s.
async fn start_cluster(dir: &std::path::Path, cp: &ControlPlane, agents: usize) -> DevCluster {
    let mut fleet = potluck_e2e::fleet_config(dir.join("fleet"));
    fleet.agents = agents;
    let mut spec = StoragePoolSpec::with_defaults(4, 2);
    spec.pg_count = 16;
    spec.chunk_size = 64 * 1024;
    spec.down_after = "2s".into();
    spec.out_after = "4s".into();
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("default".into(), spec));
    cfg.stage_timeout = LIMIT;
    DevCluster::start(cfg).await.expect("dev cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_die_one_after_another_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    // Nine members: after three are gone, six remain for 4+2's six positions.
    let mut cluster = start_cluster(dir.path(), &cp, 9).await;

    // Objects of mixed sizes: empty, smaller than a chunk, several stripes.
    let mut objects = BTreeMap::new();
    for i in 0..24usize {
        let size = [0, 1, 1000, 70_000, 256 * 1024, 900_001][i % 6] + i;
        let data = random_bytes(size, i as u64);
        let mut c = object_client(&cluster.fleet.endpoint(i % 9)).await;
        put(&mut c, "heal", &format!("obj-{i}"), &data)
            .await
            .expect("put");
        objects.insert(format!("obj-{i}"), data);
    }
    let map = current_map(&cluster, 0).await;
    assert_every_pg_whole(&map).await;

    let mut live: Vec<usize> = (0..9).collect();
    let mut operator_restarted_at: Option<i64> = None;
    for victim in [8usize, 3, 5] {
        let before = cluster
            .pools()
            .get("default")
            .await
            .expect("pool")
            .status
            .map_or(0, |s| s.map_epoch);
        cluster.fleet.kill(victim).await.expect("kill");
        live.retain(|i| *i != victim);
        let id = cluster.fleet.id(victim).to_string();
        if victim == 3 {
            // The operator crashes once the member is Out and recovery has started; a new one
            // takes over from the stored map, and the epoch never goes back.
            cluster
                .wait_pool("default", "a new epoch without the victim", |p| {
                    status_of(p).map_epoch > before
                })
                .await
                .expect("new epoch");
            let stored = status_of(&cluster.pools().get("default").await.expect("pool")).map_epoch;
            cluster.kill_operator(0).await;
            cluster.start_operator().await.expect("new operator");
            operator_restarted_at = Some(stored);
        }
        let healed = cluster
            .wait_pool(
                "default",
                "the pool whole again after a member went Out",
                |p| {
                    let s = status_of(p);
                    s.map_epoch > before
                        && s.members as usize == live.len()
                        && s.health == Some(PoolHealth::Healthy)
                },
            )
            .await
            .unwrap_or_else(|e| panic!("after losing {id}: {e}"));
        assert_eq!(status_of(&healed).pgs_clean, 16);
        if let Some(stored) = operator_restarted_at.take() {
            assert!(
                status_of(&healed).map_epoch >= stored,
                "the epoch went back from {stored} after the operator restarted"
            );
        }
        let map = current_map(&cluster, live[0]).await;
        assert!(
            map.members.iter().all(|m| m.id != id),
            "{id} still in the map"
        );
        assert_every_pg_whole(&map).await;
        for (n, (key, data)) in objects.iter().enumerate() {
            let mut c = object_client(&cluster.fleet.endpoint(live[n % live.len()])).await;
            let got = get(&mut c, "heal", key)
                .await
                .unwrap_or_else(|e| panic!("{key} after losing {id}: {e}"));
            assert!(got == *data, "{key} differs after losing {id}");
        }
    }

    // The rebuilt shards were counted by the members that rebuilt them.
    let mut rebuilt = 0.0;
    for i in &live {
        rebuilt += metric(
            &cluster.fleet.metrics_addr(*i).to_string(),
            "potluck_recovery_shards_total",
            "",
        )
        .await;
    }
    assert!(rebuilt > 0.0, "no shard was counted as rebuilt");
    cluster.shutdown().await.expect("shutdown");
}

async fn shard_count(cluster: &DevCluster, index: usize) -> u64 {
    let mut c = potluck_e2e::control_client(cluster.fleet.endpoint(index))
        .await
        .expect("connect");
    c.get_status(potluck_proto::v1::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .shard_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_takes_its_share_and_a_drained_member_ends_empty() {
    use kube::api::{Patch, PatchParams};
    use potluck_api::{NodePhase, StorageNode};

    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mut cluster = start_cluster(dir.path(), &cp, 7).await;

    let mut objects = BTreeMap::new();
    for i in 0..30usize {
        let data = random_bytes(200_000 + i * 31_337, 100 + i as u64);
        let mut c = object_client(&cluster.fleet.endpoint(i % 7)).await;
        put(&mut c, "share", &format!("o{i}"), &data)
            .await
            .expect("put");
        objects.insert(format!("o{i}"), data);
    }
    let check_objects = |cluster: &DevCluster, from: Vec<usize>| {
        let endpoints: Vec<String> = from.iter().map(|i| cluster.fleet.endpoint(*i)).collect();
        let objects = objects.clone();
        async move {
            for (n, (key, data)) in objects.iter().enumerate() {
                let mut c = object_client(&endpoints[n % endpoints.len()]).await;
                let got = get(&mut c, "share", key)
                    .await
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
                assert!(got == *data, "{key} differs");
            }
        }
    };

    // Join: an eighth member registers, is placed, and is filled by recovery.
    let before = status_of(&cluster.pools().get("default").await.expect("pool")).map_epoch;
    let new = cluster.fleet.add_agent().await.expect("add agent");
    cluster
        .wait_pool("default", "the new member placed and filled", |p| {
            let s = status_of(p);
            s.members == 8 && s.map_epoch > before && s.health == Some(PoolHealth::Healthy)
        })
        .await
        .expect("joined");
    assert_every_pg_whole(&current_map(&cluster, 0).await).await;
    let counts: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..8 {
            v.push(shard_count(&cluster, i).await);
        }
        v
    };
    let mean = counts.iter().sum::<u64>() as f64 / 8.0;
    assert!(
        counts[new] as f64 >= 0.5 * mean,
        "the new member holds {} shards, the mean is {mean:.0}: {counts:?}",
        counts[new]
    );
    check_objects(&cluster, (0..8).collect()).await;

    // Drain: agent-2's positions move away, it ends Drained with no shard left.
    let nodes: kube::Api<StorageNode> = cluster.nodes();
    nodes
        .patch(
            "agent-2",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"drain": true}})),
        )
        .await
        .expect("set drain");
    cluster
        .wait_nodes("agent-2 Drained", |nodes| {
            nodes.iter().any(|n| {
                n.metadata.name.as_deref() == Some("agent-2")
                    && n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Drained)
            })
        })
        .await
        .expect("drained");
    assert_eq!(
        shard_count(&cluster, 2).await,
        0,
        "a Drained member holds no shard"
    );
    let pool = cluster
        .wait_pool("default", "healthy without agent-2", |p| {
            let s = status_of(p);
            s.members == 7 && s.health == Some(PoolHealth::Healthy)
        })
        .await
        .expect("healthy after drain");
    assert_eq!(status_of(&pool).pgs_clean, 16);
    let map = current_map(&cluster, 0).await;
    assert!(map.members.iter().all(|m| m.id != "agent-2"));
    assert_every_pg_whole(&map).await;
    // Objects read through the members that stay; agent-2 can now leave with nothing lost.
    cluster.fleet.kill(2).await.expect("stop agent-2");
    check_objects(&cluster, vec![0, 1, 3, 4, 5, 6, 7]).await;
    cluster.shutdown().await.expect("shutdown");
}
