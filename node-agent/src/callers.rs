//! Who may call what, decided from the certificate the caller's TLS connection
//! presented (see docs/architecture.md, "Transport security").
//!
//! The handshake already proved the certificate chains to the cluster CA and
//! is within its dates. Here, on every call:
//! - a certificate the map lists as revoked is refused, on old connections as
//!   much as new ones;
//! - one that expired while its connection stayed open is refused;
//! - the shard service (raw shards, manifests) answers members only: a client
//!   must go through a gateway, which checks its bucket and key;
//! - map pushes and scrubs come from members or the operator, never clients.
//!
//! Everything else (the object and share services, status, health) is open to
//! any party of the cluster, and the ObjectService then checks bucket keys.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use potluck_tls::{serial_hex, PeerIdentity, Role};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::node::Node;

/// What a method needs of its caller.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Member,
    MemberOrOperator,
    Anyone,
}

fn need(path: &str) -> Need {
    if path.starts_with("/potluck.v1.ShardService/") {
        Need::Member
    } else if path == "/potluck.v1.AgentControl/ApplyClusterMap"
        || path == "/potluck.v1.AgentControl/Scrub"
    {
        Need::MemberOrOperator
    } else {
        Need::Anyone
    }
}

/// Decides one call. `certs` are the caller's chain as the handshake saw it.
fn check(
    path: &str,
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    revoked: &[impl AsRef<[u8]>],
    now: SystemTime,
) -> Result<Role, Status> {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return Err(Status::unauthenticated(
            "this agent requires a client certificate of the cluster; connect with TLS and a certificate from the cluster CA (potluck --tls-dir)",
        ));
    };
    let id = PeerIdentity::from_der(leaf).map_err(|e| {
        Status::unauthenticated(format!(
            "your certificate is not one this cluster issues: {e}"
        ))
    })?;
    if revoked
        .iter()
        .any(|s| AsRef::<[u8]>::as_ref(s) == id.serial.as_slice())
    {
        return Err(Status::unauthenticated(format!(
            "certificate {} ({}) has been revoked; ask the cluster's admin for a new one",
            serial_hex(&id.serial),
            id.role
        )));
    }
    if id.expired(now) {
        return Err(Status::unauthenticated(format!(
            "certificate {} ({}) has expired; renew it and reconnect",
            serial_hex(&id.serial),
            id.role
        )));
    }
    let allowed = match need(path) {
        Need::Anyone => true,
        Need::Member => matches!(id.role, Role::Member(_)),
        Need::MemberOrOperator => matches!(id.role, Role::Member(_) | Role::Operator),
    };
    if !allowed {
        return Err(Status::permission_denied(format!(
            "{} may not call {path}; only members (and for map pushes and scrubs, the operator) may",
            id.role
        )));
    }
    Ok(id.role)
}

/// Whether this member may serve at all. Peers judge its certificate only at
/// the handshake, so connections opened before it expired or was revoked would
/// keep using it; refusing here makes such a member drop out at once, in both
/// directions (its own calls are refused by the others' [`check`]).
fn serving(
    own: Option<PeerIdentity>,
    revoked: &[impl AsRef<[u8]>],
    now: SystemTime,
) -> Result<(), Status> {
    let Some(me) = own else {
        return Ok(());
    };
    if revoked
        .iter()
        .any(|s| AsRef::<[u8]>::as_ref(s) == me.serial.as_slice())
    {
        return Err(Status::unavailable(format!(
            "this member's certificate {} has been revoked; it serves nothing until it gets a new one",
            serial_hex(&me.serial)
        )));
    }
    if me.expired(now) {
        return Err(Status::unavailable(format!(
            "this member's certificate {} has expired; it serves nothing until it is renewed",
            serial_hex(&me.serial)
        )));
    }
    Ok(())
}

/// What `/readyz` reports: a member that serves nothing (its own certificate expired or
/// was revoked) is not ready, so Kubernetes shows it and takes it out of the gateway
/// Service instead of routing clients to an agent that refuses every call.
pub fn readiness(node: &Node) -> Result<(), String> {
    let view = node.cluster.view();
    serving(
        node.peers.own_identity(),
        &view.map.revoked_certificates,
        SystemTime::now(),
    )
    .map_err(|s| s.message().to_owned())
}

/// A tower layer putting [`check`] in front of every service of a TLS agent.
/// Without TLS (`enforce` false) there are no certificates to judge and the
/// layer passes every call: such an agent trusts its network.
#[derive(Clone)]
pub struct CallerCheckLayer {
    node: Arc<Node>,
    enforce: bool,
}

impl CallerCheckLayer {
    pub fn new(node: Arc<Node>, enforce: bool) -> Self {
        Self { node, enforce }
    }
}

impl<S> tower::Layer<S> for CallerCheckLayer {
    type Service = CallerCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallerCheck {
            inner,
            node: self.node.clone(),
            enforce: self.enforce,
        }
    }
}

#[derive(Clone)]
pub struct CallerCheck<S> {
    inner: S,
    node: Arc<Node>,
    enforce: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CallerCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.enforce {
            return Box::pin(self.inner.call(req));
        }
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let view = self.node.cluster.view();
        let now = SystemTime::now();
        let verdict = serving(
            self.node.peers.own_identity(),
            &view.map.revoked_certificates,
            now,
        )
        .and_then(|()| {
            check(
                req.uri().path(),
                certs.as_deref().map(|c| c.as_slice()),
                &view.map.revoked_certificates,
                now,
            )
        });
        match verdict {
            Ok(_) => Box::pin(self.inner.call(req)),
            Err(status) => {
                self.node.metrics.refused_callers.inc();
                tracing::debug!(
                    path = req.uri().path(),
                    "refused a caller: {}",
                    status.message()
                );
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_tls::{ClusterCa, Subject};
    use std::time::Duration;

    const NONE: &[Vec<u8>] = &[];

    fn leaf(
        ca: &ClusterCa,
        subject: Subject,
        until: SystemTime,
    ) -> (Vec<tonic::transport::CertificateDer<'static>>, Vec<u8>) {
        let (m, issued) = ca.material_until(&subject, until).unwrap();
        (m.parse().unwrap().chain, issued.serial)
    }

    #[test]
    fn roles_revocation_and_expiry_decide_each_call() {
        let ca = ClusterCa::generate("t").unwrap();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let (member, member_serial) = leaf(
            &ca,
            Subject::Member {
                id: "m1".into(),
                ips: vec![],
            },
            later,
        );
        let (client, _) = leaf(&ca, Subject::Client { name: "c".into() }, later);
        let (operator, _) = leaf(&ca, Subject::Operator, later);
        let put_shard = "/potluck.v1.ShardService/PutShard";
        let apply = "/potluck.v1.AgentControl/ApplyClusterMap";
        let get = "/potluck.v1.ObjectService/GetObject";

        assert_eq!(
            check(put_shard, Some(&member), NONE, now).unwrap(),
            Role::Member("m1".into())
        );
        assert_eq!(
            check(put_shard, Some(&client), NONE, now)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check(put_shard, Some(&operator), NONE, now)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(check(apply, Some(&operator), NONE, now).is_ok());
        assert_eq!(
            check(apply, Some(&client), NONE, now).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(check(get, Some(&client), NONE, now).is_ok());
        // Upload records are raw per-member state, like shards: members only. Asking
        // about one's own upload goes through a gateway, which checks the bucket.
        for record in [
            "/potluck.v1.ShardService/PutUploadRecord",
            "/potluck.v1.ShardService/GetUploadRecord",
            "/potluck.v1.ShardService/DeleteUploadRecord",
        ] {
            assert!(check(record, Some(&member), NONE, now).is_ok());
            assert_eq!(
                check(record, Some(&client), NONE, now).unwrap_err().code(),
                tonic::Code::PermissionDenied
            );
        }
        assert!(check(
            "/potluck.v1.ObjectService/GetUpload",
            Some(&client),
            NONE,
            now
        )
        .is_ok());
        assert_eq!(
            check(get, None, NONE, now).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );

        let revoked = check(put_shard, Some(&member), &[member_serial], now).unwrap_err();
        assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
        assert!(
            revoked.message().contains("revoked"),
            "{}",
            revoked.message()
        );
        let expired = check(get, Some(&client), NONE, later + Duration::from_secs(2)).unwrap_err();
        assert!(
            expired.message().contains("expired"),
            "{}",
            expired.message()
        );
    }

    #[test]
    fn a_member_whose_own_certificate_is_expired_or_revoked_serves_nothing() {
        let ca = ClusterCa::generate("t").unwrap();
        let now = SystemTime::now();
        let until = now + Duration::from_secs(60);
        let (chain, serial) = leaf(
            &ca,
            Subject::Member {
                id: "m1".into(),
                ips: vec![],
            },
            until,
        );
        let me = PeerIdentity::from_der(&chain[0]).unwrap();
        assert!(serving(None, std::slice::from_ref(&serial), now).is_ok());
        assert!(serving(Some(me.clone()), NONE, now).is_ok());
        let revoked = serving(Some(me.clone()), &[serial], now).unwrap_err();
        assert_eq!(revoked.code(), tonic::Code::Unavailable);
        assert!(revoked.message().contains("revoked"));
        let expired = serving(Some(me), NONE, until + Duration::from_secs(2)).unwrap_err();
        assert!(expired.message().contains("expired"));
    }
}
