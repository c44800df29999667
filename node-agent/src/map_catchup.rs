//! Catching up with a newer cluster map learned from peers.
//!
//! The operator pushes every new map to every member, but a push can be lost
//! (the member was restarting, the operator crashed part way). A peer's
//! request that carries a newer epoch is proof that a newer map exists, so
//! rather than route by the old one until the next push, this agent asks the
//! members it knows for their map and applies the newest one through the
//! same rule as `ApplyClusterMap`.
//!
//! Requests are many and catch-ups cost a call to every member, so at most
//! one runs at a time, and after one that found nothing newer, newer epochs
//! are ignored for a while: a caller announcing an epoch nobody has cannot
//! make this agent flood its peers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use potluck_proto::v1 as pb;

use crate::node::{now_unix_ms, Node};

/// Rounds of asking every member, for when the newer map is still on its
/// way to them (the operator pushes to all members at once).
const ROUNDS: u32 = 3;
const ROUND_PAUSE: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// After a catch-up that found no newer map, newer epochs are ignored this long.
const QUIET_AFTER_MISS: Duration = Duration::from_secs(2);

/// What one catch-up came to; the label of `potluck_agent_map_catchups_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A newer map from a peer was applied.
    Applied,
    /// The wanted epoch arrived another way (a push) before a peer's map was needed.
    NotNeeded,
    /// No member answered with a newer map that could be applied.
    NoneNewer,
    /// The current map lists no other member to ask.
    NoPeers,
}

impl Outcome {
    pub const LABELS: [&'static str; 4] = ["applied", "not_needed", "none_newer", "no_peers"];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => Self::LABELS[0],
            Outcome::NotNeeded => Self::LABELS[1],
            Outcome::NoneNewer => Self::LABELS[2],
            Outcome::NoPeers => Self::LABELS[3],
        }
    }
}

/// Held by the node; shared by every request handler.
#[derive(Debug, Default)]
pub struct CatchupState {
    in_flight: AtomicBool,
    /// Highest epoch any request announced.
    wanted: AtomicU64,
    /// Unix ms before which no new catch-up starts (after a miss).
    quiet_until_ms: AtomicU64,
}

impl CatchupState {
    /// Records `epoch`; true when the caller should start a catch-up (and
    /// then owns the in-flight slot until [`CatchupState::finish`]).
    pub fn should_start(&self, epoch: u64, applied: u64, now_ms: u64) -> bool {
        if epoch <= applied {
            return false;
        }
        self.wanted.fetch_max(epoch, Ordering::AcqRel);
        if now_ms < self.quiet_until_ms.load(Ordering::Acquire) {
            return false;
        }
        !self.in_flight.swap(true, Ordering::AcqRel)
    }

    pub fn wanted(&self) -> u64 {
        self.wanted.load(Ordering::Acquire)
    }

    /// Frees the slot; after a miss, holds off new catch-ups for a while.
    pub fn finish(&self, outcome: Outcome, now_ms: u64) {
        if matches!(outcome, Outcome::NoneNewer | Outcome::NoPeers) {
            let quiet = now_ms.saturating_add(QUIET_AFTER_MISS.as_millis() as u64);
            self.quiet_until_ms.store(quiet, Ordering::Release);
        }
        self.in_flight.store(false, Ordering::Release);
    }
}

/// Called with the epoch a peer's request carries; returns at once, the
/// catch-up (if one is due) runs in the background.
pub fn observe_epoch(node: &Arc<Node>, epoch: u64) {
    if !node
        .catchup
        .should_start(epoch, node.cluster.epoch(), now_unix_ms())
    {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        // Frees the slot even if the catch-up panics.
        struct Slot(Arc<Node>, Outcome);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.catchup.finish(self.1, now_unix_ms());
            }
        }
        let mut slot = Slot(node.clone(), Outcome::NoneNewer);
        let outcome = catch_up(&node).await;
        slot.1 = outcome;
        node.metrics
            .map_catchups
            .with_label_values(&[outcome.label()])
            .inc();
    });
}

async fn catch_up(node: &Arc<Node>) -> Outcome {
    let wanted = node.catchup.wanted();
    let mut applied_any = false;
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        let view = node.cluster.view();
        if view.epoch() >= wanted {
            return if applied_any {
                Outcome::Applied
            } else {
                Outcome::NotNeeded
            };
        }
        let peers: Vec<(String, String)> = view
            .members()
            .filter(|m| m.id != node.id)
            .map(|m| (m.id.clone(), m.endpoint.clone()))
            .collect();
        if peers.is_empty() {
            tracing::warn!(
                epoch = view.epoch(),
                wanted,
                "a peer announced a newer cluster map, but the current map names no other member to fetch it from"
            );
            return Outcome::NoPeers;
        }
        let fetches = peers
            .iter()
            .map(|(id, endpoint)| fetch_map(node, id, endpoint));
        let mut maps: Vec<pb::ClusterMap> = futures::future::join_all(fetches)
            .await
            .into_iter()
            .flatten()
            .filter(|m| m.epoch > view.epoch())
            .collect();
        maps.sort_by_key(|m| std::cmp::Reverse(m.epoch));
        for map in maps {
            let epoch = map.epoch;
            let n = node.clone();
            match tokio::task::spawn_blocking(move || n.apply_map(map)).await {
                Ok(Ok(_)) => {
                    tracing::info!(epoch, "caught up with a newer cluster map from a peer");
                    applied_any = true;
                    break;
                }
                Ok(Err(e)) => tracing::warn!(epoch, "a peer's cluster map was refused: {e}"),
                Err(e) => tracing::warn!(epoch, "applying a peer's cluster map failed: {e}"),
            }
        }
        if node.cluster.epoch() >= wanted {
            return Outcome::Applied;
        }
    }
    if applied_any {
        return Outcome::Applied;
    }
    tracing::warn!(
        epoch = node.cluster.epoch(),
        wanted,
        "a peer announced a newer cluster map, but no member had one to give"
    );
    Outcome::NoneNewer
}

async fn fetch_map(node: &Node, member: &str, endpoint: &str) -> Option<pb::ClusterMap> {
    let mut client = match node.peers.control_client(member, endpoint) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("cannot reach {member} for its map: {e}");
            return None;
        }
    };
    let mut req = tonic::Request::new(pb::GetClusterMapRequest {});
    req.set_timeout(CALL_TIMEOUT);
    match tokio::time::timeout(CALL_TIMEOUT, client.get_cluster_map(req)).await {
        Ok(Ok(resp)) => Some(resp.into_inner()),
        Ok(Err(status)) => {
            tracing::debug!("{member} did not give its map: {status}");
            None
        }
        Err(_) => {
            tracing::debug!("{member} did not give its map within {CALL_TIMEOUT:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_catch_up_at_a_time_and_quiet_after_a_miss() {
        let s = CatchupState::default();
        assert!(!s.should_start(5, 5, 0), "not newer: nothing to do");
        assert!(s.should_start(6, 5, 0));
        assert!(!s.should_start(7, 5, 0), "one already runs");
        assert_eq!(s.wanted(), 7, "the newest epoch seen is remembered");
        s.finish(Outcome::NoneNewer, 1_000);
        assert!(!s.should_start(8, 5, 1_500), "quiet after a miss");
        assert!(s.should_start(8, 5, 1_000 + QUIET_AFTER_MISS.as_millis() as u64));
        s.finish(Outcome::Applied, 5_000);
        assert!(s.should_start(9, 8, 5_000), "no quiet time after success");
    }

    #[test]
    fn outcome_labels_are_distinct() {
        let all = [
            Outcome::Applied,
            Outcome::NotNeeded,
            Outcome::NoneNewer,
            Outcome::NoPeers,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::LABELS.len());
    }
}
