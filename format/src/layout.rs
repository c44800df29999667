//! Stripe geometry and hashing to placement groups.
//!
//! All of it is a pure function of the manifest's (size, k, chunk_size) and of
//! the object id, so any agent can find any shard without asking anyone.

use std::ops::Range;

/// How an object's bytes are cut into stripes of `k` data shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeLayout {
    pub size: u64,
    pub k: u32,
    pub chunk_size: u64,
}

impl StripeLayout {
    pub fn new(size: u64, k: u32, chunk_size: u64) -> Self {
        Self {
            size,
            k,
            chunk_size,
        }
    }

    /// Data bytes a full stripe holds.
    pub fn stripe_bytes(&self) -> u64 {
        self.chunk_size * u64::from(self.k)
    }

    pub fn stripe_count(&self) -> u64 {
        self.size.div_ceil(self.stripe_bytes())
    }

    /// Object bytes covered by stripe `s`.
    pub fn stripe_range(&self, s: u64) -> Range<u64> {
        let start = s * self.stripe_bytes();
        start..(start + self.stripe_bytes()).min(self.size)
    }

    /// Shard length of stripe `s`: the chunk size, except for a short last
    /// stripe, whose shards shrink so small objects do not cost k+m full chunks.
    pub fn shard_len(&self, s: u64) -> u64 {
        let r = self.stripe_range(s);
        shard_len_for(r.end - r.start, self.k, self.chunk_size)
    }

    /// Stripes touched by the object byte range `r` (already clamped to size).
    pub fn stripes_for(&self, r: &Range<u64>) -> Range<u64> {
        if r.start >= r.end {
            return 0..0;
        }
        r.start / self.stripe_bytes()..(r.end - 1) / self.stripe_bytes() + 1
    }
}

/// Largest chunk size a pool may use (matches the operator's limit).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// Checks a manifest from a peer or the disk before any arithmetic or
/// indexing uses its fields; with `pool`, also that it fits that pool's code.
/// Tombstones carry no layout.
pub fn check_manifest(
    m: &potluck_proto::v1::Manifest,
    pool: Option<(u32, u32)>,
) -> Result<(), String> {
    if m.object_id.len() != 16 {
        return Err(format!("object id of {} bytes", m.object_id.len()));
    }
    if m.tombstone {
        return Ok(());
    }
    let width =
        m.k.checked_add(m.m)
            .filter(|w| (2..=crate::keys::MAX_WIDTH).contains(w));
    let Some(width) = width.filter(|_| m.k >= 1 && m.m >= 1) else {
        return Err(format!("code {}+{} is not usable", m.k, m.m));
    };
    if m.chunk_size == 0 || m.chunk_size > MAX_CHUNK_SIZE {
        return Err(format!("chunk size {} out of range", m.chunk_size));
    }
    if let Some((k, pm)) = pool {
        if (k, pm) != (m.k, m.m) {
            return Err(format!(
                "code {}+{} does not match the pool's {k}+{pm}",
                m.k, m.m
            ));
        }
    }
    let stripes = StripeLayout::new(m.size, m.k, m.chunk_size).stripe_count();
    if m.shard_hashes.len() as u64 != stripes
        || m.shard_hashes
            .iter()
            .any(|h| h.len() != width as usize * 32)
        || m.missing.len() as u64 > stripes
    {
        return Err(format!(
            "{} stripe hash records for {stripes} stripes of {} shards",
            m.shard_hashes.len(),
            width
        ));
    }
    Ok(())
}

/// Shard length for a stripe holding `data_len` bytes.
pub fn shard_len_for(data_len: u64, k: u32, chunk_size: u64) -> u64 {
    data_len.div_ceil(u64::from(k)).min(chunk_size)
}

/// Within one stripe whose shards are `shard_len` long, the part of data shard
/// `i` that holds stripe-relative bytes `r`; `None` if the shard holds none.
pub fn shard_slice(i: u32, shard_len: u64, r: &Range<u64>) -> Option<Range<u64>> {
    let s0 = u64::from(i) * shard_len;
    let start = r.start.max(s0);
    let end = r.end.min(s0 + shard_len);
    (start < end).then(|| start - s0..end - s0)
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// PG of stripe `s` of an object: stripes of one object scatter over the PGs,
/// so a big object spreads over the whole fleet.
pub fn stripe_pg(object_id: &[u8], stripe: u64, pg_count: u32) -> u32 {
    (hash64(&[b"stripe", object_id, &stripe.to_le_bytes()]) % u64::from(pg_count.max(1))) as u32
}

/// Where `bucket/key`'s manifest lives, independent of the PG count: also carried inside
/// every object id of the key, so a shard alone says where to look for its manifest.
pub fn key_hash(bucket: &str, key: &str) -> u32 {
    (hash64(&[b"manifest", bucket.as_bytes(), key.as_bytes()]) >> 32) as u32
}

/// PG holding the manifest of `bucket/key`. A remainder, that is the hash's low bits when the
/// PG count is a power of two: doubling the count splits each PG in two, and the planner starts
/// the new half on its parent's members, so no manifest has to move.
pub fn manifest_pg(bucket: &str, key: &str, pg_count: u32) -> u32 {
    key_hash(bucket, key) % pg_count.max(1)
}

/// The order of key hashes in the manifest index: bit-reversed, so that the hashes sharing
/// their low bits (one PG, for a power-of-two PG count) share their high bits and lie in one
/// range.
pub fn index_order(hash: u32) -> u32 {
    hash.reverse_bits()
}

/// The range `[start, end)` of [`index_order`] values holding PG `pg`'s manifests, when the PG
/// count is a power of two; `None` otherwise (the PG's manifests are then scattered).
pub fn pg_index_range(pg: u32, pg_count: u32) -> Option<(u64, u64)> {
    if !pg_count.is_power_of_two() || pg >= pg_count {
        return None;
    }
    let bits = pg_count.trailing_zeros();
    if bits == 0 {
        return Some((0, 1 << 32));
    }
    let top = u64::from(pg.reverse_bits() >> (32 - bits));
    Some((top << (32 - bits), (top + 1) << (32 - bits)))
}

/// A new object id for a version of `bucket/key` created at `now_ms`.
///
/// Layout: 6 bytes of creation time (unix ms, big-endian), 4 bytes of [`key_hash`], 6 random
/// bytes. Any member holding a stripe can then tell how old it is and which PG must hold a
/// manifest naming it, which is how stripes of puts that died half way are found without an
/// index (`recovery`). Ids stay unique: two versions of one key would have to start in the
/// same millisecond and draw the same 48 random bits.
pub fn new_object_id(bucket: &str, key: &str, now_ms: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    id[6..10].copy_from_slice(&key_hash(bucket, key).to_be_bytes());
    let tail: [u8; 6] = rand::random();
    id[10..].copy_from_slice(&tail);
    id
}

/// When the version with this id was created (unix ms), as its gateway's clock read.
pub fn object_created_ms(object_id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&object_id[..6]);
    u64::from_be_bytes(b)
}

/// The PG that must hold a manifest naming this object id.
pub fn object_manifest_pg(object_id: &[u8; 16], pg_count: u32) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&object_id[6..10]);
    u32::from_be_bytes(b) % pg_count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_the_pg_count_splits_each_manifest_pg_in_place() {
        // The planner starts PG p + n on PG p's members when n doubles, so a key must land
        // on p or p + n.
        for i in 0..1000 {
            let key = format!("k{i}");
            for n in [1u32, 2, 64, 1024] {
                let before = manifest_pg("b", &key, n);
                let after = manifest_pg("b", &key, 2 * n);
                assert!(
                    after == before || after == before + n,
                    "{key}: {before} -> {after}"
                );
            }
        }
    }

    #[test]
    fn index_ranges_hold_exactly_their_pgs_hashes() {
        for n in [1u32, 2, 64, 4096, 65_536] {
            let mut total = 0u64;
            let pgs: std::collections::BTreeSet<u32> = [0, 1, n / 2, n - 1]
                .into_iter()
                .filter(|p| *p < n)
                .collect();
            for &pg in &pgs {
                let Some((lo, hi)) = pg_index_range(pg, n) else {
                    panic!("{n} is a power of two")
                };
                for r in [lo, lo + (hi - lo) / 3, hi - 1] {
                    let hash = (r as u32).reverse_bits();
                    assert_eq!(index_order(hash) as u64, r);
                    assert_eq!(hash % n, pg, "PG {pg} of {n}");
                }
                total += hi - lo;
            }
            assert_eq!(total, pgs.len() as u64 * ((1u64 << 32) / u64::from(n)));
        }
        assert_eq!(pg_index_range(0, 6), None);
        assert_eq!(pg_index_range(4, 4), None);
    }

    #[test]
    fn object_ids_carry_their_age_and_manifest_pg() {
        let now = 1_795_000_000_123;
        let a = new_object_id("photos", "cat.jpg", now);
        let b = new_object_id("photos", "cat.jpg", now);
        assert_ne!(a, b, "two versions in one millisecond still differ");
        assert_eq!(object_created_ms(&a), now);
        for pg_count in [1, 7, 64, 4096] {
            assert_eq!(
                object_manifest_pg(&a, pg_count),
                manifest_pg("photos", "cat.jpg", pg_count)
            );
        }
        let other = new_object_id("photos", "dog.jpg", now);
        assert_ne!(a[6..10], other[6..10]);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn geometry_at_the_edges() {
        let l = StripeLayout::new(0, 4, MIB);
        assert_eq!(l.stripe_count(), 0);
        let l = StripeLayout::new(1, 4, MIB);
        assert_eq!((l.stripe_count(), l.shard_len(0)), (1, 1));
        let l = StripeLayout::new(4 * MIB, 4, MIB);
        assert_eq!((l.stripe_count(), l.shard_len(0)), (1, MIB));
        let l = StripeLayout::new(4 * MIB + 1, 4, MIB);
        assert_eq!(l.stripe_count(), 2);
        assert_eq!(l.shard_len(1), 1);
        assert_eq!(l.stripe_range(1), 4 * MIB..4 * MIB + 1);
        let l = StripeLayout::new(10, 4, MIB);
        assert_eq!(l.shard_len(0), 3);
    }

    #[test]
    fn ranges_map_to_stripes_and_shards() {
        let l = StripeLayout::new(10 * MIB, 4, MIB);
        assert_eq!(l.stripes_for(&(0..1)), 0..1);
        assert_eq!(l.stripes_for(&(4 * MIB - 1..4 * MIB + 1)), 0..2);
        assert_eq!(l.stripes_for(&(4 * MIB..8 * MIB)), 1..2);
        assert_eq!(l.stripes_for(&(5..5)), 0..0);
        assert_eq!(shard_slice(1, MIB, &(0..MIB)), None);
        assert_eq!(shard_slice(1, MIB, &(MIB - 1..MIB + 2)), Some(0..2));
        assert_eq!(shard_slice(0, MIB, &(MIB - 1..MIB + 2)), Some(MIB - 1..MIB));
    }

    #[test]
    fn malformed_manifests_are_refused_before_use() {
        let good = potluck_proto::v1::Manifest {
            object_id: bytes::Bytes::from(vec![0u8; 16]),
            k: 4,
            m: 2,
            chunk_size: MIB,
            size: 5 * MIB,
            shard_hashes: vec![bytes::Bytes::from(vec![0u8; 6 * 32]); 2],
            ..Default::default()
        };
        assert!(check_manifest(&good, Some((4, 2))).is_ok());
        assert!(check_manifest(&good, Some((5, 3))).is_err());
        for bad in [
            potluck_proto::v1::Manifest {
                k: 0,
                ..good.clone()
            },
            potluck_proto::v1::Manifest {
                chunk_size: 0,
                ..good.clone()
            },
            potluck_proto::v1::Manifest {
                m: u32::MAX,
                ..good.clone()
            },
            potluck_proto::v1::Manifest {
                size: 9 * MIB,
                ..good.clone()
            },
            potluck_proto::v1::Manifest {
                object_id: bytes::Bytes::new(),
                ..good.clone()
            },
        ] {
            assert!(check_manifest(&bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pgs_are_stable_and_spread() {
        let id = [7u8; 16];
        assert_eq!(stripe_pg(&id, 3, 128), stripe_pg(&id, 3, 128));
        let distinct: std::collections::HashSet<u32> =
            (0..64).map(|s| stripe_pg(&id, s, 128)).collect();
        assert!(
            distinct.len() > 32,
            "stripes should scatter: {}",
            distinct.len()
        );
        assert!(manifest_pg("b", "k", 128) < 128);
    }
}
