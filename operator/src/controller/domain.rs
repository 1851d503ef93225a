//! The Domain controller: renders a Domain and what it admits into the registry's
//! children, reports the registry's availability, and carries out `deletionPolicy` when the
//! Domain goes. Does I/O (the Kubernetes API, and object storage on deletion).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Client, ResourceExt};
use wharf_api::{DeletionPolicy, Domain, DomainConfig, DomainStatus};

use super::{
    Context, Error, FINALIZER, RESYNC, announce_transition, apply, delete_if_present, display_name, now, write_status,
};
use crate::conditions::{Outcome, conditions};
use crate::render::{
    self, ADMIN_TOKEN_KEY, CONFIG_KEY, ChildNames, Children, FIELD_MANAGER, SIGNING_KEY_KEY, SecretValues,
};
use crate::resolve::{Rejection, Verdict, resolve};

/// How soon a Domain waiting for a Secret someone must create is looked at again (Secrets
/// the operator does not own raise no event for it).
const SECRET_RETRY: Duration = Duration::from_secs(30);

/// Reconciles one Domain.
pub async fn reconcile(domain: Arc<Domain>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let name = display_name(domain.as_ref());
    let api: Api<Domain> = Api::namespaced(ctx.client.clone(), &domain.namespace().unwrap_or_default());
    let action = finalizer(&api, FINALIZER, domain, |event| async {
        match event {
            FinalizerEvent::Apply(domain) => apply_domain(&domain, &ctx).await,
            FinalizerEvent::Cleanup(domain) => cleanup(&domain, &ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer { kind: "Domain", name: name.clone(), source: Box::new(source) })?;
    ctx.succeeded(&format!("Domain/{name}"));
    Ok(action)
}

async fn apply_domain(domain: &Domain, ctx: &Context) -> Result<Action, Error> {
    let namespace = domain.namespace().unwrap_or_default();
    let names = ChildNames::of(domain);
    let previous = domain.status.clone().unwrap_or_default();
    let generation = domain.metadata.generation;

    // Dereference and validate.
    let repositories = ctx.repositories.state();
    let policies = ctx.policies.state();
    let resolution = resolve(
        domain,
        repositories.iter().map(AsRef::as_ref),
        policies.iter().map(AsRef::as_ref),
        &ctx.namespace_labels(),
    );
    let Some(config) = resolution.config.as_ref() else {
        let outcome = Outcome::stalled(
            "InvalidSpec",
            format!("the Domain cannot be served: {}; fix the spec", resolution.domain_problems.join("; ")),
        );
        finish(ctx, domain, &previous, &outcome).await?;
        return Ok(Action::requeue(RESYNC));
    };
    let (referenced, missing) = read_secrets(&ctx.client, &namespace, config).await?;
    if !missing.is_empty() {
        let outcome = Outcome::stalled(
            "SecretNotFound",
            format!(
                "the Domain names Secrets that do not exist in namespace {namespace}: {}; create them (see the keys each reference documents)",
                missing.join(", ")
            ),
        );
        finish(ctx, domain, &previous, &outcome).await?;
        return Ok(Action::requeue(SECRET_RETRY));
    }
    if let Some(problem) = encryption_keys_problem(config, &referenced) {
        let outcome = Outcome::stalled("EncryptionKeysInvalid", problem);
        finish(ctx, domain, &previous, &outcome).await?;
        return Ok(Action::requeue(SECRET_RETRY));
    }
    let secrets = SecretValues {
        signing_key: kept_or_generated(&ctx.client, &namespace, &names.signing_key, SIGNING_KEY_KEY).await?,
        admin_token: kept_or_generated(&ctx.client, &namespace, &names.admin_token, ADMIN_TOKEN_KEY).await?,
        referenced,
    };

    // Build.
    let children = render::render(domain, config, &secrets, &ctx.settings)?;
    let configuration_before = ctx
        .config_maps
        .get(&kube::runtime::reflector::ObjectRef::new(&names.config_map).within(&namespace))
        .and_then(|config_map| config_map.data.as_ref().and_then(|data| data.get(CONFIG_KEY).cloned()));

    // Apply. Destructured without `..`: a new child kind must be applied here.
    let Children {
        config_map,
        usage_config_map,
        signing_key,
        admin_token,
        service_account,
        role,
        role_binding,
        cluster_role_binding,
        data_volume_claim,
        deployment,
        service,
        disruption_budget,
        autoscaler,
        certificate,
        http_route,
        ingress,
        service_monitor,
        network_policy,
    } = children;
    // Secrets, identity and access before the Deployment, so new pods find them.
    apply(&ctx.client, &signing_key).await?;
    apply(&ctx.client, &admin_token).await?;
    apply(&ctx.client, &service_account).await?;
    apply(&ctx.client, &role).await?;
    apply(&ctx.client, &role_binding).await?;
    apply_cluster_role_binding(&ctx.client, &cluster_role_binding).await?;
    let configuration_after = config_map.data.as_ref().and_then(|data| data.get(CONFIG_KEY).cloned());
    apply(&ctx.client, &config_map).await?;
    apply(&ctx.client, &usage_config_map).await?;
    if let Some(claim) = &data_volume_claim {
        apply(&ctx.client, claim).await?;
    }
    match &ingress {
        Some(ingress) => {
            apply(&ctx.client, ingress).await?;
        }
        None => delete_if_present::<Ingress>(&ctx.client, &namespace, &names.registry).await?,
    }
    match &network_policy {
        Some(policy) => {
            apply(&ctx.client, policy).await?;
        }
        None => delete_if_present::<NetworkPolicy>(&ctx.client, &namespace, &names.registry).await?,
    }
    let resource = render::http_route_resource();
    let route = apply_dynamic(&ctx.client, &namespace, &names.registry, "HTTPRoute", &resource, http_route.as_ref());
    if let Some(missing) = route.await? {
        let problem = format!(
            "registry.expose.httpRoute needs the Gateway API, and this cluster serves no {missing}: install its CRDs, \
             or expose the registry with an ingress"
        );
        finish(ctx, domain, &previous, &Outcome::stalled("GatewayAPIMissing", problem)).await?;
        return Ok(Action::requeue(SECRET_RETRY));
    }
    // Only where the Prometheus Operator is installed: monitoring is never required, so a
    // failure here (an older ClusterRole without servicemonitors) does not stop the registry.
    let monitors = render::service_monitor_resource();
    let monitor = Some(&service_monitor);
    if let Err(error) =
        apply_dynamic(&ctx.client, &namespace, &names.registry, "ServiceMonitor", &monitors, monitor).await
    {
        let domain = display_name(domain);
        tracing::warn!(%domain, error = %wharf_diagnostics::error_chain(&error), "the registry's ServiceMonitor was not applied");
    }
    if let Some(problem) = apply_certificate(&ctx.client, domain, &names, certificate.as_ref()).await? {
        finish(ctx, domain, &previous, &Outcome::stalled("CertificateNotIssuable", problem)).await?;
        return Ok(Action::requeue(SECRET_RETRY));
    }
    if let Some(secret) = render::tls(domain).and_then(|tls| tls.secret_name.as_ref()) {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let found = secrets.get_metadata_opt(secret).await.map_err(|source| Error::Read {
            kind: "Secret",
            name: format!("{namespace}/{secret}"),
            source,
        })?;
        if found.is_none() {
            let problem = format!(
                "registry.tls.secretName names Secret {secret}, which does not exist in namespace {namespace}; create \
                 it (type kubernetes.io/tls, keys tls.crt and tls.key) or let cert-manager issue one (registry.tls.issuerRef)"
            );
            finish(ctx, domain, &previous, &Outcome::stalled("SecretNotFound", problem)).await?;
            return Ok(Action::requeue(SECRET_RETRY));
        }
    }
    if render::autoscaling(domain).is_some() {
        hand_replicas_to_the_autoscaler(&ctx.client, &namespace, &names.registry).await?;
    }
    let deployment = apply(&ctx.client, &deployment).await?;
    apply(&ctx.client, &service).await?;
    match &disruption_budget {
        Some(budget) => {
            apply(&ctx.client, budget).await?;
        }
        None => delete_if_present::<PodDisruptionBudget>(&ctx.client, &namespace, &names.registry).await?,
    }
    match &autoscaler {
        Some(autoscaler) => {
            apply(&ctx.client, autoscaler).await?;
        }
        None => delete_if_present::<HorizontalPodAutoscaler>(&ctx.client, &namespace, &names.registry).await?,
    }

    if configuration_before.is_some() && configuration_before != configuration_after {
        ctx.publish(
            domain,
            EventType::Normal,
            "ConfigurationChanged",
            "Render",
            format!(
                "rendered configuration {} now serves {} Repositories and {} UpstreamPolicies",
                names.config_map,
                config.repositories.len(),
                config.policies.len()
            ),
        )
        .await;
    }

    // Status, from what was applied: the autoscaler's count when it sets one.
    let replicas = match render::autoscaling(domain) {
        Some(autoscaling) => deployment.spec.replicas.unwrap_or(autoscaling.min_replicas()),
        None => render::replicas(domain),
    };
    let refused = resolution
        .repositories
        .values()
        .filter(|verdict| matches!(verdict, Verdict::Rejected(rejection, _) if *rejection != Rejection::Deleting))
        .count();
    let mut summary = format!(
        "registry {} serves {} Repositories with {} UpstreamPolicies",
        render::domain_endpoint(domain),
        config.repositories.len(),
        config.policies.len()
    );
    if refused > 0 {
        summary.push_str(&format!("; {refused} Repositories refused (see their status)"));
    }
    let outcome = if config.domain.spec.storage.filesystem.is_some() && replicas >= 2 {
        Outcome::stalled(
            "StorageNotShared",
            format!(
                "filesystem storage lives on volume {} (ReadWriteOnce), which one registry pod can use; with {replicas} replicas use object storage (s3, gcs, azure) or set replicas to 1",
                names.data_volume_claim
            ),
        )
    } else {
        crate::conditions::rollout(&deployment, replicas, &format!("{namespace}/{}", names.registry), &summary)
    };
    let status = DomainStatus {
        conditions: conditions(&previous.conditions, &outcome, generation, &now()),
        observed_generation: generation,
        endpoint: Some(render::domain_endpoint(domain)),
        usage: ctx.usage_of(domain).map(|report| report.domain_status()),
    };
    write_status(&ctx.client, domain, domain.status.as_ref(), &status).await?;
    announce_transition(ctx, domain, &previous.conditions, &status.conditions).await;
    ctx.announce_repository_actions(domain).await;
    Ok(Action::requeue(RESYNC))
}

/// Before the operator stops applying `spec.replicas` (an autoscaler sets it from now on), a
/// second field manager applies the current count: the field then outlives the operator's
/// ownership, where it would otherwise fall back to one pod until the autoscaler acts. The
/// autoscaler's own updates take the field over from there.
async fn hand_replicas_to_the_autoscaler(client: &Client, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), namespace);
    let failed = |source| Error::Apply { kind: "Deployment", name: format!("{namespace}/{name}"), source };
    let Some(live) = api.get_opt(name).await.map_err(failed)? else { return Ok(()) };
    let operator_owns_replicas = live.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(render::FIELD_MANAGER)
            && entry.fields_v1.as_ref().is_some_and(|fields| fields.0["f:spec"].get("f:replicas").is_some())
    });
    let Some(replicas) = live.spec.replicas.filter(|_| operator_owns_replicas) else { return Ok(()) };
    let handover = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}});
    api.patch(name, &PatchParams::apply(REPLICAS_HANDOVER_MANAGER), &Patch::Apply(handover)).await.map_err(failed)?;
    Ok(())
}

/// Applies cert-manager's `Certificate` for the registry, or deletes one a Domain no longer
/// asks for. `Ok(Some)` says why it cannot be: the cluster has no cert-manager.
async fn apply_certificate(
    client: &Client,
    domain: &Domain,
    names: &ChildNames,
    certificate: Option<&serde_json::Value>,
) -> Result<Option<String>, Error> {
    let namespace = domain.namespace().unwrap_or_default();
    let resource = render::certificate_resource();
    let missing = apply_dynamic(client, &namespace, &names.registry, "Certificate", &resource, certificate).await?;
    Ok(missing.map(|missing| {
        format!(
            "registry.tls.issuerRef asks cert-manager for the certificate, and this cluster serves no {missing}: \
             install cert-manager, or name a TLS Secret in registry.tls.secretName"
        )
    }))
}

/// Applies `object`, a child of kind `kind` from another project's API (`resource`), or
/// deletes the child `name` when there is none. `Ok(Some(plural.group/version))` when the
/// cluster does not serve that API (its CRDs are not installed): nothing to delete then
/// either.
async fn apply_dynamic(
    client: &Client,
    namespace: &str,
    name: &str,
    kind: &'static str,
    resource: &kube::core::ApiResource,
    object: Option<&serde_json::Value>,
) -> Result<Option<String>, Error> {
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let label = format!("{namespace}/{name}");
    let Some(object) = object else {
        return match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(source) => Err(Error::Delete { kind, name: label, source }),
        };
    };
    // An apply creates a missing object: a 404 means the kind itself is not served.
    match api.patch(name, &PatchParams::apply(render::FIELD_MANAGER).force(), &Patch::Apply(object)).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Ok(Some(format!("{}.{}/{}", resource.plural, resource.group, resource.version)))
        }
        Err(source) => Err(Error::Apply { kind, name: label, source }),
    }
}

/// The field manager that holds a Deployment's replica count between the operator and an
/// autoscaler.
const REPLICAS_HANDOVER_MANAGER: &str = "wharf-operator-replicas-handover";

/// Writes the status of a Domain that could not be rendered.
async fn finish(ctx: &Context, domain: &Domain, previous: &DomainStatus, outcome: &Outcome) -> Result<(), Error> {
    let status = DomainStatus {
        conditions: conditions(&previous.conditions, outcome, domain.metadata.generation, &now()),
        observed_generation: domain.metadata.generation,
        endpoint: previous.endpoint.clone(),
        usage: previous.usage.clone(),
    };
    write_status(&ctx.client, domain, domain.status.as_ref(), &status).await?;
    announce_transition(ctx, domain, &previous.conditions, &status.conditions).await;
    Ok(())
}

/// The contents of the Secrets the configuration refers to, and the names of those that do
/// not exist. Read on every reconcile, so a rotated credential reaches the pod template's
/// digest at the latest on the next resync.
async fn read_secrets(
    client: &Client,
    namespace: &str,
    config: &DomainConfig,
) -> Result<(ReferencedSecrets, Vec<String>), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut contents = ReferencedSecrets::new();
    let mut missing = Vec::new();
    for name in render::referenced_secrets(config) {
        let found = api.get_opt(&name).await.map_err(|source| Error::Read {
            kind: "Secret",
            name: format!("{namespace}/{name}"),
            source,
        })?;
        match found {
            Some(secret) => {
                let data = secret.data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.0)).collect();
                contents.insert(name, data);
            }
            None => missing.push(name),
        }
    }
    Ok((contents, missing))
}

/// What is wrong with the Domain's encryption key Secret, read as the registry reads it, so
/// a Secret without a usable current key stops the rollout here rather than in every pod.
fn encryption_keys_problem(config: &DomainConfig, referenced: &ReferencedSecrets) -> Option<String> {
    let name = &config.domain.spec.encryption.as_ref()?.key_secret_ref.name;
    let entries = referenced
        .get(name)?
        .iter()
        .map(|(key, value)| (key.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    let problem = wharf_storage::encryption::KeyRing::from_entries(name, entries).err()?;
    Some(format!("{problem}; fix the Secret"))
}

type ReferencedSecrets = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<u8>>>;

/// The value the operator generated earlier for `key` of Secret `name`, or a new one.
/// Never regenerated: replicas and clients rely on it staying.
async fn kept_or_generated(client: &Client, namespace: &str, name: &str, key: &str) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = api.get_opt(name).await.map_err(|source| Error::Read {
        kind: "Secret",
        name: format!("{namespace}/{name}"),
        source,
    })?;
    let kept = existing
        .and_then(|secret| secret.data)
        .and_then(|data| data.get(key).cloned())
        .and_then(|value| String::from_utf8(value.0).ok())
        .filter(|value| !value.is_empty());
    Ok(kept.unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>())))
}

async fn apply_cluster_role_binding(client: &Client, binding: &ClusterRoleBinding) -> Result<(), Error> {
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let name = binding.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(super::with_type_meta(binding)))
        .await
        .map_err(|source| Error::Apply { kind: "ClusterRoleBinding", name, source })?;
    Ok(())
}

/// Carries out `deletionPolicy` and removes what owner references cannot (the
/// cluster-scoped ClusterRoleBinding).
async fn cleanup(domain: &Domain, ctx: &Context) -> Result<Action, Error> {
    let namespace = domain.namespace().unwrap_or_default();
    let names = ChildNames::of(domain);
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    match bindings.delete(&names.cluster_role_binding, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => {
            return Err(Error::Delete { kind: "ClusterRoleBinding", name: names.cluster_role_binding, source });
        }
    }

    let storage = &domain.spec.storage;
    match domain.spec.deletion_policy {
        DeletionPolicy::Retain => {
            let kept = if storage.filesystem.is_some() {
                // The owner reference would let the garbage collector take the volume (and
                // with it the packages) along with the Domain.
                orphan_volume_claim(&ctx.client, &namespace, &names.data_volume_claim).await?;
                format!("on PersistentVolumeClaim {namespace}/{}", names.data_volume_claim)
            } else {
                "in the Domain's storage".to_owned()
            };
            ctx.publish(
                domain,
                EventType::Normal,
                "DataRetained",
                "Delete",
                format!("deletionPolicy Retain: the stored packages stay {kept}"),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            let note = if storage.filesystem.is_some() {
                delete_if_present::<PersistentVolumeClaim>(&ctx.client, &namespace, &names.data_volume_claim).await?;
                format!(
                    "deletionPolicy Delete: deleted PersistentVolumeClaim {namespace}/{} (its volume follows its reclaim policy)",
                    names.data_volume_claim
                )
            } else if storage.memory.is_some() {
                "deletionPolicy Delete: in-memory storage ends with the registry pods".to_owned()
            } else {
                let deleted = super::storage::purge_domain(ctx, domain, None).await?;
                format!("deletionPolicy Delete: deleted {deleted} objects from the Domain's storage")
            };
            ctx.publish(domain, EventType::Normal, "DataDeleted", "Delete", note).await;
        }
    }
    // The Deployment and the other namespaced children go with the Domain through their
    // owner references.
    Ok(Action::await_change())
}

async fn orphan_volume_claim(client: &Client, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"ownerReferences": null}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => {
            Err(Error::Delete { kind: "PersistentVolumeClaim", name: format!("{namespace}/{name}"), source })
        }
    }
}
