//! The NuGet v3 documents a feed serves, rendered from a package's index:
//! the service index, the flat container's version list, registrations
//! (index, pages, leaves), search results, and the v2 search feed
//! nuget.exe's `list` reads. Versions are the index's keys
//! (lower-case normalised); each version's metadata is its [`Manifest`].
//! Pure, no I/O.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use wharf_core::{PackageIndex, VersionEntry};

use super::{Manifest, NugetVersion, lower_id, parse_version};

/// Versions per registration page; an index with more than
/// [`INLINE_VERSIONS`] versions links its pages instead of inlining them,
/// as the client expects of large packages.
pub const PAGE_SIZE: usize = 64;
pub const INLINE_VERSIONS: usize = 128;

/// Where a feed's resources are, under `{origin}/nuget/{repo}/v3`.
#[derive(Clone, Debug)]
pub struct Feed {
    base: String,
}

impl Feed {
    pub fn new(base: impl Into<String>) -> Self {
        Feed { base: base.into() }
    }

    pub fn publish(&self) -> String {
        format!("{}/package", self.base)
    }

    pub fn flat_container(&self) -> String {
        format!("{}/flatcontainer", self.base)
    }

    pub fn registrations(&self) -> String {
        format!("{}/registration", self.base)
    }

    pub fn registration_index(&self, lower_id: &str) -> String {
        format!("{}/{lower_id}/index.json", self.registrations())
    }

    fn registration_leaf(&self, lower_id: &str, key: &str) -> String {
        format!("{}/{lower_id}/{key}.json", self.registrations())
    }

    fn registration_page(&self, lower_id: &str, lower: &str, upper: &str) -> String {
        format!("{}/{lower_id}/page/{lower}/{upper}.json", self.registrations())
    }

    /// The v2 (OData) search `nuget list` reads, beside the v3 resources.
    pub fn legacy(&self) -> String {
        format!("{}/v2/", self.base.trim_end_matches("/v3"))
    }

    pub fn package_content(&self, lower_id: &str, key: &str) -> String {
        format!("{}/{lower_id}/{key}/{}", self.flat_container(), nupkg_filename(lower_id, key))
    }
}

/// The `.nupkg`'s file name in the flat container.
pub fn nupkg_filename(lower_id: &str, key: &str) -> String {
    format!("{lower_id}.{key}.nupkg")
}

/// The `.nuspec`'s file name in the flat container.
pub fn nuspec_filename(lower_id: &str) -> String {
    format!("{lower_id}.nuspec")
}

/// `v3/index.json`: the resources by the `@type`s clients look for, each
/// type under every name a client release has asked for.
pub fn render_service_index(feed: &Feed) -> Bytes {
    let search = format!("{}/search", feed.base);
    let autocomplete = format!("{}/autocomplete", feed.base);
    let resources: Vec<Value> = [
        (feed.publish(), "PackagePublish/2.0.0", "push, unlist (DELETE) and relist (POST)"),
        (feed.flat_container(), "PackageBaseAddress/3.0.0", "packages and their manifests"),
        (feed.registrations(), "RegistrationsBaseUrl/3.6.0", "metadata, SemVer 2.0.0 versions included"),
        (feed.registrations(), "RegistrationsBaseUrl/3.4.0", "metadata"),
        (feed.registrations(), "RegistrationsBaseUrl/3.0.0-rc", "metadata"),
        (feed.registrations(), "RegistrationsBaseUrl/3.0.0-beta", "metadata"),
        (feed.registrations(), "RegistrationsBaseUrl", "metadata"),
        (search.clone(), "SearchQueryService/3.5.0", "search"),
        (search.clone(), "SearchQueryService/3.0.0-rc", "search"),
        (search.clone(), "SearchQueryService/3.0.0-beta", "search"),
        (search, "SearchQueryService", "search"),
        (autocomplete.clone(), "SearchAutocompleteService/3.5.0", "ids and versions"),
        (autocomplete, "SearchAutocompleteService", "ids and versions"),
        (feed.legacy(), "LegacyGallery/2.0.0", "the v2 search nuget.exe's list command reads"),
    ]
    .into_iter()
    .map(|(url, kind, comment)| json!({"@id": url, "@type": kind, "comment": comment}))
    .collect();
    let document = json!({"version": "3.0.0", "resources": resources});
    Bytes::from(document.to_string())
}

/// A version of the index with what it says of itself.
pub struct Release<'a> {
    pub key: &'a str,
    pub version: NugetVersion,
    pub entry: &'a VersionEntry,
    pub manifest: Manifest,
}

impl Release<'_> {
    /// The version as shown: normalised, with its build metadata.
    pub fn full_version(&self) -> String {
        self.manifest.parsed_version().map(|v| v.full()).unwrap_or_else(|_| self.version.normalized())
    }
}

/// The installable versions (Published and Unlisted), in NuGet's order.
pub fn releases(index: &PackageIndex) -> Vec<Release<'_>> {
    let mut releases: Vec<Release<'_>> = index
        .versions
        .iter()
        .filter(|(_, entry)| entry.status.is_installable())
        .filter_map(|(key, entry)| {
            let version = parse_version(key).ok()?;
            let manifest = serde_json::from_value(entry.metadata.clone()).unwrap_or_else(|_| Manifest {
                id: index.display_name.clone(),
                version: key.clone(),
                ..Manifest::default()
            });
            Some(Release { key, version, entry, manifest })
        })
        .collect();
    releases.sort_by(|a, b| a.version.cmp(&b.version));
    releases
}

/// The package's id as first published (shown), falling back to the key.
fn display_id(index: &PackageIndex) -> &str {
    &index.display_name
}

/// `flatcontainer/{id}/index.json`: every installable version, unlisted
/// ones included (the client resolves exact pins through it); empty when
/// none is installable.
pub fn render_versions(index: &PackageIndex) -> Bytes {
    let versions: Vec<&str> = releases(index).iter().map(|r| r.key).collect();
    if versions.is_empty() {
        return Bytes::new();
    }
    Bytes::from(json!({"versions": versions}).to_string())
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// When a version was published, as registrations say it: an unlisted
/// version is dated 1900-01-01, as the gallery does, because that date is
/// how NuGet clients older than the `listed` field tell it is unlisted.
fn published(release: &Release<'_>) -> String {
    if release.entry.status.is_listed() { rfc3339(release.entry.created) } else { UNLISTED_PUBLISHED.to_owned() }
}

pub const UNLISTED_PUBLISHED: &str = "1900-01-01T00:00:00Z";

fn catalog_entry(feed: &Feed, index: &PackageIndex, release: &Release<'_>) -> Value {
    let lower = lower_id(display_id(index));
    let manifest = &release.manifest;
    let groups: Vec<Value> = manifest
        .dependency_groups
        .iter()
        .map(|group| {
            let dependencies: Vec<Value> = group
                .dependencies
                .iter()
                .map(|d| {
                    json!({"id": d.id, "range": d.range, "registration": feed.registration_index(&lower_id(&d.id))})
                })
                .collect();
            let mut value = json!({"dependencies": dependencies});
            if let Some(framework) = &group.target_framework {
                value["targetFramework"] = json!(framework);
            }
            value
        })
        .collect();
    let mut entry = json!({
        "@id": format!("{}#catalogEntry", feed.registration_leaf(&lower, release.key)),
        "@type": "PackageDetails",
        "id": display_id(index),
        "version": release.full_version(),
        "authors": manifest.authors,
        "description": manifest.description,
        "title": manifest.title,
        "summary": manifest.summary,
        "tags": manifest.tags,
        "projectUrl": manifest.project_url,
        "licenseUrl": manifest.license_url,
        "licenseExpression": manifest.license_expression,
        "iconUrl": manifest.icon_url,
        "language": manifest.language,
        "minClientVersion": manifest.min_client_version,
        "requireLicenseAcceptance": manifest.require_license_acceptance,
        "listed": release.entry.status.is_listed(),
        "published": published(release),
        "dependencyGroups": groups,
        "packageContent": feed.package_content(&lower, release.key),
    });
    if let Some(message) = &release.entry.deprecated {
        entry["deprecation"] = json!({"reasons": ["Other"], "message": message});
    }
    entry
}

fn leaf(feed: &Feed, index: &PackageIndex, release: &Release<'_>) -> Value {
    let lower = lower_id(display_id(index));
    json!({
        "@id": feed.registration_leaf(&lower, release.key),
        "@type": "Package",
        "catalogEntry": catalog_entry(feed, index, release),
        "packageContent": feed.package_content(&lower, release.key),
        "registration": feed.registration_index(&lower),
    })
}

fn page(feed: &Feed, index: &PackageIndex, chunk: &[Release<'_>], inline: bool) -> Value {
    let lower_name = lower_id(display_id(index));
    let (lower, upper) = (chunk[0].version.normalized(), chunk[chunk.len() - 1].version.normalized());
    let url = feed.registration_page(&lower_name, &lower.to_ascii_lowercase(), &upper.to_ascii_lowercase());
    let mut page = json!({
        "@id": url,
        "@type": "catalog:CatalogPage",
        "count": chunk.len(),
        "lower": lower,
        "upper": upper,
        "parent": feed.registration_index(&lower_name),
    });
    if inline {
        page["items"] = chunk.iter().map(|release| leaf(feed, index, release)).collect();
    }
    page
}

/// `registration/{id}/index.json`: pages of [`PAGE_SIZE`] versions, inline
/// unless there are more than [`INLINE_VERSIONS`]; empty when no version
/// is installable.
pub fn render_registration_index(feed: &Feed, index: &PackageIndex) -> Bytes {
    let releases = releases(index);
    if releases.is_empty() {
        return Bytes::new();
    }
    let inline = releases.len() <= INLINE_VERSIONS;
    let pages: Vec<Value> = releases.chunks(PAGE_SIZE).map(|chunk| page(feed, index, chunk, inline)).collect();
    let document = json!({
        "@id": feed.registration_index(&lower_id(display_id(index))),
        "@type": ["catalog:CatalogRoot", "PackageRegistration", "catalog:Permalink"],
        "count": pages.len(),
        "items": pages,
    });
    Bytes::from(document.to_string())
}

/// `registration/{id}/page/{lower}/{upper}.json`: one page with its
/// leaves, found by its bounds (lower-case normalised versions).
pub fn render_registration_page(feed: &Feed, index: &PackageIndex, lower: &str, upper: &str) -> Option<Bytes> {
    let releases = releases(index);
    let chunk = releases.chunks(PAGE_SIZE).find(|chunk| {
        chunk[0].version.normalized().eq_ignore_ascii_case(lower)
            && chunk[chunk.len() - 1].version.normalized().eq_ignore_ascii_case(upper)
    })?;
    Some(Bytes::from(page(feed, index, chunk, true).to_string()))
}

/// `registration/{id}/{version}.json`: one version's leaf.
pub fn render_registration_leaf(feed: &Feed, index: &PackageIndex, key: &str) -> Option<Bytes> {
    let releases = releases(index);
    let release = releases.iter().find(|r| r.key == key)?;
    let lower = lower_id(display_id(index));
    let document = json!({
        "@id": feed.registration_leaf(&lower, key),
        "@type": "Package",
        "catalogEntry": format!("{}#catalogEntry", feed.registration_leaf(&lower, key)),
        "listed": release.entry.status.is_listed(),
        "packageContent": feed.package_content(&lower, key),
        "published": published(release),
        "registration": feed.registration_index(&lower),
    });
    Some(Bytes::from(document.to_string()))
}

/// Which versions a search shows: listed ones, prereleases and SemVer 2.0.0
/// versions only when asked for.
#[derive(Clone, Copy, Debug)]
pub struct SearchFilter {
    pub prerelease: bool,
    pub semver2: bool,
}

/// The versions a search shows, oldest first.
pub fn visible<'a>(index: &'a PackageIndex, filter: SearchFilter) -> Vec<Release<'a>> {
    releases(index)
        .into_iter()
        .filter(|r| r.entry.status.is_listed())
        .filter(|r| filter.prerelease || !r.version.is_prerelease())
        .filter(|r| filter.semver2 || !(r.version.is_semver2() || r.full_version().contains('+')))
        .collect()
}

/// One search result: the package with its newest visible version's
/// metadata; `None` when the filter leaves no version.
pub fn search_result(feed: &Feed, index: &PackageIndex, filter: SearchFilter) -> Option<Value> {
    let shown = visible(index, filter);
    let newest = shown.last()?;
    let lower = lower_id(display_id(index));
    let manifest = &newest.manifest;
    let versions: Vec<Value> = shown
        .iter()
        .map(|r| json!({"version": r.full_version(), "downloads": 0, "@id": feed.registration_leaf(&lower, r.key)}))
        .collect();
    let package_types: Vec<Value> = if manifest.package_types.is_empty() {
        vec![json!({"name": "Dependency"})]
    } else {
        manifest.package_types.iter().map(|t| json!({"name": t.name})).collect()
    };
    Some(json!({
        "@id": feed.registration_index(&lower),
        "@type": "Package",
        "registration": feed.registration_index(&lower),
        "id": display_id(index),
        "version": newest.full_version(),
        "description": manifest.description,
        "summary": manifest.summary,
        "title": manifest.title,
        "iconUrl": manifest.icon_url,
        "licenseUrl": manifest.license_url,
        "projectUrl": manifest.project_url,
        "tags": manifest.tags,
        "authors": [manifest.authors],
        "totalDownloads": 0,
        "verified": false,
        "packageTypes": package_types,
        "versions": versions,
    }))
}

/// Whether a search query matches a package: every term is found, without
/// case, in its id, title or tags; `packageid:X` asks for exactly X.
pub fn matches_query(query: &str, index: &PackageIndex) -> bool {
    let id = display_id(index).to_ascii_lowercase();
    let newest = releases(index).pop();
    let (title, tags) =
        newest.map(|r| (r.manifest.title.to_lowercase(), r.manifest.tags.join(" ").to_lowercase())).unwrap_or_default();
    query.split_whitespace().all(|term| match term.split_once(':') {
        Some((field, value)) if field.eq_ignore_ascii_case("packageid") || field.eq_ignore_ascii_case("id") => {
            id == value.to_ascii_lowercase()
        }
        _ => {
            let term = term.to_lowercase();
            id.contains(&term) || title.contains(&term) || tags.contains(&term)
        }
    })
}

/// Which versions of each package a v2 search returns (its `$filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2Filter {
    /// `IsLatestVersion`: the newest listed release.
    Latest,
    /// `IsAbsoluteLatestVersion`: the newest listed version, prereleases included.
    AbsoluteLatest,
    /// No filter: every installable version, unlisted ones dated 1900 (the
    /// client leaves them out unless asked to include them).
    All,
}

/// The versions of a package a v2 search returns, oldest first.
pub fn v2_versions(index: &PackageIndex, filter: V2Filter, prerelease: bool) -> Vec<Release<'_>> {
    let mut shown: Vec<Release<'_>> = releases(index)
        .into_iter()
        .filter(|r| filter == V2Filter::All || r.entry.status.is_listed())
        .filter(|r| (prerelease && filter != V2Filter::Latest) || !r.version.is_prerelease())
        .collect();
    if filter != V2Filter::All {
        shown = shown.pop().into_iter().collect();
    }
    shown
}

/// A v2 search result page: an Atom feed with one entry per version, as
/// nuget.exe's v2 feed parser reads it (`d:Id`, `d:Version`, the package
/// URL in `content/@src`; a 1900 `d:Published` marks an unlisted version).
pub fn render_v2_feed<'a>(feed: &Feed, entries: impl IntoIterator<Item = (&'a PackageIndex, Release<'a>)>) -> Bytes {
    use quick_xml::escape::escape;
    let legacy = feed.legacy();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xml:base=\"{base}\" xmlns=\"http://www.w3.org/2005/Atom\" \
         xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" \
         xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\">\n\
         <id>{base}Search</id><title type=\"text\">Search</title><updated>{now}</updated>\n",
        base = escape(&legacy),
        now = rfc3339(Utc::now()),
    );
    for (index, release) in entries {
        let id = display_id(index);
        let lower = lower_id(id);
        let version = release.full_version();
        let published = if release.entry.status.is_listed() {
            rfc3339(release.entry.created)
        } else {
            UNLISTED_PUBLISHED.to_owned()
        };
        xml.push_str(&format!(
            "<entry><id>{entry_id}</id><title type=\"text\">{id}</title><updated>{published}</updated>\
             <author><name>{authors}</name></author>\
             <content type=\"application/zip\" src=\"{content}\"/>\
             <m:properties><d:Id>{id}</d:Id><d:Version>{version}</d:Version>\
             <d:NormalizedVersion>{normalized}</d:NormalizedVersion><d:Description>{description}</d:Description>\
             <d:Published m:type=\"Edm.DateTime\">{published}</d:Published>\
             <d:IsPrerelease m:type=\"Edm.Boolean\">{prerelease}</d:IsPrerelease></m:properties></entry>\n",
            entry_id = escape(format!("{legacy}Packages(Id='{id}',Version='{version}')")),
            id = escape(id),
            authors = escape(&release.manifest.authors),
            content = escape(feed.package_content(&lower, release.key)),
            version = escape(&version),
            normalized = escape(release.version.normalized()),
            description = escape(&release.manifest.description),
            prerelease = release.version.is_prerelease(),
        ));
    }
    xml.push_str("</feed>\n");
    Bytes::from(xml)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use wharf_core::VersionStatus;

    use super::*;

    fn index_of(versions: &[(&str, &str, VersionStatus)]) -> PackageIndex {
        let mut index = PackageIndex { display_name: "Acme.Demo".into(), ..PackageIndex::default() };
        for (key, shown, status) in versions {
            let manifest = Manifest { id: "Acme.Demo".into(), version: (*shown).into(), ..Manifest::default() };
            index.versions.insert(
                (*key).into(),
                VersionEntry {
                    status: *status,
                    created: DateTime::UNIX_EPOCH,
                    metadata: serde_json::to_value(manifest).unwrap(),
                    assets: BTreeMap::new(),
                    deprecated: None,
                    withdrawn: false,
                    fetched_from: None,
                    published_by: None,
                },
            );
        }
        index
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn the_flat_container_lists_installable_versions_in_nuget_order() {
        use VersionStatus::*;
        let index = index_of(&[
            ("1.0.10", "1.0.10", Published),
            ("1.0.2", "1.0.2", Unlisted),
            ("1.0.0-beta", "1.0.0-Beta", Published),
            ("0.9.0", "0.9.0", Archived),
        ]);
        assert_eq!(json(&render_versions(&index))["versions"], json!(["1.0.0-beta", "1.0.2", "1.0.10"]));
        assert!(render_versions(&index_of(&[("0.9.0", "0.9.0", Archived)])).is_empty());
    }

    #[test]
    fn registrations_inline_small_packages_and_page_large_ones() {
        use VersionStatus::*;
        let feed = Feed::new("http://h/nuget/r/v3");
        let small = index_of(&[("1.0.0", "1.0.0+build", Published), ("1.1.0", "1.1.0", Unlisted)]);
        let document = json(&render_registration_index(&feed, &small));
        assert_eq!(document["count"], 1);
        let items = document["items"][0]["items"].as_array().unwrap();
        assert_eq!(items[0]["catalogEntry"]["version"], "1.0.0+build");
        assert_eq!(items[1]["catalogEntry"]["listed"], false);
        assert_eq!(
            items[0]["packageContent"],
            "http://h/nuget/r/v3/flatcontainer/acme.demo/1.0.0/acme.demo.1.0.0.nupkg"
        );

        let keys: Vec<String> = (0..130).map(|i| format!("1.0.{i}")).collect();
        let many: Vec<(&str, &str, VersionStatus)> = keys.iter().map(|k| (k.as_str(), k.as_str(), Published)).collect();
        let large = index_of(&many);
        let document = json(&render_registration_index(&feed, &large));
        assert_eq!(document["count"], 3);
        assert!(document["items"][0].get("items").is_none());
        assert_eq!(document["items"][2]["lower"], "1.0.128");
        let page = render_registration_page(&feed, &large, "1.0.64", "1.0.127").unwrap();
        assert_eq!(json(&page)["items"].as_array().unwrap().len(), 64);
        assert!(render_registration_page(&feed, &large, "1.0.0", "1.0.1").is_none());
    }

    #[test]
    fn v2_searches_return_the_versions_their_filter_names() {
        use VersionStatus::*;
        let index = index_of(&[
            ("1.0.0", "1.0.0", Published),
            ("1.1.0", "1.1.0", Unlisted),
            ("2.0.0-beta", "2.0.0-beta", Published),
        ]);
        let keys = |filter, prerelease| -> Vec<String> {
            v2_versions(&index, filter, prerelease).iter().map(|r| r.key.to_owned()).collect()
        };
        assert_eq!(keys(V2Filter::Latest, false), ["1.0.0"]);
        assert_eq!(keys(V2Filter::Latest, true), ["1.0.0"]);
        assert_eq!(keys(V2Filter::AbsoluteLatest, true), ["2.0.0-beta"]);
        assert_eq!(keys(V2Filter::All, false), ["1.0.0", "1.1.0"]);
        assert_eq!(keys(V2Filter::All, true), ["1.0.0", "1.1.0", "2.0.0-beta"]);
        let feed = Feed::new("http://h/nuget/r/v3");
        let xml = render_v2_feed(&feed, v2_versions(&index, V2Filter::All, false).into_iter().map(|r| (&index, r)));
        let xml = std::str::from_utf8(&xml).unwrap();
        assert!(xml.contains("<d:Id>Acme.Demo</d:Id><d:Version>1.1.0</d:Version>"), "{xml}");
        assert!(xml.contains(&format!("<d:Published m:type=\"Edm.DateTime\">{UNLISTED_PUBLISHED}</d:Published>")));
        assert!(xml.contains("src=\"http://h/nuget/r/v3/flatcontainer/acme.demo/1.0.0/acme.demo.1.0.0.nupkg\""));
        assert_eq!(feed.legacy(), "http://h/nuget/r/v2/");
    }

    #[test]
    fn search_shows_listed_versions_as_asked() {
        use VersionStatus::*;
        let feed = Feed::new("http://h/nuget/r/v3");
        let index = index_of(&[
            ("1.0.0", "1.0.0", Published),
            ("1.1.0", "1.1.0", Unlisted),
            ("2.0.0-beta", "2.0.0-beta", Published),
            ("2.0.0-beta.2", "2.0.0-beta.2", Published),
        ]);
        let stable = SearchFilter { prerelease: false, semver2: false };
        assert_eq!(search_result(&feed, &index, stable).unwrap()["version"], "1.0.0");
        let old_client = SearchFilter { prerelease: true, semver2: false };
        assert_eq!(search_result(&feed, &index, old_client).unwrap()["version"], "2.0.0-beta");
        let all = SearchFilter { prerelease: true, semver2: true };
        let result = search_result(&feed, &index, all).unwrap();
        assert_eq!(result["version"], "2.0.0-beta.2");
        assert_eq!(result["versions"].as_array().unwrap().len(), 3);
        let only_unlisted = index_of(&[("1.0.0", "1.0.0", Unlisted)]);
        assert!(search_result(&feed, &only_unlisted, all).is_none());
        assert!(matches_query("acme DEMO", &index) && matches_query("packageid:acme.demo", &index));
        assert!(!matches_query("other", &index) && !matches_query("packageid:acme", &index));
    }
}
