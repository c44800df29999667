//! Client-side encryption through the real `potluck` binary against a real
//! fleet: the members' disks never hold the plaintext of an encrypted put
//! (checked against an unencrypted put whose plaintext they do hold), the
//! key round-trips the content, and a wrong key, a missing key, an altered,
//! truncated or extended object all fail with exit 5 and leave no file.

use std::path::Path;
use std::process::Output;

use potluck_cli::crypt::{sealed_len, DEFAULT_CHUNK_SIZE, HEADER_LEN, MAGIC, TAG_LEN};
use potluck_e2e::*;

const B: &str = "encryption";

/// Runs `potluck` against `endpoints` with `envs` set, feeding `stdin` if given.
async fn potluck(
    endpoints: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Output {
    run_potluck(endpoints, args, envs, stdin).await
}

fn assert_exit(out: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout[..out.stdout.len().min(400)]),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains(stderr_has),
        "stderr lacks {stderr_has:?}: {}",
        text(&out.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `size` bytes of `marker` repeated: every 1 MiB data shard of a 4+2
/// stripe then holds thousands of whole copies of it.
fn pattern(marker: &[u8; 64], size: usize) -> Vec<u8> {
    marker.iter().copied().cycle().take(size).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    haystack
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == first)
        .any(|(i, _)| haystack[i..].starts_with(needle))
}

/// Which of `needles` occur anywhere in the bytes of any file in the agents'
/// data directories (SSTs, blob files, WAL, manifests: everything).
fn on_member_disks(fleet: &TestFleet, needles: &[&[u8]]) -> (Vec<bool>, usize, u64) {
    let mut files = Vec::new();
    for i in 0..fleet.len() {
        files.extend(files_under(fleet.data_dir(i)));
    }
    let mut found = vec![false; needles.len()];
    let mut bytes = 0u64;
    for file in &files {
        // A file may vanish under a compaction between listing and reading.
        let Ok(data) = std::fs::read(file) else {
            continue;
        };
        bytes += data.len() as u64;
        for (hit, needle) in found.iter_mut().zip(needles) {
            *hit = *hit || contains(&data, needle);
        }
    }
    (found, files.len(), bytes)
}

fn no_partial_files(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_objects_reach_members_as_ciphertext_only_and_fail_closed() {
    let fleet = start_fleet(&[]).await;
    let endpoints = fleet.endpoints().join(",");
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let run = |args: Vec<String>| {
        let endpoints = endpoints.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            potluck(&endpoints, &args, &[], None).await
        }
    };
    let obj = |key: &str| format!("{B}/{key}");
    let s = |p: &Path| path(p).to_string();

    // Keys: a new file readable by its owner only, never overwritten.
    let key = work.join("k1.key");
    let out = run(vec!["key".into(), "new".into(), s(&key)]).await;
    assert_success(&out);
    let key_text = std::fs::read_to_string(&key).expect("key file");
    assert_eq!(key_text.len(), 44, "{key_text:?}");
    assert!(key_text.ends_with('\n'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let out = run(vec!["key".into(), "new".into(), s(&key)]).await;
    assert_exit(&out, 1, "already exists");
    assert_eq!(std::fs::read_to_string(&key).expect("key"), key_text);
    let other = work.join("k2.key");
    let out = run(vec!["key".into(), "new".into()]).await;
    assert_success(&out);
    assert_eq!(out.stdout.len(), 44);
    std::fs::write(&other, &out.stdout).expect("write k2");
    assert_ne!(std::fs::read(&other).expect("k2"), key_text.as_bytes());

    // The control: plaintext put as is. 4+2 data shards hold it verbatim and
    // the shard store does not compress blobs, so the members' disks must
    // show its marker, or the scan below proves nothing.
    let control_marker: &[u8; 64] =
        b"<potluck e2e CONTROL marker: stored in the clear on purpose 001>";
    let secret_marker: &[u8; 64] =
        b"<potluck e2e SECRET marker: must never reach a member's disk 42>";
    let control = pattern(control_marker, 6 << 20);
    let control_file = work.join("control.bin");
    std::fs::write(&control_file, &control).expect("write");
    let out = run(vec!["put".into(), obj("control"), s(&control_file)]).await;
    assert_success(&out);

    // The secret: same shape, sealed; the size is not a multiple of the
    // 64 KiB encryption chunk, so the last chunk is a short one.
    let secret = pattern(secret_marker, (6 << 20) + 1000);
    let secret_file = work.join("secret.bin");
    std::fs::write(&secret_file, &secret).expect("write");
    let put_args = |name: &str, file: &Path, key: &Path| {
        vec![
            "put".into(),
            obj(name),
            s(file),
            "--encrypt-key".into(),
            s(key),
        ]
    };
    let out = run(put_args("secret", &secret_file, &key)).await;
    assert_success(&out);
    let stored = sealed_len(secret.len() as u64, DEFAULT_CHUNK_SIZE);
    assert!(
        text(&out.stdout).contains(&format!(
            "({} bytes), encrypted ({stored} bytes stored)",
            secret.len()
        )),
        "{}",
        text(&out.stdout)
    );

    let (found, files, bytes) = on_member_disks(&fleet, &[control_marker, secret_marker]);
    assert!(
        found[0],
        "the control's plaintext is not on the members' disks ({files} files, {bytes} bytes scanned): the scan cannot see shards"
    );
    assert!(
        !found[1],
        "the encrypted object's plaintext is on a member's disk ({files} files, {bytes} bytes scanned)"
    );
    // Not even a 16-byte piece of it.
    let (found, _, _) = on_member_disks(&fleet, &[&secret_marker[24..40]]);
    assert!(
        !found[0],
        "a piece of the secret marker is on a member's disk"
    );

    // Read back with the key: identical, to a file and to stdout.
    let back = work.join("secret.back");
    let get_args = |name: &str, dst: &str, key: &Path| {
        vec![
            "get".into(),
            obj(name),
            dst.to_string(),
            "--encrypt-key".into(),
            s(key),
        ]
    };
    let out = run(get_args("secret", &s(&back), &key)).await;
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("decrypted and verified"),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::read(&back).expect("read back") == secret);
    let out = run(get_args("secret", "-", &key)).await;
    assert_success(&out);
    assert!(out.stdout == secret, "stdout differs");

    // Plaintext ranges: across chunk boundaries, one byte, and to the end.
    for (range, want) in [
        ("1000-200000", &secret[1000..200_001]),
        ("65536-65536", &secret[65536..65537]),
        ("6291000-", &secret[6_291_000..]),
        ("0-9", &secret[..10]),
    ] {
        let mut args = get_args("secret", "-", &key);
        args.extend(["--range".into(), range.into()]);
        let out = run(args).await;
        assert_success(&out);
        assert!(out.stdout == want, "range {range}");
    }
    let mut args = get_args("secret", "-", &key);
    args.extend(["--range".into(), format!("{}-", secret.len() + 1)]);
    assert_exit(&run(args).await, 5, "past the end");

    // The key from the environment, and a put from a pipe (size unknown).
    let key_env = [("POTLUCK_KEY_FILE", path(&key))];
    let out = potluck(
        &endpoints,
        &["put", &obj("piped")],
        &key_env,
        Some(b"from a pipe"),
    )
    .await;
    assert_success(&out);
    let out = potluck(&endpoints, &["get", &obj("piped")], &key_env, None).await;
    assert_success(&out);
    assert_eq!(text(&out.stdout), "from a pipe");

    // stat: the stored size is the ciphertext's, and it says so.
    let out = run(vec!["stat".into(), obj("secret")]).await;
    assert_success(&out);
    let stat = text(&out.stdout);
    assert!(
        stat.contains(&format!("({stored} bytes)")),
        "stored size: {stat}"
    );
    assert!(
        stat.contains(&format!(
            "encrypted:  yes, XChaCha20-Poly1305 in 64 KiB chunks; plaintext 6 MiB ({} bytes)",
            secret.len()
        )),
        "{stat}"
    );
    let out = run(vec!["stat".into(), obj("control")]).await;
    assert!(text(&out.stdout).contains("encrypted:  no"));

    // Without a key: refused, nothing printed or left behind; --raw is the
    // ciphertext as stored.
    let out = run(vec!["get".into(), obj("secret")]).await;
    assert_exit(&out, 5, "--encrypt-key");
    assert!(out.stdout.is_empty(), "ciphertext was printed");
    let dst = work.join("nokey.bin");
    let out = run(vec!["get".into(), obj("secret"), s(&dst)]).await;
    assert_exit(&out, 5, "a key is needed");
    assert!(!dst.exists());
    let out = run(vec![
        "get".into(),
        obj("secret"),
        "--range".into(),
        "100-200".into(),
    ])
    .await;
    assert_exit(&out, 5, "a key is needed");
    let raw_file = work.join("secret.sealed");
    let out = run(vec![
        "get".into(),
        obj("secret"),
        s(&raw_file),
        "--raw".into(),
    ])
    .await;
    assert_success(&out);
    let raw = std::fs::read(&raw_file).expect("raw");
    assert_eq!(raw.len() as u64, stored);
    assert!(raw.starts_with(&MAGIC));
    assert!(!contains(&raw, &secret_marker[24..40]));

    // The wrong key: exit 5, named as such, and no file.
    let dst = work.join("wrong.bin");
    let out = run(get_args("secret", &s(&dst), &other)).await;
    assert_exit(&out, 5, "encrypted with another key");
    assert!(!dst.exists());
    no_partial_files(work);
    // A key with an unencrypted object: refused, not passed off as verified.
    let out = run(get_args("control", "-", &key)).await;
    assert_exit(&out, 5, "not encrypted");

    // Altered ciphertext, stored as is with a plain put: one flipped byte in
    // the middle fails on its chunk, and nothing is left behind.
    let mut flipped = raw.clone();
    let at = 3 << 20;
    flipped[at] ^= 0x01;
    let bad_file = work.join("bad.sealed");
    let tampered = |name: &'static str, bytes: Vec<u8>| {
        let bad_file = bad_file.clone();
        let endpoints = endpoints.clone();
        async move {
            std::fs::write(&bad_file, bytes).expect("write");
            let out = potluck(&endpoints, &["put", &obj(name), path(&bad_file)], &[], None).await;
            assert_success(&out);
        }
    };
    tampered("flipped", flipped).await;
    let dst = work.join("flipped.bin");
    let out = run(get_args("flipped", &s(&dst), &key)).await;
    assert_exit(&out, 5, "failed authentication");
    assert!(
        text(&out.stderr).contains("altered"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dst.exists());
    no_partial_files(work);
    // To stdout only the chunks before the bad one come out, all verified.
    let out = run(get_args("flipped", "-", &key)).await;
    assert_exit(&out, 5, "failed authentication");
    let bad_chunk = (at - HEADER_LEN) / (DEFAULT_CHUNK_SIZE as usize + TAG_LEN);
    assert_eq!(out.stdout.len(), bad_chunk * DEFAULT_CHUNK_SIZE as usize);
    assert!(out.stdout == secret[..out.stdout.len()]);
    // A flipped header byte reads as the wrong key (the key check covers it).
    let mut header_flip = raw.clone();
    header_flip[20] ^= 0x80;
    tampered("header", header_flip).await;
    assert_exit(
        &run(get_args("header", "-", &key)).await,
        5,
        "header was altered",
    );

    // Cut at a chunk boundary (the short last chunk dropped), and extended.
    let last_chunk = (raw.len() - HEADER_LEN) % (DEFAULT_CHUNK_SIZE as usize + TAG_LEN);
    tampered("cut", raw[..raw.len() - last_chunk].to_vec()).await;
    let dst = work.join("cut.bin");
    assert_exit(&run(get_args("cut", &s(&dst), &key)).await, 5, "cut short");
    assert!(!dst.exists());
    let mut longer = raw.clone();
    longer.extend_from_slice(&[0u8; 100]);
    tampered("extended", longer).await;
    assert_exit(
        &run(get_args("extended", "-", &key)).await,
        5,
        "failed authentication",
    );
    // A range that runs to the end checks the last chunk too.
    let mut args = get_args("cut", "-", &key);
    args.extend(["--range".into(), "6000000-".into()]);
    assert_exit(&run(args).await, 5, "truncated or extended");
}
