//! The operator's one job: decide who stores what, and publish it as versioned cluster maps.
//!
//! The deciding parts are pure and tested without a Kubernetes API server:
//! [`cluster_map`] (epochs and placement), [`membership`] (phases from Leases) and
//! [`pool_status`] (conditions). [`controller`] feeds them from the API server, persists the
//! map through [`map_store`] before any agent sees it, and delivers it with [`agents`].

pub mod agents;
pub mod bucket_controller;
pub mod bucket_purge;
pub mod buckets;
pub mod certificates;
pub mod client_certificates;
pub mod cluster_map;
pub mod controller;
pub mod map_store;
pub mod membership;
pub mod metrics;
pub mod pool_status;
pub mod recovering;
pub mod shares;
