//! Mutual TLS against a live fleet: who gets in, what each role may call, and
//! what happens to members whose certificates expire, are renewed or revoked.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use potluck_e2e::*;
use potluck_proto::v1 as pb;
use potluck_tls::{Material, Subject, AGENT_NAME};
use tonic::transport::Endpoint;
use tonic::Code;

const B: &str = "tls";
const LIMIT: Duration = Duration::from_secs(30);

async fn served_serial(addr: SocketAddr, material: &Material) -> Result<Vec<u8>, String> {
    potluck_e2e::served_serial(&addr.to_string(), material, AGENT_NAME).await
}

/// A raw ObjectService call over a channel set up by `tls` (None: plaintext).
async fn try_stat(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<pb::ObjectInfo, String> {
    let mut e = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        e = e.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = e.connect().await.map_err(|e| format!("{e:?}"))?;
    pb::object_service_client::ObjectServiceClient::new(channel)
        .stat_object(pb::StatObjectRequest {
            bucket: B.into(),
            key: "k".into(),
            pool: String::new(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_cluster_certificates_get_in() {
    let mut fleet = start_fleet(&["--tls-reload-secs", "1", "--stripe-cache", "0"]).await;
    let ca = test_ca();
    let day = Duration::from_secs(86_400);
    let data = random_bytes(3 * MIB + 17, 7);
    let mut c = object_client(&fleet.endpoints()[0]).await;
    put(&mut c, B, "k", &data)
        .await
        .expect("a put with the fleet's client certificate");
    let ep0 = fleet.endpoint(0);

    // Plaintext, TLS without a certificate, a certificate of another CA: all refused.
    assert!(try_stat(&ep0.replace("https://", "http://"), None)
        .await
        .is_err());
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name(AGENT_NAME);
    assert!(try_stat(&ep0, Some(anonymous)).await.is_err());
    let other = potluck_tls::ClusterCa::generate("elsewhere").unwrap();
    let (mut foreign, _) = other
        .issue_material(&Subject::Client { name: "e2e".into() }, day)
        .unwrap();
    foreign.ca_pem = ca.cert_pem().to_string();
    assert!(
        try_stat(&ep0, Some(potluck_tls::client_config(&foreign, AGENT_NAME)))
            .await
            .is_err()
    );
    // A client of this cluster gets in.
    let (mallory, mallory_cert) = ca
        .issue_material(
            &Subject::Client {
                name: "mallory".into(),
            },
            day,
        )
        .unwrap();
    let info = try_stat(&ep0, Some(potluck_tls::client_config(&mallory, AGENT_NAME)))
        .await
        .expect("a client certificate of the cluster CA");
    assert_eq!(info.size, data.len() as u64);

    // A client may not call the shard service or push maps: those are for members
    // and the operator.
    let channel = Endpoint::from_shared(ep0.clone())
        .unwrap()
        .tls_config(potluck_tls::client_config(&mallory, AGENT_NAME))
        .unwrap()
        .connect()
        .await
        .expect("connect as mallory");
    let refused = pb::shard_service_client::ShardServiceClient::new(channel.clone())
        .list_shards(pb::ListShardsRequest::default())
        .await
        .expect_err("a client listing raw shards");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("client mallory"), "{refused:?}");
    let refused = pb::agent_control_client::AgentControlClient::new(channel.clone())
        .apply_cluster_map(pb::ApplyClusterMapRequest {
            map: Some(fleet.map().clone()),
        })
        .await
        .expect_err("a client pushing a map");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Revoking mallory's certificate through the map shuts her out, on the
    // connection she already holds too.
    fleet.revoke_certificate(mallory_cert.serial.clone());
    fleet.push_map().await.expect("push the revocation");
    let refused = pb::object_service_client::ObjectServiceClient::new(channel)
        .stat_object(pb::StatObjectRequest {
            bucket: B.into(),
            key: "k".into(),
            pool: String::new(),
        })
        .await
        .expect_err("a revoked client");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");

    // Agent 5's certificate runs out: it reloads the expired files by itself,
    // after which nobody accepts it. Puts through others land without it.
    let five = fleet.grpc_addr(5);
    let dir5 = fleet.agent_tls_dir(5).expect("TLS is on");
    let before = served_serial(five, client_tls())
        .await
        .expect("agent 5 serves");
    let member5 = Subject::Member {
        id: fleet.id(5).to_string(),
        ips: vec![],
    };
    let (expired, _) = ca
        .material_until(&member5, SystemTime::now() - Duration::from_secs(5))
        .unwrap();
    expired.write_dir(&dir5).unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let why = loop {
        match served_serial(five, client_tls()).await {
            Err(e) => break e,
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "agent 5 never took up its expired certificate"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.to_lowercase().contains("expired"), "{why}");
    let degraded = put(&mut c, B, "while-5-expired", &data)
        .await
        .expect("a put without agent 5");
    assert!(degraded.degraded_stripes >= 1, "{degraded:?}");

    // Renewal: new files, picked up without a restart; agent 5 is back.
    let pid = fleet.pid(5);
    let (renewed, renewed_cert) = ca.issue_material(&member5, day).unwrap();
    renewed.write_dir(&dir5).unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match served_serial(five, client_tls()).await {
            Ok(serial) => {
                assert_ne!(serial, before);
                assert_eq!(serial, renewed_cert.serial);
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "agent 5 never took up its renewed certificate: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fleet.pid(5), pid, "renewal must not need a restart");
    let whole = put(&mut c, B, "after-renewal", &data)
        .await
        .expect("a put after renewal");
    assert_eq!(whole.degraded_stripes, 0, "{whole:?}");

    // Agent 4's certificate is revoked: its calls to peers are refused, so as a
    // gateway it cannot store anything, and says why.
    let serial4 = fleet.agent_cert_serial(4).expect("TLS is on").to_vec();
    fleet.revoke_certificate(serial4);
    fleet.push_map().await.expect("push the revocation");
    let mut via4 = object_client(&fleet.endpoint(4)).await;
    let err = put(&mut via4, B, "through-4", &data)
        .await
        .expect_err("a revoked member's peers refuse it");
    assert!(err.message().contains("revoked"), "{err:?}");

    // Everything acknowledged reads back through the others.
    for key in ["k", "while-5-expired", "after-renewal"] {
        assert_eq!(get(&mut c, B, key).await.expect("get"), data, "{key}");
    }
    let mut via1 = object_client(&fleet.endpoint(1)).await;
    assert_eq!(get(&mut via1, B, "k").await.expect("get"), data);
}
