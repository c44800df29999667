//! Shard keys: raw RocksDB keys read back from the store (`ShardKey::decode`), and shard ids
//! from peers (`ShardKey::from_proto` of a protobuf `ShardId`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use potluck_format::keys::{self, ShardKey};
use potluck_proto::v1 as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = ShardKey::decode(data) {
        assert_eq!(k.encode(), data, "a decoded key encodes back to its bytes");
        assert!(data.starts_with(&keys::pg_prefix(&k.pool, k.pg)));
    }
    if let Ok(id) = pb::ShardId::decode(data) {
        if let Ok(k) = ShardKey::from_proto(Some(&id)) {
            assert!(!k.pool.is_empty() && k.pool.len() <= keys::MAX_POOL_NAME);
            assert!(u32::from(k.shard) < keys::MAX_WIDTH);
            assert_eq!(ShardKey::decode(&k.encode()).as_ref(), Ok(&k));
            assert_eq!(ShardKey::from_proto(Some(&k.to_proto())).as_ref(), Ok(&k));
        }
    }
    if let Some(end) = keys::prefix_end(data) {
        assert!(end.as_slice() > data);
    }
});
