//! PyPI: project names and versions, distribution file names, wheel and
//! sdist checks, and the simple repository API in HTML (PEP 503) and JSON
//! (PEP 691). Pure, no I/O (archives are read from a `Read`/`Seek` the
//! caller provides).
//!
//! Spec: <https://packaging.python.org/en/latest/specifications/simple-repository-api/>.

use crate::markup::escape;
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::str::FromStr;

use bytes::Bytes;
use serde_json::{Value, json};

use wharf_core::{PackageIndex, VersionStatus};

pub const JSON_CONTENT_TYPE: &str = "application/vnd.pypi.simple.v1+json";
pub const HTML_CONTENT_TYPE: &str = "application/vnd.pypi.simple.v1+html";
/// The API version these pages implement (1.1: `versions`, `size`, `upload-time`).
const API_VERSION: &str = "1.1";
/// Largest METADATA file accepted from a wheel.
const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;
/// Most an sdist's tar stream may inflate to (decompression bombs).
pub const MAX_SDIST_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PypiError {
    #[error("invalid project name {0:?}: use letters, digits, and . _ - between them")]
    InvalidName(String),
    #[error("invalid version {0:?}: not a PEP 440 version")]
    InvalidVersion(String),
    #[error("invalid distribution file name {name:?}: {reason}")]
    InvalidFilename { name: String, reason: String },
    #[error("invalid distribution {name}: {reason}")]
    InvalidArchive { name: String, reason: String },
}

/// PEP 503 normalisation: runs of `-`, `_`, `.` become `-`, lowercase.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('-');
            }
            in_separator = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_separator = false;
        }
    }
    out
}

/// A valid project name (PEP 508): ASCII letters and digits, with `.`, `_`
/// and `-` only between them.
pub fn validate_name(name: &str) -> Result<(), PypiError> {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let ok = !name.is_empty()
        && name.len() <= 200
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(PypiError::InvalidName(name.to_owned())) }
}

/// Parses and normalises a PEP 440 version (`1.0.0-RC1` → `1.0.0rc1`).
pub fn normalize_version(version: &str) -> Result<String, PypiError> {
    if version.len() > 128 {
        return Err(PypiError::InvalidVersion(version.to_owned()));
    }
    pep440_rs::Version::from_str(version)
        .map(|v| v.to_string())
        .map_err(|_| PypiError::InvalidVersion(version.to_owned()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistKind {
    Wheel,
    Sdist,
}

/// What a distribution's file name says.
#[derive(Debug, PartialEq, Eq)]
pub struct DistFilename {
    pub kind: DistKind,
    /// Normalised project name.
    pub project: String,
    /// Normalised version.
    pub version: String,
}

/// Parses a wheel (`{name}-{ver}(-{build})?-{py}-{abi}-{plat}.whl`) or
/// sdist (`{name}-{ver}.tar.gz`) file name.
pub fn parse_filename(filename: &str) -> Result<DistFilename, PypiError> {
    let invalid = |reason: &str| PypiError::InvalidFilename { name: filename.to_owned(), reason: reason.to_owned() };
    let safe = filename.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'!'));
    if filename.is_empty() || filename.len() > 255 || !safe || filename.starts_with('.') {
        return Err(invalid("it must be a plain file name of letters, digits and . _ - + !"));
    }
    let (kind, project, version) = if let Some(stem) = filename.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        if parts.len() != 5 && parts.len() != 6 {
            return Err(invalid("a wheel is name-version(-build)-python-abi-platform.whl"));
        }
        (DistKind::Wheel, parts[0], parts[1])
    } else if let Some(stem) = filename.strip_suffix(".tar.gz") {
        let (project, version) = stem.rsplit_once('-').ok_or_else(|| invalid("an sdist is name-version.tar.gz"))?;
        (DistKind::Sdist, project, version)
    } else {
        return Err(invalid("only wheels (.whl) and sdists (.tar.gz, PEP 625) are accepted"));
    };
    validate_name(project).map_err(|_| invalid("the project part is not a valid name"))?;
    let version = normalize_version(version).map_err(|_| invalid("the version part is not a PEP 440 version"))?;
    Ok(DistFilename { kind, project: normalize_name(project), version })
}

/// The core metadata fields this registry reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CoreMetadata {
    pub name: String,
    pub version: String,
    pub requires_python: Option<String>,
}

/// Parses an RFC 822-style METADATA / PKG-INFO header block.
pub fn parse_core_metadata(text: &str) -> CoreMetadata {
    let mut meta = CoreMetadata::default();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_owned();
        match key.to_ascii_lowercase().as_str() {
            "name" => meta.name = value,
            "version" => meta.version = value,
            "requires-python" => meta.requires_python = Some(value),
            _ => {}
        }
    }
    meta
}

/// Reads a wheel's `{name}-{version}.dist-info/METADATA`, checking that it
/// names the same project and version as the file name. Returns the
/// METADATA bytes (served as the PEP 658 file) and its parsed fields.
pub fn wheel_metadata(
    reader: impl Read + Seek,
    file: &DistFilename,
    filename: &str,
) -> Result<(Vec<u8>, CoreMetadata), PypiError> {
    let invalid = |reason: String| PypiError::InvalidArchive { name: filename.to_owned(), reason };
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| invalid(format!("not a zip archive: {e}")))?;
    let mut metadata_path = None;
    for name in archive.file_names() {
        if name.starts_with('/') || name.split('/').any(|part| part == "..") || name.contains('\\') {
            return Err(invalid(format!("entry {name:?} escapes the wheel")));
        }
        if let Some(dir) = name.strip_suffix(".dist-info/METADATA")
            && !dir.contains('/')
        {
            let matches = dir.rsplit_once('-').is_some_and(|(p, v)| {
                normalize_name(p) == file.project && normalize_version(v).as_deref() == Ok(file.version.as_str())
            });
            if matches {
                metadata_path = Some(name.to_owned());
            }
        }
    }
    let path = metadata_path
        .ok_or_else(|| invalid("it has no {name}-{version}.dist-info/METADATA matching its file name".into()))?;
    let entry = archive.by_name(&path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    if entry.size() > MAX_METADATA_BYTES {
        return Err(invalid(format!("{path} is larger than {MAX_METADATA_BYTES} bytes")));
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid(format!("{path} is not UTF-8")))?;
    let meta = parse_core_metadata(text);
    check_metadata(&meta, file).map_err(invalid)?;
    Ok((bytes, meta))
}

/// Reads an sdist (`.tar.gz`) through and finds its top-level PKG-INFO.
/// It may inflate to at most [`MAX_SDIST_UNPACKED_BYTES`].
pub fn sdist_metadata(reader: impl Read, file: &DistFilename, filename: &str) -> Result<CoreMetadata, PypiError> {
    sdist_metadata_within(reader, file, filename, MAX_SDIST_UNPACKED_BYTES)
}

/// [`sdist_metadata`] with the ceiling on the decompressed tar stream
/// (headers and every entry type included) given.
fn sdist_metadata_within(
    reader: impl Read,
    file: &DistFilename,
    filename: &str,
    max_unpacked: u64,
) -> Result<CoreMetadata, PypiError> {
    let (inflated, inflation) = crate::inflate::limit(flate2::read::GzDecoder::new(reader), max_unpacked);
    let invalid = |reason: String| PypiError::InvalidArchive { name: filename.to_owned(), reason };
    let broken = |what: &str, e: std::io::Error| invalid(inflation.reason(what, &e, max_unpacked));
    let mut archive = tar::Archive::new(inflated);
    let mut found = None;
    let entries = archive.entries().map_err(|e| broken("not a gzip tar archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken("not a gzip tar archive", e))?;
        let path = entry.path().map_err(|e| invalid(format!("bad entry path: {e}")))?.into_owned();
        if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(invalid(format!("entry {} escapes the archive", path.display())));
        }
        let top_level_pkg_info = path.components().count() == 2 && path.ends_with("PKG-INFO");
        if top_level_pkg_info && found.is_none() && entry.size() <= MAX_METADATA_BYTES {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| broken("PKG-INFO is not UTF-8", e))?;
            found = Some(parse_core_metadata(&text));
        } else {
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| broken("corrupt entry", e))?;
        }
    }
    let meta = found.ok_or_else(|| invalid("it has no top-level PKG-INFO".into()))?;
    check_metadata(&meta, file).map_err(invalid)?;
    Ok(meta)
}

fn check_metadata(meta: &CoreMetadata, file: &DistFilename) -> Result<(), String> {
    if normalize_name(&meta.name) != file.project {
        return Err(format!("its metadata names project {:?}, not {:?}", meta.name, file.project));
    }
    if normalize_version(&meta.version).as_deref() != Ok(file.version.as_str()) {
        return Err(format!("its metadata names version {:?}, not {:?}", meta.version, file.version));
    }
    Ok(())
}

/// URL of a file, relative to a project page (`…/simple/{project}/`).
pub fn file_url(project: &str, version: &str, filename: &str) -> String {
    format!("../../files/{project}/{version}/{filename}")
}

struct FileRow<'a> {
    filename: &'a str,
    url: String,
    sha256: &'a str,
    size: u64,
    upload_time: String,
    requires_python: Option<&'a str>,
    core_metadata_sha256: Option<&'a str>,
    yanked: bool,
}

fn file_rows<'a>(index: &'a PackageIndex, project: &str) -> (Vec<&'a str>, Vec<FileRow<'a>>) {
    let mut versions: Vec<(&String, _)> =
        index.versions.iter().filter(|(_, e)| e.status.is_installable() && !e.assets.is_empty()).collect();
    versions.sort_by(|a, b| {
        let parse = |v: &str| pep440_rs::Version::from_str(v).ok();
        parse(a.0).cmp(&parse(b.0)).then_with(|| a.0.cmp(b.0))
    });
    let mut rows = Vec::new();
    for (version, entry) in &versions {
        for asset in entry.assets.values() {
            rows.push(FileRow {
                filename: &asset.name,
                url: file_url(project, version, &asset.name),
                sha256: &asset.digests.sha256,
                size: asset.digests.size,
                upload_time: asset.created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                requires_python: asset.metadata.get("requires_python").and_then(Value::as_str),
                core_metadata_sha256: asset.metadata.get("core_metadata_sha256").and_then(Value::as_str),
                yanked: entry.status == VersionStatus::Unlisted,
            });
        }
    }
    (versions.iter().map(|(v, _)| v.as_str()).collect(), rows)
}

/// The project page as PEP 691 JSON.
pub fn render_project_json(index: &PackageIndex, project: &str) -> Bytes {
    let (versions, rows) = file_rows(index, project);
    let files: Vec<Value> = rows
        .iter()
        .map(|row| {
            let core = row.core_metadata_sha256.map_or(json!(false), |sha| json!({"sha256": sha}));
            json!({
                "filename": row.filename,
                "url": row.url,
                "hashes": {"sha256": row.sha256},
                "requires-python": row.requires_python,
                "core-metadata": core,
                "dist-info-metadata": core,
                "yanked": row.yanked,
                "size": row.size,
                "upload-time": row.upload_time,
            })
        })
        .collect();
    let doc = json!({"meta": {"api-version": API_VERSION}, "name": project, "versions": versions, "files": files});
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// The project page as PEP 503 HTML.
pub fn render_project_html(index: &PackageIndex, project: &str) -> Bytes {
    let (_, rows) = file_rows(index, project);
    let mut html = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"{API_VERSION}\">\n<title>Links for {0}</title>\n</head>\n<body>\n<h1>Links for {0}</h1>\n",
        escape(project)
    );
    for row in rows {
        let mut attrs = String::new();
        if let Some(requires) = row.requires_python {
            attrs.push_str(&format!(" data-requires-python=\"{}\"", escape(requires)));
        }
        if let Some(sha) = row.core_metadata_sha256 {
            attrs.push_str(&format!(" data-core-metadata=\"sha256={sha}\" data-dist-info-metadata=\"sha256={sha}\""));
        }
        if row.yanked {
            attrs.push_str(" data-yanked=\"\"");
        }
        html.push_str(&format!(
            "<a href=\"{}#sha256={}\"{attrs}>{}</a><br/>\n",
            escape(&row.url),
            row.sha256,
            escape(row.filename)
        ));
    }
    html.push_str("</body>\n</html>\n");
    Bytes::from(html)
}

/// The project list in either form.
pub fn render_root(projects: &[String], json_form: bool) -> Bytes {
    if json_form {
        let projects: Vec<Value> = projects.iter().map(|p| json!({"name": p})).collect();
        let doc = json!({"meta": {"api-version": API_VERSION}, "projects": projects});
        return Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    }
    let mut html = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"{API_VERSION}\">\n<title>Simple index</title>\n</head>\n<body>\n"
    );
    for project in projects {
        html.push_str(&format!("<a href=\"{0}/\">{0}</a><br/>\n", escape(project)));
    }
    html.push_str("</body>\n</html>\n");
    Bytes::from(html)
}

/// Picks the simple API representation from an `Accept` header: JSON when
/// the client prefers it, HTML otherwise (PEP 691 content negotiation).
pub fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut best: Option<(f32, bool)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        let json_form = match media.as_str() {
            JSON_CONTENT_TYPE | "application/vnd.pypi.simple.latest+json" => true,
            HTML_CONTENT_TYPE | "application/vnd.pypi.simple.latest+html" | "text/html" | "*/*" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, json_form));
        }
    }
    best.is_some_and(|(_, json_form)| json_form)
}

/// Version-level metadata kept from the upload form's core-metadata fields.
pub fn version_metadata(fields: &BTreeMap<String, Vec<String>>) -> Value {
    const KEPT: &[&str] = &[
        "metadata_version",
        "summary",
        "description_content_type",
        "author",
        "author_email",
        "maintainer",
        "maintainer_email",
        "license",
        "license_expression",
        "keywords",
        "home_page",
        "requires_python",
        "requires_dist",
        "classifiers",
        "project_urls",
    ];
    let mut map = serde_json::Map::new();
    for key in KEPT {
        if let Some(values) = fields.get(*key) {
            map.insert((*key).to_owned(), json!(values));
        }
    }
    Value::Object(map)
}

/// Key of an upstream file's metadata holding where to fetch it.
pub const UPSTREAM_URL: &str = "upstreamUrl";

/// An upstream project page in PEP 691 JSON as a package index of files
/// not stored here: each asset carries its absolute upstream URL (`resolve`
/// turns the page's possibly relative links into one) and the declared
/// SHA-256 the fetched bytes must match; every version is marked with
/// `connection`. Files without a SHA-256 or with a name that does not
/// parse as this project's distribution are left out.
pub fn upstream_index(
    body: &[u8],
    project: &str,
    connection: &str,
    resolve: impl Fn(&str) -> Option<String>,
) -> Result<PackageIndex, PypiError> {
    let invalid = |reason: String| PypiError::InvalidArchive { name: format!("upstream page of {project}"), reason };
    let document: Value = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let files = document.get("files").and_then(Value::as_array).ok_or_else(|| invalid("no files array".into()))?;
    let mut index = PackageIndex { display_name: project.to_owned(), ..Default::default() };
    for file in files {
        let text = |key: &str| file.get(key).and_then(Value::as_str);
        let (Some(filename), Some(url)) = (text("filename"), text("url")) else { continue };
        let Ok(parsed) = parse_filename(filename) else { continue };
        let sha256 = file.get("hashes").and_then(|h| h.get("sha256")).and_then(Value::as_str);
        let Some(sha256) = sha256.filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())) else {
            continue;
        };
        let Some(url) = resolve(url) else { continue };
        if parsed.project != project {
            continue;
        }
        let created = text("upload-time")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            // Unknown age (PEP 700 is optional): treated as old.
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let yanked = file.get("yanked").is_some_and(|y| y.as_bool().unwrap_or(y.is_string()));
        let asset = wharf_core::AssetRef {
            name: filename.to_owned(),
            digests: wharf_storage::BlobDigests {
                sha256: sha256.to_ascii_lowercase(),
                sha512: String::new(),
                sha1: String::new(),
                md5: String::new(),
                size: file.get("size").and_then(Value::as_u64).unwrap_or(0),
            },
            created,
            metadata: json!({UPSTREAM_URL: url, "requires_python": text("requires-python")}),
        };
        let entry = index.versions.entry(parsed.version).or_insert_with(|| wharf_core::VersionEntry {
            status: if yanked { VersionStatus::Unlisted } else { VersionStatus::Published },
            created,
            metadata: json!({}),
            assets: Default::default(),
            deprecated: None,
            withdrawn: false,
            fetched_from: Some(connection.to_owned()),
            published_by: None,
        });
        entry.created = entry.created.min(created);
        entry.assets.insert(filename.to_owned(), asset);
    }
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn names_and_versions() {
        assert_eq!(normalize_name("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalize_name("FRIENDLY__bard"), "friendly-bard");
        assert_eq!(normalize_name("friendly.-_bard"), "friendly-bard");
        validate_name("a").unwrap();
        validate_name("Zope.Interface_2").unwrap();
        for bad in ["", "-a", "a-", "a b", "../x", "a/b", "a\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_version("1.0.0-RC1").unwrap(), "1.0.0rc1");
        assert!(normalize_version("not a version").is_err());
    }

    #[test]
    fn filenames() {
        let wheel = parse_filename("Demo_Pkg-1.0-py3-none-any.whl").unwrap();
        assert_eq!(wheel, DistFilename { kind: DistKind::Wheel, project: "demo-pkg".into(), version: "1.0".into() });
        let sdist = parse_filename("demo-pkg-2.0.tar.gz").unwrap();
        assert_eq!(sdist, DistFilename { kind: DistKind::Sdist, project: "demo-pkg".into(), version: "2.0".into() });
        for bad in [
            "demo.whl",
            "../demo-1.0.tar.gz",
            "demo-1.0.exe",
            "demo-x.y.z-py3-none-any.whl",
            "demo-1.0-py3.whl",
            "a/b-1.0.tar.gz",
            "",
        ] {
            assert!(parse_filename(bad).is_err(), "{bad:?}");
        }
    }

    fn wheel(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, text) in entries {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(text.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn wheels() {
        let file = parse_filename("demo-1.0-py3-none-any.whl").unwrap();
        let good = wheel(&[
            ("demo/__init__.py", ""),
            (
                "demo-1.0.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: Demo\nVersion: 1.0\nRequires-Python: >=3.8\n\nlong description",
            ),
        ]);
        let (bytes, meta) = wheel_metadata(Cursor::new(good), &file, "demo-1.0-py3-none-any.whl").unwrap();
        assert!(bytes.starts_with(b"Metadata-Version"));
        assert_eq!(meta.requires_python.as_deref(), Some(">=3.8"));
        let wrong = wheel(&[("demo-1.0.dist-info/METADATA", "Name: other\nVersion: 1.0\n")]);
        assert!(wheel_metadata(Cursor::new(wrong), &file, "x").unwrap_err().to_string().contains("not \"demo\""));
        let missing = wheel(&[("demo/__init__.py", "")]);
        assert!(wheel_metadata(Cursor::new(missing), &file, "x").is_err());
        let escaping = wheel(&[("../evil", ""), ("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")]);
        assert!(wheel_metadata(Cursor::new(escaping), &file, "x").unwrap_err().to_string().contains("escapes"));
        assert!(wheel_metadata(Cursor::new(b"not a zip".to_vec()), &file, "x").is_err());
    }

    #[test]
    fn an_sdist_with_a_huge_directory_entry_is_refused_once_it_inflates_past_the_limit() {
        let pkg_info = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n";
        let bomb = crate::inflate::gzip_tar_with_huge_directory(
            "demo-1.0/huge/",
            64 << 20,
            &[("demo-1.0/PKG-INFO", &pkg_info[..])],
        );
        let file = parse_filename("demo-1.0.tar.gz").unwrap();
        let error = sdist_metadata_within(&bomb[..], &file, "demo-1.0.tar.gz", 1 << 20).unwrap_err().to_string();
        assert!(error.contains("unpacks to more than 1048576 bytes"), "{error}");
        let meta = sdist_metadata_within(&bomb[..], &file, "demo-1.0.tar.gz", 65 << 20).unwrap();
        assert_eq!(meta.name, "demo", "within the limit it is read as before");
    }

    #[test]
    fn negotiation() {
        assert!(prefers_json(Some(
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.1, text/html;q=0.01"
        )));
        assert!(!prefers_json(Some("text/html")));
        assert!(!prefers_json(None));
        assert!(!prefers_json(Some("application/vnd.pypi.simple.v1+json;q=0.1, text/html")));
        assert!(!prefers_json(Some("*/*")));
    }

    #[test]
    fn upstream_pages_become_unstored_versions() {
        let sha = "c".repeat(64);
        let body = json!({
            "name": "demo",
            "files": [
                {"filename": "demo-1.0.tar.gz", "url": "../../files/demo/1.0/demo-1.0.tar.gz", "hashes": {"sha256": sha}, "upload-time": "2021-02-03T04:05:06.000000Z", "size": 10},
                {"filename": "demo-1.1-py3-none-any.whl", "url": "http://up/demo-1.1-py3-none-any.whl", "hashes": {"sha256": sha}, "yanked": "broken"},
                {"filename": "demo-2.0.tar.gz", "url": "http://up/demo-2.0.tar.gz", "hashes": {}},
                {"filename": "other-3.0.tar.gz", "url": "http://up/other-3.0.tar.gz", "hashes": {"sha256": sha}},
                {"filename": "../evil-1.0.tar.gz", "url": "http://up/evil", "hashes": {"sha256": sha}}
            ]
        });
        let resolve =
            |url: &str| Some(if url.starts_with("http") { url.to_owned() } else { format!("http://up/x/{url}") });
        let index = upstream_index(body.to_string().as_bytes(), "demo", "pub", resolve).unwrap();
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["1.0", "1.1"]);
        let old = &index.versions["1.0"];
        assert_eq!(old.created.to_rfc3339(), "2021-02-03T04:05:06+00:00");
        assert_eq!(
            old.assets["demo-1.0.tar.gz"].metadata[UPSTREAM_URL],
            "http://up/x/../../files/demo/1.0/demo-1.0.tar.gz"
        );
        assert_eq!(old.assets["demo-1.0.tar.gz"].digests.size, 10);
        assert_eq!(index.versions["1.1"].status, VersionStatus::Unlisted);
        assert!(upstream_index(b"{}", "demo", "pub", resolve).is_err());
    }
}
