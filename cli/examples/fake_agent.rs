//! A stand-in `potluck-agent` for the CLI's tests: same command line, same
//! ready line, same services, but objects live in memory on one process.
//! Not for real use.

#[path = "../tests/support/fake_agent.rs"]
mod fake_agent;

use std::net::SocketAddr;
use std::sync::Arc;

use fake_agent::{FakeAgent, FakeService};
use potluck_proto::v1::agent_control_server::AgentControlServer;
use potluck_proto::v1::object_service_server::ObjectServiceServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let id = arg(&args, "--id").ok_or("--id is required")?;
    let listen: SocketAddr = arg(&args, "--listen")
        .ok_or("--listen is required")?
        .parse()?;
    let metrics: SocketAddr = arg(&args, "--metrics-listen")
        .ok_or("--metrics-listen is required")?
        .parse()?;
    if let Some(dir) = arg(&args, "--data-dir") {
        std::fs::create_dir_all(dir)?;
    }
    if args.iter().any(|a| a == "--fail-on-start") {
        eprintln!("fake agent {id}: failing on purpose");
        std::process::exit(7);
    }
    let grpc = TcpListener::bind(listen).await?;
    let metrics = TcpListener::bind(metrics).await?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_addr = metrics.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = metrics.accept().await {
            let body = "potluck_fake_up 1\n";
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    let agent = Arc::new(FakeAgent::new(&id));
    eprintln!("fake agent {id} starting");
    println!("POTLUCK_AGENT_READY id={id} grpc={grpc_addr} metrics={metrics_addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(ObjectServiceServer::new(FakeService(agent.clone())))
        .add_service(AgentControlServer::new(FakeService(agent)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
            term.recv().await;
        })
        .await?;
    eprintln!("fake agent {id} stopped");
    Ok(())
}
