//! The client against an in-memory ObjectService in this process.

mod support;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use potluck_cli::client::{ByteRange, Client, ClientError, Progress};
use potluck_proto::v1::object_service_server::ObjectServiceServer;
use support::fake_agent::{FakeAgent, FakeService};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

async fn serve() -> (Arc<FakeAgent>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = Arc::new(FakeAgent::new("fake"));
    let service = ObjectServiceServer::new(FakeService(agent.clone()))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (agent, format!("http://{addr}"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Yields `ok` bytes of zeros, then fails: a disk error mid-upload.
struct FailingReader {
    ok: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ok == 0 {
            return Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        let n = self.ok.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![0u8; n]);
        self.ok -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn put_get_stat_list_delete_round_trip() {
    let (_agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    let data = pattern((5 << 20) + 17);
    let mut seen = Vec::new();
    let put = client
        .put("b", "dir/obj", &data[..], Some(data.len() as u64), |p| {
            seen.push(p)
        })
        .await
        .unwrap();
    assert_eq!(put.info.unwrap().size, data.len() as u64);
    assert_eq!(seen.len(), 6, "one progress report per 1 MiB chunk");
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: data.len() as u64,
            total: Some(data.len() as u64)
        })
    );

    let (info, back) = client.get_bytes("b", "dir/obj", None).await.unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert!(back == data, "content differs");

    let range = ByteRange {
        offset: 1000,
        length: Some(3 << 20),
    };
    let (_, part) = client.get_bytes("b", "dir/obj", Some(range)).await.unwrap();
    assert!(part == data[1000..1000 + (3 << 20)]);
    let tail = ByteRange {
        offset: data.len() as u64 - 5,
        length: None,
    };
    let (_, part) = client.get_bytes("b", "dir/obj", Some(tail)).await.unwrap();
    assert_eq!(part, &data[data.len() - 5..]);

    let stat = client.stat("b", "dir/obj").await.unwrap();
    assert_eq!(stat.blake3, blake3::hash(&data).to_hex().to_string());

    let listed = client.list_all("b", "dir/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(client.list_all("b", "other/").await.unwrap().is_empty());

    client.delete("b", "dir/obj").await.unwrap();
    assert!(matches!(
        client.stat("b", "dir/obj").await,
        Err(ClientError::NotFound(m)) if m.contains("dir/obj")
    ));
    assert!(matches!(
        client.get_bytes("b", "dir/obj", None).await,
        Err(ClientError::NotFound(_))
    ));
}

#[tokio::test]
async fn unknown_sizes_and_empty_objects() {
    let (_agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    let data = pattern(3 << 20);
    client
        .put("b", "piped", &data[..], None, |_| {})
        .await
        .unwrap();
    assert_eq!(client.get_bytes("b", "piped", None).await.unwrap().1, data);
    client.put_bytes("b", "empty", Vec::new()).await.unwrap();
    let (info, back) = client.get_bytes("b", "empty", None).await.unwrap();
    assert_eq!((info.size, back.len()), (0, 0));
}

#[tokio::test]
async fn a_failing_input_never_commits_an_object() {
    let (agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    for size in [None, Some(10 << 20)] {
        let err = client
            .put("b", "broken", FailingReader { ok: 3 << 20 }, size, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Input(_)), "{err}");
    }
    let err = client
        .put("b", "short", &[1u8; 10][..], Some(20), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::InputTooShort {
                expected: 20,
                actual: 10
            }
        ),
        "{err}"
    );
    let err = client
        .put("b", "long", &[1u8; 30][..], Some(20), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::InputTooLong { expected: 20 }),
        "{err}"
    );
    // The server sees the streams reset, not ended: nothing is stored, and
    // no handler is left waiting for more data.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.keys(), Vec::<String>::new());
    assert_eq!(agent.active_puts.load(Ordering::SeqCst), 0);
}

/// Yields `ok` bytes, then never again: a stalled pipe.
struct StallingReader {
    ok: usize,
}

impl AsyncRead for StallingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ok == 0 {
            return Poll::Pending;
        }
        let n = self.ok.min(buf.remaining());
        buf.put_slice(&vec![1u8; n]);
        self.ok -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_dropped_put_never_commits_an_object() {
    let (agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    // Enough for a few chunks to reach the server before the caller gives up.
    let put = client.put("b", "dropped", StallingReader { ok: 3 << 20 }, None, |_| {});
    assert!(tokio::time::timeout(Duration::from_millis(300), put)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.keys(), Vec::<String>::new());
    assert_eq!(agent.active_puts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn listings_follow_page_tokens() {
    let (_agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    for i in 0..25 {
        client
            .put_bytes("b", &format!("k{i:02}"), vec![i as u8; 3])
            .await
            .unwrap();
    }
    let first = client.list("b", "", "", 10).await.unwrap();
    assert_eq!(first.objects.len(), 10);
    assert!(!first.next_page_token.is_empty());
    let all = client.list_all("b", "k").await.unwrap();
    let keys: Vec<_> = all.iter().map(|o| o.key.clone()).collect();
    assert_eq!(keys.len(), 25);
    assert_eq!(keys[0], "k00");
    assert_eq!(keys[24], "k24");
}

#[tokio::test]
async fn dead_endpoints_are_skipped_and_calls_spread() {
    let (a, first) = serve().await;
    let (b, second) = serve().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let client = Client::connect(&[dead.clone(), first.clone(), second.clone()])
        .await
        .unwrap();
    assert_eq!(client.endpoints(), vec![first, second]);
    for i in 0..4 {
        client
            .put_bytes("b", &format!("k{i}"), vec![1u8])
            .await
            .unwrap();
    }
    assert_eq!((a.object_count(), b.object_count()), (2, 2));
    let err = Client::connect(&[dead]).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn pools_are_passed_through() {
    let (_agent, endpoint) = serve().await;
    let client = Client::connect(&[endpoint]).await.unwrap();
    let other = client.with_pool("cold");
    other.put_bytes("b", "k", vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(other.stat("b", "k").await.unwrap().pool, "cold");
    assert!(matches!(
        client.stat("b", "k").await,
        Err(ClientError::NotFound(_))
    ));
}
