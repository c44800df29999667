//! Reaching other members: one HTTP/2 channel per peer endpoint, tuned for bulk
//! shard traffic, and the framing of shards into gRPC messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use potluck_proto::v1 as pb;
use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::shard_service_client::ShardServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Largest data frame in one gRPC message; shards above it are streamed.
pub const FRAME_BYTES: usize = 4 << 20;
/// Message size limit on every client and server (frames plus headers).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
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

    fn channel(&self, member: &str, addr: &str) -> Result<Channel, PeerError> {
        let mut map = match self.channels.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = endpoint(format!("http://{addr}"))
                    .map_err(|e| PeerError::BadEndpoint {
                        member: member.to_string(),
                        endpoint: addr.to_string(),
                        detail: e.to_string(),
                    })?
                    .connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(channel)
    }
}

/// Splits a shard into PutShard messages; slices share the buffer, no copies.
pub fn put_shard_messages(
    epoch: u64,
    header: pb::ShardHeader,
    data: Bytes,
) -> Vec<pb::PutShardRequest> {
    let mut msgs = Vec::with_capacity(1 + data.len() / FRAME_BYTES);
    let mut header = Some(header);
    let mut off = 0;
    loop {
        let end = (off + FRAME_BYTES).min(data.len());
        msgs.push(pb::PutShardRequest {
            epoch,
            header: header.take(),
            data: data.slice(off..end),
        });
        off = end;
        if off >= data.len() {
            return msgs;
        }
    }
}

/// Gathers frames into one shard; a single frame is kept as is (no copy).
pub struct FrameCollector {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    limit: u64,
}

impl FrameCollector {
    pub fn new(expected_len: u64) -> Self {
        Self {
            first: None,
            rest: None,
            limit: expected_len,
        }
    }

    /// Adds a frame; false when the total would exceed the announced length.
    pub fn push(&mut self, frame: Bytes) -> bool {
        if self.len() + frame.len() as u64 > self.limit {
            return false;
        }
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(frame),
            (Some(first), None) => {
                let mut b = BytesMut::with_capacity(self.limit as usize);
                b.extend_from_slice(first);
                b.extend_from_slice(&frame);
                self.rest = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&frame),
        }
        true
    }

    pub fn len(&self) -> u64 {
        match (&self.first, &self.rest) {
            (_, Some(b)) => b.len() as u64,
            (Some(f), None) => f.len() as u64,
            (None, None) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(b)) => b.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join_back() {
        let data = Bytes::from(vec![3u8; FRAME_BYTES * 2 + 5]);
        let msgs = put_shard_messages(4, pb::ShardHeader::default(), data.clone());
        assert_eq!(msgs.len(), 3);
        assert!(msgs[0].header.is_some() && msgs[1].header.is_none());
        let mut c = FrameCollector::new(data.len() as u64);
        for m in msgs {
            assert!(c.push(m.data));
        }
        assert_eq!(c.finish(), data);
        let mut c = FrameCollector::new(3);
        assert!(c.push(Bytes::from_static(b"ab")));
        assert!(!c.push(Bytes::from_static(b"cd")));
        let empty = put_shard_messages(1, pb::ShardHeader::default(), Bytes::new());
        assert_eq!(empty.len(), 1);
    }
}
