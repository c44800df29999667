//! Certificates in Kubernetes mode, against a real kube-apiserver and etcd with real operator
//! and agent processes:
//!
//! - the operator makes the cluster CA's Secret (potluck-ca, kubernetes.io/tls) when absent;
//! - an agent started with --tls-bootstrap publishes a CSR on its StorageNode (acting as its
//!   ServiceAccount with deploy/10-rbac.yaml, so RBAC is proven too), the operator signs it,
//!   and the agent then serves mutual TLS with a certificate naming that member and no other;
//!   its key is on its disk only;
//! - the operator calls the agent with its own in-memory certificate (--agent-tls);
//! - the agent answers the kubelet's probes on its metrics port (`/healthz`, `/readyz`);
//! - a Bucket gets a client certificate of the cluster CA in Secret `<bucket>-client-tls`,
//!   usable as `potluck --tls-dir` files, that opens a mutual-TLS connection to the agent;
//! - `spec.revokeCertificate: true` puts the member's serial in the stored cluster map and
//!   marks it Out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use potluck_api::{Bucket, BucketSpec, NodePhase, StorageNode};
use potluck_cli::fleet::{find_agent_bin, log_tail, parse_ready_line, READY_PREFIX};
use potluck_e2e::control_plane::ControlPlane;
use potluck_e2e::{http_get, wait_until};
use potluck_operator::map_store::MapStore;
use potluck_tls::{client_config, member_server_name, ClusterCa, Subject};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NS: &str = "potluck-system";
const AGENT_SA: &str = "system:serviceaccount:potluck-system:potluck-agent";
const LIMIT: Duration = Duration::from_secs(60);

/// A process killed when dropped, whose log is shown when the test fails.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ----\n{}",
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
    }
}

/// Starts `bin` with `args` and KUBECONFIG, and returns it with its ready line.
async fn start(
    bin: &Path,
    args: &[&str],
    kubeconfig: &Path,
    log: &Path,
    ready: &str,
) -> (Proc, String) {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("NODE_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("POTLUCK_ADVERTISE")
        .env_remove("POTLUCK_TLS_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let proc = Proc {
        child,
        log: log.to_path_buf(),
    };
    let line = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(ready) {
                return Some(line);
            }
        }
        None
    })
    .await;
    let line = match line {
        Ok(Some(line)) => line,
        _ => panic!("{} was not ready:\n{}", bin.display(), log_tail(log, 40)),
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (proc, line)
}

async fn admin_client(cp: &ControlPlane) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether a mutual-TLS health check of the agent at `addr`, expecting `server_name`, works.
async fn healthy_over_tls(
    addr: &str,
    material: &potluck_tls::Material,
    server_name: &str,
) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(client_config(material, server_name))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The serial (hex) of the certificate the agent at `addr` presents as `server_name`.
async fn served_serial(
    addr: &str,
    material: &potluck_tls::Material,
    server_name: &str,
) -> Result<String, String> {
    potluck_e2e::served_serial(addr, material, server_name)
        .await
        .map(|s| potluck_tls::serial_hex(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keeps_the_ca_signs_a_members_csr_and_publishes_its_revocation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start_with_potluck_rbac(&dir.path().join("cp"));
    let client = admin_client(&cp).await;
    let agent_bin = find_agent_bin().expect("potluck-agent is built");
    let operator_bin = agent_bin.with_file_name("potluck-operator");

    // The operator makes the CA Secret.
    let (_operator, _) = start(
        &operator_bin,
        &[
            "--namespace",
            NS,
            "--metrics-listen",
            "127.0.0.1:0",
            "--leader-lease-secs",
            "3",
            // Renewed after 40 s: the test sees one rotation.
            "--member-cert-validity-secs",
            "60",
            "--agent-tls=true",
        ],
        &cp.kubeconfig,
        &dir.path().join("operator.log"),
        "POTLUCK_OPERATOR_READY",
    )
    .await;
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    wait_until(LIMIT, || async {
        secrets.get_opt("potluck-ca").await.ok().flatten().is_some()
    })
    .await;
    let secret = secrets.get("potluck-ca").await.expect("CA Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.expect("CA Secret data");
    let pem = |k: &str| String::from_utf8(data[k].0.clone()).expect("PEM");
    let ca = ClusterCa::from_pem(&pem("tls.crt"), &pem("tls.key")).expect("a usable CA");

    // An agent with --tls-bootstrap gets a certificate before it serves.
    let data_dir = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let (_agent, ready) = start(
        &agent_bin,
        &[
            "--kubernetes",
            "--id",
            "member-1",
            "--namespace",
            NS,
            "--tls-bootstrap",
            "--listen",
            &addr,
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
            "--capacity",
            "1GiB",
            "--lease-duration-secs",
            "3",
            "--tls-reload-secs",
            "1",
        ],
        &cp.kubeconfig_as(AGENT_SA),
        &dir.path().join("agent.log"),
        READY_PREFIX,
    )
    .await;
    let ready = parse_ready_line(&ready).expect("ready line");
    eprintln!("agent serving TLS {:?} after start", started.elapsed());
    assert_eq!(ready.grpc.to_string(), addr);
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(data_dir.join("tls").join(file).exists(), "{file} written");
    }

    let nodes = Api::<StorageNode>::all(client.clone());
    let node = nodes.get("member-1").await.expect("StorageNode");
    let tls = node.status.clone().and_then(|s| s.tls).expect("status.tls");
    let serial = tls.serial.clone().expect("serial published");
    assert!(tls.not_after.is_some() && tls.certificate.is_some());
    let node_json = serde_json::to_string(&node).expect("json");
    assert!(
        !node_json.contains("PRIVATE KEY"),
        "the key never leaves the member"
    );

    // The agent proves it is member-1 (and not member-2) to a holder of a cluster certificate.
    let (admin, _) = ca
        .issue_material(&Subject::Operator, Duration::from_secs(600))
        .expect("an operator certificate");
    healthy_over_tls(&addr, &admin, &member_server_name("member-1"))
        .await
        .expect("mutual TLS as member-1");
    assert!(
        healthy_over_tls(&addr, &admin, &member_server_name("member-2"))
            .await
            .is_err(),
        "the agent's certificate must not pass for another member"
    );
    // A certificate of another CA gets nowhere.
    let foreign = ClusterCa::generate("other").expect("CA");
    let (stranger, _) = foreign
        .issue_material(&Subject::Operator, Duration::from_secs(600))
        .expect("cert");
    let stranger = potluck_tls::Material {
        ca_pem: admin.ca_pem.clone(),
        ..stranger
    };
    assert!(
        healthy_over_tls(&addr, &stranger, &member_server_name("member-1"))
            .await
            .is_err()
    );

    // The operator reaches the agent with its own certificate: the agent's version comes
    // from a status call.
    wait_until(LIMIT, || async {
        nodes
            .get("member-1")
            .await
            .ok()
            .and_then(|n| n.status?.agent_version)
            .is_some()
    })
    .await;

    assert_eq!(
        served_serial(&addr, &admin, &member_server_name("member-1")).await,
        Ok(serial.clone())
    );

    // Kubernetes probes the metrics port, since the gRPC port wants a client certificate.
    let metrics_addr = ready.metrics.to_string();
    assert_eq!(http_get(&metrics_addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(&metrics_addr, "/readyz").await,
        (200, "ok\n".to_owned())
    );

    // A Bucket gets a client certificate of the cluster CA in Secret <bucket>-client-tls,
    // which opens a mutual-TLS connection to the agent as a client named after the bucket.
    bucket_client_certificate(&client, &ca, &addr, dir.path()).await;

    // Rotation: after 2/3 of its life the agent asks again and serves the new certificate
    // without a restart.
    let rotated = std::time::Instant::now();
    let renewed = std::sync::Mutex::new(String::new());
    wait_until(Duration::from_secs(90), || async {
        let now = nodes
            .get("member-1")
            .await
            .ok()
            .and_then(|n| n.status?.tls?.serial);
        match now {
            Some(s) if s != serial => {
                *renewed.lock().expect("lock") = s;
                true
            }
            _ => false,
        }
    })
    .await;
    let renewed = renewed.into_inner().expect("lock");
    wait_until(LIMIT, || async {
        served_serial(&addr, &admin, &member_server_name("member-1")).await == Ok(renewed.clone())
    })
    .await;
    eprintln!("rotated and served in {:?}", rotated.elapsed());
    let serial = renewed;

    // Revocation: the serial is in the stored map and the member is Out.
    nodes
        .patch(
            "member-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "revokeCertificate": true } })),
        )
        .await
        .expect("revoke");
    let store = MapStore::new(Api::<ConfigMap>::namespaced(client.clone(), NS));
    wait_until(LIMIT, || async {
        store.load().await.ok().flatten().is_some_and(|s| {
            s.map
                .revoked_certificates
                .iter()
                .any(|c| potluck_tls::serial_hex(c) == serial)
        })
    })
    .await;
    wait_until(LIMIT, || async {
        nodes
            .get("member-1")
            .await
            .ok()
            .and_then(|n| n.status?.phase)
            == Some(NodePhase::Out)
    })
    .await;
}

async fn bucket_client_certificate(client: &Client, ca: &ClusterCa, addr: &str, dir: &Path) {
    let ns = "team-a";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("namespace");
    let bucket = Bucket::new(
        "alpha",
        BucketSpec {
            pool: "default".into(),
            bucket_name: None,
            secret_name: None,
        },
    );
    Api::<Bucket>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &bucket)
        .await
        .expect("Bucket");
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    wait_until(LIMIT, || async {
        secrets
            .get_opt("alpha-client-tls")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    let secret = secrets.get("alpha-client-tls").await.expect("Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let owner = secret.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.kind == "Bucket" && o.name == "alpha"),
        "owned by the Bucket, so deleted with it: {owner:?}"
    );
    // As a user saves it: the Secret's keys as files, which `potluck --tls-dir` reads.
    let tls_dir = dir.join("alpha-tls");
    std::fs::create_dir_all(&tls_dir).expect("dir");
    for (name, value) in secret.data.expect("data") {
        std::fs::write(tls_dir.join(name), value.0).expect("write");
    }
    let material = potluck_tls::Material::read_dir(&tls_dir).expect("a usable client material");
    assert_eq!(material.ca_pem, ca.cert_pem());
    let parsed = material.parse().expect("PEM");
    let id = potluck_tls::PeerIdentity::from_der(&parsed.chain[0]).expect("certificate");
    assert_eq!(id.role, potluck_tls::Role::Client("alpha".into()));
    healthy_over_tls(addr, &material, &member_server_name("member-1"))
        .await
        .expect("the bucket's certificate opens a mutual-TLS connection");
}
