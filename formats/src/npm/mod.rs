//! npm: package names and versions, the publish document, tarball checks
//! and packument rendering. Pure, no I/O (tarballs are read from any
//! `Read` the caller provides).
//!
//! The wire format: <https://github.com/npm/registry/blob/main/docs/REGISTRY-API.md>.

pub mod publish_body;
pub mod upstream;

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use wharf_core::{PackageIndex, VersionEntry};

/// Content type of the abbreviated ("corgi") packument.
pub const ABBREVIATED_CONTENT_TYPE: &str = "application/vnd.npm.install-v1+json";

/// Keys of a version manifest that the abbreviated packument keeps.
const ABBREVIATED_KEYS: &[&str] = &[
    "name",
    "version",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "acceptDependencies",
    "bin",
    "directories",
    "engines",
    "os",
    "cpu",
    "libc",
    "funding",
    "license",
    "hasInstallScript",
    "_hasShrinkwrap",
    "deprecated",
    "dist",
];

/// Longest version accepted: node-semver's limit is 256, and a version is
/// one part of a storage key (255 bytes).
pub const MAX_VERSION_LENGTH: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NpmError {
    #[error("invalid package name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid version {version:?}: not a semantic version")]
    InvalidVersion { version: String },
    #[error("invalid version: it is {length} characters long, at most {MAX_VERSION_LENGTH} are accepted")]
    VersionTooLong { length: usize },
    #[error("invalid tag {0:?}: a tag is not a semantic version and uses URL-safe characters")]
    InvalidTag(String),
    #[error("invalid publish document: {0}")]
    InvalidDocument(String),
    #[error("invalid package tarball: {0}")]
    InvalidTarball(String),
}

/// Checks a package name against npm's rules for new packages
/// (validate-npm-package-name): ≤ 214 characters, lowercase, URL-safe,
/// no leading dot or underscore, `@scope/name` for scoped packages.
pub fn validate_name(name: &str) -> Result<(), NpmError> {
    let invalid = |reason| Err(NpmError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 214 {
        return invalid("it is longer than 214 characters");
    }
    let bare = match name.strip_prefix('@') {
        Some(scoped) => {
            let Some((scope, bare)) = scoped.split_once('/') else {
                return invalid("a scoped name is @scope/name");
            };
            if scope.is_empty() || !segment_ok(scope) {
                return invalid("the scope must be lowercase and URL-safe");
            }
            bare
        }
        None => name,
    };
    if bare.is_empty() || bare.contains('/') {
        return invalid("a name is one path segment");
    }
    if bare.starts_with('.') || bare.starts_with('_') {
        return invalid("it starts with a dot or an underscore");
    }
    if bare.trim() != bare {
        return invalid("it has leading or trailing spaces");
    }
    if matches!(bare, "node_modules" | "favicon.ico") {
        return invalid("it is a reserved name");
    }
    if !segment_ok(bare) {
        return invalid("it may contain only lowercase letters, digits and - . _ ~");
    }
    Ok(())
}

fn segment_ok(segment: &str) -> bool {
    segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && segment != "."
        && segment != ".."
}

pub fn validate_version(version: &str) -> Result<semver::Version, NpmError> {
    if version.len() > MAX_VERSION_LENGTH {
        return Err(NpmError::VersionTooLong { length: version.len() });
    }
    semver::Version::parse(version).map_err(|_| NpmError::InvalidVersion { version: version.to_owned() })
}

pub fn validate_tag(tag: &str) -> Result<(), NpmError> {
    let url_safe = tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if tag.is_empty() || tag.len() > 100 || !url_safe || semver::Version::parse(tag).is_ok() {
        return Err(NpmError::InvalidTag(tag.to_owned()));
    }
    Ok(())
}

/// The conventional tarball file name: `{name without scope}-{version}.tgz`.
pub fn tarball_filename(name: &str, version: &str) -> String {
    let bare = name.rsplit('/').next().unwrap_or(name);
    format!("{bare}-{version}.tgz")
}

/// What a `PUT /{package}` body asks for.
#[derive(Debug, PartialEq)]
pub enum PublishRequest {
    /// A new version with its tarball.
    Publish(NewNpmVersion),
    /// A metadata edit without attachments (what `npm deprecate` sends):
    /// the deprecation message of each version it lists.
    Deprecate(Vec<(String, Option<String>)>),
}

#[derive(Debug, PartialEq)]
pub struct NewNpmVersion {
    pub version: String,
    /// The version manifest as stored: the client's, less `dist` fields
    /// the registry computes itself.
    pub manifest: Value,
    pub attachment: String,
    pub declared_length: Option<u64>,
    pub declared_shasum: Option<String>,
    pub declared_integrity: Option<String>,
    pub tags: Vec<String>,
}

/// Interprets the publish document (its attachments already cut out by
/// [`publish_body::PublishBodySplitter`]) for the package named in the URL.
pub fn parse_publish(skeleton: &[u8], url_name: &str) -> Result<PublishRequest, NpmError> {
    let invalid = |m: String| NpmError::InvalidDocument(m);
    let doc: Value = serde_json::from_slice(skeleton).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let doc = doc.as_object().ok_or_else(|| invalid("not a JSON object".into()))?;
    if let Some(name) = doc.get("name").and_then(Value::as_str)
        && name != url_name
    {
        return Err(invalid(format!("name {name:?} does not match the URL's package {url_name:?}")));
    }
    let versions =
        doc.get("versions").and_then(Value::as_object).ok_or_else(|| invalid("it has no versions object".into()))?;
    let attachments = doc.get("_attachments").and_then(Value::as_object);
    let Some(attachments) = attachments.filter(|a| !a.is_empty()) else {
        let deprecations = versions
            .iter()
            .map(|(version, manifest)| {
                let message = manifest.get("deprecated").and_then(Value::as_str).filter(|m| !m.is_empty());
                (version.clone(), message.map(str::to_owned))
            })
            .collect();
        return Ok(PublishRequest::Deprecate(deprecations));
    };
    if versions.len() != 1 {
        return Err(invalid(format!("a publish carries exactly one version, found {}", versions.len())));
    }
    let Some((version, manifest)) = versions.iter().next() else {
        return Err(invalid("it has no version".into()));
    };
    validate_version(version)?;
    let mut manifest = manifest.as_object().cloned().ok_or_else(|| invalid("the version is not an object".into()))?;
    match manifest.get("name").and_then(Value::as_str) {
        Some(name) if name == url_name => {}
        other => return Err(invalid(format!("versions[{version:?}].name is {other:?}, expected {url_name:?}"))),
    }
    if manifest.get("version").and_then(Value::as_str) != Some(version.as_str()) {
        return Err(invalid(format!("versions[{version:?}].version does not match")));
    }
    let expected_file = tarball_filename(url_name, version);
    let (attachment, meta) = attachments
        .iter()
        .find(|(name, _)| name.ends_with(".tgz"))
        .ok_or_else(|| invalid("it has no .tgz attachment".into()))?;
    if *attachment != expected_file && !attachment.ends_with(&format!("-{version}.tgz")) {
        return Err(invalid(format!("attachment {attachment:?} does not match version {version}")));
    }
    let dist = manifest.remove("dist").unwrap_or(Value::Null);
    manifest.insert("_id".into(), json!(format!("{url_name}@{version}")));
    let tags = doc
        .get("dist-tags")
        .and_then(Value::as_object)
        .map(|tags| {
            tags.iter()
                .filter(|(_, v)| v.as_str() == Some(version.as_str()))
                .map(|(tag, _)| tag.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for tag in &tags {
        validate_tag(tag)?;
    }
    Ok(PublishRequest::Publish(NewNpmVersion {
        version: version.clone(),
        manifest: Value::Object(manifest),
        attachment: attachment.clone(),
        declared_length: meta.get("length").and_then(Value::as_u64),
        declared_shasum: dist.get("shasum").and_then(Value::as_str).map(str::to_owned),
        declared_integrity: dist.get("integrity").and_then(Value::as_str).map(str::to_owned),
        tags: if tags.is_empty() { vec!["latest".into()] } else { tags },
    }))
}

/// What the tarball itself says.
#[derive(Debug, PartialEq, Eq)]
pub struct TarballInfo {
    pub name: String,
    pub version: String,
    pub file_count: u64,
    pub unpacked_size: u64,
    /// The tarball's `package.json`: what npm reads once it installed the
    /// package, so what the packument must say too.
    pub manifest: Value,
    /// Whether the package has a `binding.gyp`, which makes npm run
    /// `node-gyp rebuild` at install.
    pub has_binding_gyp: bool,
}

/// Fields of a version manifest that decide what an install fetches and
/// runs. The packument serves them as the tarball's `package.json` has
/// them, never as the publish document claims: a document that lists other
/// dependencies, or hides a `postinstall`, must not mislead auditors and
/// lockfile tools about what installing does (npm's "manifest confusion").
const INSTALL_FIELDS: &[&str] = &[
    "dependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "bin",
    "engines",
    "os",
    "cpu",
    "libc",
    "scripts",
];

/// Replaces the install fields of a published manifest with the tarball's
/// and derives `hasInstallScript` from them, as npm does when it packs.
pub fn align_with_tarball(manifest: &mut Value, name: &str, tarball: &TarballInfo) {
    let Value::Object(manifest) = manifest else { return };
    for field in INSTALL_FIELDS {
        match tarball.manifest.get(*field) {
            Some(value) => manifest.insert((*field).to_owned(), value.clone()),
            None => manifest.remove(*field),
        };
    }
    // A string `bin` names one command, called as the package (its scope dropped).
    if let Some(Value::String(path)) = manifest.get("bin") {
        let command = name.rsplit('/').next().unwrap_or(name).to_owned();
        let path = path.clone();
        manifest.insert("bin".into(), json!({ command: path }));
    }
    let scripts = manifest.get("scripts").and_then(Value::as_object);
    let has_script = |key: &str| scripts.is_some_and(|scripts| scripts.contains_key(key));
    // npm runs `node-gyp rebuild` for a binding.gyp unless an install script is given.
    let gyp = tarball.has_binding_gyp && !has_script("install") && !has_script("preinstall");
    let runs_at_install = gyp || ["preinstall", "install", "postinstall"].into_iter().any(has_script);
    if gyp && let Value::Object(scripts) = manifest.entry("scripts").or_insert_with(|| json!({})) {
        scripts.insert("install".into(), json!("node-gyp rebuild"));
    }
    if runs_at_install {
        manifest.insert("hasInstallScript".into(), json!(true));
    } else {
        manifest.remove("hasInstallScript");
    }
}

/// Reads a package tarball (gzip tar) through: it must hold a
/// `package/package.json` (the top folder's name is not checked, as npm
/// does not) and no entry that escapes the package folder. It may inflate
/// to at most `max_unpacked` bytes, counted on the decompressed tar stream
/// (headers and every entry type included), so nothing is inflated past it.
pub fn inspect_tarball(reader: impl Read, max_unpacked: u64) -> Result<TarballInfo, NpmError> {
    let (inflated, inflation) = crate::inflate::limit(flate2::read::GzDecoder::new(reader), max_unpacked);
    let invalid = |m: String| NpmError::InvalidTarball(m);
    let broken = |what: &str, e: std::io::Error| invalid(inflation.reason(what, &e, max_unpacked));
    let mut archive = tar::Archive::new(inflated);
    let mut package_json: Option<Value> = None;
    let mut has_binding_gyp = false;
    let (mut file_count, mut unpacked_size) = (0u64, 0u64);
    let entries = archive.entries().map_err(|e| broken("not a gzip tar archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken("not a gzip tar archive", e))?;
        let path = entry.path().map_err(|e| invalid(format!("bad entry path: {e}")))?.into_owned();
        if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(invalid(format!("entry {} escapes the package folder", path.display())));
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        file_count += 1;
        unpacked_size += entry.size();
        if unpacked_size > max_unpacked {
            return Err(invalid(format!("it unpacks to more than {max_unpacked} bytes")));
        }
        let mut components = path.components();
        let top_level = components.next().is_some().then(|| components.next()).flatten();
        let is_manifest = top_level.is_some_and(|c| c.as_os_str() == "package.json") && components.next().is_none();
        let mut rest = path.components().skip(1);
        has_binding_gyp |= rest.next().is_some_and(|c| c.as_os_str() == "binding.gyp") && rest.next().is_none();
        if is_manifest && package_json.is_none() {
            if entry.size() > 16 * 1024 * 1024 {
                return Err(invalid("package.json is larger than 16 MiB".into()));
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| broken("package.json is not UTF-8", e))?;
            package_json =
                Some(serde_json::from_str(&text).map_err(|e| invalid(format!("package.json is not JSON: {e}")))?);
        } else {
            // Drain so the decompressor is checked end to end.
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| broken("corrupt entry", e))?;
        }
    }
    let manifest = package_json.ok_or_else(|| invalid("it has no package/package.json".into()))?;
    let field = |key: &str| manifest.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(TarballInfo {
        name: field("name").ok_or_else(|| invalid("package.json has no name".into()))?,
        version: field("version").ok_or_else(|| invalid("package.json has no version".into()))?,
        file_count,
        unpacked_size,
        has_binding_gyp,
        manifest,
    })
}

/// `sha512-<base64>` from a hex SHA-512.
pub fn integrity(sha512_hex: &str) -> String {
    let raw = hex::decode(sha512_hex).unwrap_or_default();
    format!("sha512-{}", STANDARD.encode(raw))
}

/// The SHA-512 a Subresource Integrity string declares, in hex: `None` when
/// it declares another algorithm (nothing to compare), empty when it is not
/// valid base64 (it matches nothing).
pub fn declared_sha512(integrity: &str) -> Option<String> {
    let encoded = integrity.strip_prefix("sha512-")?;
    Some(STANDARD.decode(encoded).map(hex::encode).unwrap_or_default())
}

/// Renders the packument: full (`abbreviated == false`) or the install
/// document. `base` is the repository's npm root URL, without trailing
/// slash; tarball URLs go under it so npm sends its token along.
pub fn render_packument(index: &PackageIndex, name: &str, base: &str, abbreviated: bool) -> Bytes {
    let mut versions = Map::new();
    let mut time = Map::new();
    for (version, entry) in index.listed_versions() {
        let manifest = version_manifest(entry, name, version, base);
        time.insert(version.clone(), json!(entry.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        let manifest = if abbreviated {
            let mut short = Map::new();
            if let Value::Object(full) = manifest {
                for (key, value) in full {
                    if ABBREVIATED_KEYS.contains(&key.as_str()) {
                        short.insert(key, value);
                    }
                }
            }
            Value::Object(short)
        } else {
            manifest
        };
        versions.insert(version.clone(), manifest);
    }
    let tags: BTreeMap<_, _> =
        index.tags.iter().filter(|(_, v)| index.versions.get(*v).is_some_and(|e| e.status.is_listed())).collect();
    let modified = index.modified.map(|m| m.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let doc = if abbreviated {
        json!({"name": name, "modified": modified, "dist-tags": tags, "versions": versions})
    } else {
        if let Some(created) = index.created {
            time.insert("created".into(), json!(created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        }
        time.insert("modified".into(), json!(modified));
        let latest = tags.get(&"latest".to_owned()).and_then(|v| index.versions.get(*v));
        let description = latest.and_then(|e| e.metadata.get("description")).cloned().unwrap_or(Value::Null);
        let readme = latest.and_then(|e| e.metadata.get("readme")).cloned().unwrap_or(json!(""));
        json!({
            "_id": name,
            "name": name,
            "description": description,
            "dist-tags": tags,
            "versions": versions,
            "time": time,
            "readme": readme,
        })
    };
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// One version's manifest with the registry's `dist`.
pub fn version_manifest(entry: &VersionEntry, name: &str, version: &str, base: &str) -> Value {
    let mut manifest = entry.metadata.clone();
    let file = tarball_filename(name, version);
    if let (Value::Object(map), Some(asset)) = (&mut manifest, entry.assets.get(&file)) {
        let extra = &asset.metadata;
        map.insert(
            "dist".into(),
            json!({
                "tarball": format!("{base}/{name}/-/{file}"),
                "shasum": asset.digests.sha1,
                "integrity": integrity(&asset.digests.sha512),
                "fileCount": extra.get("fileCount"),
                "unpackedSize": extra.get("unpackedSize"),
            }),
        );
        match &entry.deprecated {
            Some(message) => map.insert("deprecated".into(), json!(message)),
            None => map.remove("deprecated"),
        };
    }
    manifest
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["left-pad", "@acme/tools", "a.b_c~d", "x"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "Upper",
            "@acme",
            "@/x",
            "@acme/",
            "a/b",
            ".hidden",
            "_u",
            "node_modules",
            "a b",
            "@acme/../x",
            "..",
            "%2e%2e",
            "a\0b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(validate_name(&"a".repeat(215)).is_err());
    }

    #[test]
    fn versions_and_tags() {
        validate_version("1.2.3-beta.1+build").unwrap();
        assert!(validate_version("1.2").is_err());
        assert!(validate_version("v1.2.3").is_err());
        validate_tag("beta").unwrap();
        assert!(validate_tag("1.0.0").is_err());
        assert!(validate_tag("a/b").is_err());
        assert_eq!(tarball_filename("@acme/tools", "1.0.0"), "tools-1.0.0.tgz");
    }

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn install_fields_follow_the_tarball() {
        let info = |manifest: Value, has_binding_gyp: bool| TarballInfo {
            name: "native".into(),
            version: "1.0.0".into(),
            file_count: 1,
            unpacked_size: 1,
            manifest,
            has_binding_gyp,
        };
        // The document claims an install script the tarball does not have.
        let mut claimed = json!({"name": "native", "scripts": {"postinstall": "x"}, "hasInstallScript": true});
        align_with_tarball(&mut claimed, "native", &info(json!({"name": "native"}), false));
        assert_eq!(claimed, json!({"name": "native"}));
        // A binding.gyp without an install script: npm runs node-gyp.
        let mut native = json!({"name": "native"});
        align_with_tarball(&mut native, "native", &info(json!({"scripts": {"test": "t"}}), true));
        assert_eq!(native["scripts"], json!({"test": "t", "install": "node-gyp rebuild"}));
        assert_eq!(native["hasInstallScript"], true);
        let mut own = json!({});
        align_with_tarball(&mut own, "native", &info(json!({"scripts": {"preinstall": "p"}}), true));
        assert_eq!(own["scripts"], json!({"preinstall": "p"}));
    }

    #[test]
    fn tarballs() {
        let good =
            tarball(&[("package/package.json", br#"{"name":"a","version":"1.0.0"}"#), ("package/index.js", b"x")]);
        let info = inspect_tarball(&good[..], 1 << 20).unwrap();
        assert_eq!(
            info,
            TarballInfo {
                name: "a".into(),
                version: "1.0.0".into(),
                file_count: 2,
                unpacked_size: 31,
                manifest: json!({"name": "a", "version": "1.0.0"}),
                has_binding_gyp: false,
            }
        );
        let missing = tarball(&[("package/index.js", b"x")]);
        assert!(inspect_tarball(&missing[..], 1 << 20).unwrap_err().to_string().contains("no package/package.json"));
        assert!(inspect_tarball(&b"not gzip"[..], 1 << 20).is_err());
        assert!(inspect_tarball(&good[..10], 1 << 20).is_err(), "truncated archives are refused");
        let big =
            tarball(&[("package/package.json", br#"{"name":"a","version":"1.0.0"}"#), ("package/big", &[0u8; 4096])]);
        assert!(inspect_tarball(&big[..], 1000).unwrap_err().to_string().contains("unpacks to more than"));
    }

    #[test]
    fn a_huge_directory_entry_is_refused_once_the_inflated_stream_passes_the_limit() {
        let bomb = crate::inflate::gzip_tar_with_huge_directory(
            "package/huge/",
            64 << 20,
            &[("package/package.json", br#"{"name":"a","version":"1.0.0"}"#)],
        );
        assert!(bomb.len() < 1024 * 1024, "{} compressed bytes", bomb.len());
        let error = inspect_tarball(&bomb[..], 1 << 20).unwrap_err().to_string();
        assert!(error.contains("unpacks to more than 1048576 bytes"), "{error}");
    }

    fn publish_doc(name: &str, version: &str, tags: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "name": name,
            "dist-tags": tags,
            "versions": {version: {"name": name, "version": version, "dist": {"shasum": "abc", "integrity": "sha512-x"}}},
            "_attachments": {tarball_filename(name, version): {"data": "", "length": 3}}
        }))
        .unwrap()
    }

    #[test]
    fn publish_documents() {
        let PublishRequest::Publish(new) =
            parse_publish(&publish_doc("@a/b", "1.0.0", json!({"beta": "1.0.0"})), "@a/b").unwrap()
        else {
            panic!("expected a publish")
        };
        assert_eq!(new.tags, vec!["beta"]);
        assert_eq!(new.declared_length, Some(3));
        assert_eq!(new.declared_shasum.as_deref(), Some("abc"));
        assert_eq!(new.manifest["_id"], "@a/b@1.0.0");
        assert!(new.manifest.get("dist").is_none());
        assert!(parse_publish(&publish_doc("@a/b", "1.0.0", json!({})), "@a/c").is_err());
        assert!(parse_publish(&publish_doc("a", "1.0", json!({})), "a").is_err());
        assert!(parse_publish(b"[]", "a").is_err());
        let deprecate = json!({"name": "a", "versions": {"1.0.0": {"deprecated": "old"}, "1.1.0": {}}});
        assert_eq!(
            parse_publish(&serde_json::to_vec(&deprecate).unwrap(), "a").unwrap(),
            PublishRequest::Deprecate(vec![("1.0.0".into(), Some("old".into())), ("1.1.0".into(), None)])
        );
    }
}
