//! The operator against a real kube-apiserver and etcd, with real agents in Kubernetes mode:
//! membership from Leases, maps published and pushed, pool status and Events, leader election,
//! and the epoch surviving operator restarts.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use potluck_api::condition::{self, DEGRADED, READY};
use potluck_api::{NodePhase, PoolHealth, StoragePool, StoragePoolSpec};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::{table_row, ControlPlane};
use potluck_e2e::{get, metric, object_client, put, random_bytes};
use potluck_proto::v1::GetClusterMapRequest;

const LIMIT: Duration = Duration::from_secs(60);

fn fast_pool(k: i32, m: i32) -> StoragePoolSpec {
    let mut spec = StoragePoolSpec::with_defaults(k, m);
    spec.pg_count = 32;
    spec.chunk_size = 64 * 1024;
    spec.down_after = "2s".into();
    spec.out_after = "5s".into();
    spec
}

async fn start(dir: &std::path::Path, cp: &ControlPlane, agents: usize) -> DevCluster {
    let mut fleet = potluck_e2e::fleet_config(dir.join("fleet"));
    fleet.agents = agents;
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("default".into(), fast_pool(4, 2)));
    cfg.stage_timeout = LIMIT;
    match DevCluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => panic!(
            "dev cluster did not start: {e}\n{}",
            cp.log_tail("kube-apiserver", 20)
        ),
    }
}

fn status_of(pool: &StoragePool) -> potluck_api::StoragePoolStatus {
    pool.status.clone().unwrap_or_default()
}

fn cond_true(pool: &StoragePool, type_: &str) -> bool {
    condition::is_true(&status_of(pool).conditions, type_)
}

/// Every running agent's map epoch.
async fn agent_epochs(cluster: &DevCluster) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..cluster.fleet.len() {
        if cluster.fleet.pid(i).is_none() {
            continue;
        }
        let mut c = potluck_e2e::control_client(cluster.fleet.endpoint(i))
            .await
            .expect("connect to agent");
        let map = c
            .get_cluster_map(GetClusterMapRequest {})
            .await
            .expect("GetClusterMap")
            .into_inner();
        out.push(map.epoch);
    }
    out
}

async fn stored_epoch(cp: &ControlPlane) -> u64 {
    let out = cp.kubectl_ok(
        &[
            "get",
            "configmap",
            "-n",
            "potluck-system",
            "potluck-cluster-map",
            "-o",
            "jsonpath={.data.epoch}",
        ],
        None,
    );
    out.trim().parse().expect("stored epoch is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_becomes_ready_loses_a_member_and_keeps_its_epoch_across_operators() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    // Seven members in seven domains: 4+2 can still be re-placed after one is Out.
    let mut cluster = start(dir.path(), &cp, 7).await;

    // Ready, and `kubectl get` shows the figures.
    let pool = cluster
        .wait_pool("default", "Ready and healthy", |p| {
            status_of(p).health == Some(PoolHealth::Healthy)
        })
        .await
        .expect("pool healthy");
    let first_epoch = status_of(&pool).map_epoch;
    assert!(first_epoch >= 1);
    assert_eq!(status_of(&pool).members, 7);
    assert_eq!(status_of(&pool).pgs_clean, 32);
    assert_eq!(status_of(&pool).capacity_bytes, 7 * (10i64 << 30));
    let table = cp.kubectl_ok(&["get", "storagepools"], None);
    let row = table_row(&table, 1);
    assert_eq!(row[..4], ["default", "4", "2", "7"], "{table}");
    assert!(row.contains(&"Healthy"), "{table}");
    let nodes = cp.kubectl_ok(&["get", "storagenodes"], None);
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Up ")).count(),
        7,
        "{nodes}"
    );
    assert_eq!(
        agent_epochs(&cluster).await,
        vec![u64::try_from(first_epoch).unwrap_or(0); 7],
        "every agent runs the published map"
    );
    assert_eq!(stored_epoch(&cp).await, first_epoch as u64);

    // Objects go in and come out through any agent.
    let mut objects = Vec::new();
    for i in 0..6 {
        let data = random_bytes(150_000 + i * 77_777, i as u64);
        let mut c = object_client(&cluster.fleet.endpoint(i)).await;
        put(&mut c, "photos", &format!("p{i}"), &data)
            .await
            .expect("put");
        objects.push(data);
    }

    // Two replicas: only one leads.
    cluster.start_operator().await.expect("second operator");
    let metrics = cluster.operator_metrics();
    assert_eq!(metrics.len(), 2);
    let leader = metric(&metrics[0].to_string(), "potluck_operator_leader", "").await;
    let standby = metric(&metrics[1].to_string(), "potluck_operator_leader", "").await;
    assert_eq!((leader, standby), (1.0, 0.0));
    assert!(
        metric(
            &metrics[0].to_string(),
            "potluck_operator_reconciles_total",
            "result=\"ok\""
        )
        .await
            >= 1.0
    );

    // A member dies: Down (pool Degraded), then Out (a new epoch moves its positions).
    cluster.fleet.kill(6).await.expect("kill agent-6");
    cluster
        .wait_nodes("agent-6 Down", |nodes| {
            nodes.iter().any(|n| {
                n.metadata.name.as_deref() == Some("agent-6")
                    && n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Down)
            })
        })
        .await
        .expect("agent-6 goes Down");
    let degraded = cluster
        .wait_pool("default", "Degraded", |p| cond_true(p, DEGRADED))
        .await
        .expect("pool degraded");
    assert!(
        cond_true(&degraded, READY),
        "5 of 6 still meet the write quorum"
    );
    assert_eq!(status_of(&degraded).health, Some(PoolHealth::Degraded));
    cluster
        .wait_nodes("agent-6 Out", |nodes| {
            nodes.iter().any(|n| {
                n.metadata.name.as_deref() == Some("agent-6")
                    && n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Out)
            })
        })
        .await
        .expect("agent-6 goes Out");
    let replaced = cluster
        .wait_pool("default", "a map without agent-6", |p| {
            status_of(p).members == 6 && status_of(p).map_epoch > first_epoch
        })
        .await
        .expect("new epoch");
    // Its positions moved to members that had no shards for them; once the PGs' leaders have
    // rebuilt those, the pool is whole again.
    let replaced_epoch = status_of(&replaced).map_epoch;
    cluster
        .wait_pool("default", "healthy again after recovery", |p| {
            status_of(p).health == Some(PoolHealth::Healthy)
                && status_of(p).map_epoch == replaced_epoch
        })
        .await
        .expect("recovered");
    let events = cp.kubectl_ok(&["get", "events", "-A"], None);
    for reason in ["MemberDown", "MemberOut", "PoolDegraded", "MapPublished"] {
        assert!(events.contains(reason), "no {reason} Event in:\n{events}");
    }
    for (i, data) in objects.iter().enumerate() {
        let mut c = object_client(&cluster.fleet.endpoint(i % 6)).await;
        assert_eq!(
            &get(&mut c, "photos", &format!("p{i}")).await.expect("get"),
            data
        );
    }

    // The leader crashes: the standby takes over, and epochs go on from the stored one.
    let before = stored_epoch(&cp).await;
    cluster.kill_operator(0).await;
    let new_leader = cluster.operator_metrics()[0].to_string();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while metric(&new_leader, "potluck_operator_leader", "").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "standby never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Bring agent-6 back: it renews, goes Up and is placed again, in a later epoch.
    cluster.fleet.restart(6).await.expect("restart agent-6");
    let back = cluster
        .wait_pool("default", "agent-6 back in the map", |p| {
            status_of(p).members == 7 && status_of(p).map_epoch as u64 > before
        })
        .await
        .expect("agent-6 back");
    let epoch = status_of(&back).map_epoch as u64;
    assert!(stored_epoch(&cp).await >= epoch);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let epochs = agent_epochs(&cluster).await;
        if epochs.iter().all(|e| *e >= epoch) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents stuck at {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&new_leader, "potluck_operator_map_epoch", "").await >= epoch as f64);

    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_impossible_pool_is_not_ready_and_says_why_without_blocking_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mut fleet = potluck_e2e::fleet_config(dir.path().join("fleet"));
    fleet.agents = 3;
    fleet.k = 2;
    fleet.m = 1;
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("small".into(), fast_pool(2, 1)));
    cfg.stage_timeout = LIMIT;
    let cluster = DevCluster::start(cfg).await.expect("dev cluster");

    // 4+2 needs six failure domains; three members offer three.
    let wide = StoragePool::new("wide", fast_pool(4, 2));
    let pools: Api<StoragePool> = cluster.pools();
    pools
        .patch("wide", &PatchParams::apply("e2e"), &Patch::Apply(&wide))
        .await
        .expect("create wide pool");
    let refused = cluster
        .wait_pool("wide", "Ready=False Unplaceable", |p| {
            condition::find_condition(&status_of(p).conditions, READY)
                .is_some_and(|c| c.status == "False" && c.reason == "Unplaceable")
        })
        .await
        .expect("wide pool reports why");
    let ready = condition::find_condition(&status_of(&refused).conditions, READY)
        .expect("Ready condition")
        .clone();
    assert!(
        ready.message.contains("distinct failure domains") && ready.message.contains("add members"),
        "{}",
        ready.message
    );
    assert_eq!(status_of(&refused).health, Some(PoolHealth::Unavailable));
    let table = cp.kubectl_ok(&["get", "storagepools", "-o", "wide"], None);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("wide") && l.contains("Unavailable")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("small") && l.contains("Healthy")),
        "the placeable pool is not held back:\n{table}"
    );
    let events = cp.kubectl_ok(&["get", "events", "-A"], None);
    assert!(events.contains("Unplaceable"), "{events}");

    // Objects in the small pool work meanwhile.
    let mut c = object_client(&cluster.fleet.endpoint(0)).await;
    let data = random_bytes(300_000, 9);
    let mut req = potluck_e2e::header("notes", "k");
    if let Some(potluck_proto::v1::put_object_request::Body::Header(h)) = req.body.as_mut() {
        h.pool = "small".into();
    }
    let msgs = vec![
        req,
        potluck_e2e::chunk(bytes::Bytes::from(data.clone())),
        potluck_e2e::finish(),
    ];
    c.put_object(tokio_stream::iter(msgs))
        .await
        .expect("put into small");

    // Deleting the impossible pool goes through its finalizer and takes it out of the map.
    pools
        .delete("wide", &Default::default())
        .await
        .expect("delete wide");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while pools.get_opt("wide").await.expect("get wide").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "wide pool never went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ac = potluck_e2e::control_client(cluster.fleet.endpoint(0))
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let map = ac
            .get_cluster_map(GetClusterMapRequest {})
            .await
            .expect("map")
            .into_inner();
        let names: Vec<&str> = map.pools.iter().map(|p| p.name.as_str()).collect();
        if names == ["small"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pools still {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await.expect("shutdown");
}
