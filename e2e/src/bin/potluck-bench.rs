//! `potluck-bench`: the data-path benchmarks of the README, every figure a
//! median of repeated runs, every ratio against a baseline measured in the
//! same run on the same machine.
//!
//! cargo run --release -p potluck-e2e --bin potluck-bench [-- --quick]

use std::time::{Duration, Instant};

use bytes::Bytes;
use potluck_agent::codec::StripeCodec;
use potluck_agent::keys::ShardKey;
use potluck_agent::shard_store::ShardStore;
use potluck_e2e::*;
use potluck_proto::v1 as pb;

/// Shard 0 of stripe `stripe` of a made-up object tagged `tag`.
fn bench_key(pool: &str, pg: u32, tag: u8, stripe: u32) -> ShardKey {
    ShardKey {
        pool: pool.into(),
        pg,
        object_id: [tag; 16],
        stripe,
        shard: 0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Encode and rebuild of 4+2 stripes of 1 MiB chunks against memcpy of the
/// same data bytes, single-threaded.
fn codec_bench(reps: usize) -> (f64, f64, f64) {
    let (k, m, chunk) = (4usize, 2usize, MIB);
    let stripes = 32;
    let codec = StripeCodec::new(k as u32, m as u32).expect("codec");
    let mut bufs: Vec<Vec<u8>> = (0..stripes)
        .map(|i| {
            let mut b = random_bytes((k + m) * chunk, i as u64);
            b[k * chunk..].fill(0);
            b
        })
        .collect();
    let data_bytes = stripes * k * chunk;
    let mut memcpy = Vec::new();
    let mut encode = Vec::new();

    let mut rebuild = Vec::new();
    let mut dst = vec![0u8; k * chunk];
    for _ in 0..reps {
        let t = Instant::now();
        for b in &bufs {
            dst.copy_from_slice(&b[..k * chunk]);
            std::hint::black_box(&dst);
        }
        memcpy.push(gbps(data_bytes, t.elapsed()));
        let t = Instant::now();
        for b in bufs.iter_mut() {
            codec.encode_strided(b, chunk, chunk).expect("encode");
        }
        encode.push(gbps(data_bytes, t.elapsed()));
        // Rebuild two lost data shards of every stripe from the other four.
        let mut sets: Vec<Vec<Option<Vec<u8>>>> = bufs
            .iter()
            .map(|b| {
                b.chunks(chunk)
                    .enumerate()
                    .map(|(i, c)| (i >= 2).then(|| c.to_vec()))
                    .collect()
            })
            .collect();
        let t = Instant::now();
        for s in sets.iter_mut() {
            codec.reconstruct_data(s).expect("rebuild");
        }
        rebuild.push(gbps(data_bytes, t.elapsed()));
    }
    (median(memcpy), median(encode), median(rebuild))
}

/// In-process baseline: the same shard store, same options, 1 MiB values,
/// synced writes from six threads (one per member of the fleet).
fn rocksdb_baseline(total: usize, reps: usize) -> f64 {
    let mut rates = Vec::new();
    for r in 0..reps {
        let dir = tempfile::tempdir().expect("tmp");
        let store = std::sync::Arc::new(
            ShardStore::open(dir.path(), "bench", u64::MAX / 2).expect("store"),
        );
        let value = random_bytes(MIB, 5);
        let hash = *blake3::hash(&value).as_bytes();
        let per_thread = total / MIB / 6;
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..6u32 {
                let (store, value) = (store.clone(), &value);
                s.spawn(move || {
                    for i in 0..per_thread {
                        let key = bench_key("bench", th, r as u8, i as u32);
                        store.put_shard(&key, value, &hash).expect("put");
                    }
                });
            }
        });
        rates.push(mbps(per_thread * 6 * MIB, t.elapsed()));
    }
    median(rates)
}

async fn fleet_bench(fleet: &Fleet, size: usize, reps: usize) -> (f64, f64) {
    let eps = fleet.endpoints();
    let mut c = object_client(&eps[0]).await;
    let block = Bytes::from(random_bytes(MIB, 11));
    let (mut puts, mut gets) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let key = format!("bench/{r}");
        let mut msgs = vec![header("bench", &key)];
        msgs.extend((0..size / MIB).map(|_| chunk(block.clone())));
        msgs.push(finish());
        let t = Instant::now();
        c.put_object(tokio_stream::iter(msgs)).await.expect("put");
        puts.push(mbps(size, t.elapsed()));
        let t = Instant::now();
        let mut stream = c
            .get_object(pb::GetObjectRequest {
                bucket: "bench".into(),
                key,
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner();
        let mut n = 0;
        while let Some(m) = stream.message().await.expect("get stream") {
            n += m.chunk.len();
        }
        assert_eq!(n, size);
        gets.push(mbps(size, t.elapsed()));
    }
    (median(puts), median(gets))
}

/// Latency of one 256 KiB PutShard to a peer over gRPC, synced on its disk.
async fn shard_put_latency(fleet: &Fleet, n: usize) -> (f64, f64) {
    let ep = fleet.endpoints()[1].clone();
    let channel = potluck_e2e::try_channel(&ep).await.expect("connect");
    let mut c = pb::shard_service_client::ShardServiceClient::new(channel.clone())
        .max_encoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES);
    let mut ctl = pb::agent_control_client::AgentControlClient::new(channel);
    let epoch = ctl
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .epoch;
    let data = Bytes::from(random_bytes(256 * 1024, 3));
    let hash = Bytes::copy_from_slice(blake3::hash(&data).as_bytes());
    let mut lat = Vec::new();
    for i in 0..n {
        let key = bench_key("default", 0, 0xEE, i as u32);
        let msgs = potluck_agent::peers::put_shard_messages(
            epoch,
            pb::ShardHeader {
                id: Some(key.to_proto()),
                length: data.len() as u64,
                blake3: hash.clone(),
            },
            data.clone(),
        );
        let t = Instant::now();
        c.put_shard(tokio_stream::iter(msgs))
            .await
            .expect("put shard");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// The same 256 KiB synced write straight into the store, no gRPC: tells how
/// much of the shard put latency is the disk.
fn store_put_latency(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let store = ShardStore::open(dir.path(), "bench", u64::MAX / 2).expect("store");
    let data = random_bytes(256 * 1024, 4);
    let hash = *blake3::hash(&data).as_bytes();
    let mut lat = Vec::new();
    for i in 0..n {
        let key = bench_key("bench", 0, 1, i as u32);
        let t = Instant::now();
        store.put_shard(&key, &data, &hash).expect("put");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(lat)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 5 };
    let size = if quick { 64 * MIB } else { 256 * MIB };

    let (memcpy, encode, rebuild) = tokio::task::spawn_blocking(move || codec_bench(reps))
        .await
        .expect("codec bench");
    let baseline = tokio::task::spawn_blocking(move || rocksdb_baseline(size * 3 / 2, reps))
        .await
        .expect("rocksdb bench");
    let store_p50 =
        tokio::task::spawn_blocking(move || store_put_latency(if quick { 100 } else { 400 }))
            .await
            .expect("store latency");
    let fleet = start_fleet(&[]).await;
    let (put, get) = fleet_bench(&fleet, size, reps).await;
    let (p50, p99) = shard_put_latency(&fleet, if quick { 100 } else { 400 }).await;

    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| RS 4+2 encode, 1 MiB chunks, 1 thread | {encode:.2} GB/s | memcpy {memcpy:.2} GB/s | {:.0}% | ≥ 70% |",
        encode / memcpy * 100.0
    );
    println!(
        "| RS 4+2 rebuild of 2 lost data shards | {rebuild:.2} GB/s | memcpy {memcpy:.2} GB/s | {:.0}% | — |",
        rebuild / memcpy * 100.0
    );
    println!(
        "| fleet put, {} MiB, 6 agents | {put:.0} MB/s | in-process RocksDB put of 1.5× bytes: {baseline:.0} MB/s | {:.0}% | ≥ 50% |",
        size / MIB,
        put * 1.5 / baseline * 100.0
    );
    println!(
        "| fleet get, {} MiB, healthy | {get:.0} MB/s | fleet put {put:.0} MB/s | {:.2}× | ≥ 1× |",
        size / MIB,
        get / put
    );
    println!(
        "| 256 KiB shard put over gRPC, synced | median {p50:.2} ms, p99 {p99:.2} ms | same write in-process: median {store_p50:.2} ms | {:.2}× | median < 1 ms |",
        p50 / store_p50
    );
}
