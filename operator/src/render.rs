//! The children of a Domain, built as typed objects from its validated configuration:
//! ConfigMap, Secrets, ServiceAccount, RBAC, Deployment, Service, PodDisruptionBudget and,
//! for filesystem storage, a PersistentVolumeClaim. Pure: secrets that must be generated
//! come in as arguments, so the same world always renders the same objects.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    Lifecycle, LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    SleepAction, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use wharf_api::{Domain, DomainConfig, PackageFormat, SecretRef};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "wharf-operator";
/// Key of the rendered configuration in the ConfigMap (what the registry reads).
pub const CONFIG_KEY: &str = "wharf.yaml";
/// Key of the token signing key in its Secret.
pub const SIGNING_KEY_KEY: &str = "key";
/// Key of the bootstrap admin token in its Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Where referenced Secrets are mounted in the registry pod (`{dir}/{secret}/{key}`).
pub const SECRETS_DIR: &str = "/var/run/wharf/secrets";
/// Data folder of the registry when storage is not a local folder.
pub const DATA_DIR: &str = "/var/lib/wharf";
/// Where the registry's TLS Secret is mounted, with `registry.tls`.
pub const TLS_DIR: &str = "/var/run/wharf/tls";
/// Port the registry container listens on; the Service maps its own port to it.
pub const CONTAINER_PORT: i32 = 8080;
/// Port the registry serves `/metrics` on, in the container and on the Service.
pub const METRICS_PORT: i32 = 9090;
/// Service port when the Domain names none.
pub const DEFAULT_SERVICE_PORT: i32 = 8080;
/// What a registry container requests when the Domain sets no `resources`: enough to be
/// scheduled honestly; no limits, which would cut a large upload's buffers.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";
/// How long a stopping pod keeps serving before SIGTERM, while the Service drops it.
pub const PRE_STOP_SECONDS: i64 = 5;
/// How long a stopping pod may take to drain its requests after SIGTERM.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;
/// Size requested for a filesystem Domain's volume (the Domain has no field for it yet).
pub const DATA_VOLUME_SIZE: &str = "10Gi";
/// Annotation on the pod template: a digest of every secret value the pods use
/// ([`SecretValues::digest`]), so a rotated signing key or credential rolls every replica
/// onto the new value together. A digest: values never leave the Secrets.
pub const SECRETS_CHECKSUM_ANNOTATION: &str = "wharf.dev/secrets-checksum";
/// User and group the registry runs as (not root; any non-zero id works).
const RUN_AS: i64 = 65532;

/// Labels every child of a Domain carries.
pub fn labels(domain_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "wharf-registry".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), domain_name.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "wharf-operator".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "registry".to_owned()),
    ])
}

/// The labels that select a Domain's registry pods (stable for the Deployment's lifetime).
fn selector_labels(domain_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "wharf-registry".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), domain_name.to_owned()),
    ])
}

/// The names of a Domain's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// Deployment, Service, ServiceAccount, Role, RoleBinding, PodDisruptionBudget.
    pub registry: String,
    /// The rendered configuration.
    pub config_map: String,
    /// The generated token signing key.
    pub signing_key: String,
    /// The generated bootstrap admin token.
    pub admin_token: String,
    /// The volume of a filesystem Domain.
    pub data_volume_claim: String,
    /// Where the registry reports what the Domain's storage holds.
    pub usage_config_map: String,
    /// Cluster-scoped, so the namespace is part of the name.
    pub cluster_role_binding: String,
    /// The Secret cert-manager keeps the registry's certificate in (`registry.tls.issuerRef`).
    pub issued_tls_secret: String,
}

impl ChildNames {
    /// The names for Domain `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ChildNames {
            registry: format!("wharf-{name}"),
            config_map: format!("wharf-{name}-config"),
            usage_config_map: format!("wharf-{name}-usage"),
            signing_key: format!("wharf-{name}-signing-key"),
            admin_token: format!("wharf-{name}-admin-token"),
            data_volume_claim: format!("wharf-{name}-data"),
            cluster_role_binding: format!("wharf-{namespace}-{name}-auth-delegator"),
            issued_tls_secret: format!("wharf-{name}-tls"),
        }
    }

    /// The names for `domain`.
    pub fn of(domain: &Domain) -> Self {
        ChildNames::new(
            domain.metadata.namespace.as_deref().unwrap_or_default(),
            domain.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

/// Settings of the operator that shape every Domain's children.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// The registry container image.
    pub image: String,
}

/// The secret values the registry pods get: those the operator generated once and keeps
/// (read back on every reconcile), and the contents of the Secrets the Domain names. Their
/// digest is in the pod template, so a changed value rolls every replica onto it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretValues {
    /// The token signing key (`WHARF_TOKEN_SIGNING_KEY`).
    pub signing_key: String,
    /// The bootstrap admin token (`WHARF_ADMIN_TOKEN`).
    pub admin_token: String,
    /// Each Secret the Domain names ([`referenced_secrets`]): its keys and values.
    pub referenced: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl SecretValues {
    /// A digest of every value (and of which Secrets and keys hold them): what the pod
    /// template carries instead of the values themselves.
    pub fn digest(&self) -> String {
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        field(self.signing_key.as_bytes());
        field(self.admin_token.as_bytes());
        for (name, data) in &self.referenced {
            field(name.as_bytes());
            for (key, value) in data {
                field(key.as_bytes());
                field(value);
            }
        }
        hex::encode(digest.finalize())
    }
}

/// Everything a Domain owns. Destructured without `..` where it is applied, so a new child
/// kind cannot be forgotten.
#[derive(Clone, Debug)]
pub struct Children {
    /// The rendered configuration, key `wharf.yaml`.
    pub config_map: ConfigMap,
    /// Where the registry reports usage (key `usage.json`): the operator applies it without
    /// data, so the registry's patches are never its to revert.
    pub usage_config_map: ConfigMap,
    /// The generated token signing key.
    pub signing_key: Secret,
    /// The generated bootstrap admin token.
    pub admin_token: Secret,
    /// The registry pods' identity.
    pub service_account: ServiceAccount,
    /// Read access to the rendered configuration.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// TokenReview for the registry (`system:auth-delegator`); cluster-scoped, no owner.
    pub cluster_role_binding: ClusterRoleBinding,
    /// The volume of a filesystem Domain.
    pub data_volume_claim: Option<PersistentVolumeClaim>,
    /// The registry pods.
    pub deployment: Deployment,
    /// The registry's address in the cluster.
    pub service: Service,
    /// Keeps one pod up during drains, when there are at least two.
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// Scales the registry pods, with `registry.autoscaling`.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// cert-manager's `Certificate` for the registry, with `registry.tls.issuerRef`.
    pub certificate: Option<serde_json::Value>,
    /// The Gateway API `HTTPRoute`, with `registry.expose.httpRoute`.
    pub http_route: Option<serde_json::Value>,
    /// The `Ingress`, with `registry.expose.ingress`.
    pub ingress: Option<Ingress>,
    /// The Prometheus Operator's `ServiceMonitor` for the registry's metrics port (applied
    /// where its CRDs are installed).
    pub service_monitor: serde_json::Value,
    /// Who may reach the registry pods, with `registry.networkPolicy`.
    pub network_policy: Option<NetworkPolicy>,
}

/// The API of the Prometheus Operator's `ServiceMonitor`s.
pub fn service_monitor_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "monitoring.coreos.com".to_owned(),
        version: "v1".to_owned(),
        api_version: "monitoring.coreos.com/v1".to_owned(),
        kind: "ServiceMonitor".to_owned(),
        plural: "servicemonitors".to_owned(),
    }
}

/// The API of Gateway API's `HTTPRoute`s.
pub fn http_route_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "gateway.networking.k8s.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "gateway.networking.k8s.io/v1".to_owned(),
        kind: "HTTPRoute".to_owned(),
        plural: "httproutes".to_owned(),
    }
}

/// The Domain's `registry.expose`, when it is reached from outside the cluster.
pub fn expose(domain: &Domain) -> Option<&wharf_api::domain::RegistryExpose> {
    domain.spec.registry.as_ref().and_then(|registry| registry.expose.as_ref())
}

/// The URLs the registry is reached at, for its absolute links (`--external-url`): the
/// exposed hosts first, then the Service's names. None when the Service itself is reached
/// from outside (NodePort, LoadBalancer) at addresses the operator cannot know, unless the
/// Domain names its hosts.
pub fn external_urls(domain: &Domain) -> Vec<String> {
    let service_type = domain.spec.registry.as_ref().and_then(|r| r.service.as_ref()).and_then(|s| s.type_.as_deref());
    let exposed = expose(domain);
    if exposed.is_none() && matches!(service_type, Some("NodePort" | "LoadBalancer")) {
        return Vec::new();
    }
    let exposed =
        exposed.into_iter().flat_map(|expose| expose.hosts.iter().map(|host| format!("{}://{host}", expose.scheme())));
    let scheme = if tls(domain).is_some() { "https" } else { "http" };
    let port = service_port(domain);
    let in_cluster = service_dns_names(domain).into_iter().map(|name| format!("{scheme}://{name}:{port}"));
    exposed.chain(in_cluster).collect()
}

/// The API of cert-manager's `Certificate`s.
pub fn certificate_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "cert-manager.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "cert-manager.io/v1".to_owned(),
        kind: "Certificate".to_owned(),
        plural: "certificates".to_owned(),
    }
}

/// The Domain's `registry.tls`, when its registry serves HTTPS.
pub fn tls(domain: &Domain) -> Option<&wharf_api::domain::RegistryTls> {
    domain.spec.registry.as_ref().and_then(|registry| registry.tls.as_ref())
}

/// The Secret the registry's certificate is read from, with `registry.tls`.
pub fn tls_secret(domain: &Domain) -> Option<String> {
    let tls = tls(domain)?;
    Some(tls.secret_name.clone().unwrap_or_else(|| ChildNames::of(domain).issued_tls_secret))
}

/// The names the Service answers to in the cluster, short to fully qualified.
fn service_dns_names(domain: &Domain) -> Vec<String> {
    let service = ChildNames::of(domain).registry;
    let namespace = domain.metadata.namespace.as_deref().unwrap_or_default();
    vec![
        service.clone(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Why the children could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The Domain has no name or uid yet, so nothing can point at it.
    #[error("failed to build an owner reference to Domain {namespace}/{name}: it has no uid yet")]
    OwnerReference {
        /// Namespace of the Domain.
        namespace: String,
        /// Name of the Domain.
        name: String,
    },
    /// The configuration could not be written as YAML.
    #[error("failed to render the configuration of Domain {namespace}/{name}")]
    Configuration {
        /// Namespace of the Domain.
        namespace: String,
        /// Name of the Domain.
        name: String,
        /// The cause.
        #[source]
        source: wharf_api::ConfigError,
    },
}

/// Replica count of the registry Deployment.
pub fn replicas(domain: &Domain) -> i32 {
    domain.spec.registry.as_ref().and_then(|registry| registry.replicas).unwrap_or(1)
}

/// The Domain's autoscaler settings, when an autoscaler sets its number of pods.
pub fn autoscaling(domain: &Domain) -> Option<&wharf_api::domain::RegistryAutoscaling> {
    domain.spec.registry.as_ref().and_then(|registry| registry.autoscaling.as_ref())
}

/// The fewest registry pods the Domain runs: its replicas, or its autoscaler's minimum.
pub fn fewest_replicas(domain: &Domain) -> i32 {
    autoscaling(domain).map_or_else(|| replicas(domain), |autoscaling| autoscaling.min_replicas())
}

/// The Service port of the registry.
pub fn service_port(domain: &Domain) -> i32 {
    domain
        .spec
        .registry
        .as_ref()
        .and_then(|registry| registry.service.as_ref())
        .and_then(|service| service.port)
        .unwrap_or(DEFAULT_SERVICE_PORT)
}

/// The registry's base URL inside the cluster.
pub fn domain_endpoint(domain: &Domain) -> String {
    let names = ChildNames::of(domain);
    let namespace = domain.metadata.namespace.as_deref().unwrap_or_default();
    let scheme = if tls(domain).is_some() { "https" } else { "http" };
    format!("{scheme}://{}.{namespace}.svc:{}", names.registry, service_port(domain))
}

/// The client endpoint of a Repository for every format the registry serves, as each client
/// wants it written.
pub fn repository_endpoints(domain: &Domain, repository: &str) -> BTreeMap<String, String> {
    endpoints_at(&domain_endpoint(domain), repository)
}

/// The client endpoints of a Repository at the Domain's first exposed host, when exposed.
pub fn repository_external_endpoints(domain: &Domain, repository: &str) -> BTreeMap<String, String> {
    let Some(expose) = expose(domain) else { return BTreeMap::new() };
    let Some(host) = expose.hosts.first() else { return BTreeMap::new() };
    endpoints_at(&format!("{}://{host}", expose.scheme()), repository)
}

fn endpoints_at(base: &str, repository: &str) -> BTreeMap<String, String> {
    let served = [
        (PackageFormat::Npm, format!("{base}/npm/{repository}/")),
        (PackageFormat::Pypi, format!("{base}/pypi/{repository}/simple/")),
        (PackageFormat::Maven, format!("{base}/maven/{repository}/")),
        (PackageFormat::Nuget, format!("{base}/nuget/{repository}/v3/index.json")),
        (PackageFormat::Swift, format!("{base}/swift/{repository}")),
        (PackageFormat::Cargo, format!("sparse+{base}/cargo/{repository}/index/")),
        (PackageFormat::Go, format!("{base}/go/{repository}")),
        (PackageFormat::Generic, format!("{base}/generic/{repository}/")),
    ];
    served.into_iter().map(|(format, url)| (format.as_str().to_owned(), url)).collect()
}

/// Names of every Secret the configuration refers to (storage credentials, encryption keys,
/// external connection credentials), sorted and without repeats.
pub fn referenced_secrets(config: &DomainConfig) -> BTreeSet<String> {
    secrets_named_by(&config.domain.spec).map(str::to_owned).collect()
}

/// The Secrets a Domain's spec names: storage and connection credentials, encryption keys.
pub fn secrets_named_by(spec: &wharf_api::DomainSpec) -> impl Iterator<Item = &str> {
    let storage = &spec.storage;
    let references: [Option<&SecretRef>; 4] = [
        storage.s3.as_ref().and_then(|s3| s3.credentials_secret_ref.as_ref()),
        storage.gcs.as_ref().and_then(|gcs| gcs.credentials_secret_ref.as_ref()),
        storage.azure.as_ref().and_then(|azure| azure.credentials_secret_ref.as_ref()),
        spec.encryption.as_ref().map(|encryption| &encryption.key_secret_ref),
    ];
    references
        .into_iter()
        .flatten()
        .chain(spec.external_connections.iter().filter_map(|connection| connection.credentials_secret_ref.as_ref()))
        .map(|reference| reference.name.as_str())
}

/// Renders every child of `domain` from its validated configuration.
pub fn render(
    domain: &Domain,
    config: &DomainConfig,
    secrets: &SecretValues,
    settings: &RegistrySettings,
) -> Result<Children, RenderError> {
    let namespace = domain.metadata.namespace.clone().unwrap_or_default();
    let name = domain.metadata.name.clone().unwrap_or_default();
    let owner = domain
        .controller_owner_ref(&())
        .filter(|owner| !owner.uid.is_empty())
        .ok_or_else(|| RenderError::OwnerReference { namespace: namespace.clone(), name: name.clone() })?;
    let names = ChildNames::new(&namespace, &name);
    let metadata = |child: &str| ObjectMeta {
        name: Some(child.to_owned()),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };

    let yaml = config.to_yaml().map_err(|source| RenderError::Configuration {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    let config_map = ConfigMap {
        metadata: metadata(&names.config_map),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    };
    let usage_config_map = ConfigMap { metadata: metadata(&names.usage_config_map), ..ConfigMap::default() };
    let secret = |child: &str, key: &str, value: &str| Secret {
        metadata: metadata(child),
        type_: Some("Opaque".to_owned()),
        string_data: None,
        data: Some(BTreeMap::from([(key.to_owned(), k8s_openapi::ByteString(value.as_bytes().to_vec()))])),
        ..Secret::default()
    };
    let registry_settings = domain.spec.registry.clone().unwrap_or_default();
    let mut service_account_metadata = metadata(&names.registry);
    if !registry_settings.service_account_annotations.is_empty() {
        service_account_metadata.annotations = Some(registry_settings.service_account_annotations.clone());
    }
    let service_account = ServiceAccount { metadata: service_account_metadata, ..ServiceAccount::default() };
    let role = Role {
        metadata: metadata(&names.registry),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_owned()]),
                resource_names: Some(vec![names.config_map.clone()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
            // The usage report: the one object the registry writes.
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_owned()]),
                resource_names: Some(vec![names.usage_config_map.clone()]),
                verbs: vec!["get".to_owned(), "patch".to_owned()],
                ..PolicyRule::default()
            },
        ]),
    };
    let registry_subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: names.registry.clone(),
        namespace: Some(namespace.clone()),
        api_group: None,
    };
    let role_binding = RoleBinding {
        metadata: metadata(&names.registry),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names.registry.clone(),
        },
        subjects: Some(vec![registry_subject.clone()]),
    };
    let cluster_role_binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(names.cluster_role_binding.clone()),
            labels: Some(labels(&name)),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: "system:auth-delegator".to_owned(),
        },
        subjects: Some(vec![registry_subject]),
    };

    let filesystem = config.domain.spec.storage.filesystem.as_ref();
    let data_volume =
        domain.spec.registry.as_ref().and_then(|registry| registry.data_volume.clone()).unwrap_or_default();
    let data_volume_claim = filesystem.map(|_| PersistentVolumeClaim {
        metadata: metadata(&names.data_volume_claim),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(data_volume.size.clone().unwrap_or_else(|| DATA_VOLUME_SIZE.to_owned())),
                )])),
                limits: None,
            }),
            storage_class_name: data_volume.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    });

    let deployment = deployment(domain, config, &names, &owner, settings, &secrets.digest());
    let service_spec = domain.spec.registry.as_ref().and_then(|registry| registry.service.as_ref());
    let service = Service {
        metadata: metadata(&names.registry),
        spec: Some(ServiceSpec {
            type_: Some(
                service_spec.and_then(|service| service.type_.clone()).unwrap_or_else(|| "ClusterIP".to_owned()),
            ),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                ServicePort {
                    name: Some(port_name(domain).to_owned()),
                    port: service_port(domain),
                    target_port: Some(IntOrString::String(port_name(domain).to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some(port_name(domain).to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("metrics".to_owned()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("http".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let autoscaler = autoscaling(domain).map(|autoscaling| HorizontalPodAutoscaler {
        metadata: metadata(&names.registry),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: names.registry.clone(),
            },
            min_replicas: Some(autoscaling.min_replicas()),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(
                            autoscaling
                                .target_cpu_utilization_percentage
                                .unwrap_or(wharf_api::domain::RegistryAutoscaling::DEFAULT_TARGET_CPU),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        },
        status: None,
    });
    let disruption_budget = (fewest_replicas(domain) >= 2).then(|| PodDisruptionBudget {
        metadata: metadata(&names.registry),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(&name)), match_expressions: None }),
            // Crash-looping pods must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            min_available: None,
        }),
        status: None,
    });

    let issued = tls(domain).and_then(|tls| tls.issuer_ref.as_ref().map(|issuer| (tls, issuer)));
    let certificate = issued.map(|(tls, issuer)| {
        let mut dns_names = service_dns_names(domain);
        dns_names.extend(tls.dns_names.iter().cloned());
        serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": metadata(&names.registry),
            "spec": {
                "secretName": names.issued_tls_secret,
                "dnsNames": dns_names,
                "issuerRef": {
                    "name": issuer.name,
                    "kind": issuer.kind.as_deref().unwrap_or("Issuer"),
                    "group": issuer.group.as_deref().unwrap_or("cert-manager.io"),
                },
                "usages": ["server auth", "digital signature"],
                // A renewal gets a new key, so a leaked key ages out with its certificate.
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            },
        })
    });

    let http_route = expose(domain).and_then(|expose| expose.http_route.as_ref().map(|route| (expose, route))).map(
        |(expose, route)| {
            let parent_refs: Vec<serde_json::Value> = route
                .parent_refs
                .iter()
                .map(|parent| {
                    let mut reference = serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent.name});
                    if let Some(namespace) = &parent.namespace {
                        reference["namespace"] = namespace.clone().into();
                    }
                    if let Some(section) = &parent.section_name {
                        reference["sectionName"] = section.clone().into();
                    }
                    reference
                })
                .collect();
            serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": metadata(&names.registry),
                "spec": {
                    "parentRefs": parent_refs,
                    "hostnames": expose.hosts,
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "backendRefs": [{"group": "", "kind": "Service", "name": names.registry, "port": service_port(domain)}],
                        // No request timeout: a large upload or download takes as long as it takes.
                        "timeouts": {"request": "0s"},
                    }],
                },
            })
        },
    );
    let ingress = expose(domain).and_then(|expose| expose.ingress.as_ref().map(|ingress| (expose, ingress))).map(
        |(expose, spec)| {
            let mut annotations = BTreeMap::from([
                // ingress-nginx: no body size limit and long timeouts, streamed both ways.
                ("nginx.ingress.kubernetes.io/proxy-body-size".to_owned(), "0".to_owned()),
                ("nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(), "3600".to_owned()),
                ("nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned(), "3600".to_owned()),
                ("nginx.ingress.kubernetes.io/proxy-request-buffering".to_owned(), "off".to_owned()),
                ("nginx.ingress.kubernetes.io/proxy-buffering".to_owned(), "off".to_owned()),
            ]);
            if tls(domain).is_some() {
                annotations.insert("nginx.ingress.kubernetes.io/backend-protocol".to_owned(), "HTTPS".to_owned());
            }
            annotations.extend(spec.annotations.clone());
            let backend = IngressBackend {
                service: Some(IngressServiceBackend {
                    name: names.registry.clone(),
                    port: Some(ServiceBackendPort { number: Some(service_port(domain)), name: None }),
                }),
                resource: None,
            };
            Ingress {
                metadata: ObjectMeta { annotations: Some(annotations), ..metadata(&names.registry) },
                spec: Some(IngressSpec {
                    ingress_class_name: spec.class_name.clone(),
                    rules: Some(
                        expose
                            .hosts
                            .iter()
                            .map(|host| IngressRule {
                                host: Some(host.clone()),
                                http: Some(HTTPIngressRuleValue {
                                    paths: vec![HTTPIngressPath {
                                        path: Some("/".to_owned()),
                                        path_type: "Prefix".to_owned(),
                                        backend: backend.clone(),
                                    }],
                                }),
                            })
                            .collect(),
                    ),
                    tls: spec.tls_secret_name.as_ref().map(|secret| {
                        vec![IngressTLS { hosts: Some(expose.hosts.clone()), secret_name: Some(secret.clone()) }]
                    }),
                    default_backend: None,
                }),
                status: None,
            }
        },
    );

    let service_monitor = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(&names.registry),
        "spec": {
            "selector": {"matchLabels": labels(&name)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    });

    let network_policy =
        domain.spec.registry.as_ref().and_then(|registry| registry.network_policy.as_ref()).map(|policy| {
            let namespace_named = |name: &str| NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())])),
                    match_expressions: None,
                }),
                ..NetworkPolicyPeer::default()
            };
            let tcp = |port: &str| NetworkPolicyPort {
                port: Some(IntOrString::String(port.to_owned())),
                protocol: Some("TCP".to_owned()),
                end_port: None,
            };
            // The namespaces whose Repositories the Domain admits use it, and its own.
            let mut clients = vec![namespace_named(&namespace)];
            match domain.spec.namespaces_from() {
                wharf_api::NamespacesFrom::Same => {}
                wharf_api::NamespacesFrom::All => clients.push(NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    ..NetworkPolicyPeer::default()
                }),
                wharf_api::NamespacesFrom::Selector => clients.push(NetworkPolicyPeer {
                    namespace_selector: domain.spec.repository_namespaces.as_ref().and_then(|n| n.selector.clone()),
                    ..NetworkPolicyPeer::default()
                }),
            }
            clients.extend(policy.ingress_namespaces.iter().map(|name| namespace_named(name)));
            let mut ingress =
                vec![NetworkPolicyIngressRule { from: Some(clients), ports: Some(vec![tcp(port_name(domain))]) }];
            if !policy.monitoring_namespaces.is_empty() {
                ingress.push(NetworkPolicyIngressRule {
                    from: Some(policy.monitoring_namespaces.iter().map(|name| namespace_named(name)).collect()),
                    ports: Some(vec![tcp("metrics")]),
                });
            }
            let egress = (!policy.egress_to.is_empty()).then(|| {
                let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.to_owned()),
                    end_port: None,
                });
                vec![
                    NetworkPolicyEgressRule { to: None, ports: Some(dns.to_vec()) },
                    NetworkPolicyEgressRule {
                        to: Some(
                            policy
                                .egress_to
                                .iter()
                                .map(|cidr| NetworkPolicyPeer {
                                    ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
                                    ..NetworkPolicyPeer::default()
                                })
                                .collect(),
                        ),
                        ports: None,
                    },
                ]
            });
            let mut types = vec!["Ingress".to_owned()];
            if egress.is_some() {
                types.push("Egress".to_owned());
            }
            NetworkPolicy {
                metadata: metadata(&names.registry),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(&name)),
                        match_expressions: None,
                    }),
                    policy_types: Some(types),
                    ingress: Some(ingress),
                    egress,
                }),
            }
        });

    Ok(Children {
        config_map,
        usage_config_map,
        signing_key: secret(&names.signing_key, SIGNING_KEY_KEY, &secrets.signing_key),
        admin_token: secret(&names.admin_token, ADMIN_TOKEN_KEY, &secrets.admin_token),
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
    })
}

/// The name of the registry's port: what it speaks.
fn port_name(domain: &Domain) -> &'static str {
    if tls(domain).is_some() { "https" } else { "http" }
}

fn deployment(
    domain: &Domain,
    config: &DomainConfig,
    names: &ChildNames,
    owner: &OwnerReference,
    settings: &RegistrySettings,
    checksum: &str,
) -> Deployment {
    let namespace = domain.metadata.namespace.clone().unwrap_or_default();
    let name = domain.metadata.name.clone().unwrap_or_default();
    let settings_of_pod = domain.spec.registry.clone().unwrap_or_default();
    let filesystem = config.domain.spec.storage.filesystem.as_ref();
    let data_dir = filesystem.map_or(DATA_DIR, |filesystem| filesystem.path.as_str());

    let mut volumes =
        vec![Volume { name: "tmp".to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }];
    let mut mounts =
        vec![VolumeMount { name: "tmp".to_owned(), mount_path: "/tmp".to_owned(), ..VolumeMount::default() }];
    let data_volume = Volume {
        name: "data".to_owned(),
        persistent_volume_claim: filesystem.map(|_| PersistentVolumeClaimVolumeSource {
            claim_name: names.data_volume_claim.clone(),
            read_only: None,
        }),
        empty_dir: filesystem.is_none().then(EmptyDirVolumeSource::default),
        ..Volume::default()
    };
    volumes.push(data_volume);
    mounts.push(VolumeMount { name: "data".to_owned(), mount_path: data_dir.to_owned(), ..VolumeMount::default() });

    let secret_names = referenced_secrets(config);
    for (index, secret) in secret_names.iter().enumerate() {
        // Secret names may be longer than a volume name may be; the index is stable for a
        // given set because the set is sorted.
        let volume = format!("secret-{index}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..SecretVolumeSource::default() }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    // The operator's own variables beyond the generated Secrets: links, proxies, TLS files.
    let mut extra_env = Vec::new();
    let urls = external_urls(domain);
    if !urls.is_empty() {
        extra_env.push(EnvVar {
            name: "WHARF_EXTERNAL_URLS".to_owned(),
            value: Some(urls.join(",")),
            value_from: None,
        });
    }
    if !settings_of_pod.trusted_proxies.is_empty() {
        // Loopback stays trusted: a sidecar in the pod is a proxy too.
        let proxies = ["127.0.0.0/8", "::1"]
            .into_iter()
            .map(str::to_owned)
            .chain(settings_of_pod.trusted_proxies.iter().cloned());
        extra_env.push(EnvVar {
            name: "WHARF_TRUSTED_PROXIES".to_owned(),
            value: Some(proxies.collect::<Vec<_>>().join(",")),
            value_from: None,
        });
    }
    if let Some(secret) = tls_secret(domain) {
        // Not in the pod template's checksum: a renewed certificate is read again by the
        // running pods, no rollout.
        volumes.push(Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret), ..SecretVolumeSource::default() }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        for (variable, key) in [("WHARF_TLS_CERT", "tls.crt"), ("WHARF_TLS_KEY", "tls.key")] {
            extra_env.push(EnvVar {
                name: variable.to_owned(),
                value: Some(format!("{TLS_DIR}/{key}")),
                value_from: None,
            });
        }
    }

    let env_from_secret = |variable: &str, secret: &str, key: &str| EnvVar {
        name: variable.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.to_owned(), key: key.to_owned(), optional: None }),
            ..EnvVarSource::default()
        }),
    };
    let port = port_name(domain);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            scheme: Some(port.to_uppercase()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "registry".to_owned(),
        image: Some(settings_of_pod.image.clone().unwrap_or_else(|| settings.image.clone())),
        args: Some(vec![
            "serve".to_owned(),
            "--config-map".to_owned(),
            format!("{namespace}/{}", names.config_map),
            "--usage-config-map".to_owned(),
            format!("{namespace}/{}", names.usage_config_map),
            "--listen".to_owned(),
            format!("0.0.0.0:{CONTAINER_PORT}"),
            "--data".to_owned(),
            data_dir.to_owned(),
            "--secrets-dir".to_owned(),
            SECRETS_DIR.to_owned(),
            "--metrics-listen".to_owned(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ]),
        env: Some(
            [
                env_from_secret("WHARF_TOKEN_SIGNING_KEY", &names.signing_key, SIGNING_KEY_KEY),
                env_from_secret("WHARF_ADMIN_TOKEN", &names.admin_token, ADMIN_TOKEN_KEY),
            ]
            .into_iter()
            .chain(extra_env)
            .chain(settings_of_pod.env.iter().cloned())
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some(port.to_owned()),
                container_port: CONTAINER_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(settings_of_pod.resources.clone().unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(DEFAULT_CPU_REQUEST.to_owned())),
                ("memory".to_owned(), Quantity(DEFAULT_MEMORY_REQUEST.to_owned())),
            ])),
            ..ResourceRequirements::default()
        })),
        // The Service stops sending new requests a moment after the pod is marked for
        // deletion; until then the registry keeps accepting them (no shell in the image:
        // the kubelet's own sleep).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: PRE_STOP_SECONDS }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    // The Domain's labels first: the operator's own (the selector's) win.
    let mut pod_labels = settings_of_pod.pod_labels.clone();
    pod_labels.extend(labels(&name));
    pod_labels.extend(selector_labels(&name));
    let mut pod_annotations = settings_of_pod.pod_annotations.clone();
    pod_annotations.insert(SECRETS_CHECKSUM_ANNOTATION.to_owned(), checksum.to_owned());
    Deployment {
        metadata: ObjectMeta {
            name: Some(names.registry.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels(&name)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            // The autoscaler's to set when there is one: applied without it, the field is
            // not the operator's, so a reconcile never resets what the autoscaler chose.
            replicas: autoscaling(domain).is_none().then(|| replicas(domain)),
            selector: LabelSelector { match_labels: Some(selector_labels(&name)), match_expressions: None },
            // A ReadWriteOnce volume attaches to one node: a new pod cannot start while the
            // old one holds it.
            strategy: filesystem
                .map(|_| DeploymentStrategy { type_: Some("Recreate".to_owned()), rolling_update: None }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.registry.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    // Uploads in flight when SIGTERM comes are let finish (the registry
                    // drains): a 1 GiB publish needs more than the default 30 s.
                    termination_grace_period_seconds: Some(
                        settings_of_pod.termination_grace_period_seconds.unwrap_or(TERMINATION_GRACE_SECONDS),
                    ),
                    node_selector: (!settings_of_pod.node_selector.is_empty())
                        .then(|| settings_of_pod.node_selector.clone()),
                    tolerations: (!settings_of_pod.tolerations.is_empty()).then(|| settings_of_pod.tolerations.clone()),
                    affinity: settings_of_pod.affinity.clone(),
                    priority_class_name: settings_of_pod.priority_class_name.clone(),
                    image_pull_secrets: (!settings_of_pod.image_pull_secrets.is_empty())
                        .then(|| settings_of_pod.image_pull_secrets.clone()),
                    topology_spread_constraints: (fewest_replicas(domain) >= 2).then(|| {
                        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
                            .map(|key| TopologySpreadConstraint {
                                max_skew: 1,
                                topology_key: key.to_owned(),
                                // A preference: one node or zone still runs every replica.
                                when_unsatisfiable: "ScheduleAnyway".to_owned(),
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(selector_labels(&name)),
                                    match_expressions: None,
                                }),
                                ..TopologySpreadConstraint::default()
                            })
                            .to_vec()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::objects;
    use crate::resolve::resolve;

    const WORLD: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf-system}
spec:
  storage:
    s3: {bucket: wharf-acme, endpoint: "http://127.0.0.1:9000", credentialsSecretRef: {name: acme-s3}}
  externalConnections:
    - {name: npm-public, format: npm, url: "http://127.0.0.1:9/", credentialsSecretRef: {name: acme-npm}}
  registry: {replicas: 2, service: {port: 80}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: web, namespace: wharf-system}
spec:
  domainRef: {name: acme}
  externalConnection: npm-public
"#;

    fn settings() -> RegistrySettings {
        RegistrySettings { image: "wharf-registry:test".to_owned() }
    }

    fn secrets() -> SecretValues {
        SecretValues { signing_key: "k".repeat(32), admin_token: "admin".to_owned(), referenced: BTreeMap::new() }
    }

    fn children(yaml: &str) -> (Domain, Children) {
        let objects = objects(yaml);
        let domain = objects.domains[0].clone();
        let config = resolve(&domain, &objects.repositories, &objects.policies, &BTreeMap::new()).config.unwrap();
        let children = render(&domain, &config, &secrets(), &settings()).unwrap();
        (domain, children)
    }

    /// The registry objects of a Domain as YAML documents with `apiVersion` and `kind`.
    fn manifests(children: &Children) -> String {
        fn document<K: k8s_openapi::Resource + serde::Serialize>(object: &K) -> String {
            let mut value = serde_json::to_value(object).unwrap();
            value["apiVersion"] = K::API_VERSION.into();
            value["kind"] = K::KIND.into();
            format!("---\n{}", serde_json::to_string(&value).unwrap())
        }
        let mut documents = vec![
            document(&children.config_map),
            document(&children.service_account),
            document(&children.role),
            document(&children.role_binding),
            document(&children.deployment),
            document(&children.service),
        ];
        documents.extend(children.disruption_budget.iter().map(document));
        documents.extend(children.autoscaler.iter().map(document));
        documents.extend(children.data_volume_claim.iter().map(document));
        documents.extend(children.network_policy.iter().map(document));
        documents.join("\n")
    }

    /// kube-score (built by tests/kube-score.sh) on what a 3-replica Domain renders: no
    /// critical finding but the deliberate ones, each with its reason.
    #[test]
    fn kube_score_finds_nothing_critical_but_deliberate_choices() {
        let binary = std::env::var_os("WHARF_KUBE_SCORE_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| {
            let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap());
            home.join(".cache/wharf/kube-score/kube-score-v1.20.0/kube-score")
        });
        assert!(binary.exists(), "kube-score is missing: run tests/kube-score.sh (tests/run.sh does it)");
        let three = WORLD.replace("replicas: 2", "replicas: 3, networkPolicy: {ingressNamespaces: [ingress-nginx]}");
        let (_, children) = children(&three);
        let file = std::env::temp_dir().join(format!("wharf-kube-score-{}.yaml", std::process::id()));
        std::fs::write(&file, manifests(&children)).unwrap();
        // Deliberate, and said so in the README: no CPU or memory limit (a limit would
        // throttle digests and kill large uploads; requests are set); no ephemeral-storage
        // request or limit (uploads stream to storage, not to the pod's disk); the image's
        // tag is a version, pulled IfNotPresent, so a pod start does not need the image
        // registry. The NetworkPolicy is opt-in (registry.networkPolicy), set here.
        let ignored =
            ["container-resources", "container-ephemeral-storage-request-and-limit", "container-image-pull-policy"];
        let output = std::process::Command::new(&binary)
            .args(["score", "--output-format", "ci"])
            .args(ignored.iter().flat_map(|test| ["--ignore-test", test]))
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        let report = String::from_utf8_lossy(&output.stdout);
        let critical: Vec<&str> = report.lines().filter(|line| line.starts_with("[CRITICAL]")).collect();
        assert!(critical.is_empty(), "kube-score finds:\n{}", critical.join("\n"));
        assert!(
            report.contains("[OK] wharf-acme/wharf-system apps/v1/Deployment"),
            "kube-score scored nothing:\n{report}"
        );
    }

    #[test]
    fn every_namespaced_child_is_labelled_and_owned() {
        let (_, children) = children(WORLD);
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
        assert!(network_policy.is_none(), "not asked for");
        assert_eq!(service_monitor["spec"]["endpoints"][0]["port"], "metrics");
        assert!(http_route.is_none() && ingress.is_none(), "not exposed");
        assert!(data_volume_claim.is_none(), "object storage needs no volume");
        assert!(certificate.is_none(), "plain http needs no certificate");
        assert!(autoscaler.is_none(), "a fixed number of replicas needs no autoscaler");
        let disruption_budget = disruption_budget.unwrap();
        let namespaced = [
            (&config_map.metadata, "wharf-acme-config"),
            (&usage_config_map.metadata, "wharf-acme-usage"),
            (&signing_key.metadata, "wharf-acme-signing-key"),
            (&admin_token.metadata, "wharf-acme-admin-token"),
            (&service_account.metadata, "wharf-acme"),
            (&role.metadata, "wharf-acme"),
            (&role_binding.metadata, "wharf-acme"),
            (&deployment.metadata, "wharf-acme"),
            (&service.metadata, "wharf-acme"),
            (&disruption_budget.metadata, "wharf-acme"),
        ];
        for (metadata, name) in namespaced {
            assert_eq!(metadata.name.as_deref(), Some(name));
            assert_eq!(metadata.namespace.as_deref(), Some("wharf-system"));
            assert_eq!(metadata.labels.as_ref(), Some(&labels("acme")));
            let owners = metadata.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!((owners[0].kind.as_str(), owners[0].name.as_str()), ("Domain", "acme"));
            assert_eq!(owners[0].controller, Some(true));
        }
        assert_eq!(cluster_role_binding.metadata.name.as_deref(), Some("wharf-wharf-system-acme-auth-delegator"));
        assert!(cluster_role_binding.metadata.owner_references.is_none(), "cluster-scoped: the finalizer deletes it");
        assert_eq!(cluster_role_binding.role_ref.name, "system:auth-delegator");
        let rules = role.rules.unwrap();
        assert_eq!(rules[0].resource_names.as_deref(), Some(&["wharf-acme-config".to_owned()][..]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[1].resource_names.as_deref(), Some(&["wharf-acme-usage".to_owned()][..]));
        assert_eq!(rules[1].verbs, ["get", "patch"], "the usage report is all the registry writes");
        assert!(usage_config_map.data.is_none(), "the registry's report is not the operator's to revert");
        assert_eq!(signing_key.data.unwrap()["key"].0, "k".repeat(32).into_bytes());
        assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 80);
    }

    #[test]
    fn the_configuration_is_what_the_registry_reads() {
        let (_, children) = children(WORLD);
        let yaml = &children.config_map.data.unwrap()[CONFIG_KEY];
        let config = DomainConfig::from_yaml_str("wharf.yaml", yaml).unwrap();
        assert_eq!(config.domain_name(), "acme");
        assert!(config.repository("web").is_some());
        let (_, again) = self::children(WORLD);
        assert_eq!(Some(yaml), again.config_map.data.as_ref().map(|data| &data[CONFIG_KEY]), "byte-identical");
    }

    #[test]
    fn the_pod_meets_the_restricted_pod_security_standard() {
        let (_, children) = children(WORLD);
        let spec = children.deployment.spec;
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let pod_security = pod.security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_ne!(pod_security.run_as_user, Some(0));
        assert_eq!(pod_security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none());
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.privileged, None);
        assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert!(security.capabilities.as_ref().unwrap().add.is_none());
        assert_eq!(security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        for volume in pod.volumes.as_ref().unwrap() {
            assert!(
                volume.empty_dir.is_some() || volume.secret.is_some() || volume.persistent_volume_claim.is_some(),
                "only restricted volume types: {volume:?}"
            );
        }
        assert_eq!(
            container.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
    }

    #[test]
    fn arguments_environment_and_secret_volumes_follow_the_contract() {
        let (_, children) = children(WORLD);
        let template = children.deployment.spec.template;
        let pod = template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("wharf-registry:test"));
        let requests = container.resources.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("100m", "128Mi"));
        assert!(container.resources.as_ref().unwrap().limits.is_none(), "no limit cuts an upload");
        let pre_stop = container.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, PRE_STOP_SECONDS);
        assert_eq!(pod.termination_grace_period_seconds, Some(TERMINATION_GRACE_SECONDS));
        let spread: Vec<_> =
            pod.topology_spread_constraints.as_ref().unwrap().iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(spread, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], "two replicas spread");
        // The Domain's pod settings reach the pod; the operator's labels and variables stay.
        let settings = "registry: {nodeSelector: {pool: registry}, tolerations: [{key: dedicated, operator: Exists}], \
             priorityClassName: high, imagePullSecrets: [{name: pull}], podLabels: {team: platform}, \
             podAnnotations: {note: kept}, serviceAccountAnnotations: {eks.amazonaws.com/role-arn: arn}, \
             env: [{name: HTTPS_PROXY, value: \"http://proxy:3128\"}], terminationGracePeriodSeconds: 600, \
             affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: ssd, operator: Exists}]}}]}}, ";
        let (_, set) = self::children(&WORLD.replace("registry: {", settings));
        let set_pod = set.deployment.spec.template.spec.clone().unwrap();
        assert_eq!(set_pod.node_selector.unwrap()["pool"], "registry");
        assert_eq!(set_pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        assert_eq!(set_pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(set_pod.image_pull_secrets.unwrap()[0].name, "pull");
        assert!(set_pod.affinity.unwrap().node_affinity.is_some());
        assert_eq!(set_pod.termination_grace_period_seconds, Some(600));
        let set_env: Vec<String> = set_pod.containers[0].env.clone().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(set_env, ["WHARF_TOKEN_SIGNING_KEY", "WHARF_ADMIN_TOKEN", "WHARF_EXTERNAL_URLS", "HTTPS_PROXY"]);
        let set_meta = set.deployment.spec.template.metadata.clone().unwrap();
        assert_eq!(set_meta.labels.as_ref().unwrap()["team"], "platform");
        assert_eq!(set_meta.labels.as_ref().unwrap()["app.kubernetes.io/name"], "wharf-registry");
        assert_eq!(set_meta.annotations.as_ref().unwrap()["note"], "kept");
        assert!(set_meta.annotations.as_ref().unwrap().contains_key(SECRETS_CHECKSUM_ANNOTATION));
        let account_annotations = set.service_account.metadata.annotations.unwrap();
        assert_eq!(account_annotations["eks.amazonaws.com/role-arn"], "arn");
        // A Domain pinned to its own image is upgraded on its own schedule.
        let (_, pinned) = self::children(
            &WORLD.replace("registry: {replicas: 2,", "registry: {image: \"wharf-registry:1.2.3\", replicas: 2,"),
        );
        let pinned_image = pinned.deployment.spec.template.spec.unwrap().containers[0].image.clone();
        assert_eq!(pinned_image.as_deref(), Some("wharf-registry:1.2.3"));
        assert_eq!(
            container.args.as_deref().unwrap(),
            [
                "serve",
                "--config-map",
                "wharf-system/wharf-acme-config",
                "--usage-config-map",
                "wharf-system/wharf-acme-usage",
                "--listen",
                "0.0.0.0:8080",
                "--data",
                DATA_DIR,
                "--secrets-dir",
                SECRETS_DIR,
                "--metrics-listen",
                "0.0.0.0:9090"
            ]
        );
        let env = container.env.as_ref().unwrap();
        let secret_of = |name: &str| {
            let reference = env.iter().find(|variable| variable.name == name).unwrap();
            let selector = reference.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
            (selector.name.clone(), selector.key.clone())
        };
        assert_eq!(secret_of("WHARF_TOKEN_SIGNING_KEY"), ("wharf-acme-signing-key".to_owned(), "key".to_owned()));
        assert_eq!(secret_of("WHARF_ADMIN_TOKEN"), ("wharf-acme-admin-token".to_owned(), "token".to_owned()));

        let mounts = container.volume_mounts.as_ref().unwrap();
        let mounted: Vec<(&str, Option<bool>)> = mounts
            .iter()
            .filter(|mount| mount.mount_path.starts_with(SECRETS_DIR))
            .map(|mount| (mount.mount_path.as_str(), mount.read_only))
            .collect();
        assert_eq!(
            mounted,
            [("/var/run/wharf/secrets/acme-npm", Some(true)), ("/var/run/wharf/secrets/acme-s3", Some(true))],
            "each referenced Secret once, read-only"
        );
        assert!(mounts.iter().any(|mount| mount.mount_path == "/tmp"));
        assert!(mounts.iter().any(|mount| mount.mount_path == DATA_DIR));

        let checksum = &template.metadata.unwrap().annotations.unwrap()[SECRETS_CHECKSUM_ANNOTATION];
        assert_eq!(*checksum, secrets().digest());
        // Any value changing changes the digest: a rotated key or credential rolls the pods.
        let mut rotated = secrets();
        rotated.signing_key = "r".repeat(32);
        assert_ne!(rotated.digest(), secrets().digest(), "a new signing key");
        let mut credentials = secrets();
        credentials.referenced.insert("acme-s3".into(), BTreeMap::from([("secretAccessKey".into(), b"one".to_vec())]));
        let mut changed = credentials.clone();
        changed.referenced.get_mut("acme-s3").unwrap().insert("secretAccessKey".into(), b"two".to_vec());
        assert_ne!(credentials.digest(), changed.digest(), "a rotated storage credential");
        assert_ne!(credentials.digest(), secrets().digest(), "another set of Secrets");
        assert!(!checksum.contains('k'.to_string().repeat(8).as_str()), "a digest, not the values themselves");
    }

    #[test]
    fn filesystem_storage_gets_a_volume_claim_and_one_replica_no_budget() {
        let world = WORLD
            .replace(
                "    s3: {bucket: wharf-acme, endpoint: \"http://127.0.0.1:9000\", credentialsSecretRef: {name: acme-s3}}",
                "    filesystem: {path: /var/lib/wharf-data}",
            )
            .replace("replicas: 2, ", "");
        let (_, children) = children(&world);
        let claim = children.data_volume_claim.unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("wharf-acme-data"));
        assert_eq!(claim.spec.unwrap().access_modes.unwrap(), ["ReadWriteOnce"]);
        assert!(children.disruption_budget.is_none(), "one replica: a budget would block drains");
        let pod = children.deployment.spec.template.spec.as_ref().unwrap();
        assert!(pod.topology_spread_constraints.is_none(), "one replica has nothing to spread");
        let spec = children.deployment.spec;
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let pod = spec.template.spec.unwrap();
        let data = pod.volumes.unwrap().into_iter().find(|volume| volume.name == "data").unwrap();
        assert_eq!(data.persistent_volume_claim.unwrap().claim_name, "wharf-acme-data");
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.windows(2).any(|pair| pair == ["--data", "/var/lib/wharf-data"]), "{args:?}");
    }

    #[test]
    fn endpoints_per_format() {
        let (domain, _) = children(WORLD);
        assert_eq!(domain_endpoint(&domain), "http://wharf-acme.wharf-system.svc:80");
        let endpoints = repository_endpoints(&domain, "web");
        assert_eq!(endpoints["npm"], "http://wharf-acme.wharf-system.svc:80/npm/web/");
        assert_eq!(endpoints["pypi"], "http://wharf-acme.wharf-system.svc:80/pypi/web/simple/");
        assert_eq!(endpoints["cargo"], "sparse+http://wharf-acme.wharf-system.svc:80/cargo/web/index/");
        assert_eq!(endpoints["nuget"], "http://wharf-acme.wharf-system.svc:80/nuget/web/v3/index.json");
        assert_eq!(endpoints["swift"], "http://wharf-acme.wharf-system.svc:80/swift/web");
        assert_eq!(endpoints.len(), PackageFormat::ALL.len(), "every format the registry serves");
    }

    #[test]
    fn a_domain_without_uid_cannot_own_children() {
        let objects = objects(WORLD);
        let mut domain = objects.domains[0].clone();
        let config = resolve(&domain, &objects.repositories, &objects.policies, &BTreeMap::new()).config.unwrap();
        domain.metadata.uid = None;
        let error = render(&domain, &config, &secrets(), &settings()).unwrap_err();
        assert!(error.to_string().contains("Domain wharf-system/acme"), "{error}");
    }
}
