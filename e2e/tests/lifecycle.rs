//! Overwrites and deletes: the newest version wins at once, and the old
//! versions' shards are collected in the background until disk use is back
//! where it started. Also: a big put stays within a few stripes of memory.

use std::time::Duration;

use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tonic::Code;

const B: &str = "lifecycle";

async fn stored_bytes(fleet: &TestFleet) -> u64 {
    let mut total = 0;
    for ep in fleet.endpoints() {
        let mut c = potluck_e2e::control_client(ep).await.expect("control");
        total += c
            .get_status(pb::GetStatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .stored_bytes;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_and_deleted_versions_are_collected() {
    let fleet = start_fleet(&["--gc-delay-secs", "1"]).await;
    let eps = fleet.endpoints();
    let mut c = object_client(&eps[0]).await;
    let baseline = stored_bytes(&fleet).await;

    let v1 = random_bytes(9 * MIB, 1);
    let v2 = random_bytes(5 * MIB + 1, 2);
    put(&mut c, B, "obj", &v1).await.expect("v1");
    let one_version = stored_bytes(&fleet).await - baseline;
    assert_eq!(one_version, (9 * MIB as u64) / 4 * 6, "4+2 stores 1.5x");
    put(&mut c, B, "obj", &v2).await.expect("v2");
    let mut c3 = object_client(&eps[3]).await;
    assert!(
        get(&mut c3, B, "obj").await.expect("newest") == v2,
        "overwrite visible at once"
    );

    let v2_bytes = {
        let layout = potluck_agent::layout::StripeLayout::new(v2.len() as u64, 4, MIB as u64);
        (0..layout.stripe_count())
            .map(|s| layout.shard_len(s) * 6)
            .sum::<u64>()
    };
    wait_until(Duration::from_secs(60), || async {
        stored_bytes(&fleet).await - baseline == v2_bytes
    })
    .await;

    let r = c
        .delete_object(pb::DeleteObjectRequest {
            bucket: B.into(),
            key: "obj".into(),
            pool: String::new(),
        })
        .await;
    assert!(r.is_ok(), "delete: {r:?}");
    let gone = get(&mut c3, B, "obj").await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    wait_until(Duration::from_secs(60), || async {
        let now = stored_bytes(&fleet).await;
        eprintln!(
            "after delete: stored {now}, data dir {}",
            fleet.data_dir(0).display()
        );
        now == baseline
    })
    .await;
    let again = c
        .delete_object(pb::DeleteObjectRequest {
            bucket: B.into(),
            key: "obj".into(),
            pool: String::new(),
        })
        .await;
    assert_eq!(again.expect_err("already gone").code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_put_uses_a_few_stripes_of_memory_not_the_object_size() {
    let fleet = start_fleet(&[]).await;
    let eps = fleet.endpoints();
    let mut c = object_client(&eps[0]).await;
    let rss_before = peak_rss_bytes(fleet.pid(0).expect("pid")).expect("rss");
    // 1 GiB streamed from a generator: the client never holds it either.
    let total = 1024 * MIB;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move {
        c.put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header(B, "huge")).await.expect("header");
    let block = bytes::Bytes::from(random_bytes(MIB, 9));
    for _ in 0..total / MIB {
        tx.send(chunk(block.clone())).await.expect("chunk");
    }
    tx.send(finish()).await.expect("finish");
    drop(tx);
    let info = call
        .await
        .expect("join")
        .expect("huge put")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.size, total as u64);
    let peak = peak_rss_bytes(fleet.pid(0).expect("pid")).expect("rss");
    eprintln!(
        "gateway peak RSS: before {} MiB, after a 1 GiB put {} MiB",
        rss_before >> 20,
        peak >> 20
    );
    assert!(
        peak < 400 << 20,
        "gateway peak RSS {} MiB for a 1 GiB put",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_the_agents_memory_budget_without_deadlock() {
    // 12 MiB: two 4+2 stripe buffers of 6 MiB for all puts of the agent.
    let fleet = start_fleet(&["--put-memory", "12MiB"]).await;
    let ep = fleet.endpoints()[0].clone();
    let mut puts = Vec::new();
    for i in 0..3u64 {
        let ep = ep.clone();
        puts.push(tokio::spawn(async move {
            let data = random_bytes(20 * MIB + i as usize, i);
            let mut c = object_client(&ep).await;
            put(&mut c, B, &format!("budget/{i}"), &data)
                .await
                .map(|_| data)
        }));
    }
    let mut c = object_client(&fleet.endpoints()[3]).await;
    for (i, p) in puts.into_iter().enumerate() {
        let data = p.await.expect("join").expect("put under the budget");
        let got = get(&mut c, B, &format!("budget/{i}")).await.expect("get");
        assert!(got == data, "budget/{i} differs");
    }
}
