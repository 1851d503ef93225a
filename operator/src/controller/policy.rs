//! The UpstreamPolicy controller: reports which Domains a policy applies to, or why it
//! applies nowhere. The Domain controller renders it. Does I/O (the Kubernetes API).

use std::sync::Arc;

use kube::runtime::controller::Action;
use wharf_api::{UpstreamPolicy, UpstreamPolicyStatus};

use super::{Context, Error, RESYNC, announce_transition, display_name, now, write_status};
use crate::conditions::{Outcome, conditions};
use crate::resolve::{Verdict, key_of, resolve};

/// Reconciles one UpstreamPolicy.
pub async fn reconcile(policy: Arc<UpstreamPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let key = key_of(&policy.metadata);
    let repositories = ctx.repositories.state();
    let policies = ctx.policies.state();
    let others = policies.iter().map(AsRef::as_ref).filter(|other| key_of(&other.metadata) != key);
    let judged: Vec<&UpstreamPolicy> = others.chain(std::iter::once(policy.as_ref())).collect();
    let namespaces = ctx.namespace_labels();

    let mut attached = Vec::new();
    let mut refusal = None;
    for domain in ctx.domains.state() {
        if domain.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let resolution = resolve(&domain, repositories.iter().map(AsRef::as_ref), judged.iter().copied(), &namespaces);
        match resolution.policies.get(&key) {
            Some(Verdict::Admitted) => attached.push(display_name(domain.as_ref())),
            Some(Verdict::Rejected(rejection, message)) if refusal.is_none() => {
                refusal = Some((*rejection, format!("Domain {}: {message}", display_name(domain.as_ref()))));
            }
            Some(Verdict::Rejected(..)) | None => {}
        }
    }
    let outcome = match refusal {
        Some((rejection, message)) => Outcome::stalled(rejection.reason(), message),
        None if attached.is_empty() => {
            let targets: Vec<String> =
                policy.spec.target_refs.iter().map(|target| format!("{:?} {}", target.kind, target.name)).collect();
            Outcome::stalled(
                "TargetNotFound",
                format!(
                    "none of spec.targetRefs ({}) is an existing Domain or a Repository a Domain serves; create the target or fix spec.targetRefs",
                    targets.join(", ")
                ),
            )
        }
        None => Outcome::ready("Attached", format!("applies in Domain {}", attached.join(", "))),
    };
    let previous = policy.status.clone().unwrap_or_default();
    let status = UpstreamPolicyStatus {
        conditions: conditions(&previous.conditions, &outcome, policy.metadata.generation, &now()),
        observed_generation: policy.metadata.generation,
    };
    write_status(&ctx.client, policy.as_ref(), policy.status.as_ref(), &status).await?;
    announce_transition(&ctx, policy.as_ref(), &previous.conditions, &status.conditions).await;
    ctx.succeeded(&format!("UpstreamPolicy/{}", display_name(policy.as_ref())));
    Ok(Action::requeue(RESYNC))
}
