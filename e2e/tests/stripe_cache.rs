//! The stripe cache against real agents: a second reader of an object through the same agent
//! is served without fetching a single shard from the holders again, byte-identical.

use potluck_e2e::*;

const B: &str = "cached";

async fn shard_bytes_in(metrics: &str) -> f64 {
    metric(
        metrics,
        "potluck_peer_shard_bytes_total",
        "direction=\"in\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_costs_the_holders_nothing() {
    let fleet = start_fleet(&[]).await;
    let data = random_bytes(12 * MIB + 321, 9);
    let mut writer = object_client(&fleet.endpoint(0)).await;
    put(&mut writer, B, "popular", &data).await.expect("put");

    let metrics = fleet.metrics_addr(1).to_string();
    let before = shard_bytes_in(&metrics).await;
    let mut first = object_client(&fleet.endpoint(1)).await;
    assert!(get(&mut first, B, "popular").await.expect("first read") == data);
    let after_first = shard_bytes_in(&metrics).await;
    assert!(
        after_first - before >= (data.len() / 2) as f64,
        "the first read fetched shards: {before} -> {after_first}"
    );

    let mut second = object_client(&fleet.endpoint(1)).await;
    assert!(get(&mut second, B, "popular").await.expect("second read") == data);
    let ranged = get_range(&mut second, B, "popular", Some(5 * MIB as u64), Some(1000))
        .await
        .expect("ranged read");
    assert!(ranged == data[5 * MIB..5 * MIB + 1000]);
    assert_eq!(
        shard_bytes_in(&metrics).await,
        after_first,
        "later reads came from the cache"
    );
    let hits = metric(
        &metrics,
        "potluck_gateway_stripe_cache_lookups_total",
        "result=\"hit\"",
    )
    .await;
    assert!(
        hits >= 4.0,
        "4 stripes read again, plus the ranged read: {hits}"
    );
    fleet.fleet.shutdown().await.expect("shutdown");
}
