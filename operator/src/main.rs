//! `potluck-operator`: runs the StoragePool controller while it holds the leader Lease.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube_lease_manager::LeaseManagerBuilder;
use potluck_operator::controller::{self, Config, Context};
use potluck_operator::metrics::{self, Metrics};

/// The Lease replicas compete for; only its holder reconciles.
const LEADER_LEASE: &str = "potluck-operator";

#[derive(Parser, Debug)]
#[command(
    name = "potluck-operator",
    version,
    about = "Potluck operator: membership, placement and cluster maps for StoragePools"
)]
struct Args {
    /// Namespace of the agents' Leases, the leader Lease and the map ConfigMap.
    #[arg(long, env = "POD_NAMESPACE", default_value = "potluck-system")]
    namespace: String,
    /// This replica's name in the leader Lease (the pod name in a Deployment).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9200")]
    metrics_listen: SocketAddr,
    /// Seconds a leader Lease lasts without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15)]
    leader_lease_secs: u64,
    /// Seconds to wait for one agent call (status or map push).
    #[arg(long, default_value_t = 5)]
    agent_timeout_secs: u64,
    /// Agents called at once during a pass.
    #[arg(long, default_value_t = 32)]
    agent_concurrency: usize,
    /// StoragePools reconciled at once.
    #[arg(long, default_value_t = 2)]
    reconcile_concurrency: u16,
    /// Make agents refuse ObjectService calls that carry no valid Bucket key. Off only for
    /// a local fleet: anyone who reaches an agent then reads and writes every bucket.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    require_auth: bool,
    /// The operator's TLS files (ca.pem, cert.pem, key.pem: a certificate of the cluster
    /// CA with the operator role), for calling agents that speak mutual TLS.
    #[arg(long, env = "POTLUCK_TLS_DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Keep the cluster CA in the Secret potluck-ca (made if absent) and sign the
    /// certificates agents started with --tls-bootstrap ask for on their StorageNodes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    certificates: bool,
    /// Seconds a member's certificate is valid; agents ask for a new one after 2/3 of it.
    #[arg(long, default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    member_cert_validity_secs: u64,
    /// Call agents over mutual TLS with a certificate the operator issues itself from the
    /// cluster CA (needs --certificates; --tls-dir takes precedence), renewed in memory.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    agent_tls: bool,
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
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("potluck-operator-{}", std::process::id()));

    let metrics = Metrics::new().context("cannot register metrics")?;
    let bound = metrics::serve(args.metrics_listen, metrics.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG, or run in a pod with a service account",
    )?;

    let lease_secs = args.leader_lease_secs.max(3);
    let manager = LeaseManagerBuilder::new(client.clone(), LEADER_LEASE)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(lease_secs)
        .with_grace((lease_secs / 3).max(1))
        .with_field_manager(controller::MANAGER)
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot use Lease {LEADER_LEASE} in namespace {}: does the namespace exist, and \
                 may this service account get/create/update leases there?",
                args.namespace
            )
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is healthy and ready: it is doing its job by waiting.
    metrics.ready.store(true, Ordering::Relaxed);
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "POTLUCK_OPERATOR_READY identity={identity} metrics={bound}"
        )?;
        out.flush()?;
    }
    tracing::info!(%identity, metrics = %bound, namespace = %args.namespace, "waiting for the leader Lease");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed.context("leader election stopped")?,
            _ = &mut shutdown => return Ok(()),
        }
    }
    tracing::info!(%identity, "holding the leader Lease; reconciling");
    metrics.set_leader(true);

    if !args.require_auth {
        tracing::warn!(
            "--require-auth=false: agents serve every bucket to callers without credentials"
        );
    }
    let certs = if args.certificates {
        let certs = potluck_operator::certificates::Certificates::load(
            &client,
            &args.namespace,
            Duration::from_secs(args.member_cert_validity_secs),
        )
        .await
        .context("cannot set up the cluster CA")?;
        Some(certs)
    } else {
        anyhow::ensure!(
            !args.agent_tls,
            "--agent-tls needs --certificates: the operator's certificate comes from the cluster CA"
        );
        None
    };
    // The operator's own certificate, renewed by `certificates`, unless files were given.
    let own_tls = args.agent_tls && args.tls_dir.is_none();
    let cfg = Config {
        namespace: args.namespace.clone(),
        require_auth: args.require_auth,
        identity: identity.clone(),
        agent_timeout: Duration::from_secs(args.agent_timeout_secs.max(1)),
        agent_concurrency: args.agent_concurrency,
        reconcile_concurrency: args.reconcile_concurrency.max(1),
        tls: args
            .tls_dir
            .as_deref()
            .map(potluck_tls::Material::read_dir)
            .transpose()
            .context("cannot use --tls-dir")?
            .or_else(|| {
                certs
                    .as_ref()
                    .filter(|_| own_tls)
                    .map(|c| c.operator_material())
            }),
    };
    let ctx = Arc::new(Context::new(client.clone(), &cfg, metrics.clone()));
    let cert_task = certs.map(|certs| {
        ctx.set_certificates(certs.clone());
        let ctx = ctx.clone();
        tokio::spawn(certs.run(client, move |material| {
            if own_tls {
                ctx.set_agent_tls(Some(material));
            }
        }))
    });
    let outcome = tokio::select! {
        _ = controller::run(ctx, cfg.reconcile_concurrency) => Err(anyhow::anyhow!("the controller stopped")),
        lost = lost(&mut leader) => Err(anyhow::anyhow!(
            "lost the leader Lease ({lost}); exiting so that this replica restarts as a standby \
             and never reconciles alongside the new leader"
        )),
        _ = &mut shutdown => Ok(()),
    };
    metrics.set_leader(false);
    if let Some(task) = cert_task {
        task.abort();
    }
    drop(leader);
    // Hand the Lease over at once on a clean stop, instead of making the standby wait it out.
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                tracing::warn!("cannot release the leader Lease: {e}");
            }
        }
        Ok(Err(e)) => tracing::warn!("leader election ended with an error: {e}"),
        Err(e) => tracing::warn!("leader election task failed: {e}"),
    }
    outcome
}

async fn lost(leader: &mut tokio::sync::watch::Receiver<bool>) -> &'static str {
    loop {
        match leader.changed().await {
            Err(_) => return "leader election stopped",
            Ok(()) if !*leader.borrow_and_update() => return "another replica holds it",
            Ok(()) => {}
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
