//! Cluster maps from the operator (ApplyClusterMap), from peers (map catch-up) and from the
//! disk (the `meta` column family): protobuf bytes, then `MapView::new`'s validation, then
//! the lookups the gateway and recovery make in a map that passed.
//!
//! `cluster.rs` stays in the agent (it is small and others edit it) and is compiled here
//! from its source; it needs only `crate::keys`, provided below.
#![no_main]

use libfuzzer_sys::fuzz_target;
use potluck_format::keys::{self, ShardKey};
use potluck_format::layout::{manifest_pg, stripe_pg};
use potluck_proto::v1 as pb;
use prost::Message;

#[allow(dead_code)]
#[path = "../../node-agent/src/cluster.rs"]
mod cluster;

fuzz_target!(|data: &[u8]| {
    let Ok(map) = pb::ClusterMap::decode(data) else {
        return;
    };
    let applied = cluster::Cluster::new(None)
        .expect("an empty cluster")
        .apply(map.clone(), |_| Ok(()));
    let Ok(view) = cluster::MapView::new(map) else {
        assert!(applied.is_err(), "apply accepts only what MapView accepts");
        return;
    };
    for p in &view.map.pools {
        let pool = view.pool(&p.name).expect("every listed pool is found");
        assert_eq!(pool, p, "pool {:?} is listed twice", p.name);
        // Every pool's data must be addressable: its name goes into every key.
        let key = ShardKey {
            pool: p.name.clone(),
            pg: 0,
            object_id: [0; 16],
            stripe: 0,
            shard: 0,
        };
        assert_eq!(ShardKey::decode(&key.encode()).as_ref(), Ok(&key));
        assert!(p.name.len() <= keys::MAX_POOL_NAME);
        if !p.unplaceable_reason.is_empty() {
            continue;
        }
        let width = (p.k + p.m) as usize;
        for pg in [
            0,
            p.pg_count - 1,
            stripe_pg(&[1; 16], 3, p.pg_count),
            manifest_pg("bucket", "key", p.pg_count),
        ] {
            let set = &p.pgs[pg as usize].members;
            assert_eq!(set.len(), width);
            assert!(set.iter().all(|m| view.member(m).is_some()));
        }
        assert!(p.write_quorum as usize <= width);
    }
});
