//! Garbage collection against real agents: shards of overwritten and deleted versions, of a
//! put its client abandoned, of a put whose gateway was SIGKILLed half way, and of a stripe
//! left with fewer than k shards are all deleted, so the fleet ends up holding exactly the
//! shards its live objects need, every PG is clean, and every object reads back identical.

use std::time::Duration;

use bytes::Bytes;
use pb::agent_control_client::AgentControlClient;
use potluck_agent::layout::{new_object_id, stripe_pg, StripeLayout};
use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const B: &str = "garbage";
const LIMIT: Duration = Duration::from_secs(60);
/// Stripe data of the test fleet's pool: 4 data shards of 1 MiB.
const STRIPE: usize = 4 * MIB;

async fn control(fleet: &TestFleet, i: usize) -> AgentControlClient<tonic::transport::Channel> {
    potluck_e2e::control_client(fleet.endpoint(i))
        .await
        .expect("connect control")
}

async fn status(fleet: &TestFleet, i: usize) -> Option<pb::AgentStatus> {
    let mut c = potluck_e2e::control_client(fleet.endpoint(i)).await.ok()?;
    c.get_status(pb::GetStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Shards and their bytes over the whole fleet.
async fn held(fleet: &TestFleet) -> (u64, u64) {
    let mut total = (0, 0);
    for i in 0..fleet.len() {
        let s = status(fleet, i).await.expect("every agent answers");
        total.0 += s.shard_count;
        total.1 += s.stored_bytes;
    }
    total
}

/// Shards and bytes the live objects need: every stripe at full width (4+2).
fn needed(objects: &[(String, Vec<u8>)]) -> (u64, u64) {
    let mut total = (0, 0);
    for (_, data) in objects {
        let layout = StripeLayout::new(data.len() as u64, 4, MIB as u64);
        for s in 0..layout.stripe_count() {
            total.0 += 6;
            total.1 += 6 * layout.shard_len(s);
        }
    }
    total
}

async fn wait_for_holdings(fleet: &TestFleet, want: (u64, u64), what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = held(fleet).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the fleet holds {now:?} (shards, bytes), the live objects need {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every PG of the map is reported clean at the current epoch by the member leading it.
async fn all_pgs_clean(fleet: &TestFleet) -> bool {
    let mut clean = std::collections::HashSet::new();
    let mut epoch = 0;
    for i in 0..fleet.len() {
        let Some(s) = status(fleet, i).await else {
            return false;
        };
        epoch = epoch.max(s.epoch);
        for r in s.pgs {
            if r.clean && r.epoch == s.epoch {
                clean.insert((r.pool, r.pg));
            }
        }
    }
    let pgs = fleet.config().pg_count as usize;
    epoch > 0 && clean.len() == pgs
}

/// Each agent's count of abandoned shards it deleted as a PG leader.
async fn orphans_deleted(fleet: &TestFleet) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..fleet.len() {
        out.push(
            metric(
                &fleet.metrics_addr(i).to_string(),
                "potluck_recovery_orphan_shards_deleted_total",
                "",
            )
            .await,
        );
    }
    out
}

/// Abandoned shards deleted since `base` was taken.
async fn orphans_deleted_since(fleet: &TestFleet, base: &[f64]) -> f64 {
    let now = orphans_deleted(fleet).await;
    now.iter().zip(base).map(|(n, b)| n - b).sum()
}

async fn assert_objects_intact(fleet: &TestFleet, objects: &[(String, Vec<u8>)]) {
    let mut c = object_client(&fleet.endpoint(0)).await;
    for (key, data) in objects {
        let got = get(&mut c, B, key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert!(got == *data, "{key} reads back different");
    }
}

/// Starts a put of `key` through agent `gateway` and sends `len` bytes without finishing, so
/// the gateway stores every full stripe and holds the rest; the returned sender keeps the
/// upload open.
async fn start_unfinished_put(
    fleet: &TestFleet,
    gateway: usize,
    key: &str,
    len: usize,
) -> (
    mpsc::Sender<pb::PutObjectRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::PutObjectResponse>, tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let mut c = object_client(&fleet.endpoint(gateway)).await;
    let call = tokio::spawn(async move { c.put_object(ReceiverStream::new(rx)).await });
    tx.send(header(B, key)).await.expect("send header");
    let data = Bytes::from(random_bytes(len, 77));
    let mut off = 0;
    while off < len {
        let end = (off + MIB).min(len);
        tx.send(chunk(data.slice(off..end))).await.expect("send");
        off = end;
    }
    (tx, call)
}

/// Writes shards 0 and 1 of stripe 0 of an object that was never committed, created a minute
/// ago: what a gateway that died while fanning the stripe out leaves behind. Fewer than k
/// shards, so the stripe can never be rebuilt.
async fn plant_short_stripe(fleet: &TestFleet) {
    let map = control(fleet, 0)
        .await
        .get_cluster_map(pb::GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner();
    let pool = &map.pools[0];
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        - 60_000;
    let object_id = new_object_id(B, "never-committed", created);
    let pg = stripe_pg(&object_id, 0, pool.pg_count);
    let members = &pool.pgs[pg as usize].members;
    for (pos, id) in members.iter().enumerate().take(2) {
        let member = map
            .members
            .iter()
            .find(|m| &m.id == id)
            .expect("member in map");
        let data = Bytes::from(random_bytes(1000, pos as u64));
        let header = pb::ShardHeader {
            id: Some(pb::ShardId {
                pool: pool.name.clone(),
                pg,
                object_id: Bytes::copy_from_slice(&object_id),
                stripe: 0,
                shard: pos as u32,
            }),
            length: data.len() as u64,
            blake3: Bytes::copy_from_slice(blake3::hash(&data).as_bytes()),
        };
        let mut c = potluck_e2e::shard_client(format!("http://{}", member.endpoint))
            .await
            .expect("connect shards");
        c.put_shard(tokio_stream::iter(vec![pb::PutShardRequest {
            epoch: map.epoch,
            header: Some(header),
            data,
        }]))
        .await
        .expect("plant a shard");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_garbage_is_collected() {
    let mut fleet = start_fleet(&[
        "--gc-delay-secs",
        "0",
        "--orphan-grace-secs",
        "4",
        "--recovery-interval-secs",
        "1",
    ])
    .await;
    let mut c = object_client(&fleet.endpoint(1)).await;
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, size) in [9 * MIB + 77, 4 * MIB, MIB - 1, 300_000, 5000]
        .into_iter()
        .enumerate()
    {
        let key = format!("obj-{i}");
        let data = random_bytes(size, i as u64);
        put(&mut c, B, &key, &data).await.expect("put");
        objects.push((key, data));
    }
    let baseline = needed(&objects);
    wait_for_holdings(&fleet, baseline, "after the first puts").await;

    // Overwrite one object with a smaller version and delete another: their old shards go.
    let smaller = random_bytes(2 * MIB + 5, 99);
    put(&mut c, B, "obj-0", &smaller).await.expect("overwrite");
    objects[0].1 = smaller;
    c.delete_object(pb::DeleteObjectRequest {
        bucket: B.into(),
        key: "obj-1".into(),
        pool: String::new(),
    })
    .await
    .expect("delete");
    objects.remove(1);
    let live = needed(&objects);
    assert!(live.0 < baseline.0);
    wait_for_holdings(&fleet, live, "after an overwrite and a delete").await;
    // Old versions may have been taken by the GC queue or, once older than the grace, as
    // unnamed stripes: either is right. What follows is counted from here.
    let mut base = orphans_deleted(&fleet).await;

    // A client that gives up after one full stripe: the gateway takes that stripe back itself.
    let (tx, call) = start_unfinished_put(&fleet, 2, "abandoned", STRIPE + 100_000).await;
    wait_for_holdings(
        &fleet,
        (live.0 + 6, live.1 + 6 * MIB as u64),
        "one stripe stored",
    )
    .await;
    drop(tx);
    let refused = call.await.expect("put task");
    assert_eq!(
        refused.expect_err("an unfinished put fails").code(),
        tonic::Code::Cancelled
    );
    wait_for_holdings(&fleet, live, "after the client abandoned its put").await;
    assert_eq!(
        orphans_deleted_since(&fleet, &base).await,
        0.0,
        "the gateway took its own shards back; nothing was left for the PG leaders"
    );

    // A gateway SIGKILLed after storing two stripes: nobody takes them back, and they look
    // complete; the PG leaders find that no manifest names them once they are older than
    // the grace.
    let (_tx, _call) = start_unfinished_put(&fleet, 3, "gateway-died", 2 * STRIPE + 100).await;
    wait_for_holdings(
        &fleet,
        (live.0 + 12, live.1 + 12 * MIB as u64),
        "two stripes stored",
    )
    .await;
    fleet.kill(3).await.expect("kill the gateway");
    fleet.restart(3).await.expect("restart it");
    base[3] = 0.0; // its counters started over

    // And a stripe with fewer than k shards, which can never be rebuilt.
    plant_short_stripe(&fleet).await;

    wait_for_holdings(&fleet, live, "after the abandoned stripes aged").await;
    assert_eq!(
        orphans_deleted_since(&fleet, &base).await,
        14.0,
        "the PG leaders deleted the dead gateway's 12 shards and the 2 of the short stripe"
    );
    wait_until(LIMIT, || all_pgs_clean(&fleet)).await;
    assert_objects_intact(&fleet, &objects).await;
    let gone = get(&mut c, B, "obj-1").await;
    assert_eq!(gone.expect_err("deleted").code(), tonic::Code::NotFound);
    fleet.fleet.shutdown().await.expect("shutdown");
}

/// Puts `data` into pool `pool` (the helper `put` uses the default pool).
async fn put_in_pool(fleet: &TestFleet, pool: &str, key: &str, data: &[u8]) {
    let mut c = object_client(&fleet.endpoint(0)).await;
    let data = Bytes::copy_from_slice(data);
    let mut msgs = vec![pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Header(pb::PutObjectHeader {
            bucket: B.into(),
            key: key.into(),
            pool: pool.into(),
            size: Some(data.len() as u64),
            upload: None,
        })),
    }];
    let mut off = 0;
    while off < data.len() {
        let end = (off + MIB).min(data.len());
        msgs.push(chunk(data.slice(off..end)));
        off = end;
    }
    msgs.push(finish());
    c.put_object(tokio_stream::iter(msgs))
        .await
        .unwrap_or_else(|e| panic!("put {key} into pool {pool}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pools_data_is_purged_after_the_grace() {
    let fleet = start_fleet_with(&["--orphan-grace-secs", "5"], |cfg| {
        let mut pools = cfg.effective_pools();
        let mut scratch = pools[0].clone();
        scratch.name = "scratch".into();
        pools.push(scratch);
        cfg.pools = pools;
    })
    .await;
    let kept: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("kept-{i}"), random_bytes(MIB + i * 1000, i as u64)))
        .collect();
    for (key, data) in &kept {
        put_in_pool(&fleet, "default", key, data).await;
    }
    let scratch: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("scratch-{i}"),
                random_bytes(5 * MIB + i, 50 + i as u64),
            )
        })
        .collect();
    for (key, data) in &scratch {
        put_in_pool(&fleet, "scratch", key, data).await;
    }
    let mut both = kept.clone();
    both.extend(scratch.iter().cloned());
    wait_for_holdings(&fleet, needed(&both), "both pools written").await;

    // The operator's part of deleting a StoragePool: a map without it, pushed to everyone.
    let mut map = control(&fleet, 0)
        .await
        .get_cluster_map(pb::GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner();
    map.epoch += 1;
    map.pools.retain(|p| p.name != "scratch");
    for i in 0..fleet.len() {
        control(&fleet, i)
            .await
            .apply_cluster_map(pb::ApplyClusterMapRequest {
                map: Some(map.clone()),
            })
            .await
            .expect("apply the map without the pool");
    }

    // Within the grace the data stays (a pool deleted by mistake and created again keeps it).
    assert_eq!(
        held(&fleet).await,
        needed(&both),
        "nothing is purged at once"
    );
    wait_for_holdings(&fleet, needed(&kept), "after the pool was deleted").await;
    for i in 0..fleet.len() {
        let s = status(&fleet, i).await.expect("status");
        assert_eq!(
            s.manifest_count,
            kept.len() as u64,
            "agent {i} keeps only the remaining pool's manifests"
        );
    }
    assert_objects_intact(&fleet, &kept).await;
    fleet.fleet.shutdown().await.expect("shutdown");
}
