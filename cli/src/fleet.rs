//! A local fleet of real `potluck-agent` processes: `potluck dev up` and the
//! end-to-end tests both run one.
//!
//! The fleet plays the operator's part: it spawns the agents, waits until
//! each says it is serving, builds the cluster map with the operator's own
//! `next_map`, and pushes it to every agent. Children are killed when the
//! `Fleet` is dropped, so a failing test leaves no agent behind.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use potluck_operator::cluster_map::{self, MapError, MemberSpec, PoolSpec};
use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::{ApplyClusterMapRequest, ClusterMap, GetClusterMapRequest, MemberState};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::client::{Client, ClientError};

/// Name of the agent binary searched by [`find_agent_bin`].
pub const AGENT_BIN_NAME: &str = "potluck-agent";
/// Environment variable that overrides where the agent binary is.
pub const AGENT_BIN_ENV: &str = "POTLUCK_AGENT_BIN";
/// First token of the line an agent prints on stdout once it serves.
pub const READY_PREFIX: &str = "POTLUCK_AGENT_READY";
/// Offset between an agent's gRPC port and its metrics port with a base port.
pub const METRICS_PORT_OFFSET: u16 = 100;

const LOG_TAIL_LINES: usize = 20;
const PUSH_ATTEMPTS: u32 = 10;

/// Why the fleet could not start or be changed. Messages say what to look at
/// (the agent's log tail is included where the agent is the culprit).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the {AGENT_BIN_NAME} binary was not found (looked for {searched})")]
    AgentBinNotFound { searched: String },
    #[error("invalid fleet configuration: {0}")]
    Config(String),
    #[error("invalid ports: {reason}")]
    Ports { reason: String },
    #[error("cannot prepare {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start {bin}: {error}")]
    Spawn { bin: PathBuf, error: std::io::Error },
    #[error("{id} did not report ready within {timeout_secs} s; last lines of {log}:\n{tail}")]
    AgentNotReady {
        id: String,
        timeout_secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{id} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    AgentExited {
        id: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{id} printed a malformed ready line {line:?}: {reason}")]
    BadReadyLine {
        id: String,
        line: String,
        reason: String,
    },
    #[error("TLS files of the fleet: {0}")]
    Tls(#[from] potluck_tls::TlsError),
    #[error("cannot build the cluster map: {0}")]
    Map(MapError),
    #[error("cannot push the cluster map to {id} at {addr}: {message}")]
    PushMap {
        id: String,
        addr: SocketAddr,
        message: String,
    },
    #[error("no agent {index}: the fleet has {len}")]
    NoSuchAgent { index: usize, len: usize },
    #[error("cannot signal {id}: {error}")]
    Signal { id: String, error: std::io::Error },
}

impl From<MapError> for FleetError {
    fn from(err: MapError) -> Self {
        Self::Map(err)
    }
}

/// What to start. [`FleetConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct FleetConfig {
    /// Number of agents, each its own failure domain (`host-<i>`).
    pub agents: usize,
    /// Holds `agent-<i>/` data directories and `agent-<i>.log` files.
    pub dir: PathBuf,
    pub k: u32,
    pub m: u32,
    pub chunk_size: u64,
    pub pg_count: u32,
    /// Capacity each agent offers.
    pub capacity_bytes: u64,
    pub agent_bin: PathBuf,
    /// Appended to every agent's command line.
    pub extra_agent_args: Vec<String>,
    /// Pools of the map; empty means one pool "default" from k, m,
    /// chunk_size and pg_count.
    pub pools: Vec<PoolSpec>,
    /// `Some(p)`: agent i serves gRPC on p+i and metrics on p+100+i (so the
    /// endpoints are predictable for people). `None` or `Some(0)`: free ports.
    pub base_port: Option<u16>,
    /// How long an agent may take to print its ready line.
    pub ready_timeout: Duration,
    /// How long a SIGTERM'd agent may take to exit before it is killed.
    pub stop_timeout: Duration,
    /// Run agents in their own process group so that Ctrl-C in a terminal
    /// reaches only the parent, which then stops them in order (`dev up`).
    /// Leave false in tests: if the test process dies of Ctrl-C, the agents
    /// get it too instead of lingering.
    pub own_process_group: bool,
    /// `Some`: agents run in Kubernetes mode (register a StorageNode, renew a Lease) and the
    /// operator publishes the maps; the fleet then never builds or pushes one itself.
    pub kubernetes: Option<KubeAgents>,
    /// Agents (by index) started differently from the rest; the others use
    /// [`AgentOptions::default`].
    pub agent_options: BTreeMap<usize, AgentOptions>,
    /// Mutual TLS between agents, the fleet and clients (on by default): the
    /// fleet is the admin holding the cluster CA, and issues every agent, a
    /// client and itself a certificate under `<dir>/tls/`.
    pub tls: bool,
    /// Where the CA lives (`ca.pem`, `ca-key.pem`; made if absent). `None` is
    /// `<dir>/tls/ca`; tests share one CA across fleets with it.
    pub tls_ca_dir: Option<PathBuf>,
}

/// How one agent is started, where it differs from the fleet's defaults: on another address,
/// under a wrapper command (e.g. `ip netns exec NAME` to run it in a network namespace), with
/// its own kubeconfig.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// Address its gRPC and metrics listeners bind, and so the endpoint it registers;
    /// `None` is 127.0.0.1.
    pub listen_ip: Option<IpAddr>,
    /// Program and arguments the agent binary is run under; empty runs it directly. The
    /// wrapper must exec the agent (as `ip netns exec` does), so signals reach it.
    pub command_prefix: Vec<String>,
    /// In Kubernetes mode, the kubeconfig this agent uses instead of the fleet's.
    pub kubeconfig: Option<PathBuf>,
    /// Appended after the fleet's `extra_agent_args`, for this agent only (e.g. one slow
    /// member in a benchmark).
    pub extra_args: Vec<String>,
}

/// How agents reach the API server in Kubernetes mode.
#[derive(Clone, Debug)]
pub struct KubeAgents {
    pub kubeconfig: PathBuf,
    /// Namespace of the agents' Leases.
    pub namespace: String,
    /// Seconds a Lease lasts; agents renew every third of it.
    pub lease_duration_secs: u64,
}

impl FleetConfig {
    /// Six agents, 4+2, 1 MiB chunks, 128 PGs, 10 GiB each, free ports, and
    /// the agent binary from [`find_agent_bin`] (or `potluck-agent` on PATH).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            agents: 6,
            dir: dir.into(),
            k: 4,
            m: 2,
            chunk_size: 1 << 20,
            pg_count: 128,
            capacity_bytes: 10 << 30,
            agent_bin: find_agent_bin().unwrap_or_else(|_| PathBuf::from(AGENT_BIN_NAME)),
            extra_agent_args: Vec::new(),
            pools: Vec::new(),
            base_port: None,
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(20),
            own_process_group: false,
            kubernetes: None,
            agent_options: BTreeMap::new(),
            tls: true,
            tls_ca_dir: None,
        }
    }

    /// How agent `index` is started ([`FleetConfig::agent_options`]).
    pub fn agent_options(&self, index: usize) -> AgentOptions {
        self.agent_options.get(&index).cloned().unwrap_or_default()
    }

    /// The pools the map is built from (see [`FleetConfig::pools`]).
    pub fn effective_pools(&self) -> Vec<PoolSpec> {
        if !self.pools.is_empty() {
            return self.pools.clone();
        }
        vec![PoolSpec {
            name: "default".to_string(),
            k: self.k,
            m: self.m,
            chunk_size: self.chunk_size,
            pg_count: self.pg_count,
            write_quorum: None,
        }]
    }

    /// The (gRPC, metrics) listen ports of agent `index`; 0 means "any".
    pub fn ports(&self, index: usize) -> Result<(u16, u16), FleetError> {
        let base = match self.base_port {
            None | Some(0) => return Ok((0, 0)),
            Some(base) => base,
        };
        if self.agents > usize::from(METRICS_PORT_OFFSET) {
            return Err(FleetError::Ports {
                reason: format!(
                    "with a base port, at most {METRICS_PORT_OFFSET} agents fit before the metrics ports"
                ),
            });
        }
        let last = u32::from(base) + u32::from(METRICS_PORT_OFFSET) + self.agents as u32 - 1;
        if last > u32::from(u16::MAX) {
            return Err(FleetError::Ports {
                reason: format!(
                    "base port {base} leaves no room for {} agents (needs up to port {last})",
                    self.agents
                ),
            });
        }
        let grpc = base + index as u16;
        Ok((grpc, grpc + METRICS_PORT_OFFSET))
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self::new("potluck-data")
    }
}

impl fmt::Debug for FleetConfig {
    // Hand-written: PoolSpec comes from another crate and may not be Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("agents", &self.agents)
            .field("dir", &self.dir)
            .field("k", &self.k)
            .field("m", &self.m)
            .field("chunk_size", &self.chunk_size)
            .field("pg_count", &self.pg_count)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("agent_bin", &self.agent_bin)
            .field("extra_agent_args", &self.extra_agent_args)
            .field(
                "pools",
                &self
                    .pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("base_port", &self.base_port)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop_timeout", &self.stop_timeout)
            .field("own_process_group", &self.own_process_group)
            .field("kubernetes", &self.kubernetes)
            .field("agent_options", &self.agent_options)
            .finish()
    }
}

/// Finds the agent binary: `$POTLUCK_AGENT_BIN` if set, else next to the
/// current executable, else in its parent directory (test executables live
/// in `target/<profile>/deps/`, the agent in `target/<profile>/`).
pub fn find_agent_bin() -> Result<PathBuf, FleetError> {
    let name = format!("{AGENT_BIN_NAME}{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        // An explicit setting that is wrong should not silently fall back.
        return Err(FleetError::AgentBinNotFound {
            searched: format!("{AGENT_BIN_ENV}={}, which is not a file", path.display()),
        });
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate.display().to_string());
            dir = d.parent();
        }
    }
    searched.push(format!("${AGENT_BIN_ENV}"));
    Err(FleetError::AgentBinNotFound {
        searched: searched.join(", "),
    })
}

/// What an agent announced on its ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    pub id: String,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// Parses `POTLUCK_AGENT_READY id=<ID> grpc=<ADDR> metrics=<ADDR>`; unknown
/// `key=value` fields are ignored so the agent can add some later.
pub fn parse_ready_line(line: &str) -> Result<ReadyLine, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some(READY_PREFIX) {
        return Err(format!("does not start with {READY_PREFIX}"));
    }
    let (mut id, mut grpc, mut metrics) = (None, None, None);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "id" => id = Some(value.to_string()),
            "grpc" => grpc = Some(value),
            "metrics" => metrics = Some(value),
            _ => {}
        }
    }
    let addr = |name: &str, value: Option<&str>| -> Result<SocketAddr, String> {
        let value = value.ok_or_else(|| format!("no {name}= field"))?;
        value
            .parse()
            .map_err(|e| format!("{name}={value} is not HOST:PORT ({e})"))
    };
    Ok(ReadyLine {
        id: id.ok_or("no id= field")?,
        grpc: addr("grpc", grpc)?,
        metrics: addr("metrics", metrics)?,
    })
}

/// The last `lines` lines of a log file (reads at most its last 16 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(16 * 1024);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            let tail = all[from..].join("\n");
            if tail.trim().is_empty() {
                "(the log is empty)".to_string()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "exit status unknown".to_string(),
    }
}

struct Agent {
    id: String,
    failure_domain: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    grpc: SocketAddr,
    metrics: SocketAddr,
    state: MemberState,
    /// Serial of the certificate issued at its latest start.
    cert_serial: Option<Vec<u8>>,
}

/// A running local fleet. Index `i` is agent `agent-<i>` throughout.
pub struct Fleet {
    cfg: FleetConfig,
    agents: Vec<Agent>,
    map: ClusterMap,
    tls: Option<FleetTls>,
    /// Certificate serials every map from now on lists as revoked.
    revoked: Vec<Vec<u8>>,
}

/// The fleet's CA and the certificates it holds for itself and hands to users.
struct FleetTls {
    ca: potluck_tls::ClusterCa,
    /// Operator role: pushes maps.
    admin: potluck_tls::Material,
}

/// How long the certificates a local fleet issues last. Long enough for any
/// session; a restart of the fleet issues fresh ones.
const FLEET_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// The fleet's CA from `dir`, made there on first use.
pub fn load_or_create_ca(dir: &Path) -> Result<potluck_tls::ClusterCa, FleetError> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| FleetError::Io { path, error }
    };
    if cert.exists() && key.exists() {
        let cert_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        return Ok(potluck_tls::ClusterCa::from_pem(&cert_pem, &key_pem)?);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca = potluck_tls::ClusterCa::generate("local fleet")?;
    let tmp = dir.join(".ca-key.pem.tmp");
    std::fs::write(&tmp, ca.key_pem()).map_err(io(&tmp))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &key).map_err(io(&key))?;
    std::fs::write(&cert, ca.cert_pem()).map_err(io(&cert))?;
    Ok(ca)
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.cfg.dir)
            .field(
                "agents",
                &self
                    .agents
                    .iter()
                    .map(|a| (a.id.as_str(), a.grpc, a.child.is_some()))
                    .collect::<Vec<_>>(),
            )
            .field("epoch", &self.map.epoch)
            .finish()
    }
}

/// How waiting for the ready line ended, short of success.
enum NotReady {
    Eof,
    Timeout,
    Read(std::io::Error),
    Malformed { line: String, reason: String },
}

impl Fleet {
    /// Starts `cfg.agents` agents, waits until all are serving, and pushes
    /// the first cluster map (all members Up) to every one. Data directories
    /// are kept across runs; if an agent still holds a map from an earlier
    /// run, the new map continues from its epoch. On error every agent
    /// started so far is killed.
    pub async fn start(cfg: FleetConfig) -> Result<Fleet, FleetError> {
        if cfg.agents == 0 {
            return Err(FleetError::Config("at least one agent is needed".into()));
        }
        cfg.ports(0)?;
        std::fs::create_dir_all(&cfg.dir).map_err(|error| FleetError::Io {
            path: cfg.dir.clone(),
            error,
        })?;
        let tls = if cfg.tls {
            let ca_dir = cfg
                .tls_ca_dir
                .clone()
                .unwrap_or_else(|| cfg.dir.join("tls").join("ca"));
            let ca = load_or_create_ca(&ca_dir)?;
            let (admin, _) =
                ca.issue_material(&potluck_tls::Subject::Operator, FLEET_CERT_VALIDITY)?;
            admin.write_dir(&cfg.dir.join("tls").join("admin"))?;
            let (client, _) = ca.issue_material(
                &potluck_tls::Subject::Client {
                    name: "local".into(),
                },
                FLEET_CERT_VALIDITY,
            )?;
            client.write_dir(&cfg.dir.join("tls").join("client"))?;
            Some(FleetTls { ca, admin })
        } else {
            None
        };
        let mut fleet = Fleet {
            agents: Vec::with_capacity(cfg.agents),
            map: ClusterMap::default(),
            cfg,
            tls,
            revoked: Vec::new(),
        };
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut stdouts = Vec::with_capacity(fleet.cfg.agents);
        for i in 0..fleet.cfg.agents {
            let agent = Agent {
                id: format!("agent-{i}"),
                failure_domain: format!("host-{i}"),
                data_dir: fleet.cfg.dir.join(format!("agent-{i}")),
                log_path: fleet.cfg.dir.join(format!("agent-{i}.log")),
                child: None,
                grpc: placeholder,
                metrics: placeholder,
                state: MemberState::Up,
                cert_serial: None,
            };
            fleet.agents.push(agent);
            let stdout = fleet.spawn(i)?;
            stdouts.push(stdout);
        }
        let deadline = tokio::time::Instant::now() + fleet.cfg.ready_timeout;
        let waits = stdouts
            .into_iter()
            .zip(&fleet.agents)
            .map(|(stdout, agent)| wait_ready(stdout, agent.log_path.clone(), deadline));
        let results = futures::future::join_all(waits).await;
        for (i, result) in results.into_iter().enumerate() {
            fleet.take_ready(i, result).await?;
        }
        if fleet.cfg.kubernetes.is_none() {
            let previous = fleet.newest_agent_map().await;
            fleet.map = fleet.build_map(previous.as_ref())?;
            fleet.push_current().await?;
        }
        Ok(fleet)
    }

    fn agent_mut(&mut self, index: usize) -> Result<&mut Agent, FleetError> {
        let len = self.agents.len();
        self.agents
            .get_mut(index)
            .ok_or(FleetError::NoSuchAgent { index, len })
    }

    /// Spawns agent `index` and returns its stdout, to be read for readiness.
    fn spawn(&mut self, index: usize) -> Result<ChildStdout, FleetError> {
        let (grpc_port, metrics_port) = self.cfg.ports(index)?;
        let cfg = &self.cfg;
        let agent = &mut self.agents[index];
        std::fs::create_dir_all(&agent.data_dir).map_err(|error| FleetError::Io {
            path: agent.data_dir.clone(),
            error,
        })?;
        let io_err = |error| FleetError::Io {
            path: agent.log_path.clone(),
            error,
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&agent.log_path)
            .map_err(io_err)?;
        // Marks where this run starts, since restarts append to the same log.
        writeln!(
            log,
            "===== potluck fleet: starting {} at unix ms {} =====",
            agent.id,
            now_unix_ms()
        )
        .map_err(io_err)?;
        let options = cfg.agent_options(index);
        let ip = options.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let tls_dir = cfg.dir.join("tls").join(&agent.id);
        if let Some(tls) = &self.tls {
            // Issued on every start: a restarted agent gets a fresh certificate.
            let (material, issued) = tls.ca.issue_material(
                &potluck_tls::Subject::Member {
                    id: agent.id.clone(),
                    ips: vec![ip],
                },
                FLEET_CERT_VALIDITY,
            )?;
            material.write_dir(&tls_dir)?;
            agent.cert_serial = Some(issued.serial);
        }
        let (program, mut command) = match options.command_prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&cfg.agent_bin);
                (PathBuf::from(program), c)
            }
            None => (cfg.agent_bin.clone(), Command::new(&cfg.agent_bin)),
        };
        command
            .arg("--id")
            .arg(&agent.id)
            .arg("--listen")
            .arg(SocketAddr::new(ip, grpc_port).to_string())
            .arg("--metrics-listen")
            .arg(SocketAddr::new(ip, metrics_port).to_string())
            .arg("--data-dir")
            .arg(&agent.data_dir)
            .arg("--capacity")
            .arg(cfg.capacity_bytes.to_string())
            .arg("--failure-domain")
            .arg(&agent.failure_domain)
            .args(&cfg.extra_agent_args)
            .args(&options.extra_args)
            // The log is a file: escape codes would only clutter it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if self.tls.is_some() {
            command.arg("--tls-dir").arg(&tls_dir);
        }
        if let Some(kube) = &cfg.kubernetes {
            command
                .arg("--kubernetes")
                .arg("--namespace")
                .arg(&kube.namespace)
                .arg("--lease-duration-secs")
                .arg(kube.lease_duration_secs.to_string())
                .env(
                    "KUBECONFIG",
                    options.kubeconfig.as_ref().unwrap_or(&kube.kubeconfig),
                );
        }
        #[cfg(unix)]
        if cfg.own_process_group {
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|error| FleetError::Spawn {
            bin: program,
            error,
        })?;
        let stdout = child.stdout.take();
        agent.child = Some(child);
        stdout.ok_or_else(|| FleetError::Spawn {
            bin: cfg.agent_bin.clone(),
            error: std::io::Error::other("the child's stdout was not captured"),
        })
    }

    /// Records the outcome of waiting for agent `index`'s ready line.
    async fn take_ready(
        &mut self,
        index: usize,
        result: Result<ReadyLine, NotReady>,
    ) -> Result<(), FleetError> {
        let timeout_secs = self.cfg.ready_timeout.as_secs();
        let agent = &mut self.agents[index];
        let ready = match result {
            Ok(ready) => ready,
            Err(NotReady::Malformed { line, reason }) => {
                return Err(FleetError::BadReadyLine {
                    id: agent.id.clone(),
                    line,
                    reason,
                })
            }
            Err(NotReady::Timeout) => {
                if let Some(child) = agent.child.as_mut() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                agent.child = None;
                return Err(FleetError::AgentNotReady {
                    id: agent.id.clone(),
                    timeout_secs,
                    log: agent.log_path.clone(),
                    tail: log_tail(&agent.log_path, LOG_TAIL_LINES),
                });
            }
            Err(not_ready @ (NotReady::Eof | NotReady::Read(_))) => {
                // Stdout closed: the agent is exiting; give it a moment so
                // the status and the last log lines are complete.
                let status = match agent.child.as_mut() {
                    Some(child) => {
                        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                            Ok(Ok(status)) => Some(status),
                            _ => {
                                let _ = child.start_kill();
                                child.wait().await.ok()
                            }
                        }
                    }
                    None => None,
                };
                agent.child = None;
                let mut status = describe_status(status);
                if let NotReady::Read(e) = not_ready {
                    status.push_str(&format!("; reading its stdout failed: {e}"));
                }
                return Err(FleetError::AgentExited {
                    id: agent.id.clone(),
                    status,
                    log: agent.log_path.clone(),
                    tail: log_tail(&agent.log_path, LOG_TAIL_LINES),
                });
            }
        };
        if ready.id != agent.id {
            return Err(FleetError::BadReadyLine {
                id: agent.id.clone(),
                line: format!("{READY_PREFIX} id={} ...", ready.id),
                reason: format!("expected id={}", agent.id),
            });
        }
        agent.grpc = ready.grpc;
        agent.metrics = ready.metrics;
        agent.state = MemberState::Up;
        Ok(())
    }

    /// The newest map any agent already holds (from an earlier run on the
    /// same data directories), so the next epoch is accepted.
    async fn newest_agent_map(&self) -> Option<ClusterMap> {
        let fetches = self
            .agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| fetch_map(&a.id, a.grpc, self.admin_tls()));
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .flatten()
            .filter(|m| m.epoch > 0)
            .max_by_key(|m| m.epoch)
    }

    fn member_specs(&self) -> Vec<MemberSpec> {
        self.agents
            .iter()
            .map(|a| MemberSpec {
                id: a.id.clone(),
                endpoint: a.grpc.to_string(),
                failure_domain: a.failure_domain.clone(),
                capacity_bytes: self.cfg.capacity_bytes,
                state: a.state,
            })
            .collect()
    }

    fn build_map(&self, previous: Option<&ClusterMap>) -> Result<ClusterMap, FleetError> {
        let members = self.member_specs();
        let pools = self.cfg.effective_pools();
        let map = cluster_map::next_map(previous, &members, &pools, now_unix_ms())?;
        let revoked = self
            .revoked
            .iter()
            .map(|s| tonic::codegen::Bytes::copy_from_slice(s))
            .collect();
        Ok(potluck_operator::certificates::with_revoked_certificates(
            map,
            previous,
            revoked,
            now_unix_ms(),
        )?)
    }

    /// Serial of the certificate agent `index` got at its latest start, if TLS is on.
    pub fn agent_cert_serial(&self, index: usize) -> Option<&[u8]> {
        self.agents.get(index)?.cert_serial.as_deref()
    }

    /// Lists `serial` as revoked in every map from the next push on: agents then refuse
    /// calls made with that certificate. Revoking a member's certificate does not move its
    /// data; mark it Out too ([`Fleet::set_state`]) so the others stop placing data on it.
    pub fn revoke_certificate(&mut self, serial: Vec<u8>) {
        if !self.revoked.contains(&serial) {
            self.revoked.push(serial);
        }
    }

    /// Pushes `self.map` to every running agent, all at once.
    async fn push_current(&self) -> Result<(), FleetError> {
        let pushes = self
            .agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| push_map_to(&a.id, a.grpc, &self.map, self.admin_tls()));
        let results = futures::future::join_all(pushes).await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// Builds the next map epoch from the current members (addresses and
    /// states as they are now) and pushes it to every running agent.
    pub async fn push_map(&mut self) -> Result<&ClusterMap, FleetError> {
        if self.cfg.kubernetes.is_some() {
            return Err(FleetError::Config(
                "in Kubernetes mode the operator publishes maps; change StorageNodes or \
                 StoragePools instead"
                    .into(),
            ));
        }
        let next = self.build_map(Some(&self.map))?;
        self.map = next;
        self.push_current().await?;
        Ok(&self.map)
    }

    /// The map last pushed.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    /// The configuration the fleet was started with.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// Number of agents, running or not.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Never true for a started fleet; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Member id of agent `index` (`agent-<index>`). Panics if out of range.
    pub fn id(&self, index: usize) -> &str {
        &self.agents[index].id
    }

    /// `http://ADDR:P` of every agent not stopped or killed through
    /// this fleet, in index order (agents that crashed on their own are
    /// included until [`Fleet::try_exited`] notices).
    pub fn endpoints(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| format!("{}://{}", self.scheme(), a.grpc))
            .collect()
    }

    /// `https://ADDR:P` (`http` without TLS) of agent `index`, running or not. Panics if
    /// out of range.
    pub fn endpoint(&self, index: usize) -> String {
        format!("{}://{}", self.scheme(), self.agents[index].grpc)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// gRPC address of agent `index` (its latest, if restarted). Panics if out of range.
    pub fn grpc_addr(&self, index: usize) -> SocketAddr {
        self.agents[index].grpc
    }

    /// Metrics (`/metrics`) address of agent `index`. Panics if out of range.
    pub fn metrics_addr(&self, index: usize) -> SocketAddr {
        self.agents[index].metrics
    }

    /// Data directory of agent `index`. Panics if out of range.
    pub fn data_dir(&self, index: usize) -> &Path {
        &self.agents[index].data_dir
    }

    /// Log file (the agent's stderr) of agent `index`. Panics if out of range.
    pub fn log_path(&self, index: usize) -> &Path {
        &self.agents[index].log_path
    }

    /// Process id of agent `index` while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.agents
            .get(index)
            .and_then(|a| a.child.as_ref())
            .and_then(Child::id)
    }

    /// Whether agent `index` is still running (reaps it if it has exited).
    pub fn is_running(&mut self, index: usize) -> bool {
        let Some(agent) = self.agents.get_mut(index) else {
            return false;
        };
        let running = match agent.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        if !running {
            agent.child = None;
        }
        running
    }

    /// Agents that exited since the last call (crashed, or killed from
    /// outside), with their exit status. They stay in the map as they were.
    pub fn try_exited(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut exited = Vec::new();
        for (i, agent) in self.agents.iter_mut().enumerate() {
            if let Some(child) = agent.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((i, status));
                    agent.child = None;
                }
            }
        }
        exited
    }

    /// Sets the state agent `index` gets in the next map (see
    /// [`Fleet::push_map`]); a killed agent stays Up in the map until marked.
    pub fn set_state(&mut self, index: usize, state: MemberState) -> Result<(), FleetError> {
        self.agent_mut(index)?.state = state;
        Ok(())
    }

    /// SIGKILLs agent `index` and waits until it is gone: a crash, as far as
    /// the agent can tell. A no-op if it is not running.
    pub async fn kill(&mut self, index: usize) -> Result<(), FleetError> {
        let agent = self.agent_mut(index)?;
        if let Some(mut child) = agent.child.take() {
            let _ = child.start_kill();
            child.wait().await.map_err(|error| FleetError::Signal {
                id: agent.id.clone(),
                error,
            })?;
        }
        Ok(())
    }

    /// SIGTERMs agent `index` and waits for its clean shutdown, killing it
    /// if it takes longer than `stop_timeout`. A no-op if it is not running.
    pub async fn stop(&mut self, index: usize) -> Result<(), FleetError> {
        let stop_timeout = self.cfg.stop_timeout;
        let agent = self.agent_mut(index)?;
        stop_agent(agent, stop_timeout).await
    }

    /// Stops agent `index` if it runs, starts it again with the same id and
    /// data directory (ports may change unless `base_port` is set), and
    /// pushes a new map epoch carrying its new address, marked Up.
    pub async fn restart(&mut self, index: usize) -> Result<(), FleetError> {
        self.stop(index).await?;
        let stdout = self.spawn(index)?;
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        let log = self.agents[index].log_path.clone();
        let result = wait_ready(stdout, log, deadline).await;
        self.take_ready(index, result).await?;
        if self.cfg.kubernetes.is_none() {
            self.push_map().await?;
        }
        Ok(())
    }

    /// Starts one more agent (the next index, its own failure domain) and waits until it
    /// serves; without Kubernetes it is also added to a new map epoch, with it, it registers
    /// and the operator places it. Returns its index.
    pub async fn add_agent(&mut self) -> Result<usize, FleetError> {
        let index = self.agents.len();
        self.cfg.agents += 1;
        if let Err(e) = self.cfg.ports(index) {
            self.cfg.agents -= 1;
            return Err(e);
        }
        self.agents.push(Agent {
            id: format!("agent-{index}"),
            failure_domain: format!("host-{index}"),
            data_dir: self.cfg.dir.join(format!("agent-{index}")),
            log_path: self.cfg.dir.join(format!("agent-{index}.log")),
            child: None,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: MemberState::Up,
            cert_serial: None,
        });
        let stdout = self.spawn(index)?;
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        let log = self.agents[index].log_path.clone();
        let result = wait_ready(stdout, log, deadline).await;
        self.take_ready(index, result).await?;
        if self.cfg.kubernetes.is_none() {
            self.push_map().await?;
        }
        Ok(index)
    }

    /// A client over every running agent, in the fleet's default pool.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let options = crate::client::ClientOptions {
            tls: self
                .client_tls()
                .transpose()
                .map_err(|e| ClientError::InvalidEndpoint {
                    endpoint: String::new(),
                    reason: e.to_string(),
                })?,
            ..Default::default()
        };
        Client::connect_with(&self.endpoints(), options).await
    }

    /// The certificate the fleet pushes maps with (operator role), if TLS is on.
    fn admin_tls(&self) -> Option<&potluck_tls::Material> {
        self.tls.as_ref().map(|t| &t.admin)
    }

    /// The fleet's own certificate (operator role): what an operator started
    /// next to the fleet calls agents with, if TLS is on.
    pub fn admin_tls_dir(&self) -> Option<PathBuf> {
        self.tls
            .as_ref()
            .map(|_| self.cfg.dir.join("tls").join("admin"))
    }

    /// Where a user's client certificate is (`potluck --tls-dir`), if TLS is on.
    pub fn client_tls_dir(&self) -> Option<PathBuf> {
        self.tls
            .as_ref()
            .map(|_| self.cfg.dir.join("tls").join("client"))
    }

    /// Where agent `index`'s certificate is; replacing the files renews it.
    pub fn agent_tls_dir(&self, index: usize) -> Option<PathBuf> {
        self.tls
            .as_ref()
            .map(|_| self.cfg.dir.join("tls").join(self.id(index)))
    }

    /// The client certificate files, read.
    pub fn client_tls(&self) -> Option<Result<potluck_tls::Material, potluck_tls::TlsError>> {
        self.client_tls_dir()
            .map(|d| potluck_tls::Material::read_dir(&d))
    }

    /// The fleet's CA, to issue more certificates (tests, drills), if TLS is on.
    pub fn ca(&self) -> Option<&potluck_tls::ClusterCa> {
        self.tls.as_ref().map(|t| &t.ca)
    }

    /// Stops every agent cleanly (SIGTERM, all at once) and waits for them.
    pub async fn shutdown(mut self) -> Result<(), FleetError> {
        let stop_timeout = self.cfg.stop_timeout;
        let stops = self
            .agents
            .iter_mut()
            .map(|agent| stop_agent(agent, stop_timeout));
        let results = futures::future::join_all(stops).await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

impl Drop for Fleet {
    /// Kills what still runs and waits briefly, so the ports and RocksDB
    /// locks are free for the next fleet a test starts right after.
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(child) = agent.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                while Instant::now() < deadline {
                    match child.try_wait() {
                        Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                        _ => break,
                    }
                }
            }
        }
    }
}

async fn stop_agent(agent: &mut Agent, stop_timeout: Duration) -> Result<(), FleetError> {
    let Some(mut child) = agent.child.take() else {
        return Ok(());
    };
    if let Ok(Some(_)) = child.try_wait() {
        return Ok(());
    }
    let terminated = match child.id() {
        Some(pid) => send_sigterm(pid).await,
        None => false,
    };
    if terminated {
        if let Ok(result) = tokio::time::timeout(stop_timeout, child.wait()).await {
            result.map_err(|error| FleetError::Signal {
                id: agent.id.clone(),
                error,
            })?;
            return Ok(());
        }
        tracing::warn!(
            "{} did not exit within {} s of SIGTERM; killing it",
            agent.id,
            stop_timeout.as_secs()
        );
    }
    let _ = child.start_kill();
    child.wait().await.map_err(|error| FleetError::Signal {
        id: agent.id.clone(),
        error,
    })?;
    Ok(())
}

/// SIGTERM through kill(1): keeps the crate free of unsafe code and libc.
async fn send_sigterm(pid: u32) -> bool {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Reads the agent's stdout until its ready line, then hands the rest of
/// stdout to a task that appends it to the log (a full pipe would block the
/// agent). Lines before the ready line go to the log too.
async fn wait_ready(
    stdout: ChildStdout,
    log_path: PathBuf,
    deadline: tokio::time::Instant,
) -> Result<ReadyLine, NotReady> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await;
        match read {
            Err(_) => return Err(NotReady::Timeout),
            Ok(Err(e)) => return Err(NotReady::Read(e)),
            Ok(Ok(0)) => return Err(NotReady::Eof),
            Ok(Ok(_)) => {}
        }
        let trimmed = line.trim();
        if trimmed.starts_with(READY_PREFIX) {
            let ready = parse_ready_line(trimmed).map_err(|reason| NotReady::Malformed {
                line: trimmed.to_string(),
                reason,
            })?;
            tokio::spawn(drain_to_log(reader, log_path));
            return Ok(ready);
        }
        append_to_log(&log_path, &line);
    }
}

fn append_to_log(path: &Path, text: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

async fn drain_to_log<R: AsyncRead + Unpin>(mut reader: BufReader<R>, log_path: PathBuf) {
    match tokio::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .await
    {
        Ok(mut file) => {
            let _ = tokio::io::copy_buf(&mut reader, &mut file).await;
        }
        Err(_) => {
            let _ = tokio::io::copy_buf(&mut reader, &mut tokio::io::sink()).await;
        }
    }
}

async fn control_client(
    id: &str,
    addr: SocketAddr,
    tls: Option<&potluck_tls::Material>,
) -> Result<AgentControlClient<Channel>, String> {
    let endpoint = match tls {
        Some(m) => Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| {
                e.tls_config(potluck_tls::client_config(
                    m,
                    &potluck_tls::member_server_name(id),
                ))
            })
            .map_err(|e| e.to_string())?,
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?,
    }
    .connect_timeout(Duration::from_secs(2))
    .tcp_nodelay(true);
    match tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(AgentControlClient::new(channel)
            .max_decoding_message_size(crate::client::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(crate::client::MAX_MESSAGE_SIZE)),
        Ok(Err(e)) => Err(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )),
        Err(_) => Err("connect timed out".to_string()),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(4))
}

/// The agent's current map, if it has one and answers.
async fn fetch_map(
    id: &str,
    addr: SocketAddr,
    tls: Option<&potluck_tls::Material>,
) -> Option<ClusterMap> {
    for attempt in 0..3 {
        if let Ok(mut client) = control_client(id, addr, tls).await {
            let call = client.get_cluster_map(GetClusterMapRequest {});
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(response)) => return Some(response.into_inner()),
                // Any answer other than "unavailable" means it has no map.
                Ok(Err(status)) if status.code() != Code::Unavailable => return None,
                _ => {}
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
    None
}

/// Pushes `map` to one agent, retrying while it is not reachable yet.
async fn push_map_to(
    id: &str,
    addr: SocketAddr,
    map: &ClusterMap,
    tls: Option<&potluck_tls::Material>,
) -> Result<(), FleetError> {
    let mut last_error = String::new();
    for attempt in 0..PUSH_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let mut client = match control_client(id, addr, tls).await {
            Ok(client) => client,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let request = ApplyClusterMapRequest {
            map: Some(map.clone()),
        };
        match tokio::time::timeout(Duration::from_secs(10), client.apply_cluster_map(request)).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status))
                if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
            {
                last_error = status.message().to_string();
            }
            Ok(Err(status)) => {
                return Err(FleetError::PushMap {
                    id: id.to_string(),
                    addr,
                    message: format!("{:?}: {}", status.code(), status.message()),
                })
            }
            Err(_) => last_error = "no answer within 10 s".to_string(),
        }
    }
    Err(FleetError::PushMap {
        id: id.to_string(),
        addr,
        message: format!("gave up after {PUSH_ATTEMPTS} attempts: {last_error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_parse() {
        let ready = parse_ready_line(
            "POTLUCK_AGENT_READY id=agent-3 grpc=127.0.0.1:4100 metrics=127.0.0.1:4200",
        )
        .unwrap();
        assert_eq!(ready.id, "agent-3");
        assert_eq!(ready.grpc, "127.0.0.1:4100".parse().unwrap());
        assert_eq!(ready.metrics, "127.0.0.1:4200".parse().unwrap());
        let extra = parse_ready_line(
            "POTLUCK_AGENT_READY version=1 id=a grpc=127.0.0.1:1 metrics=127.0.0.1:2 junk",
        )
        .unwrap();
        assert_eq!(extra.id, "a");
    }

    #[test]
    fn malformed_ready_lines_say_why() {
        assert!(parse_ready_line("READY id=a").is_err());
        let err = parse_ready_line("POTLUCK_AGENT_READY id=a metrics=127.0.0.1:2").unwrap_err();
        assert!(err.contains("grpc"), "{err}");
        let err = parse_ready_line("POTLUCK_AGENT_READY id=a grpc=localhost metrics=127.0.0.1:2")
            .unwrap_err();
        assert!(err.contains("HOST:PORT"), "{err}");
        assert!(
            parse_ready_line("POTLUCK_AGENT_READY grpc=127.0.0.1:1 metrics=127.0.0.1:2").is_err()
        );
    }

    #[test]
    fn base_port_lays_out_grpc_and_metrics_ports() {
        let mut cfg = FleetConfig::new("/tmp/x");
        assert_eq!(cfg.ports(3).unwrap(), (0, 0));
        cfg.base_port = Some(7100);
        assert_eq!(cfg.ports(0).unwrap(), (7100, 7200));
        assert_eq!(cfg.ports(5).unwrap(), (7105, 7205));
        cfg.base_port = Some(65500);
        assert!(matches!(cfg.ports(0), Err(FleetError::Ports { .. })));
        cfg.base_port = Some(7100);
        cfg.agents = 101;
        assert!(matches!(cfg.ports(0), Err(FleetError::Ports { .. })));
    }

    #[test]
    fn default_pool_follows_the_erasure_settings() {
        let mut cfg = FleetConfig::new("/tmp/x");
        cfg.k = 2;
        cfg.m = 1;
        let pools = cfg.effective_pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(
            (pools[0].name.as_str(), pools[0].k, pools[0].m),
            ("default", 2, 1)
        );
        assert_eq!(pools[0].chunk_size, 1 << 20);
        assert_eq!(pools[0].pg_count, 128);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("potluck-cli-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 97\nline 98\nline 99");
        assert!(log_tail(&dir.join("missing.log"), 3).contains("cannot read"));
        std::fs::write(&path, "").unwrap();
        assert_eq!(log_tail(&path, 3), "(the log is empty)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn write_script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// One test for every case that spawns processes: scripts are written
    /// before anything forks, which avoids "text file busy" when a parallel
    /// test forks while a script is still open for writing.
    #[tokio::test]
    async fn agents_that_fail_to_start_are_reported_and_cleaned_up() {
        let dir = std::env::temp_dir().join(format!("potluck-cli-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dies = dir.join("dies.sh");
        write_script(&dies, "echo 'boom: port in use' >&2; exit 3");
        let slow = dir.join("slow.sh");
        write_script(&slow, "echo starting >&2\nexec sleep 30");

        // A binary that does not exist.
        let mut cfg = FleetConfig::new(dir.join("missing"));
        cfg.agent_bin = dir.join("no-such-agent");
        cfg.agents = 2;
        let err = Fleet::start(cfg).await.unwrap_err();
        assert!(matches!(err, FleetError::Spawn { .. }), "{err}");

        // An agent that exits at once: its log tail explains why.
        let mut cfg = FleetConfig::new(dir.join("dies"));
        cfg.agent_bin = dies;
        cfg.agents = 2;
        let err = Fleet::start(cfg).await.unwrap_err();
        match &err {
            FleetError::AgentExited { tail, status, .. } => {
                assert!(tail.contains("boom: port in use"), "{tail}");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("unexpected {other}"),
        }

        // An agent that never says it is ready is killed after the timeout.
        let mut cfg = FleetConfig::new(dir.join("slow"));
        cfg.agent_bin = slow;
        cfg.agents = 1;
        cfg.ready_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = Fleet::start(cfg).await.unwrap_err();
        assert!(matches!(err, FleetError::AgentNotReady { .. }), "{err}");
        assert!(err.to_string().contains("starting"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let _ = std::fs::remove_dir_all(&dir);
    }
}
