//! Reaching other members: one HTTP/2 channel per peer endpoint, tuned for bulk
//! shard traffic, and the framing of shards into gRPC messages.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::shard_service_client::ShardServiceClient;
use tonic::transport::{Channel, Endpoint};

// Framing of shards into messages is pure and fuzzed, so it lives in `potluck-format`.
pub use potluck_format::frames::{put_shard_messages, FrameCollector, FRAME_BYTES};
/// Message size limit on every client and server (frames plus headers).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Calls one connection may have running at once; more are refused at once with
/// RESOURCE_EXHAUSTED, so one client cannot tie up every handler. Peers share one
/// connection per pair of members: a gateway's shard writes to one peer are bounded by its
/// put memory (256 stripe buffers of at least 1 MiB by default), well below this.
pub const MAX_CALLS_PER_CONNECTION: usize = 512;
/// HTTP/2 streams one connection may open (tonic's server sets no limit of its own); above
/// the call limit, so a client that stays within it sees RESOURCE_EXHAUSTED, not a refused
/// stream.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Request headers of one call (hyper's default, stated): names travel in messages, so
/// only gRPC metadata (an authorization header) goes here.
pub const MAX_HEADER_BYTES: u32 = 16 << 10;
/// HTTP/2 flow-control windows: the 64 KiB defaults throttle a 1 MiB shard to
/// a trickle of round trips.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("member {member} is not in the cluster map (epoch {epoch})")]
    UnknownMember { member: String, epoch: u64 },
    #[error("member {member} at {endpoint}: bad endpoint: {detail}")]
    BadEndpoint {
        member: String,
        endpoint: String,
        detail: String,
    },
    #[error("member {member}: {status_code:?}: {message}")]
    Call {
        member: String,
        status_code: tonic::Code,
        message: String,
    },
    #[error("member {member} (local store): {detail}")]
    Local {
        member: String,
        status_code: tonic::Code,
        detail: String,
    },
}

impl PeerError {
    /// The gRPC code the member answered with, if it answered at all.
    pub fn member_code(&self) -> Option<tonic::Code> {
        match self {
            PeerError::Call { status_code, .. } | PeerError::Local { status_code, .. } => {
                Some(*status_code)
            }
            _ => None,
        }
    }

    pub fn call(member: &str, s: tonic::Status) -> Self {
        PeerError::Call {
            member: member.to_string(),
            status_code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// Channels by endpoint. A channel reconnects by itself, so one per peer is
/// kept for the life of the process.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    /// This member's certificate, when the fleet runs mutual TLS. Replacing it
    /// drops every channel, so the next call to each peer handshakes afresh
    /// with the renewed certificate.
    tls: Mutex<Option<potluck_tls::Material>>,
    /// What this member's own certificate says (serial, end), to stop serving
    /// once it is expired or revoked.
    own: Mutex<Option<potluck_tls::PeerIdentity>>,
}

pub fn endpoint(uri: String) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

impl Peers {
    pub fn client(
        &self,
        member: &str,
        addr: &str,
    ) -> Result<ShardServiceClient<Channel>, PeerError> {
        Ok(ShardServiceClient::new(self.channel(member, addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// AgentControl of a peer, over the same channel as its shard traffic.
    pub fn control_client(
        &self,
        member: &str,
        addr: &str,
    ) -> Result<AgentControlClient<Channel>, PeerError> {
        Ok(AgentControlClient::new(self.channel(member, addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Calls peers with `material` from now on (None: plaintext).
    pub fn set_tls(&self, material: Option<potluck_tls::Material>) {
        let own = material.as_ref().and_then(|m| {
            let parsed = m.parse().ok()?;
            potluck_tls::PeerIdentity::from_der(parsed.chain.first()?).ok()
        });
        *self.own.lock().unwrap_or_else(PoisonError::into_inner) = own;
        *self.tls.lock().unwrap_or_else(PoisonError::into_inner) = material;
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// This member's own certificate, read, when it runs TLS.
    pub fn own_identity(&self) -> Option<potluck_tls::PeerIdentity> {
        self.own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn channel(&self, member: &str, addr: &str) -> Result<Channel, PeerError> {
        let tls = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        // By member and address: over TLS the channel checks it reached that member.
        let key = format!("{member}@{addr}");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let bad = |detail: String| PeerError::BadEndpoint {
            member: member.to_string(),
            endpoint: addr.to_string(),
            detail,
        };
        let c = match &tls {
            Some(m) => endpoint(format!("https://{addr}"))
                .and_then(|e| {
                    e.tls_config(potluck_tls::client_config(
                        m,
                        &potluck_tls::member_server_name(member),
                    ))
                })
                .map_err(|e| bad(e.to_string()))?,
            None => endpoint(format!("http://{addr}")).map_err(|e| bad(e.to_string()))?,
        }
        .connect_lazy();
        map.insert(key, c.clone());
        Ok(c)
    }
}
