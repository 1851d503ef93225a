//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) built from one outcome of a
//! reconcile. Pure: `lastTransitionTime` moves only when a condition's status flips, so an
//! unchanged outcome gives byte-identical conditions and no status write.

use k8s_openapi::api::apps::v1::Deployment;
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
/// Where the registry Deployment's rollout of its current generation stands, for the
/// Domain's status: `Ready` only when every desired pod runs the current template and is
/// ready and available, and no pod of an older template is left; `Stalled` when the
/// Deployment controller gave up (its progress deadline passed); `Reconciling` otherwise.
/// Argo CD and Flux read these, so a new ReplicaSet that crash-loops never shows Healthy.
pub fn rollout(deployment: &Deployment, desired: i32, name: &str, summary: &str) -> Outcome {
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Outcome::reconciling(
            "DeploymentNotAvailable",
            format!(
                "Deployment {name} generation {generation} is not yet seen by the Deployment controller; {summary}"
            ),
        );
    }
    let deadline_passed = status.conditions.iter().flatten().find(|condition| {
        condition.type_.as_deref() == Some("Progressing")
            && condition.status.as_deref() == Some("False")
            && condition.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(condition) = deadline_passed {
        return Outcome::stalled(
            "ProgressDeadlineExceeded",
            format!(
                "the rollout of Deployment {name} stopped making progress: {}; look at its pods (kubectl describe)",
                condition.message.as_deref().unwrap_or("its progress deadline passed")
            ),
        );
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated >= desired && ready >= desired && available >= desired && total <= desired {
        return Outcome::ready("Available", summary.to_owned());
    }
    let old = (total - updated).max(0);
    let old = if old > 0 { format!(", {old} of an older template still running") } else { String::new() };
    Outcome::reconciling(
        "DeploymentNotAvailable",
        format!(
            "waiting for Deployment {name}: {updated} of {desired} registry pods updated, {available} available{old}; {summary}"
        ),
    )
}

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

    fn deployment(generation: i64, observed: i64, counts: [i32; 4], deadline_passed: bool) -> Deployment {
        use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
        let [replicas, updated, ready, available] = counts;
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                available_replicas: Some(available),
                conditions: deadline_passed.then(|| {
                    vec![DeploymentCondition {
                        type_: Some("Progressing".into()),
                        status: Some("False".into()),
                        reason: Some("ProgressDeadlineExceeded".into()),
                        message: Some("ReplicaSet \"wharf-acme-7f\" has timed out progressing.".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_only_when_the_rollout_of_the_current_generation_is_complete() {
        let phase = |d: Deployment, desired: i32| rollout(&d, desired, "ns/wharf-acme", "serving").phase;
        assert_eq!(phase(deployment(2, 2, [3, 3, 3, 3], false), 3), Phase::Ready);
        assert_eq!(phase(deployment(2, 2, [0, 0, 0, 0], false), 0), Phase::Ready, "scaled to zero");
        // One old pod still available while the new ReplicaSet crash-loops: not Ready.
        assert_eq!(phase(deployment(3, 3, [4, 1, 3, 3], false), 3), Phase::Reconciling);
        assert_eq!(phase(deployment(3, 3, [3, 3, 2, 2], false), 3), Phase::Reconciling, "one pod not ready");
        assert_eq!(phase(deployment(3, 2, [3, 3, 3, 3], false), 3), Phase::Reconciling, "generation not yet seen");
        let stalled = rollout(&deployment(3, 3, [4, 1, 3, 3], true), 3, "ns/wharf-acme", "serving");
        assert_eq!(stalled.phase, Phase::Stalled);
        assert!(stalled.message.contains("has timed out progressing"), "{}", stalled.message);
    }

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
