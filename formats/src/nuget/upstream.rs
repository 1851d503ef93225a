//! A NuGet v3 feed read as an upstream: its service index says where the
//! registrations and the flat container are; a package's registration (its
//! index, and the pages it links rather than inlines) lists every version
//! with its manifest facts, which become the same [`Manifest`] a push
//! stores. Pure, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use serde_json::Value;
use wharf_core::{AssetRef, PackageIndex, UPSTREAM_URL, VersionEntry, VersionStatus};
use wharf_storage::BlobDigests;

use super::documents::{nupkg_filename, nuspec_filename};
use super::package::{Dependency, DependencyGroup, PackageType};
use super::{Manifest, NugetError, lower_id, parse_version};

/// Where a feed serves what the registry reads of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedResources {
    /// `RegistrationsBaseUrl`, the SemVer 2.0.0 variant when offered.
    pub registrations: String,
    /// `PackageBaseAddress/3.0.0`: the flat container.
    pub package_base: String,
}

fn invalid(reason: impl Into<String>) -> NugetError {
    NugetError::InvalidDocument(reason.into())
}

/// Reads a service index (`v3/index.json`).
pub fn feed_resources(body: &[u8]) -> Result<FeedResources, NugetError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the service index is not JSON: {e}")))?;
    let resources = document
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the service index has no resources"))?;
    let find = |kinds: &[&str]| {
        kinds.iter().find_map(|kind| {
            resources.iter().find_map(|resource| {
                let types = match resource.get("@type") {
                    Some(Value::String(one)) => vec![one.as_str()],
                    Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                types
                    .contains(kind)
                    .then(|| resource.get("@id").and_then(Value::as_str))
                    .flatten()
                    .map(|url| url.trim_end_matches('/').to_owned())
            })
        })
    };
    let registrations = find(&[
        "RegistrationsBaseUrl/3.6.0",
        "RegistrationsBaseUrl/Versioned",
        "RegistrationsBaseUrl/3.4.0",
        "RegistrationsBaseUrl/3.0.0-rc",
        "RegistrationsBaseUrl/3.0.0-beta",
        "RegistrationsBaseUrl",
    ])
    .ok_or_else(|| invalid("the service index offers no RegistrationsBaseUrl"))?;
    let package_base = find(&["PackageBaseAddress/3.0.0"])
        .ok_or_else(|| invalid("the service index offers no PackageBaseAddress/3.0.0"))?;
    Ok(FeedResources { registrations, package_base })
}

/// Refuses a metadata URL a feed names on another origin (scheme, host,
/// port) than its service index: the registry would otherwise fetch
/// whatever address an upstream document puts there. Packages, which a
/// feed may serve from another host, are checked as files are.
pub fn check_same_origin(url: &str, service_index: &str) -> Result<(), NugetError> {
    let origin = |text: &str| url::Url::parse(text).ok().map(|u| u.origin().ascii_serialization());
    match (origin(url), origin(service_index)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(invalid(format!(
            "{url} is not on the service index's origin; registrations are read from the feed's own host only"
        ))),
    }
}

/// The registration index's URL for a package.
pub fn registration_url(resources: &FeedResources, id: &str) -> String {
    format!("{}/{}/index.json", resources.registrations, lower_id(id))
}

/// A registration document's pages: the leaves inlined, or the URL of a
/// page to read for them.
pub enum Page {
    Inline(Vec<Value>),
    Linked(String),
}

/// Reads a registration index into its pages.
pub fn registration_pages(body: &[u8]) -> Result<Vec<Page>, NugetError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the registration is not JSON: {e}")))?;
    let pages =
        document.get("items").and_then(Value::as_array).ok_or_else(|| invalid("the registration has no items"))?;
    pages
        .iter()
        .map(|page| match page.get("items").and_then(Value::as_array) {
            Some(items) => Ok(Page::Inline(items.clone())),
            None => page
                .get("@id")
                .and_then(Value::as_str)
                .map(|url| Page::Linked(url.to_owned()))
                .ok_or_else(|| invalid("a registration page has neither items nor @id")),
        })
        .collect()
}

/// The leaves of a registration page read by its URL.
pub fn page_leaves(body: &[u8]) -> Result<Vec<Value>, NugetError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("a registration page is not JSON: {e}")))?;
    document.get("items").and_then(Value::as_array).cloned().ok_or_else(|| invalid("a registration page has no items"))
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

fn manifest_of(entry: &Value) -> Manifest {
    let groups = entry
        .get("dependencyGroups")
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .map(|group| DependencyGroup {
                    target_framework: group.get("targetFramework").and_then(Value::as_str).map(str::to_owned),
                    dependencies: group
                        .get("dependencies")
                        .and_then(Value::as_array)
                        .map(|deps| {
                            deps.iter()
                                .filter_map(|d| {
                                    let id = d.get("id").and_then(Value::as_str)?;
                                    let range = d.get("range").and_then(Value::as_str).unwrap_or("(, )");
                                    Some(Dependency { id: id.to_owned(), range: range.to_owned() })
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let tags = match entry.get("tags") {
        Some(Value::Array(tags)) => tags.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(tags)) => tags.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let package_types = entry
        .get("packageTypes")
        .and_then(Value::as_array)
        .map(|types| {
            types
                .iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str))
                .map(|name| PackageType { name: name.to_owned(), version: None })
                .collect()
        })
        .unwrap_or_default();
    Manifest {
        id: text(entry, "id"),
        version: text(entry, "version"),
        authors: text(entry, "authors"),
        description: text(entry, "description"),
        title: text(entry, "title"),
        summary: text(entry, "summary"),
        tags,
        project_url: text(entry, "projectUrl"),
        license_url: text(entry, "licenseUrl"),
        license_expression: text(entry, "licenseExpression"),
        icon_url: text(entry, "iconUrl"),
        release_notes: String::new(),
        copyright: String::new(),
        language: text(entry, "language"),
        min_client_version: text(entry, "minClientVersion"),
        require_license_acceptance: entry.get("requireLicenseAcceptance").and_then(Value::as_bool).unwrap_or(false),
        dependency_groups: groups,
        package_types,
    }
}

fn upstream_asset(name: String, url: String, created: DateTime<Utc>) -> AssetRef {
    AssetRef {
        name,
        digests: BlobDigests {
            sha256: String::new(),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size: 0,
        },
        created,
        metadata: serde_json::json!({ UPSTREAM_URL: url }),
    }
}

/// The upstream's versions of `id` from its registration leaves: each
/// version keyed as a push would key it, listed or not as the upstream
/// says, its `.nupkg` at the leaf's `packageContent` and its `.nuspec` in
/// the flat container. Leaves that cannot be read are skipped.
pub fn upstream_index(
    leaves: &[Value],
    id: &str,
    resources: &FeedResources,
    connection: &str,
) -> Result<PackageIndex, NugetError> {
    let lower = lower_id(id);
    let mut versions = BTreeMap::new();
    let mut display_name = None;
    for leaf in leaves {
        let Some(entry) = leaf.get("catalogEntry").filter(|e| e.is_object()) else { continue };
        let manifest = manifest_of(entry);
        let Ok(version) = parse_version(&manifest.version) else { continue };
        if !manifest.id.eq_ignore_ascii_case(id) {
            continue;
        }
        let key = version.key();
        let published = entry
            .get("published")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        // The gallery dates unlisted versions 1900-01-01: an unknown date,
        // which counts as new.
        let listed =
            entry.get("listed").and_then(Value::as_bool).unwrap_or(true) && published.is_none_or(|t| t.year() > 1900);
        let created = published.filter(|t| t.year() > 1900).unwrap_or_else(Utc::now);
        let content = leaf
            .get("packageContent")
            .or_else(|| entry.get("packageContent"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}/{lower}/{key}/{}", resources.package_base, nupkg_filename(&lower, &key)));
        let nuspec_url = format!("{}/{lower}/{key}/{}", resources.package_base, nuspec_filename(&lower));
        let assets = BTreeMap::from([
            (nupkg_filename(&lower, &key), upstream_asset(nupkg_filename(&lower, &key), content, created)),
            (nuspec_filename(&lower), upstream_asset(nuspec_filename(&lower), nuspec_url, created)),
        ]);
        display_name.get_or_insert_with(|| manifest.id.clone());
        let deprecated = entry
            .get("deprecation")
            .map(|d| d.get("message").and_then(Value::as_str).unwrap_or("deprecated by its publisher").to_owned());
        let metadata = serde_json::to_value(&manifest).map_err(|e| invalid(e.to_string()))?;
        versions.insert(
            key,
            VersionEntry {
                status: if listed { VersionStatus::Published } else { VersionStatus::Unlisted },
                created,
                metadata,
                assets,
                deprecated,
                withdrawn: false,
                fetched_from: Some(connection.to_owned()),
                published_by: None,
            },
        );
    }
    Ok(PackageIndex {
        display_name: display_name.unwrap_or_else(|| id.to_owned()),
        versions,
        ..PackageIndex::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_service_index_names_the_semver2_registrations_and_the_flat_container() {
        let body = json!({"version": "3.0.0", "resources": [
            {"@id": "https://f/reg/", "@type": "RegistrationsBaseUrl"},
            {"@id": "https://f/reg-gz-semver2/", "@type": "RegistrationsBaseUrl/3.6.0"},
            {"@id": "https://f/flat/", "@type": ["PackageBaseAddress/3.0.0"]},
        ]});
        let resources = feed_resources(body.to_string().as_bytes()).unwrap();
        assert_eq!(resources.registrations, "https://f/reg-gz-semver2");
        assert_eq!(resources.package_base, "https://f/flat");
        assert_eq!(registration_url(&resources, "Acme.Demo"), "https://f/reg-gz-semver2/acme.demo/index.json");
        assert!(feed_resources(b"{\"resources\": []}").is_err());
        let index = "https://f/v3/index.json";
        assert!(check_same_origin("https://f/reg/a/index.json", index).is_ok());
        for elsewhere in
            ["https://g/reg/", "http://f/reg/", "https://f:8443/reg/", "http://169.254.169.254/", "not a url"]
        {
            assert!(check_same_origin(elsewhere, index).is_err(), "{elsewhere}");
        }
    }

    #[test]
    fn registration_leaves_become_versions_keyed_as_a_push_would() {
        let resources = FeedResources { registrations: "https://f/reg".into(), package_base: "https://f/flat".into() };
        let leaves = vec![
            json!({"packageContent": "https://f/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg", "catalogEntry": {
                "id": "Acme.Demo", "version": "1.0.0+sha.1", "listed": true, "published": "2024-01-02T03:04:05Z",
                "authors": ["A", "B"], "dependencyGroups": [{"targetFramework": "net8.0",
                "dependencies": [{"id": "Dep", "range": "[1.0.0, )"}]}]}}),
            json!({"catalogEntry": {"id": "acme.demo", "version": "1.1.0-RC", "listed": false,
                "published": "1900-01-01T00:00:00Z"}}),
            json!({"catalogEntry": {"id": "Other", "version": "9.0.0"}}),
            json!({"catalogEntry": {"id": "Acme.Demo", "version": "not-a-version"}}),
        ];
        let index = upstream_index(&leaves, "acme.demo", &resources, "gallery").unwrap();
        assert_eq!(index.display_name, "Acme.Demo");
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["1.0.0", "1.1.0-rc"]);
        let first = &index.versions["1.0.0"];
        assert_eq!(first.status, VersionStatus::Published);
        assert_eq!(first.metadata["authors"], "A, B");
        assert_eq!(first.metadata["dependencyGroups"][0]["dependencies"][0]["range"], "[1.0.0, )");
        assert_eq!(
            first.assets["acme.demo.1.0.0.nupkg"].metadata[UPSTREAM_URL],
            "https://f/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg"
        );
        assert_eq!(
            first.assets["acme.demo.nuspec"].metadata[UPSTREAM_URL],
            "https://f/flat/acme.demo/1.0.0/acme.demo.nuspec"
        );
        let second = &index.versions["1.1.0-rc"];
        assert_eq!(second.status, VersionStatus::Unlisted);
        assert_eq!(
            second.assets["acme.demo.1.1.0-rc.nupkg"].metadata[UPSTREAM_URL],
            "https://f/flat/acme.demo/1.1.0-rc/acme.demo.1.1.0-rc.nupkg"
        );
    }
}
