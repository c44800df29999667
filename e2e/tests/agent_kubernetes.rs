//! The agent's Kubernetes mode against a real kube-apiserver, and its
//! catch-up with a newer cluster map, with real agent processes.
//!
//! - The agent registers a StorageNode whose failure domain and topology
//!   labels come from its Kubernetes Node, with its bound address as the
//!   endpoint; a person's `drain: true` survives the agent's restart.
//! - Without a Node it falls back to --failure-domain, keeps its Lease
//!   renewed (and counts it on /metrics), and brings back a deleted
//!   StorageNode.
//! - The agent acts as its ServiceAccount with deploy/10-rbac.yaml applied,
//!   so these tests also prove that RBAC grants all it uses.
//! - An agent that missed a map push fetches the newer map from a peer once
//!   a request carries the newer epoch; an epoch nobody has changes nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pb::agent_control_client::AgentControlClient;
use potluck_cli::fleet::{find_agent_bin, log_tail, parse_ready_line, ReadyLine, READY_PREFIX};
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{metric_matching, wait_until};
use potluck_operator::cluster_map::{next_map, MemberSpec};
use potluck_proto::v1 as pb;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NS: &str = "potluck-system";
const AGENT_SA: &str = "system:serviceaccount:potluck-system:potluck-agent";

/// An agent process; killed when dropped, so a failing test leaves none behind.
struct AgentProc {
    child: Child,
    ready: ReadyLine,
    log: PathBuf,
}

impl AgentProc {
    /// Starts the agent with `args` (plus KUBECONFIG when given) and waits
    /// for its ready line.
    async fn start(args: &[String], kubeconfig: Option<&Path>, log: &Path) -> AgentProc {
        let bin = find_agent_bin().expect("potluck-agent is built");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            // Only the flags decide; the test's environment must not.
            .env_remove("NODE_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("POTLUCK_MEMBER_ID")
            .env_remove("POTLUCK_ADVERTISE")
            .env_remove("POTLUCK_KUBERNETES")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let mut child = cmd.spawn().expect("spawn potluck-agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(READY_PREFIX) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let line = match ready {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the agent exited before it was ready:\n{}",
                log_tail(log, 30)
            ),
            Err(_) => panic!("the agent was not ready in 90 s:\n{}", log_tail(log, 30)),
        };
        // Keep reading stdout so the agent never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready = parse_ready_line(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        AgentProc {
            child,
            ready,
            log: log.to_path_buf(),
        }
    }

    async fn metric(&self, name: &str, filter: &str) -> f64 {
        metric_matching(&self.ready.metrics.to_string(), name, &[filter]).await
    }

    /// Kills the agent and waits until it is gone (its store lock is free).
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ----\n{}",
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
    }
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    let out = cp.kubectl_ok(&all, None);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?}: {e}\n{out}"))
}

fn exists(cp: &ControlPlane, args: &[&str]) -> bool {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    cp.kubectl(&all, None).status.success()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_comes_from_the_node_and_a_persons_drain_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start_with_potluck_rbac(&dir.path().join("cp"));
    // Nodes can be created through the API without a kubelet.
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: worker-1\n  labels:\n    \
             kubernetes.io/hostname: worker-1\n    topology.kubernetes.io/zone: zone-a\n    \
             unrelated: x\n",
        ),
    );
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    // No --id: in Kubernetes mode the member id is the node name.
    let agent_args = args(&[
        "--kubernetes",
        "--node-name",
        "worker-1",
        "--failure-domain-key",
        "topology.kubernetes.io/zone",
        "--data-dir",
        data,
        "--capacity",
        "5GiB",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--lease-duration-secs",
        "3",
    ]);
    let log = dir.path().join("agent.log");
    let agent = AgentProc::start(&agent_args, Some(&cp.kubeconfig_as(AGENT_SA)), &log).await;
    assert_eq!(agent.ready.id, "worker-1");

    let node = get_json(&cp, &["storagenode", "worker-1"]);
    let spec = &node["spec"];
    assert_eq!(spec["failureDomain"], "zone-a", "{node:#}");
    assert_eq!(spec["endpoint"], agent.ready.grpc.to_string(), "{node:#}");
    assert_eq!(spec["capacityBytes"], 5u64 << 30, "{node:#}");
    // The API server fills in the schema's default; the agent never owns it.
    assert_eq!(spec["drain"], false, "{node:#}");
    assert!(
        node.get("status").is_none(),
        "the operator owns status: {node:#}"
    );
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "worker-1", "{node:#}");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a", "{node:#}");
    assert!(labels.get("unrelated").is_none(), "{node:#}");
    let managed = node["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields");
    assert_eq!(managed.len(), 1, "only the agent wrote it: {node:#}");
    assert_eq!(managed[0]["manager"], "potluck-agent", "{node:#}");
    assert_eq!(managed[0]["operation"], "Apply", "{node:#}");
    let owned = &managed[0]["fieldsV1"]["f:spec"];
    for field in ["f:endpoint", "f:capacityBytes", "f:failureDomain"] {
        assert!(owned.get(field).is_some(), "agent owns {field}: {node:#}");
    }
    assert!(
        owned.get("f:drain").is_none(),
        "agent must not own drain: {node:#}"
    );

    // A person drains the member; the agent restarts (on another port).
    cp.kubectl_ok(
        &[
            "patch",
            "storagenode",
            "worker-1",
            "--type=merge",
            "-p",
            r#"{"spec":{"drain":true}}"#,
        ],
        None,
    );
    agent.kill().await;
    let agent = AgentProc::start(&agent_args, Some(&cp.kubeconfig_as(AGENT_SA)), &log).await;
    let node = get_json(&cp, &["storagenode", "worker-1"]);
    assert_eq!(
        node["spec"]["endpoint"],
        agent.ready.grpc.to_string(),
        "re-registered by the restarted agent: {node:#}"
    );
    assert_eq!(
        node["spec"]["drain"], true,
        "the agent must not overwrite a person's drain: {node:#}"
    );
    assert_eq!(node["spec"]["failureDomain"], "zone-a", "{node:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_renewed_and_a_deleted_storage_node_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start_with_potluck_rbac(&dir.path().join("cp"));
    let data = dir.path().join("data");
    let agent_args = args(&[
        "--kubernetes",
        "--id",
        "member-x",
        // No such Node: the failure domain comes from the flag.
        "--node-name",
        "no-such-node",
        "--failure-domain",
        "rack-7",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--capacity",
        "1GiB",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--advertise",
        "member-x.example:7000",
        "--lease-duration-secs",
        "3",
    ]);
    let agent = AgentProc::start(
        &agent_args,
        Some(&cp.kubeconfig_as(AGENT_SA)),
        &dir.path().join("a.log"),
    )
    .await;

    let node = get_json(&cp, &["storagenode", "member-x"]);
    assert_eq!(node["spec"]["failureDomain"], "rack-7", "{node:#}");
    assert_eq!(
        node["spec"]["endpoint"], "member-x.example:7000",
        "{node:#}"
    );
    assert!(node["metadata"].get("labels").is_none(), "{node:#}");

    let lease_args = ["lease", "potluck-agent-member-x", "-n", NS];
    let lease = get_json(&cp, &lease_args);
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], "member-x", "{lease:#}");
    assert_eq!(spec["leaseDurationSeconds"], 3, "{lease:#}");
    assert!(spec["acquireTime"].is_string(), "{lease:#}");
    let labels = &lease["metadata"]["labels"];
    assert_eq!(
        labels["app.kubernetes.io/name"], "potluck-agent",
        "{lease:#}"
    );
    assert_eq!(labels["potluck.dev/member"], "member-x", "{lease:#}");
    let first_renewal = spec["renewTime"].clone();
    assert!(first_renewal.is_string(), "{lease:#}");

    // Renewed every second (a third of 3 s): the renew time moves on.
    wait_until(Duration::from_secs(15), || {
        let moved = get_json(&cp, &lease_args)["spec"]["renewTime"] != first_renewal;
        async move { moved }
    })
    .await;
    let lease = get_json(&cp, &lease_args);
    assert_eq!(
        lease["spec"]["acquireTime"], spec["acquireTime"],
        "{lease:#}"
    );

    let renewals = || agent.metric("potluck_agent_lease_renewals_total", "result=\"ok\"");
    let before = renewals().await;
    assert!(before >= 1.0, "renewals counted: {before}");
    wait_until(Duration::from_secs(15), || async {
        renewals().await > before
    })
    .await;
    assert_eq!(
        agent
            .metric("potluck_agent_lease_renewals_total", "result=\"error\"")
            .await,
        0.0
    );

    // Deleted by mistake: re-applied within about 30 s.
    cp.kubectl_ok(&["delete", "storagenode", "member-x"], None);
    assert!(!exists(&cp, &["storagenode", "member-x"]));
    wait_until(Duration::from_secs(60), || {
        let back = exists(&cp, &["storagenode", "member-x"]);
        async move { back }
    })
    .await;
    let node = get_json(&cp, &["storagenode", "member-x"]);
    assert_eq!(
        node["spec"]["endpoint"], "member-x.example:7000",
        "{node:#}"
    );
}

async fn control(addr: std::net::SocketAddr) -> AgentControlClient<tonic::transport::Channel> {
    potluck_e2e::control_client(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

async fn epoch_of(addr: std::net::SocketAddr) -> u64 {
    control(addr)
        .await
        .get_cluster_map(pb::GetClusterMapRequest {})
        .await
        .expect("GetClusterMap")
        .into_inner()
        .epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_missed_a_map_fetches_it_when_a_peer_shows_a_newer_epoch() {
    let fleet = potluck_e2e::start_fleet_with(&[], |cfg| {
        cfg.agents = 2;
        cfg.k = 1;
        cfg.m = 1;
        cfg.pg_count = 8;
    })
    .await;
    let (a, b) = (fleet.grpc_addr(0), fleet.grpc_addr(1));
    let first = fleet.map().clone();
    assert!(first.epoch >= 1 && first.pools[0].unplaceable_reason.is_empty());
    assert_eq!(epoch_of(b).await, first.epoch);

    // The next epoch (agent-0 offers more space) reaches agent-0 only.
    let members: Vec<MemberSpec> = first
        .members
        .iter()
        .map(|m| MemberSpec {
            id: m.id.clone(),
            endpoint: m.endpoint.clone(),
            failure_domain: m.failure_domain.clone(),
            capacity_bytes: m.capacity_bytes + u64::from(m.id == "agent-0"),
            state: pb::MemberState::try_from(m.state).expect("member state"),
        })
        .collect();
    let second = next_map(
        Some(&first),
        &members,
        &fleet.config().effective_pools(),
        first.created_unix_ms + 1,
    )
    .expect("next map");
    assert_eq!(second.epoch, first.epoch + 1);
    control(a)
        .await
        .apply_cluster_map(pb::ApplyClusterMapRequest {
            map: Some(second.clone()),
        })
        .await
        .expect("push to agent-0");
    assert_eq!(epoch_of(b).await, first.epoch, "agent-0 only");

    // agent-0 (or anyone on the new map) calls agent-1 with the new epoch.
    let mut shards = potluck_e2e::shard_client(format!("http://{b}"))
        .await
        .expect("connect agent-1");
    shards
        .list_shards(pb::ListShardsRequest {
            epoch: second.epoch,
            pool: "default".into(),
            pg: 0,
            after: None,
            limit: 10,
        })
        .await
        .expect("ListShards with a newer epoch is served");
    wait_until(Duration::from_secs(10), || async {
        epoch_of(b).await == second.epoch
    })
    .await;
    let got = control(b)
        .await
        .get_cluster_map(pb::GetClusterMapRequest {})
        .await
        .expect("GetClusterMap")
        .into_inner();
    assert_eq!(got, second, "agent-1 holds exactly the map agent-0 has");
    let metrics_b = fleet.metrics_addr(1).to_string();
    let catchups = |result: &'static str| {
        let addr = metrics_b.clone();
        async move {
            metric_matching(
                &addr,
                "potluck_agent_map_catchups_total",
                &[&format!("result=\"{result}\"")],
            )
            .await
        }
    };
    assert_eq!(catchups("applied").await, 1.0);
    assert_eq!(
        metric_matching(&metrics_b, "potluck_cluster_map_epoch", &[]).await,
        second.epoch as f64
    );

    // An epoch nobody has: agent-1 asks, finds nothing newer, keeps its map.
    shards
        .list_shards(pb::ListShardsRequest {
            epoch: second.epoch + 5,
            pool: "default".into(),
            ..Default::default()
        })
        .await
        .expect("ListShards");
    wait_until(Duration::from_secs(15), || async {
        catchups("none_newer").await >= 1.0
    })
    .await;
    assert_eq!(epoch_of(b).await, second.epoch);
    assert_eq!(epoch_of(a).await, second.epoch);
}
