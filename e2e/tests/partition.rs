//! A network partition, not a kill: one member runs in its own network namespace, joined to
//! the others by a veth pair, and its link is cut while clients keep writing through the
//! other members. Every put returns (within a bound) with success or a clean gRPC error;
//! the operator marks the member Down (and, cut long enough, Out, moving its positions);
//! after the link comes back the member is Up again, every PG is whole, and every
//! acknowledged object reads back byte-identical.
//!
//! Needs root (`ip netns`, veth). Nothing leaves the machine: the agents outside the
//! namespace bind the host end of the veth (a local address, reached over loopback), the
//! one inside binds the other end, and the API server (loopback only) is reached from the
//! namespace through a TCP forwarder in this process.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use potluck_api::condition::{self, READY};
use potluck_api::{NodePhase, PoolHealth, StorageNode, StoragePool, StoragePoolSpec};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_cli::fleet::AgentOptions;
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{get, metric, object_client, put, random_bytes};
use potluck_proto::v1::{ClusterMap, GetClusterMapRequest, ListShardsRequest, MemberState};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// Each wait on the control plane (a stage) may take this long.
const LIMIT: Duration = Duration::from_secs(60);
/// A put must return within this, success or error. A shard call to a member that stopped
/// answering waits for its 30 s deadline, so a put caught by the cut may be slow; it must
/// never hang.
const PUT_LIMIT: Duration = Duration::from_secs(45);
const AGENTS: usize = 7;
/// The member inside the network namespace.
const CUT: usize = AGENTS - 1;
const PGS: i32 = 16;
const BUCKET: &str = "cut";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip_ok(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

const NETNS_PREFIX: &str = "potluck-part-";
/// Metric of the blackhole route that keeps the namespace's subnet off the default route if
/// the veth's own route ever goes away.
const GUARD_METRIC: &str = "4242";

/// A network namespace joined to the root namespace by a veth pair (`host_ip` at the root
/// end, `ns_ip` inside), removed on drop even when the test fails.
struct Partition {
    netns: String,
    host_if: String,
    ns_if: String,
    subnet: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

impl Partition {
    fn create() -> Partition {
        remove_stale_namespaces();
        let pid = std::process::id();
        // A /30 of 10.213.0.0/16 picked from the pid, so parallel runs do not collide.
        let n = pid % 16_000;
        let (c, d) = ((n / 64) as u8, ((n % 64) * 4) as u8);
        let part = Partition {
            netns: format!("{NETNS_PREFIX}{pid}"),
            host_if: format!("plh{pid}"),
            ns_if: format!("pln{pid}"),
            subnet: format!("10.213.{c}.{d}/30"),
            host_ip: Ipv4Addr::new(10, 213, c, d + 1),
            ns_ip: Ipv4Addr::new(10, 213, c, d + 2),
        };
        let taken = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "to", &part.subnet])
            .output()
            .expect("ip addr show");
        assert!(
            taken.stdout.is_empty(),
            "{} is already in use here: {}",
            part.subnet,
            String::from_utf8_lossy(&taken.stdout)
        );
        // Armed before the first change, so a half-built topology is removed too.
        ip_ok(&["netns", "add", &part.netns]);
        let host = format!("{}/30", part.host_ip);
        let inner = format!("{}/30", part.ns_ip);
        ip_ok(&[
            "link",
            "add",
            &part.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &part.ns_if,
            "netns",
            &part.netns,
        ]);
        ip_ok(&[
            "route",
            "replace",
            "blackhole",
            &part.subnet,
            "metric",
            GUARD_METRIC,
        ]);
        ip_ok(&["addr", "add", &host, "dev", &part.host_if]);
        ip_ok(&["link", "set", &part.host_if, "up"]);
        ip_ok(&["-n", &part.netns, "addr", "add", &inner, "dev", &part.ns_if]);
        ip_ok(&["-n", &part.netns, "link", "set", &part.ns_if, "up"]);
        ip_ok(&["-n", &part.netns, "link", "set", "lo", "up"]);
        part
    }

    /// The namespace's end of the link goes down: packets from the root namespace are
    /// dropped at the carrier-less veth (its route stays, so nothing takes the default
    /// route), and the namespace has no route out at all.
    fn cut(&self) {
        ip_ok(&["-n", &self.netns, "link", "set", &self.ns_if, "down"]);
    }

    fn heal(&self) {
        ip_ok(&["-n", &self.netns, "link", "set", &self.ns_if, "up"]);
    }

    fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", self.netns.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the pair; the explicit
        // delete covers a namespace kept alive by a process that is still exiting.
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&[
            "route",
            "del",
            "blackhole",
            &self.subnet,
            "metric",
            GUARD_METRIC,
        ]);
    }
}

/// Namespaces left by runs of this test that were killed before their guard ran.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Accepts on `listener` and relays every connection to `to`: the namespace's way to the
/// API server, which listens on loopback only.
fn spawn_forwarder(listener: TcpListener, to: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A copy of `kubeconfig` whose server is `via` (the forwarder), verified against the API
/// server's certificate as `kubernetes`, a name the certificate carries. Returns the path
/// and the API server's own address.
fn forwarded_kubeconfig(kubeconfig: &Path, via: SocketAddr, out: &Path) -> (PathBuf, SocketAddr) {
    let text = std::fs::read_to_string(kubeconfig).expect("read kubeconfig");
    let mut api = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(addr) = trimmed.strip_prefix("server: https://") {
            let indent = &line[..line.len() - trimmed.len()];
            api = Some(addr.trim().parse::<SocketAddr>().expect("server address"));
            lines.push(format!("{indent}server: https://{via}"));
            lines.push(format!("{indent}tls-server-name: kubernetes"));
        } else {
            lines.push(line.to_string());
        }
    }
    std::fs::write(out, lines.join("\n") + "\n").expect("write kubeconfig");
    (
        out.to_path_buf(),
        api.expect("a server line in the kubeconfig"),
    )
}

fn status_of(pool: &StoragePool) -> potluck_api::StoragePoolStatus {
    pool.status.clone().unwrap_or_default()
}

fn phase_of(nodes: &[StorageNode], name: &str) -> Option<NodePhase> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.status.as_ref().and_then(|s| s.phase))
}

async fn current_map(endpoint: &str) -> Result<ClusterMap, String> {
    let mut c = potluck_e2e::control_client(endpoint.to_string())
        .await
        .map_err(|e| e.to_string())?;
    c.get_cluster_map(GetClusterMapRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// Whether every PG of the map's pool is whole: every position on a member that is Up and
/// holding its shard of every stripe the PG holds anywhere. `Ok(stripes)` counts the
/// stripes; `Err` says what is still missing.
async fn pgs_whole(map: &ClusterMap) -> Result<usize, String> {
    let pool = map.pools.first().ok_or("no pool in the map")?;
    let mut stripes = 0usize;
    for (pg, set) in pool.pgs.iter().enumerate() {
        let mut per_position: Vec<std::collections::BTreeSet<(Vec<u8>, u32)>> = Vec::new();
        for (pos, member) in set.members.iter().enumerate() {
            let info = map
                .members
                .iter()
                .find(|m| &m.id == member)
                .ok_or(format!("PG {pg}: {member} is not listed"))?;
            if info.state != MemberState::Up as i32 {
                return Err(format!("PG {pg} position {pos}: {member} is not up"));
            }
            let connect = tokio::time::timeout(
                Duration::from_secs(5),
                potluck_e2e::shard_client(format!("http://{}", info.endpoint)),
            );
            let mut c = connect
                .await
                .map_err(|_| format!("{member}: connect timed out"))?
                .map_err(|e| format!("{member}: {e}"))?;
            let mut req = tonic::Request::new(ListShardsRequest {
                epoch: map.epoch,
                pool: pool.name.clone(),
                pg: pg as u32,
                after: None,
                limit: 10_000,
            });
            req.set_timeout(Duration::from_secs(5));
            let resp = c
                .list_shards(req)
                .await
                .map_err(|e| format!("{member}: list shards: {e}"))?
                .into_inner();
            if resp.truncated {
                return Err(format!("{member}: PG {pg} listing truncated"));
            }
            per_position.push(
                resp.shards
                    .iter()
                    .filter_map(|h| h.id.clone())
                    .filter(|id| id.shard as usize == pos)
                    .map(|id| (id.object_id.to_vec(), id.stripe))
                    .collect(),
            );
        }
        let all: std::collections::BTreeSet<_> = per_position.iter().flatten().cloned().collect();
        for (pos, held) in per_position.iter().enumerate() {
            if held.len() != all.len() {
                return Err(format!(
                    "PG {pg}: position {pos} ({}) holds {} of the PG's {} stripes",
                    set.members[pos],
                    held.len(),
                    all.len()
                ));
            }
        }
        stripes += all.len();
    }
    Ok(stripes)
}

/// Polls until every PG is whole in the map agent `endpoint` holds, at an epoch of at least
/// `min_epoch`; panics with the last gap after `LIMIT`.
async fn wait_pgs_whole(endpoint: &str, min_epoch: u64, what: &str) -> ClusterMap {
    let deadline = Instant::now() + LIMIT;
    loop {
        let last = match current_map(endpoint).await {
            Ok(map) if map.epoch >= min_epoch => match pgs_whole(&map).await {
                Ok(stripes) if stripes > 0 => return map,
                Ok(_) => "the pool holds no stripes at all".to_string(),
                Err(gap) => format!("epoch {}: {gap}", map.epoch),
            },
            Ok(map) => format!("map epoch {} < {min_epoch}", map.epoch),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: PGs not whole within {LIMIT:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One put by a background writer.
struct Outcome {
    key: String,
    data: Arc<Vec<u8>>,
    started: Instant,
    took: Duration,
    /// `None`: acknowledged. `Some((code, message))`: refused; code `None` means the put did
    /// not return within `PUT_LIMIT`.
    error: Option<(Option<Code>, String)>,
}

/// Clients putting objects of mixed sizes, one after another each, until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const SIZES: [usize; 6] = [1, 1000, 70_000, 200_000, 300_001, 600_003];

fn start_writers(endpoints: Vec<String>, prefix: &str, seed: u64) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let tasks = endpoints
        .into_iter()
        .enumerate()
        .map(|(w, endpoint)| {
            let (stop, outcomes, prefix) = (stop.clone(), outcomes.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut c = object_client(&endpoint).await;
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{prefix}-w{w}-{n}");
                    let size = SIZES[(n + w) % SIZES.len()] + n;
                    let data = Arc::new(random_bytes(size, seed + (w * 10_000 + n) as u64));
                    n += 1;
                    let started = Instant::now();
                    let r = tokio::time::timeout(PUT_LIMIT, put(&mut c, BUCKET, &key, &data)).await;
                    let error = match r {
                        Ok(Ok(_)) => None,
                        Ok(Err(s)) => Some((Some(s.code()), s.message().to_string())),
                        Err(_) => Some((None, format!("no answer within {PUT_LIMIT:?}"))),
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        key,
                        data,
                        started,
                        took: started.elapsed(),
                        error,
                    });
                }
            })
        })
        .collect();
    Writers {
        stop,
        outcomes,
        tasks,
    }
}

impl Writers {
    /// Puts that started at or after `t` and have returned.
    fn done_since(&self, t: Instant) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.started >= t)
            .count()
    }

    async fn wait_done_since(&self, t: Instant, n: usize, what: &str) {
        let deadline = Instant::now() + LIMIT;
        while self.done_since(t) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} puts returned within {LIMIT:?}",
                self.done_since(t)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// No writer starts another put.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the writers and waits for their last puts (each bounded by `PUT_LIMIT`).
    async fn finish(self) -> Vec<Outcome> {
        self.stop();
        for t in self.tasks {
            t.await.expect("writer task");
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

/// Every put returned in time, and any refusal is one a client can act on (retry), never a
/// hang or an internal error. Puts that ran entirely within `stable` (from when every
/// gateway's map had stopped sending to the member until the map could change again) all
/// succeeded: with one member of a PG's six gone, the write quorum (k+1 = 5) holds.
/// Returns the acknowledged objects.
fn check_outcomes(
    phase: &str,
    outcomes: &[Outcome],
    cut_at: Instant,
    stable: (Instant, Instant),
) -> BTreeMap<String, Arc<Vec<u8>>> {
    let quorum_from = stable.0;
    let ok = outcomes.iter().filter(|o| o.error.is_none()).count();
    let during = outcomes.iter().filter(|o| o.started >= cut_at).count();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    let in_flight: Vec<String> = outcomes
        .iter()
        .filter(|o| o.started < cut_at && o.started + o.took > cut_at)
        .map(|o| format!("{:.1?}", o.took))
        .collect();
    let after_down: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.started >= quorum_from)
        .map(|o| o.took)
        .collect();
    eprintln!(
        "{phase}: {} puts ({during} started during the cut), {ok} acknowledged, slowest {slowest:.1?}; \
         in flight at the cut: [{}]; started once the maps had it Down or Out: {} puts, slowest {:.1?}",
        outcomes.len(),
        in_flight.join(", "),
        after_down.len(),
        after_down.iter().max().copied().unwrap_or_default()
    );
    for o in outcomes {
        if let Some((code, message)) = &o.error {
            eprintln!(
                "{phase}: put {} refused after {:.1?}: {code:?} {message}",
                o.key, o.took
            );
            let code = code.unwrap_or_else(|| panic!("{phase}: put {} hung: {message}", o.key));
            assert!(
                matches!(
                    code,
                    Code::Unavailable | Code::DeadlineExceeded | Code::FailedPrecondition
                ),
                "{phase}: put {} failed uncleanly: {code:?} {message}",
                o.key
            );
            assert!(
                o.started < quorum_from || o.started + o.took > stable.1,
                "{phase}: put {} ran while every gateway's map had the member Down or Out, \
                 with the write quorum up, and failed: {code:?} {message}",
                o.key
            );
        }
    }
    assert!(during > 0, "{phase}: no put ran during the cut");
    outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| (o.key.clone(), o.data.clone()))
        .collect()
}

/// Every acknowledged object reads back identical through every agent in turn; refused puts
/// read back as not found or identical, never as other bytes.
async fn check_objects(
    what: &str,
    endpoints: &[String],
    acknowledged: &BTreeMap<String, Arc<Vec<u8>>>,
    refused: &[(String, Arc<Vec<u8>>)],
) {
    for (n, (key, data)) in acknowledged.iter().enumerate() {
        let mut c = object_client(&endpoints[n % endpoints.len()]).await;
        let got = tokio::time::timeout(PUT_LIMIT, get(&mut c, BUCKET, key))
            .await
            .unwrap_or_else(|_| panic!("{what}: get {key} hung"))
            .unwrap_or_else(|e| panic!("{what}: {key}: {e}"));
        assert!(
            got == **data,
            "{what}: {key} differs ({} bytes read, {} written)",
            got.len(),
            data.len()
        );
    }
    let mut visible = 0;
    for (n, (key, data)) in refused.iter().enumerate() {
        let mut c = object_client(&endpoints[n % endpoints.len()]).await;
        match get(&mut c, BUCKET, key).await {
            Ok(got) => {
                assert!(got == **data, "{what}: refused put {key} reads other bytes");
                visible += 1;
            }
            Err(s) => assert_eq!(s.code(), Code::NotFound, "{what}: refused put {key}: {s}"),
        }
    }
    eprintln!(
        "{what}: {} acknowledged objects identical; {visible} of {} refused puts readable \
         (identical), the rest not found",
        acknowledged.len(),
        refused.len()
    );
}

/// What the cut member's log says about its Lease since byte `from`, and its renewal counts:
/// evidence of how the member got through the cut.
async fn lease_story(cluster: &DevCluster, from: u64) -> String {
    let log = std::fs::read(cluster.fleet.log_path(CUT)).unwrap_or_default();
    let since = String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned();
    let lines: Vec<&str> = since.lines().filter(|l| l.contains("Lease")).collect();
    let metrics = cluster.fleet.metrics_addr(CUT).to_string();
    let count = |result: &'static str| {
        let metrics = metrics.clone();
        async move {
            metric(
                &metrics,
                "potluck_agent_lease_renewals_total",
                &format!("result=\"{result}\""),
            )
            .await
        }
    };
    format!(
        "renewals ok {} error {}; {} log lines about the Lease since the cut{}{}",
        count("ok").await,
        count("error").await,
        lines.len(),
        if lines.is_empty() { "" } else { ":\n  " },
        lines.join("\n  ")
    )
}

fn log_len(cluster: &DevCluster) -> u64 {
    std::fs::metadata(cluster.fleet.log_path(CUT)).map_or(0, |m| m.len())
}

/// Polls until the map of every agent at `endpoints` satisfies `done`; returns when.
async fn wait_maps(
    endpoints: &[String],
    what: &str,
    done: impl Fn(&ClusterMap) -> bool,
) -> Instant {
    let deadline = Instant::now() + LIMIT;
    for endpoint in endpoints {
        loop {
            let last = match current_map(endpoint).await {
                Ok(map) if done(&map) => break,
                Ok(map) => format!("epoch {}", map.epoch),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "{what}: not on {endpoint} within {LIMIT:?}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Instant::now()
}

fn state_in(map: &ClusterMap, id: &str) -> Option<i32> {
    map.members.iter().find(|m| m.id == id).map(|m| m.state)
}

async fn wait_phase(cluster: &DevCluster, id: &str, phase: NodePhase) {
    cluster
        .wait_nodes(&format!("{id} {phase:?}"), |nodes| {
            phase_of(nodes, id) == Some(phase)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_by_the_network_comes_back_and_the_fleet_converges() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let part = Partition::create();
    let cp = ControlPlane::start(&dir.path().join("cp"));

    let listener = TcpListener::bind((part.host_ip, 0))
        .await
        .expect("forwarder listens");
    let via = listener.local_addr().expect("forwarder address");
    let (ns_kubeconfig, api) =
        forwarded_kubeconfig(&cp.kubeconfig, via, &dir.path().join("netns-kubeconfig"));
    let forwarder = spawn_forwarder(listener, api);

    // Seven members, so that an Out member's positions can move (with six, each of the 4+2
    // positions needs every failure domain and an Out member's positions stay put).
    let mut fleet = potluck_e2e::fleet_config(dir.path().join("fleet"));
    fleet.agents = AGENTS;
    for i in 0..AGENTS {
        let options = if i == CUT {
            AgentOptions {
                listen_ip: Some(part.ns_ip.into()),
                command_prefix: part.exec_prefix(),
                kubeconfig: Some(ns_kubeconfig.clone()),
                ..Default::default()
            }
        } else {
            AgentOptions {
                listen_ip: Some(part.host_ip.into()),
                ..Default::default()
            }
        };
        fleet.agent_options.insert(i, options);
    }
    let mut spec = StoragePoolSpec::with_defaults(4, 2);
    spec.pg_count = PGS;
    spec.chunk_size = 64 * 1024;
    spec.down_after = "2s".into();
    // Long at first: the first cut heals while the member is Down, before it could go Out.
    spec.out_after = "5m".into();
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("default".into(), spec));
    cfg.stage_timeout = LIMIT;
    let cluster = DevCluster::start(cfg).await.expect("dev cluster");
    let cut_id = cluster.fleet.id(CUT).to_string();
    let all: Vec<String> = (0..AGENTS).map(|i| cluster.fleet.endpoint(i)).collect();
    let outside: Vec<String> = (0..CUT).map(|i| cluster.fleet.endpoint(i)).collect();
    assert!(
        cluster
            .fleet
            .endpoint(CUT)
            .contains(&part.ns_ip.to_string()),
        "{cut_id} serves at {}",
        cluster.fleet.endpoint(CUT)
    );
    eprintln!("cluster up after {:.1?}", started.elapsed());

    // A few dozen objects of mixed sizes, through every member.
    let mut acknowledged: BTreeMap<String, Arc<Vec<u8>>> = BTreeMap::new();
    for i in 0..30usize {
        let size = [0, 1, 1000, 70_000, 256 * 1024, 900_001][i % 6] + i;
        let data = random_bytes(size, i as u64);
        let mut c = object_client(&all[i % AGENTS]).await;
        put(&mut c, BUCKET, &format!("before-{i}"), &data)
            .await
            .expect("put before the cut");
        acknowledged.insert(format!("before-{i}"), Arc::new(data));
    }
    let mut refused: Vec<(String, Arc<Vec<u8>>)> = Vec::new();

    // ---- Cut 1: shorter than outAfter. The member goes Down and comes back with its
    // positions; what it missed is rebuilt onto it.
    let writers = start_writers(outside[..3].to_vec(), "short", 1_000);
    writers
        .wait_done_since(started, 3, "writes before the cut")
        .await;
    let epoch_before = status_of(&cluster.pools().get("default").await.expect("pool")).map_epoch;
    let log_at_cut = log_len(&cluster);
    let cut_at = Instant::now();
    part.cut();
    wait_phase(&cluster, &cut_id, NodePhase::Down).await;
    let down = cluster
        .wait_pool("default", "the pool Degraded with the member Down", |p| {
            let s = status_of(p);
            s.map_epoch > epoch_before && s.health == Some(PoolHealth::Degraded)
        })
        .await
        .expect("degraded");
    let down_epoch = status_of(&down).map_epoch as u64;
    assert!(
        condition::is_true(&status_of(&down).conditions, READY),
        "one member of seven Down must leave the pool Ready: {:?}",
        status_of(&down).conditions
    );
    // From here every gateway skips the member: puts meet their quorum without it.
    let down_at = wait_maps(&outside, "the map with the member Down", |m| {
        m.epoch >= down_epoch && state_in(m, &cut_id) == Some(MemberState::Down as i32)
    })
    .await;
    eprintln!(
        "cut 1: {cut_id} Down in every gateway's map {:.1?} after the cut (epoch {down_epoch})",
        down_at - cut_at
    );
    // Writes go on with the member Down: a few more each, then the link comes back.
    writers
        .wait_done_since(down_at, 3, "puts with the member Down")
        .await;
    part.heal();
    let healed_at = Instant::now();
    let outcomes = writers.finish().await;
    // The map changes again once the member is back: puts running then may fail cleanly.
    let acked = check_outcomes("cut 1", &outcomes, cut_at, (down_at, healed_at));
    refused.extend(
        outcomes
            .iter()
            .filter(|o| o.error.is_some())
            .map(|o| (o.key.clone(), o.data.clone())),
    );
    acknowledged.extend(acked);

    wait_phase(&cluster, &cut_id, NodePhase::Up).await;
    eprintln!(
        "cut 1: {cut_id} Up {:.1?} after the heal; {}",
        healed_at.elapsed(),
        lease_story(&cluster, log_at_cut).await
    );
    let up = cluster
        .wait_pool("default", "the pool Healthy with the member back", |p| {
            let s = status_of(p);
            s.map_epoch as u64 > down_epoch
                && s.members as usize == AGENTS
                && s.health == Some(PoolHealth::Healthy)
                && s.pgs_clean == PGS
        })
        .await
        .expect("healthy after cut 1");
    let up_epoch = status_of(&up).map_epoch as u64;
    eprintln!(
        "cut 1: Up and Healthy {:.1?} after the heal (epoch {up_epoch})",
        healed_at.elapsed()
    );
    let whole = pgs_whole(&current_map(&all[0]).await.expect("map")).await;
    if let Err(gap) = &whole {
        eprintln!("cut 1: the pool said Healthy while {gap}");
    }
    let map = wait_pgs_whole(&all[0], up_epoch, "after cut 1").await;
    assert!(
        map.members
            .iter()
            .all(|m| m.state == MemberState::Up as i32),
        "every member Up in the map"
    );
    eprintln!(
        "cut 1: every PG whole {:.1?} after the heal",
        healed_at.elapsed()
    );
    check_objects("after cut 1", &all, &acknowledged, &refused).await;

    // ---- Cut 2: longer than outAfter. The member goes Out, its positions move to the
    // others and are rebuilt there; back, it is placed again and filled.
    cluster
        .pools()
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"outAfter": "4s"}})),
        )
        .await
        .expect("shorten outAfter");
    let writers = start_writers(outside[3..6].to_vec(), "long", 2_000);
    let resumed = Instant::now();
    writers
        .wait_done_since(resumed, 3, "writes before the second cut")
        .await;
    let epoch_before = status_of(&cluster.pools().get("default").await.expect("pool")).map_epoch;
    let log_at_cut = log_len(&cluster);
    let cut_at = Instant::now();
    part.cut();
    wait_phase(&cluster, &cut_id, NodePhase::Down).await;
    let down_after = cut_at.elapsed();
    wait_phase(&cluster, &cut_id, NodePhase::Out).await;
    eprintln!(
        "cut 2: {cut_id} Down {down_after:.1?} and Out {:.1?} after the cut",
        cut_at.elapsed()
    );
    let without = cluster
        .wait_pool("default", "the pool whole again without the member", |p| {
            let s = status_of(p);
            s.map_epoch > epoch_before
                && s.members as usize == AGENTS - 1
                && s.health == Some(PoolHealth::Healthy)
        })
        .await
        .expect("healthy without the cut member");
    let out_epoch = status_of(&without).map_epoch as u64;
    let out_at = wait_maps(&outside, "the map without the member", |m| {
        m.epoch >= out_epoch && state_in(m, &cut_id).is_none()
    })
    .await;
    eprintln!(
        "cut 2: Healthy without {cut_id} {:.1?} after the cut (epoch {out_epoch})",
        cut_at.elapsed()
    );
    writers
        .wait_done_since(out_at, 3, "puts with the member Out")
        .await;
    // No new puts from here; those still waiting on the cut member finish after the heal.
    writers.stop();
    let map = wait_pgs_whole(&all[0], out_epoch, "with the member Out").await;
    assert!(
        map.members.iter().all(|m| m.id != cut_id),
        "{cut_id} is still in the map after going Out"
    );
    check_objects("with the member Out", &outside, &acknowledged, &refused).await;

    part.heal();
    let healed_at = Instant::now();
    let outcomes = writers.finish().await;
    let acked = check_outcomes("cut 2", &outcomes, cut_at, (out_at, healed_at));
    refused.extend(
        outcomes
            .iter()
            .filter(|o| o.error.is_some())
            .map(|o| (o.key.clone(), o.data.clone())),
    );
    acknowledged.extend(acked);
    wait_phase(&cluster, &cut_id, NodePhase::Up).await;
    eprintln!(
        "cut 2: {cut_id} Up {:.1?} after the heal; {}",
        healed_at.elapsed(),
        lease_story(&cluster, log_at_cut).await
    );
    let back = cluster
        .wait_pool(
            "default",
            "the pool Healthy with the member placed again",
            |p| {
                let s = status_of(p);
                s.map_epoch as u64 > out_epoch
                    && s.members as usize == AGENTS
                    && s.health == Some(PoolHealth::Healthy)
                    && s.pgs_clean == PGS
            },
        )
        .await
        .expect("healthy after cut 2");
    let back_epoch = status_of(&back).map_epoch as u64;
    let map = wait_pgs_whole(&all[0], back_epoch, "after cut 2").await;
    assert!(
        map.members
            .iter()
            .any(|m| m.id == cut_id && m.state == MemberState::Up as i32),
        "{cut_id} Up in the map again"
    );
    assert!(
        map.pools[0]
            .pgs
            .iter()
            .any(|set| set.members.contains(&cut_id)),
        "{cut_id} holds no position after coming back"
    );
    eprintln!(
        "cut 2: back, placed and every PG whole {:.1?} after the heal",
        healed_at.elapsed()
    );
    check_objects("after cut 2", &all, &acknowledged, &refused).await;
    eprintln!(
        "{} objects acknowledged, {} refused; test took {:.1?}",
        acknowledged.len(),
        refused.len(),
        started.elapsed()
    );

    cluster.shutdown().await.expect("shutdown");
    forwarder.abort();
}
