//! Calling with TLS: tonic's client config, given what this party holds and
//! the name the other end must prove.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Material;

/// Presents this party's certificate and accepts only a server whose
/// certificate chains to the cluster CA and carries `server_name`
/// ([`crate::member_server_name`] for a known member, [`crate::AGENT_NAME`]
/// for any member).
pub fn client_config(material: &Material, server_name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&material.ca_pem))
        .identity(Identity::from_pem(&material.cert_pem, &material.key_pem))
        .domain_name(server_name)
}
