//! The Repository controller: reports whether its Domain serves it (and if not, why, in
//! words a person can act on), lists its endpoints, and carries out `deletionPolicy`. Does
//! I/O (the Kubernetes API, and object storage on deletion).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use wharf_api::{DeletionPolicy, Domain, Repository, RepositoryStatus, find_condition, is_ready};

use super::{
    Context, Error, FINALIZER, RESYNC, WAITING_RECHECK, announce_transition, display_name, now, repository_domain,
    write_status,
};
use crate::conditions::{Outcome, conditions};
use crate::render::{self, ChildNames};
use crate::resolve::{Rejection, Verdict, key_of, resolve};

/// Reconciles one Repository.
pub async fn reconcile(repository: Arc<Repository>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let name = display_name(repository.as_ref());
    let api: Api<Repository> = Api::namespaced(ctx.client.clone(), &repository.namespace().unwrap_or_default());
    let action = finalizer(&api, FINALIZER, repository, |event| async {
        match event {
            FinalizerEvent::Apply(repository) => apply_repository(&repository, &ctx).await,
            FinalizerEvent::Cleanup(repository) => cleanup(&repository, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer { kind: "Repository", name: name.clone(), source: Box::new(source) })?;
    ctx.succeeded(&format!("Repository/{name}"));
    Ok(action)
}

/// The verdict of the Repository's Domain about it, as the Domain controller computes it.
fn verdict(ctx: &Context, domain: &Domain, repository: &Repository) -> Verdict {
    let repositories = ctx.repositories.state();
    let policies = ctx.policies.state();
    // The cache may lag behind the object being reconciled: judge the object itself.
    let key = key_of(&repository.metadata);
    let others = repositories.iter().map(AsRef::as_ref).filter(|other| key_of(&other.metadata) != key);
    let resolution = resolve(
        domain,
        others.chain(std::iter::once(repository)),
        policies.iter().map(AsRef::as_ref),
        &ctx.namespace_labels(),
    );
    resolution.repositories.get(&key).cloned().unwrap_or_else(|| {
        Verdict::Rejected(Rejection::InvalidSpec, "spec.domainRef does not name this Domain".to_owned())
    })
}

async fn apply_repository(repository: &Repository, ctx: &Context) -> Result<Action, Error> {
    let previous = repository.status.clone().unwrap_or_default();
    let domain_ref = repository_domain(repository);
    let domain_label = format!("{}/{}", domain_ref.namespace.as_deref().unwrap_or_default(), domain_ref.name);
    let mut endpoints = BTreeMap::new();
    let mut external_endpoints = BTreeMap::new();
    let mut usage = None;
    let outcome = match ctx.domains.get(&domain_ref) {
        None if !ctx.scope.includes(domain_ref.namespace.as_deref().unwrap_or_default()) => Outcome::stalled(
            "DomainNotFound",
            format!(
                "Domain {domain_label} named in spec.domainRef is outside the namespaces this operator watches ({}); \
                 point spec.domainRef at a Domain in one of them, or add its namespace to --watch-namespaces",
                ctx.scope
            ),
        ),
        None => Outcome::stalled(
            "DomainNotFound",
            format!("Domain {domain_label} named in spec.domainRef does not exist; create it or fix spec.domainRef"),
        ),
        Some(domain) if domain.metadata.deletion_timestamp.is_some() => Outcome::stalled(
            "DomainDeleting",
            format!("Domain {domain_label} is being deleted; point spec.domainRef at another Domain"),
        ),
        Some(domain) => match verdict(ctx, &domain, repository) {
            Verdict::Rejected(rejection, message) => Outcome::stalled(rejection.reason(), message),
            Verdict::Admitted => {
                endpoints = render::repository_endpoints(&domain, &repository.name_any());
                external_endpoints = render::repository_external_endpoints(&domain, &repository.name_any());
                usage = ctx.usage_of(&domain).map(|report| report.repository_status(&repository.name_any()));
                let key = key_of(&repository.metadata);
                let rendered = ctx.served_repositories(&domain).is_some_and(|served| served.contains(&key));
                let domain_status = domain.status.as_ref();
                let domain_current =
                    domain_status.and_then(|status| status.observed_generation) == domain.metadata.generation;
                let domain_ready = domain_current && domain_status.is_some_and(|status| is_ready(&status.conditions));
                if !rendered {
                    Outcome::reconciling(
                        "ConfigurationPending",
                        format!("waiting for Domain {domain_label} to render this Repository into its configuration"),
                    )
                } else if !domain_ready {
                    // The reason only: the Domain's message changes with every Repository,
                    // and copying it would rewrite every Repository's status each time.
                    let why = domain_status
                        .and_then(|status| find_condition(&status.conditions, wharf_api::CONDITION_READY))
                        .filter(|_| domain_current)
                        .map_or("not reconciled yet", |ready| ready.reason.as_str())
                        .to_owned();
                    Outcome::reconciling(
                        "DomainNotReady",
                        format!("Domain {domain_label} is not Ready ({why}); see its status"),
                    )
                } else {
                    Outcome::ready(
                        "Served",
                        format!(
                            "served by Domain {domain_label}; npm: {}",
                            endpoints.get("npm").cloned().unwrap_or_default()
                        ),
                    )
                }
            }
        },
    };
    let status = RepositoryStatus {
        conditions: conditions(&previous.conditions, &outcome, repository.metadata.generation, &now()),
        observed_generation: repository.metadata.generation,
        endpoints,
        external_endpoints,
        usage,
    };
    write_status(&ctx.client, repository, repository.status.as_ref(), &status).await?;
    announce_transition(ctx, repository, &previous.conditions, &status.conditions).await;
    let waiting = outcome.phase == crate::conditions::Phase::Reconciling;
    Ok(Action::requeue(if waiting { WAITING_RECHECK } else { RESYNC }))
}

/// Carries out `deletionPolicy` for the Repository's stored packages.
async fn cleanup(repository: &Repository, ctx: &Context) -> Result<Action, Error> {
    let name = repository.name_any();
    if repository.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.publish(
            repository,
            EventType::Normal,
            "DataRetained",
            "Delete",
            format!("deletionPolicy Retain: the packages of Repository {name} stay in the Domain's storage; a new Repository of the same name in the Domain serves them again"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let domain_ref = repository_domain(repository);
    let Some(domain) = ctx.domains.get(&domain_ref) else {
        ctx.publish(
            repository,
            EventType::Normal,
            "NothingToDelete",
            "Delete",
            "its Domain does not exist, so there is no storage to delete from".to_owned(),
        )
        .await;
        return Ok(Action::await_change());
    };
    let mut alive = repository.clone();
    alive.metadata.deletion_timestamp = None;
    if let Verdict::Rejected(Rejection::NameConflict, message) = verdict(ctx, &domain, &alive) {
        ctx.publish(
            repository,
            EventType::Normal,
            "NothingToDelete",
            "Delete",
            format!("the stored packages under this name belong to another Repository: {message}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let storage = &domain.spec.storage;
    if storage.filesystem.is_some() {
        let names = ChildNames::of(&domain);
        ctx.publish(
            repository,
            EventType::Warning,
            "DataRetained",
            "Delete",
            format!(
                "deletionPolicy Delete cannot be carried out: Domain {}/{} stores packages on volume {}, which only its registry pods mount; the packages of {name} stay there (a Repository of the same name serves them again; deleting the Domain with deletionPolicy Delete removes the volume)",
                domain.namespace().unwrap_or_default(),
                domain.name_any(),
                names.data_volume_claim
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let note = if storage.memory.is_some() {
        "deletionPolicy Delete: in-memory storage holds nothing the operator can reach; the registry stops serving the Repository".to_owned()
    } else {
        let prefix = wharf_storage::keys::repository(&name);
        let deleted = super::storage::purge_domain(ctx, &domain, Some(&prefix)).await?;
        format!("deletionPolicy Delete: deleted {deleted} stored objects of Repository {name}")
    };
    ctx.publish(repository, EventType::Normal, "DataDeleted", "Delete", note).await;
    Ok(Action::await_change())
}
