//! Assembles the agent: opens the store, binds the ports, serves gRPC (with
//! health and reflection) and `/metrics`, and runs the background workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use potluck_proto::v1 as pb;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::cluster::Cluster;
use crate::control::Control;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::node::{Node, Tuning};
use crate::peers::{
    CONNECTION_WINDOW, MAX_CALLS_PER_CONNECTION, MAX_HEADER_BYTES, MAX_MESSAGE_BYTES,
    MAX_STREAMS_PER_CONNECTION, STREAM_WINDOW,
};
use crate::shard_service::ShardServer;
use crate::shard_store::{ShardStore, StoreError};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub capacity_bytes: u64,
    pub failure_domain: String,
    pub tuning: Tuning,
    /// Mutual TLS on the gRPC port; None serves plaintext (a trusted network only).
    pub tls: Option<AgentTls>,
}

/// Where this member's certificate lives and how often to look for a renewed one.
#[derive(Clone, Debug)]
pub struct AgentTls {
    pub dir: PathBuf,
    pub reload_every: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening the store in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("the stored cluster map is unusable: {0}")]
    Map(#[from] crate::cluster::MapError),
    #[error("binding {addr}: {source}; pick a free address or port 0")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(#[from] potluck_tls::TlsError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "member id {0:?} is invalid: use 1-63 characters of letters, digits, '-', '_' and '.'"
    )]
    BadId(String),
}

/// A bound, ready agent; `serve` runs it until `shutdown` completes.
pub struct Agent {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    grpc: TcpListener,
    metrics: TcpListener,
    tls: Option<(AgentTls, potluck_tls::Material)>,
}

fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Agent {
    pub async fn bind(cfg: AgentConfig) -> Result<Self, AgentError> {
        if !valid_id(&cfg.id) {
            return Err(AgentError::BadId(cfg.id));
        }
        let store_err = |source| AgentError::Store {
            path: cfg.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| store_err(StoreError::Malformed(e.to_string())))?;
        let store = Arc::new(
            ShardStore::open(&cfg.data_dir.join("rocksdb"), &cfg.id, cfg.capacity_bytes)
                .map_err(store_err)?,
        );
        let saved = store.load_map().map_err(store_err)?;
        let cluster = Cluster::new(saved)?;
        let metrics = Arc::new(Metrics::new(&cfg.id)?);
        metrics.map_epoch.set(cluster.epoch() as i64);
        let node = Arc::new(Node::new(
            cfg.id.clone(),
            store,
            cluster,
            metrics,
            cfg.tuning.clone(),
        ));
        let tls = match &cfg.tls {
            Some(t) => {
                let material = potluck_tls::Material::read_dir(&t.dir)?;
                // Fail at start on files the server cannot use, not at the first handshake.
                potluck_tls::ServerTls::new(&material)?;
                node.peers.set_tls(Some(material.clone()));
                Some((t.clone(), material))
            }
            None => None,
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind { addr, source })
        };
        let grpc = bind(cfg.listen).await?;
        let metrics_l = bind(cfg.metrics_listen).await?;
        let local = |l: &TcpListener, addr| {
            l.local_addr()
                .map_err(|source| AgentError::Bind { addr, source })
        };
        Ok(Self {
            grpc_addr: local(&grpc, cfg.listen)?,
            metrics_addr: local(&metrics_l, cfg.metrics_listen)?,
            node,
            grpc,
            metrics: metrics_l,
            tls,
        })
    }

    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        use pb::agent_control_server::AgentControlServer;
        use pb::object_service_server::ObjectServiceServer;
        use pb::shard_service_server::ShardServiceServer;

        let node = self.node.clone();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ObjectServiceServer<Gateway>>().await;
        health
            .set_serving::<ShardServiceServer<ShardServer>>()
            .await;
        health.set_serving::<AgentControlServer<Control>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| AgentError::Reflection(e.to_string()))?;

        let share_service = pb::share_service_server::ShareServiceServer::new(
            crate::shares::ShareServer::new(node.clone()),
        );
        let objects = ObjectServiceServer::new(Gateway::new(node.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let shards = ShardServiceServer::new(ShardServer::new(node.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let scrubber = Arc::new(crate::scrub::Scrubber::new(&node)?);
        let control = AgentControlServer::new(Control::new(node.clone(), scrubber.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let ready_node = node.clone();
        let metrics_task = tokio::spawn(crate::metrics::serve(
            self.metrics,
            node.metrics.clone(),
            node.store.clone(),
            Arc::new(move || crate::callers::readiness(&ready_node)),
        ));
        let gc_task = tokio::spawn(crate::gc::run(node.clone()));
        let recovery_task = tokio::spawn(crate::recovery::run(node.clone()));
        let scrub_task = tokio::spawn(crate::scrub::run(node.clone(), scrubber));

        let server_tls = match &self.tls {
            Some((settings, material)) => {
                let server_tls = potluck_tls::ServerTls::new(material)?;
                let (renewed, peers_node) = (server_tls.clone(), node.clone());
                let watcher = potluck_tls::watch_dir(
                    settings.dir.clone(),
                    settings.reload_every,
                    material.clone(),
                    move |m| {
                        renewed.replace(m)?;
                        peers_node.peers.set_tls(Some(m.clone()));
                        Ok(())
                    },
                );
                Some((server_tls, watcher))
            }
            None => None,
        };
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .max_frame_size(Some(1 << 20))
            // Bounds per client connection (see the constants): calls over the limit fail
            // at once rather than queue, headers are capped, and pings drop connections
            // whose client vanished, with the calls they held.
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .load_shed(true)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_max_header_list_size(Some(MAX_HEADER_BYTES))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .layer(crate::callers::CallerCheckLayer::new(
                node.clone(),
                server_tls.is_some(),
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(objects)
            .add_service(share_service)
            .add_service(shards)
            .add_service(control);
        // Our own listener (bound early to print the real port), so nodelay
        // must be set on accepted sockets (the TLS acceptor does it too): the
        // builder's tcp_nodelay only reaches listeners tonic binds itself, and
        // Nagle plus delayed ACKs costs 40 ms on small replies.
        let result = match server_tls {
            Some((tls, watcher)) => {
                let r = router
                    .serve_with_incoming_shutdown(tls.incoming(self.grpc), shutdown)
                    .await;
                watcher.abort();
                r
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                        shutdown,
                    )
                    .await
            }
        };
        gc_task.abort();
        recovery_task.abort();
        scrub_task.abort();
        metrics_task.abort();
        let store = node.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::warn!("flushing the store on shutdown failed: {e}");
        }
        Ok(result?)
    }
}
