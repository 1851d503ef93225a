//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas only one reconciles. Does I/O (the Kubernetes API).
//!
//! The protocol is the one client-go's elector follows, so tools that read Leases (kubectl,
//! dashboards) understand it: the holder writes `renewTime` every renew interval; anyone may
//! take the Lease once it has gone unchanged for `leaseDurationSeconds` or the holder is empty;
//! every write carries the `resourceVersion` it read, so of two candidates writing at once the
//! apiserver lets one win and refuses the other with a conflict.
//!
//! Like client-go, a candidate measures "unchanged" on its own clock, from when it first saw the
//! Lease's current `resourceVersion`, never by comparing the holder's `renewTime` with its own
//! clock: nodes' clocks differ, and a candidate whose clock runs ahead would otherwise take a
//! Lease that is still held. The price: a candidate that starts next to a Lease its holder
//! abandoned long ago waits one lease duration before taking it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use wharf_diagnostics::error_chain;

/// Talking to the apiserver about the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the Lease failed for another reason than losing a race.
    #[error("failed to {action} Lease {namespace}/{name}")]
    Api {
        /// What was attempted (`read`, `create`, `update`).
        action: &'static str,
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The Lease was taken over or could not be renewed before it expired.
    #[error("lost Lease {namespace}/{name}: {reason}")]
    Lost {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease stays valid after its last renewal; a successor waits this long after a
    /// holder that died without releasing.
    pub lease_duration: Duration,
    /// How often the holder renews, and how often a candidate tries again.
    pub renew_interval: Duration,
}

/// One candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    observed: Mutex<Option<Observed>>,
}

/// The version of the Lease a candidate last saw change, and when (on its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// What one attempt to acquire or renew found.
enum Attempt {
    /// This candidate holds the Lease now.
    Held,
    /// Someone else holds it (or won the race to write it).
    HeldBy(String),
}

impl Elector {
    /// A candidate named `identity` for Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Mutex::new(None),
        }
    }

    /// This candidate's identity (the Lease's `holderIdentity` while it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "became leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, holder = %holder, "waiting for the Lease held by another replica");
                        last_holder = Some(holder);
                    }
                }
                // A candidate keeps trying through apiserver hiccups; it has nothing to lose.
                Err(error) => tracing::warn!(error = %error_chain(&error), "leader election attempt failed"),
            }
            // A released Lease is taken at once rather than at the next attempt.
            tokio::select! {
                () = tokio::time::sleep(self.timing.renew_interval) => {},
                () = self.changed() => {},
            }
        }
    }

    /// Resolves when the Lease changes after the version last read (renewed, released,
    /// deleted); never when it cannot be watched, where the caller's timer takes over.
    async fn changed(&self) {
        let version = {
            let observed = self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            observed.as_ref().and_then(|seen| seen.resource_version.clone())
        };
        if let Some(version) = version {
            // The chart's Role grants `watch` on the Lease's name only, which the apiserver
            // authorizes for a watch selecting that name.
            let params = WatchParams::default().fields(&format!("metadata.name={}", self.name)).timeout(60);
            if let Ok(stream) = self.api.watch(&params, &version).await {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)) => return,
                        Ok(WatchEvent::Bookmark(_)) => {}
                        Ok(WatchEvent::Error(_)) | Err(_) => break,
                    }
                }
            }
        }
        std::future::pending().await
    }

    /// Renews the Lease every renew interval while this candidate holds it; returns when it
    /// is lost: someone else holds it, or no renewal succeeded for a whole lease duration (by
    /// then a successor may have taken it).
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.renew_interval).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => return self.lost(format!("now held by {holder}")),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "failed to renew the Lease");
                    // Stop before the Lease can expire, not after: a successor may take it
                    // the moment it does.
                    if last_renewal.elapsed() + self.timing.renew_interval >= self.timing.lease_duration {
                        return self.lost(format!("not renewed for {:?}", last_renewal.elapsed()));
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a successor takes over at once rather than after it expires.
    /// Does nothing when another candidate holds it.
    pub async fn release(&self) -> Result<(), Error> {
        let mut lease = self.api.get(&self.name).await.map_err(|source| self.api_error("read", source))?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|source| self.api_error("update", source))?;
        tracing::info!(lease = %self.name, identity = %self.identity, "released the Lease");
        Ok(())
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, Error> {
        let now = Timestamp::now();
        let lease = match self.api.get_opt(&self.name).await.map_err(|source| self.api_error("read", source))? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held_spec(now, None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Held),
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        Ok(Attempt::HeldBy("(a concurrent creator)".to_owned()))
                    }
                    Err(source) => Err(self.api_error("create", source)),
                };
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|holder| !holder.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(self.timing.lease_duration, Duration::from_secs);
        let lapsed = {
            let mut observed = self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            has_lapsed(&mut observed, lease.metadata.resource_version.clone(), Instant::now(), duration)
        };
        if let Some(holder) = &holder
            && !ours
            && !lapsed
        {
            return Ok(Attempt::HeldBy(holder.clone()));
        }
        let (acquired, transitions) = if ours {
            (spec.acquire_time.clone(), spec.lease_transitions.unwrap_or(0))
        } else {
            (None, spec.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        let updated =
            Lease { metadata: lease.metadata.clone(), spec: Some(self.held_spec(now, acquired, transitions)) };
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(Attempt::Held),
            // Someone else wrote the Lease since we read it: they won this round.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("(a concurrent writer)".to_owned()))
            }
            Err(source) => Err(self.api_error("update", source)),
        }
    }

    fn held_spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> Error {
        Error::Api { action, namespace: self.namespace.clone(), name: self.name.clone(), source }
    }

    fn lost(&self, reason: String) -> Error {
        Error::Lost { namespace: self.namespace.clone(), name: self.name.clone(), reason }
    }
}

/// Whether a Lease has gone unchanged (same `resourceVersion`) for `duration` since this
/// candidate first saw it, at `now`. Seeing a new version restarts the count.
fn has_lapsed(
    observed: &mut Option<Observed>,
    resource_version: Option<String>,
    now: Instant,
    duration: Duration,
) -> bool {
    match observed {
        Some(seen) if seen.resource_version == resource_version => now.saturating_duration_since(seen.at) >= duration,
        _ => {
            *observed = Some(Observed { resource_version, at: now });
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn version(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn a_lease_first_seen_is_held_for_a_whole_duration() {
        let start = Instant::now();
        let mut observed = None;
        assert!(!has_lapsed(&mut observed, version("1"), start, DURATION));
        assert!(!has_lapsed(&mut observed, version("1"), start + Duration::from_secs(14), DURATION));
        assert!(has_lapsed(&mut observed, version("1"), start + DURATION, DURATION));
    }

    #[test]
    fn a_renewal_restarts_the_count() {
        let start = Instant::now();
        let mut observed = None;
        assert!(!has_lapsed(&mut observed, version("1"), start, DURATION));
        assert!(!has_lapsed(&mut observed, version("2"), start + Duration::from_secs(10), DURATION));
        assert!(!has_lapsed(&mut observed, version("2"), start + Duration::from_secs(20), DURATION));
        assert!(has_lapsed(&mut observed, version("2"), start + Duration::from_secs(25), DURATION));
    }
}
