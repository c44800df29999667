//! Mutual TLS for Potluck: every member, the operator and every client hold a
//! certificate of the cluster CA, and nobody without one gets past the
//! handshake. See docs/architecture.md ("Transport security").

mod authority;
mod client;
mod identity;
mod material;
mod server;
mod watch;

pub use authority::{new_key_and_csr, ClusterCa, Issued, Subject};
pub use client::client_config;
pub use identity::{
    member_server_name, serial_hex, PeerIdentity, Role, AGENT_NAME, CLIENT_SUFFIX, MEMBER_SUFFIX,
    OPERATOR_NAME,
};
pub use material::{Material, Parsed};
pub use server::ServerTls;
pub use watch::watch_dir;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making or signing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the client certificate verifier: {0}")]
    Verifier(String),
    #[error("the certificate is unusable: {0}")]
    BadCertificate(String),
    #[error("{0:?} cannot be a certificate name: use letters, digits, '-' and '.'")]
    BadName(String),
    #[error("reading {path}: {source}; check --tls-dir points at a directory with ca.pem, cert.pem and key.pem")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("the new files name a different CA; a CA change needs a restart of every member (docs/operations.md)")]
    CaChanged,
}
