//! `potluck-agent`: serves one member's disk to the fleet.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use potluck_agent::node::Tuning;
use potluck_agent::registration::{Registration, Settings};
use potluck_agent::server::{Agent, AgentConfig, AgentTls};

#[derive(Parser, Debug)]
#[command(
    name = "potluck-agent",
    version,
    about = "Potluck node agent: stores shards and serves objects"
)]
struct Args {
    /// Member id, stable across restarts (the data directory remembers it).
    /// With --kubernetes it defaults to --node-name.
    #[arg(long, env = "POTLUCK_MEMBER_ID")]
    id: Option<String>,
    /// gRPC address (ObjectService, ShardService, AgentControl, health, reflection).
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Directory with this member's TLS files (ca.pem, cert.pem, key.pem, or a
    /// mounted TLS Secret's ca.crt, tls.crt, tls.key). The gRPC port then
    /// speaks only mutual TLS with parties holding a certificate of that CA.
    #[arg(long, env = "POTLUCK_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Kubernetes mode: get this member's certificate from the operator (a CSR on its
    /// StorageNode; the key stays in <data-dir>/tls) before serving, and renew it after
    /// 2/3 of its life. Needs --advertise or a --listen address with a fixed IP and port.
    #[arg(long, env = "POTLUCK_TLS_BOOTSTRAP")]
    tls_bootstrap: bool,
    /// Seconds --tls-bootstrap waits for the operator's first answer before giving up.
    #[arg(long, default_value_t = 300)]
    tls_bootstrap_timeout_secs: u64,
    /// Seconds between looks for renewed files in --tls-dir.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    tls_reload_secs: u64,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics_listen: SocketAddr,
    /// Where RocksDB keeps shards and manifests.
    #[arg(long, env = "POTLUCK_DATA_DIR")]
    data_dir: PathBuf,
    /// Bytes this member offers, e.g. 500GiB.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    capacity: u64,
    /// Failure domain (host, rack, zone); no PG puts two shards in one.
    #[arg(long, default_value = "")]
    failure_domain: String,
    /// Seconds before shards of an overwritten or deleted version are collected.
    #[arg(long, default_value_t = 60)]
    gc_delay_secs: u64,
    /// Stripes of one put or get in flight at once.
    #[arg(long, default_value_t = 4)]
    stripes_in_flight: usize,
    /// Stripe buffers all puts through this agent may hold at once; puts
    /// beyond it wait, which slows their clients instead of growing memory.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    put_memory: u64,
    /// Seconds between checks of PGs that were clean when last checked; a new map epoch
    /// starts a check at once.
    #[arg(long, default_value_t = 300)]
    recovery_interval_secs: u64,
    /// Bytes per second recovery may write (rebuilt shards), e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    recovery_bandwidth: u64,
    /// Seconds between scrub passes, which re-read every local shard against its hash and
    /// repair corrupt ones; 0 turns the schedule off (AgentControl.Scrub still works).
    #[arg(long, default_value_t = 86_400)]
    scrub_interval_secs: u64,
    /// Bytes per second a scrub pass may read (and rewrite), e.g. 32MiB.
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    scrub_bandwidth: u64,
    /// Seconds after which a stripe that no manifest names is deleted as left over by a put
    /// that died half way; a put must commit within half of it. Set it alike on every agent,
    /// well above the clock skew between members.
    #[arg(long, default_value_t = 6 * 3600)]
    orphan_grace_secs: u64,
    /// Stripes one PG leader rebuilds at once.
    #[arg(long, default_value_t = 4)]
    recovery_concurrency: usize,
    /// Extra members a full-stripe read asks at once (it decodes from the first k answers,
    /// so one slow member does not slow the read); 0 asks only the data shards' members.
    #[arg(long, default_value_t = 1)]
    read_hedge: usize,
    /// Recently read stripes kept for further readers of the same objects, e.g. 256MiB; 0
    /// turns the cache off.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    stripe_cache: u64,
    /// Address of the HTTP endpoint serving share links (`GET /s/<token>`, ranges honoured) to
    /// browsers and curl; off when not set.
    #[arg(long, env = "POTLUCK_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Base URL clients reach the HTTP endpoint at (e.g. https://files.example.org through an
    /// Ingress), put in front of `/s/<token>` in the links CreateShare returns; defaults to
    /// http://<bound --http-listen address>.
    #[arg(long, env = "POTLUCK_HTTP_PUBLIC_URL")]
    http_public_url: Option<String>,
    /// Testing only: delay every shard this agent serves to peers, like a slow disk or link.
    #[arg(long, default_value_t = 0, hide = true)]
    inject_serve_delay_ms: u64,
    /// Register as a StorageNode and keep a Lease alive through the Kubernetes
    /// API (credentials from KUBECONFIG or the pod's service account).
    #[arg(long, env = "POTLUCK_KUBERNETES")]
    kubernetes: bool,
    /// The Kubernetes node this agent runs on (the downward API's spec.nodeName);
    /// its labels give the failure domain.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the agent's Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "potluck-system")]
    namespace: String,
    /// `host:port` peers and clients dial, registered in the StorageNode;
    /// defaults to the bound gRPC address.
    #[arg(long, env = "POTLUCK_ADVERTISE")]
    advertise: Option<String>,
    /// Label of the Kubernetes node whose value is the failure domain.
    #[arg(long, default_value = "kubernetes.io/hostname")]
    failure_domain_key: String,
    /// Seconds the Lease stays valid without renewal; renewed every third of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_secs: u64,
}

impl Args {
    /// The member id: --id, or in Kubernetes mode the node name.
    fn member_id(&self) -> anyhow::Result<String> {
        match (&self.id, &self.node_name) {
            (Some(id), _) if !id.is_empty() => Ok(id.clone()),
            (_, Some(node)) if self.kubernetes && !node.is_empty() => Ok(node.clone()),
            _ if self.kubernetes => anyhow::bail!(
                "no member id: set --id (POTLUCK_MEMBER_ID) or --node-name (NODE_NAME, the downward API's spec.nodeName)"
            ),
            _ => anyhow::bail!("no member id: set --id (or POTLUCK_MEMBER_ID)"),
        }
    }
}

/// Sizes like `1048576`, `64MiB`, `10GiB`, `1TB` (decimal units for KB/MB/GB/TB).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 10GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?}; use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

fn kube_settings(args: &Args, id: &str, fallback_domain: &str, endpoint: String) -> Settings {
    Settings {
        member_id: id.to_string(),
        node_name: args.node_name.clone().filter(|n| !n.is_empty()),
        namespace: args.namespace.clone(),
        endpoint,
        capacity_bytes: args.capacity,
        failure_domain_key: args.failure_domain_key.clone(),
        fallback_failure_domain: fallback_domain.to_string(),
        lease_duration: Duration::from_secs(args.lease_duration_secs),
        startup_timeout: Duration::from_secs(60),
    }
}

/// The agent makes only short calls (no watches). Without a read deadline a renewal sent
/// into a partition waits for TCP to give up (minutes) instead of failing and being
/// retried on a fresh connection at the next tick.
async fn kube_client(settings: &Settings) -> anyhow::Result<kube::Client> {
    let deadline = potluck_agent::registration::renew_interval(settings.lease_duration)
        .max(Duration::from_secs(2));
    kube_client_with_deadline(deadline).await
}

/// Share grants are written while a user waits, and the first write of a kind can take
/// the API server seconds; a lease-sized deadline would fail them spuriously.
const SHARE_API_DEADLINE: Duration = Duration::from_secs(15);

async fn kube_client_with_deadline(deadline: Duration) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes client: set KUBECONFIG, or run in a pod with a service account")?;
    config.read_timeout = Some(deadline);
    config.write_timeout = Some(deadline);
    config.connect_timeout = Some(deadline);
    kube::Client::try_from(config)
        .context("cannot build a Kubernetes client from the configuration")
}

/// --tls-bootstrap: registers the StorageNode (without a Lease: nothing is served yet), gets
/// a certificate from the operator into <data-dir>/tls and keeps it renewed. Returns the dir.
async fn tls_bootstrap(args: &Args, id: &str, fallback_domain: &str) -> anyhow::Result<PathBuf> {
    use potluck_agent::tls_bootstrap::Bootstrap;
    anyhow::ensure!(
        args.kubernetes,
        "--tls-bootstrap needs --kubernetes: the certificate comes from the operator through the StorageNode"
    );
    let endpoint = match &args.advertise {
        Some(a) => a.clone(),
        None if !args.listen.ip().is_unspecified() && args.listen.port() != 0 => {
            args.listen.to_string()
        }
        None => anyhow::bail!(
            "--tls-bootstrap registers before serving, so it needs the endpoint up front: set \
             --advertise (POTLUCK_ADVERTISE) or a --listen address with a fixed IP and port"
        ),
    };
    let settings = kube_settings(args, id, fallback_domain, endpoint);
    let client = kube_client(&settings).await?;
    Registration::apply_only(&client, &settings)
        .await
        .context("registering with Kubernetes failed")?;
    let dir = args.data_dir.join("tls");
    let bootstrap = Bootstrap::new(client, id, &dir);
    bootstrap
        .ensure(Duration::from_secs(args.tls_bootstrap_timeout_secs))
        .await
        .context("cannot serve TLS without a certificate")?;
    // Runs until the process ends; the server re-reads the files it rewrites.
    tokio::spawn(bootstrap.keep_renewed());
    Ok(dir)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let id = args.member_id()?;
    let fallback_domain = if args.failure_domain.is_empty() {
        id.clone()
    } else {
        args.failure_domain.clone()
    };
    let tls_dir = match (&args.tls_dir, args.tls_bootstrap) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => Some(tls_bootstrap(&args, &id, &fallback_domain).await?),
        (None, false) => None,
    };
    let tls = match tls_dir {
        Some(dir) => Some(AgentTls {
            dir,
            reload_every: Duration::from_secs(args.tls_reload_secs),
        }),
        None => {
            tracing::warn!("serving gRPC without TLS: anyone who can reach the port can call it; pass --tls-dir (docs/operations.md)");
            None
        }
    };
    let cfg = AgentConfig {
        tls,
        failure_domain: fallback_domain.clone(),
        id: id.clone(),
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir.clone(),
        capacity_bytes: args.capacity,
        tuning: Tuning {
            gc_delay: Duration::from_secs(args.gc_delay_secs),
            stripes_in_flight: args.stripes_in_flight.max(1),
            put_memory_bytes: usize::try_from(args.put_memory).unwrap_or(usize::MAX),
            recovery_interval: Duration::from_secs(args.recovery_interval_secs.max(1)),
            recovery_bandwidth: args.recovery_bandwidth.max(1),
            scrub_interval: Duration::from_secs(args.scrub_interval_secs),
            scrub_bandwidth: args.scrub_bandwidth.max(1),
            orphan_grace: Duration::from_secs(args.orphan_grace_secs.max(2)),
            recovery_concurrency: args.recovery_concurrency.max(1),
            read_hedge: args.read_hedge,
            serve_delay: Duration::from_millis(args.inject_serve_delay_ms),
            stripe_cache_bytes: usize::try_from(args.stripe_cache).unwrap_or(usize::MAX),
            ..Tuning::default()
        },
    };
    let agent = Agent::bind(cfg).await.context("agent failed to start")?;
    let http_task = match args.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --http-listen {addr}"))?;
            let bound = listener.local_addr()?;
            let url = args
                .http_public_url
                .clone()
                .unwrap_or_else(|| format!("http://{bound}"));
            agent.node.sharing.set_public_url(url);
            tracing::info!(http = %bound, "serving share links over HTTP");
            Some(tokio::spawn(potluck_agent::share_http::serve(
                listener,
                agent.node.clone(),
            )))
        }
        None => None,
    };
    let lease_task = if args.kubernetes {
        let endpoint = match &args.advertise {
            Some(a) => a.clone(),
            None => {
                if agent.grpc_addr.ip().is_unspecified() {
                    tracing::warn!(
                        grpc = %agent.grpc_addr,
                        "registering an unspecified address as the endpoint; set --advertise (POTLUCK_ADVERTISE) to the pod or host IP"
                    );
                }
                agent.grpc_addr.to_string()
            }
        };
        let settings = kube_settings(&args, &id, &fallback_domain, endpoint);
        let client = kube_client(&settings).await?;
        agent.node.sharing.set_kubernetes(
            kube_client_with_deadline(SHARE_API_DEADLINE).await?,
            &args.namespace,
        );
        let registration = Registration::register(client, settings, agent.node.metrics.clone())
            .await
            .context("registering with Kubernetes failed")?;
        Some(tokio::spawn(registration.keep_lease()))
    } else {
        None
    };
    tracing::info!(member = %id, grpc = %agent.grpc_addr, metrics = %agent.metrics_addr, epoch = agent.node.cluster.epoch(), kubernetes = args.kubernetes, "agent serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "POTLUCK_AGENT_READY id={id} grpc={} metrics={}",
            agent.grpc_addr, agent.metrics_addr
        )?;
        out.flush()?;
    }
    let shutdown = async move {
        shutdown_signal().await;
        // A stopping member stops vouching for itself at once.
        if let Some(task) = lease_task {
            task.abort();
        }
        if let Some(task) = http_task {
            task.abort();
        }
    };
    agent
        .serve(shutdown)
        .await
        .context("agent stopped with an error")?;
    tracing::info!("agent stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2 MB"), Ok(2_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
