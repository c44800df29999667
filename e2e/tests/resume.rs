//! Resumable uploads with the real `potluck` binary against real agents: a `potluck put`
//! SIGKILLed half way and run again sends only what the fleet does not hold yet and the object
//! reads back identical; a resume with a changed file is refused (by the CLI, and by the
//! gateway when a client skips stripes it does not have); an abandoned upload's shards and
//! records are collected after the orphan grace; the agents keep serving throughout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use potluck_agent::layout::StripeLayout;
use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const B: &str = "resume";
/// Stripe data of the test fleet's pool: 4 data shards of 1 MiB.
const STRIPE: u64 = 4 * MIB as u64;
/// Stripes a gateway keeps in flight (`--stripes-in-flight`, default 4).
const WINDOW: u64 = 4;
/// Short, so the abandoned upload is collected within the test; resumes must happen within
/// half of it.
const GRACE_SECS: &str = "30";
const LIMIT: Duration = Duration::from_secs(90);

async fn held(fleet: &TestFleet) -> (u64, u64) {
    (
        fleet_metric(fleet, "potluck_store_shards", "").await as u64,
        fleet_metric(fleet, "potluck_store_shard_bytes", "").await as u64,
    )
}

/// Bytes of client data the gateways received for puts, over the fleet.
async fn put_bytes_received(fleet: &TestFleet) -> f64 {
    fleet_metric(
        fleet,
        "potluck_gateway_client_bytes_total",
        "operation=\"put\"",
    )
    .await
}

async fn put_bytes_failed(fleet: &TestFleet) -> f64 {
    fleet_metric(
        fleet,
        "potluck_gateway_client_failed_bytes_total",
        "operation=\"put\"",
    )
    .await
}

/// The upload id in the only state file of `state`, once the CLI wrote it.
fn upload_id(state: &Path) -> Option<Vec<u8>> {
    let file = files_under(state)
        .into_iter()
        .find(|p| p.extension().is_none())?;
    let text = std::fs::read_to_string(file).ok()?;
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn committed(fleet: &TestFleet, key: &str, id: &[u8]) -> Option<u64> {
    let mut c = object_client(&fleet.endpoint(0)).await;
    c.get_upload(pb::GetUploadRequest {
        bucket: B.into(),
        key: key.into(),
        pool: String::new(),
        upload_id: Bytes::copy_from_slice(id),
    })
    .await
    .ok()
    .map(|r| r.into_inner().committed_stripes)
}

/// Starts `potluck put` of `file` as `B/key` at a limited rate, waits until the fleet has
/// recorded `stripes` stripes of it, and SIGKILLs the command. Returns the upload id.
async fn put_and_kill(
    fleet: &TestFleet,
    state: &Path,
    key: &str,
    file: &Path,
    stripes: u64,
) -> Vec<u8> {
    let mut child = potluck_command(&fleet.endpoints().join(","))
        .args([
            "put",
            &format!("{B}/{key}"),
            file.to_str().expect("utf-8 path"),
            "--limit-rate",
            "16MiB",
        ])
        .env("POTLUCK_STATE_DIR", state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn potluck");
    let failed_before = put_bytes_failed(fleet).await;
    wait_until(LIMIT, || async {
        match upload_id(state) {
            Some(id) => committed(fleet, key, &id).await.unwrap_or(0) >= stripes,
            None => false,
        }
    })
    .await;
    child.start_kill().expect("SIGKILL potluck");
    let status = child.wait().await.expect("wait for potluck");
    assert!(!status.success(), "the put was killed, not finished");
    // The gateway notices the client is gone and ends the transfer as failed.
    wait_until(LIMIT, || async {
        put_bytes_failed(fleet).await > failed_before
    })
    .await;
    upload_id(state).expect("state file")
}

/// Shards and bytes objects of these sizes need: every stripe at full width (4+2).
fn needed(sizes: &[usize]) -> (u64, u64) {
    let mut total = (0, 0);
    for &size in sizes {
        let layout = StripeLayout::new(size as u64, 4, MIB as u64);
        for s in 0..layout.stripe_count() {
            total.0 += 6;
            total.1 += 6 * layout.shard_len(s);
        }
    }
    total
}

/// The number that follows `marker` in the CLI's summary line.
fn number_after(stdout: &str, marker: &str) -> u64 {
    let after = stdout
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?} in {stdout:?}"));
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {stdout:?}"))
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write input");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_put_resumes_and_abandoned_uploads_are_collected() {
    let fleet = start_fleet(&[
        "--orphan-grace-secs",
        GRACE_SECS,
        "--gc-delay-secs",
        "0",
        "--recovery-interval-secs",
        "1",
    ])
    .await;
    let work = tempfile::tempdir().expect("temp dir");
    let state = work.path().join("state");
    let endpoints = fleet.endpoints().join(",");
    let envs = [("POTLUCK_STATE_DIR", state.to_str().expect("utf-8"))];

    // 1. Kill the CLI after 3 stripes are recorded, run the same command again.
    let size = 12 * STRIPE as usize + 12_345;
    let data = random_bytes(size, 1);
    let file = write_file(work.path(), "big.bin", &data);
    let received_before = put_bytes_received(&fleet).await;
    let id = put_and_kill(&fleet, &state, "big", &file, 3).await;
    let first_run = put_bytes_received(&fleet).await - received_before;
    let received_before = put_bytes_received(&fleet).await;
    let out = run_potluck(
        &endpoints,
        &["put", &format!("{B}/big"), file.to_str().expect("utf-8")],
        &envs,
        None,
    )
    .await;
    assert_success(&out);
    let stdout = text(&out.stdout);
    let sent = number_after(&stdout, "sent ");
    let skippable = number_after(&stdout, "resumed after ");
    assert_eq!(sent + skippable, size as u64, "{stdout}");
    assert!(
        skippable >= 3 * STRIPE,
        "at least the 3 recorded stripes were skipped: {stdout}"
    );
    assert!(sent < size as u64, "the second run sent less: {stdout}");
    // What the gateways saw, not only what the CLI says it sent.
    let second_run = put_bytes_received(&fleet).await - received_before;
    assert_eq!(
        second_run, sent as f64,
        "the gateways received what the CLI reports sending: {stdout}"
    );
    let resent = first_run - skippable as f64;
    println!(
        "resume: first run delivered {first_run} bytes to the gateway, {skippable} were committed; \
         re-sent {resent} bytes = {:.2} stripes of {STRIPE} (in-flight window {WINDOW} stripes)",
        resent / STRIPE as f64
    );
    assert!(
        resent <= (WINDOW * STRIPE) as f64,
        "re-sent {resent} bytes, more than a stripe per in-flight slot ({WINDOW} slots)"
    );
    let mut c = object_client(&fleet.endpoint(4)).await;
    let back = get(&mut c, B, "big").await.expect("get");
    assert!(back == data, "the resumed object reads back identical");
    // The record is gone once the object is committed, on every member.
    wait_until(LIMIT, || async {
        committed(&fleet, "big", &id).await.is_none()
    })
    .await;
    assert!(
        upload_id(&state).is_none(),
        "the CLI removed its state file"
    );

    // 2. Another upload interrupted, then its file changes: the CLI refuses to resume.
    let other = random_bytes(8 * STRIPE as usize, 2);
    let changed_file = write_file(work.path(), "other.bin", &other);
    let other_id = put_and_kill(&fleet, &state, "other", &changed_file, 2).await;
    let mut altered = other.clone();
    altered[100] ^= 0xff;
    std::fs::write(&changed_file, &altered).expect("alter the file");
    let args = [
        "put",
        &format!("{B}/other"),
        changed_file.to_str().expect("utf-8"),
    ];
    let out = run_potluck(&endpoints, &args, &envs, None).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--new-upload"),
        "{}",
        text(&out.stderr)
    );
    // A different size, too.
    let mut longer = other.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(&changed_file, &longer).expect("grow the file");
    let out = run_potluck(&endpoints, &args, &envs, None).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bytes"), "{}", text(&out.stderr));

    // 3. A client that skips stripes it does not have is refused by the gateway itself.
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::PutObjectRequest {
        body: Some(pb::put_object_request::Body::Header(pb::PutObjectHeader {
            bucket: B.into(),
            key: "other".into(),
            pool: String::new(),
            size: Some(other.len() as u64),
            upload: Some(pb::UploadResume {
                upload_id: Bytes::copy_from_slice(&other_id),
                skip_stripes: 2,
                skipped_digest: Bytes::from_static(&[0u8; 32]),
            }),
        })),
    })
    .await
    .expect("header");
    drop(tx);
    let mut c = object_client(&fleet.endpoint(2)).await;
    let refused = c
        .put_object(ReceiverStream::new(rx))
        .await
        .expect_err("a resume with other stripes is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("new upload"),
        "{}",
        refused.message()
    );

    // The agents keep serving.
    let small = random_bytes(300_000, 3);
    put(&mut c, B, "small", &small)
        .await
        .expect("put after refusals");
    assert!(get(&mut c, B, "small").await.expect("get") == small);

    // 4. The abandoned upload of "other": its stripes are collected after the grace, and its
    // records swept, so the fleet holds exactly what "big" and "small" need.
    let want = needed(&[size, small.len()]);
    wait_until(LIMIT, || async { held(&fleet).await == want }).await;
    wait_until(LIMIT, || async {
        (0..fleet.len()).all(|i| files_under(&fleet.data_dir(i).join("uploads")).is_empty())
    })
    .await;
    assert!(
        committed(&fleet, "other", &other_id).await.is_none(),
        "the abandoned upload cannot be resumed any more"
    );
    let mut c = object_client(&fleet.endpoint(0)).await;
    assert!(get(&mut c, B, "big").await.expect("get") == data);
    fleet.fleet.shutdown().await.expect("shutdown");
}
