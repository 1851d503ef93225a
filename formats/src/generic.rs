//! Generic files: namespaces, package names, versions and asset names of
//! `/generic/{repo}/{namespace}/{package}/{version}/{asset}`, and the
//! listings. Pure, no I/O.

use serde_json::{Value, json};

use wharf_core::{PackageIndex, VersionEntry};

/// Header carrying the SHA-256 (hex) the uploader computed.
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";
const MAX_PART: usize = 255;
/// Longest `{namespace}/{package}`, counted as stored: the core keeps it as
/// one name, percent-encoded (the `/` takes three bytes), also as
/// `{name}.json`, within a file name's 255 bytes less the suffix a local
/// folder adds while writing (`storage::keys::MAX_NAME_BYTES`).
pub const MAX_PACKAGE_BYTES: usize = 242;
/// Longest asset name, counted as stored: also `{asset}.json`, and a `~`
/// is percent-encoded into three bytes.
pub const MAX_ASSET_BYTES: usize = 242;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenericError {
    #[error("invalid {what} {value:?}: use 1–255 letters, digits and {allowed}, not starting with a dot")]
    InvalidPart { what: &'static str, value: String, allowed: &'static str },
    #[error(
        "namespace and package name are too long: {namespace_length} + {package_length} characters; together \
         they may have at most {} (namespace/package takes {MAX_PACKAGE_BYTES} bytes at most as stored)",
        MAX_PACKAGE_BYTES - 3
    )]
    PackageTooLong { namespace_length: usize, package_length: usize },
    #[error(
        "the asset name is too long: it takes {bytes} bytes as stored (a ~ counts three), at most {MAX_ASSET_BYTES}"
    )]
    AssetTooLong { bytes: usize },
    #[error("the {CHECKSUM_HEADER} header must be 64 hex digits")]
    InvalidChecksum,
}

fn check(what: &'static str, value: &str, extra: &'static [u8], allowed: &'static str) -> Result<(), GenericError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_PART
        && !value.starts_with('.')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok { Ok(()) } else { Err(GenericError::InvalidPart { what, value: value.to_owned(), allowed }) }
}

pub fn validate_namespace(namespace: &str) -> Result<(), GenericError> {
    check("namespace", namespace, b"._-", ". _ -")
}

pub fn validate_package(package: &str) -> Result<(), GenericError> {
    check("package name", package, b"._-", ". _ -")
}

/// Checks that a valid namespace and package name fit in storage together.
pub fn validate_package_length(namespace: &str, package: &str) -> Result<(), GenericError> {
    // Both are ASCII without `~`: only the `/` between them is encoded.
    if namespace.len() + 3 + package.len() > MAX_PACKAGE_BYTES {
        return Err(GenericError::PackageTooLong { namespace_length: namespace.len(), package_length: package.len() });
    }
    Ok(())
}

pub fn validate_version(version: &str) -> Result<(), GenericError> {
    check("version", version, b"._-+", ". _ - +")
}

pub fn validate_asset(asset: &str) -> Result<(), GenericError> {
    check("asset name", asset, b"._-+~@=,", ". _ - + ~ @ = ,")?;
    let bytes = asset.len() + 2 * asset.bytes().filter(|&b| b == b'~').count();
    if bytes > MAX_ASSET_BYTES {
        return Err(GenericError::AssetTooLong { bytes });
    }
    Ok(())
}

/// The core's name of a generic package.
pub fn package_name(namespace: &str, package: &str) -> String {
    format!("{namespace}/{package}")
}

/// A lowercase hex SHA-256 from the checksum header.
pub fn parse_checksum(value: &str) -> Result<String, GenericError> {
    let value = value.trim();
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(GenericError::InvalidChecksum)
    }
}

pub fn version_document(namespace: &str, package: &str, version: &str, entry: &VersionEntry) -> Value {
    let assets: Vec<Value> = entry
        .assets
        .values()
        .map(|a| json!({"name": a.name, "size": a.digests.size, "sha256": a.digests.sha256, "created": a.created}))
        .collect();
    json!({
        "namespace": namespace,
        "package": package,
        "version": version,
        "status": entry.status.as_str(),
        "created": entry.created,
        "assets": assets,
    })
}

pub fn package_document(namespace: &str, package: &str, index: &PackageIndex) -> Value {
    let versions: Vec<Value> = index
        .versions
        .iter()
        .map(|(version, entry)| {
            json!({"version": version, "status": entry.status.as_str(), "created": entry.created, "assets": entry.assets.len()})
        })
        .collect();
    json!({"namespace": namespace, "package": package, "versions": versions})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        validate_namespace("acme").unwrap();
        validate_package("build-tools_2").unwrap();
        validate_version("1.0.0+build.5").unwrap();
        validate_asset("tool-linux-amd64.tar.gz").unwrap();
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "a b", "a\0", &"x".repeat(256)] {
            assert!(validate_asset(bad).is_err(), "{bad:?}");
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
        assert!(validate_version("1.0@x").is_err());
    }

    #[test]
    fn lengths_fit_in_storage_once_encoded() {
        validate_asset(&"a".repeat(242)).unwrap();
        let error = validate_asset(&"a".repeat(251)).unwrap_err().to_string();
        assert!(error.contains("251 bytes") && error.contains("at most 242"), "{error}");
        assert!(validate_asset(&"~".repeat(81)).is_err(), "a ~ counts three");
        validate_package_length("acme", &"p".repeat(235)).unwrap();
        let error = validate_package_length("acme", &"p".repeat(236)).unwrap_err().to_string();
        assert!(error.contains("at most 239"), "{error}");
    }

    #[test]
    fn checksums() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_checksum(&hex).unwrap(), "ab".repeat(32));
        assert!(parse_checksum("abc").is_err());
        assert!(parse_checksum(&"zz".repeat(32)).is_err());
    }
}
