//! The data path end to end: six real agent processes on loopback, real
//! RocksDB on disk, real gRPC. Faults are real too: processes killed with
//! SIGKILL, bytes flipped in RocksDB's blob files.

use std::time::Duration;

use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tonic::Code;

const B: &str = "e2e-bucket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_every_edge_size_round_trip_through_any_gateway() {
    let fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let chunk = MIB;
    let stripe = 4 * chunk;
    let sizes = [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        stripe - 1,
        stripe,
        stripe + 1,
        3 * stripe + 12345,
        100 * MIB,
    ];
    let mut objects = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let data = random_bytes(n, i as u64);
        let mut c = object_client(&eps[i % eps.len()]).await;
        let key = format!("sizes/{n}");
        let r = put(&mut c, B, &key, &data)
            .await
            .unwrap_or_else(|e| panic!("put {n}: {e}"));
        let info = r.info.expect("put returns info");
        assert_eq!(info.size, n as u64);
        assert_eq!(info.blake3, blake3::hash(&data).to_hex().to_string());
        assert_eq!(r.degraded_stripes, 0, "healthy fleet writes clean stripes");
        objects.push((key, data));
    }
    for (i, (key, data)) in objects.iter().enumerate() {
        let mut c = object_client(&eps[(i + 3) % eps.len()]).await;
        let got = get(&mut c, B, key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert!(
            got == *data,
            "{key}: {} bytes back, {} put",
            got.len(),
            data.len()
        );
    }

    // Ranged reads at stripe and chunk edges of the multi-stripe object.
    let (key, data) = &objects[8];
    let mut c = object_client(&eps[1]).await;
    let cases: &[(usize, usize)] = &[
        (0, 1),
        (chunk - 1, 2),
        (stripe - 1, 2),
        (stripe, 1),
        (stripe - 10, stripe + 20),
        (2 * stripe + 5, chunk * 3),
        (data.len() - 1, 1),
        (data.len() - 100, 1000), // runs past the end: clamped
        (7, 0),                   // length 0: to the end
    ];
    for &(off, len) in cases {
        let got = get_range(&mut c, B, key, Some(off as u64), Some(len as u64))
            .await
            .unwrap_or_else(|e| panic!("range {off}+{len}: {e}"));
        let end = if len == 0 {
            data.len()
        } else {
            (off + len).min(data.len())
        };
        assert!(got == data[off..end], "range {off}+{len}");
    }

    // Stat and list see exactly what was put.
    let info = c
        .stat_object(pb::StatObjectRequest {
            bucket: B.into(),
            key: key.clone(),
            pool: String::new(),
        })
        .await
        .expect("stat")
        .into_inner();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!((info.k, info.m, info.chunk_size), (4, 2, MIB as u64));
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_objects(pb::ListObjectsRequest {
                bucket: B.into(),
                prefix: "sizes/".into(),
                pool: String::new(),
                page_token: token.clone(),
                page_size: 3,
            })
            .await
            .expect("list")
            .into_inner();
        listed.extend(page.objects.into_iter().map(|o| o.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut want: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lost_members_lose_nothing_and_a_third_gets_a_clear_error() {
    // Without the stripe cache: this is about what the shard holders can still serve (a
    // gateway that read a stripe before would serve it from its cache).
    let mut fleet = start_fleet(&["--stripe-cache", "0"]).await;
    let eps = fleet.endpoints();
    let mut c = object_client(&eps[5]).await;
    let mut objects = Vec::new();
    for (i, n) in [1usize, 700_000, 4 * MIB, 9 * MIB + 3, 17 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(n, 100 + i as u64);
        let key = format!("loss/{i}");
        put(&mut c, B, &key, &data).await.expect("put");
        objects.push((key, data));
    }
    // One member gone: writes still meet the k+1 quorum, degraded.
    fleet.kill(0).await.expect("kill 0");
    let fresh = random_bytes(5 * MIB, 7);
    let r = put(&mut c, B, "loss/fresh", &fresh)
        .await
        .expect("put with 1 down");
    assert!(r.degraded_stripes > 0, "stripes missed the dead member");
    objects.push(("loss/fresh".to_string(), fresh));

    // Two gone: every object, including the degraded one, reads back.
    fleet.kill(1).await.expect("kill 1");
    for gateway in [2, 5] {
        let mut c = object_client(&eps[gateway]).await;
        for (key, data) in &objects {
            let got = get(&mut c, B, key)
                .await
                .unwrap_or_else(|e| panic!("{key} after 2 losses: {e}"));
            assert!(got == *data, "{key} differs after 2 losses");
        }
    }
    // ...but a new write cannot meet k+1 = 5 and says so.
    let err = put(&mut c, B, "loss/refused", &random_bytes(MIB, 8))
        .await
        .expect_err("write quorum unreachable");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("write quorum is 5"),
        "{}",
        err.message()
    );

    fleet.kill(2).await.expect("kill 2");
    let err = get(&mut c, B, "loss/3")
        .await
        .expect_err("3 of 6 lost must not read");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().contains("3 of 6 shards") && err.message().contains("4 needed"),
        "error names reachable and needed shards: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_on_disk_are_detected_and_read_around() {
    let mut fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let data = random_bytes(24 * MIB, 42);
    let mut c = object_client(&eps[1]).await;
    put(&mut c, B, "corrupt/me", &data).await.expect("put");

    // Stop member 0 cleanly (its memtables flush into blob files), flip bytes
    // in every blob file, start it again on the same disk.
    fleet.stop(0).await.expect("stop 0");
    let mut flipped = 0;
    for entry in files_under(fleet.data_dir(0)) {
        if entry.extension().is_some_and(|e| e == "blob") {
            let mut bytes = std::fs::read(&entry).expect("read blob");
            let mut at = 4096;
            while at < bytes.len() {
                bytes[at] ^= 0xFF;
                at += 64 * 1024;
                flipped += 1;
            }
            std::fs::write(&entry, bytes).expect("write blob");
        }
    }
    assert!(flipped > 0, "member 0 holds shard data in blob files");
    fleet.restart(0).await.expect("restart 0");
    let eps = fleet.endpoints();

    // Read through the corrupted member itself: it must notice and rebuild.
    let mut c0 = object_client(&eps[0]).await;
    let got = get(&mut c0, B, "corrupt/me")
        .await
        .expect("read around corruption");
    assert!(got == data, "corrupted shards must never reach the client");
    let metrics = fleet.metrics_addr(0).to_string();
    let corrupt = metric(&metrics, "potluck_store_corrupt_shards_total", "").await;
    let rebuilt = metric(&metrics, "potluck_gateway_reconstructed_stripes_total", "").await;
    assert!(corrupt >= 1.0, "corruption counted: {corrupt}");
    assert!(rebuilt >= 1.0, "stripes rebuilt from parity: {rebuilt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_no_torn_object_and_a_retry_succeeds() {
    let mut fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let before = random_bytes(6 * MIB, 1);
    let mut c0 = object_client(&eps[0]).await;
    put(&mut c0, B, "crash/before", &before)
        .await
        .expect("put before");

    // Stream a put into member 0 and SIGKILL it half way.
    let data = random_bytes(40 * MIB, 2);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let call = tokio::spawn(async move {
        c0.put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header(B, "crash/during"))
        .await
        .expect("send header");
    for piece in data.chunks(MIB).take(20) {
        tx.send(chunk(bytes::Bytes::copy_from_slice(piece)))
            .await
            .expect("send chunk");
    }
    // Wait until member 0 has written shards of this put (so the kill lands
    // mid-put, not before it started).
    let metrics0 = fleet.metrics_addr(0).to_string();
    wait_until(Duration::from_secs(30), || {
        let m = metrics0.clone();
        async move { metric(&m, "potluck_peer_shard_bytes_total", "direction=\"out\"").await > 0.0 }
    })
    .await;
    fleet.kill(0).await.expect("kill 0");
    drop(tx);
    let outcome = call.await.expect("join");
    assert!(outcome.is_err(), "a put whose gateway died cannot succeed");

    let mut c1 = object_client(&eps[1]).await;
    let stat = c1
        .stat_object(pb::StatObjectRequest {
            bucket: B.into(),
            key: "crash/during".into(),
            pool: String::new(),
        })
        .await;
    assert_eq!(stat.expect_err("no torn object").code(), Code::NotFound);
    fleet.restart(0).await.expect("restart 0");
    let eps = fleet.endpoints();
    let mut c0 = object_client(&eps[0]).await;
    assert!(
        get(&mut c0, B, "crash/before")
            .await
            .expect("acknowledged data survives")
            == before
    );
    put(&mut c0, B, "crash/during", &data)
        .await
        .expect("retried put");
    assert!(get(&mut c1, B, "crash/during").await.expect("get retried") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_put_degrades_the_stripes_but_not_the_put() {
    let mut fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let data = random_bytes(48 * MIB, 3);
    let mut c = object_client(&eps[2]).await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let call = tokio::spawn(async move {
        c.put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header(B, "degraded/put")).await.expect("header");
    let mut pieces = data.chunks(MIB);
    for p in pieces.by_ref().take(16) {
        tx.send(chunk(bytes::Bytes::copy_from_slice(p)))
            .await
            .expect("chunk");
    }
    fleet.kill(4).await.expect("kill 4");
    for p in pieces {
        tx.send(chunk(bytes::Bytes::copy_from_slice(p)))
            .await
            .expect("chunk");
    }
    tx.send(finish()).await.expect("finish");
    drop(tx);
    let r = call
        .await
        .expect("join")
        .expect("put meets quorum without member 4")
        .into_inner();
    assert!(r.degraded_stripes > 0);
    let mut c = object_client(&eps[3]).await;
    assert!(get(&mut c, B, "degraded/put").await.expect("get") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_loses_its_quorum_half_way_leaves_no_object() {
    let mut fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let mut c = object_client(&eps[0]).await;
    let data = random_bytes(32 * MIB, 5);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let call = tokio::spawn(async move {
        c.put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header(B, "torn/never")).await.expect("header");
    let mut pieces = data.chunks(MIB);
    for p in pieces.by_ref().take(12) {
        tx.send(chunk(bytes::Bytes::copy_from_slice(p)))
            .await
            .expect("chunk");
    }
    // The first three stripes (6 MiB of shards each) are out...
    let metrics0 = fleet.metrics_addr(0).to_string();
    wait_until(Duration::from_secs(30), || {
        let m = metrics0.clone();
        async move {
            metric(&m, "potluck_peer_shard_bytes_total", "direction=\"out\"").await
                >= (18 * MIB) as f64
        }
    })
    .await;
    // ...then two members die, so later stripes cannot reach k+1 = 5.
    fleet.kill(4).await.expect("kill 4");
    fleet.kill(5).await.expect("kill 5");
    for p in pieces {
        let _ = tx.send(chunk(bytes::Bytes::copy_from_slice(p))).await;
    }
    let _ = tx.send(finish()).await;
    drop(tx);
    let err = call
        .await
        .expect("join")
        .expect_err("a stripe missed its write quorum");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let mut c1 = object_client(&eps[1]).await;
    let stat = c1
        .stat_object(pb::StatObjectRequest {
            bucket: B.into(),
            key: "torn/never".into(),
            pool: String::new(),
        })
        .await;
    assert_eq!(
        stat.expect_err("shards were written, but no manifest")
            .code(),
        Code::NotFound
    );
}
