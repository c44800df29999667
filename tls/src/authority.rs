//! The cluster's certificate authority: one CA key signs every member's,
//! operator's and client's certificate, and trusting that one CA certificate is
//! what makes a party "of this cluster".
//!
//! Names are decided here, never taken from a request: a CSR says only which
//! public key to certify, so a member cannot ask for another member's name.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::identity::{Role, AGENT_NAME, CLIENT_SUFFIX, MEMBER_SUFFIX, OPERATOR_NAME};
use crate::material::Material;
use crate::TlsError;

/// How long a CA made by [`ClusterCa::generate`] is trusted. Rotating the CA
/// itself is not supported yet (docs/operations.md), so it is long.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Certificates start being valid this long before they are made, so a member
/// whose clock is a little behind the issuer's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(300);

/// What a new certificate is for: its names and key usages follow from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// An agent: serves every service and calls its peers.
    Member { id: String, ips: Vec<IpAddr> },
    /// The operator (or an admin acting as one): pushes maps, orders scrubs.
    Operator,
    /// A user of the ObjectService.
    Client { name: String },
}

impl Subject {
    pub fn role(&self) -> Role {
        match self {
            Subject::Member { id, .. } => Role::Member(id.clone()),
            Subject::Operator => Role::Operator,
            Subject::Client { name } => Role::Client(name.clone()),
        }
    }
}

/// A freshly issued certificate and what callers need to track it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    /// Present when the key was made here; absent when signing someone's CSR.
    pub key_pem: Option<String>,
    /// The serial a revocation names.
    pub serial: Vec<u8>,
    pub not_after: SystemTime,
}

pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for the cluster named `cluster` (the name only helps people
    /// tell CAs apart; trust comes from the key).
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "potluck");
        dn.push(DnType::CommonName, format!("potluck cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// The CA kept in a Secret or on disk.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key: only for writing it where the CA is kept.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A new key and a certificate for it, valid from now for `valid_for`.
    pub fn issue(&self, subject: &Subject, valid_for: Duration) -> Result<Issued, TlsError> {
        self.issue_until(subject, SystemTime::now() + valid_for)
    }

    /// Like [`ClusterCa::issue`] with an explicit end, which may be in the
    /// past: how tests and drills make an expired certificate.
    pub fn issue_until(
        &self,
        subject: &Subject,
        not_after: SystemTime,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let mut issued = self.sign(subject, &key, not_after)?;
        issued.key_pem = Some(key.serialize_pem());
        Ok(issued)
    }

    /// The files a party needs: the CA to trust, its certificate and its key.
    pub fn issue_material(
        &self,
        subject: &Subject,
        valid_for: Duration,
    ) -> Result<(Material, Issued), TlsError> {
        self.material_until(subject, SystemTime::now() + valid_for)
    }

    /// [`ClusterCa::issue_material`] with an explicit end.
    pub fn material_until(
        &self,
        subject: &Subject,
        not_after: SystemTime,
    ) -> Result<(Material, Issued), TlsError> {
        let issued = self.issue_until(subject, not_after)?;
        let material = Material {
            ca_pem: self.cert_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone().unwrap_or_default(),
        };
        Ok((material, issued))
    }

    /// Certifies the key of a CSR for `subject`. Only the CSR's public key is
    /// used; names and usages are this CA's decision.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        subject: &Subject,
        valid_for: Duration,
    ) -> Result<Issued, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign(subject, &csr.public_key, SystemTime::now() + valid_for)
    }

    fn sign(
        &self,
        subject: &Subject,
        public_key: &impl rcgen::PublicKeyData,
        not_after: SystemTime,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "potluck");
        let (common_name, names, ips, usages) = match subject {
            Subject::Member { id, ips } => (
                format!("member {id}"),
                vec![format!("{id}{MEMBER_SUFFIX}"), AGENT_NAME.to_string()],
                ips.clone(),
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            Subject::Operator => (
                "operator".to_string(),
                vec![OPERATOR_NAME.to_string()],
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
            Subject::Client { name } => (
                format!("client {name}"),
                vec![format!("{name}{CLIENT_SUFFIX}")],
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
        };
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        for name in names {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !valid {
                return Err(TlsError::BadName(name));
            }
            let name = name
                .clone()
                .try_into()
                .map_err(|_| TlsError::BadName(name))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let now = SystemTime::now();
        params.not_before = (now.min(not_after) - BACKDATE).into();
        params.not_after = not_after.into();
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
            serial,
            // X.509 keeps whole seconds.
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
        })
    }
}

/// A new key and a CSR for it: what a member sends to be certified, keeping
/// its key to itself. Returns (key PEM, CSR PEM).
pub fn new_key_and_csr(member_id: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("member {member_id}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// 16 random bytes with the top bit clear: X.509 serials are positive and at
/// most 20 bytes, and random ones never collide in practice.
fn random_serial() -> Vec<u8> {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial.to_vec()
}
