//! A PutShard stream (and a GetShard answer, which has the same shape) as a peer sends it:
//! a header checked by `check_shard_header`, then frames gathered by `FrameCollector`, with
//! the receiver's rules. Input: messages, each a 2-byte little-endian length and that many
//! bytes of protobuf.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use potluck_format::frames::{check_shard_header, put_shard_messages, FrameCollector};
use potluck_proto::v1 as pb;
use prost::Message;

/// The agent allows 64 MiB; a smaller limit runs the same checks without each input
/// reserving 64 MiB.
const MAX_SHARD: u64 = 1 << 20;

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let msgs = split(data);
    let Some((first, rest)) = msgs.split_first() else {
        return;
    };
    let Ok(first) = pb::PutShardRequest::decode(*first) else {
        return;
    };
    let Ok(h) = check_shard_header(first.header.as_ref(), MAX_SHARD) else {
        return;
    };
    assert!(h.length <= MAX_SHARD);
    let mut frames = FrameCollector::new(h.length);
    if !frames.push(first.data) {
        return;
    }
    for m in rest {
        let Ok(m) = pb::PutShardRequest::decode(*m) else {
            return;
        };
        if !frames.push(m.data) {
            return;
        }
        assert!(frames.len() <= h.length, "never more than announced");
    }
    if !frames.is_complete() {
        return;
    }
    let shard = frames.finish();
    assert_eq!(shard.len() as u64, h.length);
    // What a sender makes of the same shard gathers back to the same bytes.
    let header = pb::ShardHeader {
        id: Some(h.key.to_proto()),
        length: h.length,
        blake3: Bytes::copy_from_slice(&h.hash),
    };
    let again = put_shard_messages(1, header, shard.clone());
    let h2 = check_shard_header(again[0].header.as_ref(), MAX_SHARD).expect("own header");
    assert_eq!(h2, h);
    let mut c = FrameCollector::new(h.length);
    for m in again {
        assert!(c.push(m.data));
    }
    assert_eq!(c.finish(), shard);
});
