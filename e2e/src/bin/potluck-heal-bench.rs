//! `potluck-heal-bench`: how fast the fleet heals after losing a member, and what healing costs
//! clients. Real processes throughout: etcd + kube-apiserver, the operator, and agents in
//! Kubernetes mode; members die of SIGKILL. Every ratio is against a baseline measured in the
//! same run on the same machine.
//!
//! cargo run --release -p potluck-e2e --bin potluck-heal-bench [-- --quick]
//!     [--recovery-bandwidth 64MiB] [--keep]
//!
//! The run: start the control plane and eight agents (pool 4+2); fill the pool through the
//! agents (the put rate); kill one member with no client load and time its recovery (the
//! rebuild rate, and kill → first recovery write); run a put/get load on the seven survivors
//! (the healthy client rate); kill a second member and run the same load from the moment its
//! re-placement map appears until the pool is Healthy again (the client rate during recovery);
//! run the load once more after the heal (a drift check); read every filled object back.
//!
//! Eight members, not six: with 4+2, a member's positions can only be re-placed while six
//! failure domains remain, so two Outs in a row need eight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use potluck_api::{PoolHealth, StoragePool, StoragePoolSpec};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{header, object_client, random_bytes, MIB};
use potluck_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POOL: &str = "default";
const BUCKET: &str = "heal";
/// How often agent metrics are sampled after a kill: the resolution of the recovery timings.
const SAMPLE: Duration = Duration::from_millis(50);
/// How often the StoragePool is read while waiting for a map or for health.
const POOL_POLL: Duration = Duration::from_millis(100);
/// Longest wait for any one stage (a map, a heal).
const LIMIT: Duration = Duration::from_secs(150);

struct Settings {
    quick: bool,
    agents: usize,
    k: u32,
    m: u32,
    pg_count: u32,
    chunk: usize,
    object: usize,
    fill: usize,
    workers: usize,
    window: Duration,
    lease_secs: u64,
    down_after_secs: u64,
    out_after_secs: u64,
    recovery_bandwidth: Option<String>,
    keep: bool,
}

impl Settings {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let keep = args.iter().any(|a| a == "--keep");
        let recovery_bandwidth = args
            .iter()
            .position(|a| a == "--recovery-bandwidth")
            .map(|i| {
                args.get(i + 1)
                    .cloned()
                    .unwrap_or_else(|| panic!("--recovery-bandwidth needs a value, e.g. 256MiB"))
            });
        for a in &args {
            let known = ["--quick", "--keep", "--recovery-bandwidth"].contains(&a.as_str())
                || Some(a) == recovery_bandwidth.as_ref();
            assert!(
                known,
                "unknown argument {a:?}; use --quick, --keep, --recovery-bandwidth SIZE"
            );
        }
        Self {
            quick,
            agents: 8,
            k: 4,
            m: 2,
            pg_count: 32,
            chunk: MIB,
            object: 4 * MIB,
            fill: if quick { 256 * MIB } else { 1024 * MIB },
            workers: 4,
            window: Duration::from_secs(if quick { 3 } else { 8 }),
            lease_secs: 1,
            down_after_secs: 2,
            out_after_secs: 4,
            recovery_bandwidth,
            keep,
        }
    }
}

fn mbps(bytes: f64, secs: f64) -> f64 {
    bytes / secs / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn status_of(pool: &StoragePool) -> potluck_api::StoragePoolStatus {
    pool.status.clone().unwrap_or_default()
}

/// A few distinct object bodies with their hashes; object `n` uses body `n % len`.
struct Payloads {
    bodies: Vec<(Bytes, Bytes)>,
}

impl Payloads {
    fn new(size: usize, count: usize) -> Self {
        let bodies = (0..count)
            .map(|i| {
                let data = Bytes::from(random_bytes(size, 1000 + i as u64));
                let hash = Bytes::copy_from_slice(blake3::hash(&data).as_bytes());
                (data, hash)
            })
            .collect();
        Self { bodies }
    }

    fn body(&self, n: usize) -> &(Bytes, Bytes) {
        &self.bodies[n % self.bodies.len()]
    }
}

type ObjClient = pb::object_service_client::ObjectServiceClient<tonic::transport::Channel>;

async fn put_object(
    c: &mut ObjClient,
    key: &str,
    (data, hash): &(Bytes, Bytes),
) -> Result<(), tonic::Status> {
    let mut msgs = vec![header(BUCKET, key)];
    let mut off = 0;
    while off < data.len() {
        let end = (off + MIB).min(data.len());
        msgs.push(pb::PutObjectRequest {
            body: Some(pb::put_object_request::Body::Chunk(data.slice(off..end))),
        });
        off = end;
    }
    msgs.push(pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Finish(pb::PutObjectFinish {
            size: Some(data.len() as u64),
            blake3: hash.clone(),
        })),
    });
    c.put_object(tokio_stream::iter(msgs)).await.map(|_| ())
}

/// Reads an object and checks it against the body it was written with.
async fn get_object(
    c: &mut ObjClient,
    key: &str,
    (data, _): &(Bytes, Bytes),
) -> Result<(), tonic::Status> {
    let mut stream = c
        .get_object(pb::GetObjectRequest {
            bucket: BUCKET.into(),
            key: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut off = 0usize;
    while let Some(m) = stream.message().await? {
        let end = off + m.chunk.len();
        if end > data.len() || m.chunk[..] != data[off..end] {
            return Err(tonic::Status::data_loss(format!("{key} differs at {off}")));
        }
        off = end;
    }
    if off != data.len() {
        return Err(tonic::Status::data_loss(format!(
            "{key}: {off} of {} bytes",
            data.len()
        )));
    }
    Ok(())
}

/// Puts objects `fill/<n>` for `n` in `range`, `workers` at a time, each worker through its own
/// agent. Returns the seconds taken.
async fn fill(
    endpoints: &[String],
    payloads: &Arc<Payloads>,
    range: std::ops::Range<usize>,
    workers: usize,
) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let ep = endpoints[w % endpoints.len()].clone();
        let payloads = payloads.clone();
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = object_client(&ep).await;
            for n in range.filter(|n| n % workers == w) {
                put_object(&mut c, &format!("fill/{n}"), payloads.body(n))
                    .await
                    .unwrap_or_else(|e| panic!("fill/{n} through {ep}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill worker");
    }
    t.elapsed().as_secs_f64()
}

/// What a client load achieved over its window.
#[derive(Clone, Copy, Default)]
struct Load {
    put_bytes: f64,
    get_bytes: f64,
    errors: u64,
    secs: f64,
}

impl Load {
    fn put_rate(&self) -> f64 {
        mbps(self.put_bytes, self.secs)
    }
    fn get_rate(&self) -> f64 {
        mbps(self.get_bytes, self.secs)
    }
}

/// `workers` clients, each through its own agent, each alternating a put of a new object and a
/// get (checked) of a filled one, until `stop`. The window ends when the last worker has
/// finished its operation in flight; only completed operations count.
fn start_load(
    endpoints: &[String],
    payloads: &Arc<Payloads>,
    filled: usize,
    tag: &'static str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    let endpoints = endpoints.to_vec();
    let payloads = payloads.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let ep = endpoints[w % endpoints.len()].clone();
            let payloads = payloads.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = object_client(&ep).await;
                let mut load = Load::default();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let n = w * 1_000_003 + i;
                    match put_object(&mut c, &format!("load/{tag}/{w}/{i}"), payloads.body(n)).await
                    {
                        Ok(()) => load.put_bytes += payloads.body(n).0.len() as f64,
                        Err(e) => {
                            eprintln!("  load put through {ep} failed: {e}");
                            load.errors += 1;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let f = (w * 7919 + i * 31) % filled;
                    match get_object(&mut c, &format!("fill/{f}"), payloads.body(f)).await {
                        Ok(()) => load.get_bytes += payloads.body(f).0.len() as f64,
                        Err(e) => {
                            eprintln!("  load get through {ep} failed: {e}");
                            load.errors += 1;
                        }
                    }
                    i += 1;
                }
                load
            }));
        }
        let mut total = Load::default();
        for t in tasks {
            let l = t.await.expect("load worker");
            total.put_bytes += l.put_bytes;
            total.get_bytes += l.get_bytes;
            total.errors += l.errors;
        }
        total.secs = t.elapsed().as_secs_f64();
        total
    })
}

async fn timed_load(
    endpoints: &[String],
    payloads: &Arc<Payloads>,
    filled: usize,
    tag: &'static str,
    s: &Settings,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let task = start_load(endpoints, payloads, filled, tag, s.workers, stop.clone());
    tokio::time::sleep(s.window).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("load")
}

/// Values of the named metrics (summed over label sets) from one agent's `/metrics`, in one
/// request.
async fn scrape(addr: &str, names: &[&str]) -> Option<Vec<f64>> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let mut out = vec![0.0; names.len()];
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        for (i, name) in names.iter().enumerate() {
            if line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']) {
                out[i] += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    Some(out)
}

const SHARDS: &str = "potluck_recovery_shards_total";
const BYTES: &str = "potluck_recovery_bytes_total";
const EPOCH: &str = "potluck_cluster_map_epoch";

/// One reading of the live agents after a kill, `t` seconds after it.
#[derive(Clone, Copy)]
struct Sample {
    t: f64,
    shards: f64,
    bytes: f64,
    /// Highest map epoch any live agent has applied.
    epoch: f64,
}

async fn sample(addrs: &[String], t0: Instant) -> Sample {
    let (mut shards, mut bytes, mut epoch) = (0.0, 0.0, 0.0f64);
    for a in addrs {
        if let Some(v) = scrape(a, &[SHARDS, BYTES, EPOCH]).await {
            shards += v[0];
            bytes += v[1];
            epoch = epoch.max(v[2]);
        }
    }
    Sample {
        t: t0.elapsed().as_secs_f64(),
        shards,
        bytes,
        epoch,
    }
}

/// Samples the live agents every [`SAMPLE`] until `stop`, then once more.
fn start_monitor(
    addrs: Vec<String>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let next = tokio::time::Instant::now() + SAMPLE;
            out.push(sample(&addrs, t0).await);
            tokio::time::sleep_until(next).await;
        }
        out.push(sample(&addrs, t0).await);
        out
    })
}

/// One member's death and the pool's recovery, times in seconds after the SIGKILL.
struct Heal {
    victim: String,
    /// Shard bytes the victim held when it died.
    lost_bytes: f64,
    /// The StoragePool first shows a newer epoch (the member marked Down).
    down_status: f64,
    /// The StoragePool shows the map without the member (Out, positions re-placed).
    out_status: f64,
    out_epoch: i64,
    /// A live agent has applied that map (from its metrics).
    out_applied: Option<f64>,
    first_write: Option<f64>,
    last_write: Option<f64>,
    /// The StoragePool is Healthy at that epoch or later.
    healthy: f64,
    rebuilt_bytes: f64,
    rebuilt_shards: f64,
    load: Option<Load>,
}

impl Heal {
    /// The rebuild window: from the re-placement map (whichever shows it first, an agent or
    /// the pool's status) until the pool is Healthy.
    fn start(&self) -> f64 {
        self.out_applied
            .map_or(self.out_status, |a| a.min(self.out_status))
    }
    fn rebuild_rate(&self) -> f64 {
        mbps(self.rebuilt_bytes, self.healthy - self.start())
    }
    /// Rebuilt bytes over the span in which recovery writes were seen (first to last sample
    /// that rose, plus one sample interval).
    fn active_rate(&self) -> Option<f64> {
        let (a, b) = (self.first_write?, self.last_write?);
        Some(mbps(self.rebuilt_bytes, b - a + SAMPLE.as_secs_f64()))
    }
}

fn endpoints(cluster: &DevCluster, live: &[usize]) -> Vec<String> {
    live.iter().map(|i| cluster.fleet.endpoint(*i)).collect()
}

async fn pool(cluster: &DevCluster) -> potluck_api::StoragePoolStatus {
    match cluster.pools().get(POOL).await {
        Ok(p) => status_of(&p),
        Err(e) => panic!("reading StoragePool {POOL}: {e}"),
    }
}

/// Kills `victim` and waits until the pool is Healthy without it; with `load`, runs the client
/// load from the moment the map without the member shows until Healthy.
async fn heal(
    cluster: &mut DevCluster,
    victim: usize,
    live: &mut Vec<usize>,
    load: Option<(&Arc<Payloads>, usize, &Settings)>,
) -> Heal {
    let before = pool(cluster).await.map_epoch;
    let victim_id = cluster.fleet.id(victim).to_string();
    let lost_bytes = scrape(
        &cluster.fleet.metrics_addr(victim).to_string(),
        &["potluck_store_shard_bytes"],
    )
    .await
    .map_or(0.0, |v| v[0]);
    live.retain(|i| *i != victim);
    let addrs: Vec<String> = live
        .iter()
        .map(|i| cluster.fleet.metrics_addr(*i).to_string())
        .collect();
    let endpoints: Vec<String> = live.iter().map(|i| cluster.fleet.endpoint(*i)).collect();
    let t0 = Instant::now();
    let base = sample(&addrs, t0).await;

    let t0 = Instant::now();
    cluster.fleet.kill(victim).await.expect("kill");
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = start_monitor(addrs, t0, stop_monitor.clone());

    let deadline = Instant::now() + LIMIT;
    let mut down_status = None;
    let (out_status, out_epoch) = loop {
        let s = pool(cluster).await;
        let t = t0.elapsed().as_secs_f64();
        if s.map_epoch > before && down_status.is_none() {
            down_status = Some(t);
        }
        if s.map_epoch > before && s.members as usize == live.len() {
            break (t, s.map_epoch);
        }
        assert!(
            Instant::now() < deadline,
            "{victim_id} not out of the map within {LIMIT:?}; last status {s:?}"
        );
        tokio::time::sleep(POOL_POLL).await;
    };
    let stop_load = Arc::new(AtomicBool::new(false));
    let load_task = load.map(|(payloads, filled, s)| {
        start_load(
            &endpoints,
            payloads,
            filled,
            "recovery",
            s.workers,
            stop_load.clone(),
        )
    });
    let healthy = loop {
        let s = pool(cluster).await;
        if s.map_epoch >= out_epoch
            && s.members as usize == live.len()
            && s.health == Some(PoolHealth::Healthy)
        {
            break t0.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "the pool not Healthy within {LIMIT:?} of {victim_id}'s death; last status {s:?}"
        );
        tokio::time::sleep(POOL_POLL).await;
    };
    stop_load.store(true, Ordering::Relaxed);
    let load = match load_task {
        Some(t) => Some(t.await.expect("load")),
        None => None,
    };
    stop_monitor.store(true, Ordering::Relaxed);
    let samples = monitor.await.expect("monitor");
    let last = *samples.last().expect("a sample");

    let first_write = samples.iter().find(|s| s.shards > base.shards).map(|s| s.t);
    let last_write = samples
        .windows(2)
        .rev()
        .find(|w| w[1].bytes > w[0].bytes)
        .map(|w| w[1].t)
        .or(first_write);
    let out_applied = samples
        .iter()
        .find(|s| s.epoch >= out_epoch as f64)
        .map(|s| s.t);
    Heal {
        victim: victim_id,
        lost_bytes,
        down_status: down_status.unwrap_or(out_status),
        out_status,
        out_epoch,
        out_applied,
        first_write,
        last_write,
        healthy,
        rebuilt_bytes: last.bytes - base.bytes,
        rebuilt_shards: last.shards - base.shards,
        load,
    }
}

fn print_heal(name: &str, h: &Heal) {
    let opt = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.2} s"));
    println!(
        "- {name} ({}): Down in status {:.2} s; map without it (epoch {}) in status {:.2} s, applied by an agent {}; first recovery write {}; last {}; Healthy {:.2} s. Rebuilt {:.1} MiB in {} shards (it held {:.1} MiB); {:.0} MB/s over the re-placement → Healthy window, {} while writes were seen.",
        h.victim,
        h.down_status,
        h.out_epoch,
        h.out_status,
        opt(h.out_applied),
        opt(h.first_write),
        opt(h.last_write),
        h.healthy,
        h.rebuilt_bytes / MIB as f64,
        h.rebuilt_shards,
        h.lost_bytes / MIB as f64,
        h.rebuild_rate(),
        h.active_rate()
            .map_or("—".to_string(), |r| format!("{r:.0} MB/s")),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Settings::from_args();
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("potluck-heal-bench-")
        .tempdir()
        .expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));

    let mut fleet = potluck_e2e::fleet_config(dir.path().join("fleet"));
    fleet.agents = s.agents;
    fleet.k = s.k;
    fleet.m = s.m;
    fleet.chunk_size = s.chunk as u64;
    fleet.pg_count = s.pg_count;
    if let Some(bw) = &s.recovery_bandwidth {
        fleet.extra_agent_args = vec!["--recovery-bandwidth".into(), bw.clone()];
    }
    let mut spec = StoragePoolSpec::with_defaults(s.k as i32, s.m as i32);
    spec.pg_count = s.pg_count as i32;
    spec.chunk_size = s.chunk as i64;
    spec.down_after = format!("{}s", s.down_after_secs);
    spec.out_after = format!("{}s", s.out_after_secs);
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = s.lease_secs;
    cfg.pool = Some((POOL.into(), spec));
    cfg.stage_timeout = LIMIT;
    let mut cluster = match DevCluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => panic!(
            "dev cluster did not start: {e}\n{}",
            cp.log_tail("kube-apiserver", 20)
        ),
    };
    eprintln!(
        "cluster up in {:.1} s; fleet dir {}",
        started.elapsed().as_secs_f64(),
        cluster.fleet.config().dir.display()
    );

    let payloads = Arc::new(Payloads::new(s.object, 8));
    let mut live: Vec<usize> = (0..s.agents).collect();

    // The put rate: the fill, in three rounds.
    let objects = s.fill / s.object;
    let mut fill_rates = Vec::new();
    for r in 0..3 {
        let range = objects * r / 3..objects * (r + 1) / 3;
        let bytes = (range.len() * s.object) as f64;
        let secs = fill(&endpoints(&cluster, &live), &payloads, range, s.workers).await;
        fill_rates.push(mbps(bytes, secs));
    }
    let put_rate = median(fill_rates.clone());
    eprintln!("filled {} MiB: {fill_rates:.0?} MB/s", s.fill / MIB);

    // Member 1 dies with no client load: the rebuild rate and the time to the first write.
    let quiet = heal(&mut cluster, s.agents - 1, &mut live, None).await;
    eprintln!(
        "first heal done at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The client load on the healthy survivors, then member 2 dies under the same load.
    let healthy_load = timed_load(
        &endpoints(&cluster, &live),
        &payloads,
        objects,
        "before",
        &s,
    )
    .await;
    let loaded = heal(
        &mut cluster,
        s.agents - 2,
        &mut live,
        Some((&payloads, objects, &s)),
    )
    .await;
    let during = loaded.load.expect("load during recovery");
    let stray_addrs: Vec<String> = live
        .iter()
        .map(|i| cluster.fleet.metrics_addr(*i).to_string())
        .collect();
    let housekeeping = |addrs: Vec<String>| async move {
        let mut sum = [0.0; 2];
        for a in &addrs {
            if let Some(v) = scrape(
                a,
                &[
                    "potluck_recovery_strays_deleted_total",
                    "potluck_store_pending_compaction_bytes",
                ],
            )
            .await
            {
                sum[0] += v[0];
                sum[1] += v[1];
            }
        }
        sum
    };
    let before_after = housekeeping(stray_addrs.clone()).await;
    let after_load = timed_load(&endpoints(&cluster, &live), &payloads, objects, "after", &s).await;

    let after_after = housekeeping(stray_addrs).await;

    // Nothing was lost: every filled object reads back identical.
    let eps = endpoints(&cluster, &live);
    for n in 0..objects {
        let mut c = object_client(&eps[n % eps.len()]).await;
        get_object(&mut c, &format!("fill/{n}"), payloads.body(n))
            .await
            .unwrap_or_else(|e| panic!("fill/{n} after two members died: {e}"));
    }
    let total = started.elapsed().as_secs_f64();

    let bandwidth = s
        .recovery_bandwidth
        .clone()
        .unwrap_or_else(|| "64MiB (default)".into());
    let first = [quiet.first_write, loaded.first_write];
    let fmt_first = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.2} s"));
    let worst_first = first
        .iter()
        .map(|f| f.unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);

    println!(
        "potluck-heal-bench{}: {} members, pool {}+{}, {} PGs, {} MiB chunks, {} MiB objects, {} MiB filled; lease {} s, downAfter {} s, outAfter {} s; --recovery-bandwidth {bandwidth}; {} client workers; load windows {} s; {} cores shared by everything (control plane, operator, agents, clients); run took {total:.0} s.",
        if s.quick { " --quick" } else { "" },
        s.agents,
        s.k,
        s.m,
        s.pg_count,
        s.chunk / MIB,
        s.object / MIB,
        s.fill / MIB,
        s.lease_secs,
        s.down_after_secs,
        s.out_after_secs,
        s.workers,
        s.window.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!();
    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| rebuild after 1 of {} members is lost, no client load (re-placement map → Healthy) | {:.0} MB/s ({:.0} MiB in {:.1} s) | fleet put, {} workers: {put_rate:.0} MB/s | {:.0}% | ≥ 25% |",
        s.agents,
        quiet.rebuild_rate(),
        quiet.rebuilt_bytes / MIB as f64,
        quiet.healthy - quiet.start(),
        s.workers,
        quiet.rebuild_rate() / put_rate * 100.0
    );
    for (what, during, before, after) in [
        (
            format!(
                "client put during recovery (put+get load, {} workers)",
                s.workers
            ),
            during.put_rate(),
            healthy_load.put_rate(),
            after_load.put_rate(),
        ),
        (
            "client get during recovery (same load)".to_string(),
            during.get_rate(),
            healthy_load.get_rate(),
            after_load.get_rate(),
        ),
    ] {
        println!(
            "| {what} | {during:.0} MB/s over {:.1} s | same load, healthy: before {before:.0} MB/s, after {after:.0} MB/s | {:.0}% of before, {:.0}% of after | ≥ 50% |",
            loaded.load.map_or(0.0, |l| l.secs),
            during / before * 100.0,
            during / after * 100.0,
        );
    }
    println!(
        "| SIGKILL → first recovery write (worst of 2 kills) | {} (no load), {} (under load) | outAfter {} s | +{:.1} s | ≤ outAfter + 5 s |",
        fmt_first(first[0]),
        fmt_first(first[1]),
        s.out_after_secs,
        worst_first - s.out_after_secs as f64,
    );
    println!();
    println!(
        "Fill rounds {fill_rates:.0?} MB/s. Client load: healthy before {:.0}/{:.0} MB/s put/get ({} errors), during recovery {:.0}/{:.0} ({} errors), healthy after the heal {:.0}/{:.0} ({} errors).",
        healthy_load.put_rate(),
        healthy_load.get_rate(),
        healthy_load.errors,
        during.put_rate(),
        during.get_rate(),
        during.errors,
        after_load.put_rate(),
        after_load.get_rate(),
        after_load.errors,
    );
    println!(
        "Around the after-heal load: stray shards deleted by the survivors {:.0} → {:.0}; RocksDB pending compaction {:.0} → {:.0} MiB (summed over members).",
        before_after[0],
        after_after[0],
        before_after[1] / MIB as f64,
        after_after[1] / MIB as f64,
    );
    print_heal("kill 1, no load", &quiet);
    print_heal("kill 2, under load", &loaded);
    println!("Every one of the {objects} filled objects read back identical after both heals.");

    if s.keep {
        let kept = dir.keep();
        eprintln!(
            "kept {} (agent logs in fleet/, control plane in cp/)",
            kept.display()
        );
    }
    if let Err(e) = cluster.shutdown().await {
        eprintln!("shutdown: {e}");
    }
    drop(cp);
}
