//! Scrub against real agents: bytes flipped in a member's blob files on disk are found by a
//! scrub pass (on demand through AgentControl, or on the schedule), rebuilt from the other
//! members' shards and rewritten, so the member serves its shards again and every object
//! reads back identical.

use std::time::Duration;

use pb::agent_control_client::AgentControlClient;
use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tonic::Code;

const B: &str = "scrub";
const LIMIT: Duration = Duration::from_secs(60);

/// Puts objects of mixed sizes (several stripes, one, less than a chunk) through `gateway`.
async fn put_objects(fleet: &TestFleet, gateway: usize) -> Vec<(String, Vec<u8>)> {
    let mut c = object_client(&fleet.endpoint(gateway)).await;
    let mut objects = Vec::new();
    for (i, size) in [9 * MIB + 77, 4 * MIB, MIB - 1, 300_000, 5000]
        .into_iter()
        .enumerate()
    {
        let key = format!("obj-{i}");
        let data = random_bytes(size, i as u64 + 100);
        put(&mut c, B, &key, &data).await.expect("put");
        objects.push((key, data));
    }
    objects
}

async fn assert_objects_intact(fleet: &TestFleet, objects: &[(String, Vec<u8>)]) {
    for gateway in [0, 3] {
        let mut c = object_client(&fleet.endpoint(gateway)).await;
        for (key, data) in objects {
            let got = get(&mut c, B, key)
                .await
                .unwrap_or_else(|e| panic!("get {key} via agent {gateway}: {e}"));
            assert!(got == *data, "{key} differs via agent {gateway}");
        }
    }
}

/// Stops agent `i` cleanly (its memtables flush into blob files), flips a byte every 64 KiB
/// of every blob file, and starts it again on the same disk.
async fn corrupt_blob_files(fleet: &mut TestFleet, i: usize) {
    fleet.stop(i).await.expect("stop");
    let mut flipped = 0;
    for path in files_under(fleet.data_dir(i)) {
        if path.extension().is_some_and(|e| e == "blob") {
            let mut bytes = std::fs::read(&path).expect("read blob");
            let mut at = 4096;
            while at < bytes.len() {
                bytes[at] ^= 0xFF;
                at += 64 * 1024;
                flipped += 1;
            }
            std::fs::write(&path, bytes).expect("write blob");
        }
    }
    assert!(flipped > 0, "agent {i} holds shard data in blob files");
    fleet.restart(i).await.expect("restart");
}

async fn control(fleet: &TestFleet, i: usize) -> AgentControlClient<tonic::transport::Channel> {
    potluck_e2e::control_client(fleet.endpoint(i))
        .await
        .expect("connect control")
}

/// An on-demand scrub of every pool on agent `i`, retried while a scheduled pass holds the
/// scrubber (ABORTED), until `LIMIT`.
async fn scrub(fleet: &TestFleet, i: usize) -> pb::ScrubResponse {
    let mut c = control(fleet, i).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match c.scrub(pb::ScrubRequest::default()).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == Code::Aborted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("scrub on agent {i}: {s}"),
        }
    }
}

/// Every shard agent `i` holds, as listed from its shard records.
async fn shards_of(fleet: &TestFleet, i: usize) -> (u64, Vec<pb::ShardId>) {
    let map = control(fleet, i)
        .await
        .get_cluster_map(pb::GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner();
    let mut c = potluck_e2e::shard_client(fleet.endpoint(i))
        .await
        .expect("connect shards");
    let mut out = Vec::new();
    for pool in &map.pools {
        for pg in 0..pool.pg_count {
            let resp = c
                .list_shards(pb::ListShardsRequest {
                    epoch: map.epoch,
                    pool: pool.name.clone(),
                    pg,
                    after: None,
                    limit: 10_000,
                })
                .await
                .expect("list shards")
                .into_inner();
            assert!(!resp.truncated);
            out.extend(resp.shards.into_iter().filter_map(|h| h.id));
        }
    }
    (map.epoch, out)
}

/// Reads one shard straight from agent `i`: its bytes, or the status it failed with.
async fn read_shard(
    fleet: &TestFleet,
    i: usize,
    epoch: u64,
    id: &pb::ShardId,
) -> Result<Vec<u8>, tonic::Status> {
    let mut c = potluck_e2e::shard_client(fleet.endpoint(i))
        .await
        .expect("connect shards")
        .max_decoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES);
    let mut stream = c
        .get_shard(pb::GetShardRequest {
            epoch,
            id: Some(id.clone()),
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    let mut hash = None;
    while let Some(m) = stream.message().await? {
        if let Some(h) = m.header {
            hash = Some(h.blake3);
        }
        data.extend_from_slice(&m.data);
    }
    assert_eq!(
        hash.as_deref(),
        Some(blake3::hash(&data).as_bytes().as_slice()),
        "a served shard matches the hash in its header"
    );
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_scrub_finds_and_repairs_flipped_bytes() {
    let mut fleet = start_fleet(&[]).await;
    let objects = put_objects(&fleet, 1).await;
    corrupt_blob_files(&mut fleet, 0).await;

    // Which of agent 0's shards are damaged now: those it refuses to serve.
    let (epoch, held) = shards_of(&fleet, 0).await;
    let mut damaged = Vec::new();
    for id in &held {
        if let Err(s) = read_shard(&fleet, 0, epoch, id).await {
            assert_eq!(
                s.code(),
                Code::DataLoss,
                "a damaged shard reads as DATA_LOSS: {s}"
            );
            damaged.push(id.clone());
        }
    }
    assert!(
        !damaged.is_empty(),
        "flipped bytes damaged some of agent 0's shards"
    );

    let metrics = fleet.metrics_addr(0).to_string();
    let first = scrub(&fleet, 0).await;
    eprintln!("first scrub: {first:?}");
    assert_eq!(first.shards_checked, held.len() as u64);
    assert_eq!(first.corrupt, damaged.len() as u64, "{:?}", first.problems);
    assert_eq!(first.repaired, first.corrupt, "{:?}", first.problems);
    assert_eq!((first.not_repairable, first.stray_deleted), (0, 0));
    assert!(first.problems.is_empty());
    assert!(first.finished_unix_ms >= first.started_unix_ms);
    let errors = metric(&metrics, "potluck_scrub_errors_total", "").await;
    let repaired = metric(&metrics, "potluck_scrub_repaired_total", "").await;
    assert_eq!(errors, first.corrupt as f64);
    assert_eq!(repaired, first.repaired as f64);
    assert!(metric(&metrics, "potluck_scrub_last_pass_timestamp_seconds", "").await > 0.0);

    let second = scrub(&fleet, 0).await;
    assert_eq!(second.corrupt, 0, "{second:?}");
    assert_eq!(second.shards_checked, held.len() as u64);
    assert_eq!(
        metric(&metrics, "potluck_scrub_shards_checked_total", "").await,
        2.0 * held.len() as f64
    );

    for id in &damaged {
        read_shard(&fleet, 0, epoch, id)
            .await
            .unwrap_or_else(|s| panic!("repaired shard {id:?} still fails: {s}"));
    }
    assert_objects_intact(&fleet, &objects).await;

    // A pool the map does not have is named as such, not silently scrubbed.
    let unknown = control(&fleet, 0)
        .await
        .scrub(pb::ScrubRequest {
            pool: "no-such-pool".into(),
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_scrub_runs_on_its_interval_and_repairs() {
    let mut fleet = start_fleet(&["--scrub-interval-secs", "1"]).await;
    let objects = put_objects(&fleet, 2).await;
    let metrics = fleet.metrics_addr(4).to_string();
    let gauge = "potluck_scrub_last_pass_timestamp_seconds";
    let first = metric(&metrics, gauge, "").await;
    wait_until(LIMIT, || {
        let m = metrics.clone();
        async move { metric(&m, gauge, "").await > first }
    })
    .await;
    // A pass after the puts has read this member's shards.
    wait_until(LIMIT, || {
        let m = metrics.clone();
        async move { metric(&m, "potluck_scrub_bytes_checked_total", "").await > 0.0 }
    })
    .await;

    corrupt_blob_files(&mut fleet, 4).await;
    let metrics = fleet.metrics_addr(4).to_string();
    wait_until(LIMIT, || {
        let m = metrics.clone();
        async move { metric(&m, "potluck_scrub_errors_total", "").await > 0.0 }
    })
    .await;
    // The pass that found them has ended once the gauge moves past its value now (passes
    // never overlap).
    let seen = metric(&metrics, gauge, "").await;
    wait_until(LIMIT, || {
        let m = metrics.clone();
        async move { metric(&m, gauge, "").await > seen }
    })
    .await;
    let errors = metric(&metrics, "potluck_scrub_errors_total", "").await;
    let repaired = metric(&metrics, "potluck_scrub_repaired_total", "").await;
    assert_eq!(repaired, errors, "every corrupt shard found was repaired");
    assert_eq!(
        metric(&metrics, "potluck_scrub_unrepaired_total", "").await,
        0.0
    );
    let (epoch, held) = shards_of(&fleet, 4).await;
    for id in &held {
        read_shard(&fleet, 4, epoch, id)
            .await
            .unwrap_or_else(|s| panic!("shard {id:?} still fails after the scheduled pass: {s}"));
    }
    assert_objects_intact(&fleet, &objects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_while_one_runs_is_refused() {
    // No schedule, and a bandwidth that makes a pass over ~5 MiB of shards take seconds.
    let fleet = start_fleet(&["--scrub-interval-secs", "0", "--scrub-bandwidth", "1MiB"]).await;
    put_objects(&fleet, 0).await;
    let endpoint = fleet.endpoint(5);
    let running = tokio::spawn(async move {
        let mut c = potluck_e2e::control_client(endpoint)
            .await
            .expect("connect");
        c.scrub(pb::ScrubRequest::default()).await
    });
    let metrics = fleet.metrics_addr(5).to_string();
    wait_until(LIMIT, || {
        let m = metrics.clone();
        async move { metric(&m, "potluck_scrub_shards_checked_total", "").await > 0.0 }
    })
    .await;
    let refused = control(&fleet, 5)
        .await
        .scrub(pb::ScrubRequest::default())
        .await
        .expect_err("a second scrub while one runs");
    assert_eq!(refused.code(), Code::Aborted, "{refused}");
    assert!(refused.message().contains("already running"), "{refused}");
    let done = running
        .await
        .expect("join")
        .expect("first scrub")
        .into_inner();
    assert!(done.shards_checked > 0);
    assert_eq!(done.corrupt, 0);
    // With the schedule off no full pass ran before; the on-demand one set the gauge.
    assert!(metric(&metrics, "potluck_scrub_last_pass_timestamp_seconds", "").await > 0.0);
}
