//! Who is on the other end of a connection, read from the certificate it
//! presented. rustls has already checked the chain to the cluster CA and the
//! dates at the handshake; this reads the role the CA wrote into the names, so
//! services can refuse callers whose role may not call them.

use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// Every member's certificate carries `<id>` + this; peers check the exact
/// name of the member the map says they are calling.
pub const MEMBER_SUFFIX: &str = ".member.potluck";
/// Also on every member's certificate: what a client that knows no member ids
/// (the CLI given an address) checks.
pub const AGENT_NAME: &str = "agent.potluck";
pub const OPERATOR_NAME: &str = "operator.potluck";
pub const CLIENT_SUFFIX: &str = ".client.potluck";

/// The name a caller verifies when it means to reach member `id`.
pub fn member_server_name(id: &str) -> String {
    format!("{id}{MEMBER_SUFFIX}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Member(String),
    Operator,
    Client(String),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Member(id) => write!(f, "member {id}"),
            Role::Operator => write!(f, "the operator"),
            Role::Client(name) => write!(f, "client {name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub serial: Vec<u8>,
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads a DER certificate. The role comes from the first name that
    /// matches one of the forms the cluster CA writes.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let mut role = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                let GeneralName::DNSName(name) = name else {
                    continue;
                };
                role = if let Some(id) = name.strip_suffix(MEMBER_SUFFIX) {
                    Some(Role::Member(id.to_string()))
                } else if *name == OPERATOR_NAME {
                    Some(Role::Operator)
                } else {
                    name.strip_suffix(CLIENT_SUFFIX)
                        .map(|n| Role::Client(n.to_string()))
                };
                if role.is_some() {
                    break;
                }
            }
        }
        let role = role.ok_or_else(|| {
            TlsError::BadCertificate("it names no member, operator or client".into())
        })?;
        let not_after = cert.validity().not_after.timestamp();
        Ok(Self {
            role,
            serial: cert.raw_serial().to_vec(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
        })
    }

    /// As the handshake judges it: in whole seconds, expired once past the
    /// certificate's last second.
    pub fn expired(&self, now: SystemTime) -> bool {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        secs(now) > secs(self.not_after)
    }
}

/// Hex of a serial, as logs and the map's revocation list show it.
pub fn serial_hex(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}
