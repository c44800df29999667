//! `potluck-readers-bench`: many clients reading one popular object at once, spread over every
//! agent of the fleet, against one client reading it alone.
//!
//! cargo run --release -p potluck-e2e --bin potluck-readers-bench [-- --quick]
//!
//! One fleet of six agents over mutual TLS (pool 4+2, 1 MiB chunks, stripe cache 320 MiB so a
//! 256 MiB object fits). Each round puts a fresh object through agent 0, reads it once through
//! one agent (cold: nothing cached anywhere) and times that single reader, then starts 32
//! readers at once, reader i through agent i mod 6 (any agent is a gateway), each reading the
//! whole object, and times them all. Three ratios per round and as medians over the rounds,
//! against the targets:
//! - aggregate throughput of the 32 over the single reader's (target >= 1.5);
//! - object bytes served per agent, max over mean (target <= 1.3);
//! - shard bytes each agent fetched from holders during the 32 reads (its own store included),
//!   max over agents, per byte of the object's data shards, which is what one whole read
//!   needs (target <= 2). The stripe cache makes an agent fetch a stripe about once however
//!   many of its readers want it (k + --read-hedge shards per stripe, so about 1.25); the
//!   single reader's agent already holds the object and fetches none.

use std::time::Instant;

use potluck_e2e::{metric_matching, object_client, put, random_bytes, start_fleet_with, MIB};
use potluck_proto::v1 as pb;

const BUCKET: &str = "readers";
const READERS: usize = 32;

/// A counter of every agent, in agent order.
async fn per_agent(fleet: &potluck_e2e::TestFleet, name: &str, filter: &str) -> Vec<f64> {
    let mut out = Vec::with_capacity(fleet.len());
    for i in 0..fleet.len() {
        out.push(metric_matching(&fleet.metrics_addr(i).to_string(), name, &[filter]).await);
    }
    out
}

async fn served(fleet: &potluck_e2e::TestFleet) -> Vec<f64> {
    per_agent(
        fleet,
        "potluck_gateway_client_bytes_total",
        "operation=\"get\"",
    )
    .await
}

async fn fetched(fleet: &potluck_e2e::TestFleet) -> Vec<f64> {
    per_agent(fleet, "potluck_peer_shard_bytes_total", "direction=\"in\"").await
}

/// Shard bytes each agent read from its store to serve a peer. Unlike `fetched`, this counts
/// the fetches a gateway dropped once it could decode (hedged reads ask k+1), but not the
/// shards a gateway read from its own store.
async fn served_to_peers(fleet: &potluck_e2e::TestFleet) -> Vec<f64> {
    per_agent(fleet, "potluck_peer_shard_bytes_total", "direction=\"out\"").await
}

fn delta(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Reads the whole object through `endpoint`; its length (and BLAKE3 when `check`).
async fn read_all(endpoint: String, key: String, check: bool) -> anyhow::Result<(u64, String)> {
    let mut c = object_client(&endpoint).await;
    let mut stream = c
        .get_object(pb::GetObjectRequest {
            bucket: BUCKET.into(),
            key,
            pool: String::new(),
            offset: None,
            length: None,
        })
        .await?
        .into_inner();
    let mut n = 0u64;
    let mut h = blake3::Hasher::new();
    while let Some(m) = stream.message().await? {
        n += m.chunk.len() as u64;
        if check {
            h.update(&m.chunk);
        }
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

struct Round {
    single_mbps: f64,
    aggregate_mbps: f64,
    served_max_over_mean: f64,
    fetched_max_per_object: f64,
    holder_reads_per_object: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (size, rounds) = if quick { (64 * MIB, 1) } else { (256 * MIB, 3) };
    let fleet = start_fleet_with(&["--stripe-cache", "320MiB"], |_| {}).await;
    let endpoints = fleet.endpoints();
    println!(
        "potluck-readers-bench: 6 agents, 4+2, {} MiB object, {READERS} readers spread over the agents, {rounds} round(s)",
        size / MIB
    );
    println!("| round | single reader | {READERS} readers, aggregate | ratio | served per agent max/mean | shard bytes fetched per agent, max / object data | holders' reads for peers, fleet total / object data |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for round in 0..rounds {
        let key = format!("popular-{round}");
        let data = random_bytes(size, round as u64);
        let want = blake3::hash(&data).to_hex().to_string();
        let mut c = object_client(&endpoints[0]).await;
        put(&mut c, BUCKET, &key, &data).await?;
        drop(data);

        let gateway = endpoints[(round + 1) % endpoints.len()].clone();
        let t = Instant::now();
        let (n, hash) = read_all(gateway, key.clone(), true).await?;
        let single = t.elapsed();
        anyhow::ensure!(
            n == size as u64 && hash == want,
            "the single read came back different"
        );

        let (served0, fetched0, peers0) = (
            served(&fleet).await,
            fetched(&fleet).await,
            served_to_peers(&fleet).await,
        );
        let t = Instant::now();
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let endpoint = endpoints[i % endpoints.len()].clone();
                tokio::spawn(read_all(endpoint, key.clone(), i == 0))
            })
            .collect();
        for (i, r) in futures::future::join_all(readers)
            .await
            .into_iter()
            .enumerate()
        {
            let (n, hash) = r??;
            anyhow::ensure!(n == size as u64, "reader {i} got {n} bytes of {size}");
            anyhow::ensure!(i != 0 || hash == want, "reader 0 read different bytes");
        }
        let many = t.elapsed();
        let served = delta(&served(&fleet).await, &served0);
        let fetched = delta(&fetched(&fleet).await, &fetched0);
        let to_peers = delta(&served_to_peers(&fleet).await, &peers0);
        let mean = served.iter().sum::<f64>() / served.len() as f64;
        let max = served.iter().copied().fold(0.0, f64::max);
        let r = Round {
            single_mbps: size as f64 / single.as_secs_f64() / 1e6,
            aggregate_mbps: (READERS * size) as f64 / many.as_secs_f64() / 1e6,
            served_max_over_mean: max / mean,
            fetched_max_per_object: fetched.iter().copied().fold(0.0, f64::max) / size as f64,
            holder_reads_per_object: to_peers.iter().sum::<f64>() / size as f64,
        };
        println!(
            "| {round} | {:.0} MB/s | {:.0} MB/s | {:.2}x | {:.2} | {:.2} (per agent: {}) | {:.2} |",
            r.single_mbps,
            r.aggregate_mbps,
            r.aggregate_mbps / r.single_mbps,
            r.served_max_over_mean,
            r.fetched_max_per_object,
            fetched
                .iter()
                .map(|f| format!("{:.2}", f / size as f64))
                .collect::<Vec<_>>()
                .join(" "),
            r.holder_reads_per_object
        );
        results.push(r);
    }
    println!(
        "medians: single {:.0} MB/s, aggregate {:.0} MB/s, ratio {:.2}x (target >= 1.5), served max/mean {:.2} (target <= 1.3), fetched per agent {:.2}x the object (target <= 2), holders' reads for peers {:.2}x the object over the fleet",
        median(results.iter().map(|r| r.single_mbps).collect()),
        median(results.iter().map(|r| r.aggregate_mbps).collect()),
        median(
            results
                .iter()
                .map(|r| r.aggregate_mbps / r.single_mbps)
                .collect()
        ),
        median(results.iter().map(|r| r.served_max_over_mean).collect()),
        median(results.iter().map(|r| r.fetched_max_per_object).collect()),
        median(results.iter().map(|r| r.holder_reads_per_object).collect()),
    );
    fleet.fleet.shutdown().await?;
    Ok(())
}
