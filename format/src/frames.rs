//! Shards on the wire: a header, then data frames of at most [`FRAME_BYTES`], in
//! `PutShard` (and the same shape in `GetShard` answers).
//!
//! Both ends take the header's length and hash from a peer, so the header is checked
//! before anything is allocated from it, and the frames are gathered without ever
//! holding more than the announced length.

use bytes::{Bytes, BytesMut};
use potluck_proto::v1 as pb;

use crate::keys::{KeyError, ShardKey};

/// Largest data frame in one gRPC message; shards above it are streamed.
pub const FRAME_BYTES: usize = 4 << 20;

/// Why a shard header from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("shard header missing: the first message must carry it")]
    Missing,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("BLAKE3 hash must be 32 bytes, got {0}")]
    Hash(usize),
    #[error("shard of {len} bytes exceeds the {max} byte limit")]
    TooLong { len: u64, max: u64 },
}

/// A shard header whose id, hash and length were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedHeader {
    pub key: ShardKey,
    pub hash: [u8; 32],
    pub length: u64,
}

/// Checks a header from a peer: a valid id, a 32-byte hash and at most `max_len` bytes, so
/// the receiver can reserve `length` bytes without trusting the sender.
pub fn check_shard_header(
    h: Option<&pb::ShardHeader>,
    max_len: u64,
) -> Result<CheckedHeader, HeaderError> {
    let h = h.ok_or(HeaderError::Missing)?;
    let key = ShardKey::from_proto(h.id.as_ref())?;
    let hash: [u8; 32] = h
        .blake3
        .as_ref()
        .try_into()
        .map_err(|_| HeaderError::Hash(h.blake3.len()))?;
    if h.length > max_len {
        return Err(HeaderError::TooLong {
            len: h.length,
            max: max_len,
        });
    }
    Ok(CheckedHeader {
        key,
        hash,
        length: h.length,
    })
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
    /// `expected_len` comes from a header: check it first ([`check_shard_header`]). Memory
    /// grows with the bytes that arrive, never beyond it.
    pub fn new(expected_len: u64) -> Self {
        Self {
            first: None,
            rest: None,
            limit: expected_len,
        }
    }

    /// Adds a frame; false when the frame is larger than [`FRAME_BYTES`] or the total would
    /// exceed the announced length.
    pub fn push(&mut self, frame: Bytes) -> bool {
        if frame.len() > FRAME_BYTES || self.len() + frame.len() as u64 > self.limit {
            return false;
        }
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(frame),
            (Some(first), None) => {
                // Sized by what arrived, not by the announced length: a peer announcing
                // 64 MiB and sending a few bytes must not make us hold 64 MiB.
                let mut b = BytesMut::with_capacity(first.len() + frame.len());
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

    /// Whether every announced byte arrived.
    pub fn is_complete(&self) -> bool {
        self.len() == self.limit
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
        assert!(c.is_complete());
        assert_eq!(c.finish(), data);
        let mut c = FrameCollector::new(3);
        assert!(c.push(Bytes::from_static(b"ab")));
        assert!(!c.push(Bytes::from_static(b"cd")));
        let empty = put_shard_messages(1, pb::ShardHeader::default(), Bytes::new());
        assert_eq!(empty.len(), 1);
        let mut c = FrameCollector::new(u64::MAX);
        assert!(!c.push(Bytes::from(vec![0u8; FRAME_BYTES + 1])));
    }

    #[test]
    fn headers_are_checked_before_use() {
        let key = ShardKey {
            pool: "p".into(),
            pg: 1,
            object_id: [2; 16],
            stripe: 3,
            shard: 4,
        };
        let mut h = pb::ShardHeader {
            id: Some(key.to_proto()),
            length: 10,
            blake3: Bytes::from(vec![7u8; 32]),
        };
        let ok = check_shard_header(Some(&h), 10).unwrap();
        assert_eq!((ok.key, ok.hash, ok.length), (key, [7; 32], 10));
        assert_eq!(
            check_shard_header(Some(&h), 9),
            Err(HeaderError::TooLong { len: 10, max: 9 })
        );
        assert_eq!(check_shard_header(None, 9), Err(HeaderError::Missing));
        h.blake3 = Bytes::from_static(b"short");
        assert_eq!(check_shard_header(Some(&h), 10), Err(HeaderError::Hash(5)));
        h.id = None;
        assert_eq!(
            check_shard_header(Some(&h), 10),
            Err(HeaderError::Key(KeyError::Missing))
        );
    }
}
