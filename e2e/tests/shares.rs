//! Share links against a real API server, the operator requiring keys and real agents in
//! Kubernetes mode serving HTTP: a link reads its object and nothing else (not a sibling, not
//! another bucket, no writes); a prefix link reads and lists within its prefix only; the real
//! `curl` gets exact bytes for `Range:` requests and 416 beyond the end; tampered, malformed,
//! foreign-fleet, expired and revoked tokens are refused with a message that says which; an
//! encrypted object shared with its key in the link's fragment decrypts through
//! `potluck get LINK` while no member's disk and no log holds the plaintext or the key; and the
//! agents keep serving throughout.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use potluck_api::bucket::{REASON_PUBLISHED, SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY};
use potluck_api::condition::{self, READY};
use potluck_api::{Bucket, BucketSpec, Share, StoragePoolSpec};
use potluck_cli::client::{Client, ClientError, ClientOptions, Credentials};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{
    cli_options, files_under, fleet_config, random_bytes, run_potluck, text, wait_until,
};
use potluck_format::share::{self, Grant};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path, cp: &ControlPlane) -> DevCluster {
    let mut fleet = fleet_config(dir.join("fleet"));
    fleet.agents = 3;
    fleet.k = 2;
    fleet.m = 1;
    fleet.extra_agent_args = vec!["--http-listen=127.0.0.1:0".into()];
    let mut spec = StoragePoolSpec::with_defaults(2, 1);
    spec.pg_count = 8;
    spec.chunk_size = 64 * 1024;
    // Short, so the operator passes every second (and publishes revocations that fast).
    spec.down_after = "2s".into();
    spec.out_after = "10s".into();
    let mut cfg = DevClusterConfig::new(fleet, &cp.kubeconfig);
    cfg.lease_duration_secs = 1;
    cfg.pool = Some(("default".into(), spec));
    cfg.stage_timeout = LIMIT;
    cfg.require_auth = true;
    match DevCluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => panic!(
            "dev cluster did not start: {e}\n{}",
            cp.log_tail("kube-apiserver", 20)
        ),
    }
}

/// A Bucket in its own namespace, once Published; returns its (access key id, secret).
async fn bucket(cluster: &DevCluster, ns: &str, name: &str) -> (String, String) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let apply = PatchParams::apply("e2e").force();
    Api::<Namespace>::all(cluster.client())
        .patch(ns, &apply, &Patch::Apply(&namespace))
        .await
        .expect("namespace");
    let b = Bucket::new(
        name,
        BucketSpec {
            pool: "default".into(),
            bucket_name: None,
            secret_name: None,
        },
    );
    let buckets = Api::<Bucket>::namespaced(cluster.client(), ns);
    buckets
        .patch(name, &apply, &Patch::Apply(&b))
        .await
        .expect("Bucket");
    let secrets = Api::<Secret>::namespaced(cluster.client(), ns);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let published = buckets.get(name).await.ok().and_then(|b| {
            let s = b.status?;
            condition::find_condition(&s.conditions, READY)
                .filter(|c| c.reason == REASON_PUBLISHED)
                .map(|_| ())
        });
        let secret = secrets
            .get_opt(&format!("{name}-credentials"))
            .await
            .ok()
            .flatten();
        if let (Some(()), Some(secret)) = (published, secret) {
            let data = secret.data.expect("Secret data");
            let field = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
            return (field(SECRET_ACCESS_KEY_ID), field(SECRET_SECRET_ACCESS_KEY));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bucket {ns}/{name} was not published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(cluster: &DevCluster, credentials: Credentials) -> Client {
    Client::connect_with(
        &cluster.fleet.endpoints(),
        ClientOptions {
            credentials: Some(credentials),
            ..cli_options()
        },
    )
    .await
    .expect("connect")
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

/// The real curl: (HTTP status, response headers, body).
async fn curl(url: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .await
        .expect("run curl (is it installed?)");
    assert!(out.status.success(), "curl {url}: {}", text(&out.stderr));
    let code = text(&out.stdout).trim().parse().expect("status code");
    (
        code,
        std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> Option<Code> {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// The token with one payload character changed: still decodes, no longer verifies.
fn tampered(token: &str) -> String {
    let (head, mac) = token.rsplit_once('.').expect("token");
    let mut payload = URL_SAFE_NO_PAD
        .decode(head.strip_prefix(share::PREFIX).expect("prefix"))
        .expect("payload");
    // The last byte of the object key.
    let last = payload.len() - 1;
    payload[last] ^= 1;
    format!("{}{}.{mac}", share::PREFIX, URL_SAFE_NO_PAD.encode(payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn share_links_read_what_they_grant_and_nothing_else() {
    scenario().await;
}

/// The whole test, apart so that it can also be driven outside the test harness.
pub async fn scenario() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mut cluster = start(dir.path(), &cp).await;
    let started = std::time::Instant::now();
    let endpoints = cluster.fleet.endpoints().join(",");
    let (a_id, a_secret) = bucket(&cluster, "team-a", "alpha").await;
    let (b_id, b_secret) = bucket(&cluster, "team-b", "beta").await;
    let a_env = [
        ("POTLUCK_ACCESS_KEY", a_id.as_str()),
        ("POTLUCK_SECRET_KEY", a_secret.as_str()),
    ];
    let a = client(&cluster, Credentials::new(&a_id, &a_secret).expect("key")).await;
    let b = client(&cluster, Credentials::new(&b_id, &b_secret).expect("key")).await;

    // Several stripes (2 x 64 KiB of data each), plus a sibling and another bucket's object.
    let report = random_bytes(300_000, 1);
    a.put_bytes("alpha", "docs/report.bin", report.clone())
        .await
        .expect("put");
    let sibling = random_bytes(10_000, 2);
    a.put_bytes("alpha", "docs/sibling.bin", sibling.clone())
        .await
        .expect("put");
    a.put_bytes("alpha", "private/diary.txt", random_bytes(500, 3))
        .await
        .expect("put");
    b.put_bytes("beta", "docs/report.bin", random_bytes(700, 4))
        .await
        .expect("put");

    // Making a link needs the bucket's key: none, or another bucket's, is refused.
    let out = run_potluck(&endpoints, &["share", "alpha/docs/report.bin"], &[], None).await;
    assert_exit(&out, 6, "carried none");
    let b_env = [
        ("POTLUCK_ACCESS_KEY", b_id.as_str()),
        ("POTLUCK_SECRET_KEY", b_secret.as_str()),
    ];
    let out = run_potluck(
        &endpoints,
        &["share", "alpha/docs/report.bin"],
        &b_env,
        None,
    )
    .await;
    assert_exit(&out, 6, "does not open bucket \"alpha\"");

    // A one-object link, made by the CLI, read by the CLI without any account.
    let out = run_potluck(
        &endpoints,
        &["share", "alpha/docs/report.bin", "--expires", "1h"],
        &a_env,
        None,
    )
    .await;
    assert_exit(&out, 0, "revoke: potluck share revoke");
    let link = text(&out.stdout).trim().to_owned();
    assert!(link.starts_with("http://127.0.0.1:"), "{link}");
    let token = share::token_of_link(&link).to_owned();
    let grant_id = share::parse(&token).expect("token").grant().id_hex();
    let copy = dir.path().join("report.copy");
    let out = run_potluck(
        &endpoints,
        &["get", &link, copy.to_str().expect("utf-8")],
        &[],
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    assert_eq!(std::fs::read(&copy).expect("copy"), report);
    // The grant is a Share resource in the agents' namespace.
    let shares = Api::<Share>::namespaced(cluster.client(), "potluck-system");
    let recorded = shares
        .get(&format!("share-{grant_id}"))
        .await
        .expect("Share recorded");
    assert_eq!(
        (recorded.spec.bucket.as_str(), recorded.spec.path.as_str()),
        ("alpha", "docs/report.bin")
    );

    // The token opens that object, for get and stat, and nothing else.
    let holder = client(&cluster, Credentials::share_link(&token).expect("token")).await;
    let (_, got) = holder
        .get_bytes("alpha", "docs/report.bin", None)
        .await
        .expect("get by link");
    assert_eq!(got, report);
    assert_eq!(
        holder
            .stat("alpha", "docs/report.bin")
            .await
            .expect("stat")
            .size,
        300_000
    );
    match holder.get_bytes("alpha", "docs/sibling.bin", None).await {
        Err(ClientError::PermissionDenied(m)) => {
            assert!(m.contains("opens only object \"docs/report.bin\""), "{m}")
        }
        other => panic!("a link read a sibling: {other:?}"),
    }
    assert_eq!(
        code(holder.get_bytes("beta", "docs/report.bin", None).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(holder.list("alpha", "docs/", "", 0).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            holder
                .put_bytes("alpha", "docs/report.bin", vec![1u8; 10])
                .await
        ),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(holder.delete("alpha", "docs/report.bin").await),
        Some(Code::PermissionDenied)
    );

    // HTTP with the real curl: whole, ranged, suffix, HEAD, and beyond the end.
    let (status, headers, body) = curl(&link, &[]).await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(header(&headers, "content-length"), Some("300000"));
    assert_eq!(body, report);
    let (status, headers, body) = curl(&link, &["-H", "Range: bytes=1000-70999"]).await;
    assert_eq!(status, 206, "{headers}");
    assert_eq!(header(&headers, "content-length"), Some("70000"));
    assert_eq!(
        header(&headers, "content-range"),
        Some("bytes 1000-70999/300000")
    );
    assert_eq!(body, &report[1000..71_000]);
    let (status, _, body) = curl(&link, &["-H", "Range: bytes=-100"]).await;
    assert_eq!(status, 206);
    assert_eq!(body, &report[299_900..]);
    // HEAD: the size without the bytes (curl -I writes the headers where the body would go).
    let (status, headers, _) = curl(&link, &["-I"]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), Some("300000"));
    let (status, headers, body) = curl(&link, &["-H", "Range: bytes=300000-"]).await;
    assert_eq!(status, 416, "{headers}");
    assert_eq!(header(&headers, "content-range"), Some("bytes */300000"));
    assert!(text(&body).contains("300000 bytes long"), "{}", text(&body));

    // Bad tokens: each refused with what is wrong, over HTTP and gRPC.
    let base = link.split("/s/").next().expect("base").to_owned();
    let bad = tampered(&token);
    let (status, _, body) = curl(&format!("{base}/s/{bad}"), &[]).await;
    assert_eq!(status, 403);
    assert!(
        text(&body).contains("signature does not match"),
        "{}",
        text(&body)
    );
    let out = run_potluck(
        &endpoints,
        &["get", &format!("{base}/s/{bad}"), "-"],
        &[],
        None,
    )
    .await;
    assert_exit(&out, 6, "signature does not match");
    let (status, _, body) = curl(&format!("{base}/s/pl1.not-a-token"), &[]).await;
    assert_eq!(status, 401);
    assert!(text(&body).contains("not a share token"), "{}", text(&body));
    // Another fleet: the same key id with another secret, and a key id unknown here.
    let unverified = share::parse(&token).expect("token");
    let foreign = unverified
        .grant()
        .sign(blake3::hash(b"another fleet's secret").as_bytes())
        .expect("sign");
    let (status, _, body) = curl(&format!("{base}/s/{foreign}"), &[]).await;
    assert_eq!(status, 403);
    assert!(
        text(&body).contains("signed by another fleet"),
        "{}",
        text(&body)
    );
    let stranger = Grant {
        access_key_id: "pk-from-elsewhere".into(),
        ..unverified.grant().clone()
    }
    .sign(&[9; 32])
    .expect("sign");
    let (status, _, body) = curl(&format!("{base}/s/{stranger}"), &[]).await;
    assert_eq!(status, 403);
    assert!(text(&body).contains("another fleet"), "{}", text(&body));

    // A prefix link: reads and lists under its prefix only.
    let out = run_potluck(
        &endpoints,
        &["share", "alpha/docs/", "--prefix", "--expires", "1h"],
        &a_env,
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    let folder = text(&out.stdout).trim().to_owned();
    let out = run_potluck(
        &endpoints,
        &["get", &format!("{folder}/docs/sibling.bin"), "-"],
        &[],
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    assert_eq!(out.stdout, sibling);
    let out = run_potluck(&endpoints, &["get", &folder, "-"], &[], None).await;
    assert_exit(&out, 2, "name one: LINK/KEY");
    let folder_holder = client(
        &cluster,
        Credentials::share_link(share::token_of_link(&folder)).expect("token"),
    )
    .await;
    let listed = folder_holder
        .list_all("alpha", "docs/")
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(
        code(folder_holder.list("alpha", "", "", 0).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            folder_holder
                .get_bytes("alpha", "private/diary.txt", None)
                .await
        ),
        Some(Code::PermissionDenied)
    );
    let (status, _, body) = curl(&format!("{folder}/docs/sibling.bin"), &[]).await;
    assert_eq!((status, body), (200, sibling.clone()));
    let (status, _, _) = curl(&format!("{folder}/private/diary.txt"), &[]).await;
    assert_eq!(status, 403);

    // Revocation: listed, revoked by id, refused everywhere once the map carries it.
    let out = run_potluck(&endpoints, &["share", "ls", "alpha"], &a_env, None).await;
    assert_exit(&out, 0, "");
    let listing = text(&out.stdout);
    assert!(
        listing.contains(&grant_id) && listing.contains("active"),
        "{listing}"
    );
    let out = run_potluck(&endpoints, &["share", "revoke", &grant_id], &b_env, None).await;
    assert_exit(&out, 6, "");
    let out = run_potluck(&endpoints, &["share", "revoke", &grant_id], &a_env, None).await;
    assert_exit(&out, 0, "");
    for i in 0..cluster.fleet.len() {
        // Every agent has the map with the revocation, not only the one that answered.
        let one = Client::connect_with(
            &[cluster.fleet.endpoint(i)],
            ClientOptions {
                credentials: Some(Credentials::share_link(&token).expect("token")),
                ..cli_options()
            },
        )
        .await
        .expect("connect");
        wait_until(LIMIT, || async {
            matches!(
                one.stat("alpha", "docs/report.bin").await,
                Err(ClientError::PermissionDenied(m)) if m.contains("was revoked")
            )
        })
        .await;
    }
    let out = run_potluck(&endpoints, &["get", &link, "-"], &[], None).await;
    assert_exit(&out, 6, "was revoked");
    let (status, _, body) = curl(&link, &[]).await;
    assert_eq!(status, 403);
    assert!(text(&body).contains("was revoked"), "{}", text(&body));
    let out = run_potluck(&endpoints, &["share", "ls", "alpha"], &a_env, None).await;
    assert!(
        text(&out.stdout).contains("revoked"),
        "{}",
        text(&out.stdout)
    );
    let out = run_potluck(&endpoints, &["share", "revoke", "nothex"], &a_env, None).await;
    assert_exit(&out, 5, "not 32 hex digits");
    // The folder link is another grant: still good.
    let (status, _, _) = curl(&format!("{folder}/docs/sibling.bin"), &[]).await;
    assert_eq!(status, 200);

    // Expiry: a one-second link works, then says it expired, and when.
    let out = run_potluck(
        &endpoints,
        &["share", "alpha/docs/sibling.bin", "--expires", "1s"],
        &a_env,
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    let brief = text(&out.stdout).trim().to_owned();
    let brief_holder = client(
        &cluster,
        Credentials::share_link(share::token_of_link(&brief)).expect("token"),
    )
    .await;
    wait_until(LIMIT, || async {
        matches!(
            brief_holder.stat("alpha", "docs/sibling.bin").await,
            Err(ClientError::PermissionDenied(m)) if m.contains("expired at unix time")
        )
    })
    .await;
    let (status, _, body) = curl(&brief, &[]).await;
    assert_eq!(status, 403);
    assert!(text(&body).contains("expired"), "{}", text(&body));
    let out = run_potluck(&endpoints, &["get", &brief, "-"], &[], None).await;
    assert_exit(&out, 6, "expired");

    // An encrypted object: the key travels in the fragment, never to an agent.
    let key_file = dir.path().join("share.key");
    let out = run_potluck(
        &endpoints,
        &["key", "new", key_file.to_str().expect("utf-8")],
        &[],
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    let key_text = std::fs::read_to_string(&key_file)
        .expect("key")
        .trim()
        .to_owned();
    let key_bytes = URL_SAFE_NO_PAD.decode(&key_text).expect("key bytes");
    let marker: Vec<u8> = b"PLAINTEXT-MARKER-0123456789-share-links-never-show-this-to-members"
        .iter()
        .copied()
        .cycle()
        .take(200_000)
        .collect();
    let out = run_potluck(
        &endpoints,
        &[
            "put",
            "--encrypt-key",
            key_file.to_str().expect("utf-8"),
            "alpha/sealed/plan.txt",
        ],
        &a_env,
        Some(marker.as_slice()),
    )
    .await;
    assert_exit(&out, 0, "");
    let out = run_potluck(
        &endpoints,
        &[
            "share",
            "alpha/sealed/plan.txt",
            "--encrypt-key",
            key_file.to_str().expect("utf-8"),
        ],
        &a_env,
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    let sealed_link = text(&out.stdout).trim().to_owned();
    assert!(
        sealed_link.ends_with(&format!("#k={key_text}")),
        "{sealed_link}"
    );
    let plain = dir.path().join("plan.txt");
    let out = run_potluck(
        &endpoints,
        &["get", &sealed_link, plain.to_str().expect("utf-8")],
        &[],
        None,
    )
    .await;
    assert_exit(&out, 0, "");
    assert!(text(&out.stdout).contains("decrypted and verified"));
    assert_eq!(std::fs::read(&plain).expect("plain"), marker);
    // Without the fragment the link reads only ciphertext, which the CLI will not print.
    let bare = sealed_link.split('#').next().expect("link");
    let out = run_potluck(&endpoints, &["get", bare, "-"], &[], None).await;
    assert_exit(&out, 5, "");
    let (status, _, body) = curl(&sealed_link, &[]).await;
    assert_eq!(status, 200);
    assert!(!contains(&body, &marker[..64]), "HTTP served plaintext");
    // Nothing on the members' disks or in any log holds the plaintext or the key.
    let mut files = Vec::new();
    for i in 0..cluster.fleet.len() {
        files.extend(files_under(cluster.fleet.data_dir(i)));
        files.push(cluster.fleet.log_path(i).to_owned());
    }
    files.push(cluster.operator_log());
    let needles: [&[u8]; 3] = [&marker[..64], key_text.as_bytes(), &key_bytes];
    let mut read = 0;
    for file in &files {
        let Ok(data) = std::fs::read(file) else {
            continue;
        };
        read += 1;
        for needle in needles {
            assert!(
                !contains(&data, needle),
                "{} holds a secret",
                file.display()
            );
        }
    }
    assert!(read > 3, "read only {read} files");

    // After all of that, every agent still serves.
    for i in 0..cluster.fleet.len() {
        assert!(cluster.fleet.is_running(i), "agent {i} died");
        let one = Client::connect_with(
            &[cluster.fleet.endpoint(i)],
            ClientOptions {
                credentials: Some(Credentials::new(&a_id, &a_secret).expect("key")),
                ..cli_options()
            },
        )
        .await
        .expect("connect");
        let (_, back) = one
            .get_bytes("alpha", "docs/report.bin", None)
            .await
            .expect("get");
        assert_eq!(back, report);
    }
    eprintln!("share links e2e: {:?}", started.elapsed());
    cluster.shutdown().await.expect("shutdown");
}
