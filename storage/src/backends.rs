//! Opens the object store a Domain's `storage` names (S3, GCS, Azure, a local folder or
//! memory) with its credentials and key prefix. No network I/O: building a store only
//! reads Secrets from the secrets folder (and creates a local data folder); whether the
//! store answers, and honours conditional writes, is checked by
//! [`Storage::verify_conditional_writes`].

use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use wharf_api::{AzureStorage, GcsStorage, S3Storage, SecretRef, StorageSpec};

use crate::Storage;
use crate::encryption::EncryptedStore;
use crate::secrets::{SecretError, SecretsDir};

/// Keys of the Secret an S3 `credentialsSecretRef` names.
pub const S3_ACCESS_KEY_ID: &str = "accessKeyId";
pub const S3_SECRET_ACCESS_KEY: &str = "secretAccessKey";
pub const S3_SESSION_TOKEN: &str = "sessionToken";
/// Default key of the Secret a GCS `credentialsSecretRef` names (a service account key, JSON).
pub const GCS_SERVICE_ACCOUNT_KEY: &str = "serviceAccountKey";
/// Default key of the Secret an Azure `credentialsSecretRef` names.
pub const AZURE_ACCOUNT_KEY: &str = "accountKey";

/// A connection that cannot be made in this long is an unreachable endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (a part of a multipart upload included) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum OpenStorageError {
    #[error("storage must name exactly one backend (s3, gcs, azure, filesystem or memory), found {found:?}")]
    Backends { found: Vec<&'static str> },
    #[error("failed to create the data folder {path}")]
    CreateFolder {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open filesystem storage at {path}")]
    Filesystem {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("failed to read the credentials of {backend} storage from Secret {secret:?}")]
    Credentials {
        backend: &'static str,
        secret: String,
        #[source]
        source: SecretError,
    },
    #[error(
        "credentialsSecretRef of s3 storage names key {key:?} of Secret {secret:?}, but S3 credentials are \
         read from the keys {S3_ACCESS_KEY_ID}, {S3_SECRET_ACCESS_KEY} and (optional) {S3_SESSION_TOKEN}: \
         remove `key`"
    )]
    S3CredentialsKey { secret: String, key: String },
    #[error("storage prefix {prefix:?} is not a valid object key prefix")]
    Prefix {
        prefix: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("failed to configure {backend} storage {location}")]
    Configure {
        backend: &'static str,
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// Opens the storage `spec` names, reading credentials from `secrets`. A local folder and
/// memory belong to this process alone, which spares readers a storage round trip per
/// request ([`Storage::exclusive`]); buckets are shared by every replica of the Domain.
pub fn open_storage(spec: &StorageSpec, secrets: &SecretsDir) -> Result<Storage, OpenStorageError> {
    let StorageSpec { s3, gcs, azure, filesystem, memory } = spec;
    match (s3, gcs, azure, filesystem, memory) {
        (Some(s3), None, None, None, None) => {
            let store = open_s3(s3, secrets)?;
            Ok(Storage::new(with_prefix(store, s3.prefix.as_deref())?))
        }
        (None, Some(gcs), None, None, None) => {
            let store = open_gcs(gcs, secrets)?;
            Ok(Storage::new(with_prefix(store, gcs.prefix.as_deref())?))
        }
        (None, None, Some(azure), None, None) => {
            let store = open_azure(azure, secrets)?;
            Ok(Storage::new(with_prefix(store, azure.prefix.as_deref())?))
        }
        (None, None, None, Some(fs), None) => {
            create_private_folder(std::path::Path::new(&fs.path))
                .map_err(|source| OpenStorageError::CreateFolder { path: fs.path.clone(), source })?;
            let store = LocalFileSystem::new_with_prefix(&fs.path)
                .map_err(|source| OpenStorageError::Filesystem { path: fs.path.clone(), source })?
                // A folder emptied by a delete or a purge goes too: folders are what
                // listings see, so an empty one would list a package that is gone.
                .with_automatic_cleanup(true);
            Ok(Storage::exclusive(Arc::new(store)).with_local_folder(&fs.path))
        }
        (None, None, None, None, Some(_)) => Ok(Storage::exclusive(Arc::new(InMemory::new()))),
        _ => Err(OpenStorageError::Backends { found: spec.backends() }),
    }
}

/// Opens the storage the Domain's `storage` names, with credentials from
/// `secrets` (see [`open_storage`]). `mounted_at`, in cluster mode, is
/// where the pod has the Domain's filesystem volume: the path in the Domain is where the
/// operator mounts it, and the pod's own view of its mounts is what counts.
pub fn open_domain_storage(
    config: &wharf_api::DomainConfig,
    secrets: &SecretsDir,
    mounted_at: Option<&str>,
) -> anyhow::Result<Storage> {
    let mut spec = config.domain.spec.storage.clone();
    if let (Some(filesystem), Some(mounted_at)) = (spec.filesystem.as_mut(), mounted_at) {
        mounted_at.clone_into(&mut filesystem.path);
    }
    let storage = open_storage(&spec, secrets)
        .with_context(|| format!("failed to open the storage of Domain {:?}", config.domain_name()))?;
    Ok(match &config.domain.spec.encryption {
        Some(encryption) => storage.with_encryption(|inner| {
            EncryptedStore::from_secret(inner, secrets.clone(), encryption.key_secret_ref.name.clone())
        }),
        None => storage,
    })
}

/// Creates the data folder readable by its owner alone (0700): it holds the
/// token signing key and every artifact, private ones included. A folder
/// that already exists keeps its mode, with a warning when others may
/// enter it: a volume mounted with an `fsGroup` is group-accessible by
/// design, and the signing key inside is kept 0600 regardless
/// ([`Storage::token_signing_key`]).
fn create_private_folder(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            folder = %path.display(),
            mode = format!("{mode:o}"),
            "the data folder is open to other users, who may read stored packages; `chmod 700` it unless a \
             volume's fsGroup needs group access"
        );
    }
    Ok(())
}

/// Where the credentials of `spec`'s store come from, for messages when they are refused.
pub fn credentials_source(spec: &StorageSpec) -> String {
    let reference = match spec {
        StorageSpec { s3: Some(s3), .. } => s3.credentials_secret_ref.as_ref(),
        StorageSpec { gcs: Some(gcs), .. } => gcs.credentials_secret_ref.as_ref(),
        StorageSpec { azure: Some(azure), .. } => azure.credentials_secret_ref.as_ref(),
        _ => None,
    };
    match reference {
        Some(reference) => format!("the credentials of Secret {:?}", reference.name),
        None => "the ambient credentials (environment, instance or workload identity)".to_owned(),
    }
}

fn open_s3(s3: &S3Storage, secrets: &SecretsDir) -> Result<Arc<dyn ObjectStore>, OpenStorageError> {
    // The environment first (AWS_* variables, web identity, container and instance
    // credentials), so a pod's ambient identity works; the resource's fields win.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&s3.bucket)
        // Version records, origins and index revisions are written with If-None-Match:
        // the store must refuse a second create (checked at start-up).
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry_config())
        .with_client_options(client_options(s3.allow_http.unwrap_or(false)));
    if let Some(region) = non_empty(&s3.region) {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = non_empty(&s3.endpoint) {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(reference) = &s3.credentials_secret_ref {
        if let Some(key) = &reference.key {
            return Err(OpenStorageError::S3CredentialsKey { secret: reference.name.clone(), key: key.clone() });
        }
        let credentials =
            |source| OpenStorageError::Credentials { backend: "s3", secret: reference.name.clone(), source };
        let access_key_id = secrets.read(reference, S3_ACCESS_KEY_ID).map_err(credentials)?;
        let secret_access_key = secrets.read(reference, S3_SECRET_ACCESS_KEY).map_err(credentials)?;
        builder = builder.with_access_key_id(access_key_id).with_secret_access_key(secret_access_key);
        if let Some(token) = secrets.read_optional(reference, S3_SESSION_TOKEN).map_err(credentials)? {
            builder = builder.with_token(token);
        }
    }
    if let Some(kms_key_id) = non_empty(&s3.kms_key_id) {
        builder = builder.with_sse_kms_encryption(kms_key_id);
    }
    let store = builder.build().map_err(|source| OpenStorageError::Configure {
        backend: "s3",
        location: format!("bucket {:?}", s3.bucket),
        source,
    })?;
    Ok(Arc::new(store))
}

fn open_gcs(gcs: &GcsStorage, secrets: &SecretsDir) -> Result<Arc<dyn ObjectStore>, OpenStorageError> {
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&gcs.bucket)
        .with_retry(retry_config())
        .with_client_options(client_options(false));
    if let Some(reference) = &gcs.credentials_secret_ref {
        let key = read_credential("gcs", secrets, reference, GCS_SERVICE_ACCOUNT_KEY)?;
        builder = builder.with_service_account_key(key);
    }
    let store = builder.build().map_err(|source| OpenStorageError::Configure {
        backend: "gcs",
        location: format!("bucket {:?}", gcs.bucket),
        source,
    })?;
    Ok(Arc::new(store))
}

fn open_azure(azure: &AzureStorage, secrets: &SecretsDir) -> Result<Arc<dyn ObjectStore>, OpenStorageError> {
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_account(&azure.account)
        .with_container_name(&azure.container)
        .with_retry(retry_config())
        .with_client_options(client_options(false));
    if let Some(reference) = &azure.credentials_secret_ref {
        let key = read_credential("azure", secrets, reference, AZURE_ACCOUNT_KEY)?;
        builder = builder.with_access_key(key);
    }
    let store = builder.build().map_err(|source| OpenStorageError::Configure {
        backend: "azure",
        location: format!("account {:?} container {:?}", azure.account, azure.container),
        source,
    })?;
    Ok(Arc::new(store))
}

fn read_credential(
    backend: &'static str,
    secrets: &SecretsDir,
    reference: &SecretRef,
    default_key: &str,
) -> Result<String, OpenStorageError> {
    secrets.read(reference, default_key).map_err(|source| OpenStorageError::Credentials {
        backend,
        secret: reference.name.clone(),
        source,
    })
}

/// Puts the Domain under `prefix` of a shared bucket; `None`, empty or `/` is the whole bucket.
fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Result<Arc<dyn ObjectStore>, OpenStorageError> {
    let trimmed = prefix.unwrap_or_default().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(store);
    }
    let path = Path::parse(trimmed)
        .map_err(|source| OpenStorageError::Prefix { prefix: prefix.unwrap_or_default().to_owned(), source })?;
    Ok(Arc::new(PrefixStore::new(store, path)))
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Retries ride out a throttled or briefly failing store, but give up within seconds
/// rather than object_store's three minutes, so a request fails (and `/readyz` reports
/// the store unreachable) while a client would still wait for the answer.
fn retry_config() -> RetryConfig {
    RetryConfig { backoff: BackoffConfig::default(), max_retries: 4, retry_timeout: Duration::from_secs(20) }
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new().with_allow_http(allow_http).with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_api::FilesystemStorage;

    fn secrets_with(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, SecretsDir) {
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in files {
            std::fs::create_dir_all(dir.path().join(secret)).unwrap();
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
        let secrets = SecretsDir::new(dir.path());
        (dir, secrets)
    }

    fn s3(secret: Option<SecretRef>) -> StorageSpec {
        StorageSpec {
            s3: Some(S3Storage {
                bucket: "wharf".into(),
                prefix: Some("/domains/acme/".into()),
                region: Some("us-east-1".into()),
                endpoint: Some("http://127.0.0.1:9".into()),
                credentials_secret_ref: secret,
                allow_http: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reference(name: &str, key: Option<&str>) -> SecretRef {
        SecretRef { name: name.into(), key: key.map(Into::into) }
    }

    #[test]
    fn s3_opens_shared_with_credentials_from_the_secret() {
        let (_dir, secrets) = secrets_with(&[("acme-s3", "accessKeyId", "AK\n"), ("acme-s3", "secretAccessKey", "SK")]);
        let storage = open_storage(&s3(Some(reference("acme-s3", None))), &secrets).unwrap();
        assert!(!storage.is_exclusive(), "replicas share a bucket");
    }

    #[test]
    fn missing_s3_secret_key_names_the_secret_and_key() {
        let (_dir, secrets) = secrets_with(&[("acme-s3", "accessKeyId", "AK")]);
        let error = open_storage(&s3(Some(reference("acme-s3", None))), &secrets).unwrap_err();
        let chain = wharf_diagnostics::error_chain(&error);
        assert!(chain.contains("Secret \"acme-s3\"") && chain.contains("secretAccessKey"), "{chain}");
        let error = open_storage(&s3(Some(reference("acme-s3", Some("creds")))), &secrets).unwrap_err();
        assert!(matches!(error, OpenStorageError::S3CredentialsKey { .. }), "{error}");
    }

    #[test]
    fn prefix_must_be_a_valid_key_prefix() {
        let (_dir, secrets) = secrets_with(&[]);
        let mut spec = s3(None);
        if let Some(s3) = spec.s3.as_mut() {
            s3.prefix = Some("a/../b".into());
        }
        let error = open_storage(&spec, &secrets).unwrap_err();
        assert!(matches!(error, OpenStorageError::Prefix { .. }), "{error}");
    }

    #[test]
    fn gcs_and_azure_read_their_default_keys_and_check_them() {
        let (_dir, secrets) = secrets_with(&[("gcs", "serviceAccountKey", "not json"), ("az", "accountKey", "a2V5")]);
        let gcs = StorageSpec {
            gcs: Some(GcsStorage {
                bucket: "wharf".into(),
                prefix: None,
                credentials_secret_ref: Some(reference("gcs", None)),
            }),
            ..Default::default()
        };
        let error = open_storage(&gcs, &secrets).unwrap_err();
        assert!(matches!(error, OpenStorageError::Configure { backend: "gcs", .. }), "{error}");
        let azure = StorageSpec {
            azure: Some(AzureStorage {
                account: "acme".into(),
                container: "wharf".into(),
                prefix: Some("acme".into()),
                credentials_secret_ref: Some(reference("az", None)),
            }),
            ..Default::default()
        };
        assert!(!open_storage(&azure, &secrets).unwrap().is_exclusive());
        let missing = StorageSpec {
            azure: Some(AzureStorage {
                account: "acme".into(),
                container: "wharf".into(),
                prefix: None,
                credentials_secret_ref: Some(reference("absent", None)),
            }),
            ..Default::default()
        };
        let error = open_storage(&missing, &secrets).unwrap_err();
        assert!(error.to_string().contains("Secret \"absent\""), "{error}");
    }

    #[test]
    fn exactly_one_backend() {
        let (_dir, secrets) = secrets_with(&[]);
        let mut spec = s3(None);
        spec.filesystem = Some(FilesystemStorage { path: "/nonexistent".into() });
        let error = open_storage(&spec, &secrets).unwrap_err();
        assert!(error.to_string().contains("[\"s3\", \"filesystem\"]"), "{error}");
        let error = open_storage(&StorageSpec::default(), &secrets).unwrap_err();
        assert!(matches!(error, OpenStorageError::Backends { .. }), "{error}");
    }
}
