//! The whole system on one machine: the CRDs installed, the operator running, agents in
//! Kubernetes mode registering and renewing their Leases, and a StoragePool the operator
//! places — against any API server a kubeconfig points at (the project's own loopback
//! control plane, `scripts/control-plane.sh`, in the README's fleet command and the tests).
//!
//! Unlike [`Fleet`] on its own, nothing here builds maps: the operator does, exactly as in a
//! cluster, so what `potluck dev up --kubeconfig` shows is what `kubectl apply -f deploy/`
//! would run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use potluck_api::condition::{self, READY};
use potluck_api::{NodePhase, StorageNode, StoragePool, StoragePoolSpec};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::fleet::{Fleet, FleetConfig, FleetError, KubeAgents};

/// The operator prints this, then `identity=<id> metrics=<addr>`, once it serves `/metrics`.
pub const OPERATOR_READY_PREFIX: &str = "POTLUCK_OPERATOR_READY";
pub const OPERATOR_BIN_NAME: &str = "potluck-operator";
const FIELD_MANAGER: &str = "potluck-dev";

#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    #[error("cannot use kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("Kubernetes API call failed while {doing}: {error}")]
    Kube { doing: String, error: kube::Error },
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cannot start {bin}: {error}")]
    Spawn { bin: PathBuf, error: std::io::Error },
    #[error("the operator did not report ready ({why}); see {log}")]
    OperatorNotReady { why: String, log: PathBuf },
    #[error("timed out after {secs} s waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        secs: u64,
        last: String,
    },
}

fn kube_err(doing: &str) -> impl FnOnce(kube::Error) -> DevClusterError + '_ {
    move |error| DevClusterError::Kube {
        doing: doing.to_owned(),
        error,
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct DevClusterConfig {
    /// The agents; their Kubernetes settings are filled in from the fields below.
    pub fleet: FleetConfig,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub operator_bin: PathBuf,
    /// Seconds an agent's Lease lasts (renewed every third of it).
    pub lease_duration_secs: u64,
    /// The pool created once every agent is Up; `None` creates none.
    pub pool: Option<(String, StoragePoolSpec)>,
    /// How long each stage (CRDs, operator, agents Up, pool Ready) may take.
    pub stage_timeout: Duration,
    /// The operator's `--require-auth`: off by default, so a local fleet takes calls without
    /// Bucket credentials.
    pub require_auth: bool,
}

impl DevClusterConfig {
    /// The README's fleet: six agents, pool `default` 4+2 with the fleet's chunk size and PG
    /// count, and membership fast enough to watch (`downAfter` 10s, `outAfter` 1m).
    pub fn new(fleet: FleetConfig, kubeconfig: impl Into<PathBuf>) -> Self {
        let mut spec = StoragePoolSpec::with_defaults(
            i32::try_from(fleet.k).unwrap_or(i32::MAX),
            i32::try_from(fleet.m).unwrap_or(i32::MAX),
        );
        spec.chunk_size = i64::try_from(fleet.chunk_size).unwrap_or(i64::MAX);
        spec.pg_count = i32::try_from(fleet.pg_count).unwrap_or(i32::MAX);
        spec.down_after = "10s".into();
        spec.out_after = "1m".into();
        let operator_bin = fleet
            .agent_bin
            .parent()
            .map(|d| d.join(OPERATOR_BIN_NAME))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(OPERATOR_BIN_NAME));
        Self {
            fleet,
            kubeconfig: kubeconfig.into(),
            namespace: "potluck-system".into(),
            operator_bin,
            lease_duration_secs: 3,
            pool: Some(("default".into(), spec)),
            stage_timeout: Duration::from_secs(60),
            require_auth: false,
        }
    }
}

struct Operator {
    child: Child,
    metrics: SocketAddr,
}

pub struct DevCluster {
    pub fleet: Fleet,
    cfg: DevClusterConfig,
    client: Client,
    /// Operator replicas started and not killed, oldest first; one holds the leader Lease.
    operators: Vec<Operator>,
    /// Counts operator starts, so each gets its own identity in the leader Lease.
    operator_starts: u32,
}

impl DevCluster {
    /// Installs the CRDs, the namespace and the pool, starts the agents and then the operator,
    /// and waits until every agent is Up and the pool is Ready. On error, what
    /// was started is stopped again (the processes are killed on drop).
    pub async fn start(cfg: DevClusterConfig) -> Result<DevCluster, DevClusterError> {
        let client = client_for(&cfg.kubeconfig).await?;
        install_crds(&client, cfg.stage_timeout).await?;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .patch(
                &cfg.namespace,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .map_err(kube_err("creating the namespace"))?;

        // The pool exists before the operator's first pass, so that its first map already
        // places it on every member (agents register before they report ready), instead of
        // placing it on whoever registered first and moving positions as the rest arrive.
        if let Some((name, spec)) = &cfg.pool {
            let pool = StoragePool::new(name, spec.clone());
            Api::<StoragePool>::all(client.clone())
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&pool),
                )
                .await
                .map_err(kube_err("creating the pool"))?;
        }

        let mut fleet_cfg = cfg.fleet.clone();
        fleet_cfg.kubernetes = Some(KubeAgents {
            kubeconfig: cfg.kubeconfig.clone(),
            namespace: cfg.namespace.clone(),
            lease_duration_secs: cfg.lease_duration_secs,
        });
        std::fs::create_dir_all(&fleet_cfg.dir).map_err(|error| FleetError::Io {
            path: fleet_cfg.dir.clone(),
            error,
        })?;
        let mut cluster = DevCluster {
            fleet: Fleet::start(fleet_cfg).await?,
            cfg,
            client,
            operators: Vec::new(),
            operator_starts: 0,
        };
        cluster.start_operator().await?;
        let agents = cluster.fleet.len();
        cluster
            .wait_nodes("every agent's StorageNode to be Up", |nodes| {
                nodes.len() == agents
                    && nodes
                        .iter()
                        .all(|n| n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Up))
            })
            .await?;
        if let Some((name, _)) = cluster.cfg.pool.clone() {
            cluster
                .wait_pool(
                    &name,
                    "the pool to be Ready with its map on every agent",
                    |p| {
                        let c = p
                            .status
                            .as_ref()
                            .map(|s| s.conditions.as_slice())
                            .unwrap_or(&[]);
                        condition::is_true(c, READY)
                            && !condition::is_true(c, condition::PROGRESSING)
                    },
                )
                .await?;
        }
        Ok(cluster)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn config(&self) -> &DevClusterConfig {
        &self.cfg
    }

    pub fn pools(&self) -> Api<StoragePool> {
        Api::all(self.client.clone())
    }

    pub fn nodes(&self) -> Api<StorageNode> {
        Api::all(self.client.clone())
    }

    /// Where each running operator replica serves `/metrics`, oldest first.
    pub fn operator_metrics(&self) -> Vec<SocketAddr> {
        self.operators.iter().map(|o| o.metrics).collect()
    }

    pub fn operator_log(&self) -> PathBuf {
        self.cfg.fleet.dir.join("operator.log")
    }

    /// Starts one more operator replica (a new identity each time) and waits for its ready
    /// line. It becomes leader once no other replica holds the Lease.
    pub async fn start_operator(&mut self) -> Result<(), DevClusterError> {
        self.operator_starts += 1;
        let log_path = self.operator_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| FleetError::Io {
                path: log_path.clone(),
                error,
            })?;
        let mut command = Command::new(&self.cfg.operator_bin);
        command
            .arg("--namespace")
            .arg(&self.cfg.namespace)
            .arg("--identity")
            .arg(format!("potluck-dev-operator-{}", self.operator_starts))
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            // Short, so a restarted operator takes over from a killed one within seconds.
            .arg("--leader-lease-secs")
            .arg("3")
            .arg("--agent-timeout-secs")
            .arg("2")
            .arg(format!("--require-auth={}", self.cfg.require_auth))
            .args(
                self.fleet
                    .admin_tls_dir()
                    .map(|d| vec!["--tls-dir".into(), d.into_os_string()])
                    .unwrap_or_default(),
            )
            .env("KUBECONFIG", &self.cfg.kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        #[cfg(unix)]
        if self.cfg.fleet.own_process_group {
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|error| DevClusterError::Spawn {
            bin: self.cfg.operator_bin.clone(),
            error,
        })?;
        let not_ready = |why: String| DevClusterError::OperatorNotReady {
            why,
            log: log_path.clone(),
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| not_ready("its stdout was not captured".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + self.cfg.stage_timeout;
        let metrics = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .map_err(|_| not_ready("timed out".into()))?
                .map_err(|e| not_ready(format!("reading its stdout: {e}")))?
                .ok_or_else(|| not_ready("it exited".into()))?;
            if let Some(rest) = line.strip_prefix(OPERATOR_READY_PREFIX) {
                let addr = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("metrics="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .ok_or_else(|| not_ready(format!("malformed ready line {line:?}")))?;
                break addr;
            }
        };
        // Keep reading stdout so the operator never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.operators.push(Operator { child, metrics });
        Ok(())
    }

    /// SIGKILLs operator replica `index` (oldest first): a crash, with its leader Lease left
    /// to expire.
    pub async fn kill_operator(&mut self, index: usize) {
        if index < self.operators.len() {
            let mut op = self.operators.remove(index);
            let _ = op.child.start_kill();
            let _ = op.child.wait().await;
        }
    }

    /// Polls the pool until `done` holds.
    pub async fn wait_pool(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&StoragePool) -> bool,
    ) -> Result<StoragePool, DevClusterError> {
        let api = self.pools();
        let deadline = tokio::time::Instant::now() + self.cfg.stage_timeout;
        let mut last;
        loop {
            match api.get_opt(name).await {
                Ok(Some(pool)) => {
                    if done(&pool) {
                        return Ok(pool);
                    }
                    last = serde_json::to_string(&pool.status).unwrap_or_default();
                }
                Ok(None) => last = format!("no StoragePool {name}"),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout(what, last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls the StorageNodes until `done` holds for the list.
    pub async fn wait_nodes(
        &self,
        what: &str,
        done: impl Fn(&[StorageNode]) -> bool,
    ) -> Result<Vec<StorageNode>, DevClusterError> {
        let api = self.nodes();
        let deadline = tokio::time::Instant::now() + self.cfg.stage_timeout;
        let mut last;
        loop {
            match api.list(&Default::default()).await {
                Ok(list) => {
                    if done(&list.items) {
                        return Ok(list.items);
                    }
                    last = list
                        .items
                        .iter()
                        .map(|n| {
                            format!(
                                "{}={:?}",
                                n.name_any(),
                                n.status.as_ref().and_then(|s| s.phase)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout(what, last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn timeout(&self, what: &str, last: String) -> DevClusterError {
        DevClusterError::Timeout {
            what: format!("{what} (operator log: {})", self.operator_log().display()),
            secs: self.cfg.stage_timeout.as_secs(),
            last,
        }
    }

    /// Stops the operator (SIGTERM, so it hands its Lease over) and every agent.
    pub async fn shutdown(mut self) -> Result<(), DevClusterError> {
        for mut op in std::mem::take(&mut self.operators) {
            if let Some(pid) = op.child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), op.child.wait())
                .await
                .is_err()
            {
                let _ = op.child.start_kill();
                let _ = op.child.wait().await;
            }
        }
        self.fleet.shutdown().await?;
        Ok(())
    }
}

async fn client_for(path: &Path) -> Result<Client, DevClusterError> {
    let bad = |message: String| DevClusterError::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

/// Server-side applies the CRDs generated from the Rust types (what `deploy/crds.yaml` holds)
/// and waits until the API server serves them.
pub async fn install_crds(client: &Client, timeout: Duration) -> Result<(), DevClusterError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let crds = potluck_api::crds();
    for crd in &crds {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .map_err(kube_err("installing the CRDs"))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    for crd in &crds {
        let name = crd.name_any();
        loop {
            let got = api.get(&name).await.map_err(kube_err("reading the CRDs"))?;
            let established = got
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DevClusterError::Timeout {
                    what: format!("CRD {name} to be Established"),
                    secs: timeout.as_secs(),
                    last: serde_json::to_string(&got.status).unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
