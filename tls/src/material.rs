//! The three PEM files a party holds: the CA it trusts, its certificate and its
//! key. On disk they are `ca.pem`, `cert.pem` and `key.pem` in one directory,
//! which is also the layout of a Kubernetes TLS Secret mounted as a volume
//! (with `ca.crt`/`tls.crt`/`tls.key` accepted too), so rotation is "replace
//! the files" whoever does it.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Material {
    // Keeps keys out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

const NAMES: [(&str, &str); 3] = [
    ("ca.pem", "ca.crt"),
    ("cert.pem", "tls.crt"),
    ("key.pem", "tls.key"),
];

impl Material {
    /// Reads and checks the files in `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self, TlsError> {
        let mut texts = Vec::with_capacity(3);
        for (name, alt) in NAMES {
            let path = if dir.join(name).exists() || !dir.join(alt).exists() {
                dir.join(name)
            } else {
                dir.join(alt)
            };
            let text = std::fs::read_to_string(&path).map_err(|source| TlsError::Io {
                path: path.clone(),
                source,
            })?;
            texts.push(text);
        }
        let key_pem = texts.pop().unwrap_or_default();
        let cert_pem = texts.pop().unwrap_or_default();
        let ca_pem = texts.pop().unwrap_or_default();
        let material = Self {
            ca_pem,
            cert_pem,
            key_pem,
        };
        material.parse().map_err(|e| match e {
            TlsError::Pem { what, detail } => TlsError::Pem {
                what,
                detail: format!("{detail} (in {})", dir.display()),
            },
            other => other,
        })?;
        Ok(material)
    }

    /// Writes the files into `dir` (created if missing), each replaced
    /// atomically, the key readable by its owner only.
    pub fn write_dir(&self, dir: &Path) -> Result<(), TlsError> {
        let io = |path: PathBuf| move |source| TlsError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        for ((name, _), text) in NAMES
            .iter()
            .zip([&self.ca_pem, &self.cert_pem, &self.key_pem])
        {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).map_err(io(tmp.clone()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = if *name == "key.pem" { 0o600 } else { 0o644 };
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                    .map_err(io(tmp.clone()))?;
            }
            std::fs::rename(&tmp, &path).map_err(io(path.clone()))?;
        }
        Ok(())
    }

    /// The DER forms, checked: at least one CA certificate, a certificate
    /// chain and a private key.
    pub fn parse(&self) -> Result<Parsed, TlsError> {
        let certs = |what: &'static str, pem: &str| {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Pem {
                    what,
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::Pem {
                    what,
                    detail: "no CERTIFICATE block".into(),
                });
            }
            Ok(certs)
        };
        let ca = certs("the CA certificate", &self.ca_pem)?;
        let chain = certs("the certificate", &self.cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "the private key",
                detail: e.to_string(),
            })?;
        Ok(Parsed { ca, chain, key })
    }
}

pub struct Parsed {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}
