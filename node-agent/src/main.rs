//! `potluck-agent`: serves one member's disk to the fleet.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use potluck_agent::node::Tuning;
use potluck_agent::server::{Agent, AgentConfig};

#[derive(Parser, Debug)]
#[command(
    name = "potluck-agent",
    version,
    about = "Potluck node agent: stores shards and serves objects"
)]
struct Args {
    /// Member id, stable across restarts (the data directory remembers it).
    #[arg(long, env = "POTLUCK_MEMBER_ID")]
    id: String,
    /// gRPC address (ObjectService, ShardService, AgentControl, health, reflection).
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
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
    let cfg = AgentConfig {
        failure_domain: if args.failure_domain.is_empty() {
            args.id.clone()
        } else {
            args.failure_domain.clone()
        },
        id: args.id,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir,
        capacity_bytes: args.capacity,
        tuning: Tuning {
            gc_delay: Duration::from_secs(args.gc_delay_secs),
            stripes_in_flight: args.stripes_in_flight.max(1),
            put_memory_bytes: usize::try_from(args.put_memory).unwrap_or(usize::MAX),
            ..Tuning::default()
        },
    };
    let id = cfg.id.clone();
    let agent = Agent::bind(cfg).await.context("agent failed to start")?;
    tracing::info!(member = %id, grpc = %agent.grpc_addr, metrics = %agent.metrics_addr, epoch = agent.node.cluster.epoch(), "agent serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "POTLUCK_AGENT_READY id={id} grpc={} metrics={}",
            agent.grpc_addr, agent.metrics_addr
        )?;
        out.flush()?;
    }
    agent
        .serve(shutdown_signal())
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
