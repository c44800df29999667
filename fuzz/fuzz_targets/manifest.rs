//! Manifests from peers (PutManifest, GetManifest and ListManifests answers) and from the
//! disk (the `manifests` and `gc` column families): protobuf bytes, `check_manifest`, then
//! the stripe geometry a read does with a manifest that passed. Input: one byte choosing the
//! pool code to check against and a range, then the manifest's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use potluck_format::layout::{
    check_manifest, object_created_ms, object_manifest_pg, shard_slice, stripe_pg, StripeLayout,
};
use potluck_proto::v1 as pb;
use prost::Message;

/// Stripes walked per input, so a huge (valid) manifest does not stall the fuzzer.
const MAX_WALK: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let [sel, a, b, c, d, bytes @ ..] = data else {
        return;
    };
    let Ok(m) = pb::Manifest::decode(bytes) else {
        return;
    };
    let pool = match sel % 3 {
        0 => None,
        1 => Some((m.k, m.m)),
        _ => Some((4, 2)),
    };
    if check_manifest(&m, pool).is_err() {
        return;
    }
    let id: [u8; 16] = m.object_id.as_ref().try_into().expect("checked: 16 bytes");
    let _ = object_created_ms(&id);
    let pg_count = u32::from(*sel) + 1;
    assert!(object_manifest_pg(&id, pg_count) < pg_count);
    if m.tombstone {
        return;
    }
    let width = (m.k + m.m) as usize;
    let layout = StripeLayout::new(m.size, m.k, m.chunk_size);
    assert_eq!(layout.stripe_count(), m.shard_hashes.len() as u64);
    // A client's range, clamped as GetObject does.
    let start = u64::from(u16::from_le_bytes([*a, *b])).min(m.size);
    let end = start
        .saturating_add(u64::from(u16::from_le_bytes([*c, *d])))
        .min(m.size);
    let mut covered = 0u64;
    for s in layout.stripes_for(&(start..end)).take(MAX_WALK as usize) {
        let sr = layout.stripe_range(s);
        assert!(sr.start < sr.end && sr.end <= m.size, "stripe {s}: {sr:?}");
        let shard_len = layout.shard_len(s);
        assert!((1..=m.chunk_size).contains(&shard_len));
        assert!(shard_len * u64::from(m.k) >= sr.end - sr.start);
        let rel = start.max(sr.start) - sr.start..end.min(sr.end) - sr.start;
        for i in 0..m.k {
            if let Some(r) = shard_slice(i, shard_len, &rel) {
                assert!(r.start < r.end && r.end <= shard_len);
                covered += r.end - r.start;
            }
        }
        let hashes = &m.shard_hashes[s as usize];
        for i in 0..width {
            assert!(hashes.get(i * 32..(i + 1) * 32).is_some());
        }
        let _ = m
            .missing
            .get(s as usize)
            .map(|bits| bits & (1u32 << (width - 1)));
        assert!(stripe_pg(&m.object_id, s, pg_count) < pg_count);
    }
    if layout.stripes_for(&(start..end)).count() as u64 <= MAX_WALK {
        assert_eq!(
            covered,
            end - start,
            "the shard slices cover the range exactly"
        );
    }
});
