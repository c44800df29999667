//! A real Prometheus (Debian's `prometheus` package, installed by `scripts/setup.sh`) scraping
//! a real fleet in Kubernetes mode and its operator, with `deploy/monitoring/alerts.yml` loaded:
//! after a workload and a killed member, PromQL answers what happened (bytes written, a member
//! Down, PGs degraded, then clean once it is back), the alert rules load and evaluate, and every
//! query in `deploy/monitoring/potluck-dashboard.json` parses and returns data.
//!
//! Fails, never skips, when the `prometheus` binary is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use potluck_api::StoragePoolSpec;
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::{repo_root, ControlPlane};
use potluck_e2e::{get, object_client, put, random_bytes};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);
/// What `$__rate_interval` becomes when the dashboard's queries run here: several 1 s scrapes.
const RATE_INTERVAL: &str = "15s";

/// `$POTLUCK_PROMETHEUS`, else `prometheus` on PATH, else Debian's path.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POTLUCK_PROMETHEUS") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        bin.is_file(),
        "the prometheus server binary was not found (PATH, /usr/bin/prometheus): \
         run `bash scripts/setup.sh` (it installs the Debian package `prometheus`) \
         or set POTLUCK_PROMETHEUS to a prometheus binary"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A Prometheus server on loopback; killed on drop so a failing test leaves nothing running.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Agents are discovered from this file (`file_sd_configs`): a restarted agent gets new
    /// ports, and Prometheus rereads the file when it changes.
    agents_file: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, agents: &[SocketAddr], operators: &[SocketAddr]) -> Prometheus {
        let bin = prometheus_bin();
        let rules = repo_root().join("deploy/monitoring/alerts.yml");
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let agents_file = dir.join("agents.json");
        write_targets(&agents_file, agents);
        // Job names as alerts.yml and deploy/monitoring/prometheus.yml have them.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{}\"\n\
             scrape_configs:\n\
             \x20 - job_name: potluck-agent\n    file_sd_configs:\n      - files: [\"{}\"]\n\
             \x20 - job_name: potluck-operator\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            agents_file.display(),
            list(operators)
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut p = Prometheus {
            child,
            addr,
            log,
            agents_file,
        };
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log_tail());
            }
            if matches!(p.http_get("/-/ready"), Ok((200, _))) {
                return p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus not ready within {LIMIT:?}:\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn set_agents(&self, agents: &[SocketAddr]) {
        write_targets(&self.agents_file, agents);
    }

    fn log_tail(&self) -> String {
        potluck_cli::fleet::log_tail(&self.log, 30)
    }

    /// One HTTP/1.0 GET (the server closes the connection after the answer): status and body.
    fn http_get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path_and_query} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_string()))
    }

    /// A JSON API call that must succeed; its `data`.
    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = self
            .http_get(path_and_query)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {status}, not JSON ({e}): {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "GET {path_and_query}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query that aggregates to one series, if it has one.
    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql} gave several series: {r:?}");
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Polls `promql` until `want` holds for its value; fails after `LIMIT` with the last one.
    async fn wait_for(&self, what: &str, promql: &str, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let v = self.scalar(promql);
            if let Some(v) = v.filter(|v| want(*v)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: `{promql}` is {v:?} after {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Writes a file_sd target list by rename, so Prometheus never reads half a file.
fn write_targets(path: &Path, targets: &[SocketAddr]) {
    let list: Vec<String> = targets.iter().map(|a| a.to_string()).collect();
    let body = serde_json::json!([{ "targets": list }]).to_string();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).expect("write targets");
    std::fs::rename(&tmp, path).expect("rename targets");
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query expression in the dashboard, nested row panels included, with Grafana's
/// variables replaced by what they would be here (all pools, a rate window of a few scrapes).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {:?} has a target without expr: {t}", p["title"])
                });
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    expr.to_string(),
                ));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out.into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("${pool}", ".*")
                .replace("$pool", ".*");
            assert!(
                !expr.contains('$'),
                "panel {title:?}: a variable the test does not know in {expr}"
            );
            (title, expr)
        })
        .collect()
}

fn pool_spec() -> StoragePoolSpec {
    let mut spec = StoragePoolSpec::with_defaults(4, 2);
    spec.pg_count = 32;
    spec.chunk_size = 64 * 1024;
    spec.down_after = "2s".into();
    // Long enough that the killed member is only Down, and comes back to clean PGs.
    spec.out_after = "10m".into();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_the_workload_a_down_member_and_runs_the_dashboard_and_alerts() {
    let prometheus_bin = prometheus_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mut fleet_cfg = potluck_e2e::fleet_config(dir.path().join("fleet"));
    fleet_cfg.agents = 6;
    let mut cfg = DevClusterConfig::new(fleet_cfg, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("default".into(), pool_spec()));
    cfg.stage_timeout = LIMIT;
    let mut cluster = match DevCluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => panic!(
            "dev cluster did not start: {e}\n{}",
            cp.log_tail("kube-apiserver", 20)
        ),
    };
    let agents: Vec<SocketAddr> = (0..cluster.fleet.len())
        .map(|i| cluster.fleet.metrics_addr(i))
        .collect();
    let prom = Prometheus::start(
        &dir.path().join("prometheus"),
        &agents,
        &cluster.operator_metrics(),
    );
    eprintln!(
        "{} on {} (log {})",
        prometheus_bin.display(),
        prom.addr,
        prom.log.display()
    );

    // Every target scraped, and the shipped alert rules loaded and evaluating.
    prom.wait_for("all 7 targets up", "sum(up)", |v| v == 7.0)
        .await;
    let rules_in_file = std::fs::read_to_string(repo_root().join("deploy/monitoring/alerts.yml"))
        .expect("alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let groups = prom.api("/api/v1/rules")["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), rules_in_file, "rules loaded: {groups}");
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        // A rule's health is "unknown" until its group first runs.
        if bad.is_empty() {
            break;
        }
        assert!(
            bad.iter().all(|r| r["health"] == "unknown") && tokio::time::Instant::now() < deadline,
            "rules not healthy: {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The pool as Prometheus sees it: all members Up, every PG clean.
    prom.wait_for(
        "6 members Up",
        r#"max(potluck_operator_members{phase="Up"})"#,
        |v| v == 6.0,
    )
    .await;
    prom.wait_for(
        "32 PGs clean",
        r#"max(potluck_operator_pgs{pool="default",state="clean"})"#,
        |v| v == 32.0,
    )
    .await;
    prom.wait_for("one leader", "sum(potluck_operator_leader)", |v| v == 1.0)
        .await;

    // A workload through every gateway: puts, gets, a miss.
    let mut objects = Vec::new();
    let mut written = 0usize;
    for i in 0..6 {
        let data = random_bytes(300_000 + i * 50_000, i as u64);
        let mut c = object_client(&cluster.fleet.endpoint(i)).await;
        put(&mut c, "metrics", &format!("o{i}"), &data)
            .await
            .expect("put");
        written += data.len();
        objects.push(data);
    }
    for (i, data) in objects.iter().enumerate() {
        let mut c = object_client(&cluster.fleet.endpoint((i + 1) % 6)).await;
        assert_eq!(
            &get(&mut c, "metrics", &format!("o{i}")).await.expect("get"),
            data
        );
    }
    let mut c = object_client(&cluster.fleet.endpoint(0)).await;
    let miss = get(&mut c, "metrics", "missing").await.expect_err("a miss");
    assert_eq!(miss.code(), tonic::Code::NotFound);

    let put_bytes = prom
        .wait_for(
            "bytes written reach Prometheus",
            r#"sum(potluck_gateway_client_bytes_total{operation="put"})"#,
            |v| v >= written as f64,
        )
        .await;
    assert_eq!(put_bytes, written as f64, "every put byte counted once");
    prom.wait_for(
        "bytes read reach Prometheus",
        r#"sum(potluck_gateway_client_bytes_total{operation="get"})"#,
        |v| v >= written as f64,
    )
    .await;
    // 4+2: the members hold 1.5x what was written, give or take the last stripes' padding.
    prom.wait_for("shards stored", "sum(potluck_store_shard_bytes)", |v| {
        v >= 1.5 * written as f64
    })
    .await;
    prom.wait_for(
        "the miss is counted",
        r#"sum(potluck_rpc_requests_total{service="ObjectService",method="GetObject",code="NOT_FOUND"})"#,
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        prom.scalar(r#"sum(potluck_gateway_client_failed_bytes_total)"#),
        Some(0.0),
        "no transfer failed"
    );

    // A member dies; writes and reads go on around it.
    cluster.fleet.kill(5).await.expect("kill agent-5");
    for i in 0..3 {
        let data = random_bytes(400_000, 100 + i as u64);
        let mut c = object_client(&cluster.fleet.endpoint(i)).await;
        put(&mut c, "metrics", &format!("after-kill-{i}"), &data)
            .await
            .expect("put with a member gone");
    }
    for (i, data) in objects.iter().enumerate() {
        let mut c = object_client(&cluster.fleet.endpoint(i % 5)).await;
        assert_eq!(
            &get(&mut c, "metrics", &format!("o{i}")).await.expect("get"),
            data
        );
    }
    prom.wait_for(
        "the operator reports the member Down",
        r#"max(potluck_operator_members{phase="Down"})"#,
        |v| v == 1.0,
    )
    .await;
    prom.wait_for(
        "PGs degraded",
        r#"sum(max by (pool) (potluck_operator_pgs{state="degraded"}))"#,
        |v| v > 0.0,
    )
    .await;
    prom.wait_for(
        "its target down",
        r#"count(up{job="potluck-agent"} == 0)"#,
        |v| v == 1.0,
    )
    .await;
    prom.wait_for("peers saw it fail", "sum(potluck_peer_errors_total)", |v| {
        v > 0.0
    })
    .await;
    // The rules run on this data: PotluckMemberDown is pending (its `for` is a minute).
    prom.wait_for(
        "PotluckMemberDown pending or firing",
        r#"count(ALERTS{alertname="PotluckMemberDown"})"#,
        |v| v == 1.0,
    )
    .await;

    // Every dashboard query parses and returns data against this Prometheus.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/monitoring/potluck-dashboard.json"))
            .expect("dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 30, "only {} queries found", exprs.len());
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        if prom.query(expr).is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // The pool variable's query (Grafana's label_values) finds the pool.
    let pools = prom.api("/api/v1/label/pool/values?match%5B%5D=potluck_operator_pgs");
    assert_eq!(pools, serde_json::json!(["default"]));

    // The member comes back: Up again, and its PGs clean.
    cluster.fleet.restart(5).await.expect("restart agent-5");
    let agents: Vec<SocketAddr> = (0..cluster.fleet.len())
        .map(|i| cluster.fleet.metrics_addr(i))
        .collect();
    prom.set_agents(&agents);
    prom.wait_for(
        "no member Down",
        r#"max(potluck_operator_members{phase="Down"})"#,
        |v| v == 0.0,
    )
    .await;
    prom.wait_for(
        "PGs clean again",
        r#"sum(max by (pool) (potluck_operator_pgs{state="degraded"}))"#,
        |v| v == 0.0,
    )
    .await;
    prom.wait_for(
        "all agents scraped again",
        r#"count(up{job="potluck-agent"} == 1)"#,
        |v| v == 6.0,
    )
    .await;
    prom.wait_for(
        "no agent target down",
        r#"count(up{job="potluck-agent"} == 0) or vector(0)"#,
        |v| v == 0.0,
    )
    .await;

    drop(prom);
    cluster.shutdown().await.expect("shutdown");
}
