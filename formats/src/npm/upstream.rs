//! Reading an upstream registry's packument into the core's model, so its
//! versions can be listed, filtered by policy and fetched on demand. Pure,
//! no I/O. The upstream's `dist` is kept only as the tarball's address and
//! the digests the fetched bytes must match.

use serde_json::Value;

use super::{NpmError, tarball_filename, validate_version};
use wharf_core::UPSTREAM_URL;
use wharf_core::{AssetRef, PackageIndex, VersionEntry, VersionStatus};
use wharf_storage::BlobDigests;

/// An upstream packument as a package index of versions not stored here:
/// each asset carries the upstream URL and the declared SHA-1/SHA-512, and
/// every version is marked with `connection`. Versions without a tarball
/// URL or any digest to check it against are left out.
pub fn upstream_index(body: &[u8], name: &str, connection: &str) -> Result<PackageIndex, NpmError> {
    let invalid = |reason: &str| NpmError::InvalidDocument(format!("upstream packument of {name}: {reason}"));
    let document: Value = serde_json::from_slice(body).map_err(|e| invalid(&e.to_string()))?;
    let versions = document.get("versions").and_then(Value::as_object).ok_or_else(|| invalid("no versions object"))?;
    let times = document.get("time").and_then(Value::as_object);
    let mut index = PackageIndex { display_name: name.to_owned(), ..Default::default() };
    for (version, manifest) in versions {
        if validate_version(version).is_err() {
            continue;
        }
        let Some(Value::Object(manifest)) = Some(manifest) else { continue };
        let dist = manifest.get("dist");
        let text = |key: &str| dist.and_then(|d| d.get(key)).and_then(Value::as_str);
        let Some(url) = text("tarball") else { continue };
        let sha512 = text("integrity").and_then(sha512_hex).unwrap_or_default();
        let sha1 = text("shasum").filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        if sha512.is_empty() && sha1.is_none() {
            continue;
        }
        let created = times
            .and_then(|t| t.get(version))
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            // Unknown age: treated as old, like the upstream's own clients do.
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let file = tarball_filename(name, version);
        let asset = AssetRef {
            name: file.clone(),
            digests: BlobDigests {
                sha256: String::new(),
                sha512,
                sha1: sha1.unwrap_or_default().to_ascii_lowercase(),
                md5: String::new(),
                size: 0,
            },
            created,
            metadata: serde_json::json!({
                UPSTREAM_URL: url,
                "fileCount": dist.and_then(|d| d.get("fileCount")).cloned(),
                "unpackedSize": dist.and_then(|d| d.get("unpackedSize")).cloned(),
            }),
        };
        let mut metadata = manifest.clone();
        metadata.remove("dist");
        let deprecated = metadata.remove("deprecated").and_then(|d| d.as_str().map(str::to_owned));
        index.versions.insert(
            version.clone(),
            VersionEntry {
                status: VersionStatus::Published,
                created,
                metadata: Value::Object(metadata),
                assets: [(file, asset)].into(),
                deprecated,
                withdrawn: false,
                fetched_from: Some(connection.to_owned()),
                published_by: None,
            },
        );
    }
    if let Some(tags) = document.get("dist-tags").and_then(Value::as_object) {
        for (tag, version) in tags {
            if let Some(version) = version.as_str().filter(|v| index.versions.contains_key(*v)) {
                index.tags.insert(tag.clone(), version.to_owned());
            }
        }
    }
    Ok(index)
}

/// Hex SHA-512 from an SRI `integrity` string, if it has one.
fn sha512_hex(integrity: &str) -> Option<String> {
    use base64::Engine;
    integrity.split_whitespace().find_map(|part| {
        let encoded = part.strip_prefix("sha512-")?;
        base64::engine::general_purpose::STANDARD.decode(encoded).ok().filter(|raw| raw.len() == 64).map(hex::encode)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_digests_times_and_tags() {
        let integrity = super::super::integrity(&"ab".repeat(64));
        let body = serde_json::json!({
            "name": "left-pad",
            "dist-tags": {"latest": "1.1.0", "next": "9.9.9"},
            "versions": {
                "1.0.0": {"name": "left-pad", "version": "1.0.0", "dist": {"tarball": "http://up/left-pad-1.0.0.tgz", "shasum": "a".repeat(40)}},
                "1.1.0": {"name": "left-pad", "version": "1.1.0", "deprecated": "old", "dist": {"tarball": "http://up/left-pad-1.1.0.tgz", "integrity": integrity}},
                "2.0.0": {"name": "left-pad", "version": "2.0.0", "dist": {"tarball": "http://up/x.tgz"}},
                "bad": {"dist": {"tarball": "http://up/bad.tgz", "shasum": "a".repeat(40)}}
            },
            "time": {"1.0.0": "2020-01-01T00:00:00.000Z"}
        });
        let index = upstream_index(body.to_string().as_bytes(), "left-pad", "public").unwrap();
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["1.0.0", "1.1.0"]);
        let old = &index.versions["1.0.0"];
        assert_eq!(old.created.to_rfc3339(), "2020-01-01T00:00:00+00:00");
        assert_eq!(old.fetched_from.as_deref(), Some("public"));
        assert_eq!(old.assets["left-pad-1.0.0.tgz"].metadata[UPSTREAM_URL], "http://up/left-pad-1.0.0.tgz");
        let newer = &index.versions["1.1.0"];
        assert_eq!(newer.assets["left-pad-1.1.0.tgz"].digests.sha512, "ab".repeat(64));
        assert_eq!(newer.deprecated.as_deref(), Some("old"));
        assert!(newer.metadata.get("dist").is_none());
        // A tag naming a version left out is dropped.
        assert_eq!(index.tags.len(), 1);
        assert!(upstream_index(b"[]", "left-pad", "public").is_err());
        assert!(upstream_index(b"{\"versions\":", "left-pad", "public").is_err());
    }
}
