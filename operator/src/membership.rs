//! Membership: from a member's Lease and its `drain` flag to its phase.
//!
//! A member's clock and the operator's may disagree, so silence is measured on the operator's
//! clock: the moment the operator *saw* the Lease's `renewTime` change, not the time written
//! in it (client-go's leader election does the same). Only a Lease seen for the first time,
//! for instance right after an operator restart, is aged from its own `renewTime`; otherwise a
//! restart would make every long-dead member look freshly renewed and bring it back Up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use potluck_api::NodePhase;
use potluck_proto::v1::MemberState;

/// How long silence may last before a member is Down, then Out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub down_after: Duration,
    pub out_after: Duration,
}

/// The next phase of a member.
///
/// `silent_for` is how long since its Lease was last renewed (`None`: never seen one).
/// `holds_positions` says whether the current map still puts shards on it, which is what
/// separates Draining from Drained.
///
/// A member that was never in a map (Joining) does not become Down or Out by going silent:
/// nothing was placed on it, so nothing needs healing. Down members come back Up as soon as
/// they renew; Out members too, as new members would.
pub fn next_phase(
    previous: Option<NodePhase>,
    drain: bool,
    silent_for: Option<Duration>,
    timing: Timing,
    holds_positions: bool,
) -> NodePhase {
    let was_member = matches!(
        previous,
        Some(NodePhase::Up | NodePhase::Down | NodePhase::Draining)
    );
    match silent_for {
        Some(age) if age <= timing.down_after => {
            if !drain {
                NodePhase::Up
            } else if holds_positions {
                NodePhase::Draining
            } else {
                NodePhase::Drained
            }
        }
        Some(age) if age <= timing.out_after => {
            if was_member {
                NodePhase::Down
            } else {
                previous.unwrap_or(NodePhase::Joining)
            }
        }
        // Silent past outAfter, or no Lease at all.
        _ => {
            if was_member || previous == Some(NodePhase::Out) {
                if silent_for.is_some() {
                    NodePhase::Out
                } else {
                    // The Lease object itself is gone (deleted by hand?): keep the member's
                    // shards where they are rather than start moving data on that alone.
                    previous.map_or(NodePhase::Joining, |p| {
                        if p == NodePhase::Out {
                            p
                        } else {
                            NodePhase::Down
                        }
                    })
                }
            } else {
                previous.unwrap_or(NodePhase::Joining)
            }
        }
    }
}

/// The state a phase has in the cluster map; `None` for phases that are left out of it.
pub fn map_state(phase: NodePhase) -> Option<MemberState> {
    match phase {
        NodePhase::Up => Some(MemberState::Up),
        NodePhase::Down => Some(MemberState::Down),
        NodePhase::Draining => Some(MemberState::Draining),
        NodePhase::Joining | NodePhase::Out | NodePhase::Drained => None,
    }
}

/// Tracks when the operator last saw each member's Lease renewed, on its own clock.
#[derive(Debug, Default)]
pub struct RenewalClock {
    seen: HashMap<String, (Timestamp, Instant)>,
}

impl RenewalClock {
    /// Records the Lease's current `renewTime` and returns how long the member has been silent.
    pub fn observe(
        &mut self,
        member: &str,
        renew_time: Option<Timestamp>,
        wall_now: Timestamp,
        now: Instant,
    ) -> Option<Duration> {
        let Some(renewed) = renew_time else {
            self.seen.remove(member);
            return None;
        };
        match self.seen.get(member) {
            Some((last, at)) if *last == renewed => Some(now.saturating_duration_since(*at)),
            Some(_) => {
                self.seen.insert(member.to_owned(), (renewed, now));
                Some(Duration::ZERO)
            }
            None => {
                // First sight: trust the timestamp, but never into the future.
                let age = wall_now
                    .duration_since(renewed)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                let at = now.checked_sub(age).unwrap_or(now);
                self.seen.insert(member.to_owned(), (renewed, at));
                Some(age)
            }
        }
    }

    /// Forgets members that no longer exist, so the map does not grow forever.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodePhase::*;

    const T: Timing = Timing {
        down_after: Duration::from_secs(30),
        out_after: Duration::from_secs(300),
    };

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn a_silent_member_goes_down_then_out_and_returns_up() {
        assert_eq!(next_phase(Some(Joining), false, secs(1), T, false), Up);
        assert_eq!(next_phase(Some(Up), false, secs(30), T, true), Up);
        assert_eq!(next_phase(Some(Up), false, secs(31), T, true), Down);
        assert_eq!(next_phase(Some(Down), false, secs(300), T, true), Down);
        assert_eq!(next_phase(Some(Down), false, secs(301), T, true), Out);
        assert_eq!(next_phase(Some(Out), false, secs(5000), T, false), Out);
        assert_eq!(next_phase(Some(Out), false, secs(0), T, false), Up);
        assert_eq!(next_phase(Some(Down), false, secs(0), T, true), Up);
    }

    #[test]
    fn a_member_never_placed_does_not_go_down() {
        assert_eq!(next_phase(None, false, None, T, false), Joining);
        assert_eq!(
            next_phase(Some(Joining), false, secs(60), T, false),
            Joining
        );
        assert_eq!(
            next_phase(Some(Joining), false, secs(600), T, false),
            Joining
        );
    }

    #[test]
    fn drain_moves_through_draining_to_drained() {
        assert_eq!(next_phase(Some(Up), true, secs(1), T, true), Draining);
        assert_eq!(next_phase(Some(Draining), true, secs(1), T, false), Drained);
        assert_eq!(next_phase(Some(Drained), false, secs(1), T, false), Up);
        // A draining member that goes silent is Down like any other.
        assert_eq!(next_phase(Some(Draining), true, secs(40), T, true), Down);
    }

    #[test]
    fn a_deleted_lease_does_not_make_a_member_out() {
        assert_eq!(next_phase(Some(Up), false, None, T, true), Down);
        assert_eq!(next_phase(Some(Down), false, None, T, true), Down);
        assert_eq!(next_phase(Some(Out), false, None, T, false), Out);
    }

    #[test]
    fn only_live_phases_have_a_map_state() {
        assert_eq!(map_state(Up), Some(MemberState::Up));
        assert_eq!(map_state(Down), Some(MemberState::Down));
        assert_eq!(map_state(Draining), Some(MemberState::Draining));
        assert_eq!(map_state(Out), None);
        assert_eq!(map_state(Joining), None);
        assert_eq!(map_state(Drained), None);
    }

    #[test]
    fn silence_is_measured_on_the_operators_clock() {
        let mut clock = RenewalClock::default();
        let wall = Timestamp::from_second(1_000_000).unwrap();
        let t0 = Instant::now();
        // The member's clock runs an hour ahead: first sight never counts as negative age.
        let ahead = Timestamp::from_second(1_003_600).unwrap();
        assert_eq!(
            clock.observe("a", Some(ahead), wall, t0),
            Some(Duration::ZERO)
        );
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            clock.observe("a", Some(ahead), wall, later),
            Some(Duration::from_secs(20))
        );
        // A renewal (any new value) resets the silence, whatever the timestamp says.
        let renewed = Timestamp::from_second(1_003_601).unwrap();
        assert_eq!(
            clock.observe("a", Some(renewed), wall, later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_lease_first_seen_after_a_restart_keeps_its_age() {
        let mut clock = RenewalClock::default();
        let wall = Timestamp::from_second(1_000_000).unwrap();
        let old = Timestamp::from_second(1_000_000 - 600).unwrap();
        let now = Instant::now() + Duration::from_secs(1000);
        assert_eq!(
            clock.observe("dead", Some(old), wall, now),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            clock.observe("dead", Some(old), wall, now + Duration::from_secs(5)),
            Some(Duration::from_secs(605))
        );
        assert_eq!(clock.observe("gone", None, wall, now), None);
    }
}
