//! Serving with mutual TLS. We run our own acceptor instead of tonic's so that
//! a rotated certificate is picked up by the next handshake without a restart,
//! and so a slow or hostile handshake cannot hold up other connections.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Material, TlsError};

/// Handshakes under way at once; more connections are closed at once rather
/// than queued, the way an overloaded listener should shed.
const MAX_HANDSHAKES: usize = 256;
/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A TLS server identity that can be replaced while serving.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    ca_pem: String,
}

impl ServerTls {
    /// Requires every client to present a certificate of the cluster CA in
    /// `material`; serves `material`'s certificate.
    pub fn new(material: &Material) -> Result<Self, TlsError> {
        let parsed = material.parse()?;
        let mut roots = RootCertStore::empty();
        for ca in parsed.ca {
            roots.add(ca)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(certified_key(material)?),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            ca_pem: material.ca_pem.clone(),
        })
    }

    /// Serves a renewed certificate from the next handshake on. The CA must
    /// stay the same: trusting a new CA means restarting with it.
    pub fn replace(&self, material: &Material) -> Result<(), TlsError> {
        if material.ca_pem.trim() != self.ca_pem.trim() {
            return Err(TlsError::CaChanged);
        }
        let key = certified_key(material)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// Accepts on `listener` and yields connections whose handshake succeeded.
    /// Handshakes run concurrently; failures are logged with the reason, which
    /// is usually what the refused party needs to hear.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off a
                            // little instead of spinning on the error.
                            tracing::warn!("accepting a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %addr, "too many TLS handshakes under way; closing");
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, "refused a TLS connection: {e}");
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "TLS handshake did not finish in time");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn certified_key(material: &Material) -> Result<Arc<CertifiedKey>, TlsError> {
    let parsed = material.parse()?;
    let key = rustls::crypto::ring::sign::any_supported_type(&parsed.key)?;
    let certified = CertifiedKey::new(parsed.chain, key);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}
