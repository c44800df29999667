//! `potluck-map-bench`: the control-plane benchmarks of the README (issue 3, "Measure it").
//!
//! Every figure goes through `potluck_operator::cluster_map::next_map`, the operator's real
//! code path, so that what is reported is what the operator does, not what the planner could
//! do on its own. Fleets come from fixed seeds, so two runs plan exactly the same maps and
//! only the timings may differ.
//!
//! cargo run --release -p potluck-e2e --bin potluck-map-bench [-- [--quick] [--json]]
//!
//! A benchmark reports rather than gates: every row says "target met" or "MISSED", and the
//! process exits 0 either way.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use potluck_operator::cluster_map::{next_map, MemberSpec, PoolSpec};
use potluck_placement::{loads, moved_positions, Member, Placement};
use potluck_proto::v1::{ClusterMap, MemberState};
use prost::Message;

const TB: u64 = 1_000_000_000_000;
/// Mixed member sizes: a fleet pooled from whatever machines people have.
const CAPACITIES_TB: [u64; 4] = [1, 2, 4, 8];
const PG_COUNT: u32 = 4096;
/// A fixed clock, so that the encoded map is byte for byte the same in every run.
const NOW_MS: u64 = 1_800_000_000_000;

/// Seed of the 1,000-member fleet; the small-fleet seeds are `1..=seeds`.
const BIG_SEED: u64 = 1000;
const BIG_MEMBERS: usize = 1000;
const BIG_RACKS: usize = 10;
const SMALL_MEMBERS: usize = 100;

#[derive(Parser)]
#[command(about = "Operator cluster-map benchmarks: recompute time, memory, data moved, balance")]
struct Args {
    /// Fewer repetitions and seeds: a smoke run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Print the rows as JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Internal: run one recompute in this (child) process and print its memory use, so that
    /// peak RSS covers that work alone and not the parent's repetitions.
    #[arg(long, hide = true, value_enum)]
    rss_child: Option<Work>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Work {
    /// `next_map` with no previous map, then encode.
    Scratch,
    /// `next_map` after one member goes OUT, previous map (read from stdin) as hint, then encode.
    Recompute,
}

/// splitmix64: hand-rolled rather than `rand`, so that the fleets (and thus every ratio in
/// the README) cannot change with a dependency upgrade.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Domains {
    /// Every member is its own failure domain (one disk per machine, no racks).
    PerMember,
    /// Members spread round-robin over this many racks.
    Racks(usize),
}

impl Domains {
    fn label(self) -> String {
        match self {
            Domains::PerMember => "one domain per member".into(),
            Domains::Racks(r) => format!("{r} domains"),
        }
    }

    fn of(self, i: usize) -> String {
        match self {
            Domains::PerMember => format!("host-{i:04}"),
            Domains::Racks(r) => format!("rack-{:02}", i % r),
        }
    }
}

fn member(i: usize, capacity_tb: u64, domain: String) -> MemberSpec {
    MemberSpec {
        id: format!("node-{i:04}"),
        endpoint: format!("10.{}.{}.{}:7443", i / 65_536, (i / 256) % 256, i % 256),
        failure_domain: domain,
        capacity_bytes: capacity_tb * TB,
        state: MemberState::Up,
    }
}

/// `n` UP members with capacities drawn from `CAPACITIES_TB` by `rng`.
fn fleet(n: usize, domains: Domains, rng: &mut SplitMix) -> Vec<MemberSpec> {
    (0..n)
        .map(|i| member(i, CAPACITIES_TB[rng.below(4)], domains.of(i)))
        .collect()
}

/// The pool of every scenario: 4+2, 1 MiB chunks, 4,096 PGs.
fn pools() -> Vec<PoolSpec> {
    vec![PoolSpec {
        name: "default".into(),
        k: 4,
        m: 2,
        chunk_size: 1 << 20,
        pg_count: PG_COUNT,
        write_quorum: None,
    }]
}

fn map(previous: Option<&ClusterMap>, members: &[MemberSpec]) -> Result<ClusterMap> {
    let map = next_map(previous, members, &pools(), NOW_MS)?;
    let pool = map.pools.first().context("map has no pool")?;
    ensure!(
        pool.unplaceable_reason.is_empty() && pool.pgs.len() == PG_COUNT as usize,
        "pool not placed: {}",
        pool.unplaceable_reason
    );
    Ok(map)
}

fn placement(map: &ClusterMap) -> Placement {
    Placement {
        acting_sets: map.pools[0].pgs.iter().map(|s| s.members.clone()).collect(),
    }
}

/// `members` with the one at `i` set OUT.
fn with_out(members: &[MemberSpec], i: usize) -> Vec<MemberSpec> {
    let mut out = members.to_vec();
    out[i].state = MemberState::Out;
    out
}

/// Positions held per capacity, over UP members, relative to the capacity-proportional fair
/// share (so the capacity-weighted mean is 1): returns (max/mean, min/mean). This ignores
/// failure-domain caps, which none of these fleets come near.
fn utilisation(map: &ClusterMap, members: &[MemberSpec]) -> (f64, f64) {
    let up: Vec<&MemberSpec> = members
        .iter()
        .filter(|m| m.state == MemberState::Up)
        .collect();
    let as_members: Vec<Member> = up
        .iter()
        .map(|m| Member {
            id: m.id.clone(),
            weight: m.capacity_bytes,
            domain: m.failure_domain.clone(),
        })
        .collect();
    let held = loads(&placement(map), &as_members);
    let total: usize = held.values().sum();
    let weight: f64 = up.iter().map(|m| m.capacity_bytes as f64).sum();
    let (mut max, mut min) = (f64::MIN, f64::MAX);
    for m in &up {
        let fair = total as f64 * m.capacity_bytes as f64 / weight;
        let u = held[&m.id] as f64 / fair;
        max = max.max(u);
        min = min.min(u);
    }
    (max, min)
}

fn held_by(map: &ClusterMap, id: &str) -> usize {
    map.pools[0]
        .pgs
        .iter()
        .flat_map(|s| &s.members)
        .filter(|m| *m == id)
        .count()
}

/// Runs `f` `reps` times; returns its last result and the durations in milliseconds.
fn timed<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, Vec<f64>)> {
    let mut ms = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let out = std::hint::black_box(f()?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    Ok((last.context("no repetitions")?, ms))
}

#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
}

/// One line of the report: median and range of `values`, judged on `judged` (the median for
/// timings, the worst seed for ratios, so that one lucky seed cannot hide a miss).
struct Row {
    measure: String,
    unit: &'static str,
    values: Vec<f64>,
    judge_worst: bool,
    target: Option<Target>,
    note: String,
}

impl Row {
    fn new(measure: impl Into<String>, unit: &'static str, values: Vec<f64>) -> Self {
        Row {
            measure: measure.into(),
            unit,
            values,
            judge_worst: false,
            target: None,
            note: String::new(),
        }
    }

    fn at_most(mut self, limit: f64, judge_worst: bool) -> Self {
        self.target = Some(Target::AtMost(limit));
        self.judge_worst = judge_worst;
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    fn judged(&self) -> f64 {
        if self.judge_worst {
            self.max()
        } else {
            self.median()
        }
    }

    fn met(&self) -> Option<bool> {
        self.target.map(|Target::AtMost(t)| self.judged() <= t)
    }

    fn fmt(&self, v: f64) -> String {
        match self.unit {
            "ms" if v < 10.0 => format!("{v:.2} ms"),
            "ms" => format!("{v:.0} ms"),
            "MB" => format!("{v:.1} MB"),
            "bytes" => format!("{v:.0} B"),
            _ => format!("{v:.3}"),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            None => "—".into(),
            Some(Target::AtMost(t)) => {
                let of = if self.judge_worst { "worst" } else { "median" };
                format!("{of} ≤ {}", self.fmt(t))
            }
        }
    }

    fn verdict(&self) -> String {
        match self.met() {
            None => String::new(),
            Some(true) => "target met".into(),
            Some(false) => format!(
                "MISSED ({} vs {})",
                self.fmt(self.judged()),
                self.target_text()
            ),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "measure": self.measure,
            "unit": self.unit,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "values": self.values,
            "target": self.target.map(|Target::AtMost(t)| t),
            "judged_on": if self.judge_worst { "max" } else { "median" },
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// `VmHWM` and `VmRSS` of this process from `/proc/self/status`, in bytes.
fn memory() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} not in /proc/self/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// The 1,000-member fleet and the index of the member that goes OUT.
fn big_fleet() -> (Vec<MemberSpec>, usize) {
    let mut rng = SplitMix(BIG_SEED);
    let members = fleet(BIG_MEMBERS, Domains::Racks(BIG_RACKS), &mut rng);
    let leaver = rng.below(members.len());
    (members, leaver)
}

/// The child side of the RSS measurement: load the inputs, note the peak so far, do the work
/// once, note the peak again. Prints "baseline_bytes peak_bytes".
fn rss_child(work: Work) -> Result<()> {
    let (members, leaver) = big_fleet();
    let previous = match work {
        Work::Scratch => None,
        Work::Recompute => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            Some(ClusterMap::decode(bytes.as_slice())?)
        }
    };
    let members = match work {
        Work::Scratch => members,
        Work::Recompute => with_out(&members, leaver),
    };
    let (baseline, _) = memory()?;
    let next = map(previous.as_ref(), &members)?;
    let encoded = std::hint::black_box(next.encode_to_vec());
    let (peak, _) = memory()?;
    ensure!(!encoded.is_empty());
    println!("{baseline} {peak}");
    Ok(())
}

/// Runs `work` in a fresh child process (this binary again) and returns its (baseline, peak).
fn measure_rss(work: Work, previous: Option<&[u8]>) -> Result<(u64, u64)> {
    let exe = std::env::current_exe()?;
    let arg = match work {
        Work::Scratch => "scratch",
        Work::Recompute => "recompute",
    };
    let mut child = Command::new(exe)
        .args(["--rss-child", arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the RSS child")?;
    {
        let mut stdin = child.stdin.take().context("child stdin")?;
        if let Some(bytes) = previous {
            stdin.write_all(bytes)?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("RSS child ({arg}) failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(b)), Some(Ok(p))) => Ok((b, p)),
        _ => bail!("RSS child ({arg}) printed {text:?}"),
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Issue 3, part 1: the operator's work on a 1,000-member fleet.
fn big_fleet_rows(reps: usize, rss_runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let (members, leaver) = big_fleet();
    let scenario = format!(
        "{BIG_MEMBERS} members ({}), 4+2, {PG_COUNT} PGs",
        Domains::Racks(BIG_RACKS).label()
    );

    let (first, scratch_ms) = timed(reps, || map(None, &members))?;
    ensure!(first.epoch == 1, "from scratch gave epoch {}", first.epoch);

    let out = with_out(&members, leaver);
    let (second, recompute_ms) = timed(reps, || map(Some(&first), &out))?;
    ensure!(second.epoch == 2, "recompute gave epoch {}", second.epoch);
    let moved = moved_positions(&placement(&first), &placement(&second));
    let minimum = held_by(&first, &members[leaver].id);

    let mut rng = SplitMix(BIG_SEED + 1);
    let mut grown = members.clone();
    let join_tb = CAPACITIES_TB[rng.below(4)];
    grown.push(member(
        BIG_MEMBERS,
        join_tb,
        Domains::Racks(BIG_RACKS).of(rng.below(BIG_RACKS)),
    ));
    let (joined, join_ms) = timed(reps, || map(Some(&first), &grown))?;
    let moved_join = moved_positions(&placement(&first), &placement(&joined));
    let weight: f64 = grown.iter().map(|m| m.capacity_bytes as f64).sum();
    let fair_join = f64::from(PG_COUNT) * 6.0 * (join_tb * TB) as f64 / weight;

    let (same, noop_ms) = timed(reps, || map(Some(&second), &out))?;
    ensure!(same == second, "a no-op recompute changed the map");

    // Encoding takes microseconds: time batches so the clock's resolution does not matter.
    let batch = 20;
    let (encoded, encode_ms) = timed(reps, || {
        let mut bytes = Vec::new();
        for _ in 0..batch {
            bytes = second.encode_to_vec();
        }
        Ok(bytes)
    })?;
    let encode_ms: Vec<f64> = encode_ms.iter().map(|t| t / batch as f64).collect();
    let (decoded, decode_ms) = timed(reps, || {
        let mut map = ClusterMap::default();
        for _ in 0..batch {
            map = ClusterMap::decode(encoded.as_slice())?;
        }
        Ok(map)
    })?;
    ensure!(
        decoded == second,
        "the map does not survive an encode/decode round trip"
    );
    let decode_ms: Vec<f64> = decode_ms.iter().map(|t| t / batch as f64).collect();
    let push_ms: Vec<f64> = recompute_ms
        .iter()
        .zip(&encode_ms)
        .map(|(r, e)| r + e)
        .collect();

    rows.push(
        Row::new(
            format!("next_map from scratch, {scenario}"),
            "ms",
            scratch_ms,
        )
        .at_most(1000.0, false)
        .note(format!("{reps} runs")),
    );
    rows.push(
        Row::new(
            "next_map after one member UP→OUT, previous map as hint",
            "ms",
            recompute_ms,
        )
        .at_most(1000.0, false)
        .note(format!(
            "{reps} runs; moved {moved} positions, the leaver held {minimum}"
        )),
    );
    rows.push(
        Row::new(
            format!("next_map after one {join_tb} TB member joins, previous map as hint"),
            "ms",
            join_ms,
        )
        .at_most(1000.0, false)
        .note(format!(
            "{reps} runs; moved {moved_join} positions, its fair share is {fair_join:.1}"
        )),
    );
    rows.push(
        Row::new(
            "next_map no-op (same inputs, same epoch back)",
            "ms",
            noop_ms,
        )
        .at_most(1000.0, false)
        .note(format!(
            "{reps} runs; plans again from the hint, finds nothing changed, returns epoch {}",
            same.epoch
        )),
    );
    rows.push(
        Row::new(
            "prost encode of the ClusterMap (ApplyClusterMap)",
            "ms",
            encode_ms,
        )
        .note(format!("{reps} runs of {batch}")),
    );
    rows.push(
        Row::new("prost decode of it (agent side)", "ms", decode_ms)
            .note(format!("{reps} runs of {batch}")),
    );
    rows.push(Row::new(
        "encoded ClusterMap size",
        "bytes",
        vec![encoded.len() as f64],
    ));
    rows.push(
        Row::new("recompute after UP→OUT + encode", "ms", push_ms)
            .at_most(1000.0, false)
            .note("the operator's work per membership change, before the network"),
    );

    let (up_max, up_min) = utilisation(&first, &members);
    rows.push(
        Row::new(
            format!("utilisation max/mean, {BIG_MEMBERS} members from scratch"),
            "ratio",
            vec![up_max],
        )
        .note(format!(
            "min/mean {up_min:.3}; about {:.0} positions per member, so ±1 position is ±4% on average and more on 1 TB members",
            f64::from(PG_COUNT) * 6.0 / BIG_MEMBERS as f64
        )),
    );

    for work in [Work::Scratch, Work::Recompute] {
        let mut peaks = Vec::new();
        let mut baselines = Vec::new();
        for _ in 0..rss_runs {
            let previous = (work == Work::Recompute).then_some(encoded.as_slice());
            match measure_rss(work, previous) {
                Ok((b, p)) => {
                    baselines.push(mb(b));
                    peaks.push(mb(p));
                }
                Err(e) => {
                    eprintln!("peak RSS not measured: {e:#}");
                    return Ok(());
                }
            }
        }
        let base = Row::new("", "MB", baselines);
        let (what, inputs) = match work {
            Work::Scratch => ("from scratch", "members"),
            Work::Recompute => ("UP→OUT recompute", "members and previous map"),
        };
        let note = format!(
            "child process; VmHWM with {inputs} loaded, before the work: {} (range {}–{}); {rss_runs} runs",
            base.fmt(base.median()),
            base.fmt(base.min()),
            base.fmt(base.max())
        );
        rows.push(
            Row::new(format!("peak RSS, {what} + encode"), "MB", peaks)
                .at_most(100.0, true)
                .note(note),
        );
    }
    Ok(())
}

/// Issue 3, parts 2 and 3: data moved when one member of a hundred leaves or joins, and how
/// evenly positions follow capacity, over `seeds` fleets.
fn small_fleet_rows(
    seeds: u64,
    domains: Domains,
    rows: &mut Vec<Row>,
    detail: &mut Vec<String>,
) -> Result<()> {
    let mut leave = Vec::new();
    let mut join = Vec::new();
    let (mut fresh_max, mut fresh_min) = (Vec::new(), Vec::new());
    let (mut after_max, mut after_min) = (Vec::new(), Vec::new());
    let mut details = Vec::new();
    for seed in 1..=seeds {
        let mut rng = SplitMix(seed);
        let members = fleet(SMALL_MEMBERS, domains, &mut rng);
        let first = map(None, &members)?;
        let (hi, lo) = utilisation(&first, &members);
        fresh_max.push(hi);
        fresh_min.push(lo);

        let leaver = rng.below(members.len());
        let out = with_out(&members, leaver);
        let after_leave = map(Some(&first), &out)?;
        let moved = moved_positions(&placement(&first), &placement(&after_leave));
        let minimum = held_by(&first, &members[leaver].id);
        leave.push(moved as f64 / minimum as f64);
        let (hi, lo) = utilisation(&after_leave, &out);
        after_max.push(hi);
        after_min.push(lo);

        let capacity = CAPACITIES_TB[rng.below(4)];
        let domain = match domains {
            Domains::PerMember => domains.of(SMALL_MEMBERS),
            Domains::Racks(r) => domains.of(rng.below(r)),
        };
        let mut grown = members.clone();
        grown.push(member(SMALL_MEMBERS, capacity, domain));
        let after_join = map(Some(&first), &grown)?;
        let moved_join = moved_positions(&placement(&first), &placement(&after_join));
        let total = (PG_COUNT * 6) as f64;
        let weight: f64 = grown.iter().map(|m| m.capacity_bytes as f64).sum();
        let fair = total * (capacity * TB) as f64 / weight;
        join.push(moved_join as f64 / fair);
        let (hi, lo) = utilisation(&after_join, &grown);
        after_max.push(hi);
        after_min.push(lo);
        details.push(format!(
            "seed {seed}: leave {}TB moved {moved}/{minimum}, join {capacity}TB moved {moved_join}/{fair:.0}",
            members[leaver].capacity_bytes / TB
        ));
    }
    let scenario = format!(
        "{SMALL_MEMBERS} members of 1/2/4/8 TB ({}), 4+2, {PG_COUNT} PGs",
        domains.label()
    );
    detail.push(format!("{scenario}: {}", details.join("; ")));
    let per_seed = format!("{seeds} seeds; median and range over seeds");
    rows.push(
        Row::new(
            format!("moved / minimum, one member leaves, {scenario}"),
            "ratio",
            leave,
        )
        .at_most(1.1, true)
        .note(format!("{per_seed}; minimum = positions the leaver held")),
    );
    rows.push(
        Row::new("moved / minimum, one member joins", "ratio", join)
            .at_most(1.1, true)
            .note(format!(
                "{per_seed}; minimum = total positions × its capacity / total capacity"
            )),
    );
    rows.push(
        Row::new("utilisation max/mean, from scratch", "ratio", fresh_max)
            .at_most(1.05, true)
            .note(format!(
                "{per_seed}; min/mean worst {:.3}",
                fresh_min.iter().copied().fold(f64::INFINITY, f64::min)
            )),
    );
    rows.push(
        Row::new(
            "utilisation max/mean, after the leave or join",
            "ratio",
            after_max,
        )
        .at_most(1.05, true)
        .note(format!(
            "{} maps; min/mean worst {:.3}",
            2 * seeds,
            after_min.iter().copied().fold(f64::INFINITY, f64::min)
        )),
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(work) = args.rss_child {
        return rss_child(work);
    }
    let (reps, rss_runs, seeds) = if args.quick { (3, 1, 3) } else { (11, 3, 10) };
    let mut rows = Vec::new();
    let mut detail = Vec::new();
    big_fleet_rows(reps, rss_runs, &mut rows)?;
    small_fleet_rows(seeds, Domains::PerMember, &mut rows, &mut detail)?;
    small_fleet_rows(seeds, Domains::Racks(10), &mut rows, &mut detail)?;

    if args.json {
        let json = serde_json::json!({
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "per_seed": detail,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("| measure | median | min – max | target | verdict | notes |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let range = if r.values.len() > 1 {
            format!("{} – {}", r.fmt(r.min()), r.fmt(r.max()))
        } else {
            "—".into()
        };
        println!(
            "| {} | {} | {range} | {} | {} | {} |",
            r.measure,
            r.fmt(r.median()),
            r.target_text(),
            r.verdict(),
            r.note
        );
    }
    println!();
    println!("Positions moved / minimum per seed:");
    for line in &detail {
        println!("- {line}");
    }
    Ok(())
}
