//! Cargo: crate names and versions, the publish metadata, the sparse index
//! (paths, `config.json`, one JSON line per version). Pure, no I/O (the
//! framing of a publish body and the `.crate` check are in the submodules).
//!
//! Specs: <https://doc.rust-lang.org/cargo/reference/registry-index.html> and
//! <https://doc.rust-lang.org/cargo/reference/registry-web-api.html>.
//!
//! Names: a crate's name is compared case-insensitively and with `-` equal
//! to `_`, as crates.io does for uniqueness, so `Foo_bar` and `foo-bar` are
//! one crate ([`canonical_name`] is its storage key). The spelling of its
//! first publish is kept; later publishes must use it, and the index file is
//! served only under that spelling's lowercase path (cargo matches names in
//! index lines exactly, and suggests the other spelling itself).
//!
//! Versions: semver; build metadata does not make a version distinct
//! (`1.0.0+a` and `1.0.0+b` are one version, [`version_key`]), again as on
//! crates.io, because cargo's resolver ignores it.

pub mod archive;
pub mod framing;
pub mod upstream;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use wharf_core::{PackageIndex, VersionEntry, VersionStatus};

/// Longest crate name (crates.io's limit).
pub const MAX_NAME_LENGTH: usize = 64;
/// Longest version string accepted.
const MAX_VERSION_LENGTH: usize = 128;
/// Most dependencies one version may declare.
const MAX_DEPENDENCIES: usize = 1_000;
/// Most features one version may declare.
const MAX_FEATURES: usize = 1_000;
/// Longest feature name, dependency requirement or target string.
const MAX_SHORT_STRING: usize = 1_024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CargoError {
    #[error("invalid crate name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid version {0:?}: not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])")]
    InvalidVersion(String),
    #[error("invalid publish metadata: {0}")]
    InvalidMetadata(String),
    #[error("invalid index path {0:?}: expected 1/{{name}}, 2/{{name}}, 3/{{c}}/{{name}} or {{ab}}/{{cd}}/{{name}}")]
    InvalidIndexPath(String),
}

/// Checks a crate name: ASCII letters, digits, `-` and `_`, starting with a
/// letter, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), CargoError> {
    let invalid = |reason| Err(CargoError::InvalidName { name: name.to_owned(), reason });
    let Some(first) = name.bytes().next() else { return invalid("it is empty") };
    if name.len() > MAX_NAME_LENGTH {
        return invalid("it is longer than 64 characters");
    }
    if !first.is_ascii_alphabetic() {
        return invalid("it must start with an ASCII letter");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return invalid("it may contain only ASCII letters, digits, - and _");
    }
    Ok(())
}

/// The storage key of a crate: lowercase, `_` written as `-`, so names that
/// differ only there are one crate.
pub fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Parses a semantic version.
pub fn validate_version(version: &str) -> Result<semver::Version, CargoError> {
    if version.len() > MAX_VERSION_LENGTH {
        return Err(CargoError::InvalidVersion(version.to_owned()));
    }
    semver::Version::parse(version).map_err(|_| CargoError::InvalidVersion(version.to_owned()))
}

/// The core's key for a version: the version without build metadata.
pub fn version_key(version: &semver::Version) -> String {
    let mut key = version.clone();
    key.build = semver::BuildMetadata::EMPTY;
    key.to_string()
}

/// The index file path of a crate, relative to the index root, as cargo
/// computes it: lowercase, `1/`, `2/`, `3/{c}/` or `{ab}/{cd}/`.
pub fn index_path(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.len() {
        1 => format!("1/{lower}"),
        2 => format!("2/{lower}"),
        3 => format!("3/{}/{lower}", &lower[..1]),
        _ => format!("{}/{}/{lower}", &lower[..2], &lower[2..4]),
    }
}

/// The crate name an index path asks for (lowercase), checking that its
/// prefix folders are the ones cargo would compute.
pub fn name_from_index_path(path: &str) -> Result<String, CargoError> {
    let invalid = || CargoError::InvalidIndexPath(path.to_owned());
    let name = path.rsplit('/').next().ok_or_else(invalid)?;
    validate_name(name).map_err(|_| invalid())?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) || index_path(name) != path {
        return Err(invalid());
    }
    Ok(name.to_owned())
}

/// `config.json` at the index root. `dl` has no markers, so cargo appends
/// `/{crate}/{version}/download`; `api` is where `/api/v1/...` lives.
pub fn render_config(download_base: &str, api_base: &str, auth_required: bool) -> Bytes {
    let mut config = json!({"dl": download_base, "api": api_base});
    if auth_required {
        config["auth-required"] = json!(true);
    }
    Bytes::from(config.to_string())
}

/// What cargo's publish metadata says, checked and turned into what the
/// index line of the version needs.
#[derive(Debug, PartialEq)]
pub struct NewCrateVersion {
    /// The name as spelled in the metadata.
    pub name: String,
    pub version: semver::Version,
    /// The version's stored metadata: its index line (less `cksum` and
    /// `yanked`, which the registry owns) and descriptive fields.
    pub metadata: Value,
}

/// The fields of cargo's publish metadata that the registry uses; unknown
/// fields are ignored (cargo adds some now and then).
#[derive(Debug, Deserialize)]
struct PublishMetadata {
    name: String,
    vers: String,
    #[serde(default)]
    deps: Vec<PublishDependency>,
    #[serde(default)]
    features: BTreeMap<String, Vec<String>>,
    description: Option<String>,
    license: Option<String>,
    repository: Option<String>,
    homepage: Option<String>,
    documentation: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    links: Option<String>,
    rust_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PublishDependency {
    name: String,
    version_req: String,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default = "default_true")]
    default_features: bool,
    target: Option<String>,
    kind: Option<String>,
    /// The index URL of the dependency's registry; null means this registry
    /// (cargo sends the URL for crates from anywhere else).
    registry: Option<String>,
    /// The name the depending crate uses when it renamed the dependency.
    explicit_name_in_toml: Option<String>,
}

fn default_true() -> bool {
    true
}

/// One dependency as the index writes it.
#[derive(Debug, Serialize)]
struct IndexDependency {
    name: String,
    req: String,
    features: Vec<String>,
    optional: bool,
    default_features: bool,
    target: Option<String>,
    kind: String,
    registry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    package: Option<String>,
}

/// Parses and checks the JSON part of a publish body.
pub fn parse_publish_metadata(json: &[u8]) -> Result<NewCrateVersion, CargoError> {
    let invalid = |m: String| CargoError::InvalidMetadata(m);
    let value: Value = serde_json::from_slice(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(invalid("it is not a JSON object".into()));
    }
    let meta: PublishMetadata = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    validate_name(&meta.name)?;
    let version = validate_version(&meta.vers)?;
    if meta.deps.len() > MAX_DEPENDENCIES {
        return Err(invalid(format!("more than {MAX_DEPENDENCIES} dependencies")));
    }
    if meta.features.len() > MAX_FEATURES {
        return Err(invalid(format!("more than {MAX_FEATURES} features")));
    }
    let short = |what: &str, text: &str| {
        if text.is_empty() || text.len() > MAX_SHORT_STRING || text.chars().any(char::is_control) {
            Err(invalid(format!("{what} {text:?} must be 1–{MAX_SHORT_STRING} printable characters")))
        } else {
            Ok(())
        }
    };
    let mut deps = Vec::with_capacity(meta.deps.len());
    for dep in meta.deps {
        validate_name(&dep.name)?;
        if let Some(alias) = &dep.explicit_name_in_toml {
            validate_name(alias)?;
        }
        semver::VersionReq::parse(&dep.version_req).map_err(|e| {
            invalid(format!("dependency {} has an invalid version requirement {:?}: {e}", dep.name, dep.version_req))
        })?;
        let kind = dep.kind.unwrap_or_else(|| "normal".into());
        if !matches!(kind.as_str(), "normal" | "dev" | "build") {
            return Err(invalid(format!("dependency {} has kind {kind:?}; expected normal, dev or build", dep.name)));
        }
        for feature in &dep.features {
            short("a dependency feature", feature)?;
        }
        if let Some(target) = &dep.target {
            short("a dependency target", target)?;
        }
        if let Some(registry) = &dep.registry {
            short("a dependency registry", registry)?;
        }
        // The index names a renamed dependency by its alias and keeps the
        // real crate name in `package`.
        let (name, package) = match dep.explicit_name_in_toml {
            Some(alias) => (alias, Some(dep.name)),
            None => (dep.name, None),
        };
        deps.push(IndexDependency {
            name,
            req: dep.version_req,
            features: dep.features,
            optional: dep.optional,
            default_features: dep.default_features,
            target: dep.target,
            kind,
            registry: dep.registry,
            package,
        });
    }
    // Features using the newer syntax (`dep:x`, `x?/f`) go to `features2`
    // so that cargo versions predating it skip the line instead of
    // misreading it (the index format's `v: 2`).
    let (mut features, mut features2) = (Map::new(), Map::new());
    for (feature, enables) in meta.features {
        short("a feature name", &feature)?;
        for item in &enables {
            short("a feature value", item)?;
        }
        let new_syntax = enables.iter().any(|e| e.starts_with("dep:") || e.contains("?/"));
        let target = if new_syntax { &mut features2 } else { &mut features };
        target.insert(feature, json!(enables));
    }
    if let Some(links) = &meta.links {
        short("links", links)?;
    }
    if let Some(rust_version) = &meta.rust_version {
        short("rust_version", rust_version)?;
    }
    let mut metadata = json!({
        "name": meta.name,
        "vers": meta.vers,
        "deps": deps,
        "features": features,
        "links": meta.links,
        "description": meta.description,
        "license": meta.license,
        "repository": meta.repository,
        "homepage": meta.homepage,
        "documentation": meta.documentation,
        "keywords": meta.keywords,
        "categories": meta.categories,
    });
    if !features2.is_empty() {
        metadata["features2"] = Value::Object(features2);
    }
    if let Some(rust_version) = meta.rust_version {
        metadata["rust_version"] = json!(rust_version);
    }
    Ok(NewCrateVersion { name: meta.name, version, metadata })
}

/// The file name of a version's `.crate` asset.
pub fn crate_filename(name: &str, version: &str) -> String {
    format!("{name}-{version}.crate")
}

/// Whether a version has a line in the index: installable ones do
/// (Unlisted as `yanked`); Unfinished, Archived and Disposed do not.
fn in_index(entry: &VersionEntry) -> bool {
    entry.status.is_installable()
}

/// The index file of a crate: one JSON object per line, per version, in
/// publish order. Empty when no version is installable.
pub fn render_index_file(index: &PackageIndex) -> Bytes {
    let mut versions: Vec<_> = index.versions.iter().filter(|(_, entry)| in_index(entry)).collect();
    versions.sort_by(|a, b| a.1.created.cmp(&b.1.created).then_with(|| a.0.cmp(b.0)));
    let mut out = Vec::new();
    for (key, entry) in versions {
        let Some(line) = index_line(&index.display_name, key, entry) else { continue };
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// One version's index line (cargo reads fields by name; their order is
/// serde_json's).
fn index_line(display_name: &str, key: &str, entry: &VersionEntry) -> Option<Value> {
    let meta = &entry.metadata;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or(display_name);
    let vers = meta.get("vers").and_then(Value::as_str).unwrap_or(key);
    let asset = entry.assets.values().next()?;
    let mut line = Map::new();
    line.insert("name".into(), json!(name));
    line.insert("vers".into(), json!(vers));
    line.insert("deps".into(), meta.get("deps").cloned().unwrap_or_else(|| json!([])));
    line.insert("cksum".into(), json!(asset.digests.sha256));
    line.insert("features".into(), meta.get("features").cloned().unwrap_or_else(|| json!({})));
    line.insert("yanked".into(), json!(entry.status == VersionStatus::Unlisted));
    line.insert("links".into(), meta.get("links").cloned().unwrap_or(Value::Null));
    if let Some(features2) = meta.get("features2").filter(|f| f.as_object().is_some_and(|m| !m.is_empty())) {
        line.insert("v".into(), json!(2));
        line.insert("features2".into(), features2.clone());
    }
    if let Some(rust_version) = meta.get("rust_version").filter(|r| r.is_string()) {
        line.insert("rust_version".into(), rust_version.clone());
    }
    Some(Value::Object(line))
}

/// The newest listed (not yanked) version, by semver precedence: what
/// search shows as `max_version`.
pub fn newest_listed(index: &PackageIndex) -> Option<(&String, &VersionEntry)> {
    index
        .listed_versions()
        .filter_map(|(key, entry)| {
            let vers = entry.metadata.get("vers").and_then(Value::as_str).unwrap_or(key);
            Some((semver::Version::parse(vers).ok()?, (key, entry)))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, found)| found)
}

/// Who published the crate's versions, in order of their first publish:
/// Wharf's answer to "owners" (publish rights come from the Repository's
/// access, not from per-crate owner lists).
pub fn publishers(index: &PackageIndex) -> Vec<String> {
    let mut versions: Vec<&VersionEntry> = index.versions.values().collect();
    versions.sort_by_key(|entry| entry.created);
    let mut names: Vec<String> = Vec::new();
    for entry in versions {
        if let Some(publisher) = entry.metadata.get("publisher").and_then(Value::as_str)
            && !names.iter().any(|n| n == publisher)
        {
            names.push(publisher.to_owned());
        }
    }
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_core::AssetRef;
    use wharf_storage::BlobDigests;

    #[test]
    fn names() {
        for ok in ["a", "serde", "Foo_bar-2", "x9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "1abc", "-a", "_a", "a.b", "a/b", "a b", "é", "a\0", "..", "a+b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(validate_name(&"a".repeat(64)).is_ok());
        assert!(validate_name(&"a".repeat(65)).is_err());
        assert_eq!(canonical_name("Foo_Bar-baz"), "foo-bar-baz");
        assert_eq!(canonical_name("foo-bar-baz"), canonical_name("FOO_BAR_BAZ"));
    }

    #[test]
    fn versions() {
        let v = validate_version("1.2.3-beta.1+build.5").unwrap();
        assert_eq!(version_key(&v), "1.2.3-beta.1");
        assert!(validate_version("1.2").is_err());
        assert!(validate_version("v1.2.3").is_err());
        assert!(validate_version("1.2.3/../x").is_err());
        assert!(validate_version(&format!("1.0.0-{}", "a".repeat(200))).is_err());
    }

    #[test]
    fn index_paths() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("Abc"), "3/a/abc");
        assert_eq!(index_path("Serde_json"), "se/rd/serde_json");
        for name in ["a", "ab", "abc", "serde_json", "cargo-demo"] {
            assert_eq!(name_from_index_path(&index_path(name)).unwrap(), name);
        }
        for bad in [
            "serde",
            "se/rd/Serde",
            "xx/rd/serde",
            "3/b/abc",
            "1/ab",
            "se/rd/../serde",
            "se/rd/",
            "",
            "config.json",
            "se/rd/serde/x",
        ] {
            assert!(name_from_index_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    fn metadata(extra: Value) -> Vec<u8> {
        let mut doc = json!({
            "name": "demo_lib",
            "vers": "1.0.0+build",
            "deps": [
                {"name": "serde", "version_req": "^1.0", "features": ["derive"], "optional": true,
                 "default_features": false, "target": null, "kind": "normal", "registry": "sparse+http://elsewhere/index/"},
                {"name": "helper", "version_req": "0.2", "features": [], "optional": false,
                 "default_features": true, "target": "cfg(unix)", "kind": "dev", "registry": null,
                 "explicit_name_in_toml": "help"}
            ],
            "features": {"default": ["std"], "std": [], "json": ["dep:serde", "serde?/std"]},
            "description": "A demo",
            "authors": ["someone"],
            "readme": "long text that is not stored",
            "links": null,
            "rust_version": "1.80"
        });
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn publish_metadata_becomes_an_index_line() {
        let new = parse_publish_metadata(&metadata(json!({}))).unwrap();
        assert_eq!(new.name, "demo_lib");
        assert_eq!(version_key(&new.version), "1.0.0");
        let meta = &new.metadata;
        assert_eq!(meta["deps"][0]["req"], "^1.0");
        assert_eq!(meta["deps"][0]["registry"], "sparse+http://elsewhere/index/");
        assert!(meta["deps"][0].get("package").is_none());
        assert_eq!(meta["deps"][1]["name"], "help");
        assert_eq!(meta["deps"][1]["package"], "helper");
        assert_eq!(meta["deps"][1]["kind"], "dev");
        assert_eq!(meta["features"], json!({"default": ["std"], "std": []}));
        assert_eq!(meta["features2"], json!({"json": ["dep:serde", "serde?/std"]}));
        assert!(meta.get("readme").is_none());

        let digests = BlobDigests {
            sha256: "ab".repeat(32),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size: 10,
        };
        let asset = AssetRef {
            name: crate_filename("demo_lib", "1.0.0+build"),
            digests,
            created: chrono::Utc::now(),
            metadata: Value::Null,
        };
        let mut index = PackageIndex { display_name: "demo_lib".into(), ..Default::default() };
        let entry = |status, created| VersionEntry {
            status,
            created,
            metadata: new.metadata.clone(),
            assets: [(asset.name.clone(), asset.clone())].into(),
            deprecated: None,
            withdrawn: false,
            fetched_from: None,
            published_by: None,
        };
        let now = chrono::Utc::now();
        index.versions.insert("1.0.0".into(), entry(VersionStatus::Unlisted, now));
        let mut hidden = entry(VersionStatus::Archived, now);
        hidden.metadata["vers"] = json!("0.9.0");
        index.versions.insert("0.9.0".into(), hidden);
        let file = render_index_file(&index);
        let lines: Vec<Value> =
            std::str::from_utf8(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "archived versions have no line");
        let line = &lines[0];
        assert_eq!(line["name"], "demo_lib");
        assert_eq!(line["vers"], "1.0.0+build");
        assert_eq!(line["cksum"], "ab".repeat(32));
        assert_eq!(line["yanked"], true);
        assert_eq!(line["v"], 2);
        assert_eq!(line["rust_version"], "1.80");
        assert!(line.get("description").is_none(), "descriptive fields stay out of the index");
    }

    #[test]
    fn bad_publish_metadata() {
        let cases = [
            (b"[1, 2]".to_vec(), "not a JSON object"),
            (b"{\"name\": ".to_vec(), "not JSON"),
            (serde_json::to_vec(&json!({"name": "demo"})).unwrap(), "missing field `vers`"),
            (metadata(json!({"name": "9lives"})), "must start with an ASCII letter"),
            (metadata(json!({"name": "../etc"})), "invalid crate name"),
            (metadata(json!({"vers": "1.0"})), "not a semantic version"),
            (metadata(json!({"deps": [{"name": "x", "version_req": "not a req"}]})), "invalid version requirement"),
            (metadata(json!({"deps": [{"name": "x", "version_req": "1", "kind": "weird"}]})), "kind \"weird\""),
            (metadata(json!({"deps": [{"name": "x y", "version_req": "1"}]})), "invalid crate name"),
            (metadata(json!({"features": {"": []}})), "a feature name"),
            (metadata(json!({"features": {"a": "b"}})), "invalid type"),
        ];
        for (body, message) in cases {
            let err = parse_publish_metadata(&body).unwrap_err().to_string();
            assert!(err.contains(message), "{message}: {err}");
        }
    }

    #[test]
    fn config_json() {
        let open: Value = serde_json::from_slice(&render_config("http://h/dl", "http://h/api", false)).unwrap();
        assert_eq!(open, json!({"dl": "http://h/dl", "api": "http://h/api"}));
        let private: Value = serde_json::from_slice(&render_config("d", "a", true)).unwrap();
        assert_eq!(private["auth-required"], true);
    }
}
