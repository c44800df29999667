//! Prometheus metrics of one agent, served on `/metrics`.
//!
//! Labels are bounded: service, method, gRPC code, operation, result, direction, and peer
//! member id (at most the fleet's size). Object keys and buckets never become label values.
//! Names follow `potluck_<subsystem>_<name>_<unit>`; `docs/operations.md` lists every series and
//! `deploy/monitoring/` builds its dashboard and alerts on them.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::shard_store::ShardStore;

/// Latency buckets from 100 µs to ~10 min (100 µs × 2.5^17 ≈ 582 s), so a 4 KiB stat and a
/// 1 GiB put both land in a bucket that tells something.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.5, 18).unwrap_or_default()
}

pub struct Metrics {
    pub registry: Registry,
    pub rpc_requests: IntCounterVec,
    pub rpc_duration: HistogramVec,
    /// Object bytes from (put) and to (get) clients, counted as they pass so throughput is live.
    client_bytes: IntCounterVec,
    /// Bytes of client transfers that ended in an error, counted when they end: the result of a
    /// transfer is only known then, and `client_bytes` minus this is what clients got done.
    client_failed_bytes: IntCounterVec,
    pub peer_bytes: IntCounterVec,
    pub peer_errors: IntCounterVec,
    pub degraded_stripes: IntCounter,
    /// Calls refused for the caller's certificate: no certificate, wrong role,
    /// revoked or expired (see `callers`).
    pub refused_callers: IntCounter,
    pub reconstructed_stripes: IntCounter,
    pub hedged_reads: IntCounter,
    /// Resumable puts that skipped stripes an earlier attempt committed.
    pub uploads_resumed: IntCounter,
    pub upload_bytes_skipped: IntCounter,
    pub stripe_cache: IntCounterVec,
    pub corrupt_shards: IntCounter,
    pub gc_shards_deleted: IntCounter,
    pub stripe_buffers_allocated: IntCounter,
    pub map_epoch: IntGauge,
    /// Kubernetes mode: Lease writes, by `result` (`ok`, `error`).
    pub lease_renewals: IntCounterVec,
    /// Newer maps fetched from peers after a request carried a newer epoch,
    /// by `result` (see `map_catchup::Outcome`).
    pub map_catchups: IntCounterVec,
    store_shards: IntGauge,
    store_bytes: IntGauge,
    store_capacity: IntGauge,
    store_manifests: IntGauge,
    blob_bytes: IntGauge,
    pending_compaction: IntGauge,
    write_stopped: IntGauge,
    delayed_write_rate: IntGauge,
}

/// One client transfer (a put or a get): its bytes go to `client_bytes` as they pass, and to
/// `client_failed_bytes` when it is dropped without [`ClientTransfer::succeeded`], so early
/// returns, client cancellations and panics all count as failures without each path saying so.
pub struct ClientTransfer {
    live: IntCounter,
    failed: IntCounter,
    bytes: u64,
    ok: bool,
}

impl ClientTransfer {
    pub fn add(&mut self, n: usize) {
        let n = n as u64;
        self.bytes += n;
        self.live.inc_by(n);
    }

    pub fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for ClientTransfer {
    fn drop(&mut self) {
        if !self.ok && self.bytes > 0 {
            self.failed.inc_by(self.bytes);
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new(member_id: &str) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(
            None,
            Some([("member".to_string(), member_id.to_string())].into()),
        )?;
        let r = &registry;
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "potluck_rpc_duration_seconds",
                "Time to serve a gRPC call, by service, method and status code",
            )
            .buckets(latency_buckets()),
            &["service", "method", "code"],
        )?;
        r.register(Box::new(rpc_duration.clone()))?;
        let lease_renewals = counter_vec(
            r,
            "potluck_agent_lease_renewals_total",
            "Writes of this agent's Lease (Kubernetes mode), by result",
            &["result"],
        )?;
        let map_catchups = counter_vec(
            r,
            "potluck_agent_map_catchups_total",
            "Fetches of a newer cluster map from peers, started when a request carried a newer epoch, by result",
            &["result"],
        )?;
        // Present from the start, so a rate over them is defined before the first event.
        for result in ["ok", "error"] {
            lease_renewals.with_label_values(&[result]);
        }
        for result in crate::map_catchup::Outcome::LABELS {
            map_catchups.with_label_values(&[result]);
        }
        let client_bytes = counter_vec(
            r,
            "potluck_gateway_client_bytes_total",
            "Object bytes received from clients (operation=put) and sent to them (operation=get), counted as they pass",
            &["operation"],
        )?;
        let client_failed_bytes = counter_vec(
            r,
            "potluck_gateway_client_failed_bytes_total",
            "Bytes of client puts and gets that ended in an error, counted when the call ends",
            &["operation"],
        )?;
        for op in ["put", "get"] {
            client_bytes.with_label_values(&[op]);
            client_failed_bytes.with_label_values(&[op]);
        }
        Ok(Self {
            lease_renewals,
            map_catchups,
            rpc_requests: counter_vec(
                r,
                "potluck_rpc_requests_total",
                "gRPC calls served, by service, method and status code",
                &["service", "method", "code"],
            )?,
            rpc_duration,
            client_bytes,
            client_failed_bytes,
            peer_bytes: counter_vec(
                r,
                "potluck_peer_shard_bytes_total",
                "Shard bytes sent to (out) and received from (in) peers and the local store",
                &["direction"],
            )?,
            peer_errors: counter_vec(
                r,
                "potluck_peer_errors_total",
                "Failed calls to peer members, by peer",
                &["peer"],
            )?,
            refused_callers: counter(
                r,
                "potluck_tls_refused_calls_total",
                "Calls refused because of the caller's certificate: missing, wrong role, revoked or expired",
            )?,
            degraded_stripes: counter(
                r,
                "potluck_gateway_degraded_stripes_total",
                "Stripes written with fewer than k+m shards acknowledged",
            )?,
            reconstructed_stripes: counter(
                r,
                "potluck_gateway_reconstructed_stripes_total",
                "Stripes read by rebuilding data from parity",
            )?,
            stripe_cache: counter_vec(
                r,
                "potluck_gateway_stripe_cache_lookups_total",
                "Stripe reads answered from this agent's stripe cache (hit) or from shard holders (miss)",
                &["result"],
            )?,
            hedged_reads: counter(
                r,
                "potluck_gateway_hedged_reads_total",
                "Partial stripe reads that asked every other member because the first ones were late or failed",
            )?,
            uploads_resumed: counter(
                r,
                "potluck_gateway_uploads_resumed_total",
                "Resumable puts through this gateway that continued after stripes an earlier attempt committed",
            )?,
            upload_bytes_skipped: counter(
                r,
                "potluck_gateway_upload_skipped_bytes_total",
                "Object bytes resumed puts did not have to send again",
            )?,
            corrupt_shards: counter(
                r,
                "potluck_store_corrupt_shards_total",
                "Shards that failed their hash check when this agent read them, from its own store or from a peer",
            )?,
            gc_shards_deleted: counter(
                r,
                "potluck_gc_shards_deleted_total",
                "Shards of overwritten or deleted objects collected",
            )?,
            stripe_buffers_allocated: counter(
                r,
                "potluck_gateway_stripe_buffers_allocated_total",
                "Stripe buffers allocated (steady-state puts reuse them)",
            )?,
            map_epoch: gauge(
                r,
                "potluck_cluster_map_epoch",
                "Epoch of the applied cluster map",
            )?,
            store_shards: gauge(r, "potluck_store_shards", "Shards held by this member")?,
            store_bytes: gauge(
                r,
                "potluck_store_shard_bytes",
                "Shard bytes held by this member",
            )?,
            store_capacity: gauge(
                r,
                "potluck_store_capacity_bytes",
                "Capacity this member offers",
            )?,
            store_manifests: gauge(
                r,
                "potluck_store_manifests",
                "Object manifests held by this member",
            )?,
            blob_bytes: gauge(
                r,
                "potluck_store_blob_file_bytes",
                "Size of RocksDB blob files holding shard data",
            )?,
            pending_compaction: gauge(
                r,
                "potluck_store_pending_compaction_bytes",
                "RocksDB's estimate of bytes compaction still has to rewrite",
            )?,
            write_stopped: gauge(
                r,
                "potluck_store_write_stopped",
                "1 while RocksDB stops writes (too many memtables, L0 files or pending compaction bytes), else 0",
            )?,
            delayed_write_rate: gauge(
                r,
                "potluck_store_delayed_write_rate_bytes_per_second",
                "Rate RocksDB throttles writes to while it delays them, 0 when it does not",
            )?,
            registry,
        })
    }

    /// Starts counting one client transfer; `operation` is `put` or `get`.
    pub fn client_transfer(&self, operation: &str) -> ClientTransfer {
        ClientTransfer {
            live: self.client_bytes.with_label_values(&[operation]),
            failed: self.client_failed_bytes.with_label_values(&[operation]),
            bytes: 0,
            ok: false,
        }
    }

    /// Counts one finished call with its outcome.
    pub fn observe(&self, service: &str, method: &str, started: Instant, code: tonic::Code) {
        let code = code_name(code);
        self.rpc_requests
            .with_label_values(&[service, method, code])
            .inc();
        self.rpc_duration
            .with_label_values(&[service, method, code])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one finished call from its result.
    pub fn observe_result<T>(
        &self,
        service: &str,
        method: &str,
        started: Instant,
        r: &Result<T, tonic::Status>,
    ) {
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.observe(service, method, started, code);
    }

    fn refresh_store(&self, store: &ShardStore) {
        let s = store.stats();
        self.store_shards.set(s.shards as i64);
        self.store_bytes.set(s.bytes as i64);
        self.store_capacity.set(s.capacity as i64);
        self.store_manifests.set(s.manifests as i64);
        if let Some(v) = store.shard_cf_property("rocksdb.total-blob-file-size") {
            self.blob_bytes.set(v as i64);
        }
        if let Some(v) = store.shard_cf_property("rocksdb.estimate-pending-compaction-bytes") {
            self.pending_compaction.set(v as i64);
        }
        // Database-wide: RocksDB's write controller stalls every column family at once.
        if let Some(v) = store.shard_cf_property("rocksdb.is-write-stopped") {
            self.write_stopped.set(v as i64);
        }
        if let Some(v) = store.shard_cf_property("rocksdb.actual-delayed-write-rate") {
            self.delayed_write_rate.set(v as i64);
        }
    }

    pub fn render(&self, store: &ShardStore) -> String {
        self.refresh_store(store);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether the agent can serve calls; `Err` says why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP/1 until the process ends.
/// Kubernetes probes these rather than the gRPC port: with mutual TLS a probe has no
/// client certificate, and the kubelet's gRPC probe cannot present one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<ShardStore>,
    ready: Readiness,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::{routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (metrics, store) = (metrics.clone(), store.clone());
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics.render(&store))
                        .await
                        .unwrap_or_else(|e| format!("# metrics task failed: {e}\n"));
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        body,
                    )
                }
            }),
        )
        // Answered by the same runtime that serves gRPC: a wedged runtime fails it.
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, name: &str, operation: &str) -> u64 {
        m.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|s| {
                s.get_label()
                    .iter()
                    .any(|l| l.name() == "operation" && l.value() == operation)
            })
            .map(|s| s.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn transfer_bytes_count_as_they_pass_and_as_failed_only_when_the_call_fails() {
        let m = Metrics::new("m0").expect("metrics");
        let mut ok = m.client_transfer("put");
        ok.add(100);
        assert_eq!(value(&m, "potluck_gateway_client_bytes_total", "put"), 100);
        ok.succeeded();
        let mut failed = m.client_transfer("get");
        failed.add(7);
        failed.add(3);
        drop(failed);
        assert_eq!(value(&m, "potluck_gateway_client_bytes_total", "get"), 10);
        assert_eq!(
            value(&m, "potluck_gateway_client_failed_bytes_total", "get"),
            10
        );
        assert_eq!(
            value(&m, "potluck_gateway_client_failed_bytes_total", "put"),
            0
        );
    }
}
