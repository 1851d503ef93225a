//! Wharf's resource types — `Domain`, `Repository`, `UpstreamPolicy` (group `wharf.dev`,
//! version `v1alpha1`) — and the configuration loader and validation that the registry and
//! the operator share. Only [`DomainConfig::load`] does I/O (it reads files).
//!
//! The registry reads the same YAML a platform team applies to a cluster: one Domain, its
//! Repositories and UpstreamPolicies, from a file, a folder, or what the operator renders.
//! One parser, one validation, one meaning in both modes.
//!
//! ```
//! use wharf_api::DomainConfig;
//!
//! let config = DomainConfig::from_yaml_str("inline", r#"
//! apiVersion: wharf.dev/v1alpha1
//! kind: Domain
//! metadata: {name: acme}
//! spec:
//!   storage: {memory: {}}
//! ---
//! apiVersion: wharf.dev/v1alpha1
//! kind: Repository
//! metadata: {name: main}
//! spec:
//!   domainRef: {name: acme}
//!   access:
//!     read: [{kind: Anonymous}]
//! "#).expect("valid configuration");
//! assert!(config.repository("main").is_some_and(|main| main.allows_anonymous_read()));
//! ```

#![warn(missing_docs)]

mod admission;
pub mod common;
pub mod config;
pub mod consent;
pub mod domain;
pub mod duration;
pub mod pattern;
pub mod policy;
pub mod repository;
pub mod usage;

pub use common::{
    API_VERSION, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, DeletionPolicy, DomainRef, GROUP, Person,
    RepositoryRef, SecretRef, Subject, SubjectKind, VERSION, find_condition, is_http_url, is_ready,
};
pub use config::{
    ConfigError, DEFAULT_NAMESPACE, Document, DomainConfig, Origin, Problem, WharfResource, check_dns_label,
    parse_documents,
};
pub use domain::{
    AzureStorage, Domain, DomainSpec, DomainStatus, EncryptionSpec, ExternalConnection, FilesystemStorage, GcsStorage,
    MemoryStorage, NamespacesFrom, PackageFormat, PeopleClaims, RegistryDeploymentSpec, RepositoryNamespaces,
    S3Storage, ServiceSpec, StorageSpec, TOKEN_TTL_CEILING, TOKEN_TTL_MIN, TokenSpec, TrustedIssuer,
    UnknownFormatError,
};
pub use duration::{DurationError, format_duration, parse_duration};
pub use pattern::{BlockedVersion, PackagePattern, PatternError};
pub use policy::{
    PolicyRule, Restriction, RestrictionMode, TargetKind, TargetRef, UpstreamPolicy, UpstreamPolicySpec,
    UpstreamPolicyStatus,
};
pub use repository::{
    AccessSpec, CleanupOrigin, CleanupRule, DownstreamGrant, MAX_UPSTREAMS, Repository, RepositorySpec,
    RepositoryStatus,
};

/// The CustomResourceDefinitions of every Wharf resource, for `wharf-operator crd` and the
/// checked-in `crds/` folder.
/// Each carries the admission rules of [`admission`].
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    [Domain::crd(), Repository::crd(), UpstreamPolicy::crd()]
        .into_iter()
        .map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let mut json = serde_json::to_value(&crd).expect("a generated CRD serializes");
            admission::apply(&kind, &mut json);
            serde_json::from_value(json).expect("admission rules keep the CRD well-formed")
        })
        .collect()
}

/// Each CustomResourceDefinition as YAML, with its file name in `crds/`
/// (`domains.wharf.dev.yaml`, …), in the order of [`crds`].
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_saphyr::to_string(&crd)?))
        })
        .collect()
}

#[cfg(test)]
mod crd_tests;
