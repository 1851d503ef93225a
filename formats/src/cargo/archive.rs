//! Checks a `.crate` before it is published: a gzip tar whose entries are
//! all plain files or folders under `{name}-{version}/`, with a
//! `{name}-{version}/Cargo.toml` naming the same crate and version as the
//! publish metadata, within size limits. Pure, no I/O: the archive is read
//! from any `Read` the caller provides.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path};

use serde::Deserialize;

/// Limits on what a `.crate` may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveLimits {
    /// Total bytes of all files once unpacked, and most the decompressed
    /// tar stream (headers and every entry type included) may amount to
    /// (decompression bombs).
    pub max_unpacked: u64,
    pub max_entries: u64,
    /// Largest `Cargo.toml` read into memory.
    pub max_manifest: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits { max_unpacked: 1024 * 1024 * 1024, max_entries: 100_000, max_manifest: 4 * 1024 * 1024 }
    }
}

/// Most bytes accepted after the tar's end-of-archive marker (tar pads its
/// last record; anything beyond that is not part of a `.crate`).
const MAX_TRAILING_PADDING: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid .crate: {0}")]
pub struct ArchiveError(String);

/// What the archive holds.
#[derive(Debug, PartialEq, Eq)]
pub struct CrateInfo {
    pub file_count: u64,
    pub unpacked_size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    package: Option<ManifestPackage>,
}

#[derive(Deserialize)]
struct ManifestPackage {
    name: Option<String>,
    version: Option<toml::Value>,
}

/// Reads the whole archive through and checks it against the crate `name`
/// and `version` (as spelled in the publish metadata).
pub fn inspect_crate(
    reader: impl Read,
    name: &str,
    version: &str,
    limits: ArchiveLimits,
) -> Result<CrateInfo, ArchiveError> {
    let invalid = |m: String| ArchiveError(m);
    let folder = format!("{name}-{version}");
    // The tar stream may add headers to the files' bytes, and trailing
    // padding after them; neither may take it past this.
    let ceiling = limits.max_unpacked.saturating_add(MAX_TRAILING_PADDING);
    let (inflated, inflation) = crate::inflate::limit(flate2::read::GzDecoder::new(reader), ceiling);
    let broken = |what: String, e: std::io::Error| invalid(inflation.reason(&what, &e, limits.max_unpacked));
    let mut archive = tar::Archive::new(inflated);
    let mut seen = HashSet::new();
    let mut manifest: Option<Manifest> = None;
    let (mut entry_count, mut file_count, mut unpacked_size) = (0u64, 0u64, 0u64);
    let entries = archive.entries().map_err(|e| broken("not a gzip tar archive".into(), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken("not a gzip tar archive".into(), e))?;
        entry_count += 1;
        if entry_count > limits.max_entries {
            return Err(invalid(format!("it has more than {} entries", limits.max_entries)));
        }
        let path = entry.path().map_err(|e| invalid(format!("an entry has a bad path: {e}")))?.into_owned();
        let display = path.display().to_string();
        let mut components = path.components();
        let inside = components.next().is_some_and(|c| c == Component::Normal(folder.as_ref()))
            && components.all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(invalid(format!("entry {display} is outside the folder {folder}/")));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(invalid(format!("entry {display} is not a plain file or folder (links are not allowed)")));
        }
        if !seen.insert(path.clone()) {
            return Err(invalid(format!("entry {display} appears twice")));
        }
        file_count += 1;
        unpacked_size = unpacked_size.saturating_add(entry.size());
        if unpacked_size > limits.max_unpacked {
            return Err(invalid(format!("it unpacks to more than {} bytes", limits.max_unpacked)));
        }
        if path == Path::new(&folder).join("Cargo.toml") {
            if entry.size() > limits.max_manifest {
                return Err(invalid(format!("{display} is larger than {} bytes", limits.max_manifest)));
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| broken(format!("{display} is not UTF-8 text"), e))?;
            manifest = Some(
                toml::from_str(&text).map_err(|e| invalid(format!("{display} is not valid TOML: {}", e.message())))?,
            );
        } else {
            // Read through so a corrupt stream is caught here, not by the
            // first user who downloads it.
            std::io::copy(&mut entry, &mut std::io::sink())
                .map_err(|e| broken(format!("entry {display} is corrupt"), e))?;
        }
    }
    let mut rest = archive.into_inner().take(MAX_TRAILING_PADDING + 1);
    let trailing =
        std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| broken("the gzip stream is corrupt".into(), e))?;
    if trailing > MAX_TRAILING_PADDING {
        return Err(invalid("it goes on after the end of the tar archive".into()));
    }
    let manifest = manifest.ok_or_else(|| invalid(format!("it has no {folder}/Cargo.toml")))?;
    let package = manifest.package.ok_or_else(|| invalid(format!("{folder}/Cargo.toml has no [package]")))?;
    match package.name.as_deref() {
        Some(found) if found == name => {}
        found => {
            return Err(invalid(format!(
                "{folder}/Cargo.toml names the crate {found:?}, but the publish is for {name:?}"
            )));
        }
    }
    let declared = package.version.as_ref().and_then(toml::Value::as_str);
    let same_version = declared
        .and_then(|v| semver::Version::parse(v).ok())
        .is_some_and(|v| semver::Version::parse(version).is_ok_and(|expected| expected == v));
    if !same_version {
        return Err(invalid(format!(
            "{folder}/Cargo.toml has version {declared:?}, but the publish is for version {version:?}"
        )));
    }
    Ok(CrateInfo { file_count, unpacked_size })
}

/// Builds a `.crate` from `(path, bytes)` entries, for tests.
#[cfg(any(test, feature = "testing"))]
pub fn build_crate(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the name into the header so
        // tests can build hostile archives.
        let name = header.as_gnu_mut().map(|gnu| &mut gnu.name);
        if let Some(field) = name {
            field[..path.len()].copy_from_slice(path.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap_or_else(|e| panic!("failed to append {path}: {e}"));
    }
    builder.into_inner().and_then(|gz| gz.finish()).unwrap_or_else(|e| panic!("failed to finish the archive: {e}"))
}

/// A `Cargo.toml` as cargo normalises it for a package.
#[cfg(any(test, feature = "testing"))]
pub fn manifest(name: &str, version: &str) -> String {
    format!(
        "[package]\nedition = \"2021\"\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"\"\"\n[package]\nname = \"other\"\n\"\"\"\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(archive: &[u8]) -> Result<CrateInfo, ArchiveError> {
        inspect_crate(
            archive,
            "demo",
            "1.0.0",
            ArchiveLimits { max_unpacked: 4096, max_entries: 10, max_manifest: 1024 },
        )
    }

    #[test]
    fn a_good_crate() {
        let toml = manifest("demo", "1.0.0");
        let good = build_crate(&[("demo-1.0.0/Cargo.toml", toml.as_bytes()), ("demo-1.0.0/src/lib.rs", b"")]);
        assert_eq!(check(&good).unwrap(), CrateInfo { file_count: 2, unpacked_size: toml.len() as u64 });
    }

    #[test]
    fn bad_crates() {
        let toml = manifest("demo", "1.0.0");
        let toml = toml.as_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not gzip".to_vec(), "not a gzip tar archive"),
            (build_crate(&[("demo-1.0.0/src/lib.rs", b"")]), "no demo-1.0.0/Cargo.toml"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", toml), ("other-1.0.0/x", b"")]), "outside the folder"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", toml), ("demo-1.0.0/../x", b"")]), "outside the folder"),
            (build_crate(&[("/etc/passwd", b"")]), "outside the folder"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", toml), ("demo-1.0.0/Cargo.toml", toml)]), "appears twice"),
            (
                build_crate(&[("demo-1.0.0/Cargo.toml", manifest("other", "1.0.0").as_bytes())]),
                "names the crate Some(\"other\")",
            ),
            (build_crate(&[("demo-1.0.0/Cargo.toml", manifest("demo", "1.0.1").as_bytes())]), "has version"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", b"[package\nname=")]), "not valid TOML"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", b"[lib]\n")]), "has no [package]"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", toml), ("demo-1.0.0/big", &[0u8; 5000])]), "unpacks to more"),
            (build_crate(&[("demo-1.0.0/Cargo.toml", &[b' '; 2000])]), "larger than 1024 bytes"),
        ];
        for (archive, message) in cases {
            let err = check(&archive).unwrap_err().to_string();
            assert!(err.contains(message), "{message}: {err}");
        }
        let many: Vec<(String, Vec<u8>)> = (0..11).map(|i| (format!("demo-1.0.0/f{i}"), Vec::new())).collect();
        let many: Vec<(&str, &[u8])> = many.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
        assert!(check(&build_crate(&many)).unwrap_err().to_string().contains("more than 10 entries"));
        let good = build_crate(&[("demo-1.0.0/Cargo.toml", toml)]);
        assert!(check(&good[..good.len() - 10]).is_err(), "a truncated gzip stream is refused");
    }

    #[test]
    fn a_huge_directory_entry_is_refused_once_the_inflated_stream_passes_the_limit() {
        let toml = manifest("demo", "1.0.0");
        let bomb = crate::inflate::gzip_tar_with_huge_directory(
            "demo-1.0.0/huge/",
            64 << 20,
            &[("demo-1.0.0/Cargo.toml", toml.as_bytes())],
        );
        let limits = ArchiveLimits { max_unpacked: 1 << 20, max_entries: 10, max_manifest: 1024 };
        let error = inspect_crate(&bomb[..], "demo", "1.0.0", limits).unwrap_err().to_string();
        assert!(error.contains("unpacks to more than 1048576 bytes"), "{error}");
    }

    #[test]
    fn links_are_refused() {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "demo-1.0.0/evil", "/etc/passwd").unwrap();
        let archive = builder.into_inner().unwrap().finish().unwrap();
        assert!(check(&archive).unwrap_err().to_string().contains("links are not allowed"));
    }
}
