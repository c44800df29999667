//! Status conditions in the standard Kubernetes shape (`metav1.Condition`), and the one way
//! the operator and the agent update them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The resource does what it is for: a pool takes reads and writes, a node serves its shards.
pub const READY: &str = "Ready";
/// The resource works but with less redundancy than asked for (a pool with PGs short of shards).
pub const DEGRADED: &str = "Degraded";
/// The operator or agent is moving towards the spec (new map epoch, recovery, draining).
pub const PROGRESSING: &str = "Progressing";

/// `status` of a condition, as Kubernetes spells it.
pub fn status_str(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}

/// A condition observed now for the object's `metadata.generation`.
///
/// `reason` must be CamelCase (the API server refuses anything else); `message` is for a
/// person and should say what to do when the news is bad.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status_str(status).to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// The condition of that type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of that type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Puts `new` into `conditions`, as apimachinery's `meta.SetStatusCondition` does:
/// `lastTransitionTime` moves only when the status changes, so it keeps saying since when the
/// condition has held. Returns whether anything changed, so that callers can skip writing a
/// status that is the same.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            let mut changed = false;
            if old.status != new.status {
                old.status = new.status;
                old.last_transition_time = new.last_transition_time;
                changed = true;
            }
            if old.reason != new.reason {
                old.reason = new.reason;
                changed = true;
            }
            if old.message != new.message {
                old.message = new.message;
                changed = true;
            }
            if old.observed_generation != new.observed_generation {
                old.observed_generation = new.observed_generation;
                changed = true;
            }
            changed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            new_condition(
                READY,
                false,
                "Pending",
                "waiting for members",
                Some(1),
                at(10)
            ),
        ));
        assert_eq!(conditions.len(), 1);

        // Same status, new reason and generation: updated, but still "False since 10".
        assert!(set_condition(
            &mut conditions,
            new_condition(
                READY,
                false,
                "NotEnoughFailureDomains",
                "add members",
                Some(2),
                at(20)
            ),
        ));
        let ready = find_condition(&conditions, READY).unwrap();
        assert_eq!(ready.reason, "NotEnoughFailureDomains");
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.last_transition_time, at(10));
        assert!(!is_true(&conditions, READY));

        // Status flips: the transition time follows.
        assert!(set_condition(
            &mut conditions,
            new_condition(READY, true, "AllPgsClean", "", Some(2), at(30)),
        ));
        assert!(is_true(&conditions, READY));
        assert_eq!(conditions[0].last_transition_time, at(30));

        // Nothing new: reported as unchanged, and the time stays.
        assert!(!set_condition(
            &mut conditions,
            new_condition(READY, true, "AllPgsClean", "", Some(2), at(40)),
        ));
        assert_eq!(conditions[0].last_transition_time, at(30));
    }

    #[test]
    fn conditions_of_other_types_are_kept_apart() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            new_condition(READY, true, "AllPgsClean", "", None, at(1)),
        );
        set_condition(
            &mut conditions,
            new_condition(
                DEGRADED,
                true,
                "PgsDegraded",
                "3 PGs lack shards",
                None,
                at(2),
            ),
        );
        assert_eq!(conditions.len(), 2);
        assert!(is_true(&conditions, READY));
        assert!(is_true(&conditions, DEGRADED));
        assert!(!is_true(&conditions, PROGRESSING));
        assert_eq!(status_str(false), "False");
    }
}
