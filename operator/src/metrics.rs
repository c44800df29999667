//! The operator's Prometheus metrics and its HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! Label values are bounded: results, phases, PG states, RPC names and pool names (pools are
//! few and named by admins); never member ids or object keys. Names follow
//! `potluck_operator_<name>_<unit>`; `docs/operations.md` lists every series and
//! `deploy/monitoring/` builds its dashboard and alerts on them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    members: IntGaugeVec,
    pgs: IntGaugeVec,
    pgs_recovering: IntGaugeVec,
    bytes_to_heal: IntGaugeVec,
    heal_rate: IntGauge,
    pool_ready: IntGaugeVec,
    map_epoch: IntGauge,
    agent_calls: IntCounterVec,
    leader: IntGauge,
    /// Set once the controller runs (as leader) or waits as a standby: either way the process
    /// is doing what it should.
    pub ready: Arc<AtomicBool>,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "potluck_operator_reconciles_total",
                "StoragePool reconciles, by result (ok, error)",
            ),
            &["result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "potluck_operator_reconcile_errors_total",
                "Failed StoragePool reconciles, by kind of error",
            ),
            &["kind"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "potluck_operator_reconcile_duration_seconds",
                "Time to reconcile one StoragePool, agent calls included",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.5, 14)?),
            &["result"],
        )?;
        let members = IntGaugeVec::new(
            Opts::new(
                "potluck_operator_members",
                "StorageNodes by phase (Joining, Up, Down, Out, Draining, Drained)",
            ),
            &["phase"],
        )?;
        let pgs = IntGaugeVec::new(
            Opts::new(
                "potluck_operator_pgs",
                "Placement groups by pool and state (clean, degraded)",
            ),
            &["pool", "state"],
        )?;
        let pgs_recovering = IntGaugeVec::new(
            Opts::new(
                "potluck_operator_pgs_recovering",
                "Placement groups by pool with positions moved to members that do not hold their shards yet (a subset of the degraded ones)",
            ),
            &["pool"],
        )?;
        let pool_ready = IntGaugeVec::new(
            Opts::new(
                "potluck_operator_pool_ready",
                "1 while a pool's Ready condition is True (placed, every PG has writeQuorum members up), else 0",
            ),
            &["pool"],
        )?;
        let map_epoch = IntGauge::new(
            "potluck_operator_map_epoch",
            "Epoch of the cluster map this operator last published or loaded",
        )?;
        let agent_calls = IntCounterVec::new(
            Opts::new(
                "potluck_operator_agent_calls_total",
                "AgentControl calls to agents, by rpc and result (ok, error)",
            ),
            &["rpc", "result"],
        )?;
        let leader = IntGauge::new(
            "potluck_operator_leader",
            "1 while this replica holds the leader Lease and reconciles, else 0",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(pgs.clone()))?;
        registry.register(Box::new(pgs_recovering.clone()))?;
        let bytes_to_heal = IntGaugeVec::new(
            Opts::new(
                "potluck_operator_bytes_to_heal",
                "Bytes the PGs' leaders found missing and are rebuilding, by pool (a lower bound)",
            ),
            &["pool"],
        )?;
        let heal_rate = IntGauge::new(
            "potluck_operator_heal_rate_bytes_per_second",
            "Bytes rebuilt per second across the fleet, over the operator's recent passes",
        )?;
        registry.register(Box::new(bytes_to_heal.clone()))?;
        registry.register(Box::new(heal_rate.clone()))?;
        registry.register(Box::new(pool_ready.clone()))?;
        registry.register(Box::new(map_epoch.clone()))?;
        registry.register(Box::new(agent_calls.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        // Present from the start, so "no successful reconcile lately" is a rate of 0, not a
        // missing series, and alerts can tell the two apart.
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            members,
            pgs,
            pgs_recovering,
            bytes_to_heal,
            heal_rate,
            pool_ready,
            map_epoch,
            agent_calls,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn reconciled(&self, took: Duration, error_kind: Option<&str>) {
        let result = if error_kind.is_some() { "error" } else { "ok" };
        self.reconciles.with_label_values(&[result]).inc();
        self.reconcile_duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.reconcile_errors.with_label_values(&[kind]).inc();
        }
    }

    pub fn agent_call(&self, rpc: &str, ok: bool) {
        self.agent_calls
            .with_label_values(&[rpc, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn set_members(&self, phase: &str, n: usize) {
        self.members
            .with_label_values(&[phase])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A pool's figures after a reconcile: PGs clean and degraded, how many of the degraded
    /// wait for shards on moved positions, and its Ready condition.
    pub fn set_pool(&self, pool: &str, clean: i32, degraded: i32, recovering: usize, ready: bool) {
        self.pgs
            .with_label_values(&[pool, "clean"])
            .set(i64::from(clean));
        self.pgs
            .with_label_values(&[pool, "degraded"])
            .set(i64::from(degraded));
        self.pgs_recovering
            .with_label_values(&[pool])
            .set(i64::try_from(recovering).unwrap_or(i64::MAX));
        self.pool_ready
            .with_label_values(&[pool])
            .set(i64::from(ready));
    }

    pub fn set_healing(&self, pool: &str, bytes_to_heal: i64, rate: i64) {
        self.bytes_to_heal
            .with_label_values(&[pool])
            .set(bytes_to_heal);
        self.heal_rate.set(rate);
    }

    pub fn forget_pool(&self, pool: &str) {
        let _ = self.bytes_to_heal.remove_label_values(&[pool]);
        for state in ["clean", "degraded"] {
            let _ = self.pgs.remove_label_values(&[pool, state]);
        }
        let _ = self.pgs_recovering.remove_label_values(&[pool]);
        let _ = self.pool_ready.remove_label_values(&[pool]);
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.map_epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    fn render(&self) -> Result<String, String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|e| e.to_string())
    }
}

/// Binds the HTTP endpoint now (so a bad address fails start-up) and serves it in the
/// background.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

async fn render(State(m): State<Metrics>) -> Result<String, (StatusCode, String)> {
    m.render()
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn ready(State(m): State<Metrics>) -> (StatusCode, &'static str) {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
