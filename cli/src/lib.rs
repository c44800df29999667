//! The `potluck` command's library: an ObjectService client, a local fleet
//! of real agents (also used by the e2e tests), and the small parsers and
//! printers the command line needs.

pub mod address;
pub mod client;
pub mod crypt;
pub mod crypt_stream;
pub mod dev_cluster;
pub mod exit;
pub mod fleet;
pub mod human;
pub mod progress;
pub mod rate;
pub mod resume;
pub mod sealed_object;
pub mod share;
pub mod status;
