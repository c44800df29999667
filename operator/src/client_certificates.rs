//! Client certificates for Buckets. Agents speak mutual TLS only, so a user of a Bucket needs
//! a certificate of the cluster CA as well as the Bucket's key. The operator writes one into
//! the TLS Secret `<bucket>-client-tls` beside the credentials Secret, owned by the Bucket
//! (deleted with it), and replaces it after 2/3 of its life or when the CA changed.
//!
//! The certificate only opens the connection: what a caller may read or write is decided by
//! the Bucket's key, which the map takes away at once when the Bucket goes. So a certificate
//! of a deleted Bucket is not revoked; it lets its holder connect, and nothing more, until
//! it expires.
//!
//! A Secret of that name the operator did not make (no managed-by label) is left alone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use potluck_api::Bucket;
use potluck_tls::{serial_hex, ClusterCa, Subject};

use crate::buckets::{managed_labels, MANAGED_BY};
use crate::certificates::{renew_at, CertError};

pub const SECRET_SUFFIX: &str = "-client-tls";
/// Unix seconds after which the operator issues a new certificate.
pub const RENEW_AFTER: &str = "potluck.dev/renew-after";
pub const SERIAL: &str = "potluck.dev/serial";

/// The name of a Bucket's client-certificate Secret, in the Bucket's namespace.
pub fn secret_name(bucket: &Bucket) -> String {
    format!("{}{SECRET_SUFFIX}", bucket.name_any())
}

/// What to do with the Secret as it is now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Issue,
    /// Someone else's Secret of that name.
    Foreign,
}

pub fn decide(existing: Option<&Secret>, ca_pem: &str, now: SystemTime) -> Decision {
    let Some(secret) = existing else {
        return Decision::Issue;
    };
    let managed = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|m| m == crate::controller::MANAGER);
    if !managed {
        return Decision::Foreign;
    }
    let data = secret.data.clone().unwrap_or_default();
    let field = |k: &str| data.get(k).map(|v| v.0.as_slice());
    let complete = field("tls.crt").is_some() && field("tls.key").is_some();
    let same_ca = field("ca.crt") == Some(ca_pem.as_bytes());
    let due = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RENEW_AFTER))
        .and_then(|s| s.parse::<u64>().ok())
        .is_none_or(|at| UNIX_EPOCH + Duration::from_secs(at) <= now);
    if complete && same_ca && !due {
        Decision::Keep
    } else {
        Decision::Issue
    }
}

/// A fresh client certificate for `bucket` as its Secret.
pub fn issue(
    bucket: &Bucket,
    ca: &ClusterCa,
    validity: Duration,
) -> Result<(Secret, String), CertError> {
    let now = SystemTime::now();
    let (material, issued) = ca.issue_material(
        &Subject::Client {
            name: bucket.bucket_name(),
        },
        validity,
    )?;
    let renew = renew_at(now, issued.not_after)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let serial = serial_hex(&issued.serial);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(bucket)),
            namespace: bucket.namespace(),
            owner_references: bucket.controller_owner_ref(&()).map(|r| vec![r]),
            labels: Some(managed_labels()),
            annotations: Some(BTreeMap::from([
                (RENEW_AFTER.to_owned(), renew.to_string()),
                (SERIAL.to_owned(), serial.clone()),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                "ca.crt".to_owned(),
                ByteString(material.ca_pem.into_bytes()),
            ),
            (
                "tls.crt".to_owned(),
                ByteString(material.cert_pem.into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(material.key_pem.into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    Ok((secret, serial))
}

/// Makes sure the Bucket's client-certificate Secret exists and is current. Returns the
/// serial when a certificate was issued.
pub async fn ensure(
    client: &kube::Client,
    bucket: &Bucket,
    ca: &ClusterCa,
    validity: Duration,
) -> Result<Option<String>, CertError> {
    let Some(namespace) = bucket.namespace() else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let name = secret_name(bucket);
    let existing = api.get_opt(&name).await?;
    match decide(existing.as_ref(), ca.cert_pem(), SystemTime::now()) {
        Decision::Keep => Ok(None),
        Decision::Foreign => {
            tracing::warn!(%namespace, secret = %name, "a Secret not made by potluck has this \
                bucket's client-certificate name; leaving it alone (delete it to get one issued)");
            Ok(None)
        }
        Decision::Issue => {
            let (secret, serial) = issue(bucket, ca, validity)?;
            if existing.is_some() {
                // Merge: replaces the three keys and the annotations, keeps anything else.
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&secret))
                    .await?;
            } else {
                let pp = PostParams {
                    field_manager: Some(crate::controller::MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&pp, &secret).await {
                    Ok(_) => {}
                    // Another replica won the race; its certificate is as good.
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            tracing::info!(%namespace, secret = %name, %serial, "issued bucket client certificate");
            Ok(Some(serial))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_api::BucketSpec;

    fn bucket() -> Bucket {
        let mut b = Bucket::new(
            "alpha",
            BucketSpec {
                pool: "default".into(),
                bucket_name: None,
                secret_name: None,
            },
        );
        b.metadata.namespace = Some("team".into());
        b.metadata.uid = Some("uid-1".into());
        b
    }

    #[test]
    fn issues_when_missing_due_or_from_another_ca_and_keeps_a_current_one() {
        let ca = ClusterCa::generate("t").unwrap();
        let (secret, serial) = issue(&bucket(), &ca, Duration::from_secs(3000)).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("alpha-client-tls"));
        assert!(!serial.is_empty());
        let now = SystemTime::now();
        assert_eq!(decide(None, ca.cert_pem(), now), Decision::Issue);
        assert_eq!(decide(Some(&secret), ca.cert_pem(), now), Decision::Keep);
        // After 2/3 of its life.
        let later = now + Duration::from_secs(2100);
        assert_eq!(decide(Some(&secret), ca.cert_pem(), later), Decision::Issue);
        let other = ClusterCa::generate("t").unwrap();
        assert_eq!(
            decide(Some(&secret), other.cert_pem(), now),
            Decision::Issue
        );
        let mut foreign = secret.clone();
        foreign.metadata.labels = None;
        assert_eq!(
            decide(Some(&foreign), ca.cert_pem(), now),
            Decision::Foreign
        );

        // The certificate is a client's of this CA, named after the bucket.
        let data = secret.data.unwrap();
        let material = potluck_tls::Material {
            ca_pem: String::from_utf8(data["ca.crt"].0.clone()).unwrap(),
            cert_pem: String::from_utf8(data["tls.crt"].0.clone()).unwrap(),
            key_pem: String::from_utf8(data["tls.key"].0.clone()).unwrap(),
        };
        assert_eq!(material.ca_pem, ca.cert_pem());
        let parsed = material.parse().unwrap();
        let id = potluck_tls::PeerIdentity::from_der(&parsed.chain[0]).unwrap();
        assert_eq!(id.role, potluck_tls::Role::Client("alpha".into()));
        assert_eq!(serial_hex(&id.serial), serial);
    }
}
