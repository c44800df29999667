//! Byte layout of RocksDB keys. Ordered so that a PG's shards and a bucket's
//! manifests are each one contiguous range (listing is a range scan).

use potluck_proto::v1 as pb;

/// Longest pool name; keeps keys short and length-prefixable with one byte.
pub const MAX_POOL_NAME: usize = 63;
/// More positions than this cannot be addressed by a one-byte shard index.
pub const MAX_WIDTH: u32 = 32;
pub const OBJECT_ID_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("pool name {0:?} is empty or longer than {MAX_POOL_NAME} bytes")]
    PoolName(String),
    #[error("object id must be {OBJECT_ID_LEN} bytes, got {0}")]
    ObjectId(usize),
    #[error("shard index {0} is out of range (at most {MAX_WIDTH} shards per stripe)")]
    ShardIndex(u32),
    #[error("shard id missing")]
    Missing,
    #[error("malformed key in the store ({0} bytes)")]
    Malformed(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardKey {
    pub pool: String,
    pub pg: u32,
    pub object_id: [u8; OBJECT_ID_LEN],
    pub stripe: u32,
    pub shard: u8,
}

fn check_pool(pool: &str) -> Result<(), KeyError> {
    if pool.is_empty() || pool.len() > MAX_POOL_NAME {
        return Err(KeyError::PoolName(pool.to_string()));
    }
    Ok(())
}

/// Prefix of every shard key, and every manifest key, of one pool.
pub fn pool_prefix(pool: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + pool.len() + 4);
    k.push(pool.len() as u8);
    k.extend_from_slice(pool.as_bytes());
    k
}

/// Prefix of every shard key of one PG.
pub fn pg_prefix(pool: &str, pg: u32) -> Vec<u8> {
    let mut k = pool_prefix(pool);
    k.extend_from_slice(&pg.to_be_bytes());
    k
}

impl ShardKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut k = pg_prefix(&self.pool, self.pg);
        k.extend_from_slice(&self.object_id);
        k.extend_from_slice(&self.stripe.to_be_bytes());
        k.push(self.shard);
        k
    }

    pub fn decode(b: &[u8]) -> Result<Self, KeyError> {
        let bad = || KeyError::Malformed(b.len());
        let plen = *b.first().ok_or_else(bad)? as usize;
        if b.len() != 1 + plen + 4 + OBJECT_ID_LEN + 4 + 1 {
            return Err(bad());
        }
        let pool = std::str::from_utf8(&b[1..1 + plen]).map_err(|_| bad())?;
        let rest = &b[1 + plen..];
        let pg = u32::from_be_bytes(rest[0..4].try_into().map_err(|_| bad())?);
        let object_id: [u8; OBJECT_ID_LEN] = rest[4..20].try_into().map_err(|_| bad())?;
        let stripe = u32::from_be_bytes(rest[20..24].try_into().map_err(|_| bad())?);
        Ok(Self {
            pool: pool.to_string(),
            pg,
            object_id,
            stripe,
            shard: rest[24],
        })
    }

    pub fn from_proto(id: Option<&pb::ShardId>) -> Result<Self, KeyError> {
        let id = id.ok_or(KeyError::Missing)?;
        check_pool(&id.pool)?;
        let object_id: [u8; OBJECT_ID_LEN] = id
            .object_id
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::ObjectId(id.object_id.len()))?;
        if id.shard >= MAX_WIDTH {
            return Err(KeyError::ShardIndex(id.shard));
        }
        Ok(Self {
            pool: id.pool.clone(),
            pg: id.pg,
            object_id,
            stripe: id.stripe,
            shard: id.shard as u8,
        })
    }

    pub fn to_proto(&self) -> pb::ShardId {
        pb::ShardId {
            pool: self.pool.clone(),
            pg: self.pg,
            object_id: bytes::Bytes::copy_from_slice(&self.object_id),
            stripe: self.stripe,
            shard: u32::from(self.shard),
        }
    }
}

/// Prefix of every manifest key of one bucket in one pool.
pub fn bucket_prefix(pool: &str, bucket: &str) -> Vec<u8> {
    let mut k = pool_prefix(pool);
    k.push(bucket.len() as u8);
    k.extend_from_slice(bucket.as_bytes());
    k
}

pub fn manifest_key(pool: &str, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = bucket_prefix(pool, bucket);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Key of `bucket/key` in the manifest index: the pool, then the key's hash in
/// `layout::index_order` (so a PG's manifests are one contiguous range for any power-of-two PG
/// count), then the manifest key's own tail.
pub fn manifest_index_key(pool: &str, key_hash: u32, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = pool_prefix(pool);
    k.extend_from_slice(&crate::layout::index_order(key_hash).to_be_bytes());
    k.push(bucket.len() as u8);
    k.extend_from_slice(bucket.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Where the manifest index's range of `layout::index_order` values from `order` on starts in
/// `pool` (values past the last one give the end of the pool's range).
pub fn manifest_index_from(pool: &str, hash: u64) -> Vec<u8> {
    let mut k = pool_prefix(pool);
    match u32::try_from(hash) {
        Ok(h) => k.extend_from_slice(&h.to_be_bytes()),
        // Past the last hash: the first key after the pool's whole range.
        Err(_) => return prefix_end(&k).unwrap_or_default(),
    }
    k
}

/// The manifest key an index key points at.
pub fn manifest_key_of_index(pool: &str, index_key: &[u8]) -> Option<Vec<u8>> {
    let mut k = pool_prefix(pool);
    k.extend_from_slice(index_key.get(k.len() + 4..)?);
    Some(k)
}

/// Smallest key greater than every key starting with `prefix`, for range ends.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_round_trip_and_sort_by_pg() {
        let k = ShardKey {
            pool: "default".into(),
            pg: 7,
            object_id: [9; 16],
            stripe: 300,
            shard: 5,
        };
        assert_eq!(ShardKey::decode(&k.encode()).unwrap(), k);
        assert!(k.encode().starts_with(&pg_prefix("default", 7)));
        let k8 = ShardKey { pg: 8, ..k.clone() };
        assert!(k.encode() < k8.encode());
        assert!(ShardKey::decode(&[3, b'a']).is_err());
    }

    #[test]
    fn proto_ids_are_validated() {
        let mut id = ShardKey {
            pool: "p".into(),
            pg: 0,
            object_id: [0; 16],
            stripe: 0,
            shard: 0,
        }
        .to_proto();
        assert!(ShardKey::from_proto(Some(&id)).is_ok());
        id.shard = 40;
        assert_eq!(
            ShardKey::from_proto(Some(&id)),
            Err(KeyError::ShardIndex(40))
        );
        id.shard = 1;
        id.object_id = bytes::Bytes::from_static(b"short");
        assert_eq!(ShardKey::from_proto(Some(&id)), Err(KeyError::ObjectId(5)));
        assert_eq!(ShardKey::from_proto(None), Err(KeyError::Missing));
    }

    #[test]
    fn prefix_end_bounds_a_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
