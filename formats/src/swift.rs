//! The Swift Package Registry (SE-0292, SE-0321, SE-0378, SE-0391): package
//! identifiers (`scope.name`, both case-insensitive), versions, the API
//! version a client asks for, the source archive published (one top-level
//! folder holding `Package.swift` and its version-specific variants), the
//! release metadata (SE-0391) and the documents served. Pure, no I/O.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::sync::LazyLock;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use regex::Regex;
use serde_json::{Value, json};
use wharf_core::{PackageIndex, VersionEntry};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwiftError {
    #[error("invalid scope `{0}`: 1 to 39 letters, digits and single hyphens between them (not first or last)")]
    InvalidScope(String),
    #[error("invalid package name `{0}`: 1 to 100 letters, digits and single - or _ between them (not first or last)")]
    InvalidName(String),
    #[error("invalid version `{0}`: use a semantic version (MAJOR.MINOR.PATCH, optional -prerelease and +build)")]
    InvalidVersion(String),
    #[error("invalid source archive: {0}")]
    InvalidArchive(String),
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    #[error("{0}")]
    ApiVersion(ApiVersionError),
    #[error("unreadable upstream document: {0}")]
    InvalidDocument(String),
}

/// Why an `Accept` header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersionError {
    /// Not a version at all (`v1.5`, `vX`): 400.
    Invalid,
    /// A version this registry does not speak (`v2`): 415.
    Unsupported,
}

impl std::fmt::Display for ApiVersionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiVersionError::Invalid => write!(f, "invalid API version in the Accept header"),
            ApiVersionError::Unsupported => {
                write!(f, "unsupported API version in the Accept header; this registry speaks version 1")
            }
        }
    }
}

static SCOPE: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)]
    Regex::new(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9]|-[a-zA-Z0-9]){0,38}\z").unwrap()
});
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)]
    Regex::new(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9]|[-_][a-zA-Z0-9]){0,99}\z").unwrap()
});
static TOOLS_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)]
    Regex::new(r"\A//\s*swift-tools-version\s*:\s*(\d+\.\d+(?:\.\d+)?)").unwrap()
});
static VERSIONED_MANIFEST: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)]
    Regex::new(r"\APackage@swift-(\d+)(?:\.(\d+))?(?:\.(\d+))?\.swift\z").unwrap()
});

/// The spec's length rules counted in characters; the patterns bound them
/// (scope: 1 + 38 steps, each one or two characters).
pub fn validate_scope(scope: &str) -> Result<(), SwiftError> {
    if scope.len() <= 39 && SCOPE.is_match(scope) { Ok(()) } else { Err(SwiftError::InvalidScope(scope.to_owned())) }
}

pub fn validate_name(name: &str) -> Result<(), SwiftError> {
    if name.len() <= 100 && NAME.is_match(name) { Ok(()) } else { Err(SwiftError::InvalidName(name.to_owned())) }
}

/// The package's identifier as the registry keys it: `scope.name`, lower
/// case (both parts compare without case).
pub fn package_key(scope: &str, name: &str) -> String {
    format!("{}.{}", scope.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// A release version: SemVer 2.0.0, as SwiftPM parses it.
pub fn parse_version(version: &str) -> Result<semver::Version, SwiftError> {
    semver::Version::parse(version).map_err(|_| SwiftError::InvalidVersion(version.to_owned()))
}

/// Checks the `Accept` header: entries for `application/vnd.swift.registry`
/// must name version 1 (or none); other entries (`*/*`, `application/json`)
/// and a missing header get version 1.
pub fn check_accept(accept: Option<&str>) -> Result<(), SwiftError> {
    let Some(accept) = accept else { return Ok(()) };
    for entry in accept.split(',') {
        let media = entry.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let Some(rest) = media.strip_prefix("application/vnd.swift.registry") else { continue };
        let (version, kind) = match rest.split_once('+') {
            Some((version, kind)) => (version, Some(kind)),
            None => (rest, None),
        };
        if kind.is_some_and(|kind| !matches!(kind, "json" | "zip" | "swift")) {
            return Err(SwiftError::ApiVersion(ApiVersionError::Invalid));
        }
        match version {
            "" | ".v1" => {}
            other => {
                let number =
                    other.strip_prefix(".v").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                return Err(SwiftError::ApiVersion(if number.is_some() {
                    ApiVersionError::Unsupported
                } else {
                    ApiVersionError::Invalid
                }));
            }
        }
    }
    Ok(())
}

/// What a source archive may hold.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveLimits {
    pub max_entries: usize,
    pub max_unpacked_bytes: u64,
    pub max_manifest_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits { max_entries: 100_000, max_unpacked_bytes: 2 << 30, max_manifest_bytes: 1 << 20 }
    }
}

/// A manifest of the archive: `Package.swift` or `Package@swift-X.Y.swift`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub filename: String,
    /// Its `// swift-tools-version:` (X.Y or X.Y.Z).
    pub tools_version: String,
    pub bytes: Vec<u8>,
}

/// A checked source archive: its manifests, `Package.swift` first.
#[derive(Debug)]
pub struct SourceArchive {
    pub manifests: Vec<Manifest>,
    pub file_count: usize,
}

fn invalid(reason: impl Into<String>) -> SwiftError {
    SwiftError::InvalidArchive(reason.into())
}

/// The tools version a manifest's first line declares.
pub fn tools_version(manifest: &[u8]) -> Option<String> {
    let first = manifest.split(|b| *b == b'\n').next()?;
    let first = std::str::from_utf8(first).ok()?;
    TOOLS_VERSION.captures(first.trim_start_matches('\u{feff}')).map(|c| c[1].to_owned())
}

/// Whether a relative path stays inside the folder it is resolved in.
fn stays_inside(base: &[&str], target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = base.len() as i64;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 1 {
            return false;
        }
    }
    true
}

/// Checks a published source archive as SwiftPM will unpack it: a zip
/// whose entries all sit under one top-level folder, no entry or link
/// outside it, within `limits`, with a `Package.swift` declaring its tools
/// version directly in that folder. Collects the version-specific manifests.
pub fn inspect_source_archive(reader: impl Read + Seek, limits: ArchiveLimits) -> Result<SourceArchive, SwiftError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| invalid(format!("it is not a zip archive: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(invalid(format!("it has {} entries, more than the {} allowed", archive.len(), limits.max_entries)));
    }
    let mut top: Option<String> = None;
    let mut unpacked = 0u64;
    let mut manifest_entries = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| invalid(format!("entry {index} is unreadable: {e}")))?;
        let name = entry.name().to_owned();
        let parts: Vec<&str> = name.trim_end_matches('/').split('/').collect();
        if name.starts_with('/')
            || name.contains('\\')
            || name.contains('\0')
            || parts.iter().any(|p| *p == ".." || p.is_empty())
        {
            return Err(invalid(format!("entry {name:?} would be unpacked outside the package folder")));
        }
        let first = parts[0].to_owned();
        match &top {
            None => top = Some(first.clone()),
            Some(top) if *top != first => {
                return Err(invalid(format!(
                    "its entries must all be under one top-level folder; found {top}/ and {first}"
                )));
            }
            Some(_) => {}
        }
        if parts.len() == 1 && !entry.is_dir() {
            return Err(invalid(format!("{name} is a file at the top level; everything belongs in one folder")));
        }
        unpacked = unpacked.saturating_add(entry.size());
        if unpacked > limits.max_unpacked_bytes {
            return Err(invalid(format!("it unpacks to more than {} bytes", limits.max_unpacked_bytes)));
        }
        if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry).take(4096).read_to_string(&mut target).map_err(|e| invalid(format!("link {name}: {e}")))?;
            if !stays_inside(&parts[..parts.len() - 1], &target) {
                return Err(invalid(format!("link {name} points outside the package folder ({target})")));
            }
            continue;
        }
        if parts.len() == 2 && (parts[1] == "Package.swift" || VERSIONED_MANIFEST.is_match(parts[1])) {
            manifest_entries.push((index, parts[1].to_owned()));
        }
    }
    let mut manifests = Vec::new();
    for (index, filename) in manifest_entries {
        let entry = archive.by_index(index).map_err(|e| invalid(format!("{filename} is unreadable: {e}")))?;
        let mut bytes = Vec::new();
        entry
            .take(limits.max_manifest_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(format!("{filename} is unreadable: {e}")))?;
        if bytes.len() as u64 > limits.max_manifest_bytes {
            return Err(invalid(format!("{filename} is larger than {} bytes", limits.max_manifest_bytes)));
        }
        let tools_version = tools_version(&bytes)
            .ok_or_else(|| invalid(format!("{filename} does not start with a `// swift-tools-version:X.Y` line")))?;
        manifests.push(Manifest { filename, tools_version, bytes });
    }
    manifests.sort_by_key(|m| (m.filename != "Package.swift", m.filename.clone()));
    if manifests.first().is_none_or(|m| m.filename != "Package.swift") {
        let folder = top.unwrap_or_default();
        return Err(invalid(format!(
            "it has no {folder}/Package.swift (the manifest belongs in the top-level folder)"
        )));
    }
    Ok(SourceArchive { manifests, file_count: archive.len() })
}

/// Checks the `metadata` part of a publish (SE-0391) and returns it as
/// kept: an object whose known fields have their types, URLs that parse,
/// `originalPublicationTime` in whole seconds; unknown fields kept.
pub fn check_metadata(bytes: &[u8]) -> Result<Value, SwiftError> {
    let bad = |reason: String| SwiftError::InvalidMetadata(reason);
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let object = value.as_object_mut().ok_or_else(|| bad("it must be a JSON object".into()))?;
    let url = |field: &str, value: Option<&Value>| -> Result<(), SwiftError> {
        match value {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(text)) if url::Url::parse(text).is_ok() => Ok(()),
            Some(_) => Err(bad(format!("{field} must be an absolute URL"))),
        }
    };
    let text = |field: &str, value: Option<&Value>| -> Result<(), SwiftError> {
        match value {
            None | Some(Value::Null | Value::String(_)) => Ok(()),
            Some(_) => Err(bad(format!("{field} must be a string"))),
        }
    };
    let person = |field: &str, value: Option<&Value>, nested: bool| -> Result<(), SwiftError> {
        let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(()) };
        let object = value.as_object().ok_or_else(|| bad(format!("{field} must be an object")))?;
        match object.get("name") {
            Some(Value::String(name)) if !name.trim().is_empty() => {}
            _ => return Err(bad(format!("{field}.name is required"))),
        }
        text(&format!("{field}.email"), object.get("email"))?;
        text(&format!("{field}.description"), object.get("description"))?;
        url(&format!("{field}.url"), object.get("url"))?;
        if nested && object.get("organization").is_some_and(|o| !o.is_null()) {
            return Err(bad(format!("{field}.organization may not nest")));
        }
        Ok(())
    };
    let author = object.get("author");
    person("author", author, false)?;
    if let Some(organization) = author.and_then(|a| a.get("organization")) {
        person("author.organization", Some(organization), true)?;
    }
    text("description", object.get("description"))?;
    url("licenseURL", object.get("licenseURL"))?;
    url("readmeURL", object.get("readmeURL"))?;
    match object.get("repositoryURLs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(urls)) if urls.iter().all(Value::is_string) => {}
        Some(_) => return Err(bad("repositoryURLs must be an array of strings".into())),
    }
    match object.get("originalPublicationTime") {
        None | Some(Value::Null) => {}
        Some(Value::String(time)) => {
            let parsed = DateTime::parse_from_rfc3339(time)
                .map_err(|_| bad("originalPublicationTime must be an RFC 3339 date-time".into()))?;
            object.insert("originalPublicationTime".into(), json!(iso8601(parsed.with_timezone(&Utc))));
        }
        Some(_) => return Err(bad("originalPublicationTime must be a string".into())),
    }
    Ok(value)
}

/// Dates as SwiftPM decodes them: whole seconds, UTC.
pub fn iso8601(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The file name of a release's source archive, as `Content-Disposition`
/// names it.
pub fn archive_filename(name: &str, version: &str) -> String {
    format!("{name}-{version}.zip")
}

/// The archive asset every release has.
pub const SOURCE_ARCHIVE: &str = "source-archive.zip";

/// A release's facts kept as its version metadata.
pub fn version_metadata(id: &str, checksum: &str, manifests: &[Manifest], metadata: Value) -> Value {
    let manifests: BTreeMap<&str, &str> =
        manifests.iter().map(|m| (m.filename.as_str(), m.tools_version.as_str())).collect();
    json!({"id": id, "checksum": checksum, "manifests": manifests, "metadata": metadata})
}

/// A release's version-specific manifests: file name and tools version.
pub fn alternate_manifests(entry: &VersionEntry) -> Vec<(String, String)> {
    entry
        .metadata
        .get("manifests")
        .and_then(Value::as_object)
        .map(|manifests| {
            manifests
                .iter()
                .filter(|(filename, _)| filename.as_str() != "Package.swift")
                .filter_map(|(filename, tools)| Some((filename.clone(), tools.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The version-specific manifest a `swift-version` asks for, matched by
/// number (`5.7.0` is `Package@swift-5.7.swift`).
pub fn manifest_for(entry: &VersionEntry, swift_version: &str) -> Option<String> {
    let numbers = |text: &str| -> Option<[u64; 3]> {
        let mut parts = [0u64; 3];
        let pieces: Vec<&str> = text.split('.').collect();
        if pieces.is_empty() || pieces.len() > 3 {
            return None;
        }
        for (slot, piece) in parts.iter_mut().zip(pieces) {
            *slot = piece.parse().ok()?;
        }
        Some(parts)
    };
    let asked = numbers(swift_version)?;
    alternate_manifests(entry).into_iter().map(|(filename, _)| filename).find(|filename| {
        VERSIONED_MANIFEST.captures(filename).is_some_and(|c| {
            let part = |i: usize| c.get(i).map_or(Some(0), |m| m.as_str().parse().ok());
            [part(1), part(2), part(3)] == asked.map(Some)
        })
    })
}

/// The releases in SemVer order, newest first, with their versions parsed.
pub fn releases(index: &PackageIndex) -> Vec<(semver::Version, &String, &VersionEntry)> {
    let mut releases: Vec<_> = index
        .versions
        .iter()
        .filter_map(|(key, entry)| parse_version(key).ok().map(|version| (version, key, entry)))
        .collect();
    releases.sort_by(|a, b| b.0.cmp_precedence(&a.0).then_with(|| b.0.cmp(&a.0)));
    releases
}

/// The newest listed release.
pub fn latest(index: &PackageIndex) -> Option<&String> {
    releases(index).into_iter().find(|(_, _, entry)| entry.status.is_listed()).map(|(_, key, _)| key)
}

/// `GET /{scope}/{name}`: listed releases, and those that are gone (Archived,
/// Disposed) with a problem, as the spec expresses deletion. Unlisted
/// releases are left out (kept installable by exact URL). Empty when the
/// package has no release at all.
pub fn render_releases(index: &PackageIndex, package_url: &str) -> bytes::Bytes {
    if index.versions.values().all(|entry| entry.status == wharf_core::VersionStatus::Unfinished) {
        return bytes::Bytes::new();
    }
    let mut releases = serde_json::Map::new();
    for (_, key, entry) in self::releases(index) {
        let url = format!("{package_url}/{key}");
        if entry.status.is_listed() {
            releases.insert(key.clone(), json!({"url": url}));
        } else if !entry.status.is_installable() && entry.status != wharf_core::VersionStatus::Unfinished {
            let detail = format!("release {key} is {}", entry.status.as_str());
            releases.insert(
                key.clone(),
                json!({"url": url, "problem": {"status": 410, "title": "Gone", "detail": detail}}),
            );
        }
    }
    bytes::Bytes::from(json!({"releases": releases}).to_string())
}

/// `GET /{scope}/{name}/{version}`: the release with its source archive's
/// checksum (and signature, when signed) and the publisher's metadata.
pub fn render_release(index: &PackageIndex, key: &str, entry: &VersionEntry) -> bytes::Bytes {
    let id = entry.metadata.get("id").and_then(Value::as_str).unwrap_or(&index.display_name);
    let checksum = entry.metadata.get("checksum").and_then(Value::as_str).unwrap_or_default();
    let metadata = entry.metadata.get("metadata").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let mut archive = json!({"name": "source-archive", "type": "application/zip", "checksum": checksum});
    if let Some(signing) = entry.metadata.get("signing").filter(|s| s.is_object()) {
        archive["signing"] = json!({
            "signatureBase64Encoded": signing.get("signatureBase64Encoded"),
            "signatureFormat": signing.get("signatureFormat"),
        });
    }
    bytes::Bytes::from(
        json!({
            "id": id,
            "version": key,
            "resources": [archive],
            "metadata": metadata,
            "publishedAt": iso8601(entry.created),
        })
        .to_string(),
    )
}

/// The `Digest` header of a source archive: SHA-256, base64 (RFC 3230).
pub fn digest_header(sha256_hex: &str) -> Option<String> {
    let raw = hex::decode(sha256_hex).ok()?;
    Some(format!("sha-256={}", base64::engine::general_purpose::STANDARD.encode(raw)))
}

/// An upstream release as an unstored entry: its archive (checked against
/// `checksum` when fetched) and its plain manifest, at the upstream's URLs.
pub fn upstream_entry(
    package_url: &str,
    version: &str,
    id: &str,
    checksum: &str,
    created: DateTime<Utc>,
    metadata: Value,
    connection: &str,
) -> VersionEntry {
    let asset = |name: &str, url: String, sha256: &str| {
        let digests = wharf_storage::BlobDigests {
            sha256: sha256.to_owned(),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size: 0,
        };
        let metadata = json!({ wharf_core::UPSTREAM_URL: url });
        (name.to_owned(), wharf_core::AssetRef { name: name.to_owned(), digests, created, metadata })
    };
    VersionEntry {
        status: wharf_core::VersionStatus::Published,
        created,
        metadata: json!({"id": id, "checksum": checksum, "manifests": {"Package.swift": null}, "metadata": metadata}),
        assets: BTreeMap::from([
            asset(SOURCE_ARCHIVE, format!("{package_url}/{version}.zip"), checksum),
            asset("Package.swift", format!("{package_url}/{version}/Package.swift"), ""),
        ]),
        deprecated: None,
        withdrawn: false,
        fetched_from: Some(connection.to_owned()),
        published_by: None,
    }
}

/// The releases an upstream registry lists (those without a problem).
pub fn upstream_releases(body: &[u8]) -> Result<Vec<String>, SwiftError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| SwiftError::InvalidDocument(format!("releases are not JSON: {e}")))?;
    let releases = document
        .get("releases")
        .and_then(Value::as_object)
        .ok_or_else(|| SwiftError::InvalidDocument("no releases object".into()))?;
    Ok(releases
        .iter()
        .filter(|(key, release)| release.get("problem").is_none() && parse_version(key).is_ok())
        .map(|(key, _)| key.clone())
        .collect())
}

/// An upstream release's source archive checksum and publication date.
pub fn upstream_release(body: &[u8]) -> Result<(String, Option<DateTime<Utc>>, Value), SwiftError> {
    let invalid = |reason: &str| SwiftError::InvalidDocument(format!("release metadata: {reason}"));
    let document: Value = serde_json::from_slice(body).map_err(|e| invalid(&e.to_string()))?;
    let checksum = document
        .get("resources")
        .and_then(Value::as_array)
        .and_then(|resources| {
            resources.iter().find(|r| r.get("name").and_then(Value::as_str) == Some("source-archive"))
        })
        .and_then(|r| r.get("checksum"))
        .and_then(Value::as_str)
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid("no source-archive resource with a SHA-256 checksum"))?
        .to_ascii_lowercase();
    let published = document
        .get("publishedAt")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let metadata = document.get("metadata").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    Ok((checksum, published, metadata))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            if name.ends_with('/') {
                writer.add_directory(name.trim_end_matches('/'), zip::write::SimpleFileOptions::default()).unwrap();
            } else {
                writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
                writer.write_all(bytes).unwrap();
            }
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn identifiers_follow_the_spec() {
        for scope in ["mona", "a", "A-1", &"a".repeat(39)] {
            assert!(validate_scope(scope).is_ok(), "{scope}");
        }
        for scope in ["", "-a", "a-", "a--b", "a_b", "a.b", &"a".repeat(40)] {
            assert!(validate_scope(scope).is_err(), "{scope}");
        }
        for name in ["LinkedList", "a_b-c", &"a".repeat(100)] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
        for name in ["", "_a", "a_", "a-_b", "a.b", &"a".repeat(101)] {
            assert!(validate_name(name).is_err(), "{name}");
        }
        assert_eq!(package_key("Mona", "LinkedList"), "mona.linkedlist");
        assert!(parse_version("1.0.0-beta.1+exp").is_ok() && parse_version("1.0").is_err());
    }

    #[test]
    fn accept_headers_negotiate_version_1() {
        for ok in [
            None,
            Some("*/*"),
            Some("application/vnd.swift.registry.v1+json"),
            Some("application/vnd.swift.registry+zip"),
            Some("application/json, application/vnd.swift.registry.v1+swift"),
        ] {
            assert_eq!(check_accept(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(
            check_accept(Some("application/vnd.swift.registry.v2+json")),
            Err(SwiftError::ApiVersion(ApiVersionError::Unsupported))
        );
        for bad in [
            "application/vnd.swift.registry.vX+json",
            "application/vnd.swift.registry.v1.5+json",
            "application/vnd.swift.registry.v1+xml",
        ] {
            assert_eq!(check_accept(Some(bad)), Err(SwiftError::ApiVersion(ApiVersionError::Invalid)), "{bad}");
        }
    }

    #[test]
    fn archives_need_one_folder_with_a_manifest() {
        let manifest = b"// swift-tools-version:5.7\nimport PackageDescription\n";
        let ok = zip_of(&[
            ("LinkedList/", b""),
            ("LinkedList/Package.swift", manifest),
            ("LinkedList/Package@swift-5.8.swift", b"// swift-tools-version: 5.8.1\n"),
            ("LinkedList/Sources/LinkedList/List.swift", b"struct List {}"),
        ]);
        let archive = inspect_source_archive(Cursor::new(ok), ArchiveLimits::default()).unwrap();
        let names: Vec<(&str, &str)> =
            archive.manifests.iter().map(|m| (m.filename.as_str(), m.tools_version.as_str())).collect();
        assert_eq!(names, [("Package.swift", "5.7"), ("Package@swift-5.8.swift", "5.8.1")]);

        let refuse = |bytes: Vec<u8>, reason: &str| {
            let error = inspect_source_archive(Cursor::new(bytes), ArchiveLimits::default()).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        };
        refuse(b"nope".to_vec(), "not a zip archive");
        refuse(zip_of(&[("a/Package.swift", manifest), ("b/x", b"")]), "one top-level folder");
        refuse(zip_of(&[("Package.swift", manifest)]), "at the top level");
        refuse(zip_of(&[("a/Sources/Package.swift", manifest)]), "no a/Package.swift");
        refuse(zip_of(&[("a/Package.swift", b"import PackageDescription\n")]), "swift-tools-version");
        refuse(zip_of(&[("a/../../etc/passwd", b"")]), "outside the package folder");
        let small = ArchiveLimits { max_unpacked_bytes: 10, ..ArchiveLimits::default() };
        let error = inspect_source_archive(Cursor::new(zip_of(&[("a/Package.swift", manifest)])), small).unwrap_err();
        assert!(error.to_string().contains("more than 10 bytes"), "{error}");
    }

    #[test]
    fn links_may_not_leave_the_package() {
        assert!(stays_inside(&["a", "b"], "../c") && stays_inside(&["a"], "c/d"));
        assert!(
            !stays_inside(&["a"], "../c") && !stays_inside(&["a", "b"], "/etc") && !stays_inside(&["a"], "x/../../y")
        );
    }

    #[test]
    fn metadata_is_checked_and_kept() {
        let kept = check_metadata(
            br#"{"author": {"name": "Mona", "organization": {"name": "Acme", "url": "https://acme.example"}},
                "licenseURL": "https://acme.example/LICENSE", "repositoryURLs": ["https://git.example/acme/list"],
                "originalPublicationTime": "2024-01-02T03:04:05.678+01:00", "x-extra": 1}"#,
        )
        .unwrap();
        assert_eq!(kept["originalPublicationTime"], "2024-01-02T02:04:05Z");
        assert_eq!(kept["x-extra"], 1);
        for (bad, reason) in [
            (&b"[]"[..], "JSON object"),
            (br#"{"author": {}}"#, "author.name is required"),
            (br#"{"licenseURL": "not a url"}"#, "licenseURL must be an absolute URL"),
            (br#"{"repositoryURLs": [1]}"#, "repositoryURLs"),
            (br#"{"originalPublicationTime": "yesterday"}"#, "RFC 3339"),
            (br#"{"author": {"name": "a", "organization": {}}}"#, "organization.name is required"),
        ] {
            let error = check_metadata(bad).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        }
    }

    #[test]
    fn versioned_manifests_match_by_number() {
        let entry = VersionEntry {
            status: wharf_core::VersionStatus::Published,
            created: DateTime::UNIX_EPOCH,
            metadata: json!({"manifests": {"Package.swift": "5.7", "Package@swift-5.8.swift": "5.8", "Package@swift-6.swift": "6.0"}}),
            assets: BTreeMap::new(),
            deprecated: None,
            withdrawn: false,
            fetched_from: None,
            published_by: None,
        };
        assert_eq!(manifest_for(&entry, "5.8.0").as_deref(), Some("Package@swift-5.8.swift"));
        assert_eq!(manifest_for(&entry, "6.0.0").as_deref(), Some("Package@swift-6.swift"));
        assert_eq!(manifest_for(&entry, "5.9"), None);
        assert_eq!(digest_header(&"00".repeat(32)).unwrap(), "sha-256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    }
}
