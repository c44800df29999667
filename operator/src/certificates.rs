//! The cluster CA in Kubernetes mode: kept in a Secret, used to sign members' certificates
//! and the operator's own.
//!
//! - The CA lives in the TLS Secret [`CA_SECRET`] in the operator's namespace (`tls.crt`,
//!   `tls.key`). The operator makes one when it is missing; an admin or cert-manager may
//!   supply their own instead, and it is used as it is.
//! - A member's key never leaves the member: its agent publishes a CSR in
//!   `status.tls.csr` of its StorageNode, the operator answers with a certificate naming
//!   that member (the CSR's names are ignored) in the same `status.tls`. The agent asks
//!   again after 2/3 of the certificate's life.
//! - `spec.revokeCertificate: true` revokes: the serial is kept in `status.tls.revokedSerials`,
//!   every cluster map lists it ([`with_revoked_certificates`]), the member is marked Out and
//!   nothing more is signed for it.
//! - The operator's own client certificate (role Operator) is issued in memory and renewed
//!   the same way; [`Certificates::operator_material`] is what the agent client uses.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use potluck_api::StorageNode;
use potluck_proto::v1::ClusterMap;
use potluck_tls::{serial_hex, ClusterCa, Material, Subject, TlsError};
use prost::bytes::Bytes;

use crate::cluster_map::MapError;

/// The Secret (type kubernetes.io/tls, in the operator's namespace) holding the cluster CA.
pub const CA_SECRET: &str = "potluck-ca";
/// Members' certificates last this long unless `--member-cert-validity-secs` says otherwise.
pub const DEFAULT_MEMBER_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// The operator's own certificate: short, since it is only ever held in memory.
const OPERATOR_VALIDITY: Duration = Duration::from_secs(86_400);
/// How often members' StorageNodes are looked at for new CSRs and revocations.
const PASS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Kubernetes API: {0}; check the operator's RBAC (deploy/10-rbac.yaml) for secrets and storagenodes/status")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("Secret {namespace}/{CA_SECRET} has no {key}: a CA Secret needs tls.crt and tls.key (PEM), as `kubectl create secret tls` makes")]
    MissingKey {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{CA_SECRET}: {key} is not UTF-8 PEM")]
    NotPem {
        namespace: String,
        key: &'static str,
    },
}

/// When a certificate valid from `issued` until `not_after` should be replaced: after 2/3 of
/// its life, leaving a third for retries when the issuer is away.
pub fn renew_at(issued: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life * 2 / 3
}

/// Reads the CA Secret, or makes a new CA and stores it when there is none.
pub async fn ensure_ca(client: &Client, namespace: &str) -> Result<ClusterCa, CertError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        tracing::info!(secret = %format!("{namespace}/{CA_SECRET}"), "using the cluster CA from its Secret");
        return ca_from_secret(&secret, namespace);
    }
    let ca = ClusterCa::generate(namespace)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "potluck-operator".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(ca.key_pem().as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{CA_SECRET}"), "made a new cluster CA");
            Ok(ca)
        }
        // Another replica made one first: use theirs, so there is one CA.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(CA_SECRET).await?;
            ca_from_secret(&secret, namespace)
        }
        Err(e) => Err(e.into()),
    }
}

fn ca_from_secret(secret: &Secret, namespace: &str) -> Result<ClusterCa, CertError> {
    let field = |key: &'static str| -> Result<String, CertError> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| CertError::MissingKey {
                namespace: namespace.into(),
                key,
            })?;
        String::from_utf8(bytes.0.clone()).map_err(|_| CertError::NotPem {
            namespace: namespace.into(),
            key,
        })
    };
    Ok(ClusterCa::from_pem(&field("tls.crt")?, &field("tls.key")?)?)
}

/// What to do about one member's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Sign this CSR (its BLAKE3 hex is the second field).
    Sign {
        csr: String,
        hash: String,
    },
    /// Add this serial (hex) to the member's revoked ones.
    Revoke {
        serial: String,
    },
}

/// BLAKE3 (hex) of a CSR: how the agent recognises the answer to its own request.
pub fn csr_hash(csr: &str) -> String {
    blake3::hash(csr.as_bytes()).to_hex().to_string()
}

pub fn decide(node: &StorageNode) -> Decision {
    let tls = node
        .status
        .as_ref()
        .and_then(|s| s.tls.clone())
        .unwrap_or_default();
    if node.spec.revoke_certificate {
        return match tls.serial {
            Some(serial) if !tls.revoked_serials.contains(&serial) => Decision::Revoke { serial },
            _ => Decision::Nothing,
        };
    }
    match tls.csr {
        Some(csr) if tls.signed_csr.as_deref() != Some(csr_hash(&csr).as_str()) => {
            let hash = csr_hash(&csr);
            Decision::Sign { csr, hash }
        }
        _ => Decision::Nothing,
    }
}

/// The IP of `host:port` when the host is an address (a name gets no IP in the certificate:
/// peers check the member name, not the address).
pub fn endpoint_ips(endpoint: &str) -> Vec<IpAddr> {
    endpoint
        .parse::<SocketAddr>()
        .map(|a| vec![a.ip()])
        .unwrap_or_default()
}

/// Serials revoked anywhere in the fleet, sorted, as the map lists them.
pub fn revoked_serials(nodes: &[StorageNode]) -> Vec<Bytes> {
    let mut serials: Vec<Bytes> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.tls.as_ref())
        .flat_map(|t| t.revoked_serials.iter())
        .filter_map(|s| hex::decode(s).ok())
        .map(Bytes::from)
        .collect();
    serials.sort();
    serials.dedup();
    serials
}

/// Puts the revoked serials into the map `next_map` built, minting one more epoch when that
/// is all that changed (agents apply only newer epochs).
pub fn with_revoked_certificates(
    mut next: ClusterMap,
    previous: Option<&ClusterMap>,
    revoked: Vec<Bytes>,
    now_unix_ms: u64,
) -> Result<ClusterMap, MapError> {
    if next.revoked_certificates == revoked {
        return Ok(next);
    }
    next.revoked_certificates = revoked;
    crate::cluster_map::next_epoch_if_reused(next, previous, now_unix_ms)
}

/// The CA and the operator's current client certificate.
pub struct Certificates {
    ca: ClusterCa,
    member_validity: Duration,
    operator: RwLock<(Material, SystemTime)>,
}

impl Certificates {
    /// Loads (or makes) the CA and issues the operator's certificate.
    pub async fn load(
        client: &Client,
        namespace: &str,
        member_validity: Duration,
    ) -> Result<Arc<Self>, CertError> {
        let ca = ensure_ca(client, namespace).await?;
        let operator = issue_operator(&ca)?;
        Ok(Arc::new(Self {
            ca,
            member_validity,
            operator: RwLock::new(operator),
        }))
    }

    /// The operator's client certificate, key and the CA, for calling agents over mutual TLS.
    pub fn operator_material(&self) -> Material {
        self.operator
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// How long the certificates it issues to members and Buckets last.
    pub fn validity(&self) -> Duration {
        self.member_validity
    }

    /// Signs members' CSRs, records revocations, and renews the operator's certificate
    /// (handing each new one to `renewed`), until the task is dropped.
    pub async fn run(self: Arc<Self>, client: Client, renewed: impl Fn(Material) + Send) {
        let api = Api::<StorageNode>::all(client);
        // CSRs already refused, so a bad one is logged once, not every pass.
        let mut refused: HashSet<String> = HashSet::new();
        let mut last_error: Option<Instant> = None;
        loop {
            if SystemTime::now() >= self.operator_renew_at() {
                match issue_operator(&self.ca) {
                    Ok(fresh) => {
                        let material = fresh.0.clone();
                        *self
                            .operator
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                        tracing::info!("renewed the operator's client certificate");
                        renewed(material);
                    }
                    Err(e) => {
                        tracing::warn!("cannot renew the operator's certificate, retrying: {e}")
                    }
                }
            }
            if let Err(e) = self.pass(&api, &mut refused).await {
                // One line per minute at most while the API server is away.
                if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("certificate pass failed, retrying every {PASS_EVERY:?}: {e}");
                    last_error = Some(Instant::now());
                }
            }
            tokio::time::sleep(PASS_EVERY).await;
        }
    }

    fn operator_renew_at(&self) -> SystemTime {
        self.operator
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }

    async fn pass(
        &self,
        api: &Api<StorageNode>,
        refused: &mut HashSet<String>,
    ) -> Result<(), CertError> {
        for node in api.list(&ListParams::default()).await?.items {
            let id = node.name_any();
            let patch = match decide(&node) {
                Decision::Nothing => continue,
                Decision::Sign { hash, .. } if refused.contains(&hash) => continue,
                Decision::Sign { csr, hash } => {
                    let subject = Subject::Member {
                        id: id.clone(),
                        ips: endpoint_ips(&node.spec.endpoint),
                    };
                    let issued = match self.ca.sign_csr(&csr, &subject, self.member_validity) {
                        Ok(issued) => issued,
                        Err(e) => {
                            tracing::warn!(member = %id, "refusing the member's CSR: {e}");
                            refused.insert(hash);
                            continue;
                        }
                    };
                    let serial = serial_hex(&issued.serial);
                    let not_after = Timestamp::try_from(issued.not_after).map(Time).ok();
                    tracing::info!(member = %id, %serial, "signed the member's certificate");
                    serde_json::json!({ "status": { "tls": {
                        "signedCsr": hash,
                        "certificate": issued.cert_pem,
                        "caCertificate": self.ca.cert_pem(),
                        "serial": serial,
                        "notAfter": not_after,
                    }}})
                }
                Decision::Revoke { serial } => {
                    let mut revoked = node
                        .status
                        .as_ref()
                        .and_then(|s| s.tls.as_ref())
                        .map(|t| t.revoked_serials.clone())
                        .unwrap_or_default();
                    revoked.push(serial.clone());
                    tracing::warn!(member = %id, %serial, "revoked the member's certificate; agents will refuse it");
                    serde_json::json!({ "status": { "tls": { "revokedSerials": revoked } } })
                }
            };
            api.patch_status(
                &id,
                &PatchParams::apply(crate::controller::MANAGER),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Ok(())
    }
}

fn issue_operator(ca: &ClusterCa) -> Result<(Material, SystemTime), TlsError> {
    let now = SystemTime::now();
    let (material, issued) = ca.issue_material(&Subject::Operator, OPERATOR_VALIDITY)?;
    Ok((material, renew_at(now, issued.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_api::node::MemberCertificate;
    use potluck_api::{StorageNodeSpec, StorageNodeStatus};

    fn node(revoke: bool, tls: Option<MemberCertificate>) -> StorageNode {
        let mut n = StorageNode::new(
            "m1",
            StorageNodeSpec {
                endpoint: "10.0.0.5:7000".into(),
                capacity_bytes: 1,
                failure_domain: "d".into(),
                drain: false,
                revoke_certificate: revoke,
            },
        );
        n.status = Some(StorageNodeStatus {
            tls,
            ..Default::default()
        });
        n
    }

    #[test]
    fn signs_each_new_csr_once() {
        assert_eq!(decide(&node(false, None)), Decision::Nothing);
        let asked = MemberCertificate {
            csr: Some("CSR".into()),
            ..Default::default()
        };
        let hash = csr_hash("CSR");
        assert_eq!(
            decide(&node(false, Some(asked.clone()))),
            Decision::Sign {
                csr: "CSR".into(),
                hash: hash.clone()
            }
        );
        let answered = MemberCertificate {
            signed_csr: Some(hash),
            ..asked
        };
        assert_eq!(decide(&node(false, Some(answered))), Decision::Nothing);
    }

    #[test]
    fn revoked_member_gets_its_serial_listed_and_nothing_signed() {
        let tls = MemberCertificate {
            csr: Some("NEW CSR".into()),
            serial: Some("0abc".into()),
            ..Default::default()
        };
        assert_eq!(
            decide(&node(true, Some(tls.clone()))),
            Decision::Revoke {
                serial: "0abc".into()
            }
        );
        let listed = MemberCertificate {
            revoked_serials: vec!["0abc".into()],
            ..tls
        };
        let n = node(true, Some(listed));
        assert_eq!(decide(&n), Decision::Nothing);
        assert_eq!(
            revoked_serials(&[n]),
            vec![Bytes::from_static(&[0x0a, 0xbc])]
        );
    }

    #[test]
    fn a_new_revocation_mints_an_epoch_only_when_the_map_was_reused() {
        let prev = ClusterMap {
            epoch: 4,
            ..Default::default()
        };
        let same = with_revoked_certificates(prev.clone(), Some(&prev), vec![], 9).unwrap();
        assert_eq!(same.epoch, 4);
        let more =
            with_revoked_certificates(prev.clone(), Some(&prev), vec![Bytes::from_static(&[1])], 9)
                .unwrap();
        assert_eq!((more.epoch, more.revoked_certificates.len()), (5, 1));
        let fresh = ClusterMap {
            epoch: 5,
            ..Default::default()
        };
        assert_eq!(
            with_revoked_certificates(fresh, Some(&prev), vec![Bytes::from_static(&[1])], 9)
                .unwrap()
                .epoch,
            5
        );
    }

    #[test]
    fn renewal_after_two_thirds_and_ips_from_address_endpoints() {
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(300)),
            t0 + Duration::from_secs(200)
        );
        assert_eq!(
            endpoint_ips("10.0.0.5:7000"),
            vec![IpAddr::from([10, 0, 0, 5])]
        );
        assert_eq!(endpoint_ips("[fd00::5]:7000").len(), 1);
        assert!(endpoint_ips("node-1.example:7000").is_empty());
    }

    #[test]
    fn operator_material_is_an_operator_certificate_of_the_ca() {
        let ca = ClusterCa::generate("t").unwrap();
        let (material, _) = issue_operator(&ca).unwrap();
        assert_eq!(material.ca_pem, ca.cert_pem());
        let parsed = material.parse().unwrap();
        let who = potluck_tls::PeerIdentity::from_der(&parsed.chain[0]).unwrap();
        assert_eq!(who.role, potluck_tls::Role::Operator);
    }
}
