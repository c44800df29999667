//! Hedged reads against real agents: with one member serving every shard two seconds late,
//! whole-stripe reads decode from the first k answers and partial reads ask the other members
//! once theirs is late; every byte still matches.

use potluck_e2e::*;

const B: &str = "hedged";
const SLOW: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_is_read_around() {
    // Without the stripe cache, which would answer the partial reads of stripes read whole.
    let fleet = start_fleet_with(&["--stripe-cache", "0"], |cfg| {
        cfg.agent_options.entry(SLOW).or_default().extra_args =
            vec!["--inject-serve-delay-ms".into(), "2000".into()];
    })
    .await;
    let stripe = 4 * MIB;
    let data = random_bytes(8 * stripe, 3);
    let mut c = object_client(&fleet.endpoint(0)).await;
    put(&mut c, B, "obj", &data).await.expect("put");
    let metrics = fleet.metrics_addr(0).to_string();

    for s in 0..8 {
        let at = s * stripe;
        let got = get_range(&mut c, B, "obj", Some(at as u64), Some(stripe as u64))
            .await
            .expect("whole-stripe read");
        assert!(
            got == data[at..at + stripe],
            "stripe {s} reads back identical"
        );
    }
    let decoded = metric(&metrics, "potluck_gateway_reconstructed_stripes_total", "").await;
    assert!(
        decoded >= 1.0,
        "the slow member holds a data shard of some of the 8 stripes; those were decoded from parity instead of waited for"
    );

    // One byte from each data shard of each stripe: each read needs one member; when that is
    // the slow one, the read asks the others.
    for s in 0..8 {
        for shard in 0..4 {
            let at = s * stripe + shard * MIB + 12_345;
            let got = get_range(&mut c, B, "obj", Some(at as u64), Some(100))
                .await
                .expect("partial read");
            assert!(got == data[at..at + 100], "stripe {s} shard {shard}");
        }
    }
    let hedged = metric(&metrics, "potluck_gateway_hedged_reads_total", "").await;
    assert!(hedged >= 1.0, "late partial reads asked the other members");
    fleet.fleet.shutdown().await.expect("shutdown");
}
