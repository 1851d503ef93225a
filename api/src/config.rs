//! The registry's configuration: a set of Wharf resources (one Domain, its Repositories
//! and UpstreamPolicies) read from YAML files, and the validation both binaries share.
//! [`DomainConfig::load`] reads files; everything else here is pure.
//!
//! Loading keeps track of where each object came from, so every problem names the file,
//! the document (1-based, counting `---` separators the way a person does), the object
//! and the field:
//!
//! ```text
//! examples/local/wharf.yaml: document 2 (Repository main): spec.upstreams[0].name: missing field
//! ```
//!
//! Validation collects every problem rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::common::{API_VERSION, DomainRef, Subject, SubjectKind, is_http_url};
use crate::domain::{Domain, DomainSpec, NamespacesFrom, PackageFormat, StorageSpec, TOKEN_TTL_CEILING, TOKEN_TTL_MIN};
use crate::duration::{format_duration, parse_duration};
use crate::pattern::{BlockedVersion, PackagePattern};
use crate::policy::{Restriction, RestrictionMode, TargetKind, UpstreamPolicy};
use crate::repository::{MAX_UPSTREAMS, Repository, RepositorySpec};

/// Namespace of objects that do not name one, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Service types the registry Service may have.
const SERVICE_TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];

/// One Domain with its Repositories and UpstreamPolicies: everything a registry serves.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainConfig {
    /// The Domain.
    pub domain: Domain,
    /// Its Repositories, in the order they were read.
    pub repositories: Vec<Repository>,
    /// The UpstreamPolicies attached to the Domain or its Repositories.
    pub policies: Vec<UpstreamPolicy>,
}

/// A Wharf resource of any kind, as read from one YAML document.
#[derive(Clone, Debug, PartialEq)]
pub enum WharfResource {
    /// A Domain.
    Domain(Box<Domain>),
    /// A Repository.
    Repository(Box<Repository>),
    /// An UpstreamPolicy.
    UpstreamPolicy(Box<UpstreamPolicy>),
}

/// A resource and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The resource.
    pub resource: WharfResource,
    /// Where it was read.
    pub origin: Origin,
}

/// Where a YAML document was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// File name, or the name given to [`DomainConfig::from_yaml_str`].
    pub source: String,
    /// 1-based document number in the source.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
}

/// One thing wrong with a configuration, with as much of its location as is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File name or source name.
    pub source: Option<String>,
    /// 1-based document number in the source.
    pub document: Option<usize>,
    /// The object, like `Repository main`.
    pub object: Option<String>,
    /// Field path inside the object, like `spec.upstreams[0].name`.
    pub path: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if let Some(source) = &self.source {
            f.write_str(source)?;
            wrote = true;
        }
        if let Some(document) = self.document {
            if wrote {
                f.write_str(": ")?;
            }
            write!(f, "document {document}")?;
            wrote = true;
        }
        if let Some(object) = &self.object {
            if wrote {
                write!(f, " ({object})")?;
            } else {
                f.write_str(object)?;
            }
            wrote = true;
        }
        if let Some(path) = &self.path {
            if wrote {
                f.write_str(": ")?;
            }
            f.write_str(path)?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or folder could not be read.
    #[error("failed to read configuration {}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration could not be written as YAML.
    #[error("failed to write the configuration as YAML")]
    Render {
        /// The cause.
        #[source]
        source: serde_saphyr::SerializeError,
    },
    /// The YAML was read, but is not a valid configuration.
    #[error("{}", ProblemList(problems))]
    Invalid {
        /// Every problem found, in the order of the sources.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an invalid configuration (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            ConfigError::Read { .. } | ConfigError::Render { .. } => &[],
        }
    }
}

/// Displays one problem as its line, several as a count and an indented list.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("invalid configuration"),
            [only] => write!(f, "{only}"),
            many => {
                write!(f, "{} problems in the configuration:", many.len())?;
                for problem in many {
                    write!(f, "\n  {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl DomainConfig {
    /// Reads a configuration from a YAML file, or from a folder: every `*.yaml` and `*.yml`
    /// file in it (not in subfolders, hidden files skipped), in name order. Each file may
    /// hold several documents separated by `---`. The result is validated.
    pub fn load(path: &Path) -> Result<DomainConfig, ConfigError> {
        let read_error = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        let files = if metadata.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(read_error)? {
                let entry = entry.map_err(read_error)?;
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                let is_yaml = file_name.ends_with(".yaml") || file_name.ends_with(".yml");
                // `is_file` follows symlinks: a mounted ConfigMap's files are symlinks into a
                // hidden `..data` folder.
                if is_yaml && !file_name.starts_with('.') && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(ConfigError::Invalid {
                    problems: vec![Problem {
                        source: Some(path.display().to_string()),
                        document: None,
                        object: None,
                        path: None,
                        message: "no .yaml or .yml files in this folder".to_owned(),
                    }],
                });
            }
            files
        } else {
            vec![path.to_path_buf()]
        };

        let mut documents = Vec::new();
        let mut problems = Vec::new();
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            parse_into(&file.display().to_string(), &text, &mut documents, &mut problems);
        }
        assemble(documents, problems)
    }

    /// Reads a configuration from YAML text (possibly several documents); `source_name`
    /// names it in messages. The result is validated.
    pub fn from_yaml_str(source_name: &str, text: &str) -> Result<DomainConfig, ConfigError> {
        let mut documents = Vec::new();
        let mut problems = Vec::new();
        parse_into(source_name, text, &mut documents, &mut problems);
        assemble(documents, problems)
    }

    /// Checks the configuration as a whole and reports every problem. Objects without a
    /// namespace get `default`, as `kubectl apply` would give them.
    pub fn validate(self) -> Result<DomainConfig, ConfigError> {
        self.validate_with_origins(&Origins::default())
    }

    /// The configuration the registry uses when it is given none: Domain `default` storing
    /// into `data_dir`, and one Repository `main` that anyone may read and only holders of
    /// a token minted by the admin may publish to.
    pub fn embedded_default(data_dir: &str) -> DomainConfig {
        let mut domain = Domain::new("default", DomainSpec::new(StorageSpec::filesystem(data_dir)));
        domain.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());

        let mut spec = RepositorySpec::new(DomainRef {
            name: "default".to_owned(),
            namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        });
        spec.description = Some("Default hosted repository".to_owned());
        spec.access.read = vec![Subject::anonymous()];
        let mut repository = Repository::new("main", spec);
        repository.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());

        DomainConfig { domain, repositories: vec![repository], policies: Vec::new() }
    }

    /// The Domain's name.
    pub fn domain_name(&self) -> &str {
        self.domain.metadata.name.as_deref().unwrap_or_default()
    }

    /// The Repository with this name.
    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.iter().find(|repository| repository.metadata.name.as_deref() == Some(name))
    }

    /// Policies attached to the whole Domain.
    pub fn domain_policies(&self) -> impl Iterator<Item = &UpstreamPolicy> {
        self.policies
            .iter()
            .filter(|policy| policy.spec.target_refs.iter().any(|target| target.kind == TargetKind::Domain))
    }

    /// Policies attached to the named Repository itself (not through the Domain).
    pub fn repository_policies<'a>(&'a self, repository: &'a str) -> impl Iterator<Item = &'a UpstreamPolicy> {
        self.policies.iter().filter(move |policy| {
            policy
                .spec
                .target_refs
                .iter()
                .any(|target| target.kind == TargetKind::Repository && target.name == repository)
        })
    }

    /// The configuration as multi-document YAML that [`DomainConfig::from_yaml_str`] reads
    /// back: the Domain, then the Repositories, then the policies.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let mut out = String::new();
        let mut append = |text: Result<String, serde_saphyr::SerializeError>| {
            let text = text.map_err(|source| ConfigError::Render { source })?;
            out.push_str("---\n");
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
            Ok::<(), ConfigError>(())
        };
        append(serde_saphyr::to_string(&self.domain))?;
        for repository in &self.repositories {
            append(serde_saphyr::to_string(repository))?;
        }
        for policy in &self.policies {
            append(serde_saphyr::to_string(policy))?;
        }
        Ok(out)
    }

    fn validate_with_origins(mut self, origins: &Origins) -> Result<DomainConfig, ConfigError> {
        let default_namespace = |metadata: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            if metadata.namespace.as_deref().is_none_or(str::is_empty) {
                metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
            }
        };
        default_namespace(&mut self.domain.metadata);
        for repository in &mut self.repositories {
            default_namespace(&mut repository.metadata);
        }
        for policy in &mut self.policies {
            default_namespace(&mut policy.metadata);
        }

        let mut problems = Vec::new();
        let mut checker = Checker { config: &self, origins, problems: &mut problems };
        checker.domain();
        checker.repositories();
        checker.upstream_cycles();
        checker.upstream_consent();
        checker.policies();
        if problems.is_empty() { Ok(self) } else { Err(ConfigError::Invalid { problems }) }
    }
}

/// Where the objects of a configuration came from; empty when it was built in memory.
#[derive(Default)]
struct Origins {
    domain: Option<Origin>,
    repositories: Vec<Origin>,
    policies: Vec<Origin>,
}

/// Which object a problem belongs to.
#[derive(Clone, Copy)]
enum ObjectAt {
    Domain,
    Repository(usize),
    Policy(usize),
}

struct Checker<'a> {
    config: &'a DomainConfig,
    origins: &'a Origins,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, about: ObjectAt, path: &str, message: String) {
        let (kind, metadata, origin) = match about {
            ObjectAt::Domain => ("Domain", &self.config.domain.metadata, self.origins.domain.as_ref()),
            ObjectAt::Repository(index) => {
                ("Repository", &self.config.repositories[index].metadata, self.origins.repositories.get(index))
            }
            ObjectAt::Policy(index) => {
                ("UpstreamPolicy", &self.config.policies[index].metadata, self.origins.policies.get(index))
            }
        };
        let object = match metadata.name.as_deref() {
            Some(name) if !name.is_empty() => format!("{kind} {name}"),
            _ => kind.to_owned(),
        };
        self.problems.push(Problem {
            source: origin.map(|origin| origin.source.clone()),
            document: origin.map(|origin| origin.document),
            object: Some(object),
            path: (!path.is_empty()).then(|| path.to_owned()),
            message,
        });
    }

    /// Reports each entry of the list at `field` that is neither a CIDR nor an address.
    fn report_bad_cidrs(&mut self, about: ObjectAt, field: &str, cidrs: &[String], example: &str) {
        for (position, cidr) in cidrs.iter().enumerate() {
            if crate::repository::parse_cidr(cidr).is_none() {
                self.report(
                    about,
                    &format!("{field}[{position}]"),
                    format!("{cidr:?} is not a CIDR ({example}) or an address"),
                );
            }
        }
    }

    /// Where an object was read, for messages that point at a second object.
    fn describe_origin(&self, about: ObjectAt) -> String {
        let origin = match about {
            ObjectAt::Domain => self.origins.domain.as_ref(),
            ObjectAt::Repository(index) => self.origins.repositories.get(index),
            ObjectAt::Policy(index) => self.origins.policies.get(index),
        };
        match origin {
            Some(origin) => format!(" (also in {}: document {})", origin.source, origin.document),
            None => String::new(),
        }
    }

    fn domain(&mut self) {
        let domain = &self.config.domain;
        let about = ObjectAt::Domain;
        self.name(about, domain.metadata.name.as_deref());
        let spec = &domain.spec;

        let backends = spec.storage.backends();
        match backends.len() {
            0 => self.report(
                about,
                "spec.storage",
                "no storage backend; set exactly one of s3, gcs, azure, filesystem, memory".to_owned(),
            ),
            1 => {}
            n => self.report(
                about,
                "spec.storage",
                format!("{n} storage backends are set ({}); set exactly one", backends.join(", ")),
            ),
        }
        let storage = &spec.storage;
        if let Some(s3) = &storage.s3 {
            self.required(about, "spec.storage.s3.bucket", &s3.bucket);
            if let Some(endpoint) = s3.endpoint.as_deref().filter(|endpoint| !endpoint.is_empty())
                && !is_http_url(endpoint)
            {
                self.report(about, "spec.storage.s3.endpoint", format!("`{endpoint}` is not an http(s) URL"));
            }
            self.secret(about, "spec.storage.s3.credentialsSecretRef", s3.credentials_secret_ref.as_ref());
        }
        if let Some(gcs) = &storage.gcs {
            self.required(about, "spec.storage.gcs.bucket", &gcs.bucket);
            self.secret(about, "spec.storage.gcs.credentialsSecretRef", gcs.credentials_secret_ref.as_ref());
        }
        if let Some(azure) = &storage.azure {
            self.required(about, "spec.storage.azure.account", &azure.account);
            self.required(about, "spec.storage.azure.container", &azure.container);
            self.secret(about, "spec.storage.azure.credentialsSecretRef", azure.credentials_secret_ref.as_ref());
        }
        if let Some(filesystem) = &storage.filesystem {
            self.required(about, "spec.storage.filesystem.path", &filesystem.path);
        }
        if let Some(encryption) = &spec.encryption {
            self.secret(about, "spec.encryption.keySecretRef", Some(&encryption.key_secret_ref));
            if encryption.key_secret_ref.key.is_some() {
                self.report(about, "spec.encryption.keySecretRef.key", crate::domain::ENCRYPTION_KEY_NAMED.to_owned());
            }
        }

        let mut connection_names: HashMap<&str, usize> = HashMap::new();
        for (index, connection) in spec.external_connections.iter().enumerate() {
            let path = format!("spec.externalConnections[{index}]");
            if let Err(message) = check_dns_label(&connection.name) {
                self.report(about, &format!("{path}.name"), message);
            } else if let Some(first) = connection_names.insert(&connection.name, index) {
                self.report(
                    about,
                    &format!("{path}.name"),
                    format!(
                        "external connection `{}` is already defined at spec.externalConnections[{first}]",
                        connection.name
                    ),
                );
            }
            if !PackageFormat::WITH_EXTERNAL_CONNECTIONS.contains(&connection.format) {
                let served: Vec<&str> = PackageFormat::WITH_EXTERNAL_CONNECTIONS.iter().map(|f| f.as_str()).collect();
                self.report(
                    about,
                    &format!("{path}.format"),
                    format!(
                        "external connections of format {} are not served yet; connections are served for {}",
                        connection.format,
                        served.join(", ")
                    ),
                );
            }
            if !is_http_url(&connection.url) {
                self.report(about, &format!("{path}.url"), format!("`{}` is not an http(s) URL", connection.url));
            }
            for (position, origin) in connection.file_origins.iter().enumerate() {
                if !is_bare_origin(origin) {
                    self.report(
                        about,
                        &format!("{path}.fileOrigins[{position}]"),
                        format!(
                            "`{origin}` is not an origin: give only the scheme (http or https), host and port, like https://files.example.test:8443"
                        ),
                    );
                }
            }
            self.secret(about, &format!("{path}.credentialsSecretRef"), connection.credentials_secret_ref.as_ref());
        }

        if let Some(namespaces) = &spec.repository_namespaces {
            match (namespaces.from, namespaces.selector.is_some()) {
                (NamespacesFrom::Selector, false) => self.report(
                    about,
                    "spec.repositoryNamespaces.selector",
                    "from: Selector needs a selector".to_owned(),
                ),
                (NamespacesFrom::Same | NamespacesFrom::All, true) => self.report(
                    about,
                    "spec.repositoryNamespaces.selector",
                    format!("a selector is only used with from: Selector (from is {:?})", namespaces.from),
                ),
                _ => {}
            }
        }

        if let Some(text) = spec.tokens.as_ref().and_then(|tokens| tokens.max_ttl.as_deref()) {
            match parse_duration(text) {
                Err(error) => self.report(about, "spec.tokens.maxTTL", error.to_string()),
                Ok(ttl) if ttl < TOKEN_TTL_MIN || ttl > TOKEN_TTL_CEILING => self.report(
                    about,
                    "spec.tokens.maxTTL",
                    format!(
                        "{text} is outside the allowed range {} to {}",
                        format_duration(TOKEN_TTL_MIN),
                        format_duration(TOKEN_TTL_CEILING)
                    ),
                ),
                Ok(_) => {}
            }
        }

        if let Some(audit) = &spec.audit {
            if let Some(url) = &audit.webhook_url
                && !crate::common::is_http_url(url)
            {
                self.report(about, "spec.audit.webhookURL", format!("`{url}` is not an http(s) URL"));
            }
            if audit.retention_days.is_some_and(|days| !(1..=3650).contains(&days)) {
                self.report(about, "spec.audit.retentionDays", "keep events 1 to 3650 days".to_owned());
            }
        }

        let issuers = spec.tokens.as_ref().map(|tokens| tokens.trusted_issuers.as_slice()).unwrap_or_default();
        for (position, issuer) in issuers.iter().enumerate() {
            let path = format!("spec.tokens.trustedIssuers[{position}]");
            if !crate::common::is_https_or_loopback(&issuer.issuer) {
                self.report(
                    about,
                    &format!("{path}.issuer"),
                    format!("`{}` is not an https URL (http only on a loopback address)", issuer.issuer),
                );
            }
            if issuers[..position].iter().any(|earlier| earlier.issuer == issuer.issuer) {
                self.report(about, &format!("{path}.issuer"), format!("issuer {} is listed twice", issuer.issuer));
            }
            if issuer.audiences.is_empty() || issuer.audiences.iter().any(|audience| audience.trim().is_empty()) {
                self.report(
                    about,
                    &format!("{path}.audiences"),
                    "name the audiences accepted (what the CI job asks its issuer for); an empty one is not".to_owned(),
                );
            }
            if let Some(url) = &issuer.jwks_url
                && !crate::common::is_https_or_loopback(url)
            {
                self.report(
                    about,
                    &format!("{path}.jwksURL"),
                    format!("`{url}` is not an https URL (http only on a loopback address)"),
                );
            }
            if let Some(text) = &issuer.clock_skew {
                match parse_duration(text) {
                    Err(error) => self.report(about, &format!("{path}.clockSkew"), error.to_string()),
                    Ok(skew) if skew > crate::domain::CLOCK_SKEW_CEILING => {
                        self.report(about, &format!("{path}.clockSkew"), format!("{text} is more than 5m"))
                    }
                    Ok(_) => {}
                }
            }
            if let Some(people) = &issuer.people {
                if people.username_claim.trim().is_empty() {
                    self.report(
                        about,
                        &format!("{path}.people.usernameClaim"),
                        "name the claim holding the user name, such as email or preferred_username".to_owned(),
                    );
                }
                if !people.scopes.is_empty() && !people.scopes.iter().any(|scope| scope == "openid") {
                    self.report(
                        about,
                        &format!("{path}.people.scopes"),
                        "include openid: without it the provider issues no ID token".to_owned(),
                    );
                }
                if people.prefix.starts_with("system:") {
                    self.report(
                        about,
                        &format!("{path}.people.prefix"),
                        "`system:` names belong to Kubernetes; choose another prefix".to_owned(),
                    );
                }
                if let Some(client) = &people.client_id
                    && !issuer.audiences.contains(client)
                {
                    self.report(
                        about,
                        &format!("{path}.people.clientID"),
                        format!("client {client} is not among the audiences; its ID tokens would be refused"),
                    );
                }
            }
        }

        if let Some(network) = &spec.network {
            let example = "10.244.0.0/16, fd00:10:244::/56";
            self.report_bad_cidrs(about, "spec.network.clusterCIDRs", &network.cluster_cidrs, example);
        }

        if let Some(registry) = &spec.registry {
            if let Some(replicas) = registry.replicas
                && replicas < 0
            {
                self.report(
                    about,
                    "spec.registry.replicas",
                    format!("{replicas} replicas; the count cannot be negative"),
                );
            }
            if registry.replicas.is_some() && registry.autoscaling.is_some() {
                self.report(about, "spec.registry", crate::domain::REPLICAS_OR_AUTOSCALING.to_owned());
            }
            if let Some(autoscaling) = &registry.autoscaling {
                let bounds = [
                    ("minReplicas", autoscaling.min_replicas),
                    ("maxReplicas", Some(autoscaling.max_replicas)),
                    ("targetCPUUtilizationPercentage", autoscaling.target_cpu_utilization_percentage),
                ];
                for (field, value) in bounds {
                    if let Some(value) = value
                        && !(1..=100).contains(&value)
                    {
                        self.report(
                            about,
                            &format!("spec.registry.autoscaling.{field}"),
                            format!("{value} is outside 1 to 100"),
                        );
                    }
                }
                if autoscaling.min_replicas() > autoscaling.max_replicas {
                    self.report(about, "spec.registry.autoscaling", "minReplicas cannot exceed maxReplicas".to_owned());
                }
            }
            if let Some(expose) = &registry.expose {
                if expose.http_route.is_some() == expose.ingress.is_some() {
                    self.report(about, "spec.registry.expose", crate::domain::EXPOSE_ROUTE_OR_INGRESS.to_owned());
                }
                for (position, host) in expose.hosts.iter().enumerate() {
                    let label_ok = |label: &str| {
                        !label.is_empty()
                            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                    };
                    if host.len() > 253 || !host.split('.').all(label_ok) {
                        self.report(
                            about,
                            &format!("spec.registry.expose.hosts[{position}]"),
                            format!(
                                "{host:?} is not a lowercase DNS name (wharf.example.com), without scheme, port or path"
                            ),
                        );
                    }
                }
            }
            for (position, cidr) in
                registry.network_policy.iter().flat_map(|policy| policy.egress_to.iter()).enumerate()
            {
                if cidr.parse::<ipnet::IpNet>().is_err() {
                    self.report(
                        about,
                        &format!("spec.registry.networkPolicy.egressTo[{position}]"),
                        format!("{cidr:?} is not a CIDR (10.0.0.1/32, 192.168.0.0/16)"),
                    );
                }
            }
            self.report_bad_cidrs(about, "spec.registry.trustedProxies", &registry.trusted_proxies, "10.0.0.0/8");
            if let Some(tls) = &registry.tls {
                if tls.secret_name.is_some() == tls.issuer_ref.is_some() {
                    self.report(about, "spec.registry.tls", crate::domain::TLS_SECRET_OR_ISSUER.to_owned());
                }
                if !tls.dns_names.is_empty() && tls.issuer_ref.is_none() {
                    self.report(
                        about,
                        "spec.registry.tls.dnsNames",
                        crate::domain::TLS_DNS_NAMES_NEED_ISSUER.to_owned(),
                    );
                }
            }
            if let Some(volume) = &registry.data_volume {
                if spec.storage.filesystem.is_none() {
                    self.report(
                        about,
                        "spec.registry.dataVolume",
                        crate::domain::DATA_VOLUME_NEEDS_FILESYSTEM.to_owned(),
                    );
                }
                if let Some(size) = &volume.size
                    && !is_positive_quantity(size)
                {
                    self.report(
                        about,
                        "spec.registry.dataVolume.size",
                        format!("{size:?} is not a positive Kubernetes quantity, such as 50Gi"),
                    );
                }
            }
            for label in registry.pod_labels.keys().filter(|label| label.starts_with("app.kubernetes.io/")) {
                self.report(
                    about,
                    "spec.registry.podLabels",
                    format!("{label}: app.kubernetes.io/ labels are the operator's (its selector uses them)"),
                );
            }
            for variable in registry.env.iter().filter(|variable| variable.name.starts_with("WHARF_")) {
                self.report(
                    about,
                    "spec.registry.env",
                    format!("{}: WHARF_ variables are the operator's", variable.name),
                );
            }
            if let Some(seconds) = registry.termination_grace_period_seconds
                && !(0..=3600).contains(&seconds)
            {
                self.report(
                    about,
                    "spec.registry.terminationGracePeriodSeconds",
                    format!("{seconds} is outside 0 to 3600"),
                );
            }
            if let Some(service) = &registry.service {
                if let Some(port) = service.port
                    && !(1..=65535).contains(&port)
                {
                    self.report(about, "spec.registry.service.port", format!("port {port} is outside 1 to 65535"));
                }
                if let Some(type_) = service.type_.as_deref()
                    && !SERVICE_TYPES.contains(&type_)
                {
                    self.report(
                        about,
                        "spec.registry.service.type",
                        format!("unknown Service type `{type_}`; expected ClusterIP, NodePort or LoadBalancer"),
                    );
                }
            }
        }
    }

    fn repositories(&mut self) {
        let config = self.config;
        let domain_name = config.domain_name();
        let domain_namespace = config.domain.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let names: HashMap<&str, usize> = config
            .repositories
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(index, repository)| Some((repository.metadata.name.as_deref()?, index)))
            .collect();

        for (index, repository) in config.repositories.iter().enumerate() {
            let about = ObjectAt::Repository(index);
            let name = repository.metadata.name.as_deref();
            self.name(about, name);
            if let Some(name) = name
                && let Some(&first) = names.get(name)
                && first != index
            {
                let elsewhere = self.describe_origin(ObjectAt::Repository(first));
                self.report(
                    about,
                    "metadata.name",
                    format!("another Repository is already named `{name}`{elsewhere}; names are unique in a Domain"),
                );
            }
            let namespace = repository.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let spec = &repository.spec;

            let referenced_namespace = spec.domain_ref.namespace.as_deref().unwrap_or(namespace);
            if spec.domain_ref.name != domain_name || referenced_namespace != domain_namespace {
                self.report(
                    about,
                    "spec.domainRef",
                    format!(
                        "refers to Domain {referenced_namespace}/{}, but this configuration's Domain is {domain_namespace}/{domain_name}",
                        spec.domain_ref.name
                    ),
                );
            }
            if config.domain.spec.namespaces_from() == NamespacesFrom::Same && namespace != domain_namespace {
                self.report(
                    about,
                    "metadata.namespace",
                    format!(
                        "namespace {namespace} may not attach Repositories to Domain {domain_name}: its repositoryNamespaces admit only {domain_namespace} (from: Same)"
                    ),
                );
            }

            if spec.upstreams.len() > MAX_UPSTREAMS {
                self.report(
                    about,
                    "spec.upstreams",
                    format!("{} upstreams are listed; at most {MAX_UPSTREAMS} are allowed", spec.upstreams.len()),
                );
            }
            let mut seen = BTreeSet::new();
            for (position, upstream) in spec.upstreams.iter().enumerate() {
                let path = format!("spec.upstreams[{position}].name");
                let upstream_name = upstream.name.as_str();
                if Some(upstream_name) == name {
                    self.report(about, &path, "a Repository cannot be its own upstream".to_owned());
                } else if !names.contains_key(upstream_name) {
                    self.report(about, &path, format!("no Repository named `{upstream_name}` in Domain {domain_name}"));
                } else if !seen.insert(upstream_name) {
                    self.report(about, &path, format!("`{upstream_name}` is listed twice"));
                }
            }

            if let Some(connection) = spec.external_connection.as_deref()
                && config.domain.spec.external_connection(connection).is_none()
            {
                let known: Vec<&str> =
                    config.domain.spec.external_connections.iter().map(|connection| connection.name.as_str()).collect();
                let known = if known.is_empty() {
                    "the Domain defines none".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                };
                self.report(
                    about,
                    "spec.externalConnection",
                    format!("no external connection named `{connection}` in Domain {domain_name}; {known}"),
                );
            }

            for (position, rule) in spec.cleanup.iter().enumerate() {
                let path = format!("spec.cleanup[{position}]");
                if let Err(message) = check_dns_label(&rule.name) {
                    self.report(about, &format!("{path}.name"), message);
                }
                if spec.cleanup[..position].iter().any(|earlier| earlier.name == rule.name) {
                    self.report(about, &format!("{path}.name"), format!("`{}` is used by an earlier rule", rule.name));
                }
                for (index, pattern) in rule.packages.iter().enumerate() {
                    if let Err(error) = crate::pattern::PackagePattern::parse(pattern) {
                        self.report(about, &format!("{path}.packages[{index}]"), error.to_string());
                    }
                }
                if let Some(older_than) = &rule.older_than
                    && let Err(error) = crate::duration::parse_duration(older_than)
                {
                    self.report(about, &format!("{path}.olderThan"), error.to_string());
                }
                if let Some(unused) = &rule.not_downloaded_for {
                    match crate::duration::parse_duration(unused) {
                        Err(error) => self.report(about, &format!("{path}.notDownloadedFor"), error.to_string()),
                        Ok(unused) if unused.as_secs() > crate::repository::NOT_DOWNLOADED_FOR_LIMIT_DAYS * 86_400 => {
                            self.report(
                                about,
                                &format!("{path}.notDownloadedFor"),
                                format!(
                                    "at most {}d: downloads are remembered for {} days",
                                    crate::repository::NOT_DOWNLOADED_FOR_LIMIT_DAYS,
                                    crate::repository::DOWNLOADS_KEPT_DAYS
                                ),
                            )
                        }
                        Ok(_) => {}
                    }
                }
                if rule.older_than.is_none() && rule.keep_newest.is_none() && rule.not_downloaded_for.is_none() {
                    self.report(about, &path, CLEANUP_RULE_NEEDS_A_LIMIT.to_owned());
                }
            }

            if let Some(network) = &spec.network {
                for (list, sources) in [("read", &network.read), ("publish", &network.publish)] {
                    for (position, source) in sources.iter().enumerate() {
                        let path = format!("spec.network.{list}[{position}]");
                        for message in network_source_problems(source, config) {
                            self.report(about, &path, message);
                        }
                    }
                }
            }

            for (position, grant) in spec.allowed_downstreams.iter().enumerate() {
                let path = format!("spec.allowedDownstreams[{position}]");
                if grant.namespace_selector.is_some() {
                    self.report(
                        about,
                        &format!("{path}.namespaceSelector"),
                        "namespace selectors are evaluated by the operator, which knows namespace labels; a configuration file names namespaces (namespace, and name for one Repository)".to_owned(),
                    );
                } else if grant.namespace.as_deref().is_none_or(str::is_empty) {
                    self.report(
                        about,
                        &format!("{path}.namespace"),
                        "name a namespace (and a Repository in it, or every one)".to_owned(),
                    );
                }
            }

            for (list, subjects, for_publish) in
                [("read", &spec.access.read, false), ("publish", &spec.access.publish, true)]
            {
                for (position, subject) in subjects.iter().enumerate() {
                    for message in subject.problems(for_publish) {
                        self.report(about, &format!("spec.access.{list}[{position}]"), message);
                    }
                    if matches!(subject.kind, SubjectKind::User | SubjectKind::Group)
                        && !config.domain.spec.identifies_people()
                    {
                        self.report(
                            about,
                            &format!("spec.access.{list}[{position}]"),
                            format!(
                                "Domain {domain_name} names no people, so this {} would match no one: set its \
                                 spec.tokens.kubernetesUsers, or a trusted issuer's people",
                                subject.kind
                            ),
                        );
                    }
                    if let Some(issuer) = subject.issuer.as_deref().filter(|_| subject.kind == SubjectKind::Oidc)
                        && config.domain.spec.trusted_issuer(issuer).is_none()
                    {
                        self.report(
                            about,
                            &format!("spec.access.{list}[{position}].issuer"),
                            format!(
                                "Domain {domain_name} does not trust issuer {issuer}; add it to its spec.tokens.trustedIssuers"
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Reports every cycle among upstreams once, as `a -> b -> a`.
    fn upstream_cycles(&mut self) {
        #[derive(Clone, Copy, PartialEq)]
        enum Visit {
            Unseen,
            OnPath,
            Done,
        }

        fn walk(
            node: usize,
            graph: &[Vec<usize>],
            state: &mut [Visit],
            path: &mut Vec<usize>,
            cycles: &mut Vec<Vec<usize>>,
        ) {
            state[node] = Visit::OnPath;
            path.push(node);
            for &next in &graph[node] {
                match state[next] {
                    Visit::Unseen => walk(next, graph, state, path, cycles),
                    Visit::OnPath => {
                        if let Some(start) = path.iter().position(|&on_path| on_path == next) {
                            let mut cycle = path[start..].to_vec();
                            cycle.push(next);
                            cycles.push(cycle);
                        }
                    }
                    Visit::Done => {}
                }
            }
            path.pop();
            state[node] = Visit::Done;
        }

        let repositories = &self.config.repositories;
        let index_of: HashMap<&str, usize> = repositories
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(index, repository)| Some((repository.metadata.name.as_deref()?, index)))
            .collect();
        let graph: Vec<Vec<usize>> = repositories
            .iter()
            .enumerate()
            .map(|(index, repository)| {
                repository
                    .upstream_names()
                    .filter_map(|name| index_of.get(name).copied())
                    // Self-references are reported with the upstream list.
                    .filter(|&upstream| upstream != index)
                    .collect()
            })
            .collect();

        let mut state = vec![Visit::Unseen; repositories.len()];
        let mut cycles = Vec::new();
        for start in 0..repositories.len() {
            if state[start] == Visit::Unseen {
                walk(start, &graph, &mut state, &mut Vec::new(), &mut cycles);
            }
        }
        for cycle in cycles {
            let names: Vec<&str> = cycle.iter().map(|&index| repositories[index].name()).collect();
            self.report(
                ObjectAt::Repository(cycle[0]),
                "spec.upstreams",
                format!("upstream cycle: {}", names.join(" -> ")),
            );
        }
    }

    /// Reports every Repository whose upstream chain reaches a Repository that does not
    /// consent to serving its readers (see [`crate::consent`]).
    fn upstream_consent(&mut self) {
        let repositories = &self.config.repositories;
        for (index, repository) in repositories.iter().enumerate() {
            for refusal in crate::consent::refusals(repository, |name| self.config.repository(name)) {
                self.report(ObjectAt::Repository(index), &refusal.path, refusal.message);
            }
        }
    }

    fn policies(&mut self) {
        let config = self.config;
        let domain_name = config.domain_name();
        let domain_namespace = config.domain.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let mut seen: HashMap<(String, String), usize> = HashMap::new();

        for (index, policy) in config.policies.iter().enumerate() {
            let about = ObjectAt::Policy(index);
            let namespace = policy.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            match policy.metadata.name.as_deref() {
                None | Some("") => self.report(about, "metadata.name", "missing name".to_owned()),
                Some(name) => {
                    if let Some(first) = seen.insert((namespace.to_owned(), name.to_owned()), index) {
                        let elsewhere = self.describe_origin(ObjectAt::Policy(first));
                        self.report(
                            about,
                            "metadata.name",
                            format!("UpstreamPolicy {namespace}/{name} is defined twice{elsewhere}"),
                        );
                    }
                }
            }
            let spec = &policy.spec;

            if spec.target_refs.is_empty() {
                self.report(
                    about,
                    "spec.targetRefs",
                    "no targets; attach the policy to the Domain or to Repositories".to_owned(),
                );
            }
            for (position, target) in spec.target_refs.iter().enumerate() {
                let path = format!("spec.targetRefs[{position}]");
                match target.kind {
                    TargetKind::Domain => {
                        let target_namespace = target.namespace.as_deref().unwrap_or(namespace);
                        if target.name != domain_name || target_namespace != domain_namespace {
                            self.report(
                                about,
                                &path,
                                format!(
                                    "targets Domain {target_namespace}/{}, but this configuration's Domain is {domain_namespace}/{domain_name}",
                                    target.name
                                ),
                            );
                        }
                    }
                    TargetKind::Repository => match config.repository(&target.name) {
                        None => self.report(
                            about,
                            &path,
                            format!("no Repository named `{}` in Domain {domain_name}", target.name),
                        ),
                        Some(repository) => {
                            let actual = repository.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
                            if let Some(wanted) = target.namespace.as_deref()
                                && wanted != actual
                            {
                                self.report(
                                    about,
                                    &format!("{path}.namespace"),
                                    format!("Repository `{}` is in namespace {actual}, not {wanted}", target.name),
                                );
                            }
                        }
                    },
                }
            }

            if let Some(text) = spec.metadata_ttl.as_deref()
                && let Err(error) = parse_duration(text)
            {
                self.report(about, "spec.metadataTTL", error.to_string());
            }

            let mut patterns_seen: BTreeMap<String, usize> = BTreeMap::new();
            for (rule_index, rule) in spec.rules.iter().enumerate() {
                let rule_path = format!("spec.rules[{rule_index}]");
                if rule.patterns.is_empty() {
                    self.report(
                        about,
                        &format!("{rule_path}.patterns"),
                        "no patterns; use [\"/*\"] for every package".to_owned(),
                    );
                }
                for (position, text) in rule.patterns.iter().enumerate() {
                    let path = format!("{rule_path}.patterns[{position}]");
                    match PackagePattern::parse(text) {
                        Err(error) => self.report(about, &path, error.to_string()),
                        Ok(pattern) => {
                            if let Some(first_rule) = patterns_seen.insert(pattern.to_string(), rule_index)
                                && first_rule != rule_index
                            {
                                self.report(
                                    about,
                                    &path,
                                    format!(
                                        "pattern {pattern} is also in spec.rules[{first_rule}]; one rule per pattern, or the policy is ambiguous"
                                    ),
                                );
                            }
                        }
                    }
                }
                for (field, restriction) in [
                    ("publish", &rule.publish),
                    ("externalUpstream", &rule.external_upstream),
                    ("internalUpstream", &rule.internal_upstream),
                ] {
                    if let Some(restriction) = restriction {
                        self.restriction(about, &format!("{rule_path}.{field}"), restriction);
                    }
                }
                if let Some(text) = rule.minimum_release_age.as_deref()
                    && let Err(error) = parse_duration(text)
                {
                    self.report(about, &format!("{rule_path}.minimumReleaseAge"), error.to_string());
                }
                for (position, text) in rule.blocked_versions.iter().enumerate() {
                    if let Err(error) = BlockedVersion::parse(text) {
                        self.report(about, &format!("{rule_path}.blockedVersions[{position}]"), error.to_string());
                    }
                }
            }
        }
    }

    fn restriction(&mut self, about: ObjectAt, path: &str, restriction: &Restriction) {
        match restriction.mode {
            RestrictionMode::AllowSpecificRepositories if restriction.repositories.is_empty() => {
                self.report(
                    about,
                    &format!("{path}.repositories"),
                    "AllowSpecificRepositories needs a list of repositories".to_owned(),
                );
            }
            RestrictionMode::AllowSpecificRepositories => {
                for (position, name) in restriction.repositories.iter().enumerate() {
                    if self.config.repository(name).is_none() {
                        self.report(
                            about,
                            &format!("{path}.repositories[{position}]"),
                            format!("no Repository named `{name}` in Domain {}", self.config.domain_name()),
                        );
                    }
                }
            }
            mode if !restriction.repositories.is_empty() => self.report(
                about,
                &format!("{path}.repositories"),
                format!("repositories are only used with mode AllowSpecificRepositories, not {mode}"),
            ),
            _ => {}
        }
    }

    fn name(&mut self, about: ObjectAt, name: Option<&str>) {
        match name {
            None | Some("") => self.report(about, "metadata.name", "missing name".to_owned()),
            Some(name) => {
                if let Err(message) = check_dns_label(name) {
                    self.report(about, "metadata.name", message);
                }
            }
        }
    }

    fn required(&mut self, about: ObjectAt, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.report(about, path, "must not be empty".to_owned());
        }
    }

    fn secret(&mut self, about: ObjectAt, path: &str, secret: Option<&crate::common::SecretRef>) {
        if let Some(secret) = secret {
            self.required(about, &format!("{path}.name"), &secret.name);
        }
    }
}

use crate::repository::CLEANUP_RULE_NEEDS_A_LIMIT;

/// Whether `text` is an http(s) origin and nothing more: scheme, host, optional port.
fn is_bare_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else { return false };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    matches!(scheme, "http" | "https")
        && is_http_url(text)
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
}

/// Checks an RFC 1123 label: 1 to 63 characters of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit (names appear in URLs and Kubernetes object names).
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 63 {
        return Err(format!("`{name}` is longer than 63 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("`{name}` may only contain lowercase letters, digits and '-'"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("`{name}` must start and end with a letter or digit"));
    }
    Ok(())
}

/// Reads every document of `text`, appending what parsed to `documents` and what did not
/// to `problems`.
fn parse_into(source: &str, text: &str, documents: &mut Vec<Document>, problems: &mut Vec<Problem>) {
    for raw in split_documents(text) {
        let origin = Origin { source: source.to_owned(), document: raw.number, line: raw.first_line };
        match parse_document(raw.text, &origin) {
            Ok(Some(resource)) => documents.push(Document { resource, origin }),
            Ok(None) => {}
            Err(problem) => problems.push(*problem),
        }
    }
}

/// Reads the documents of a YAML text without validating them as a configuration (the
/// operator reads objects one by one). Documents are numbered from 1.
pub fn parse_documents(source_name: &str, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    parse_into(source_name, text, &mut documents, &mut problems);
    if problems.is_empty() { Ok(documents) } else { Err(ConfigError::Invalid { problems }) }
}

struct RawDocument<'a> {
    number: usize,
    first_line: usize,
    text: &'a str,
}

/// Splits a YAML stream at its `---` markers, numbering documents the way a person counts
/// them: comments before the first marker are not a document; an empty document between
/// two markers still counts.
fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    // (first line, byte offset, started by a marker)
    let mut starts = vec![(1usize, 0usize, false)];
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        if content == "---" || content.starts_with("--- ") || content.starts_with("---\t") {
            starts.push((index + 1, offset, true));
        }
        offset += line.len();
    }

    let mut documents = Vec::new();
    let mut number = 0;
    for (position, &(first_line, start, explicit)) in starts.iter().enumerate() {
        let end = starts.get(position + 1).map_or(text.len(), |next| next.1);
        let chunk = &text[start..end];
        if !explicit && is_blank(chunk) {
            continue;
        }
        number += 1;
        let body = if explicit {
            // The marker line may carry content (`--- !tag`) or only a comment.
            let marker_rest = chunk.split('\n').next().unwrap_or_default();
            let marker_rest = marker_rest.trim_start_matches('-');
            let rest = chunk.split_once('\n').map_or("", |(_, rest)| rest);
            is_blank(marker_rest) && is_blank(rest)
        } else {
            false
        };
        if body {
            continue;
        }
        documents.push(RawDocument { number, first_line, text: chunk });
    }
    documents
}

/// Whether a piece of YAML holds only blank lines, comments and directives.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    })
}

fn parse_document(text: &str, origin: &Origin) -> Result<Option<WharfResource>, Box<Problem>> {
    let problem = |object: Option<String>, path: Option<String>, message: String| {
        Box::new(Problem {
            source: Some(origin.source.clone()),
            document: Some(origin.document),
            object,
            path,
            message,
        })
    };

    let options = serde_saphyr::options! {
        with_snippet: false,
        // YAML 1.2 booleans: a namespace called `no` stays a string.
        strict_booleans: true,
    };
    let value: Value = match serde_saphyr::from_str_with_options(text, options) {
        Ok(value) => value,
        Err(error) => {
            let render = serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                line_offset: (origin.line as u64).saturating_sub(1),
                snippets: serde_saphyr::SnippetMode::Off,
            };
            return Err(problem(None, None, format!("invalid YAML: {}", error.render_with_options(render))));
        }
    };
    let object = match value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        other => {
            return Err(problem(
                None,
                None,
                format!("expected a mapping with apiVersion, kind, metadata and spec, found {}", json_type(&other)),
            ));
        }
    };

    let kind = object.get("kind").and_then(Value::as_str).map(str::to_owned);
    let name =
        object.get("metadata").and_then(|metadata| metadata.get("name")).and_then(Value::as_str).map(str::to_owned);
    let label = kind.as_ref().map(|kind| match &name {
        Some(name) => format!("{kind} {name}"),
        None => kind.clone(),
    });

    match object.get("apiVersion") {
        None => {
            return Err(problem(label, Some("apiVersion".into()), "missing field".into()));
        }
        Some(Value::String(api_version)) if api_version == API_VERSION => {}
        // Other API groups (the Namespaces or Secrets of a folder `kubectl apply` takes) are
        // not the registry's to read; a folder applied to a cluster loads as it is.
        Some(Value::String(api_version)) if !api_version.starts_with(concat!("wharf.dev", "/")) => return Ok(None),
        Some(other) => {
            let shown = other.as_str().map_or_else(|| other.to_string(), str::to_owned);
            return Err(problem(
                label,
                Some("apiVersion".into()),
                format!("unsupported apiVersion `{shown}`; expected {API_VERSION}"),
            ));
        }
    }
    let Some(kind) = kind else {
        let message = if object.contains_key("kind") { "must be a string" } else { "missing field" };
        return Err(problem(None, Some("kind".into()), message.into()));
    };

    let value = Value::Object(object);
    let typed = match kind.as_str() {
        "Domain" => typed::<Domain>(&value).map(|domain| WharfResource::Domain(Box::new(domain))),
        "Repository" => typed::<Repository>(&value).map(|repository| WharfResource::Repository(Box::new(repository))),
        "UpstreamPolicy" => {
            typed::<UpstreamPolicy>(&value).map(|policy| WharfResource::UpstreamPolicy(Box::new(policy)))
        }
        other => {
            return Err(problem(
                label,
                Some("kind".into()),
                format!("unknown kind `{other}`; expected Domain, Repository or UpstreamPolicy"),
            ));
        }
    };
    typed.map(Some).map_err(|(path, message)| problem(label, path, message))
}

/// Deserializes a resource, then reports fields the types do not know. The apiserver
/// would drop them silently; `kubectl apply` refuses them (strict field validation), and
/// so do we, because a misspelt field is otherwise a silent misconfiguration.
fn typed<T: DeserializeOwned + serde::Serialize>(value: &Value) -> Result<T, (Option<String>, String)> {
    let resource: T = serde_path_to_error::deserialize(value.clone()).map_err(|error| {
        let path = error.path().to_string();
        let path = (path != ".").then_some(path);
        let message = error.inner().to_string();
        // serde reports a missing field at its parent; point at the field itself.
        if let Some(field) = message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
            let path = match path {
                Some(parent) => format!("{parent}.{field}"),
                None => field.to_owned(),
            };
            return (Some(path), "missing field".to_owned());
        }
        (path, message)
    })?;
    if let Ok(known) = serde_json::to_value(&resource) {
        let mut unknown = Vec::new();
        unknown_fields(value, &known, "", &mut unknown);
        if let Some(first) = unknown.first() {
            let message = if unknown.len() == 1 {
                "unknown field".to_owned()
            } else {
                format!("unknown field (and {})", unknown[1..].join(", "))
            };
            return Err((Some(first.clone()), message));
        }
    }
    Ok(resource)
}

/// Collects paths present in `given` (with a value) but absent from `known`, the typed
/// resource serialized back.
fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match known.get(key) {
                    Some(known_value) => unknown_fields(value, known_value, &child, out),
                    None if is_empty_value(value) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (index, (value, known_value)) in given.iter().zip(known).enumerate() {
                unknown_fields(value, known_value, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => false,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Turns parsed documents into a validated configuration: exactly one Domain.
fn assemble(documents: Vec<Document>, mut problems: Vec<Problem>) -> Result<DomainConfig, ConfigError> {
    let mut domains = Vec::new();
    let mut repositories = Vec::new();
    let mut policies = Vec::new();
    let mut origins = Origins::default();
    for Document { resource, origin } in documents {
        match resource {
            WharfResource::Domain(domain) => domains.push((*domain, origin)),
            WharfResource::Repository(repository) => {
                repositories.push(*repository);
                origins.repositories.push(origin);
            }
            WharfResource::UpstreamPolicy(policy) => {
                policies.push(*policy);
                origins.policies.push(origin);
            }
        }
    }
    // A document that failed before its kind was known may have been the Domain.
    let domain_may_have_failed = problems.iter().any(|problem| {
        problem.object.as_deref().is_none_or(|object| object == "Domain" || object.starts_with("Domain "))
    });

    let mut domains = domains.into_iter();
    let first_domain = domains.next();
    for (extra, origin) in domains {
        let first_name = first_domain.as_ref().and_then(|(domain, _)| domain.metadata.name.clone()).unwrap_or_default();
        problems.push(Problem {
            source: Some(origin.source),
            document: Some(origin.document),
            object: Some(format!("Domain {}", extra.metadata.name.unwrap_or_default())),
            path: None,
            message: format!("a second Domain; a configuration holds exactly one (the first is {first_name})"),
        });
    }
    let Some((domain, domain_origin)) = first_domain else {
        if !domain_may_have_failed {
            problems.push(Problem {
                source: None,
                document: None,
                object: None,
                path: None,
                message: "no Domain found; a configuration holds exactly one Domain".to_owned(),
            });
        }
        return Err(ConfigError::Invalid { problems });
    };
    if !problems.is_empty() {
        return Err(ConfigError::Invalid { problems });
    }
    origins.domain = Some(domain_origin);
    DomainConfig { domain, repositories, policies }.validate_with_origins(&origins)
}

/// Whether `text` is a Kubernetes quantity above zero in the forms a volume size takes:
/// digits, an optional fraction, an optional binary or decimal suffix (`50Gi`, `1.5T`).
fn is_positive_quantity(text: &str) -> bool {
    let number = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"]
        .iter()
        .find_map(|suffix| text.strip_suffix(suffix))
        .unwrap_or(text);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction) && number.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// What is wrong with one source of a Repository's `network` rules in `config`'s Domain.
fn network_source_problems(source: &crate::repository::NetworkSource, config: &DomainConfig) -> Vec<String> {
    use crate::repository::NetworkSourceKind;
    let mut problems = Vec::new();
    match (source.kind, source.cidr.as_deref()) {
        (NetworkSourceKind::Cidr, None) => problems.push("kind CIDR names its range in cidr".to_owned()),
        (NetworkSourceKind::Cidr, Some(cidr)) if crate::repository::parse_cidr(cidr).is_none() => {
            problems.push(format!("{cidr:?} is not a CIDR (192.168.10.0/24, 2001:db8::/48) or an address"))
        }
        (NetworkSourceKind::InCluster, Some(_)) => problems
            .push("kind InCluster takes no cidr: the Domain's network.clusterCIDRs say what is inside".to_owned()),
        (NetworkSourceKind::InCluster, None)
            if config.domain.spec.network.as_ref().is_none_or(|network| network.cluster_cidrs.is_empty()) =>
        {
            problems.push(format!(
                "Domain {} names no network.clusterCIDRs, so InCluster would match no caller: list the cluster's \
                 pod (and node) ranges there",
                config.domain_name()
            ))
        }
        _ => {}
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOMAIN: &str = "\
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
  externalConnections:
    - {name: npm-public, format: npm, url: \"https://npm.example\"}
";

    fn repository(name: &str, upstreams: &[&str]) -> String {
        let upstreams: Vec<String> = upstreams.iter().map(|u| format!("{{name: {u}}}")).collect();
        format!(
            "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}}}\nspec:\n  domainRef: {{name: acme}}\n  upstreams: [{}]\n",
            upstreams.join(", ")
        )
    }

    fn load(text: &str) -> Result<DomainConfig, ConfigError> {
        DomainConfig::from_yaml_str("test.yaml", text)
    }

    fn messages(error: &ConfigError) -> Vec<String> {
        error.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_audit_webhook_is_an_http_url_and_retention_is_bounded() {
        let text = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
  audit: {webhookURL: "ftp://siem.example/intake", retentionDays: 0}
"#;
        let error = load(text).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 1 (Domain acme): spec.audit.webhookURL: `ftp://siem.example/intake` is not an http(s) URL",
                "test.yaml: document 1 (Domain acme): spec.audit.retentionDays: keep events 1 to 3650 days",
            ]
        );
        let good = text.replace("ftp://siem.example/intake", "https://siem.example/intake").replace(": 0}", ": 30}");
        let config = load(&good).unwrap();
        assert_eq!(config.domain.spec.audit.unwrap().retention_days, Some(30));
    }

    #[test]
    fn oidc_subjects_need_a_trusted_issuer_and_issuers_are_checked() {
        let text = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
  tokens:
    trustedIssuers:
      - {issuer: "https://token.actions.example", audiences: ["https://wharf.example"], clockSkew: 30s}
      - {issuer: "http://ci.example", audiences: [""], jwksURL: "ftp://keys", clockSkew: 10m}
      - {issuer: "https://token.actions.example", audiences: [a]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: web}
spec:
  domainRef: {name: acme}
  access:
    publish:
      - {kind: OIDC, issuer: "https://token.actions.example", claims: {repository: acme/web}}
      - {kind: OIDC, issuer: "https://gitlab.example", claims: {project_path: acme/web}}
"#;
        let error = load(text).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[1].issuer: `http://ci.example` is not an https URL (http only on a loopback address)",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[1].audiences: name the audiences accepted (what the CI job asks its issuer for); an empty one is not",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[1].jwksURL: `ftp://keys` is not an https URL (http only on a loopback address)",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[1].clockSkew: 10m is more than 5m",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[2].issuer: issuer https://token.actions.example is listed twice",
                "test.yaml: document 2 (Repository web): spec.access.publish[1].issuer: Domain acme does not trust issuer https://gitlab.example; add it to its spec.tokens.trustedIssuers",
            ]
        );
        let trusted = text.replace("https://gitlab.example", "https://token.actions.example");
        let start = trusted.find("      - {issuer: \"http://ci.example\"").unwrap();
        let end = trusted.find("---").unwrap();
        let valid = format!("{}{}", &trusted[..start], &trusted[end..]);
        let config = load(&valid).unwrap();
        let issuer = config.domain.spec.trusted_issuer("https://token.actions.example").unwrap();
        assert_eq!(issuer.clock_skew(), std::time::Duration::from_secs(30));
        assert!(config.domain.spec.trusted_issuer("http://127.0.0.1:4444").is_none());
    }

    #[test]
    fn network_rules_name_ranges_and_in_cluster_needs_the_clusters() {
        let repository = "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: web}\nspec:\n  \
                          domainRef: {name: acme}\n  network:\n    read: [{kind: InCluster}, {kind: CIDR, cidr: 192.168.1.0/24}]\n    \
                          publish: [{kind: CIDR, cidr: 10.1.2.3}]\n";
        let network = "  network: {clusterCIDRs: [10.244.0.0/16, \"fd00:10:244::/56\"]}\n";
        let config = load(&format!("{DOMAIN}{network}{repository}")).unwrap();
        let rules = config.repository("web").unwrap().spec.network.clone().unwrap();
        assert_eq!(rules.publishers().len(), 1);
        let messages = messages(&load(&format!("{DOMAIN}{repository}")).unwrap_err());
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains("spec.network.read[0]: Domain acme names no network.clusterCIDRs"),
            "{messages:?}"
        );
        let broken = repository
            .replace("192.168.1.0/24", "192.168.1.0/33")
            .replace("{kind: InCluster}", "{kind: InCluster, cidr: 10.0.0.0/8}");
        let bad_cluster =
            "  network: {clusterCIDRs: [10.244.0.0]}\n  registry: {}\n".replace("10.244.0.0]", "10.244.0.0/99]");
        let wrong = super::tests::messages(&load(&format!("{DOMAIN}{bad_cluster}{broken}")).unwrap_err());
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        assert!(wrong[0].contains("spec.network.clusterCIDRs[0]: \"10.244.0.0/99\" is not a CIDR"), "{wrong:?}");
        assert!(wrong[1].contains("spec.network.read[0]: kind InCluster takes no cidr"), "{wrong:?}");
        assert!(wrong[2].contains("spec.network.read[1]: \"192.168.1.0/33\" is not a CIDR"), "{wrong:?}");
    }

    #[test]
    fn exposure_names_one_way_in_and_real_hosts() {
        let fine = "  registry:\n    trustedProxies: [10.0.0.0/8]\n    expose: {hosts: [wharf.acme.example], ingress: {className: nginx}}\n";
        assert!(load(&format!("{DOMAIN}{fine}")).is_ok());
        let wrong = "  registry:\n    trustedProxies: [ingress]\n    expose: {hosts: [\"https://Wharf.example\"]}\n";
        let messages = messages(&load(&format!("{DOMAIN}{wrong}")).unwrap_err());
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].ends_with(crate::domain::EXPOSE_ROUTE_OR_INGRESS), "{messages:?}");
        assert!(
            messages[1].contains("expose.hosts[0]: \"https://Wharf.example\" is not a lowercase DNS name"),
            "{messages:?}"
        );
        assert!(messages[2].contains("trustedProxies[0]: \"ingress\" is not a CIDR"), "{messages:?}");
    }

    #[test]
    fn tls_names_one_source_of_its_certificate() {
        let secret = "  registry: {tls: {secretName: acme-tls}}\n";
        assert!(load(&format!("{DOMAIN}{secret}")).is_ok());
        let issuer =
            "  registry: {tls: {issuerRef: {name: ca, kind: ClusterIssuer}, dnsNames: [wharf.acme.example]}}\n";
        assert!(load(&format!("{DOMAIN}{issuer}")).is_ok());
        for (registry, message) in [
            ("  registry: {tls: {}}\n", crate::domain::TLS_SECRET_OR_ISSUER),
            ("  registry: {tls: {secretName: a, issuerRef: {name: ca}}}\n", crate::domain::TLS_SECRET_OR_ISSUER),
            ("  registry: {tls: {secretName: a, dnsNames: [x.example]}}\n", crate::domain::TLS_DNS_NAMES_NEED_ISSUER),
        ] {
            let messages = messages(&load(&format!("{DOMAIN}{registry}")).unwrap_err());
            assert!(messages.len() == 1 && messages[0].ends_with(message), "{registry}: {messages:?}");
        }
    }

    #[test]
    fn autoscaling_and_the_data_volume_are_checked() {
        let fine = "  registry: {autoscaling: {maxReplicas: 5}}\n";
        let config = load(&format!("{DOMAIN}{fine}")).unwrap();
        assert_eq!(config.domain.spec.registry.unwrap().autoscaling.unwrap().min_replicas(), 2);
        let registry = "  registry: {replicas: 2, autoscaling: {minReplicas: 4, maxReplicas: 3, \
                        targetCPUUtilizationPercentage: 150}, dataVolume: {size: 10Q}}\n";
        let error = load(&format!("{DOMAIN}{registry}")).unwrap_err();
        let messages = messages(&error);
        assert_eq!(messages.len(), 5, "{messages:?}");
        assert!(messages[0].ends_with(crate::domain::REPLICAS_OR_AUTOSCALING), "{messages:?}");
        assert!(messages[1].contains("targetCPUUtilizationPercentage: 150 is outside 1 to 100"), "{messages:?}");
        assert!(messages[2].contains("minReplicas cannot exceed maxReplicas"), "{messages:?}");
        assert!(messages[3].ends_with(crate::domain::DATA_VOLUME_NEEDS_FILESYSTEM), "{messages:?}");
        assert!(messages[4].contains("\"10Q\" is not a positive Kubernetes quantity"), "{messages:?}");
        for (size, positive) in
            [("50Gi", true), ("1.5T", true), ("100", true), ("0Gi", false), ("Gi", false), ("-1", false)]
        {
            assert_eq!(super::is_positive_quantity(size), positive, "{size}");
        }
    }

    #[test]
    fn pod_settings_leave_the_operators_labels_and_variables_alone() {
        let registry = "  registry: {podLabels: {app.kubernetes.io/name: x, team: web}, env: [{name: WHARF_ADMIN_TOKEN, value: x}, \
                        {name: HTTPS_PROXY, value: p}], terminationGracePeriodSeconds: 7200}\n";
        let error = load(&format!("{DOMAIN}{registry}")).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 1 (Domain acme): spec.registry.podLabels: app.kubernetes.io/name: app.kubernetes.io/ labels are the operator's (its selector uses them)",
                "test.yaml: document 1 (Domain acme): spec.registry.env: WHARF_ADMIN_TOKEN: WHARF_ variables are the operator's",
                "test.yaml: document 1 (Domain acme): spec.registry.terminationGracePeriodSeconds: 7200 is outside 0 to 3600",
            ]
        );
    }

    #[test]
    fn cleanup_rules_are_checked() {
        let repository = |cleanup: &str| {
            format!(
                "{DOMAIN}---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: web}}\n\
                 spec:\n  domainRef: {{name: acme}}\n  cleanup: {cleanup}\n"
            )
        };
        let config =
            load(&repository("[{name: old, packages: [\"/npm/acme/*\"], origin: Cached, olderThan: 90d}]")).unwrap();
        assert_eq!(config.repository("web").unwrap().spec.cleanup[0].older_than.as_deref(), Some("90d"));
        let error = load(&repository(
            "[{name: a, keepNewest: 1}, {name: a, packages: [\"npm/x\"], olderThan: soon}, {name: b, origin: Cached}, \
             {name: c, notDownloadedFor: 400d}]",
        ))
        .unwrap_err();
        let messages = messages(&error);
        assert_eq!(messages.len(), 5, "{messages:?}");
        assert!(messages[0].contains("spec.cleanup[1].name: `a` is used by an earlier rule"), "{messages:?}");
        assert!(messages[1].contains("spec.cleanup[1].packages[0]"), "{messages:?}");
        assert!(messages[2].contains("spec.cleanup[1].olderThan"), "{messages:?}");
        assert!(messages[3].contains(crate::repository::CLEANUP_RULE_NEEDS_A_LIMIT), "{messages:?}");
        assert!(messages[4].contains("spec.cleanup[3].notDownloadedFor: at most 365d"), "{messages:?}");
    }

    #[test]
    fn encryption_names_a_secret_and_not_one_of_its_keys() {
        let config = load(&format!("{DOMAIN}  encryption: {{keySecretRef: {{name: acme-keys}}}}\n")).unwrap();
        assert_eq!(config.domain.spec.encryption.unwrap().key_secret_ref.name, "acme-keys");
        let error =
            load(&format!("{DOMAIN}  encryption: {{keySecretRef: {{name: acme-keys, key: k1}}}}\n")).unwrap_err();
        assert_eq!(
            messages(&error),
            [format!(
                "test.yaml: document 1 (Domain acme): spec.encryption.keySecretRef.key: {}",
                crate::domain::ENCRYPTION_KEY_NAMED
            )]
        );
    }

    #[test]
    fn people_subjects_need_a_source_of_people_and_mappings_are_checked() {
        let repository = "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: web}\n\
             spec:\n  domainRef: {name: acme}\n  access:\n    read: [{kind: Group, name: \"idp:platform\"}]\n    \
             publish: [{kind: User, name: alice}, {kind: User}]\n";
        let error = load(&format!("{DOMAIN}{repository}")).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 2 (Repository web): spec.access.read[0]: Domain acme names no people, so this Group would match no one: set its spec.tokens.kubernetesUsers, or a trusted issuer's people",
                "test.yaml: document 2 (Repository web): spec.access.publish[0]: Domain acme names no people, so this User would match no one: set its spec.tokens.kubernetesUsers, or a trusted issuer's people",
                "test.yaml: document 2 (Repository web): spec.access.publish[1]: User needs a name",
                "test.yaml: document 2 (Repository web): spec.access.publish[1]: Domain acme names no people, so this User would match no one: set its spec.tokens.kubernetesUsers, or a trusted issuer's people",
            ]
        );
        let idp = |people: &str| {
            format!(
                "{DOMAIN}  tokens:\n    trustedIssuers:\n      - {{issuer: \"https://idp.example\", audiences: [wharf-cli], people: {people}}}\n"
            )
        };
        let error = load(&idp("{usernameClaim: \"\", prefix: \"system:x\", clientID: other}")).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[0].people.usernameClaim: name the claim holding the user name, such as email or preferred_username",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[0].people.prefix: `system:` names belong to Kubernetes; choose another prefix",
                "test.yaml: document 1 (Domain acme): spec.tokens.trustedIssuers[0].people.clientID: client other is not among the audiences; its ID tokens would be refused",
            ]
        );
        let people = "{usernameClaim: email, groupsClaim: groups, prefix: \"idp:\", clientID: wharf-cli}";
        let config = load(&format!("{}{}", idp(people), repository.replace(", {kind: User}", ""))).unwrap();
        let mapping = config.domain.spec.trusted_issuer("https://idp.example").unwrap().people.clone().unwrap();
        let claims = |value: serde_json::Value| value.as_object().unwrap().clone();
        let alice = mapping
            .person(&claims(
                serde_json::json!({"email": "alice@example.com", "email_verified": true, "groups": ["platform", ""]}),
            ))
            .unwrap();
        assert_eq!(
            (alice.username.as_str(), alice.groups.as_slice()),
            ("idp:alice@example.com", ["idp:platform".to_owned()].as_slice())
        );
        assert!(
            mapping.person(&claims(serde_json::json!({"email": "alice@example.com"}))).is_none(),
            "unverified email"
        );
        assert!(mapping.person(&claims(serde_json::json!({"email": "", "email_verified": true}))).is_none());
        let bare = crate::PeopleClaims {
            username_claim: "preferred_username".into(),
            prefix: String::new(),
            ..mapping.clone()
        };
        let impostor = serde_json::json!({"preferred_username": "system:serviceaccount:ci:bot"});
        assert!(bare.person(&claims(impostor)).is_none(), "a system: name is never a person's");
        let groups = serde_json::json!({"preferred_username": "eve", "groups": ["system:masters", "dev"]});
        assert_eq!(bare.person(&claims(groups)).unwrap().groups, ["dev"], "nor a system: group");
        let web = config.repository("web").unwrap();
        assert!(web.spec.access.read[0].includes_person(&alice));
        assert!(!web.spec.access.publish[0].includes_person(&alice), "User alice is the cluster's, not idp:alice");
        let kubernetes =
            load(&format!("{DOMAIN}  tokens: {{kubernetesUsers: true}}\n{repository}").replace(", {kind: User}", ""));
        assert!(kubernetes.unwrap().domain.spec.kubernetes_users());
    }

    #[test]
    fn loads_a_multi_document_text() {
        let text = format!("{DOMAIN}{}{}", repository("shared", &[]), repository("app", &["shared"]));
        let config = load(&text).unwrap();
        assert_eq!(config.domain_name(), "acme");
        assert_eq!(config.domain.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(config.repositories.len(), 2);
        assert_eq!(config.repository("app").unwrap().upstream_names().collect::<Vec<_>>(), ["shared"]);
        assert!(config.repository("nope").is_none());
    }

    #[test]
    fn missing_field_names_file_document_object_and_path() {
        let text = format!(
            "{DOMAIN}---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: main}}\nspec:\n  domainRef: {{name: acme}}\n  upstreams: [{{}}]\n"
        );
        let error = load(&text).unwrap_err();
        assert_eq!(error.to_string(), "test.yaml: document 2 (Repository main): spec.upstreams[0].name: missing field");
    }

    #[test]
    fn document_numbers_count_like_a_person() {
        let text = format!(
            "# leading comment\n---\n{DOMAIN}---\n# an empty document\n---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: main}}\nspec: {{domainRef: {{name: acme}}, description: [1]}}\n"
        );
        let error = load(&text).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("test.yaml: document 3 (Repository main): spec.description: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn yaml_syntax_errors_carry_the_line_of_the_file() {
        let text = format!("{DOMAIN}---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: main\n");
        let error = load(&text).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("test.yaml: document 2: invalid YAML"), "{message}");
        assert!(message.contains("line 11") || message.contains("line 12"), "{message}");
    }

    #[test]
    fn unknown_kind_api_version_and_field() {
        let text = format!(
            "{DOMAIN}---\napiVersion: wharf.dev/v1\nkind: Repository\nmetadata: {{name: a}}\n---\napiVersion: wharf.dev/v1alpha1\nkind: Registry\nmetadata: {{name: b}}\n---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: c}}\nspec: {{domainRef: {{name: acme}}, upstream: [{{name: a}}]}}\n"
        );
        let error = load(&text).unwrap_err();
        let messages = messages(&error);
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert_eq!(
            messages[0],
            "test.yaml: document 2 (Repository a): apiVersion: unsupported apiVersion `wharf.dev/v1`; expected wharf.dev/v1alpha1"
        );
        assert!(messages[1].starts_with("test.yaml: document 3 (Registry b): kind: unknown kind `Registry`"));
        assert_eq!(messages[2], "test.yaml: document 4 (Repository c): spec.upstream: unknown field");
        assert!(error.to_string().starts_with("3 problems in the configuration:\n  test.yaml"));
    }

    #[test]
    fn needs_exactly_one_domain() {
        let error = load(&repository("a", &[])).unwrap_err();
        assert_eq!(messages(&error), ["no Domain found; a configuration holds exactly one Domain"]);
        let error = load(&format!("{DOMAIN}---\n{DOMAIN}")).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 2 (Domain acme): a second Domain; a configuration holds exactly one (the first is acme)"
            ]
        );
    }

    #[test]
    fn reports_upstream_cycles_with_their_path() {
        let text = format!(
            "{DOMAIN}{}{}{}{}",
            repository("a", &["b"]),
            repository("b", &["c"]),
            repository("c", &["a"]),
            repository("d", &["d"]),
        );
        let error = load(&text).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 5 (Repository d): spec.upstreams[0].name: a Repository cannot be its own upstream",
                "test.yaml: document 2 (Repository a): spec.upstreams: upstream cycle: a -> b -> c -> a",
            ]
        );
    }

    #[test]
    fn reports_unknown_duplicate_and_too_many_upstreams() {
        let many: Vec<String> = (0..11).map(|i| format!("r{i}")).collect();
        let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut text = format!("{DOMAIN}{}", repository("app", &many_refs));
        for name in &many[..10] {
            text.push_str(&repository(name, &[]));
        }
        text.push_str(&repository("dup", &["r1", "r1", "ghost"]));
        let error = load(&text).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 2 (Repository app): spec.upstreams: 11 upstreams are listed; at most 10 are allowed",
                "test.yaml: document 2 (Repository app): spec.upstreams[10].name: no Repository named `r10` in Domain acme",
                "test.yaml: document 13 (Repository dup): spec.upstreams[1].name: `r1` is listed twice",
                "test.yaml: document 13 (Repository dup): spec.upstreams[2].name: no Repository named `ghost` in Domain acme",
            ]
        );
    }

    #[test]
    fn collects_every_validation_problem() {
        let text = "\
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}, filesystem: {path: /data}}
  tokens: {maxTTL: 5m}
  externalConnections:
    - {name: npm-public, format: npm, url: \"npm.example\"}
    - {name: npm-public, format: npm, url: \"https://npm.example\"}
    - {name: files-public, format: generic, url: \"https://files.example\"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: Main_Repo}
spec:
  domainRef: {name: other}
  externalConnection: pypi-public
  access:
    read: [{kind: ServiceAccount, name: bot}]
    publish: [{kind: Anonymous}]
";
        let error = load(text).unwrap_err();
        let messages = messages(&error);
        let expected = [
            "test.yaml: document 1 (Domain acme): spec.storage: 2 storage backends are set (filesystem, memory); set exactly one",
            "test.yaml: document 1 (Domain acme): spec.externalConnections[0].url: `npm.example` is not an http(s) URL",
            "test.yaml: document 1 (Domain acme): spec.externalConnections[1].name: external connection `npm-public` is already defined at spec.externalConnections[0]",
            "test.yaml: document 1 (Domain acme): spec.externalConnections[2].format: external connections of format generic are not served yet; connections are served for npm, pypi, maven, nuget, swift, cargo, go",
            "test.yaml: document 1 (Domain acme): spec.tokens.maxTTL: 5m is outside the allowed range 15m to 12h",
            "test.yaml: document 2 (Repository Main_Repo): metadata.name: `Main_Repo` may only contain lowercase letters, digits and '-'",
            "test.yaml: document 2 (Repository Main_Repo): spec.domainRef: refers to Domain default/other, but this configuration's Domain is default/acme",
            "test.yaml: document 2 (Repository Main_Repo): spec.externalConnection: no external connection named `pypi-public` in Domain acme; known: npm-public, npm-public, files-public",
            "test.yaml: document 2 (Repository Main_Repo): spec.access.read[0]: ServiceAccount needs a namespace",
            "test.yaml: document 2 (Repository Main_Repo): spec.access.publish[0]: Anonymous may only read; publishing always needs an identity",
        ];
        assert_eq!(messages, expected);
    }

    #[test]
    fn validates_policies() {
        let text = format!(
            "{DOMAIN}{}---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {{name: rules}}
spec:
  targetRefs: [{{kind: Domain, name: acme}}, {{kind: Repository, name: ghost}}]
  metadataTTL: soon
  rules:
    - patterns: [\"/npm/acme/*\", \"/npm/acme\"]
      publish: Allow
      internalUpstream: {{mode: AllowSpecificRepositories}}
      externalUpstream: {{mode: Block, repositories: [shared]}}
      minimumReleaseAge: 3w
      blockedVersions: [\"/npm/acme/*@1.0.0\"]
    - patterns: [\"/npm/acme/*\"]
      internalUpstream: {{mode: AllowSpecificRepositories, repositories: [shared, nope]}}
",
            repository("shared", &[])
        );
        let error = load(&text).unwrap_err();
        let messages = messages(&error);
        let prefix = "test.yaml: document 3 (UpstreamPolicy rules): ";
        let expected: Vec<String> = [
            "spec.targetRefs[1]: no Repository named `ghost` in Domain acme",
            "spec.metadataTTL: invalid duration `soon`; write whole numbers with units, like 1h30m",
            "spec.rules[0].patterns[1]: pattern `/npm/acme` has no package name; use /npm/acme/* for every package in namespace acme, or /npm//acme for the package acme without a namespace",
            "spec.rules[0].externalUpstream.repositories: repositories are only used with mode AllowSpecificRepositories, not Block",
            "spec.rules[0].internalUpstream.repositories: AllowSpecificRepositories needs a list of repositories",
            "spec.rules[0].minimumReleaseAge: unknown unit `w` in duration `3w`; use d, h, m or s",
            "spec.rules[0].blockedVersions[0]: blocked version `/npm/acme/*@1.0.0` needs an exact package name before `@`, like /npm//event-stream@3.3.6",
            "spec.rules[1].patterns[0]: pattern /npm/acme/* is also in spec.rules[0]; one rule per pattern, or the policy is ambiguous",
            "spec.rules[1].internalUpstream.repositories[1]: no Repository named `nope` in Domain acme",
        ]
        .iter()
        .map(|message| format!("{prefix}{message}"))
        .collect();
        assert_eq!(messages, expected);
    }

    #[test]
    fn namespaces_and_admission() {
        let text = format!(
            "{DOMAIN}---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: web, namespace: team-web}}
spec: {{domainRef: {{name: acme, namespace: default}}}}
"
        );
        let error = load(&text).unwrap_err();
        assert_eq!(
            messages(&error),
            [
                "test.yaml: document 2 (Repository web): metadata.namespace: namespace team-web may not attach Repositories to Domain acme: its repositoryNamespaces admit only default (from: Same)"
            ]
        );
        let admitted =
            text.replace("  storage: {memory: {}}\n", "  storage: {memory: {}}\n  repositoryNamespaces: {from: All}\n");
        let config = load(&admitted).unwrap();
        assert_eq!(config.repositories[0].metadata.namespace.as_deref(), Some("team-web"));
    }

    #[test]
    fn validate_names_objects_without_origins() {
        let mut config = DomainConfig::embedded_default("/tmp/wharf");
        config.repositories[0].spec.access.publish.push(Subject::anonymous());
        let error = config.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "Repository main: spec.access.publish[0]: Anonymous may only read; publishing always needs an identity"
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = DomainConfig::embedded_default("./data").validate().unwrap();
        assert_eq!(config.domain_name(), "default");
        assert_eq!(config.domain.spec.storage.filesystem.as_ref().unwrap().path, "./data");
        let main = config.repository("main").unwrap();
        assert!(main.allows_anonymous_read());
        assert!(main.spec.access.publish.is_empty());
        assert_eq!(main.spec.description.as_deref(), Some("Default hosted repository"));
    }

    #[test]
    fn yaml_round_trip() {
        let text = format!(
            "{DOMAIN}{}---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {{name: rules}}
spec:
  targetRefs: [{{kind: Domain, name: acme}}]
  rules:
    - patterns: [\"/npm/acme/*\"]
      publish: Allow
      internalUpstream: {{mode: AllowSpecificRepositories, repositories: [shared]}}
",
            repository("shared", &[])
        );
        let config = load(&text).unwrap();
        let rendered = config.to_yaml().unwrap();
        let again = load(&rendered).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn loads_a_folder_in_name_order() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("10-repositories.yml"), repository("app", &["shared"])).unwrap();
        std::fs::write(folder.path().join("00-domain.yaml"), format!("{DOMAIN}{}", repository("shared", &[]))).unwrap();
        std::fs::write(folder.path().join("README.md"), "not yaml").unwrap();
        std::fs::write(folder.path().join(".hidden.yaml"), "not: [valid").unwrap();
        std::fs::create_dir(folder.path().join("nested")).unwrap();
        std::fs::write(folder.path().join("nested/x.yaml"), "not: [valid").unwrap();

        let config = DomainConfig::load(folder.path()).unwrap();
        let names: Vec<&str> = config.repositories.iter().map(Repository::name).collect();
        assert_eq!(names, ["shared", "app"]);

        std::fs::write(folder.path().join("20-broken.yaml"), repository("late", &["ghost"])).unwrap();
        let error = DomainConfig::load(folder.path()).unwrap_err();
        let file = folder.path().join("20-broken.yaml").display().to_string();
        assert_eq!(
            error.to_string(),
            format!(
                "{file}: document 1 (Repository late): spec.upstreams[0].name: no Repository named `ghost` in Domain acme"
            )
        );
    }

    #[test]
    fn load_reports_missing_paths_and_empty_folders() {
        let folder = tempfile::tempdir().unwrap();
        let error = DomainConfig::load(folder.path()).unwrap_err();
        assert!(error.to_string().ends_with(": no .yaml or .yml files in this folder"));
        let missing = folder.path().join("missing.yaml");
        let error = DomainConfig::load(&missing).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().starts_with("failed to read configuration "));
    }

    #[test]
    fn parse_documents_reads_objects_one_by_one() {
        let documents = parse_documents("x.yaml", &format!("{DOMAIN}{}", repository("a", &[]))).unwrap();
        assert_eq!(documents.len(), 2);
        assert!(matches!(documents[0].resource, WharfResource::Domain(_)));
        assert_eq!(documents[1].origin.document, 2);
        assert_eq!(documents[1].origin.line, 8);
    }

    /// Every YAML file under `examples/` parses, and every folder holding a Domain loads as
    /// a valid configuration, so the examples cannot drift from the types.
    #[test]
    fn examples_load() {
        fn walk(folder: &Path, folders: &mut Vec<PathBuf>) {
            folders.push(folder.to_path_buf());
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(folder).unwrap().map(|entry| entry.unwrap().path()).collect();
            entries.sort();
            for entry in entries {
                if entry.is_dir() {
                    walk(&entry, folders);
                }
            }
        }

        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut folders = Vec::new();
        walk(&examples, &mut folders);
        let mut loaded = Vec::new();
        for folder in folders {
            let mut holds_domain = false;
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                let is_yaml = path.extension().is_some_and(|extension| extension == "yaml" || extension == "yml");
                if !is_yaml || !path.is_file() {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let documents =
                    parse_documents(&path.display().to_string(), &text).unwrap_or_else(|error| panic!("{error}"));
                holds_domain |= documents.iter().any(|document| matches!(document.resource, WharfResource::Domain(_)));
            }
            if holds_domain {
                DomainConfig::load(&folder).unwrap_or_else(|error| panic!("{error}"));
                loaded.push(folder.strip_prefix(&examples).unwrap().display().to_string());
            }
        }
        assert!(loaded.contains(&"local".to_owned()), "loaded {loaded:?}");
    }

    #[test]
    fn local_example_means_what_it_says() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local/wharf.yaml");
        let config = DomainConfig::load(&path).unwrap();
        assert_eq!(config.domain_name(), "acme");
        assert_eq!(config.domain.spec.storage.filesystem.as_ref().unwrap().path, "./wharf-data");
        assert!(!config.repository("internal").unwrap().allows_anonymous_read());
        assert!(config.repository("public").unwrap().allows_anonymous_read());
        assert_eq!(config.repository("app").unwrap().upstream_names().collect::<Vec<_>>(), ["internal"]);
        let policy = config.domain_policies().next().unwrap();
        let rule = &policy.spec.rules[0];
        assert_eq!(rule.patterns, ["/npm/acme/*"]);
        assert_eq!(rule.external_upstream, Some(Restriction::new(RestrictionMode::Block)));
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("a").is_ok());
        assert!(check_dns_label("team-web-2").is_ok());
        assert!(check_dns_label(&"a".repeat(63)).is_ok());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_label("").is_err());
        assert!(check_dns_label("-a").is_err());
        assert!(check_dns_label("a-").is_err());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label("A").is_err());
    }
}
