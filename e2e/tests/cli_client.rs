//! `potluck_cli::client::Client` against real agent processes: round trips,
//! ranges, unknown sizes, empty objects, paging, pools, and uploads that fail
//! or are abandoned half way (which must never leave an object behind).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use potluck_cli::client::{ByteRange, ClientError, Progress};
use potluck_e2e::*;
use tokio::io::{AsyncRead, ReadBuf};

const B: &str = "cli-client";

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

/// PutObject calls gateway `index` finished, with any outcome or only `code`'s.
async fn puts_served_by(fleet: &TestFleet, index: usize, code: Option<&str>) -> f64 {
    let code = code.map(|c| format!("code=\"{c}\""));
    let mut filters = vec!["method=\"PutObject\""];
    filters.extend(code.as_deref());
    metric_matching(
        &fleet.metrics_addr(index).to_string(),
        "potluck_rpc_requests_total",
        &filters,
    )
    .await
}

/// PutObject calls every gateway of the fleet finished (see [`puts_served_by`]).
async fn puts_served(fleet: &TestFleet, code: Option<&str>) -> f64 {
    let mut total = 0.0;
    for i in 0..fleet.len() {
        total += puts_served_by(fleet, i, code).await;
    }
    total
}

/// Round trips, ranges, stat, listing and paging, unknown sizes, empty
/// objects and pools, all through gateways of one real fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_round_trips_pages_and_addresses_pools() {
    // "default" (4+2), a placeable "cold" pool (2+1) and "wide" (5+3),
    // which six members cannot place.
    let fleet = start_fleet_with(&[], |cfg| {
        let mut pools = cfg.effective_pools();
        let mut cold = pools[0].clone();
        cold.name = "cold".into();
        cold.k = 2;
        cold.m = 1;
        let mut wide = pools[0].clone();
        wide.name = "wide".into();
        wide.k = 5;
        wide.m = 3;
        pools.push(cold);
        pools.push(wide);
        cfg.pools = pools;
    })
    .await;
    let client = fleet.client().await.expect("client");
    assert_eq!(client.endpoints(), fleet.endpoints());

    // Round trip of a multi-stripe object with a known size.
    let data = pattern((5 << 20) + 17);
    let mut seen = Vec::new();
    let put = client
        .put(B, "dir/obj", &data[..], Some(data.len() as u64), |p| {
            seen.push(p)
        })
        .await
        .expect("put");
    let info = put.info.expect("put returns info");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.pool, "default");
    assert_eq!((info.k, info.m, info.chunk_size), (4, 2, 1 << 20));
    assert_eq!(put.degraded_stripes, 0);
    assert_eq!(seen.len(), 6, "one progress report per 1 MiB chunk");
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: data.len() as u64,
            total: Some(data.len() as u64)
        })
    );

    let (info, back) = client.get_bytes(B, "dir/obj", None).await.expect("get");
    assert_eq!(info.size, data.len() as u64);
    assert!(back == data, "content differs");

    let range = ByteRange {
        offset: 1000,
        length: Some(3 << 20),
    };
    let (_, part) = client
        .get_bytes(B, "dir/obj", Some(range))
        .await
        .expect("range");
    assert!(
        part == data[1000..1000 + (3 << 20)],
        "range content differs"
    );
    let tail = ByteRange {
        offset: data.len() as u64 - 5,
        length: None,
    };
    let (_, part) = client
        .get_bytes(B, "dir/obj", Some(tail))
        .await
        .expect("tail");
    assert_eq!(part, &data[data.len() - 5..]);
    // A length past the end is clamped to the object.
    let past = ByteRange {
        offset: data.len() as u64 - 3,
        length: Some(100),
    };
    let (_, part) = client
        .get_bytes(B, "dir/obj", Some(past))
        .await
        .expect("clamped");
    assert_eq!(part, &data[data.len() - 3..]);
    // An offset past the end is refused.
    let beyond = ByteRange {
        offset: data.len() as u64 + 1,
        length: None,
    };
    let err = client
        .get_bytes(B, "dir/obj", Some(beyond))
        .await
        .expect_err("offset past the end");
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");

    let stat = client.stat(B, "dir/obj").await.expect("stat");
    assert_eq!(stat.blake3, blake3::hash(&data).to_hex().to_string());
    assert_eq!(stat.size, data.len() as u64);

    let listed = client.list_all(B, "dir/").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "dir/obj");
    assert!(client.list_all(B, "other/").await.expect("list").is_empty());

    client.delete(B, "dir/obj").await.expect("delete");
    let err = client.stat(B, "dir/obj").await.expect_err("deleted");
    assert!(
        matches!(&err, ClientError::NotFound(m) if m.contains("dir/obj")),
        "{err}"
    );
    let err = client
        .get_bytes(B, "dir/obj", None)
        .await
        .expect_err("deleted");
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");
    let err = client
        .delete(B, "dir/obj")
        .await
        .expect_err("deleted twice");
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");
    assert!(client.list_all(B, "dir/").await.expect("list").is_empty());

    // Unknown sizes (a pipe) and empty objects.
    let piped = pattern(3 << 20);
    let mut totals = Vec::new();
    let put = client
        .put(B, "piped", &piped[..], None, |p| totals.push(p.total))
        .await
        .expect("put of unknown size");
    assert_eq!(put.info.expect("info").size, piped.len() as u64);
    assert_eq!(totals, vec![None; 3], "no total while the size is unknown");
    assert!(
        client.get_bytes(B, "piped", None).await.expect("get").1 == piped,
        "piped content differs"
    );
    client
        .put_bytes(B, "empty", Vec::new())
        .await
        .expect("empty put");
    let (info, back) = client.get_bytes(B, "empty", None).await.expect("get");
    assert_eq!((info.size, back.len()), (0, 0));
    assert_eq!(info.blake3, blake3::hash(b"").to_hex().to_string());
    client
        .put(B, "empty-piped", &[][..], None, |_| {})
        .await
        .expect("empty put of unknown size");
    assert_eq!(client.stat(B, "empty-piped").await.expect("stat").size, 0);

    // Listings follow page tokens.
    for i in 0..25 {
        client
            .put_bytes(B, &format!("k{i:02}"), vec![i as u8; 3])
            .await
            .expect("small put");
    }
    let first = client.list(B, "k", "", 10).await.expect("first page");
    assert_eq!(first.objects.len(), 10);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list(B, "k", &first.next_page_token, 10)
        .await
        .expect("second page");
    assert_eq!(second.objects.len(), 10);
    assert_eq!(first.objects[9].key, "k09");
    assert_eq!(second.objects[0].key, "k10");
    let all = client.list_all(B, "k").await.expect("list all");
    let keys: Vec<_> = all.iter().map(|o| o.key.clone()).collect();
    let expected: Vec<_> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, expected);
    let everything = client.list_all(B, "").await.expect("whole bucket");
    assert_eq!(
        everything.len(),
        25 + 3,
        "k00..k24, piped, empty, empty-piped"
    );

    // Pools are passed through: "cold" is its own namespace with its own code.
    let cold = client.with_pool("cold");
    assert_eq!(cold.pool(), "cold");
    let put = cold
        .put_bytes(B, "k", vec![1u8, 2, 3])
        .await
        .expect("put in cold");
    assert_eq!(put.info.expect("info").pool, "cold");
    let stat = cold.stat(B, "k").await.expect("stat in cold");
    assert_eq!((stat.pool.as_str(), stat.k, stat.m), ("cold", 2, 1));
    assert_eq!(
        cold.get_bytes(B, "k", None).await.expect("get").1,
        [1, 2, 3]
    );
    // The default pool's "k" is a different object that does not exist.
    let err = client.stat(B, "k").await.expect_err("not in default");
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");
    // And the default pool's objects are not in "cold".
    let err = cold.stat(B, "k00").await.expect_err("not in cold");
    assert!(matches!(err, ClientError::NotFound(_)), "{err}");
    let keys: Vec<_> = cold
        .list_all(B, "")
        .await
        .expect("list cold")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["k"]);
    // The explicit name of the default pool is the default pool.
    let named = client.with_pool("default");
    assert_eq!(named.stat(B, "k00").await.expect("stat").pool, "default");

    let wide = fleet
        .map()
        .pools
        .iter()
        .find(|p| p.name == "wide")
        .expect("wide pool in the map");
    assert!(!wide.unplaceable_reason.is_empty());
    assert!(wide.pgs.is_empty());
    let err = client
        .with_pool("wide")
        .put_bytes(B, "k", vec![1u8])
        .await
        .expect_err("unplaceable pool");
    assert!(
        matches!(&err, ClientError::FailedPrecondition(m) if m.contains("wide")),
        "{err}"
    );
    let err = client
        .with_pool("no-such-pool")
        .stat(B, "k")
        .await
        .expect_err("unknown pool");
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("no-such-pool")),
        "{err}"
    );
}

/// Inputs that fail, do not match their declared size, or stall until the
/// caller gives up never commit an object, and the gateway's handler ends
/// with them. Then: dead endpoints are skipped and calls are spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_dropped_puts_commit_nothing_and_calls_spread() {
    let fleet = start_fleet(&[]).await;
    let client = fleet.client().await.expect("client");
    let mut attempts = 0.0;

    for size in [None, Some(10 << 20)] {
        let err = client
            .put(B, "broken", FailingReader { ok: 3 << 20 }, size, |_| {})
            .await
            .expect_err("the input fails");
        assert!(matches!(err, ClientError::Input(_)), "{err}");
        attempts += 1.0;
    }
    let err = client
        .put(B, "short", &[1u8; 10][..], Some(20), |_| {})
        .await
        .expect_err("too short");
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
    attempts += 1.0;
    let err = client
        .put(B, "long", &[1u8; 30][..], Some(20), |_| {})
        .await
        .expect_err("too long");
    assert!(
        matches!(err, ClientError::InputTooLong { expected: 20 }),
        "{err}"
    );
    attempts += 1.0;

    // A put the caller drops once a few chunks reached the gateway (more
    // than a stripe, so shards are already out on members).
    let bytes_in = || {
        fleet_metric(
            &fleet,
            "potluck_gateway_client_bytes_total",
            "operation=\"put\"",
        )
    };
    let before = bytes_in().await;
    let stalled = 9 << 20;
    {
        let put = client.put(B, "dropped", StallingReader { ok: stalled }, None, |_| {});
        let reached = wait_until(Duration::from_secs(60), || async {
            bytes_in().await - before >= stalled as f64
        });
        tokio::select! {
            r = put => panic!("a stalled put cannot finish: {r:?}"),
            () = reached => {}
        }
    }
    attempts += 1.0;

    // Every handler ends (none waits for more data), none succeeded.
    wait_until(Duration::from_secs(30), || async {
        puts_served(&fleet, None).await >= attempts
    })
    .await;
    assert_eq!(puts_served(&fleet, None).await, attempts);
    assert_eq!(puts_served(&fleet, Some("OK")).await, 0.0);
    for key in ["broken", "short", "long", "dropped"] {
        let err = client.stat(B, key).await.expect_err("nothing stored");
        assert!(matches!(err, ClientError::NotFound(_)), "{key}: {err}");
    }
    assert!(client.list_all(B, "").await.expect("list").is_empty());
    assert_eq!(
        fleet_metric(&fleet, "potluck_store_manifests", "").await,
        0.0,
        "no manifest was written anywhere"
    );
    eprintln!(
        "shards left on members by the abandoned puts: {}",
        fleet_metric(&fleet, "potluck_store_shards", "").await
    );

    // Dead endpoints are skipped; calls are spread round-robin.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let (first, second) = (fleet.endpoint(0), fleet.endpoint(1));
    let spread = potluck_e2e::cli_client(&[dead.clone(), first.clone(), second.clone()])
        .await
        .expect("connect skipping the dead endpoint");
    assert_eq!(spread.endpoints(), vec![first, second]);
    let before = (
        puts_served_by(&fleet, 0, None).await,
        puts_served_by(&fleet, 1, None).await,
    );
    for i in 0..4 {
        spread
            .put_bytes(B, &format!("spread-{i}"), vec![1u8])
            .await
            .expect("put");
    }
    let after = (
        puts_served_by(&fleet, 0, None).await,
        puts_served_by(&fleet, 1, None).await,
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (2.0, 2.0));
    // What one gateway stored, every other one serves.
    let keys: Vec<_> = client
        .list_all(B, "spread-")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["spread-0", "spread-1", "spread-2", "spread-3"]);

    // Given one address and --discover, the client learns the other members from the map
    // and spreads calls over all of them.
    let one = fleet.endpoint(2);
    let discovered = potluck_cli::client::Client::connect_with(
        std::slice::from_ref(&one),
        potluck_cli::client::ClientOptions {
            discover: true,
            ..potluck_e2e::cli_options()
        },
    )
    .await
    .expect("connect and discover");
    let mut found = discovered.endpoints();
    assert_eq!(found[0], one, "the given address comes first");
    found.sort();
    let mut all: Vec<String> = (0..fleet.len()).map(|i| fleet.endpoint(i)).collect();
    all.sort();
    assert_eq!(found, all, "every member of the fleet is a gateway");
    let before: Vec<f64> =
        futures::future::join_all((0..fleet.len()).map(|i| puts_served_by(&fleet, i, None))).await;
    for i in 0..fleet.len() {
        discovered
            .put_bytes(B, &format!("discovered-{i}"), vec![2u8])
            .await
            .expect("put");
    }
    for (i, was) in before.iter().enumerate() {
        assert_eq!(
            puts_served_by(&fleet, i, None).await - was,
            1.0,
            "gateway {i} served one of the puts"
        );
    }

    let err = potluck_e2e::cli_client(&[dead])
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
}
