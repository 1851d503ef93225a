//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) built from one outcome of a
//! reconcile. Pure: `lastTransitionTime` moves only when a condition's status flips, so an
//! unchanged outcome gives byte-identical conditions and no status write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wharf_api::{CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, find_condition};

/// Where an object stands after a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Everything is in place and serving.
    Ready,
    /// Progress is being made; the controller will get there without help.
    Reconciling,
    /// Progress stopped: a person must change something (the message says what).
    Stalled,
}

/// One outcome: the phase, a CamelCase reason and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Where the object stands.
    pub phase: Phase,
    /// CamelCase reason (`Available`, `NameConflict`, …).
    pub reason: &'static str,
    /// What happened and, when stuck, what to do about it.
    pub message: String,
}

impl Outcome {
    /// The object is ready.
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Outcome { phase: Phase::Ready, reason, message: message.into() }
    }

    /// The object is progressing.
    pub fn reconciling(reason: &'static str, message: impl Into<String>) -> Self {
        Outcome { phase: Phase::Reconciling, reason, message: message.into() }
    }

    /// The object is stuck until someone changes it.
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Outcome { phase: Phase::Stalled, reason, message: message.into() }
    }
}

/// The conditions for `outcome`: `Ready` always, `Reconciling` or `Stalled` only while true
/// (kstatus reads their absence as false). Times of conditions whose status did not change
/// are kept from `previous`.
pub fn conditions(previous: &[Condition], outcome: &Outcome, generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let build = |type_: &str, status: &str| {
        let last_transition_time = match find_condition(previous, type_) {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => now.clone(),
        };
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: outcome.reason.to_owned(),
            message: outcome.message.clone(),
            observed_generation: generation,
            last_transition_time,
        }
    };
    let mut conditions = vec![build(CONDITION_READY, if outcome.phase == Phase::Ready { "True" } else { "False" })];
    match outcome.phase {
        Phase::Ready => {}
        Phase::Reconciling => conditions.push(build(CONDITION_RECONCILING, "True")),
        Phase::Stalled => conditions.push(build(CONDITION_STALLED, "True")),
    }
    conditions
}

/// The `(status, reason)` of `Ready`, to tell a meaningful change (worth an event) from a
/// rewrite of the same state.
pub fn ready_state(conditions: &[Condition]) -> Option<(String, String)> {
    find_condition(conditions, CONDITION_READY).map(|ready| (ready.status.clone(), ready.reason.clone()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let reconciling = Outcome::reconciling("DeploymentNotAvailable", "waiting for the registry pods");
        let first = conditions(&[], &reconciling, Some(1), &at(10));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].type_, "Ready");
        assert_eq!(first[0].status, "False");
        assert_eq!(first[1].type_, "Reconciling");
        assert_eq!(first[1].last_transition_time, at(10));

        let again = conditions(&first, &reconciling, Some(1), &at(20));
        assert_eq!(again, first, "same outcome, same conditions");

        let ready = conditions(&again, &Outcome::ready("Available", "serving"), Some(1), &at(30));
        assert_eq!(ready.len(), 1, "Reconciling is dropped once false");
        assert_eq!(ready[0].status, "True");
        assert_eq!(ready[0].last_transition_time, at(30));

        let stalled = conditions(&ready, &Outcome::stalled("InvalidSpec", "fix it"), Some(2), &at(40));
        assert_eq!(stalled[1].type_, "Stalled");
        assert_eq!(stalled[0].observed_generation, Some(2));
        assert_eq!(ready_state(&stalled), Some(("False".to_owned(), "InvalidSpec".to_owned())));
    }
}
