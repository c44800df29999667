//! Buckets and their keys on a real API server, with the operator requiring authentication
//! and real agents in Kubernetes mode: the operator writes each Bucket's credentials Secret
//! and publishes its key; a key opens its own bucket only; missing or wrong credentials are
//! UNAUTHENTICATED; a Bucket naming a missing pool or a name another namespace holds is not
//! Ready; and deleting a Bucket takes its key away.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use potluck_api::bucket::{
    REASON_NAME_TAKEN, REASON_POOL_NOT_FOUND, REASON_PUBLISHED, SECRET_ACCESS_KEY_ID,
    SECRET_BUCKET, SECRET_POOL, SECRET_SECRET_ACCESS_KEY,
};
use potluck_api::condition::{self, READY};
use potluck_api::{Bucket, BucketSpec, StoragePoolSpec};
use potluck_cli::client::{Client, ClientError, ClientOptions, Credentials};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_e2e::control_plane::{table_row, ControlPlane};
use potluck_e2e::{find_potluck_bin, object_client, random_bytes, wait_until};
use potluck_proto::v1::{GetClusterMapRequest, ListObjectsRequest};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path, cp: &ControlPlane) -> DevCluster {
    let mut fleet = potluck_e2e::fleet_config(dir.join("fleet"));
    fleet.agents = 3;
    fleet.k = 2;
    fleet.m = 1;
    let mut spec = StoragePoolSpec::with_defaults(2, 1);
    spec.pg_count = 8;
    spec.chunk_size = 64 * 1024;
    // Short, so the operator passes every second.
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

async fn create_namespace(cluster: &DevCluster, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(cluster.client())
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&ns))
        .await
        .expect("create namespace");
}

async fn create_bucket(cluster: &DevCluster, ns: &str, name: &str, spec: BucketSpec) {
    let bucket = Bucket::new(name, spec);
    Api::<Bucket>::namespaced(cluster.client(), ns)
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&bucket),
        )
        .await
        .unwrap_or_else(|e| panic!("create Bucket {ns}/{name}: {e}"));
}

fn spec(pool: &str, bucket_name: Option<&str>) -> BucketSpec {
    BucketSpec {
        pool: pool.into(),
        bucket_name: bucket_name.map(str::to_owned),
        secret_name: None,
    }
}

/// Waits until the Bucket's Ready condition has `reason`, and returns the Bucket.
async fn wait_ready_reason(cluster: &DevCluster, ns: &str, name: &str, reason: &str) -> Bucket {
    let api = Api::<Bucket>::namespaced(cluster.client(), ns);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let bucket = api.get(name).await.expect("get Bucket");
        let ready = bucket
            .status
            .as_ref()
            .and_then(|s| condition::find_condition(&s.conditions, READY).cloned());
        if ready.as_ref().is_some_and(|c| c.reason == reason) {
            return bucket;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bucket {ns}/{name} never reached Ready reason {reason}; last: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Secret's (accessKeyId, secretAccessKey), once the operator has written it.
async fn wait_secret(cluster: &DevCluster, ns: &str, name: &str) -> (String, String, Secret) {
    let api = Api::<Secret>::namespaced(cluster.client(), ns);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(secret) = api.get_opt(name).await.expect("get Secret") {
            let field = |k: &str| {
                let data = secret.data.as_ref().expect("Secret data");
                String::from_utf8(data[k].0.clone()).expect("utf-8")
            };
            return (
                field(SECRET_ACCESS_KEY_ID),
                field(SECRET_SECRET_ACCESS_KEY),
                secret,
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Secret {ns}/{name} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(cluster: &DevCluster, credentials: Option<Credentials>) -> Client {
    Client::connect_with(
        &cluster.fleet.endpoints(),
        ClientOptions {
            credentials,
            ..potluck_e2e::cli_options()
        },
    )
    .await
    .expect("connect")
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> Option<Code> {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_of_bucket_a_cannot_read_bucket_b() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mut cluster = start(dir.path(), &cp).await;
    let started = std::time::Instant::now();

    for ns in ["team-a", "team-b"] {
        create_namespace(&cluster, ns).await;
    }
    create_bucket(&cluster, "team-a", "alpha", spec("default", None)).await;
    create_bucket(&cluster, "team-b", "beta", spec("default", None)).await;

    // The operator writes each Secret, owned by its Bucket, and publishes the keys.
    let (a_id, a_secret, a_object) = wait_secret(&cluster, "team-a", "alpha-credentials").await;
    let (b_id, b_secret, _) = wait_secret(&cluster, "team-b", "beta-credentials").await;
    assert_ne!(a_id, b_id);
    assert_eq!(a_secret.len(), 43, "256 random bits in base64url");
    let data = a_object.data.as_ref().expect("data");
    assert_eq!(data[SECRET_BUCKET].0, b"alpha");
    assert_eq!(data[SECRET_POOL].0, b"default");
    let owner = &a_object.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Bucket", "alpha")
    );
    let alpha = wait_ready_reason(&cluster, "team-a", "alpha", REASON_PUBLISHED).await;
    wait_ready_reason(&cluster, "team-b", "beta", REASON_PUBLISHED).await;
    let status = alpha.status.clone().unwrap_or_default();
    assert_eq!(status.bucket_name.as_deref(), Some("alpha"));
    assert_eq!(status.access_key_id.as_deref(), Some(a_id.as_str()));
    assert!(status.map_epoch >= 1);

    // The map every agent holds: require_auth, the keys' hashes and never a secret.
    let mut ac = potluck_e2e::control_client(cluster.fleet.endpoint(0))
        .await
        .expect("connect");
    let map = ac
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner();
    assert!(map.require_auth);
    let names: Vec<&str> = map.buckets.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(
        map.buckets[0].keys[0].secret_blake3.as_ref(),
        blake3::hash(a_secret.as_bytes()).as_bytes()
    );
    let stored = cp.kubectl_ok(
        &[
            "get",
            "configmap",
            "-n",
            "potluck-system",
            "potluck-cluster-map",
            "-o",
            "yaml",
        ],
        None,
    );
    assert!(stored.contains("binaryData"), "{stored}");
    assert!(
        !stored.contains(&a_secret) && !stored.contains(&b_secret),
        "a secret in the map ConfigMap"
    );

    // A's keys: put, get, stat, list and delete in A (the pool follows from the bucket).
    let a = client(
        &cluster,
        Some(Credentials::new(&a_id, &a_secret).expect("credentials")),
    )
    .await;
    let data = random_bytes(200_000, 1);
    a.put_bytes("alpha", "cat.jpg", data.clone())
        .await
        .expect("put in A");
    let (info, back) = a
        .get_bytes("alpha", "cat.jpg", None)
        .await
        .expect("get in A");
    assert_eq!(back, data);
    assert_eq!(info.pool, "default");
    assert_eq!(
        a.stat("alpha", "cat.jpg").await.expect("stat").size,
        200_000
    );
    assert_eq!(a.list_all("alpha", "").await.expect("list").len(), 1);
    let b = client(
        &cluster,
        Some(Credentials::new(&b_id, &b_secret).expect("credentials")),
    )
    .await;
    b.put_bytes("beta", "dog.jpg", random_bytes(1000, 2))
        .await
        .expect("put in B");

    // A's keys on B: PERMISSION_DENIED for every call, naming the bucket.
    match a.get_bytes("beta", "dog.jpg", None).await {
        Err(ClientError::PermissionDenied(m)) => assert!(m.contains("\"beta\""), "{m}"),
        other => panic!("A's key read B: {other:?}"),
    }
    assert_eq!(
        code(a.stat("beta", "dog.jpg").await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(a.list("beta", "", "", 0).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(a.delete("beta", "dog.jpg").await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(a.put_bytes("beta", "x", vec![1u8; 10]).await),
        Some(Code::PermissionDenied)
    );
    // Another pool for its own bucket is refused too.
    assert_eq!(
        code(a.with_pool("other").stat("alpha", "cat.jpg").await),
        Some(Code::PermissionDenied)
    );

    // No credentials, a wrong secret, an unknown key: UNAUTHENTICATED, saying what to send.
    let anonymous = client(&cluster, None).await;
    match anonymous.get_bytes("alpha", "cat.jpg", None).await {
        Err(ClientError::Unauthenticated(m)) => {
            assert!(m.contains("authorization: Bearer"), "{m}")
        }
        other => panic!("anonymous get: {other:?}"),
    }
    assert_eq!(
        code(anonymous.put_bytes("alpha", "x", vec![1u8; 10]).await),
        Some(Code::Unauthenticated)
    );
    let mut raw = object_client(&cluster.fleet.endpoint(1)).await;
    let status = raw
        .list_objects(ListObjectsRequest {
            bucket: "alpha".into(),
            ..Default::default()
        })
        .await
        .expect_err("raw anonymous list");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong_secret = b_secret.clone();
    wrong_secret.replace_range(
        0..1,
        if wrong_secret.starts_with('x') {
            "y"
        } else {
            "x"
        },
    );
    let wrong = client(
        &cluster,
        Some(Credentials::new(&a_id, &wrong_secret).expect("credentials")),
    )
    .await;
    assert_eq!(
        code(wrong.stat("alpha", "cat.jpg").await),
        Some(Code::Unauthenticated)
    );
    let unknown = client(
        &cluster,
        Some(Credentials::new("pk-unknown", &a_secret).expect("credentials")),
    )
    .await;
    assert_eq!(
        code(unknown.stat("alpha", "cat.jpg").await),
        Some(Code::Unauthenticated)
    );

    // The CLI takes the keys from the environment and exits 6 when refused.
    let potluck = find_potluck_bin();
    let endpoint = cluster.fleet.endpoint(2);
    let run = |id: &str, secret: &str, target: &str| {
        std::process::Command::new(&potluck)
            .args(["ls", target])
            .env("POTLUCK_ENDPOINT", &endpoint)
            .env("POTLUCK_TLS_DIR", potluck_e2e::client_tls_dir())
            .env("POTLUCK_ACCESS_KEY", id)
            .env("POTLUCK_SECRET_KEY", secret)
            .env_remove("POTLUCK_CREDENTIALS")
            .env_remove("POTLUCK_POOL")
            .output()
            .expect("run potluck")
    };
    let ok = run(&a_id, &a_secret, "alpha");
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("cat.jpg"),
        "{ok:?}"
    );
    let denied = run(&a_id, &a_secret, "beta");
    assert_eq!(denied.status.code(), Some(6), "{denied:?}");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"));
    let unauthenticated = run(&a_id, &wrong_secret, "alpha");
    assert_eq!(
        unauthenticated.status.code(),
        Some(6),
        "{unauthenticated:?}"
    );

    // A new operator (the old one crashed) publishes the same access: no new epoch.
    let stored_epoch = || {
        cp.kubectl_ok(
            &[
                "get",
                "configmap",
                "-n",
                "potluck-system",
                "potluck-cluster-map",
                "-o",
                "jsonpath={.data.epoch}",
            ],
            None,
        )
        .trim()
        .parse::<u64>()
        .expect("stored epoch")
    };
    let before_restart = stored_epoch();
    cluster.kill_operator(0).await;
    cluster.start_operator().await.expect("new operator");
    let metrics = cluster.operator_metrics()[0].to_string();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while potluck_e2e::metric(
        &metrics,
        "potluck_operator_reconciles_total",
        "result=\"ok\"",
    )
    .await
        < 3.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new operator never reconciled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_epoch(), before_restart, "a restart minted an epoch");
    a.stat("alpha", "cat.jpg")
        .await
        .expect("A's key after the restart");

    // A Bucket naming a missing pool, and one taking a name team-a holds, are not Ready.
    create_bucket(&cluster, "team-b", "lost", spec("nowhere", None)).await;
    create_bucket(
        &cluster,
        "team-b",
        "copycat",
        spec("default", Some("alpha")),
    )
    .await;
    let lost = wait_ready_reason(&cluster, "team-b", "lost", REASON_POOL_NOT_FOUND).await;
    let message =
        condition::find_condition(&lost.status.clone().unwrap_or_default().conditions, READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
    assert!(message.contains("\"nowhere\""), "{message}");
    wait_ready_reason(&cluster, "team-b", "copycat", REASON_NAME_TAKEN).await;
    let (copy_id, copy_secret, _) = wait_secret(&cluster, "team-b", "copycat-credentials").await;
    let copy = client(
        &cluster,
        Some(Credentials::new(&copy_id, &copy_secret).expect("credentials")),
    )
    .await;
    assert_eq!(
        code(copy.get_bytes("alpha", "cat.jpg", None).await),
        Some(Code::Unauthenticated),
        "a refused Bucket's key opens nothing"
    );
    let table = cp.kubectl_ok(&["get", "buckets", "-n", "team-b"], None);
    assert_eq!(
        table_row(&table, 0),
        ["NAME", "BUCKET", "POOL", "READY", "REASON", "SECRET", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("lost") && l.contains("False") && l.contains("PoolNotFound")),
        "{table}"
    );

    // A few more objects for the purge to find.
    for i in 0..5 {
        a.put_bytes("alpha", &format!("more/{i}"), random_bytes(70_000, i))
            .await
            .expect("put");
    }
    // Deleting A takes its key away with the next map; B is untouched.
    let epoch_before = map.epoch;
    Api::<Bucket>::namespaced(cluster.client(), "team-a")
        .delete("alpha", &DeleteParams::default())
        .await
        .expect("delete Bucket alpha");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match a.stat("alpha", "cat.jpg").await {
            Err(ClientError::Unauthenticated(_)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "A's key still works after its Bucket was deleted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = ac
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .expect("map")
        .into_inner();
    assert!(after.epoch > epoch_before);
    assert!(
        after
            .buckets
            .iter()
            .flat_map(|x| &x.keys)
            .all(|k| k.id != a_id),
        "A's key is still in the map"
    );
    b.stat("beta", "dog.jpg").await.expect("B still works");
    // The operator empties the deleted bucket before it lets the Bucket go; then the name is
    // free again, and the Bucket that waited for it gets it, with none of A's objects.
    wait_until(LIMIT, || async {
        Api::<Bucket>::namespaced(cluster.client(), "team-a")
            .get_opt("alpha")
            .await
            .is_ok_and(|b| b.is_none())
    })
    .await;
    wait_ready_reason(&cluster, "team-b", "copycat", REASON_PUBLISHED).await;
    wait_until(LIMIT, || async {
        copy.stat("alpha", "missing")
            .await
            .is_err_and(|e| e.code() == Some(Code::NotFound))
    })
    .await;
    assert_eq!(
        code(copy.get_bytes("alpha", "cat.jpg", None).await),
        Some(Code::NotFound),
        "the next claimant of a deleted Bucket's name must not read its objects"
    );
    let left = copy.list_all("alpha", "").await.expect("list");
    assert!(left.is_empty(), "objects left from Bucket alpha: {left:?}");
    eprintln!("bucket checks took {:?}", started.elapsed());

    cluster.shutdown().await.expect("shutdown");
}
