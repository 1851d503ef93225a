//! Opens a Domain's object storage from the operator, the way the registry does, to carry
//! out `deletionPolicy: Delete`. Does I/O (Secrets from the API, a temporary folder, object
//! storage).

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use wharf_api::{Domain, DomainConfig};
use wharf_storage::secrets::SecretsDir;

use super::{Context, Error, display_name};

/// Deletes everything under `prefix` (the whole Domain when `None`) from the Domain's
/// storage and returns how many objects went.
pub async fn purge_domain(
    ctx: &Context,
    domain: &Domain,
    prefix: Option<&object_store::path::Path>,
) -> Result<u64, Error> {
    let domain_name = display_name(domain);
    let config = DomainConfig {
        domain: Domain { metadata: domain.metadata.clone(), spec: domain.spec.clone(), status: None },
        repositories: Vec::new(),
        policies: Vec::new(),
    };
    // The registry reads Secrets from a folder laid out like a Secret volume; give it one.
    let folder = tempfile::tempdir().map_err(|source| Error::StageSecrets { domain: domain_name.clone(), source })?;
    stage_secrets(ctx, domain, &config, folder.path()).await?;
    let storage = wharf_storage::backends::open_domain_storage(&config, &SecretsDir::new(folder.path()), None)
        .map_err(|source| Error::OpenStorage { domain: domain_name.clone(), source: source.into() })?;
    let what = match prefix {
        Some(prefix) => format!("{prefix} in Domain {domain_name}"),
        None => format!("Domain {domain_name}"),
    };
    let everything = object_store::path::Path::default();
    storage.purge(prefix.unwrap_or(&everything)).await.map_err(|source| Error::Purge { what, source })
}

async fn stage_secrets(ctx: &Context, domain: &Domain, config: &DomainConfig, folder: &Path) -> Result<(), Error> {
    let namespace = domain.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in crate::render::referenced_secrets(config) {
        let secret = api.get_opt(&name).await.map_err(|source| Error::Read {
            kind: "Secret",
            name: format!("{namespace}/{name}"),
            source,
        })?;
        let stage_error = |source| Error::StageSecrets { domain: display_name(domain), source };
        let directory = folder.join(&name);
        std::fs::create_dir_all(&directory).map_err(stage_error)?;
        for (key, value) in secret.and_then(|secret| secret.data).unwrap_or_default() {
            std::fs::write(directory.join(key), value.0).map_err(stage_error)?;
        }
    }
    Ok(())
}
