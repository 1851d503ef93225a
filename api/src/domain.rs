//! The `Domain` resource: storage, encryption, external connections, token limits and
//! registry deployment settings of one registry. Pure data, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DeletionPolicy, SecretRef};
use crate::duration::{DURATION_SCHEMA_PATTERN, parse_duration};

/// Shortest lifetime of a registry token.
pub const TOKEN_TTL_MIN: Duration = Duration::from_secs(15 * 60);
/// Longest lifetime of a registry token, and the default `tokens.maxTTL`.
pub const TOKEN_TTL_CEILING: Duration = Duration::from_secs(12 * 60 * 60);

/// A Domain is the boundary of storage, encryption, deduplication and identity: one
/// registry deployment serving the Repositories attached to it.
// Several printer columns share `type_ = "string"`, which clippy takes for a repeated
// attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "wharf.dev",
    version = "v1alpha1",
    kind = "Domain",
    namespaced,
    status = "DomainStatus",
    derive = "PartialEq",
    shortname = "wdom",
    category = "wharf",
    doc = "A Domain is the boundary of storage, encryption, deduplication and identity of Wharf: one registry deployment serving the Repositories attached to it.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.usage.size"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// Where packages are stored. Exactly one backend must be set.
    pub storage: StorageSpec,
    /// Encryption at rest by the registry, with keys of your own: every object (packages,
    /// records, indexes, tokens) is encrypted before it reaches storage. Only for a Domain
    /// whose storage is empty (or already encrypted by Wharf); without it, data is stored as
    /// the store keeps it (use the store's own encryption at rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// The external registries Repositories of this Domain may connect to, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_connections: Vec<ExternalConnection>,
    /// Which namespaces may attach Repositories to this Domain. Defaults to the Domain's own
    /// namespace (`from: Same`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_namespaces: Option<RepositoryNamespaces>,
    /// Limits for registry tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenSpec>,
    /// Settings of the registry Deployment and Service the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryDeploymentSpec>,
    /// The network the registry is in: which caller addresses are inside the cluster, for
    /// Repositories' `network` rules of kind `InCluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<DomainNetwork>,
    /// Where the registry's audit events go besides its standard output and the Domain's
    /// storage, and how long storage keeps them. Changes apply without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,
    /// What happens to stored packages when the Domain is deleted: Retain (default) or Delete.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The audit trail: every publish, status change, copy, deletion, download, policy refusal
/// and token mint, exchange and revocation, with who did it and from where.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// An http(s) URL batches of events (CloudEvents, `application/cloudevents-batch+json`)
    /// are POSTed to, each retried a few times; while it stays down events are dropped and
    /// counted (`wharf_audit_events_dropped_total{sink="webhook"}`), never requests held.
    #[serde(rename = "webhookURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^https?://"), length(max = 2048))]
    pub webhook_url: Option<String>,
    /// Days the Domain's storage keeps events for `GET /api/v1/audit` (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: Option<u32>,
}

/// The network the registry is in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainNetwork {
    /// The cluster's own address ranges (pods, and nodes where traffic is translated to a
    /// node's address), as CIDRs: callers from them are `InCluster`. Kubernetes publishes
    /// no such list, so the platform team names it (`10.244.0.0/16`, `fd00:10:244::/56`).
    #[serde(rename = "clusterCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub cluster_cidrs: Vec<String>,
}

impl DomainSpec {
    /// A spec with the given storage and every other field at its default.
    pub fn new(storage: StorageSpec) -> Self {
        DomainSpec {
            storage,
            encryption: None,
            external_connections: Vec::new(),
            repository_namespaces: None,
            tokens: None,
            registry: None,
            network: None,
            audit: None,
            deletion_policy: DeletionPolicy::default(),
        }
    }

    /// The longest lifetime a registry token may have: `tokens.maxTTL`, kept between
    /// [`TOKEN_TTL_MIN`] and [`TOKEN_TTL_CEILING`]; the ceiling (12h) when unset or invalid
    /// (validation reports an invalid value).
    pub fn max_token_ttl(&self) -> Duration {
        self.tokens
            .as_ref()
            .and_then(|tokens| tokens.max_ttl.as_deref())
            .and_then(|text| parse_duration(text).ok())
            .map_or(TOKEN_TTL_CEILING, |ttl| ttl.clamp(TOKEN_TTL_MIN, TOKEN_TTL_CEILING))
    }

    /// The external connection of the catalogue with this name.
    pub fn external_connection(&self, name: &str) -> Option<&ExternalConnection> {
        self.external_connections.iter().find(|connection| connection.name == name)
    }

    /// Which namespaces may attach Repositories; `Same` when unset.
    pub fn namespaces_from(&self) -> NamespacesFrom {
        self.repository_namespaces.as_ref().map_or(NamespacesFrom::Same, |namespaces| namespaces.from)
    }
}

/// Observed state of a Domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    /// Ready, Reconciling and Stalled conditions, with a reason and a message for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Base URL of the registry inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What the Domain's storage holds, as the registry's last storage collection counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::DomainUsageStatus>,
}

/// Object storage of a Domain. Exactly one backend must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// A Google Cloud Storage bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
    /// An Azure Blob Storage container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorage>,
    /// A local folder (in a cluster, on a PersistentVolume). Only one registry replica can
    /// use it safely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,
    /// Memory of the registry process: ephemeral, for tests and demos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStorage>,
}

impl StorageSpec {
    /// Storage in a local folder.
    pub fn filesystem(path: &str) -> Self {
        StorageSpec { filesystem: Some(FilesystemStorage { path: path.to_owned() }), ..StorageSpec::default() }
    }

    /// Storage in memory (ephemeral).
    pub fn memory() -> Self {
        StorageSpec { memory: Some(MemoryStorage {}), ..StorageSpec::default() }
    }

    /// The YAML names of the backends that are set (`s3`, `gcs`, `azure`, `filesystem`,
    /// `memory`); a valid spec has exactly one.
    pub fn backends(&self) -> Vec<&'static str> {
        let StorageSpec { s3, gcs, azure, filesystem, memory } = self;
        [
            ("s3", s3.is_some()),
            ("gcs", gcs.is_some()),
            ("azure", azure.is_some()),
            ("filesystem", filesystem.is_some()),
            ("memory", memory.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, so several Domains can share one bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region, such as us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service; empty or omitted for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret with the access key (keys `accessKeyId`, `secretAccessKey`). When omitted,
    /// the ambient credentials of the pod are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Allow plain HTTP to the endpoint (test servers on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// SSE-KMS: the store encrypts every object the registry writes with this KMS key (id,
    /// alias or ARN), sent with each write. The registry's credentials need
    /// `kms:GenerateDataKey` and `kms:Decrypt` on it. Independent of `spec.encryption`
    /// (both may be set). For GCS and Azure, set the bucket's default key (CMEK) or the
    /// container's default encryption scope: the store then applies it to every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

/// A Google Cloud Storage bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// Bucket name.
    pub bucket: String,
    /// Object name prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with a service account key (JSON). When omitted, the ambient credentials of
    /// the pod are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// An Azure Blob Storage container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorage {
    /// Storage account name.
    pub account: String,
    /// Container name.
    pub container: String,
    /// Blob name prefix inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with the account key. When omitted, the ambient credentials of the pod are
    /// used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A local folder.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStorage {
    /// Path of the folder; created when missing.
    pub path: String,
}

/// Memory of the registry process: ephemeral, for tests and demos. Takes no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStorage {}

/// Why `spec.encryption.keySecretRef.key` is refused: the Secret holds several keys.
pub const ENCRYPTION_KEY_NAMED: &str = "name the Secret only: its entries are the keys, and its `current` entry \
     names the one that seals new data";

/// Encryption at rest by the registry (envelope encryption: a data key per object, wrapped
/// by the Domain's current key).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    /// Secret holding the Domain's keys: every entry but `current` is a key (32 random
    /// bytes in base64, `openssl rand -base64 32`), and `current` names the one that seals
    /// new data. To rotate, add a key and name it `current`; remove an old key only after
    /// `wharf-registry storage rekey` has finished. Name the Secret only (no `key`).
    pub key_secret_ref: SecretRef,
}

/// An external registry in the Domain's catalogue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalConnection {
    /// Name Repositories use in `externalConnection`; unique in the Domain.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Package format the external registry speaks.
    pub format: PackageFormat,
    /// Base URL of the external registry (http or https).
    pub url: String,
    /// Secret with credentials for the external registry (keys `username` and `password`,
    /// or `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Other origins (scheme, host and port, like `https://files.example.test`) the
    /// registry may fetch this connection's files from, when its metadata points files at
    /// a separate host (a PyPI index's file host). Files anywhere else are refused, so
    /// upstream metadata cannot make the registry fetch internal addresses. A Cargo index's
    /// `dl` origin is allowed without being listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub file_origins: Vec<String>,
}

/// Package formats Wharf serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    /// npm packages (also pnpm, yarn).
    Npm,
    /// Python packages (pip, uv, twine, poetry).
    Pypi,
    /// Maven artifacts (mvn, gradle).
    Maven,
    /// NuGet packages (dotnet, nuget).
    Nuget,
    /// Swift packages (swift package registry).
    Swift,
    /// Cargo crates.
    Cargo,
    /// Go modules (GOPROXY protocol).
    Go,
    /// Generic files, versioned by name.
    Generic,
}

impl PackageFormat {
    /// Every format, in the order of the URL documentation.
    pub const ALL: [PackageFormat; 8] = [
        PackageFormat::Npm,
        PackageFormat::Pypi,
        PackageFormat::Maven,
        PackageFormat::Nuget,
        PackageFormat::Swift,
        PackageFormat::Cargo,
        PackageFormat::Go,
        PackageFormat::Generic,
    ];

    /// The formats an external connection may speak: those the registry can read upstream
    /// documents of. A connection of another format is refused (CEL and the loader), not
    /// accepted and ignored.
    pub const WITH_EXTERNAL_CONNECTIONS: [PackageFormat; 7] = [
        PackageFormat::Npm,
        PackageFormat::Pypi,
        PackageFormat::Maven,
        PackageFormat::Nuget,
        PackageFormat::Swift,
        PackageFormat::Cargo,
        PackageFormat::Go,
    ];

    /// The lowercase name used in YAML, URLs and patterns (`npm`, `pypi`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            PackageFormat::Npm => "npm",
            PackageFormat::Pypi => "pypi",
            PackageFormat::Maven => "maven",
            PackageFormat::Nuget => "nuget",
            PackageFormat::Swift => "swift",
            PackageFormat::Cargo => "cargo",
            PackageFormat::Go => "go",
            PackageFormat::Generic => "generic",
        }
    }
}

impl fmt::Display for PackageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that Wharf does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown package format `{0}`; expected one of npm, pypi, maven, nuget, swift, cargo, go, generic")]
pub struct UnknownFormatError(pub String);

impl FromStr for PackageFormat {
    type Err = UnknownFormatError;

    /// Parses a format name, ignoring case (`PyPI` is `pypi`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PackageFormat::ALL
            .into_iter()
            .find(|format| format.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownFormatError(text.to_owned()))
    }
}

/// Which namespaces may attach Repositories to a Domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryNamespaces {
    /// Same (the Domain's namespace, the default), All, or Selector (namespaces whose
    /// labels match `selector`).
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Label selector for namespaces; required when `from` is Selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Where Repositories of a Domain may live.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NamespacesFrom {
    /// Only the Domain's own namespace.
    #[default]
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match the selector.
    Selector,
}

/// Limits for registry tokens.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// Longest lifetime of a registry token, between 15m and 12h (the default), such as
    /// `1h` or `90m`.
    #[serde(rename = "maxTTL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_SCHEMA_PATTERN))]
    pub max_ttl: Option<String>,
    /// OpenID Connect issuers (CI systems such as GitHub Actions or GitLab CI) whose ID
    /// tokens may be exchanged for registry tokens at `POST /api/v1/auth/oidc`, within what
    /// the Repositories' `OIDC` subjects grant. A Repository's `OIDC` subject names one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// People may exchange their own Kubernetes token (the one in their kubeconfig) for a
    /// registry token at `POST /api/v1/auth/kubernetes` (`wharf login --kubeconfig`): the
    /// registry asks the apiserver who they are with a TokenReview, and the Repositories'
    /// `User` and `Group` subjects name them as the apiserver does. The registry sees that
    /// token once per exchange and keeps nothing of it. Cluster mode only; ServiceAccounts
    /// and other `system:` identities are refused (pods present a projected token instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_users: Option<bool>,
}

/// An OpenID Connect issuer the Domain trusts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuer {
    /// The issuer, exactly as its tokens' `iss` claim says; its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`. https (http only on a loopback address).
    #[schemars(length(max = 512))]
    pub issuer: String,
    /// The audiences accepted: a token's `aud` must name one of them (what the CI job asks
    /// its issuer for, such as the registry's URL).
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,
    /// Where the issuer's signing keys are, when not where its discovery document says.
    #[serde(rename = "jwksURL", default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How far the issuer's clock may be from the registry's, such as `30s`; 60s when
    /// unset, at most 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_SCHEMA_PATTERN))]
    pub clock_skew: Option<String>,
    /// When set, this issuer is also an identity provider for people: its ID tokens name a
    /// person, matched by the Repositories' `User` and `Group` subjects, and `wharf login
    /// --sign-in` signs people in with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<PeopleClaims>,
}

/// How an identity provider's ID tokens name a person, as the apiserver's own OIDC
/// configuration (`claimMappings`) does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeopleClaims {
    /// The claim holding the user name: `email` (honoured only with `email_verified:
    /// true`), `preferred_username`, `sub` or another string claim.
    #[schemars(length(min = 1, max = 128))]
    pub username_claim: String,
    /// The claim listing the person's groups (a list of strings, or one string), such as
    /// `groups`; without it people are named by user name only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub groups_claim: Option<String>,
    /// Put in front of every user and group name from this issuer, such as `idp:`, so that
    /// its `alice` is not the cluster's `alice`; `User` and `Group` subjects name people
    /// with it. Required; empty only when the names cannot collide.
    #[schemars(length(max = 64))]
    pub prefix: String,
    /// The OAuth client `wharf login --sign-in` signs in as: a public client allowed the
    /// authorization code flow with PKCE and the loopback redirect
    /// `http://127.0.0.1/callback` (any port). One of `audiences`, since its ID tokens
    /// are issued for it. Without it people exchange ID tokens they got otherwise.
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: Option<String>,
    /// The scopes `wharf login --sign-in` asks for; `openid email profile` when unset. Add
    /// the one your provider wants for the groups claim (Dex: `groups`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub scopes: Vec<String>,
}

impl PeopleClaims {
    /// The scopes a sign-in asks for.
    pub fn sign_in_scopes(&self) -> Vec<String> {
        if self.scopes.is_empty() {
            ["openid", "email", "profile"].map(str::to_owned).to_vec()
        } else {
            self.scopes.clone()
        }
    }

    /// The person an ID token's verified `claims` name, if they name one: the user name
    /// claim is a non-empty string (and an `email` one is verified), and the prefixed name is
    /// not a `system:` one; groups are read from the groups claim when it is a string or a
    /// list of strings (`system:` ones left out: they are the cluster's).
    pub fn person(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<crate::Person> {
        use serde_json::Value;
        let username = claims.get(&self.username_claim)?.as_str().filter(|name| !name.is_empty())?;
        let username = format!("{}{username}", self.prefix);
        // Kubernetes' own names (ServiceAccounts, nodes) are never a person's, whatever a
        // provider with an empty prefix lets its users call themselves.
        if username.starts_with("system:") {
            return None;
        }
        if self.username_claim == "email" && claims.get("email_verified") != Some(&Value::Bool(true)) {
            return None;
        }
        let groups = match self.groups_claim.as_ref().and_then(|claim| claims.get(claim)) {
            Some(Value::String(group)) => vec![group.clone()],
            Some(Value::Array(groups)) => groups.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Some(crate::Person {
            username,
            groups: groups
                .iter()
                .filter(|group| !group.is_empty())
                .map(|group| format!("{}{group}", self.prefix))
                .filter(|group| !group.starts_with("system:"))
                .collect(),
        })
    }
}

/// The longest clock difference a trusted issuer may be allowed.
pub const CLOCK_SKEW_CEILING: Duration = Duration::from_secs(5 * 60);
/// The clock difference allowed when a trusted issuer sets none.
pub const CLOCK_SKEW_DEFAULT: Duration = Duration::from_secs(60);

impl TrustedIssuer {
    /// The clock difference tolerated (default 60s; validation reports an invalid one).
    pub fn clock_skew(&self) -> Duration {
        self.clock_skew
            .as_deref()
            .and_then(|text| parse_duration(text).ok())
            .map_or(CLOCK_SKEW_DEFAULT, |skew| skew.min(CLOCK_SKEW_CEILING))
    }
}

impl DomainSpec {
    /// The trusted issuer whose tokens say `iss`, if the Domain trusts it.
    pub fn trusted_issuer(&self, iss: &str) -> Option<&TrustedIssuer> {
        self.tokens.as_ref()?.trusted_issuers.iter().find(|issuer| issuer.issuer == iss)
    }

    /// Whether people may exchange their Kubernetes tokens (`spec.tokens.kubernetesUsers`).
    pub fn kubernetes_users(&self) -> bool {
        self.tokens.as_ref().and_then(|tokens| tokens.kubernetes_users).unwrap_or(false)
    }

    /// Whether anything names people for `User` and `Group` subjects: Kubernetes users or a
    /// trusted issuer with a `people` mapping.
    pub fn identifies_people(&self) -> bool {
        self.kubernetes_users()
            || self.tokens.as_ref().is_some_and(|tokens| tokens.trusted_issuers.iter().any(|i| i.people.is_some()))
    }
}

/// Settings of the registry Deployment and Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryDeploymentSpec {
    /// Number of registry pods (all share the storage). Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// The Service in front of the registry pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Compute resources of the registry container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The registry image for this Domain, overriding the operator's default
    /// (`WHARF_REGISTRY_IMAGE`), so Domains can be upgraded one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// Node labels the registry pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the registry pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Scheduling affinity of the registry pods (they spread over nodes and zones from 2
    /// replicas by themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The PriorityClass of the registry pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the registry image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra labels on the registry pods (the operator's own `app.kubernetes.io/` labels
    /// cannot be replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the registry pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Annotations on the registry's ServiceAccount: cloud workload identity for object
    /// storage without static keys (`eks.amazonaws.com/role-arn`,
    /// `iam.gke.io/gcp-service-account`, `azure.workload.identity/client-id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_account_annotations: BTreeMap<String, String>,
    /// Extra environment of the registry container, such as `HTTPS_PROXY` and `NO_PROXY`
    /// for reaching external connections through a proxy (`WHARF_` names are the
    /// operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// How long a stopping pod may take to finish its requests in flight (uploads
    /// included) after SIGTERM; 120 s when unset, at most an hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Scales the registry pods on CPU with a HorizontalPodAutoscaler instead of a fixed
    /// `replicas` (set one or the other): the operator renders the autoscaler and leaves
    /// the Deployment's replica count to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<RegistryAutoscaling>,
    /// The PersistentVolumeClaim of filesystem storage (only with `storage.filesystem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSpec>,
    /// HTTPS served by the registry pods themselves (HTTP/2 and HTTP/1.1), from a TLS
    /// Secret or a certificate cert-manager issues. The Service then speaks only https,
    /// and `status.endpoints` say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RegistryTls>,
    /// Exposes the registry outside the cluster through a Gateway API `HTTPRoute` or an
    /// `Ingress`, at host names its absolute links then use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<RegistryExpose>,
    /// Proxies in front of the registry pods (the ingress controller's or the gateway's
    /// pods), as CIDRs or addresses: their `X-Forwarded-For`, `-Host` and `-Proto` are
    /// believed, so network rules see the real caller. Loopback only when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub trusted_proxies: Vec<String>,
    /// A NetworkPolicy for the registry pods: only the namespaces the Domain admits (and
    /// its own), the ingress's and the monitoring's may connect; with `egressTo`, the pods
    /// reach only DNS and those addresses. Enforced by the cluster's network plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<RegistryNetworkPolicy>,
}

/// Who may reach the registry pods, and what they may reach.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryNetworkPolicy {
    /// Namespaces of the ingress controller or gateway, whose pods may connect to the
    /// registry's port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ingress_namespaces: Vec<String>,
    /// Namespaces of Prometheus, whose pods may connect to the metrics port only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub monitoring_namespaces: Vec<String>,
    /// Where the pods may connect, as CIDRs: the apiserver, object storage and the external
    /// connections' hosts (a NetworkPolicy names addresses, not host names). DNS is always
    /// allowed. Egress is not restricted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub egress_to: Vec<String>,
}

/// Why an exposure names one way in.
pub const EXPOSE_ROUTE_OR_INGRESS: &str =
    "set registry.expose.httpRoute (Gateway API) or registry.expose.ingress, exactly one";

/// How the registry is reached from outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryExpose {
    /// Host names clients outside the cluster use; the first is the one absolute links name
    /// when a request names a host the registry does not know.
    #[schemars(length(min = 1, max = 8))]
    pub hosts: Vec<String>,
    /// What clients use at those hosts: `https` (the default: the gateway or ingress
    /// terminates TLS) or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["https", "http"]))]
    pub scheme: Option<String>,
    /// A Gateway API `HTTPRoute` attached to these Gateways (listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<ExposeHttpRoute>,
    /// An `Ingress` of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ExposeIngress>,
}

impl RegistryExpose {
    /// `https` unless `scheme` says `http`.
    pub fn scheme(&self) -> &str {
        self.scheme.as_deref().unwrap_or("https")
    }
}

/// The Gateways an `HTTPRoute` attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeHttpRoute {
    /// Gateways (and listeners) to attach to; a Gateway in another namespace must allow
    /// routes from the Domain's.
    #[schemars(length(min = 1, max = 8))]
    pub parent_refs: Vec<GatewayReference>,
}

/// A Gateway, or one of its listeners.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReference {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the Domain's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// One listener of it, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// An `Ingress` for the registry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeIngress {
    /// The IngressClass; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret with the hosts' certificate, for the ingress to
    /// terminate TLS with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Annotations for the ingress controller, over the operator's (ingress-nginx's body
    /// size and timeouts for large uploads).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Why a TLS block names one source of its certificate.
pub const TLS_SECRET_OR_ISSUER: &str = "set registry.tls.secretName (a kubernetes.io/tls Secret) or registry.tls.issuerRef (cert-manager issues one), \
     exactly one";
/// Why `dnsNames` needs an issuer.
pub const TLS_DNS_NAMES_NEED_ISSUER: &str = "registry.tls.dnsNames are the names cert-manager's certificate is \
     issued for; with secretName, the Secret's certificate names what it names";

/// Where the registry's certificate comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryTls {
    /// A `kubernetes.io/tls` Secret in the Domain's namespace (keys `tls.crt`, `tls.key`).
    /// A renewed certificate is served within a minute or so, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// cert-manager issues the certificate: the operator renders a `Certificate` for the
    /// Service's in-cluster names and `dnsNames`, kept in Secret `wharf-DOMAIN-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerReference>,
    /// More names the certificate is for, such as the external host name (with `issuerRef`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dns_names: Vec<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReference {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the Domain's namespace, the default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Issuer", "ClusterIssuer"]))]
    pub kind: Option<String>,
    /// The issuer's API group; `cert-manager.io` when unset (external issuers have their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
}

/// Why `replicas` and `autoscaling` cannot both be set.
pub const REPLICAS_OR_AUTOSCALING: &str =
    "set registry.replicas or registry.autoscaling, not both: with an autoscaler, it sets the number of pods";
/// Why a data volume needs filesystem storage.
pub const DATA_VOLUME_NEEDS_FILESYSTEM: &str =
    "registry.dataVolume sizes the volume of filesystem storage; this Domain's storage is not a filesystem";

/// A HorizontalPodAutoscaler for the registry pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAutoscaling {
    /// Fewest pods; 2 when unset (one pod would leave nothing serving during a rollout or
    /// a node drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: Option<i32>,
    /// Most pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the pods' CPU request, the autoscaler keeps them at;
    /// 70 when unset.
    #[serde(rename = "targetCPUUtilizationPercentage", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

impl RegistryAutoscaling {
    /// `minReplicas` when unset.
    pub const DEFAULT_MIN_REPLICAS: i32 = 2;
    /// `targetCPUUtilizationPercentage` when unset.
    pub const DEFAULT_TARGET_CPU: i32 = 70;

    /// The fewest pods the autoscaler keeps.
    pub fn min_replicas(&self) -> i32 {
        self.min_replicas.unwrap_or(Self::DEFAULT_MIN_REPLICAS)
    }
}

/// The volume of filesystem storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    /// Size requested, a Kubernetes quantity (`50Gi`); 10Gi when unset. It can grow where
    /// the storage class allows expansion, never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// Storage class of the claim; the cluster's default when unset. Fixed once the claim
    /// exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// The Service in front of the registry pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP (default), NodePort or LoadBalancer.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["ClusterIP", "NodePort", "LoadBalancer"]))]
    pub type_: Option<String>,
    /// Service port. Defaults to 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in PackageFormat::ALL {
            assert_eq!(format.as_str().parse::<PackageFormat>().unwrap(), format);
            assert_eq!(serde_json::to_value(format).unwrap(), serde_json::Value::String(format.as_str().to_owned()));
        }
        assert_eq!("PyPI".parse::<PackageFormat>().unwrap(), PackageFormat::Pypi);
        let error = "rubygems".parse::<PackageFormat>().unwrap_err();
        assert!(error.to_string().starts_with("unknown package format `rubygems`"));
    }

    #[test]
    fn token_ttl_defaults_and_ceiling() {
        let mut spec = DomainSpec::new(StorageSpec::memory());
        assert_eq!(spec.max_token_ttl(), TOKEN_TTL_CEILING);
        spec.tokens = Some(TokenSpec { max_ttl: Some("1h".into()), ..TokenSpec::default() });
        assert_eq!(spec.max_token_ttl(), Duration::from_secs(3600));
        spec.tokens = Some(TokenSpec { max_ttl: Some("7d".into()), ..TokenSpec::default() });
        assert_eq!(spec.max_token_ttl(), TOKEN_TTL_CEILING);
        spec.tokens = Some(TokenSpec { max_ttl: Some("1m".into()), ..TokenSpec::default() });
        assert_eq!(spec.max_token_ttl(), TOKEN_TTL_MIN);
    }

    #[test]
    fn wire_names_follow_the_design() {
        let spec: DomainSpec = serde_json::from_value(serde_json::json!({
            "storage": {"s3": {"bucket": "b", "credentialsSecretRef": {"name": "s"}, "allowHttp": true}},
            "tokens": {"maxTTL": "2h"},
            "repositoryNamespaces": {"from": "Selector", "selector": {"matchLabels": {"wharf.dev/domain": "acme"}}},
            "registry": {"replicas": 2, "service": {"type": "ClusterIP", "port": 8080}},
            "deletionPolicy": "Delete"
        }))
        .unwrap();
        assert_eq!(spec.storage.backends(), vec!["s3"]);
        assert_eq!(spec.namespaces_from(), NamespacesFrom::Selector);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["tokens"]["maxTTL"], "2h");
        assert_eq!(back["registry"]["service"]["type"], "ClusterIP");
        assert_eq!(back["storage"]["s3"]["credentialsSecretRef"]["name"], "s");
    }
}
