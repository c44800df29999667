//! The Potluck node agent: one per member machine.
//!
//! Layered like the data flows: `peers` (transport) → `shard_store` (RocksDB)
//! → `codec`/`layout` (stripes) → `gateway` (object API); `gc` works beside
//! them, `cluster` holds the map every layer routes by.

pub mod auth;
pub mod buffers;
pub mod callers;
pub mod cluster;
pub mod codec;
pub mod control;
pub mod gateway;
pub mod gc;
pub mod map_catchup;
pub mod metrics;
pub mod node;
pub mod orphans;
pub mod peers;
pub mod recovery;
pub mod registration;
pub mod scrub;
pub mod server;
pub mod shard_service;
pub mod shard_store;
pub mod share_http;
pub mod shares;
pub mod throttle;
pub mod tls_bootstrap;
pub mod uploads;

// Pure decoders and checks live in `potluck-format` (fuzzed without RocksDB); re-exported
// so `crate::keys::…` and friends keep their paths.
pub use potluck_format::{keys, layout, validate};
