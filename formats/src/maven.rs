//! Maven: coordinates, the repository layout (which file a path names),
//! timestamped SNAPSHOT builds, Maven's version order, checksum sidecars,
//! and the `maven-metadata.xml` documents rendered from a package index.
//! Pure, no I/O.
//!
//! Layout and metadata: <https://maven.apache.org/repositories/layout.html>,
//! <https://maven.apache.org/ref/current/maven-repository-metadata/repository-metadata.html>.
//!
//! In the core, a package is `groupId:artifactId` (case kept: Maven
//! coordinates are case-sensitive). A release is one core version (`1.0`);
//! each timestamped build of a SNAPSHOT is its own core version
//! (`1.1-20261126.120000-1`), grouped under its base (`1.1-SNAPSHOT`) by
//! [`snapshot_series`].

use crate::markup::escape;
use std::cmp::Ordering;
use std::fmt::Write as _;

use bytes::Bytes;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use wharf_core::{PackageIndex, VersionEntry};
use wharf_storage::BlobDigests;

/// The file every metadata level is named.
pub const METADATA_FILE: &str = "maven-metadata.xml";
const SNAPSHOT_SUFFIX: &str = "-SNAPSHOT";
const MAX_GROUP_ID: usize = 200;
const MAX_ARTIFACT_ID: usize = 100;
const MAX_VERSION: usize = 100;
const MAX_CLASSIFIER: usize = 100;
const MAX_EXTENSION: usize = 32;
const MAX_FILE_NAME: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MavenError {
    #[error(
        "invalid groupId {0:?}: use dot-separated parts of letters, digits, _ and -, at most {MAX_GROUP_ID} characters"
    )]
    InvalidGroupId(String),
    #[error(
        "invalid artifactId {0:?}: use letters, digits, _ - and . (not first, never two in a row), at most {MAX_ARTIFACT_ID} characters"
    )]
    InvalidArtifactId(String),
    #[error(
        "invalid version {0:?}: use letters, digits and _ . + - starting with a letter or digit (no ..), at most {MAX_VERSION} characters"
    )]
    InvalidVersion(String),
    #[error("invalid package name {0:?}: a Maven package is groupId:artifactId")]
    InvalidPackageName(String),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("file name {file:?} does not match its coordinates: {reason}")]
    FileNameMismatch { file: String, reason: String },
    #[error("invalid maven-metadata.xml: {0}")]
    InvalidMetadata(&'static str),
}

/// A checksum sidecar's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 4] =
        [ChecksumAlgorithm::Md5, ChecksumAlgorithm::Sha1, ChecksumAlgorithm::Sha256, ChecksumAlgorithm::Sha512];

    /// The sidecar's file extension (`lib-1.0.jar.sha1`).
    pub fn extension(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Md5 => 32,
            ChecksumAlgorithm::Sha1 => 40,
            ChecksumAlgorithm::Sha256 => 64,
            ChecksumAlgorithm::Sha512 => 128,
        }
    }

    /// The digest storage computed when the file streamed in.
    pub fn stored(self, digests: &BlobDigests) -> &str {
        match self {
            ChecksumAlgorithm::Md5 => &digests.md5,
            ChecksumAlgorithm::Sha1 => &digests.sha1,
            ChecksumAlgorithm::Sha256 => &digests.sha256,
            ChecksumAlgorithm::Sha512 => &digests.sha512,
        }
    }

    /// Hex digest of bytes rendered here (metadata documents).
    pub fn compute(self, bytes: &[u8]) -> String {
        match self {
            ChecksumAlgorithm::Md5 => hex::encode(Md5::digest(bytes)),
            ChecksumAlgorithm::Sha1 => hex::encode(Sha1::digest(bytes)),
            ChecksumAlgorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            ChecksumAlgorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        }
    }

    /// Reads an uploaded sidecar: the first whitespace-separated token, as
    /// hex of this algorithm's length (some tools append `  file-name`).
    pub fn parse_sidecar(self, body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?;
        let token = text.split_whitespace().next()?;
        (token.len() == self.hex_len() && token.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| token.to_ascii_lowercase())
    }

    fn from_extension(extension: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.extension() == extension)
    }
}

/// A `groupId:artifactId` pair: one package in the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinates {
    pub group_id: String,
    pub artifact_id: String,
}

impl Coordinates {
    pub fn new(group_id: &str, artifact_id: &str) -> Result<Self, MavenError> {
        validate_group_id(group_id)?;
        validate_artifact_id(artifact_id)?;
        Ok(Coordinates { group_id: group_id.to_owned(), artifact_id: artifact_id.to_owned() })
    }

    /// The package's name in the core: `com.acme:lib`.
    pub fn package_name(&self) -> String {
        format!("{}:{}", self.group_id, self.artifact_id)
    }
}

/// Parses a core package name (`com.acme:lib`), as the management API
/// receives it.
pub fn parse_package_name(name: &str) -> Result<Coordinates, MavenError> {
    let (group_id, artifact_id) =
        name.split_once(':').ok_or_else(|| MavenError::InvalidPackageName(name.to_owned()))?;
    Coordinates::new(group_id, artifact_id)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

pub fn validate_group_id(group_id: &str) -> Result<(), MavenError> {
    let ok = !group_id.is_empty()
        && group_id.len() <= MAX_GROUP_ID
        && group_id.split('.').all(|part| !part.is_empty() && part.bytes().all(is_name_byte));
    if ok { Ok(()) } else { Err(MavenError::InvalidGroupId(group_id.to_owned())) }
}

pub fn validate_artifact_id(artifact_id: &str) -> Result<(), MavenError> {
    let ok = !artifact_id.is_empty()
        && artifact_id.len() <= MAX_ARTIFACT_ID
        && !artifact_id.starts_with('.')
        && !artifact_id.contains("..")
        && artifact_id.bytes().all(|b| is_name_byte(b) || b == b'.');
    if ok { Ok(()) } else { Err(MavenError::InvalidArtifactId(artifact_id.to_owned())) }
}

pub fn validate_version(version: &str) -> Result<(), MavenError> {
    let ok = version.len() <= MAX_VERSION
        && version.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && !version.contains("..")
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok { Ok(()) } else { Err(MavenError::InvalidVersion(version.to_owned())) }
}

/// Whether a version names a SNAPSHOT (`1.1-SNAPSHOT`).
pub fn is_snapshot(version: &str) -> bool {
    version.ends_with(SNAPSHOT_SUFFIX)
}

/// One timestamped build of a SNAPSHOT: `1.1-20261126.120000-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBuild {
    /// The version without `-SNAPSHOT` (`1.1`).
    pub base: String,
    /// UTC, `yyyyMMdd.HHmmss`.
    pub timestamp: String,
    pub build_number: u32,
}

impl SnapshotBuild {
    /// The timestamped version: the core version of this build.
    pub fn version(&self) -> String {
        format!("{}-{}-{}", self.base, self.timestamp, self.build_number)
    }

    /// The SNAPSHOT version this build belongs to (`1.1-SNAPSHOT`).
    pub fn base_version(&self) -> String {
        format!("{}{SNAPSHOT_SUFFIX}", self.base)
    }

    /// `yyyyMMddHHmmss`, the form of metadata's `updated` fields.
    fn updated(&self) -> String {
        self.timestamp.replace('.', "")
    }
}

/// Parses a timestamped version (`1.1-20261126.120000-3`).
pub fn parse_snapshot_build(version: &str) -> Option<SnapshotBuild> {
    let (rest, build_number) = version.rsplit_once('-')?;
    let (base, timestamp) = rest.rsplit_once('-')?;
    let build_number = parse_build_number(build_number)?;
    (!base.is_empty() && is_timestamp(timestamp)).then(|| SnapshotBuild {
        base: base.to_owned(),
        timestamp: timestamp.to_owned(),
        build_number,
    })
}

fn parse_build_number(text: &str) -> Option<u32> {
    let ok = !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    ok.then(|| text.parse().ok()).flatten()
}

/// `yyyyMMdd.HHmmss` with a plausible month, day and time of day.
fn is_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 15 || bytes[8] != b'.' {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let fields = (digits(0..4), digits(4..6), digits(6..8), digits(9..11), digits(11..13), digits(13..15));
    matches!(fields, (Some(_), Some(1..=12), Some(1..=31), Some(0..=23), Some(0..=59), Some(0..=60)))
}

/// The series a core version belongs to, for [`wharf_core::Registry::finish_version`]:
/// the builds of one SNAPSHOT form a series, ranked by timestamp then
/// build number; the newest stays listed. Releases are in no series.
pub fn snapshot_series(version: &str) -> Option<(String, (String, u32))> {
    let build = parse_snapshot_build(version)?;
    Some((build.base_version(), (build.timestamp.clone(), build.build_number)))
}

/// Which build of a SNAPSHOT a file name names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileVersion {
    Release(String),
    SnapshotBuild(SnapshotBuild),
    /// `lib-1.1-SNAPSHOT.jar`: the newest build (served, never stored).
    LatestSnapshot {
        base_version: String,
    },
}

/// An artifact file the layout names (not metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactFile {
    pub coordinates: Coordinates,
    pub version: FileVersion,
    pub classifier: Option<String>,
    pub extension: String,
    pub file_name: String,
}

impl ArtifactFile {
    /// The same file in another build (`version` as it appears in file
    /// names: a release or a timestamped version).
    pub fn file_name_in(&self, version: &str) -> String {
        let classifier = self.classifier.as_ref().map(|c| format!("-{c}")).unwrap_or_default();
        format!("{}-{version}{classifier}.{}", self.coordinates.artifact_id, self.extension)
    }
}

/// Which metadata document a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataLevel {
    /// `{group}/{artifact}/maven-metadata.xml`: the versions.
    Artifact,
    /// `{group}/{artifact}/{base}-SNAPSHOT/maven-metadata.xml`: the builds.
    Snapshot { base_version: String },
}

/// What a path under `/maven/{repo}/` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepositoryPath {
    File { file: ArtifactFile, checksum: Option<ChecksumAlgorithm> },
    Metadata { coordinates: Coordinates, level: MetadataLevel, checksum: Option<ChecksumAlgorithm> },
}

/// Parses a repository-relative path (already percent-decoded) by the
/// Maven 2 layout. Every coordinate is validated and the file name must
/// match the directories it sits in.
pub fn parse_path(path: &str) -> Result<RepositoryPath, MavenError> {
    let invalid = |reason: &str| MavenError::InvalidPath { path: path.to_owned(), reason: reason.to_owned() };
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(invalid("it has an empty segment or ends in / (folders are not listed)"));
    }
    let Some((file_name, dirs)) = segments.split_last() else {
        return Err(invalid("it names no file"));
    };
    if file_name.len() > MAX_FILE_NAME {
        return Err(invalid("the file name is longer than 255 characters"));
    }
    let (target, checksum) = match file_name.rsplit_once('.') {
        Some((target, extension)) => match ChecksumAlgorithm::from_extension(extension) {
            Some(algorithm) => (target, Some(algorithm)),
            None => (*file_name, None),
        },
        None => (*file_name, None),
    };
    if checksum.is_some()
        && target.rsplit_once('.').is_some_and(|(_, ext)| ChecksumAlgorithm::from_extension(ext).is_some())
    {
        return Err(invalid("checksums of checksum files are not served"));
    }

    if target == METADATA_FILE {
        let snapshot_dir = dirs.len() >= 3 && dirs.last().is_some_and(|d| is_snapshot(d));
        let (group, artifact, level) = if snapshot_dir {
            let n = dirs.len();
            validate_version(dirs[n - 1])?;
            (&dirs[..n - 2], dirs[n - 2], MetadataLevel::Snapshot { base_version: dirs[n - 1].to_owned() })
        } else if dirs.len() >= 2 {
            let n = dirs.len();
            (&dirs[..n - 1], dirs[n - 1], MetadataLevel::Artifact)
        } else {
            return Err(invalid("metadata sits under {group}/{artifactId}/"));
        };
        let coordinates = Coordinates::new(&group.join("."), artifact)?;
        return Ok(RepositoryPath::Metadata { coordinates, level, checksum });
    }

    if dirs.len() < 3 {
        return Err(invalid("an artifact file sits under {group}/{artifactId}/{version}/"));
    }
    let n = dirs.len();
    let coordinates = Coordinates::new(&dirs[..n - 2].join("."), dirs[n - 2])?;
    let directory_version = dirs[n - 1];
    validate_version(directory_version)?;
    let file = parse_file_name(coordinates, directory_version, target)?;
    Ok(RepositoryPath::File { file, checksum })
}

/// Splits `{artifactId}-{version}[-{classifier}].{extension}` against the
/// directory's coordinates.
fn parse_file_name(
    coordinates: Coordinates,
    directory_version: &str,
    file_name: &str,
) -> Result<ArtifactFile, MavenError> {
    let mismatch = |reason: String| MavenError::FileNameMismatch { file: file_name.to_owned(), reason };
    let rest = file_name
        .strip_prefix(coordinates.artifact_id.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .ok_or_else(|| mismatch(format!("it must start with {}-", coordinates.artifact_id)))?;
    let (version, tail) = match directory_version.strip_suffix(SNAPSHOT_SUFFIX) {
        Some(base) => {
            let after_base = rest.strip_prefix(base).and_then(|r| r.strip_prefix('-')).ok_or_else(|| {
                mismatch(format!("a build of {directory_version} is named {}-{base}-…", coordinates.artifact_id))
            })?;
            if let Some(tail) = after_base.strip_prefix("SNAPSHOT") {
                (FileVersion::LatestSnapshot { base_version: directory_version.to_owned() }, tail)
            } else {
                let timestamp = after_base.get(..15).filter(|t| is_timestamp(t));
                let numbered = after_base.get(15..).and_then(|r| r.strip_prefix('-'));
                let (Some(timestamp), Some(numbered)) = (timestamp, numbered) else {
                    return Err(mismatch(format!(
                        "a SNAPSHOT file is {}-{base}-yyyyMMdd.HHmmss-N[-classifier].ext",
                        coordinates.artifact_id
                    )));
                };
                let end = numbered.find(['-', '.']).unwrap_or(numbered.len());
                let build_number = parse_build_number(&numbered[..end])
                    .ok_or_else(|| mismatch("the build number must be a positive integer".into()))?;
                let build = SnapshotBuild { base: base.to_owned(), timestamp: timestamp.to_owned(), build_number };
                (FileVersion::SnapshotBuild(build), &numbered[end..])
            }
        }
        None => {
            if parse_snapshot_build(directory_version).is_some() {
                return Err(MavenError::InvalidPath {
                    path: format!("{directory_version}/{file_name}"),
                    reason: "a timestamped version is a SNAPSHOT build; it belongs in its -SNAPSHOT folder".into(),
                });
            }
            let tail = rest
                .strip_prefix(directory_version)
                .ok_or_else(|| mismatch(format!("it must name version {directory_version}")))?;
            (FileVersion::Release(directory_version.to_owned()), tail)
        }
    };
    let (classifier, extension) = if let Some(after) = tail.strip_prefix('-') {
        let (classifier, extension) =
            after.split_once('.').ok_or_else(|| mismatch("it has no extension after the classifier".into()))?;
        (Some(classifier), extension)
    } else if let Some(extension) = tail.strip_prefix('.') {
        (None, extension)
    } else {
        return Err(mismatch(format!("after the version it must have [-classifier].extension, not {tail:?}")));
    };
    let classifier_ok = |c: &str| !c.is_empty() && c.len() <= MAX_CLASSIFIER && c.bytes().all(is_name_byte);
    if let Some(classifier) = classifier
        && !classifier_ok(classifier)
    {
        return Err(mismatch(format!("classifier {classifier:?} must be letters, digits, _ and -")));
    }
    let extension_ok = extension.len() <= MAX_EXTENSION
        && extension.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !extension_ok {
        return Err(mismatch(format!("extension {extension:?} must be dot-separated letters and digits")));
    }
    Ok(ArtifactFile {
        coordinates,
        version,
        classifier: classifier.map(str::to_owned),
        extension: extension.to_owned(),
        file_name: file_name.to_owned(),
    })
}

/// The `Content-Type` of a file by its extension.
pub fn content_type(extension: &str) -> &'static str {
    match extension.rsplit('.').next().unwrap_or(extension) {
        "jar" | "war" | "ear" | "rar" | "aar" => "application/java-archive",
        "pom" | "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "asc" => "application/pgp-signature",
        "module" | "json" => "application/json",
        "md5" | "sha1" | "sha256" | "sha512" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The listed build of a SNAPSHOT that resolution picks: the newest.
pub fn newest_listed_build<'a>(
    index: &'a PackageIndex,
    base_version: &str,
) -> Option<(SnapshotBuild, &'a VersionEntry)> {
    index
        .listed_versions()
        .filter_map(|(version, entry)| Some((parse_snapshot_build(version)?, entry)))
        .filter(|(build, _)| build.base_version() == base_version)
        .max_by(|(a, _), (b, _)| (&a.timestamp, a.build_number).cmp(&(&b.timestamp, b.build_number)))
}

/// The versions a client sees: listed releases, and each SNAPSHOT that has
/// a listed build, in Maven's order.
pub fn listed_versions(index: &PackageIndex) -> Vec<String> {
    let mut versions: Vec<String> = index
        .listed_versions()
        .map(|(version, _)| match parse_snapshot_build(version) {
            Some(build) => build.base_version(),
            None => version.clone(),
        })
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b).then_with(|| a.cmp(b)));
    versions.dedup();
    versions
}

/// The artifact-level `maven-metadata.xml`; `None` when nothing is listed.
pub fn render_artifact_metadata(index: &PackageIndex, coordinates: &Coordinates) -> Option<Bytes> {
    let versions = listed_versions(index);
    let latest = versions.last()?;
    let release = versions.iter().rev().find(|v| !is_snapshot(v));
    let last_updated = index.modified.map(|t| t.format("%Y%m%d%H%M%S").to_string()).unwrap_or_default();
    let mut xml = header(coordinates);
    xml.push_str("  <versioning>\n");
    let _ = writeln!(xml, "    <latest>{}</latest>", escape(latest));
    if let Some(release) = release {
        let _ = writeln!(xml, "    <release>{}</release>", escape(release));
    }
    xml.push_str("    <versions>\n");
    for version in &versions {
        let _ = writeln!(xml, "      <version>{}</version>", escape(version));
    }
    xml.push_str("    </versions>\n");
    let _ = writeln!(xml, "    <lastUpdated>{last_updated}</lastUpdated>");
    xml.push_str("  </versioning>\n</metadata>\n");
    Some(Bytes::from(xml))
}

/// The SNAPSHOT-level `maven-metadata.xml`: the newest listed build and
/// its files; `None` when the SNAPSHOT has no listed build.
pub fn render_snapshot_metadata(index: &PackageIndex, coordinates: &Coordinates, base_version: &str) -> Option<Bytes> {
    let (build, entry) = newest_listed_build(index, base_version)?;
    let value = build.version();
    let updated = build.updated();
    let mut xml = header(coordinates);
    let _ = writeln!(xml, "  <version>{}</version>", escape(base_version));
    xml.push_str("  <versioning>\n    <snapshot>\n");
    let _ = writeln!(xml, "      <timestamp>{}</timestamp>", build.timestamp);
    let _ = writeln!(xml, "      <buildNumber>{}</buildNumber>", build.build_number);
    xml.push_str("    </snapshot>\n");
    let _ = writeln!(xml, "    <lastUpdated>{updated}</lastUpdated>");
    xml.push_str("    <snapshotVersions>\n");
    let prefix = format!("{}-{value}", coordinates.artifact_id);
    for name in entry.assets.keys() {
        let Some(tail) = name.strip_prefix(&prefix) else { continue };
        let (classifier, extension) = match tail.strip_prefix('-').and_then(|t| t.split_once('.')) {
            Some((classifier, extension)) => (Some(classifier), extension),
            None => (None, tail.strip_prefix('.').unwrap_or(tail)),
        };
        xml.push_str("      <snapshotVersion>\n");
        if let Some(classifier) = classifier {
            let _ = writeln!(xml, "        <classifier>{}</classifier>", escape(classifier));
        }
        let _ = writeln!(xml, "        <extension>{}</extension>", escape(extension));
        let _ = writeln!(xml, "        <value>{}</value>", escape(&value));
        let _ = writeln!(xml, "        <updated>{updated}</updated>");
        xml.push_str("      </snapshotVersion>\n");
    }
    xml.push_str("    </snapshotVersions>\n  </versioning>\n</metadata>\n");
    Some(Bytes::from(xml))
}

fn header(coordinates: &Coordinates) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata modelVersion=\"1.1.0\">\n  <groupId>{}</groupId>\n  <artifactId>{}</artifactId>\n",
        escape(&coordinates.group_id),
        escape(&coordinates.artifact_id)
    )
}

/// Maven's version order (`ComparableVersion`): numbers compare as
/// numbers, `-` and digit/letter changes start sub-lists, qualifiers rank
/// alpha < beta < milestone < rc < snapshot < release < sp < anything
/// else, and trailing zeros do not count (`1.0` = `1`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    VersionItem::List(parse_comparable(a)).compare(Some(&VersionItem::List(parse_comparable(b))))
}

#[derive(Debug)]
enum VersionItem {
    /// Digits without leading zeros, so longer means larger.
    Int(String),
    /// A qualifier's rank key, comparable as a string.
    Qualifier(String),
    List(Vec<VersionItem>),
}

const QUALIFIERS: [&str; 7] = ["alpha", "beta", "milestone", "rc", "snapshot", "", "sp"];
const RELEASE_RANK: &str = "5";

fn qualifier_rank(qualifier: &str, followed_by_digit: bool) -> String {
    let qualifier = match (qualifier, followed_by_digit) {
        ("a", true) => "alpha",
        ("b", true) => "beta",
        ("m", true) => "milestone",
        ("ga" | "final" | "release", _) => "",
        ("cr", _) => "rc",
        (other, _) => other,
    };
    match QUALIFIERS.iter().position(|q| *q == qualifier) {
        Some(index) => index.to_string(),
        None => format!("{}-{qualifier}", QUALIFIERS.len()),
    }
}

impl VersionItem {
    fn is_null(&self) -> bool {
        match self {
            VersionItem::Int(digits) => digits.is_empty(),
            VersionItem::Qualifier(rank) => rank == RELEASE_RANK,
            VersionItem::List(items) => items.is_empty(),
        }
    }

    /// `other = None` compares against "nothing here" (a shorter version).
    fn compare(&self, other: Option<&VersionItem>) -> Ordering {
        use VersionItem::{Int, List, Qualifier};
        match (self, other) {
            (Int(digits), None) => {
                if digits.is_empty() {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                }
            }
            (Int(a), Some(Int(b))) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            (Int(_), Some(_)) => Ordering::Greater,
            (Qualifier(rank), None) => rank.as_str().cmp(RELEASE_RANK),
            (Qualifier(_), Some(Int(_)) | Some(List(_))) => Ordering::Less,
            (Qualifier(a), Some(Qualifier(b))) => a.cmp(b),
            (List(items), None) => items.first().map_or(Ordering::Equal, |first| first.compare(None)),
            (List(_), Some(Int(_))) => Ordering::Less,
            (List(_), Some(Qualifier(_))) => Ordering::Greater,
            (List(a), Some(List(b))) => {
                for i in 0..a.len().max(b.len()) {
                    let result = match (a.get(i), b.get(i)) {
                        (Some(left), right) => left.compare(right),
                        (None, Some(right)) => right.compare(None).reverse(),
                        (None, None) => Ordering::Equal,
                    };
                    if result != Ordering::Equal {
                        return result;
                    }
                }
                Ordering::Equal
            }
        }
    }
}

fn parse_comparable(version: &str) -> Vec<VersionItem> {
    fn item(text: &str, is_digit: bool, followed_by_digit: bool) -> VersionItem {
        if is_digit {
            VersionItem::Int(text.trim_start_matches('0').to_owned())
        } else {
            VersionItem::Qualifier(qualifier_rank(text, followed_by_digit))
        }
    }
    // A stack of open lists; each `-` or digit/letter change opens one
    // nested in the current list, closed (and normalised) at the end.
    let version = version.to_ascii_lowercase();
    let chars: Vec<char> = version.chars().collect();
    let mut stack: Vec<Vec<VersionItem>> = vec![Vec::new()];
    let mut is_digit = false;
    let mut start = 0;
    let text = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    for (i, &c) in chars.iter().enumerate() {
        let current = stack.len() - 1;
        if c == '.' || c == '-' {
            let value =
                if i == start { VersionItem::Int(String::new()) } else { item(&text(start, i), is_digit, false) };
            stack[current].push(value);
            start = i + 1;
            if c == '-' {
                stack.push(Vec::new());
            }
        } else if c.is_ascii_digit() {
            if !is_digit && i > start {
                // `.X1` counts as `-X1`: a qualifier never sits beside numbers.
                if !stack[current].is_empty() {
                    stack.push(Vec::new());
                }
                let current = stack.len() - 1;
                stack[current].push(item(&text(start, i), false, true));
                start = i;
                stack.push(Vec::new());
            }
            is_digit = true;
        } else {
            if is_digit && i > start {
                stack[current].push(item(&text(start, i), true, false));
                start = i;
                stack.push(Vec::new());
            }
            is_digit = false;
        }
    }
    if chars.len() > start {
        if !is_digit && stack.last().is_some_and(|list| !list.is_empty()) {
            stack.push(Vec::new());
        }
        let current = stack.len() - 1;
        stack[current].push(item(&text(start, chars.len()), is_digit, false));
    }
    while stack.len() > 1 {
        let mut list = stack.pop().unwrap_or_default();
        normalize(&mut list);
        let parent = stack.len() - 1;
        stack[parent].push(VersionItem::List(list));
    }
    let mut root = stack.pop().unwrap_or_default();
    normalize(&mut root);
    root
}

/// Drops trailing "null" items (zeros, empty qualifiers, empty lists)
/// until something else, as Maven does, so `1.0` equals `1`.
fn normalize(list: &mut Vec<VersionItem>) {
    let mut i = list.len();
    while i > 0 {
        i -= 1;
        if list[i].is_null() {
            list.remove(i);
        } else if !matches!(list[i], VersionItem::List(_)) {
            break;
        }
    }
}

/// The versions a client's own `maven-metadata.xml` upload names, as core
/// versions: `<version>` entries (releases) and `<value>` entries
/// (timestamped builds), plus the build its `<snapshot>` names at SNAPSHOT
/// level. Only read to learn which of its versions a deploy just completed
/// (the resolver uploads metadata after every file); what is served is
/// always rendered from the index.
pub fn deployed_versions(document: &[u8], level: &MetadataLevel) -> Result<Vec<String>, MavenError> {
    let text = std::str::from_utf8(document).map_err(|_| MavenError::InvalidMetadata("it is not UTF-8"))?;
    if !text.contains("<metadata") || !text.contains("</metadata>") {
        return Err(MavenError::InvalidMetadata("it has no <metadata> document element"));
    }
    let mut versions: Vec<String> = ["version", "value"]
        .iter()
        .flat_map(|tag| element_texts(text, tag))
        .filter(|v| validate_version(v).is_ok() && !is_snapshot(v))
        .collect();
    if let MetadataLevel::Snapshot { base_version } = level {
        let timestamp = element_texts(text, "timestamp").into_iter().next();
        let build_number = element_texts(text, "buildNumber").into_iter().next();
        if let (Some(timestamp), Some(build_number)) = (timestamp, build_number) {
            let base = base_version.trim_end_matches(SNAPSHOT_SUFFIX);
            let version = format!("{base}-{timestamp}-{build_number}");
            if parse_snapshot_build(&version).is_some() {
                versions.push(version);
            }
        }
    }
    versions.sort();
    versions.dedup();
    Ok(versions)
}

/// The trimmed texts of every `<tag>…</tag>` (no attributes, no nesting:
/// how metadata writes these elements).
fn element_texts(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(after[..end].trim().to_owned());
        rest = &after[end + close.len()..];
    }
    found
}

/// The folder of a package in the Maven 2 layout: `com/acme/lib/`.
pub fn package_path(coordinates: &Coordinates) -> String {
    format!("{}/{}/", coordinates.group_id.replace('.', "/"), coordinates.artifact_id)
}

/// An upstream repository's artifact-level `maven-metadata.xml` as
/// unstored versions fetched through `connection`: its releases, each
/// Published and without files (the layout names them; a file is fetched
/// when asked for), dated at the epoch: the document dates no version, so
/// the caller dates them from their files when a cooldown needs it.
/// SNAPSHOTs are left out: their builds move under one name,
/// which a cache must not pin, and public release repositories have none.
pub fn upstream_index(document: &[u8], name: &str, connection: &str) -> Result<PackageIndex, MavenError> {
    let text = std::str::from_utf8(document).map_err(|_| MavenError::InvalidMetadata("it is not UTF-8"))?;
    if !text.contains("<metadata") || !text.contains("</metadata>") {
        return Err(MavenError::InvalidMetadata("it has no <metadata> document element"));
    }
    let modified = element_texts(text, "lastUpdated")
        .first()
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%d%H%M%S").ok())
        .map(|t| t.and_utc());
    let mut index = PackageIndex { display_name: name.to_owned(), modified, ..Default::default() };
    for version in element_texts(text, "version") {
        if validate_version(&version).is_err() || is_snapshot(&version) || parse_snapshot_build(&version).is_some() {
            continue;
        }
        let entry = VersionEntry {
            status: wharf_core::VersionStatus::Published,
            created: chrono::DateTime::UNIX_EPOCH,
            metadata: serde_json::json!({}),
            assets: Default::default(),
            deprecated: None,
            withdrawn: false,
            fetched_from: Some(connection.to_owned()),
            published_by: None,
        };
        index.versions.insert(version, entry);
    }
    Ok(index)
}

/// Facts kept with a version in the core: which SNAPSHOT a build belongs to.
pub fn version_metadata(version: &FileVersion) -> serde_json::Value {
    match version {
        FileVersion::SnapshotBuild(build) => serde_json::json!({
            "baseVersion": build.base_version(),
            "timestamp": build.timestamp,
            "buildNumber": build.build_number,
        }),
        FileVersion::Release(_) | FileVersion::LatestSnapshot { .. } => serde_json::json!({}),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_core::{AssetRef, VersionStatus};

    fn file(path: &str) -> ArtifactFile {
        match parse_path(path).unwrap() {
            RepositoryPath::File { file, checksum: None } => file,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn coordinates() {
        assert_eq!(parse_package_name("com.acme:lib").unwrap().package_name(), "com.acme:lib");
        Coordinates::new("org.Apache-Commons_2", "commons.lang3").unwrap();
        for (group, artifact) in [
            ("", "a"),
            ("com..acme", "a"),
            (".com", "a"),
            ("com.", "a"),
            ("com/acme", "a"),
            ("com.acme", ""),
            ("com.acme", ".."),
            ("com.acme", ".hidden"),
            ("com.acme", "a/b"),
            ("com.acme", "a b"),
            ("com.acme", "a:b"),
        ] {
            assert!(Coordinates::new(group, artifact).is_err(), "{group}:{artifact}");
        }
        assert!(Coordinates::new(&"a".repeat(201), "x").is_err());
        assert!(parse_package_name("com.acme").is_err());
        for bad in ["", "-1", "1..0", "1/0", "1 0", &"1".repeat(101)] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
        validate_version("1.0.0-rc.1+build_2").unwrap();
    }

    #[test]
    fn release_files() {
        let jar = file("com/acme/lib/1.0/lib-1.0.jar");
        assert_eq!(jar.coordinates, Coordinates::new("com.acme", "lib").unwrap());
        assert_eq!(jar.version, FileVersion::Release("1.0".into()));
        assert_eq!((jar.classifier.as_deref(), jar.extension.as_str()), (None, "jar"));
        assert_eq!(file("com/acme/lib/1.0/lib-1.0.pom").extension, "pom");
        let sources = file("com/acme/lib/1.0/lib-1.0-sources.jar");
        assert_eq!(sources.classifier.as_deref(), Some("sources"));
        assert_eq!(file("com/acme/lib/1.0/lib-1.0.tar.gz").extension, "tar.gz");
        assert_eq!(file("com/acme/lib/1.0/lib-1.0.jar.asc").extension, "jar.asc");
        assert_eq!(sources.file_name_in("2.0"), "lib-2.0-sources.jar");
        match parse_path("com/acme/lib/1.0/lib-1.0.jar.sha256").unwrap() {
            RepositoryPath::File { file, checksum } => {
                assert_eq!(checksum, Some(ChecksumAlgorithm::Sha256));
                assert_eq!(file.file_name, "lib-1.0.jar");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshot_files() {
        let jar = file("com/acme/lib/1.1-SNAPSHOT/lib-1.1-20261126.120000-3-tests.jar");
        let build = SnapshotBuild { base: "1.1".into(), timestamp: "20261126.120000".into(), build_number: 3 };
        assert_eq!(jar.version, FileVersion::SnapshotBuild(build.clone()));
        assert_eq!(jar.classifier.as_deref(), Some("tests"));
        assert_eq!(build.version(), "1.1-20261126.120000-3");
        assert_eq!(parse_snapshot_build("1.1-20261126.120000-3"), Some(build));
        assert_eq!(parse_snapshot_build("1.1"), None);
        assert_eq!(parse_snapshot_build("1.1-20261126.120000-0"), None);
        assert_eq!(
            file("com/acme/lib/1.1-SNAPSHOT/lib-1.1-SNAPSHOT.pom").version,
            FileVersion::LatestSnapshot { base_version: "1.1-SNAPSHOT".into() }
        );
        assert_eq!(
            snapshot_series("1.1-20261126.120000-3"),
            Some(("1.1-SNAPSHOT".into(), ("20261126.120000".into(), 3)))
        );
        assert_eq!(snapshot_series("1.1"), None);
    }

    #[test]
    fn metadata_paths() {
        let coordinates = Coordinates::new("com.acme", "lib").unwrap();
        assert_eq!(
            parse_path("com/acme/lib/maven-metadata.xml").unwrap(),
            RepositoryPath::Metadata {
                coordinates: coordinates.clone(),
                level: MetadataLevel::Artifact,
                checksum: None
            }
        );
        assert_eq!(
            parse_path("com/acme/lib/1.1-SNAPSHOT/maven-metadata.xml.sha1").unwrap(),
            RepositoryPath::Metadata {
                coordinates,
                level: MetadataLevel::Snapshot { base_version: "1.1-SNAPSHOT".into() },
                checksum: Some(ChecksumAlgorithm::Sha1)
            }
        );
        assert!(parse_path("lib/maven-metadata.xml").is_err());
    }

    #[test]
    fn bad_paths_explain_themselves() {
        for (path, message) in [
            ("com/acme/lib/1.0/other-1.0.jar", "must start with lib-"),
            ("com/acme/lib/1.0/lib-2.0.jar", "must name version 1.0"),
            ("com/acme/lib/1.0/lib-1.01.jar", "[-classifier].extension"),
            ("com/acme/lib/1.0/lib-1.0", "[-classifier].extension"),
            ("com/acme/lib/1.0/lib-1.0-sources", "no extension"),
            ("com/acme/lib/1.0/lib-1.0-a!.jar", "classifier"),
            ("com/acme/lib/1.0/lib-1.0.j_r", "extension"),
            ("com/acme/lib/1.1-SNAPSHOT/lib-1.1-2026.jar", "yyyyMMdd.HHmmss-N"),
            ("com/acme/lib/1.1-SNAPSHOT/lib-1.1-20261399.120000-1.jar", "yyyyMMdd.HHmmss-N"),
            ("com/acme/lib/1.1-SNAPSHOT/lib-1.1-20261126.120000-x.jar", "build number"),
            ("com/acme/lib/1.1-SNAPSHOT/lib-1.2-20261126.120000-1.jar", "named lib-1.1-"),
            ("com/acme/lib/1.1-20261126.120000-1/lib-1.1-20261126.120000-1.jar", "-SNAPSHOT folder"),
            ("com/acme/lib/1.0/lib-1.0.jar.sha1.md5", "checksums of checksum"),
            ("com/acme/lib/1.0/", "ends in /"),
            ("com//acme/lib/1.0/lib-1.0.jar", "empty segment"),
            ("acme/1.0/lib-1.0.jar", "sits under"),
            ("com/ac me/lib/1.0/lib-1.0.jar", "invalid groupId"),
            ("com/acme/lib/1..0/lib-1..0.jar", "invalid version"),
        ] {
            let err = parse_path(path).unwrap_err().to_string();
            assert!(err.contains(message), "{path}: {err}");
        }
        let long = format!("com/acme/lib/1.0/lib-1.0-{}.jar", "c".repeat(300));
        assert!(parse_path(&long).unwrap_err().to_string().contains("longer than 255"));
    }

    #[test]
    fn checksums() {
        let sha1 = ChecksumAlgorithm::Sha1.compute(b"abc");
        assert_eq!(sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            ChecksumAlgorithm::Sha1.parse_sidecar(format!("{}  lib.jar\n", sha1.to_uppercase()).as_bytes()),
            Some(sha1)
        );
        assert_eq!(ChecksumAlgorithm::Sha1.parse_sidecar(b"abc"), None);
        assert_eq!(ChecksumAlgorithm::Md5.parse_sidecar(&[0xff, 0xfe]), None);
        assert_eq!(ChecksumAlgorithm::Md5.compute(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn version_order() {
        let ascending = [
            "1.0-alpha1",
            "1.0-alpha-2",
            "1.0-beta",
            "1.0-m3",
            "1.0-rc1",
            "1.0-SNAPSHOT",
            "1.0",
            "1.0-sp1",
            "1.0-whatever",
            "1.0.1",
            "1.1-SNAPSHOT",
            "1.1",
            "1.9",
            "1.10",
            "2",
            "10.0",
        ];
        for pair in ascending.windows(2) {
            assert_eq!(compare_versions(pair[0], pair[1]), Ordering::Less, "{} < {}", pair[0], pair[1]);
            assert_eq!(compare_versions(pair[1], pair[0]), Ordering::Greater, "{} > {}", pair[1], pair[0]);
        }
        for (a, b) in
            [("1", "1.0.0"), ("1.0-ga", "1.0"), ("1.0-final", "1"), ("1.0-cr1", "1.0-rc1"), ("1.0.0-01", "1-1")]
        {
            assert_eq!(compare_versions(a, b), Ordering::Equal, "{a} = {b}");
        }
    }

    fn entry(status: VersionStatus, assets: &[&str]) -> VersionEntry {
        let digests = BlobDigests {
            sha256: "00".into(),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size: 1,
        };
        VersionEntry {
            status,
            created: chrono::Utc::now(),
            metadata: serde_json::json!({}),
            assets: assets
                .iter()
                .map(|name| {
                    let asset = AssetRef {
                        name: (*name).into(),
                        digests: digests.clone(),
                        created: chrono::Utc::now(),
                        metadata: serde_json::Value::Null,
                    };
                    ((*name).to_owned(), asset)
                })
                .collect(),
            deprecated: None,
            withdrawn: false,
            fetched_from: None,
            published_by: None,
        }
    }

    #[test]
    fn metadata_lists_what_is_listed() {
        let coordinates = Coordinates::new("com.acme", "lib").unwrap();
        let mut index =
            PackageIndex { modified: chrono::DateTime::from_timestamp(1_790_000_000, 0), ..Default::default() };
        assert!(render_artifact_metadata(&index, &coordinates).is_none());
        index.versions.insert("1.10".into(), entry(VersionStatus::Published, &["lib-1.10.jar"]));
        index.versions.insert("1.9".into(), entry(VersionStatus::Published, &["lib-1.9.jar"]));
        index.versions.insert("1.11".into(), entry(VersionStatus::Unfinished, &["lib-1.11.jar"]));
        index.versions.insert("0.1".into(), entry(VersionStatus::Unlisted, &["lib-0.1.jar"]));
        index
            .versions
            .insert("2.0-20261126.120000-1".into(), entry(VersionStatus::Unlisted, &["lib-2.0-20261126.120000-1.jar"]));
        index.versions.insert(
            "2.0-20261126.130000-2".into(),
            entry(
                VersionStatus::Published,
                &[
                    "lib-2.0-20261126.130000-2.jar",
                    "lib-2.0-20261126.130000-2.pom",
                    "lib-2.0-20261126.130000-2-sources.jar",
                ],
            ),
        );
        let xml = String::from_utf8(render_artifact_metadata(&index, &coordinates).unwrap().to_vec()).unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata modelVersion=\"1.1.0\">\n  <groupId>com.acme</groupId>\n  <artifactId>lib</artifactId>\n  <versioning>\n    <latest>2.0-SNAPSHOT</latest>\n    <release>1.10</release>\n    <versions>\n      <version>1.9</version>\n      <version>1.10</version>\n      <version>2.0-SNAPSHOT</version>\n    </versions>\n    <lastUpdated>20260921141320</lastUpdated>\n  </versioning>\n</metadata>\n"
        );
        let snapshot =
            String::from_utf8(render_snapshot_metadata(&index, &coordinates, "2.0-SNAPSHOT").unwrap().to_vec())
                .unwrap();
        assert!(snapshot.contains("<version>2.0-SNAPSHOT</version>"), "{snapshot}");
        assert!(snapshot.contains("<timestamp>20261126.130000</timestamp>\n      <buildNumber>2</buildNumber>"));
        assert!(snapshot.contains("<lastUpdated>20261126130000</lastUpdated>"));
        assert!(snapshot.contains(
            "<classifier>sources</classifier>\n        <extension>jar</extension>\n        <value>2.0-20261126.130000-2</value>"
        ));
        assert_eq!(snapshot.matches("<snapshotVersion>").count(), 3, "{snapshot}");
        assert!(!snapshot.contains("120000-1"), "the older build is not offered: {snapshot}");
        assert!(render_snapshot_metadata(&index, &coordinates, "3.0-SNAPSHOT").is_none());
    }

    #[test]
    fn versions_a_deploy_names() {
        let artifact = b"<metadata><groupId>com.acme</groupId><artifactId>lib</artifactId><versioning>\
            <latest>1.1-SNAPSHOT</latest><release>1.0</release><versions><version>0.9</version>\
            <version> 1.0 </version><version>1.1-SNAPSHOT</version><version>../x</version></versions></versioning></metadata>";
        assert_eq!(deployed_versions(artifact, &MetadataLevel::Artifact).unwrap(), ["0.9", "1.0"]);
        let snapshot = b"<metadata><version>1.1-SNAPSHOT</version><versioning><snapshot>\
            <timestamp>20261126.120000</timestamp><buildNumber>3</buildNumber></snapshot><snapshotVersions>\
            <snapshotVersion><extension>jar</extension><value>1.1-20261126.120000-3</value></snapshotVersion>\
            </snapshotVersions></versioning></metadata>";
        let level = MetadataLevel::Snapshot { base_version: "1.1-SNAPSHOT".into() };
        assert_eq!(deployed_versions(snapshot, &level).unwrap(), ["1.1-20261126.120000-3"]);
        // Maven 2 wrote only <snapshot>.
        let old = b"<metadata><versioning><snapshot><timestamp>20261126.120000</timestamp><buildNumber>4</buildNumber></snapshot></versioning></metadata>";
        assert_eq!(deployed_versions(old, &level).unwrap(), ["1.1-20261126.120000-4"]);
        let plugins = b"<metadata><plugins><plugin><prefix>acme</prefix></plugin></plugins></metadata>";
        assert!(deployed_versions(plugins, &MetadataLevel::Artifact).unwrap().is_empty());
        for bad in [&b"<metadata><version>1.0"[..], b"1.0", &[0xff, 0xfe]] {
            assert!(deployed_versions(bad, &MetadataLevel::Artifact).is_err());
        }
    }

    #[test]
    fn upstream_metadata_becomes_unstored_releases() {
        let document = br#"<?xml version="1.0" encoding="UTF-8"?>
<metadata>
  <groupId>com.example</groupId>
  <artifactId>lib</artifactId>
  <versioning>
    <latest>2.0-SNAPSHOT</latest>
    <release>1.10</release>
    <versions>
      <version>1.0</version>
      <version>1.10</version>
      <version>2.0-SNAPSHOT</version>
      <version>../evil</version>
    </versions>
    <lastUpdated>20261126120000</lastUpdated>
  </versioning>
</metadata>
"#;
        let index = upstream_index(document, "com.example:lib", "central").unwrap();
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["1.0", "1.10"]);
        assert_eq!(index.modified.unwrap().to_rfc3339(), "2026-11-26T12:00:00+00:00");
        let entry = &index.versions["1.10"];
        assert_eq!(entry.fetched_from.as_deref(), Some("central"));
        assert!(entry.assets.is_empty() && entry.status.is_listed());
        assert!(upstream_index(b"<html>not metadata</html>", "com.example:lib", "central").is_err());
        let coordinates = Coordinates::new("com.example.tools", "lib").unwrap();
        assert_eq!(package_path(&coordinates), "com/example/tools/lib/");
    }
}
