//! The three controllers (Domain, Repository, UpstreamPolicy) and what they share: the
//! caches every reconcile reads, server-side apply, status writes, events and per-object
//! backoff. Does I/O (the Kubernetes API).
//!
//! Each reconcile follows one shape: dereference (read the caches and the few objects the
//! caches do not hold) → validate (`resolve`, pure) → build (`render`, pure) → apply
//! (server-side apply, one field manager) → status (from what was applied, written only
//! when it changed).

mod domain;
mod policy;
mod repository;
mod storage;
mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_api::{Domain, DomainConfig, Repository, UpstreamPolicy};
use wharf_diagnostics::error_chain;

use crate::render::{CONFIG_KEY, FIELD_MANAGER, RegistrySettings, RenderError};
use crate::resolve::{NamespaceLabels, ObjectKey};
use crate::scope::WatchScope;
use watches::ScopedTriggers;

/// The finalizer on Domains and Repositories that carries out `deletionPolicy`.
pub const FINALIZER: &str = "wharf.dev/cleanup";
/// Label selector of everything the operator creates.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=wharf-operator";
/// How often a healthy object is looked at again without any change (drift that raised no
/// watch event, such as a missed one).
const RESYNC: Duration = Duration::from_secs(15 * 60);
/// How soon an object waiting on another one (a Repository on its Domain's rollout) is
/// looked at again, as a backstop to the watches that should wake it.
const WAITING_RECHECK: Duration = Duration::from_secs(10);
/// Longest wait between retries of a failing object.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A step of a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server-side apply was refused.
    #[error("failed to apply {kind} {name}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// An object could not be read.
    #[error("failed to read {kind} {name}")]
    Read {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// An object could not be deleted or changed during clean-up.
    #[error("failed to delete {kind} {name}")]
    Delete {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A status could not be written.
    #[error("failed to write the status of {kind} {name}")]
    PatchStatus {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The children could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The storage of a Domain could not be opened to delete data.
    #[error("failed to open the storage of Domain {domain}")]
    OpenStorage {
        /// `namespace/name` of the Domain.
        domain: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored data could not be deleted.
    #[error("failed to delete the stored data of {what}")]
    Purge {
        /// What was being deleted.
        what: String,
        /// The cause.
        #[source]
        source: wharf_storage::StorageError,
    },
    /// Secrets could not be staged for opening storage.
    #[error("failed to stage the Secrets of Domain {domain} for opening its storage")]
    StageSecrets {
        /// `namespace/name` of the Domain.
        domain: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The finalizer helper failed (adding or removing the finalizer, or the clean-up).
    #[error("failed to run the finalizer of {kind} {name}")]
    Finalizer {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
}

impl Error {
    /// A stable name for logs and metrics (never `Debug` text).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "Apply",
            Error::Read { .. } => "Read",
            Error::Delete { .. } => "Delete",
            Error::PatchStatus { .. } => "PatchStatus",
            Error::Render(_) => "Render",
            Error::OpenStorage { .. } => "OpenStorage",
            Error::Purge { .. } => "Purge",
            Error::StageSecrets { .. } => "StageSecrets",
            Error::Finalizer { .. } => "Finalizer",
        }
    }
}

/// What every reconcile reads and shares.
pub struct Context {
    /// The API client (the operator's own identity).
    pub client: Client,
    /// Image and other settings of the registry pods.
    pub settings: RegistrySettings,
    /// The namespaces watched; the caches hold nothing from the others.
    pub scope: WatchScope,
    /// Every Domain in the watched namespaces.
    pub domains: Store<Domain>,
    /// Every Repository in the watched namespaces.
    pub repositories: Store<Repository>,
    /// Every UpstreamPolicy in the watched namespaces.
    pub policies: Store<UpstreamPolicy>,
    /// Every Namespace (labels, for `repositoryNamespaces.from: Selector`).
    pub namespaces: Store<Namespace>,
    /// The rendered configurations (ConfigMaps the operator manages) in the watched namespaces.
    pub config_maps: Store<ConfigMap>,
    /// Publishes events.
    pub recorder: Recorder,
    /// Failed attempts per object since its last success, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Repositories each rendered configuration serves, by ConfigMap and its
    /// resourceVersion, so a configuration is parsed once per revision, not per Repository.
    served: Mutex<HashMap<ObjectKey, ServedRevision>>,
    /// The copies and deletions each Domain's registry reported that are Events already,
    /// by id.
    announced: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// When this operator started: earlier copies and deletions were its predecessor's to
    /// announce.
    started: chrono::DateTime<chrono::Utc>,
}

/// The Repositories one revision (resourceVersion) of a rendered configuration serves.
type ServedRevision = (String, Arc<BTreeSet<ObjectKey>>);

impl Context {
    /// Waits until every cache has listed once, so no reconcile mistakes "not listed yet"
    /// for "does not exist".
    async fn caches_ready(&self) {
        // A store's readiness wakes only the task that polled it last (kube's DelayedInit
        // keeps one oneshot receiver, hence one waker), so of several tasks waiting at start
        // (reconciles of each kind, the readiness probe) the others would wait forever.
        // Each waiter polls again every so often instead of counting on being woken.
        loop {
            let all = async {
                // A dropped writer means the operator is shutting down; the reconcile then
                // fails on its API calls instead.
                let _ = self.domains.wait_until_ready().await;
                let _ = self.repositories.wait_until_ready().await;
                let _ = self.policies.wait_until_ready().await;
                let _ = self.namespaces.wait_until_ready().await;
                let _ = self.config_maps.wait_until_ready().await;
            };
            if tokio::time::timeout(CACHE_POLL, all).await.is_ok() {
                return;
            }
        }
    }

    /// Namespace labels by name.
    fn namespace_labels(&self) -> NamespaceLabels {
        self.namespaces.state().iter().map(|namespace| (namespace.name_any(), namespace.labels().clone())).collect()
    }

    /// The Repositories the stored rendered configuration of `domain` serves, or `None` when
    /// there is none yet.
    /// The registry's last usage report for `domain`, from its usage ConfigMap.
    /// Makes an Event on its Repository of every copy and deletion the registry of `domain`
    /// reported in its usage ConfigMap since this operator started, once each.
    async fn announce_repository_actions(&self, domain: &Domain) {
        use wharf_api::usage::{ACTIONS_KEY_PREFIX, RepositoryAction};
        let names = crate::render::ChildNames::of(domain);
        let namespace = domain.namespace().unwrap_or_default();
        let Some(config_map) = self.config_maps.get(&ObjectRef::new(&names.usage_config_map).within(&namespace)) else {
            return;
        };
        let reported: Vec<RepositoryAction> = config_map
            .data
            .iter()
            .flatten()
            .filter(|(key, _)| key.starts_with(ACTIONS_KEY_PREFIX))
            .flat_map(|(_, json)| serde_json::from_str::<Vec<RepositoryAction>>(json).unwrap_or_default())
            .filter(|action| chrono::DateTime::parse_from_rfc3339(&action.at).is_ok_and(|at| at >= self.started))
            .collect();
        let fresh: Vec<RepositoryAction> = {
            let mut announced = self.announced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let ids = announced.entry(format!("{namespace}/{}", domain.name_any())).or_default();
            // What the registry no longer lists cannot come back: the set stays as small as the list.
            ids.retain(|id| reported.iter().any(|action| action.id == *id));
            reported.into_iter().filter(|action| ids.insert(action.id.clone())).collect()
        };
        for action in fresh {
            let repository = self
                .repositories
                .state()
                .into_iter()
                .find(|r| r.name_any() == action.repository && crate::resolve::refers_to(r, domain));
            if let Some(repository) = repository {
                let (reason, note) = action.event();
                self.publish(repository.as_ref(), EventType::Normal, reason, &action.kind, note).await;
            }
        }
    }

    fn usage_of(&self, domain: &Domain) -> Option<wharf_api::usage::UsageReport> {
        let names = crate::render::ChildNames::of(domain);
        let namespace = domain.namespace().unwrap_or_default();
        let config_map = self.config_maps.get(&ObjectRef::new(&names.usage_config_map).within(&namespace))?;
        let json = config_map.data.as_ref()?.get(wharf_api::usage::USAGE_KEY)?;
        serde_json::from_str(json).ok()
    }

    fn served_repositories(&self, domain: &Domain) -> Option<Arc<BTreeSet<ObjectKey>>> {
        let names = crate::render::ChildNames::of(domain);
        let namespace = domain.namespace().unwrap_or_default();
        let config_map = self.config_maps.get(&ObjectRef::new(&names.config_map).within(&namespace))?;
        let version = config_map.resource_version().unwrap_or_default();
        let key = (namespace, names.config_map);
        let mut served = self.served.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached_version, repositories)) = served.get(&key)
            && *cached_version == version
        {
            return Some(repositories.clone());
        }
        let yaml = config_map.data.as_ref()?.get(CONFIG_KEY)?;
        let config = DomainConfig::from_yaml_str(&key.1, yaml).ok()?;
        let repositories: Arc<BTreeSet<ObjectKey>> = Arc::new(
            config.repositories.iter().map(|repository| crate::resolve::key_of(&repository.metadata)).collect(),
        );
        served.insert(key, (version, repositories.clone()));
        Some(repositories)
    }

    /// Publishes an event about `object`; a failure is logged, never fatal.
    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // The API limits notes to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %error, reason, "failed to publish an event");
        }
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }

    /// Backoff for a failing object: 1 s doubling to 5 min.
    fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let attempts = failures.entry(key.to_owned()).or_insert(0);
        *attempts = attempts.saturating_add(1);
        Duration::from_secs(1u64 << (*attempts - 1).min(9)).min(MAX_BACKOFF)
    }
}

/// `namespace/name` of an object.
fn display_name<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Server-side applies `object` (namespaced) with the operator's field manager, forcing
/// conflicts (the operator owns these fields), and returns what the server holds.
async fn apply<K>(client: &Client, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(with_type_meta(object)))
        .await
        .map_err(|source| Error::Apply { kind: kind_of::<K>(), name: display_name(object), source })
}

/// Deletes a namespaced object if it exists.
async fn delete_if_present<K>(client: &Client, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete { kind: kind_of::<K>(), name: format!("{namespace}/{name}"), source }),
    }
}

/// The object as JSON with `apiVersion` and `kind`, which an apply patch must carry.
fn with_type_meta<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), K::api_version(&()).into_owned().into());
        map.insert("kind".to_owned(), K::kind(&()).into_owned().into());
    }
    value
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "ConfigMap" => "ConfigMap",
        "Secret" => "Secret",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "ClusterRoleBinding" => "ClusterRoleBinding",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        "Domain" => "Domain",
        "Repository" => "Repository",
        "UpstreamPolicy" => "UpstreamPolicy",
        _ => "object",
    }
}

/// Writes `status` with server-side apply when it differs from `current`. Fields the
/// operator stops sending (an endpoint list that no longer applies) are removed, since the
/// operator is their only manager.
async fn write_status<K, S>(client: &Client, object: &K, current: Option<&S>, status: &S) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), object.meta().namespace.as_deref().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        object.meta().name.as_deref().unwrap_or_default(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|source| Error::PatchStatus { kind: kind_of::<K>(), name: display_name(object), source })?;
    Ok(true)
}

/// The current time, for condition transitions.
fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Publishes an event when the `Ready` state (status and reason) moved.
async fn announce_transition<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    before: &[Condition],
    after: &[Condition],
) {
    let (old, new) = (crate::conditions::ready_state(before), crate::conditions::ready_state(after));
    if old == new {
        return;
    }
    let Some(ready) = wharf_api::find_condition(after, wharf_api::CONDITION_READY) else { return };
    let stalled = wharf_api::find_condition(after, wharf_api::CONDITION_STALLED).is_some();
    let type_ = if stalled { EventType::Warning } else { EventType::Normal };
    ctx.publish(object, type_, &ready.reason, "Reconcile", ready.message.clone()).await;
}

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", K::kind(&()), display_name(object.as_ref()));
    let delay = ctx.failed(&key);
    tracing::warn!(object = %key, error = error.kind(), retry_in = ?delay, "reconcile failed: {}", error_chain(error));
    Action::requeue(delay)
}

/// Runs a reflector for `api` in the background and returns its cache.
fn spawn_cache<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff().touched_objects();
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    reader
}

/// How often a task waiting for the caches to fill looks again.
const CACHE_POLL: Duration = Duration::from_millis(200);

/// How long a controller waits after the last event for an object before reconciling it.
/// Reconciles read caches fed by other watches than the one that triggered them; the wait
/// lets those caches catch up (they trail by milliseconds), so a reconcile does not judge
/// from an older object than the one that triggered it. It also folds bursts (200
/// Repositories applied at once) into few reconciles.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Runs the three controllers over the namespaces of `scope` until SIGTERM or SIGINT, counting
/// reconciles in `metrics`.
pub async fn run(client: Client, settings: RegistrySettings, scope: WatchScope, metrics: Arc<crate::metrics::Metrics>) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
    use kube::runtime::controller::Config;

    let managed = || watcher::Config::default().labels(MANAGED_SELECTOR);
    let config = || Config::default().debounce(DEBOUNCE);
    let everything = watcher::Config::default;
    let domain_controller = watches::controller::<Domain>(&client, &scope, everything()).with_config(config());
    let repository_controller = watches::controller::<Repository>(&client, &scope, everything()).with_config(config());
    let policy_controller = watches::controller::<UpstreamPolicy>(&client, &scope, everything()).with_config(config());

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        scope: scope.clone(),
        domains: domain_controller.store(),
        repositories: repository_controller.store(),
        policies: policy_controller.store(),
        namespaces: spawn_cache(Api::<Namespace>::all(client.clone()), everything()),
        config_maps: watches::cache::<ConfigMap>(&client, &scope, managed()),
        recorder: Recorder::new(client.clone(), Reporter { controller: FIELD_MANAGER.to_owned(), instance: None }),
        failures: Mutex::new(HashMap::new()),
        served: Mutex::new(HashMap::new()),
        announced: Mutex::default(),
        started: chrono::Utc::now(),
    });
    metrics.watch_domains(ctx.domains.clone());
    metrics.set_ready(false);
    {
        let (ctx, metrics) = (ctx.clone(), metrics.clone());
        tokio::spawn(async move {
            ctx.caches_ready().await;
            metrics.set_ready(true);
        });
    }

    // Domain: its children (deleted or edited ones come back), the Repositories and
    // policies it renders, and namespace labels when it admits by selector.
    let domains_of_policy = {
        let repositories = ctx.repositories.clone();
        move |policy: UpstreamPolicy| policy_domains(&policy, &repositories)
    };
    let selector_domains = {
        let domains = ctx.domains.clone();
        move |_: Namespace| {
            domains
                .state()
                .iter()
                .filter(|domain| domain.spec.namespaces_from() == wharf_api::NamespacesFrom::Selector)
                .map(|domain| ObjectRef::from_obj(domain.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let domain_of_binding = |binding: ClusterRoleBinding| {
        binding
            .subjects
            .unwrap_or_default()
            .into_iter()
            .filter_map(|subject| {
                let domain = subject.name.strip_prefix("wharf-")?.to_owned();
                Some(ObjectRef::<Domain>::new(&domain).within(subject.namespace.as_deref()?))
            })
            .collect::<Vec<_>>()
    };
    // A Secret a Domain names (storage credentials, encryption keys, connection
    // credentials) changes what its pods must read: reconcile so the checksum rolls them.
    let domains_of_secret = {
        let domains = ctx.domains.clone();
        move |secret: kube::core::PartialObjectMeta<Secret>| {
            let (Some(namespace), Some(name)) = (secret.metadata.namespace, secret.metadata.name) else {
                return Vec::new();
            };
            domains
                .state()
                .iter()
                .filter(|domain| domain.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .filter(|domain| crate::render::secrets_named_by(&domain.spec).any(|named| named == name))
                .map(|domain| ObjectRef::from_obj(domain.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let domains = domain_controller
        .owns_in::<ConfigMap>(&client, &scope, managed())
        .owns_in::<Secret>(&client, &scope, managed())
        .owns_in::<ServiceAccount>(&client, &scope, managed())
        .owns_in::<Role>(&client, &scope, managed())
        .owns_in::<RoleBinding>(&client, &scope, managed())
        .owns_in::<PersistentVolumeClaim>(&client, &scope, managed())
        .owns_in::<Deployment>(&client, &scope, managed())
        .owns_in::<Service>(&client, &scope, managed())
        .owns_in::<PodDisruptionBudget>(&client, &scope, managed())
        .owns_in::<HorizontalPodAutoscaler>(&client, &scope, managed())
        // ClusterRoleBindings and Namespaces are cluster-scoped: watched cluster-wide in every
        // scope, as the cluster-scoped part of the operator's RBAC allows.
        .watches(Api::<ClusterRoleBinding>::all(client.clone()), managed(), domain_of_binding)
        .watches_in(&client, &scope, everything(), |repository: Repository| Some(repository_domain(&repository)))
        .watches_in(&client, &scope, everything(), domains_of_policy)
        .watches(Api::<Namespace>::all(client.clone()), everything(), selector_domains)
        .watches_metadata_in::<Secret, _>(&client, &scope, domains_of_secret)
        .shutdown_on_signal()
        .run(domain::reconcile, error_policy, ctx.clone())
        .for_each({
            let metrics = metrics.clone();
            move |result| {
                metrics.reconciled("Domain", result.is_ok());
                futures::future::ready(())
            }
        });

    // Repository: every Repository of a Domain can change with its Domain, with its
    // rendered configuration (which says who won a name, who is on a cycle) and with the
    // labels of its namespace.
    let repositories_of_domain = {
        let repositories = ctx.repositories.clone();
        let seen: Mutex<HashMap<ObjectKey, DomainState>> = Mutex::new(HashMap::new());
        move |domain: Domain| {
            // A Domain's status changes with every Repository it renders; its Repositories
            // only care when its spec or its readiness moved.
            let state = domain_state(&domain);
            let key = crate::resolve::key_of(&domain.metadata);
            let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.get(&key) == Some(&state) {
                return Vec::new();
            }
            seen.insert(key, state);
            repositories_referring_to(&repositories, &domain)
        }
    };
    let repositories_of_config = {
        let repositories = ctx.repositories.clone();
        move |config_map: ConfigMap| {
            let namespace = config_map.namespace().unwrap_or_default();
            let name = config_map.name_any();
            let Some(domain) = name
                .strip_prefix("wharf-")
                .and_then(|rest| rest.strip_suffix("-config").or_else(|| rest.strip_suffix("-usage")))
            else {
                return Vec::new();
            };
            let mut target = Domain::new(domain, wharf_api::DomainSpec::new(wharf_api::StorageSpec::default()));
            target.metadata.namespace = Some(namespace);
            repositories_referring_to(&repositories, &target)
        }
    };
    let repositories_in_namespace = {
        let repositories = ctx.repositories.clone();
        move |namespace: Namespace| {
            let name = namespace.name_any();
            repositories
                .state()
                .iter()
                .filter(|repository| repository.namespace().as_deref() == Some(name.as_str()))
                .map(|repository| ObjectRef::from_obj(repository.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let repositories = repository_controller
        .watches_in(&client, &scope, everything(), repositories_of_domain)
        .watches_in(&client, &scope, managed(), repositories_of_config)
        .watches(Api::<Namespace>::all(client.clone()), everything(), repositories_in_namespace)
        .shutdown_on_signal()
        .run(repository::reconcile, error_policy, ctx.clone())
        .for_each({
            let metrics = metrics.clone();
            move |result| {
                metrics.reconciled("Repository", result.is_ok());
                futures::future::ready(())
            }
        });

    // UpstreamPolicy: its verdict follows the Domains and the Repositories it targets.
    let every_policy = |store: Store<UpstreamPolicy>| {
        move || store.state().iter().map(|policy| ObjectRef::from_obj(policy.as_ref())).collect::<Vec<_>>()
    };
    let policies_for_domain = every_policy(ctx.policies.clone());
    let policies_for_config = every_policy(ctx.policies.clone());
    let policies = policy_controller
        .watches_in(&client, &scope, everything(), move |_: Domain| policies_for_domain())
        .watches_in(&client, &scope, managed(), move |_: ConfigMap| policies_for_config())
        .shutdown_on_signal()
        .run(policy::reconcile, error_policy, ctx.clone())
        .for_each({
            let metrics = metrics.clone();
            move |result| {
                metrics.reconciled("UpstreamPolicy", result.is_ok());
                futures::future::ready(())
            }
        });

    tracing::info!("controllers started");
    let controllers = async {
        futures::join!(domains, repositories, policies);
    };
    // The controllers stop on SIGTERM once their running reconciles finish; a reconcile
    // waiting on an apiserver that went away would never finish, so the wait is bounded.
    let deadline = async {
        termination().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = controllers => tracing::info!("controllers stopped"),
        () = deadline => tracing::warn!("reconciles still running {SHUTDOWN_GRACE:?} after the signal; exiting"),
    }
}

/// How long reconciles may take to finish after SIGTERM or SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Resolves at SIGTERM or SIGINT.
pub async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}

/// What the Repositories of a Domain depend on: its spec (generation), whether its status
/// describes that spec, its readiness, and whether it is being deleted.
type DomainState = (Option<i64>, Option<i64>, Option<(String, String)>, bool);

fn domain_state(domain: &Domain) -> DomainState {
    let status = domain.status.as_ref();
    (
        domain.metadata.generation,
        status.and_then(|status| status.observed_generation),
        status.and_then(|status| crate::conditions::ready_state(&status.conditions)),
        domain.metadata.deletion_timestamp.is_some(),
    )
}

/// The Domain a Repository refers to (its `domainRef` namespace defaults to its own).
fn repository_domain(repository: &Repository) -> ObjectRef<Domain> {
    let namespace = repository.namespace().unwrap_or_default();
    let domain_ref = &repository.spec.domain_ref;
    ObjectRef::new(&domain_ref.name).within(domain_ref.namespace.as_deref().unwrap_or(&namespace))
}

/// Every Repository in the cache that refers to `domain`.
fn repositories_referring_to(repositories: &Store<Repository>, domain: &Domain) -> Vec<ObjectRef<Repository>> {
    repositories
        .state()
        .iter()
        .filter(|repository| crate::resolve::refers_to(repository, domain))
        .map(|repository| ObjectRef::from_obj(repository.as_ref()))
        .collect()
}

/// The Domains a policy may attach to: those it names, and those of the Repositories it
/// names.
fn policy_domains(policy: &UpstreamPolicy, repositories: &Store<Repository>) -> Vec<ObjectRef<Domain>> {
    let namespace = policy.namespace().unwrap_or_default();
    let mut domains: BTreeMap<(String, String), ObjectRef<Domain>> = BTreeMap::new();
    for target in &policy.spec.target_refs {
        match target.kind {
            wharf_api::TargetKind::Domain => {
                let target_namespace = target.namespace.clone().unwrap_or_else(|| namespace.clone());
                domains.insert(
                    (target_namespace.clone(), target.name.clone()),
                    ObjectRef::new(&target.name).within(&target_namespace),
                );
            }
            wharf_api::TargetKind::Repository => {
                for repository in repositories.state() {
                    let matches = repository.name_any() == target.name
                        && target
                            .namespace
                            .as_deref()
                            .is_none_or(|wanted| repository.namespace().as_deref() == Some(wanted));
                    if matches {
                        let domain = repository_domain(&repository);
                        domains.insert((domain.namespace.clone().unwrap_or_default(), domain.name.clone()), domain);
                    }
                }
            }
        }
    }
    domains.into_values().collect()
}
