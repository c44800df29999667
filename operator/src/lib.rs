//! The operator's one job: decide who stores what, and publish it as versioned cluster maps.
//!
//! Membership states, pool specs and the previous map go in; the next `ClusterMap` comes out.
//! The deciding part lives in [`cluster_map`] and is pure, so every rule about epochs and
//! placement can be tested without a Kubernetes API server; the controllers that watch
//! resources and push maps to agents only feed it and deliver its output.

pub mod cluster_map;
