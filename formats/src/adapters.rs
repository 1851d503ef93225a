//! Each format's part in the read pipeline ([`wharf_core::FormatAdapter`]):
//! which upstream documents describe a package, and how they become
//! versions. Documents are read only through the core's
//! [`UpstreamSource`], so caching, revalidation, stale copies and the
//! record of what a view was built from are the pipeline's, the same for
//! every format; the parsing is the pure functions of each format's module.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use wharf_api::PackageFormat;
use wharf_core::{Adapters, CoreError, FormatAdapter, LayoutFile, PackageId, PackageIndex, UpstreamSource};

use crate::{cargo, go, maven, npm, nuget, pypi, swift};

/// The adapters of every format with external connections.
pub fn all() -> Adapters {
    Adapters::new([
        Arc::new(Npm) as Arc<dyn FormatAdapter>,
        Arc::new(Pypi),
        Arc::new(Go),
        Arc::new(Cargo),
        Arc::new(Maven),
        Arc::new(Nuget),
        Arc::new(Swift),
    ])
}

pub struct Npm;

#[async_trait::async_trait]
impl FormatAdapter for Npm {
    fn format(&self) -> PackageFormat {
        PackageFormat::Npm
    }

    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        _spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let url = format!("{}/{}", upstream.base(), id.name.replacen('/', "%2f", 1));
        // Cooldown needs each version's publish time, which only the full
        // packument carries.
        let accept = if upstream.needs_dates() {
            "application/json"
        } else {
            "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"
        };
        let Some(body) = upstream.read_body(&url, accept).await? else { return Ok(None) };
        npm::upstream::upstream_index(&body, &id.name, upstream.connection())
            .map(Some)
            .map_err(|e| upstream.unreadable(e))
    }
}

pub struct Pypi;

#[async_trait::async_trait]
impl FormatAdapter for Pypi {
    fn format(&self) -> PackageFormat {
        PackageFormat::Pypi
    }

    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        _spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let url = format!("{}/{}/", upstream.base(), id.name);
        let page = url::Url::parse(&url).map_err(|e| {
            CoreError::upstream_unusable(format!(
                "external connection {} has an invalid URL: {e}",
                upstream.connection()
            ))
        })?;
        let Some(body) = upstream.read_body(&url, pypi::JSON_CONTENT_TYPE).await? else { return Ok(None) };
        let resolve =
            |link: &str| page.join(link).ok().filter(|u| matches!(u.scheme(), "http" | "https")).map(String::from);
        pypi::upstream_index(&body, &id.name, upstream.connection(), resolve)
            .map(Some)
            .map_err(|e| upstream.unreadable(e))
    }
}

pub struct Go;

#[async_trait::async_trait]
impl FormatAdapter for Go {
    fn format(&self) -> PackageFormat {
        PackageFormat::Go
    }

    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        _spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let module_base = format!("{}/{}/@v/", upstream.base(), go::escape(&id.name));
        let Some(body) = upstream.read_body(&format!("{module_base}list"), "text/plain").await? else {
            return Ok(None);
        };
        let mut index = go::upstream_index(&body, &id.name, upstream.connection(), &module_base);
        if upstream.needs_dates() {
            // Only each version's `.info` carries its date; a version whose
            // date cannot be read counts as new.
            for (version, entry) in index.versions.iter_mut() {
                let url = format!("{module_base}{}.info", go::escape(version));
                let info = upstream.read_body(&url, "application/json").await.ok().flatten();
                entry.created = info.and_then(|b| go::info_time(&b)).unwrap_or_else(Utc::now);
            }
        }
        Ok(Some(index))
    }
}

pub struct Cargo;

impl Cargo {
    /// The upstream's `dl` template, from its `config.json`.
    async fn download_template(upstream: &UpstreamSource<'_>) -> Result<String, CoreError> {
        let config_url = format!("{}/config.json", upstream.base());
        let Some(config) = upstream.read_body(&config_url, "application/json").await? else {
            return Err(CoreError::upstream_unusable(format!(
                "external connection {} has no config.json at {config_url}",
                upstream.connection()
            )));
        };
        cargo::upstream::download_template(&config).map_err(|e| upstream.unreadable(e))
    }
}

#[async_trait::async_trait]
impl FormatAdapter for Cargo {
    fn format(&self) -> PackageFormat {
        PackageFormat::Cargo
    }

    /// The sparse index: `config.json` says where crates download from; the
    /// index file is found by the name as cargo spelled it.
    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        _id: &PackageId,
        spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let template = Self::download_template(upstream).await?;
        let url = format!("{}/{}", upstream.base(), cargo::index_path(spelling));
        let Some(body) = upstream.read_body(&url, "text/plain").await? else { return Ok(None) };
        cargo::upstream::upstream_index(&body, spelling, upstream.connection(), &template)
            .map(Some)
            .map_err(|e| upstream.unreadable(e))
    }

    async fn declared_file_origin(&self, upstream: &UpstreamSource<'_>) -> Result<Option<String>, CoreError> {
        let config = upstream.read_body(&format!("{}/config.json", upstream.base()), "application/json").await?;
        Ok(config.and_then(|config| cargo::upstream::download_template(&config).ok()))
    }
}

pub struct Maven;

#[async_trait::async_trait]
impl FormatAdapter for Maven {
    fn format(&self) -> PackageFormat {
        PackageFormat::Maven
    }

    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        _spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let coordinates = maven::parse_package_name(&id.name).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let folder = format!("{}/{}", upstream.base(), maven::package_path(&coordinates));
        let url = format!("{folder}{}", maven::METADATA_FILE);
        let Some(body) = upstream.read_body(&url, "application/xml").await? else { return Ok(None) };
        let mut index =
            maven::upstream_index(&body, &id.name, upstream.connection()).map_err(|e| upstream.unreadable(e))?;
        if upstream.needs_dates() {
            // Maven metadata dates no version: a release is as old as its
            // POM's Last-Modified. One with no readable date counts as new.
            let (folder, artifact) = (&folder, &coordinates.artifact_id);
            let dates: Vec<_> = futures::stream::iter(index.versions.keys().cloned().collect::<Vec<_>>())
                .map(|version| async move {
                    let url = format!("{folder}{version}/{artifact}-{version}.pom");
                    let pom = upstream.read(&url, "application/xml").await;
                    (version, pom.ok().and_then(|d| d.last_modified))
                })
                .buffer_unordered(8)
                .collect()
                .await;
            for (version, date) in dates {
                if let Some(entry) = index.versions.get_mut(&version) {
                    entry.created = date.unwrap_or_else(Utc::now);
                }
            }
        }
        Ok(Some(index))
    }

    fn layout_file(&self, base: &str, id: &PackageId, version: &str, file_name: &str) -> Option<LayoutFile> {
        let coordinates = maven::parse_package_name(&id.name).ok()?;
        let url = format!("{base}/{}{version}/{file_name}", maven::package_path(&coordinates));
        Some(LayoutFile { sha1_url: format!("{url}.sha1"), url })
    }

    fn parse_sha1_sidecar(&self, body: &[u8]) -> Option<String> {
        maven::ChecksumAlgorithm::Sha1.parse_sidecar(body)
    }
}

pub struct Nuget;

impl Nuget {
    /// Where the feed's registrations and flat container are: the
    /// connection's URL is its service index.
    async fn resources(upstream: &UpstreamSource<'_>) -> Result<nuget::upstream::FeedResources, CoreError> {
        let Some(body) = upstream.read_body(upstream.base(), "application/json").await? else {
            return Err(CoreError::upstream_unusable(format!(
                "external connection {} has no NuGet service index at {}",
                upstream.connection(),
                upstream.base()
            )));
        };
        nuget::upstream::feed_resources(&body).map_err(|e| upstream.unreadable(e))
    }
}

#[async_trait::async_trait]
impl FormatAdapter for Nuget {
    fn format(&self) -> PackageFormat {
        PackageFormat::Nuget
    }

    /// The package's registration: its index, and the pages it links when
    /// it has too many versions to inline them.
    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        _spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let resources = Self::resources(upstream).await?;
        let same_origin =
            |url: &str| nuget::upstream::check_same_origin(url, upstream.base()).map_err(|e| upstream.unreadable(e));
        let url = nuget::upstream::registration_url(&resources, &id.name);
        same_origin(&url)?;
        let Some(body) = upstream.read_body(&url, "application/json").await? else { return Ok(None) };
        let mut leaves = Vec::new();
        for page in nuget::upstream::registration_pages(&body).map_err(|e| upstream.unreadable(e))? {
            match page {
                nuget::upstream::Page::Inline(items) => leaves.extend(items),
                nuget::upstream::Page::Linked(url) => {
                    same_origin(&url)?;
                    let Some(body) = upstream.read_body(&url, "application/json").await? else {
                        return Err(upstream.unreadable(format!("registration page {url} is missing")));
                    };
                    leaves.extend(nuget::upstream::page_leaves(&body).map_err(|e| upstream.unreadable(e))?);
                }
            }
        }
        nuget::upstream::upstream_index(&leaves, &id.name, &resources, upstream.connection())
            .map(Some)
            .map_err(|e| upstream.unreadable(e))
    }

    /// Packages download from the feed's flat container, which may be on
    /// another host than its service index.
    async fn declared_file_origin(&self, upstream: &UpstreamSource<'_>) -> Result<Option<String>, CoreError> {
        Ok(Some(Self::resources(upstream).await?.package_base))
    }
}

pub struct Swift;

#[async_trait::async_trait]
impl FormatAdapter for Swift {
    fn format(&self) -> PackageFormat {
        PackageFormat::Swift
    }

    /// Another registry's release list, then each release's metadata for
    /// its archive checksum (which the fetched archive is checked against)
    /// and publication date. Its manifests are fetched as they are asked
    /// for; version-specific variants of upstream releases are not linked.
    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        _id: &PackageId,
        spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError> {
        const ACCEPT: &str = "application/vnd.swift.registry.v1+json";
        let Some((scope, name)) = spelling.split_once('.') else { return Ok(None) };
        let package_url = format!("{}/{scope}/{name}", upstream.base());
        let Some(body) = upstream.read_body(&package_url, ACCEPT).await? else { return Ok(None) };
        let versions = swift::upstream_releases(&body).map_err(|e| upstream.unreadable(e))?;
        let releases: Vec<_> = futures::stream::iter(versions)
            .map(|version| {
                let url = format!("{package_url}/{version}");
                async move { (version, upstream.read_body(&url, ACCEPT).await) }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut index = PackageIndex { display_name: spelling.to_owned(), ..PackageIndex::default() };
        for (version, body) in releases {
            let Some(body) = body? else { continue };
            let (checksum, published, metadata) = swift::upstream_release(&body).map_err(|e| upstream.unreadable(e))?;
            // An undated release counts as new.
            let created = published.unwrap_or_else(Utc::now);
            let entry = swift::upstream_entry(
                &package_url,
                &version,
                spelling,
                &checksum,
                created,
                metadata,
                upstream.connection(),
            );
            index.versions.insert(version, entry);
        }
        Ok(Some(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_an_external_connection_may_speak_has_an_adapter() {
        let adapters = all();
        for format in PackageFormat::ALL {
            assert_eq!(
                adapters.get(format).is_some(),
                PackageFormat::WITH_EXTERNAL_CONNECTIONS.contains(&format),
                "{format}: the configuration admits connections exactly for the formats with an adapter"
            );
        }
    }
}
