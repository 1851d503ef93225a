//! Reading an upstream sparse index into the core's model: its
//! `config.json` (where crates download from) and a crate's index file,
//! whose lines become versions not stored here. Pure, no I/O.

use serde_json::{Map, Value};

use super::{CargoError, crate_filename, validate_name, validate_version, version_key};
use wharf_core::UPSTREAM_URL;
use wharf_core::{AssetRef, PackageIndex, VersionEntry, VersionStatus};
use wharf_storage::BlobDigests;

/// The `dl` template of an upstream's `config.json`.
pub fn download_template(config: &[u8]) -> Result<String, CargoError> {
    let invalid = |reason: &str| CargoError::InvalidMetadata(format!("upstream config.json: {reason}"));
    let config: Value = serde_json::from_slice(config).map_err(|e| invalid(&e.to_string()))?;
    config.get("dl").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| invalid("no dl string"))
}

/// A crate's download URL from the `dl` template, with cargo's markers, or
/// `/{crate}/{version}/download` appended when it has none.
pub fn download_url(template: &str, name: &str, version: &str, sha256: &str) -> String {
    const MARKERS: [&str; 5] = ["{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}"];
    if !MARKERS.iter().any(|marker| template.contains(marker)) {
        return format!("{}/{name}/{version}/download", template.trim_end_matches('/'));
    }
    // The index folders, in the crate name's own case ({lowerprefix} lowers them).
    let part = |range: std::ops::Range<usize>| name.get(range).unwrap_or_default();
    let prefix = match name.len() {
        1 => "1".to_owned(),
        2 => "2".to_owned(),
        3 => format!("3/{}", part(0..1)),
        _ => format!("{}/{}", part(0..2), part(2..4)),
    };
    let prefix = prefix.as_str();
    template
        .replace("{crate}", name)
        .replace("{version}", version)
        .replace("{lowerprefix}", &prefix.to_ascii_lowercase())
        .replace("{prefix}", prefix)
        .replace("{sha256-checksum}", sha256)
}

/// An upstream index file as a package index of versions not stored here:
/// each version keeps its index line (less `cksum` and `yanked`) as
/// metadata, and its `.crate` asset the upstream URL and the declared
/// SHA-256. Lines for another crate, with a bad version or checksum, are
/// left out.
pub fn upstream_index(body: &[u8], name: &str, connection: &str, template: &str) -> Result<PackageIndex, CargoError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| CargoError::InvalidMetadata(format!("upstream index file of {name} is not UTF-8")))?;
    let mut index = PackageIndex { display_name: name.to_owned(), ..Default::default() };
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(Value::Object(mut line)) = serde_json::from_str::<Value>(line) else { continue };
        let text = |line: &Map<String, Value>, key: &str| line.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(line_name), Some(vers), Some(cksum)) =
            (text(&line, "name"), text(&line, "vers"), text(&line, "cksum"))
        else {
            continue;
        };
        if validate_name(&line_name).is_err() || !line_name.eq_ignore_ascii_case(name) {
            continue;
        }
        let Ok(version) = validate_version(&vers) else { continue };
        if cksum.len() != 64 || !cksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let created = text(&line, "pubtime")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            // Index lines without `pubtime` have no date: treated as old.
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let yanked = line.get("yanked").and_then(Value::as_bool).unwrap_or(false);
        line.remove("cksum");
        line.remove("yanked");
        line.remove("v");
        let file = crate_filename(&line_name, &vers);
        let asset = AssetRef {
            name: file.clone(),
            digests: BlobDigests {
                sha256: cksum.to_ascii_lowercase(),
                sha512: String::new(),
                sha1: String::new(),
                md5: String::new(),
                size: 0,
            },
            created,
            metadata: serde_json::json!({UPSTREAM_URL: download_url(template, &line_name, &vers, &cksum)}),
        };
        index.display_name = line_name;
        index.versions.insert(
            version_key(&version),
            VersionEntry {
                status: if yanked { VersionStatus::Unlisted } else { VersionStatus::Published },
                created,
                metadata: Value::Object(line),
                assets: [(file, asset)].into(),
                deprecated: None,
                withdrawn: false,
                fetched_from: Some(connection.to_owned()),
                published_by: None,
            },
        );
    }
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn download_urls_follow_cargo_markers() {
        assert_eq!(
            download_url("http://up/api/v1/crates/", "serde", "1.0.0", "ab"),
            "http://up/api/v1/crates/serde/1.0.0/download"
        );
        assert_eq!(
            download_url(
                "http://up/{prefix}/{crate}/{crate}-{version}.crate?c={sha256-checksum}",
                "Serde",
                "1.0.0",
                "ab"
            ),
            "http://up/Se/rd/Serde/Serde-1.0.0.crate?c=ab"
        );
        assert_eq!(download_url("http://up/{lowerprefix}/{crate}", "Serde", "1.0.0", "ab"), "http://up/se/rd/Serde");
        assert_eq!(download_template(br#"{"dl":"http://up/dl","api":"http://up"}"#).unwrap(), "http://up/dl");
        assert!(download_template(b"{}").is_err());
    }

    #[test]
    fn index_lines_become_unstored_versions() {
        let sum = "d".repeat(64);
        let body = format!(
            "{}\n{}\n{}\n{}\n\nnot json\n",
            serde_json::json!({"name": "demo", "vers": "1.0.0", "deps": [], "cksum": sum, "features": {}, "yanked": false, "pubtime": "2024-01-02T03:04:05Z"}),
            serde_json::json!({"name": "demo", "vers": "1.1.0", "deps": [], "cksum": sum, "features": {}, "yanked": true}),
            serde_json::json!({"name": "other", "vers": "2.0.0", "deps": [], "cksum": sum, "features": {}, "yanked": false}),
            serde_json::json!({"name": "demo", "vers": "x", "deps": [], "cksum": sum, "features": {}, "yanked": false}),
        );
        let index = upstream_index(body.as_bytes(), "demo", "public-crates", "http://up/dl").unwrap();
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["1.0.0", "1.1.0"]);
        let first = &index.versions["1.0.0"];
        assert_eq!(first.created.to_rfc3339(), "2024-01-02T03:04:05+00:00");
        assert_eq!(first.assets["demo-1.0.0.crate"].digests.sha256, sum);
        assert_eq!(first.assets["demo-1.0.0.crate"].metadata[UPSTREAM_URL], "http://up/dl/demo/1.0.0/download");
        assert!(first.metadata.get("cksum").is_none());
        assert_eq!(index.versions["1.1.0"].status, VersionStatus::Unlisted);
        // Rendered back, the lines carry the checksum and yanked flag again.
        let rendered = String::from_utf8(super::super::render_index_file(&index).to_vec()).unwrap();
        assert!(
            rendered.contains(&format!("\"cksum\":\"{sum}\"")) && rendered.contains("\"yanked\":true"),
            "{rendered}"
        );
        assert!(upstream_index(&[0xff], "demo", "c", "t").is_err());
    }
}
