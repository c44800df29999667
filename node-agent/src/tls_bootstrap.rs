//! Kubernetes mode with `--tls-bootstrap`: the member gets its certificate from the operator
//! without its key ever leaving the machine.
//!
//! The agent makes a key and a CSR, publishes the CSR in `status.tls.csr` of its StorageNode
//! and waits until the operator has answered that very CSR (`status.tls.signedCsr` is its
//! BLAKE3) with a certificate and the CA. Then it writes `ca.pem`, `cert.pem` and `key.pem`
//! into its TLS directory, which the gRPC server serves from and re-reads, so a renewal is
//! just the same exchange again after 2/3 of the certificate's life.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use potluck_api::node::StorageNode;
use potluck_tls::{new_key_and_csr, serial_hex, Material, PeerIdentity, TlsError};

use crate::registration::describe;

/// Field manager of `status.tls.csr`, apart from the registration's, so neither's apply
/// removes the other's fields.
pub const FIELD_MANAGER: &str = "potluck-agent-tls";
/// Unix seconds after which the certificate in the directory is to be replaced.
const RENEW_AT_FILE: &str = "renew-at";
/// How often the StorageNode is read while waiting for the operator.
const POLL: Duration = Duration::from_secs(1);
/// How often "still waiting" is logged.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Longest pause between looks at the renewal time, so a clock jump is noticed.
const CHECK_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "member {member} got no certificate from the operator within {secs} s ({last}). Check \
         that potluck-operator runs with --certificates=true and that the agent may patch \
         storagenodes/status (deploy/10-rbac.yaml)"
    )]
    Timeout {
        member: String,
        secs: u64,
        last: String,
    },
    #[error(
        "member {0}'s certificate is revoked (spec.revokeCertificate on its StorageNode); set it \
         back to false and restart the agent to ask for a new one"
    )]
    Revoked(String),
    #[error("the operator's answer: {0}")]
    Tls(#[from] TlsError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One member's certificate exchange with the operator.
pub struct Bootstrap {
    api: Api<StorageNode>,
    member_id: String,
    dir: PathBuf,
}

impl Bootstrap {
    pub fn new(client: Client, member_id: &str, dir: &Path) -> Self {
        Self {
            api: Api::all(client),
            member_id: member_id.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// When the certificate in the directory is to be replaced; `None` when there is no
    /// usable one (so one is needed now).
    pub fn renew_at(&self) -> Option<SystemTime> {
        Material::read_dir(&self.dir).ok()?;
        let text = std::fs::read_to_string(self.dir.join(RENEW_AT_FILE)).ok()?;
        let secs: u64 = text.trim().parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Makes sure the directory holds a certificate not yet due for renewal, asking the
    /// operator for one (for at most `timeout`) if not. The member must have applied its
    /// StorageNode already.
    pub async fn ensure(&self, timeout: Duration) -> Result<(), BootstrapError> {
        if self.renew_at().is_some_and(|at| SystemTime::now() < at) {
            tracing::info!(dir = %self.dir.display(), "using this member's certificate from its TLS directory");
            return Ok(());
        }
        self.request(Some(Instant::now() + timeout)).await
    }

    /// Renews the certificate after 2/3 of its life, for as long as the task runs. A failed
    /// request is logged and tried again; the old certificate stays in use meanwhile.
    pub async fn keep_renewed(self) {
        loop {
            let due = self.renew_at().unwrap_or(UNIX_EPOCH);
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(CHECK_EVERY);
            if wait.is_zero() {
                tracing::info!(member = %self.member_id, "certificate due for renewal; asking the operator");
                if let Err(e) = self.request(Some(Instant::now() + CHECK_EVERY * 5)).await {
                    tracing::warn!(member = %self.member_id, "certificate renewal failed, trying again in {CHECK_EVERY:?}: {e}");
                    tokio::time::sleep(CHECK_EVERY).await;
                }
            } else {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One exchange: a new key and CSR, published until the operator answers it or
    /// `deadline` passes.
    async fn request(&self, deadline: Option<Instant>) -> Result<(), BootstrapError> {
        let started = Instant::now();
        let id = &self.member_id;
        let (key_pem, csr) = new_key_and_csr(id)?;
        let hash = blake3::hash(csr.as_bytes()).to_hex().to_string();
        tracing::info!(member = %id, "waiting for the operator to sign this member's certificate (CSR in its StorageNode's status.tls.csr)");
        let mut last_log = Instant::now();
        loop {
            let last = match self.api.get_opt(id).await {
                Ok(Some(node)) => {
                    if node.spec.revoke_certificate {
                        return Err(BootstrapError::Revoked(id.clone()));
                    }
                    let tls = node.status.and_then(|s| s.tls).unwrap_or_default();
                    if tls.signed_csr.as_deref() == Some(hash.as_str()) {
                        if let (Some(cert_pem), Some(ca_pem)) =
                            (tls.certificate, tls.ca_certificate)
                        {
                            let material = Material {
                                ca_pem,
                                cert_pem,
                                key_pem,
                            };
                            return self.install(&material, started);
                        }
                    }
                    if tls.csr.as_deref() == Some(csr.as_str()) {
                        "the CSR is published; no answer yet".to_string()
                    } else {
                        match self.publish(&csr).await {
                            Ok(()) => "published the CSR".to_string(),
                            Err(e) => format!("cannot publish the CSR: {}", describe(&e)),
                        }
                    }
                }
                Ok(None) => format!("StorageNode {id} does not exist yet"),
                Err(e) => format!("cannot read StorageNode {id}: {}", describe(&e)),
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(BootstrapError::Timeout {
                    member: id.clone(),
                    secs: started.elapsed().as_secs(),
                    last,
                });
            }
            if last_log.elapsed() >= LOG_EVERY {
                tracing::info!(member = %id, waited_secs = started.elapsed().as_secs(), "still waiting for this member's certificate: {last}");
                last_log = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn publish(&self, csr: &str) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "apiVersion": "potluck.dev/v1alpha1",
            "kind": "StorageNode",
            "metadata": { "name": self.member_id },
            "status": { "tls": { "csr": csr } },
        });
        self.api
            .patch_status(
                &self.member_id,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(|_| ())
    }

    /// Checks the answer is a certificate of this member for this key's CSR, then writes
    /// the files and when to renew them.
    fn install(&self, material: &Material, started: Instant) -> Result<(), BootstrapError> {
        let parsed = material.parse()?;
        let leaf = parsed
            .chain
            .first()
            .ok_or_else(|| TlsError::BadCertificate("the answer holds no certificate".into()))?;
        let who = PeerIdentity::from_der(leaf)?;
        if who.role != potluck_tls::Role::Member(self.member_id.clone()) {
            return Err(TlsError::BadCertificate(format!(
                "it names {}, not member {}",
                who.role, self.member_id
            ))
            .into());
        }
        // The TLS layer checks the key matches when it loads the files.
        potluck_tls::ServerTls::new(material)?;
        let now = SystemTime::now();
        let life = who.not_after.duration_since(now).unwrap_or_default();
        let renew_at = now + life * 2 / 3;
        material.write_dir(&self.dir)?;
        let path = self.dir.join(RENEW_AT_FILE);
        let secs = renew_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::fs::write(&path, format!("{secs}\n"))
            .map_err(|source| BootstrapError::Io { path, source })?;
        tracing::info!(
            member = %self.member_id,
            serial = %serial_hex(&who.serial),
            valid_secs = life.as_secs(),
            renew_in_secs = (life * 2 / 3).as_secs(),
            waited_ms = started.elapsed().as_millis() as u64,
            dir = %self.dir.display(),
            "received this member's certificate from the operator"
        );
        Ok(())
    }
}
