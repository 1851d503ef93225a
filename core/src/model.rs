//! The format-neutral data model: packages, versions, assets and statuses.
//! Pure data, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wharf_api::PackageFormat;

use wharf_storage::BlobDigests;

/// A package within a repository: its format and its name as the format
/// normalises it (the storage key). The name the publisher spelled is kept
/// in [`PackageIndex::display_name`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PackageId {
    pub format: PackageFormat,
    pub name: String,
}

impl PackageId {
    pub fn new(format: PackageFormat, name: impl Into<String>) -> Self {
        PackageId { format, name: name.into() }
    }
}

/// A version's lifecycle. Versions are immutable; only this changes, and
/// only by compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum VersionStatus {
    /// Listed and installable.
    Published,
    /// A multi-asset upload still in progress: neither listed nor installable.
    Unfinished,
    /// Installable by exact version, hidden from listings and ranges
    /// (PyPI and Cargo "yanked", NuGet "unlisted").
    Unlisted,
    /// Not installable; reversible.
    Archived,
    /// Assets deleted; irreversible.
    Disposed,
}

impl VersionStatus {
    /// Shown in listings, ranges and `latest`.
    pub fn is_listed(self) -> bool {
        self == VersionStatus::Published
    }

    /// Its assets can be downloaded.
    pub fn is_installable(self) -> bool {
        matches!(self, VersionStatus::Published | VersionStatus::Unlisted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Published => "Published",
            VersionStatus::Unfinished => "Unfinished",
            VersionStatus::Unlisted => "Unlisted",
            VersionStatus::Archived => "Archived",
            VersionStatus::Disposed => "Disposed",
        }
    }
}

/// The key in an asset's metadata naming the URL of a file an external
/// connection offers and the Domain does not hold yet (the same for every
/// format); the read pipeline fetches it from there on first use.
pub const UPSTREAM_URL: &str = "upstreamUrl";

/// Keys in an asset's metadata that name another blob of the Domain (PyPI's core
/// metadata file): the storage collector keeps those too.
pub const METADATA_BLOB_KEYS: &[&str] = &["core_metadata_sha256"];

/// One file of a version, pointing at a content-addressed blob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetRef {
    pub name: String,
    pub digests: BlobDigests,
    pub created: DateTime<Utc>,
    /// Format-specific facts about the file (a wheel's `requires-python`
    /// and core-metadata digest, say).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

impl AssetRef {
    /// The blobs this file needs kept: its own bytes (when the Domain holds them) and any
    /// its metadata names.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        let own = Some(self.digests.sha256.as_str()).filter(|sha| !sha.is_empty());
        let named = METADATA_BLOB_KEYS.iter().filter_map(|key| self.metadata.get(*key)?.as_str());
        own.into_iter().chain(named)
    }
}

/// The create-once record of a version: whoever creates it won the publish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: String,
    pub created: DateTime<Utc>,
    pub metadata: serde_json::Value,
    pub assets: Vec<AssetRef>,
    /// Who published it (a token's subject, a ServiceAccount, `admin`); `None` for
    /// versions fetched through an external connection and those published before
    /// publishers were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
}

/// A version as listed in its package's index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub status: VersionStatus,
    pub created: DateTime<Utc>,
    /// The format's own description of the version (npm's manifest, a
    /// wheel's core metadata fields), as published. Immutable.
    pub metadata: serde_json::Value,
    pub assets: BTreeMap<String, AssetRef>,
    /// A deprecation message (npm, NuGet); the one mutable annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<String>,
    /// Unlisted because the package's own newer metadata withdraws it (Go's
    /// `retract` directives), not by an operator: re-derived on every
    /// publish of the package, cleared by any operator status change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// The external connection this version was fetched through; `None`
    /// for versions published to the Domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_from: Option<String>,
    /// Who published it (see [`VersionRecord::published_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
}

/// The read model of a package: every version with its status, and the
/// package's mutable pointers. Replaced as a whole by compare-and-swap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackageIndex {
    pub display_name: String,
    pub created: Option<DateTime<Utc>>,
    pub modified: Option<DateTime<Utc>>,
    pub versions: BTreeMap<String, VersionEntry>,
    /// Named pointers to versions (npm dist-tags).
    pub tags: BTreeMap<String, String>,
    /// Ids of the newest writes that led to this revision, oldest first
    /// (at most [`RECENT_WRITES`]): how a writer tells that the revision it
    /// created is part of the sequence (see `Registry::update_index`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_writes: Vec<String>,
    /// Who changed each version's status and when, newest last (at most
    /// [`STATUS_CHANGES_KEPT`] per version): a Disposed version's tombstone says who
    /// disposed of it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status_changes: BTreeMap<String, Vec<StatusChange>>,
}

/// How many status changes of one version an index keeps.
pub const STATUS_CHANGES_KEPT: usize = 16;

/// One change of a version's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: VersionStatus,
    /// The principal that changed it (a token's subject, `admin`).
    pub by: String,
    pub at: DateTime<Utc>,
}

/// How many write ids an index revision remembers.
pub const RECENT_WRITES: usize = 32;

impl PackageIndex {
    pub fn listed_versions(&self) -> impl Iterator<Item = (&String, &VersionEntry)> {
        self.versions.iter().filter(|(_, v)| v.status.is_listed())
    }
}

/// A file about to become an asset: its bytes are already in storage.
#[derive(Clone, Debug)]
pub struct NewAsset {
    pub name: String,
    pub digests: BlobDigests,
    pub metadata: serde_json::Value,
}

/// A whole version published in one request (npm, Cargo).
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub version: String,
    pub metadata: serde_json::Value,
    pub assets: Vec<NewAsset>,
    /// Tags to point at this version in the same write.
    pub tags: Vec<String>,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    Created,
    /// The same bytes were already published: nothing changed.
    AlreadyPublished,
}

/// How the first version of a name reached the Domain; decides, unless a
/// policy rule does, whether the name may be published directly or served
/// from an external connection (dependency-confusion defence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OriginKind {
    /// Published directly to a Repository of the Domain: the name is reserved.
    Direct,
    /// Fetched through an external connection: direct publishing is refused.
    External,
}

/// The create-once, per-Domain record of a name's first version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageOrigin {
    pub kind: OriginKind,
    /// The Repository the first version arrived in.
    pub repository: String,
    /// The external connection it came through, for [`OriginKind::External`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    pub version: String,
    pub recorded: DateTime<Utc>,
}
