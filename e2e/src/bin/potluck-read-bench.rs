//! `potluck-read-bench`: what one slow member does to stripe reads, with hedged reads and
//! without. Real agents on loopback; the slow member delays every shard it serves to peers
//! (`--inject-serve-delay-ms`), like a slow disk or link.
//!
//! cargo run --release -p potluck-e2e --bin potluck-read-bench [-- --quick] [--delay-ms 100]
//!
//! Three fleets of six agents (pool 4+2, 1 MiB chunks), one after another on the same machine:
//! all healthy; one member slowed with the gateway hedging (its default, `--read-hedge 1`);
//! the same slow member with hedging off (`--read-hedge 0`). In each, one 64 MiB object is put
//! through agent 0, then whole stripes (4 MiB ranged reads) are read one at a time through
//! agent 0 and timed, with the stripe cache off. Ratios are p99s against the healthy fleet's
//! p99 from the same run.

use std::time::{Duration, Instant};

use potluck_e2e::{object_client, put, random_bytes, MIB};
use potluck_proto::v1 as pb;

const BUCKET: &str = "readbench";
const STRIPE: u64 = 4 * MIB as u64;
const STRIPES: u64 = 16;
/// The slow member: not the gateway (agent 0), whose own shards are read locally.
const SLOW: usize = 5;

struct Run {
    name: &'static str,
    slow: bool,
    hedge: usize,
}

#[derive(Clone, Copy)]
struct Latencies {
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(run: &Run, reads: usize, delay_ms: u64) -> anyhow::Result<Latencies> {
    let dir = tempfile::Builder::new()
        .prefix("potluck-read-bench-")
        .tempdir()?;
    let mut cfg = potluck_e2e::fleet_config(dir.path());
    // The stripe cache off: every read must go to the shard holders, or after the first
    // pass all reads would be answered from the gateway's memory.
    cfg.extra_agent_args = vec![
        "--read-hedge".into(),
        run.hedge.to_string(),
        "--stripe-cache".into(),
        "0".into(),
    ];
    if run.slow {
        cfg.agent_options.entry(SLOW).or_default().extra_args =
            vec!["--inject-serve-delay-ms".into(), delay_ms.to_string()];
    }
    let fleet = potluck_cli::fleet::Fleet::start(cfg).await?;
    let mut c = object_client(&fleet.endpoint(0)).await;
    let data = random_bytes((STRIPES * STRIPE) as usize, 7);
    put(&mut c, BUCKET, "object", &data).await?;
    // One unmeasured pass: connections and the latency average settle.
    let mut timings = Vec::with_capacity(reads);
    for r in 0..(STRIPES as usize + reads) {
        let s = r as u64 % STRIPES;
        let t = Instant::now();
        let mut stream = c
            .get_object(pb::GetObjectRequest {
                bucket: BUCKET.into(),
                key: "object".into(),
                pool: String::new(),
                offset: Some(s * STRIPE),
                length: Some(STRIPE),
            })
            .await?
            .into_inner();
        let mut got = Vec::with_capacity(STRIPE as usize);
        while let Some(m) = stream.message().await? {
            got.extend_from_slice(&m.chunk);
        }
        let at = (s * STRIPE) as usize;
        anyhow::ensure!(
            got == data[at..at + STRIPE as usize],
            "stripe {s} read back different"
        );
        if r >= STRIPES as usize {
            timings.push(t.elapsed());
        }
    }
    fleet.shutdown().await?;
    timings.sort();
    Ok(Latencies {
        p50: percentile(&timings, 0.5),
        p99: percentile(&timings, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let delay_ms = args
        .iter()
        .position(|a| a == "--delay-ms")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100u64);
    let reads = if quick { 100 } else { 300 };
    let runs = [
        Run {
            name: "healthy, hedging on",
            slow: false,
            hedge: 1,
        },
        Run {
            name: "one member slow, hedging on",
            slow: true,
            hedge: 1,
        },
        Run {
            name: "one member slow, hedging off",
            slow: true,
            hedge: 0,
        },
    ];
    println!(
        "potluck-read-bench: 6 agents, 4+2, {reads} reads of a whole 4 MiB stripe per fleet; the slow member delays each shard it serves by {delay_ms} ms"
    );
    let mut healthy_p99 = None;
    println!("| fleet | p50 | p99 | p99 / healthy p99 |");
    println!("|---|---|---|---|");
    for run in &runs {
        let l = measure(run, reads, delay_ms).await?;
        let base = *healthy_p99.get_or_insert(l.p99);
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.2} |",
            run.name,
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!("target: p99 with one member slow and hedging on ≤ 1.5 × the healthy p99");
    Ok(())
}
