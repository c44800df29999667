//! Helpers for end-to-end tests and benchmarks against real agent processes:
//! raw gRPC clients (so tests see exact status codes), payload generation and
//! a `/metrics` scraper.

pub mod control_plane;

use std::time::Duration;

use bytes::Bytes;
use pb::object_service_client::ObjectServiceClient;
use potluck_proto::v1 as pb;
use rand::RngCore;
use tonic::transport::Channel;
use tonic::Status;

pub use potluck_cli::fleet::{Fleet, FleetConfig};

pub const MIB: usize = 1 << 20;

/// One cluster CA for every fleet this test process starts, so the helpers
/// below can hold a client certificate before any fleet exists.
struct TestTls {
    ca_dir: std::path::PathBuf,
    client_dir: std::path::PathBuf,
    client: potluck_tls::Material,
    /// A member-role certificate for a member no map lists: what tests use to
    /// call the shard service directly, which answers members only.
    inspector: potluck_tls::Material,
}

fn test_tls() -> &'static TestTls {
    static TLS: std::sync::OnceLock<TestTls> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("potluck-e2e-tls-")
            .tempdir()
            .expect("temp dir")
            // Lives as long as the process; a few KiB.
            .keep();
        let ca_dir = dir.join("ca");
        let ca = potluck_cli::fleet::load_or_create_ca(&ca_dir).expect("test CA");
        let year = Duration::from_secs(365 * 86_400);
        let (client, _) = ca
            .issue_material(&potluck_tls::Subject::Client { name: "e2e".into() }, year)
            .expect("client certificate");
        let client_dir = dir.join("client");
        client.write_dir(&client_dir).expect("client files");
        let (inspector, _) = ca
            .issue_material(
                &potluck_tls::Subject::Member {
                    id: "e2e-inspector".into(),
                    ips: vec![],
                },
                year,
            )
            .expect("inspector certificate");
        TestTls {
            ca_dir,
            client_dir,
            client,
            inspector,
        }
    })
}

/// A fleet configuration in `dir` whose certificates come from the test CA,
/// so [`object_client`] and the other helpers can talk to it.
pub fn fleet_config(dir: impl Into<std::path::PathBuf>) -> FleetConfig {
    let mut cfg = FleetConfig::new(dir);
    cfg.tls_ca_dir = Some(test_tls().ca_dir.clone());
    cfg
}

/// The CA every test fleet's certificates come from (`ca.pem`, `ca-key.pem`).
pub fn test_ca() -> potluck_tls::ClusterCa {
    potluck_cli::fleet::load_or_create_ca(&test_tls().ca_dir).expect("test CA")
}

/// A client certificate of the test CA, as files (`potluck --tls-dir`).
pub fn client_tls_dir() -> &'static std::path::Path {
    &test_tls().client_dir
}

pub fn client_tls() -> &'static potluck_tls::Material {
    &test_tls().client
}

/// A channel for raw calls to any service of an agent of a test fleet, over
/// TLS with a member-role certificate (the shard service answers members
/// only). `endpoint` may be `https://`, `http://` (taken as https: test
/// fleets run TLS) or a bare `host:port` as maps list members.
pub async fn try_channel(endpoint: impl AsRef<str>) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint.as_ref();
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    potluck_agent::peers::endpoint(format!("https://{rest}"))?
        .timeout(Duration::from_secs(120))
        .tls_config(potluck_tls::client_config(
            &test_tls().inspector,
            potluck_tls::AGENT_NAME,
        ))?
        .connect()
        .await
}

pub async fn control_client(
    endpoint: impl AsRef<str>,
) -> Result<pb::agent_control_client::AgentControlClient<Channel>, tonic::transport::Error> {
    Ok(
        pb::agent_control_client::AgentControlClient::new(try_channel(endpoint).await?)
            .max_decoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES),
    )
}

pub async fn shard_client(
    endpoint: impl AsRef<str>,
) -> Result<pb::shard_service_client::ShardServiceClient<Channel>, tonic::transport::Error> {
    Ok(
        pb::shard_service_client::ShardServiceClient::new(try_channel(endpoint).await?)
            .max_decoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES),
    )
}

/// Client options carrying the test client certificate.
pub fn cli_options() -> potluck_cli::client::ClientOptions {
    potluck_cli::client::ClientOptions {
        tls: Some(client_tls().clone()),
        ..Default::default()
    }
}

/// The CLI's client library over `endpoints`, as a user of a test fleet has it.
pub async fn cli_client<S: AsRef<str>>(
    endpoints: &[S],
) -> Result<potluck_cli::client::Client, potluck_cli::client::ClientError> {
    potluck_cli::client::Client::connect_with(endpoints, cli_options()).await
}

/// A fleet in a temporary directory, removed after the agents are stopped.
pub struct TestFleet {
    pub fleet: Fleet,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// Six agents, 4+2, 1 MiB chunks, on free loopback ports.
pub async fn start_fleet(extra_agent_args: &[&str]) -> TestFleet {
    start_fleet_with(extra_agent_args, |_| {}).await
}

/// Like [`start_fleet`], with a second pool "wide" (5+3) that six members
/// cannot place.
pub async fn start_fleet_with_wide_pool() -> TestFleet {
    start_fleet_with(&[], |cfg| {
        let mut pools = cfg.effective_pools();
        let mut wide = pools[0].clone();
        wide.name = "wide".into();
        wide.k = 5;
        wide.m = 3;
        pools.push(wide);
        cfg.pools = pools;
    })
    .await
}

pub async fn start_fleet_with(
    extra_agent_args: &[&str],
    tweak: impl FnOnce(&mut FleetConfig),
) -> TestFleet {
    try_start_fleet_with(extra_agent_args, tweak)
        .await
        .unwrap_or_else(|e| panic!("starting the fleet: {e}"))
}

/// The fleet in a fresh temporary directory, or its start error. With
/// `POTLUCK_E2E_KEEP` set the directory (data and agent logs) is kept.
pub async fn try_start_fleet_with(
    extra_agent_args: &[&str],
    tweak: impl FnOnce(&mut FleetConfig),
) -> Result<TestFleet, potluck_cli::fleet::FleetError> {
    let dir = tempfile::Builder::new()
        .prefix("potluck-e2e-")
        .tempdir()
        .expect("temp dir");
    let mut cfg = fleet_config(dir.path());
    cfg.extra_agent_args = extra_agent_args.iter().map(|s| s.to_string()).collect();
    tweak(&mut cfg);
    let fleet = Fleet::start(cfg).await?;
    if std::env::var_os("POTLUCK_E2E_KEEP").is_some() {
        let _ = dir.keep();
        return Ok(TestFleet {
            fleet,
            _dir: tempfile::tempdir().expect("temp dir"),
        });
    }
    Ok(TestFleet { fleet, _dir: dir })
}

/// An ObjectService client as a user has it: with the test client certificate
/// when `endpoint` is `https://`.
pub async fn object_client(endpoint: &str) -> ObjectServiceClient<Channel> {
    let mut e = potluck_agent::peers::endpoint(endpoint.to_string())
        .expect("valid endpoint")
        .timeout(Duration::from_secs(120));
    if endpoint.starts_with("https://") {
        e = e
            .tls_config(potluck_tls::client_config(
                client_tls(),
                potluck_tls::AGENT_NAME,
            ))
            .expect("TLS config");
    }
    let channel = e
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e:?}"));
    ObjectServiceClient::new(channel)
        .max_decoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(potluck_agent::peers::MAX_MESSAGE_BYTES)
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::SeedableRng;
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn header(bucket: &str, key: &str) -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Header(pb::PutObjectHeader {
            bucket: bucket.into(),
            key: key.into(),
            pool: String::new(),
            size: None,
            upload: None,
        })),
    }
}

pub fn chunk(data: Bytes) -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Chunk(data)),
    }
}

pub fn finish() -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Finish(
            pb::PutObjectFinish::default(),
        )),
    }
}

/// Puts `data` as one header, 1 MiB chunks and a finish carrying size and hash.
pub async fn put(
    c: &mut ObjectServiceClient<Channel>,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> Result<pb::PutObjectResponse, Status> {
    let data = Bytes::copy_from_slice(data);
    let mut msgs = vec![header(bucket, key)];
    let mut off = 0;
    while off < data.len() {
        let end = (off + MIB).min(data.len());
        msgs.push(chunk(data.slice(off..end)));
        off = end;
    }
    msgs.push(pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Finish(pb::PutObjectFinish {
            size: Some(data.len() as u64),
            blake3: Bytes::copy_from_slice(blake3::hash(&data).as_bytes()),
        })),
    });
    c.put_object(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

pub async fn get_range(
    c: &mut ObjectServiceClient<Channel>,
    bucket: &str,
    key: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> Result<Vec<u8>, Status> {
    let mut stream = c
        .get_object(pb::GetObjectRequest {
            bucket: bucket.into(),
            key: key.into(),
            pool: String::new(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.chunk);
    }
    Ok(out)
}

pub async fn get(
    c: &mut ObjectServiceClient<Channel>,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, Status> {
    get_range(c, bucket, key, None, None).await
}

/// Reads one metric's value (summed over label sets matching `filter`) from an
/// agent's `/metrics`.
pub async fn metric(metrics_addr: &str, name: &str, filter: &str) -> f64 {
    metric_matching(metrics_addr, name, &[filter]).await
}

/// Polls `check` until it holds; fails the test after `limit`. The pause
/// between polls is a poll interval, not a guess at when work is done.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident memory of a process (VmHWM), from /proc.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Like [`start_fleet`], but hands back the fleet's start error instead of
/// panicking, for tests of agents that fail to start.
pub async fn try_start_fleet(
    extra_agent_args: &[&str],
) -> Result<TestFleet, potluck_cli::fleet::FleetError> {
    try_start_fleet_with(extra_agent_args, |_| {}).await
}

/// The `potluck` command built by `cargo build --workspace --bins`: next to
/// the current executable or in its parent directory (test executables live
/// in `target/<profile>/deps/`), or `$POTLUCK_BIN`.
pub fn find_potluck_bin() -> std::path::PathBuf {
    let name = format!("potluck{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = std::env::var_os("POTLUCK_BIN") {
        let path = std::path::PathBuf::from(path);
        assert!(
            path.is_file(),
            "POTLUCK_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut searched = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(&name);
        if candidate.is_file() {
            return candidate;
        }
        searched.push(candidate.display().to_string());
        dir = d.parent();
    }
    panic!(
        "the potluck binary was not found (looked for {}); build it with `cargo build --release --workspace --bins`, or set POTLUCK_BIN",
        searched.join(", ")
    );
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A metric summed over every agent of the fleet that runs (see [`metric`]).
pub async fn fleet_metric(fleet: &Fleet, name: &str, filter: &str) -> f64 {
    let mut total = 0.0;
    for i in 0..fleet.len() {
        if fleet.pid(i).is_some() {
            total += metric(&fleet.metrics_addr(i).to_string(), name, filter).await;
        }
    }
    total
}

/// Like [`metric`], summing only label sets that contain every one of `filters`.
pub async fn metric_matching(metrics_addr: &str, name: &str, filters: &[&str]) -> f64 {
    let (_, body) = http_get(metrics_addr, "/metrics").await;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The serial of the certificate the agent at `addr` presents as `server_name` to a client
/// holding `material`: a bare TLS handshake, so tests see which certificate is served.
pub async fn served_serial(
    addr: &str,
    material: &potluck_tls::Material,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    use std::sync::Arc;
    let parsed = material.parse().map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in parsed.ca {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(parsed.chain, parsed.key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?;
    Ok(potluck_tls::PeerIdentity::from_der(leaf)
        .map_err(|e| e.to_string())?
        .serial)
}

/// A plain HTTP/1.0 GET of `path` on an agent's or the operator's HTTP port:
/// (status code, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("HTTP at {addr}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send HTTP request");
    let mut response = String::new();
    s.read_to_string(&mut response)
        .await
        .expect("read HTTP response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}{path}: {response:.200}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Every file under `dir`, recursively (an unreadable directory counts as empty).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs the `potluck` binary with `POTLUCK_ENDPOINT=endpoints` and `envs` set (no pool or
/// key file inherited from the environment), feeding `stdin` if given.
pub async fn run_potluck(
    endpoints: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = potluck_command(endpoints)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn potluck");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).await.expect("write stdin");
        // Dropped here: the command sees the end of its input.
    }
    child.wait_with_output().await.expect("potluck output")
}

/// The `potluck` binary as a user of a test fleet runs it: `POTLUCK_ENDPOINT=endpoints`, the
/// test client certificate (the fleet runs TLS), no pool or key file from the environment.
/// [`run_potluck`] runs it to the end; tests that drive the process themselves (kill it half
/// way, say) start it from here.
pub fn potluck_command(endpoints: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(find_potluck_bin());
    cmd.env("POTLUCK_ENDPOINT", endpoints)
        .env("POTLUCK_TLS_DIR", client_tls_dir())
        .env_remove("POTLUCK_POOL")
        .env_remove("POTLUCK_KEY_FILE")
        .kill_on_drop(true);
    cmd
}

/// A command's output as text, for assertion messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails the test with the command's stderr unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
}
