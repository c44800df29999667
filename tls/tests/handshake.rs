//! Real handshakes over loopback between tonic clients and a tonic server
//! behind `ServerTls`: who gets in, who does not, and rotation.

use std::time::Duration;

use potluck_tls::{
    client_config, member_server_name, ClusterCa, Material, PeerIdentity, Role, ServerTls, Subject,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const DAY: Duration = Duration::from_secs(86_400);

fn member(id: &str) -> Subject {
    Subject::Member {
        id: id.into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
    }
}

async fn serve(material: &Material) -> (ServerTls, String) {
    let tls = ServerTls::new(material).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let incoming = tls.incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    (tls, format!("https://{addr}"))
}

async fn check(uri: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel: Channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_parties_of_the_cluster_get_in() {
    let ca = ClusterCa::generate("test").unwrap();
    let (server_files, _) = ca.issue_material(&member("m0"), DAY).unwrap();
    let (_tls, uri) = serve(&server_files).await;

    let (client, _) = ca
        .issue_material(
            &Subject::Client {
                name: "alice".into(),
            },
            DAY,
        )
        .unwrap();
    let (peer, _) = ca.issue_material(&member("m1"), DAY).unwrap();
    check(&uri, Some(client_config(&client, potluck_tls::AGENT_NAME)))
        .await
        .expect("a client of the cluster");
    check(&uri, Some(client_config(&peer, &member_server_name("m0"))))
        .await
        .expect("a peer of the cluster");

    // A peer expecting another member behind this address refuses it.
    assert!(
        check(&uri, Some(client_config(&peer, &member_server_name("m2"))))
            .await
            .is_err()
    );
    // No client certificate: refused by the server.
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name(potluck_tls::AGENT_NAME);
    assert!(check(&uri, Some(anonymous)).await.is_err());
    // Plain HTTP/2: refused.
    assert!(check(&uri.replace("https", "http"), None).await.is_err());
    // A certificate of another CA: refused, however well-formed.
    let other = ClusterCa::generate("other").unwrap();
    let (mut foreign, _) = other
        .issue_material(
            &Subject::Client {
                name: "alice".into(),
            },
            DAY,
        )
        .unwrap();
    foreign.ca_pem = ca.cert_pem().to_string();
    assert!(
        check(&uri, Some(client_config(&foreign, potluck_tls::AGENT_NAME)))
            .await
            .is_err()
    );
    // An expired certificate of this CA: refused.
    let (expired, _) = ca
        .material_until(
            &Subject::Client { name: "old".into() },
            std::time::SystemTime::now() - Duration::from_secs(2),
        )
        .unwrap();
    let id = PeerIdentity::from_der(&expired.parse().unwrap().chain[0]).unwrap();
    assert!(id.expired(std::time::SystemTime::now()));
    assert!(
        check(&uri, Some(client_config(&expired, potluck_tls::AGENT_NAME)))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let ca = ClusterCa::generate("test").unwrap();
    let (first, _) = ca.issue_material(&member("m0"), DAY).unwrap();
    let (tls, uri) = serve(&first).await;
    let (renamed, _) = ca.issue_material(&member("m9"), DAY).unwrap();
    let (client, _) = ca
        .issue_material(&Subject::Client { name: "c".into() }, DAY)
        .unwrap();
    assert!(check(
        &uri,
        Some(client_config(&client, &member_server_name("m9")))
    )
    .await
    .is_err());
    tls.replace(&renamed).unwrap();
    check(
        &uri,
        Some(client_config(&client, &member_server_name("m9"))),
    )
    .await
    .expect("the new certificate is served");
    // A different CA is refused: it would need every member restarted.
    let other = ClusterCa::generate("other").unwrap();
    let (foreign, _) = other.issue_material(&member("m0"), DAY).unwrap();
    assert!(matches!(
        tls.replace(&foreign),
        Err(potluck_tls::TlsError::CaChanged)
    ));
}

#[test]
fn roles_serials_and_csrs() {
    let ca = ClusterCa::generate("test").unwrap();
    for (subject, role) in [
        (member("m-1.a"), Role::Member("m-1.a".into())),
        (Subject::Operator, Role::Operator),
        (
            Subject::Client { name: "bob".into() },
            Role::Client("bob".into()),
        ),
    ] {
        let (m, issued) = ca.issue_material(&subject, DAY).unwrap();
        let id = PeerIdentity::from_der(&m.parse().unwrap().chain[0]).unwrap();
        assert_eq!(id.role, role);
        assert_eq!(id.serial, issued.serial);
        assert_eq!(id.not_after, issued.not_after);
        assert!(!id.expired(std::time::SystemTime::now()));
    }
    // A CSR's own names are ignored: the CA decides who it is for.
    let (key, csr) = potluck_tls::new_key_and_csr("m3").unwrap();
    let issued = ca.sign_csr(&csr, &member("m4"), DAY).unwrap();
    let m = Material {
        ca_pem: ca.cert_pem().into(),
        cert_pem: issued.cert_pem,
        key_pem: key,
    };
    let id = PeerIdentity::from_der(&m.parse().unwrap().chain[0]).unwrap();
    assert_eq!(id.role, Role::Member("m4".into()));
    // The CA survives a round trip through PEM and still signs for the same trust.
    let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let (m2, _) = again.issue_material(&member("m5"), DAY).unwrap();
    assert_eq!(m2.ca_pem, ca.cert_pem());
    assert!(matches!(
        ca.issue(
            &Subject::Client {
                name: "no spaces".into()
            },
            DAY
        ),
        Err(potluck_tls::TlsError::BadName(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    m2.write_dir(dir.path()).unwrap();
    assert_eq!(Material::read_dir(dir.path()).unwrap(), m2);
}
