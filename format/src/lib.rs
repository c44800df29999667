//! Everything the agent decodes or validates from untrusted bytes (the network, the disk)
//! that needs no store and no runtime: RocksDB key layout, shard headers and framing,
//! manifest checks and stripe geometry, client input checks, share tokens.
//!
//! Kept apart from `potluck-agent` so fuzz targets (`fuzz/`) can build it without RocksDB;
//! the agent re-exports each module under its old path (`crate::keys`, ...).

pub mod frames;
pub mod http_range;
pub mod keys;
pub mod layout;
pub mod share;
pub mod validate;
