//! The format-neutral core: publishing versions and assets, statuses and
//! tags, reading package indexes, and the publish and read pipelines every
//! format goes through ([`Packages`]). Serves no HTTP; does storage I/O
//! through [`Storage`] and reads external connections only through
//! `wharf-upstream`.
//!
//! Write path: asset bytes are staged and checked under `uploads/`, then
//! committed to content-addressed keys, then a create-once record decides
//! which publisher won, then the
//! package index is replaced by compare-and-swap. A crash between steps
//! leaves unreferenced blobs or a record not yet indexed; the next publish
//! of the same version indexes it (see [`Registry::publish_version`]).

pub mod activity;
pub mod adapter;
pub mod chain;
pub mod collect;
pub mod copy;
pub mod downloads;
pub mod explain;
pub mod model;
pub mod policy;
pub mod publish;
#[cfg(test)]
mod replica_simulation;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::Stream;

pub use adapter::{Adapters, FormatAdapter, LayoutFile, UpstreamSource};
pub use chain::{Packages, View};
pub use model::*;
pub use publish::{Declared, Digest, Placement, Publication};

use wharf_storage::{BlobBody, BlobDigests, BodyError, Created, StagedBlob, Storage, StorageError, keys};

/// The key of a deleted version's tombstone record that says who deleted it, when.
const DELETED: &str = "deleted";
/// How often one index write retries after losing a compare-and-swap.
const MAX_INDEX_ATTEMPTS: u32 = 200;
/// Packages whose index stays cached in memory, per process.
const MAX_CACHED_PACKAGES: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("version {version} is {actual}, not {expected}")]
    StatusMismatch { version: String, expected: &'static str, actual: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("too many concurrent writers on package {0}; try again")]
    Contention(String),
    /// A check of an upload stopped unexpectedly (a bug, not the upload's fault).
    #[error("{0}")]
    Crashed(String),
    /// A policy or origin rule refuses the request.
    #[error("{0}")]
    Forbidden(String),
    /// An external connection failed or sent what cannot be used: the
    /// upstream's fault, not the client's.
    #[error("{message}")]
    Upstream { message: String, timed_out: bool },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl CoreError {
    /// An external connection's failure, logged here with its causes.
    pub fn upstream(error: &wharf_upstream::UpstreamError) -> Self {
        tracing::warn!(error = %wharf_diagnostics::error_chain(error), "upstream request failed");
        CoreError::Upstream { message: error.to_string(), timed_out: error.is_timeout() }
    }

    /// An external connection answered with something that cannot be used.
    pub fn upstream_unusable(message: impl Into<String>) -> Self {
        CoreError::Upstream { message: message.into(), timed_out: false }
    }
}

/// A package index as read at one revision, with its encodings cached so a
/// hot package is serialised once per change, not once per request.
pub struct PackageSnapshot {
    pub revision: u64,
    pub index: PackageIndex,
    renders: Renders,
}

/// An encoded response body and its entity tag.
#[derive(Clone)]
pub struct Rendered {
    pub body: Bytes,
    pub etag: String,
}

impl Rendered {
    /// A body with its entity tag (a digest of the bytes).
    pub fn of(body: Bytes) -> Self {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&body);
        Rendered { etag: format!("\"{}\"", hex::encode(&digest[..12])), body }
    }
}

/// The bodies rendered from one package index, by key (a format's variant and base URL),
/// so a hot package is encoded once per change, not once per request.
#[derive(Default)]
pub struct Renders(Mutex<HashMap<String, Rendered>>);

impl Renders {
    /// Kept per index at most: a few variants times a few base URLs.
    const MAX: usize = 16;

    /// The body `render` produces from `index` for `key`, computed once while kept.
    pub fn get_or_render(
        &self,
        key: &str,
        index: &PackageIndex,
        render: impl FnOnce(&PackageIndex) -> Bytes,
    ) -> Rendered {
        if let Some(hit) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return hit.clone();
        }
        let rendered = Rendered::of(render(index));
        let mut renders = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if renders.len() > Self::MAX {
            renders.clear();
        }
        renders.insert(key.to_owned(), rendered.clone());
        rendered
    }
}

impl PackageSnapshot {
    fn new(revision: u64, index: PackageIndex) -> Self {
        PackageSnapshot { revision, index, renders: Renders::default() }
    }

    /// The body `render` produces for this revision, computed once per
    /// `key` (a format's variant and base URL).
    pub fn rendered(&self, key: &str, render: impl FnOnce(&PackageIndex) -> Bytes) -> Rendered {
        self.renders.get_or_render(key, &self.index, render)
    }
}

type CacheKey = (String, PackageId);

/// One package's cache slot: the newest snapshot seen and the probe that
/// revalidates it. Readers share probes: a reader waits its turn and
/// reuses the result of any probe that *started* after it arrived, so it
/// still sees every write completed before it arrived, while a burst of
/// readers costs one storage round trip instead of one each.
struct CachedPackage {
    snapshot: Mutex<Arc<PackageSnapshot>>,
    probe: tokio::sync::Mutex<()>,
    /// When the newest successful probe started, in nanoseconds since
    /// [`Registry::epoch`].
    probed_from: AtomicU64,
}

impl CachedPackage {
    fn new(snapshot: Arc<PackageSnapshot>, probed_from: u64) -> Self {
        CachedPackage {
            snapshot: Mutex::new(snapshot),
            probe: tokio::sync::Mutex::new(()),
            probed_from: AtomicU64::new(probed_from),
        }
    }

    fn current(&self) -> Arc<PackageSnapshot> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps `snapshot` unless a newer one is already here.
    fn offer(&self, snapshot: Arc<PackageSnapshot>) -> Arc<PackageSnapshot> {
        let mut current = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.revision > current.revision {
            *current = snapshot;
        }
        current.clone()
    }
}

/// The core service of one Domain.
pub struct Registry {
    storage: Storage,
    packages: Mutex<HashMap<CacheKey, Arc<CachedPackage>>>,
    /// Origin records seen; they are create-once, so never stale.
    origins: Mutex<HashMap<PackageId, PackageOrigin>>,
    downloads: downloads::DownloadLog,
    /// Where what happens to packages is reported (the registry's audit trail).
    activity: Arc<dyn activity::ActivitySink>,
    epoch: Instant,
}

impl Registry {
    pub fn new(storage: Storage) -> Self {
        Registry {
            storage,
            packages: Mutex::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
            downloads: downloads::DownloadLog::default(),
            activity: activity::unobserved(),
            epoch: Instant::now(),
        }
    }

    /// Reports what happens to packages to `sink` from now on.
    pub fn with_activity(mut self, sink: Arc<dyn activity::ActivitySink>) -> Self {
        self.activity = sink;
        self
    }

    /// Reports an activity (see [`activity`]).
    pub fn report(&self, action: activity::Action, repo: &str, id: &PackageId, version: Option<&str>) {
        self.activity.record(activity::Activity {
            action,
            repository: repo.to_owned(),
            id: id.clone(),
            version: version.map(str::to_owned),
        });
    }

    fn now(&self) -> u64 {
        // Saturates after ~584 years of uptime.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Notes that `file` of `version` was served from `repo` (see [`downloads`]), and
    /// reports it.
    pub fn record_download(&self, repo: &str, id: &PackageId, version: &str, file: &str) {
        self.downloads.record(id, version);
        self.report(activity::Action::Downloaded { file: file.to_owned() }, repo, id, Some(version));
    }

    /// Writes the downloads noted since the last flush.
    pub async fn flush_downloads(&self) -> Result<(), CoreError> {
        self.downloads.flush(&self.storage).await
    }

    /// Streams an upload into staging (see [`Storage::stage_blob`]): the
    /// caller checks it there, then commits or discards it.
    pub async fn stage_asset<S>(&self, body: S, limit: u64) -> Result<StagedBlob, CoreError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send,
    {
        Ok(self.storage.stage_blob(body, limit).await?)
    }

    pub async fn store_small_asset(&self, bytes: Bytes) -> Result<BlobDigests, CoreError> {
        Ok(self.storage.put_small_blob(bytes).await?)
    }

    /// A small blob's bytes (a POM), or `None` when the Domain does not hold it. The
    /// caller checks the size first: the whole blob is read into memory.
    pub async fn small_blob(&self, sha256: &str) -> Result<Option<Bytes>, CoreError> {
        Ok(self.storage.read_blob(sha256).await?)
    }

    /// Opens an asset's blob (`digests.size` lets small ones come from memory).
    pub async fn open_blob(
        &self,
        digests: &BlobDigests,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobBody, CoreError> {
        let sha256 = &digests.sha256;
        self.storage
            .open_blob(sha256, digests.size, range)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("blob {sha256} not found")))
    }

    /// Publishes a whole version at once. Of concurrent publishers of one
    /// version exactly one creates it; the others get a conflict, or
    /// [`PublishOutcome::AlreadyPublished`] when their assets are identical.
    pub async fn publish_version(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        new: NewVersion,
    ) -> Result<PublishOutcome, CoreError> {
        self.publish(repo, id, display_name, new, None).await
    }

    /// Publishes like [`Self::publish_version`] and, in the same index
    /// write, brings statuses in line with what the package withdraws
    /// itself (`withdrawals` decides from the whole index, as it is after
    /// this version joined it): withdrawn versions become Unlisted
    /// (installable by exact version, hidden from listings), versions no
    /// longer withdrawn are listed again; statuses an operator set stay.
    /// One write, so no reader sees a withdrawn version listed, and
    /// concurrent publishes each decide from the newest index.
    pub async fn publish_version_withdrawing(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        new: NewVersion,
        withdrawals: &Withdrawals,
    ) -> Result<PublishOutcome, CoreError> {
        self.publish(repo, id, display_name, new, Some(withdrawals)).await
    }

    async fn publish(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        new: NewVersion,
        withdrawals: Option<&Withdrawals>,
    ) -> Result<PublishOutcome, CoreError> {
        // The assets live inside the version record, not as files of their own.
        check_storable(id, &new.version, [])?;
        let now = Utc::now();
        let record = VersionRecord {
            version: new.version.clone(),
            created: now,
            metadata: new.metadata,
            assets: new
                .assets
                .into_iter()
                .map(|a| AssetRef { name: a.name, digests: a.digests, created: now, metadata: a.metadata })
                .collect(),
            published_by: self.activity.actor(),
        };
        let key = keys::version_record(repo, id.format.as_str(), &id.name, &new.version);
        let (record, outcome, conflict) = match self.storage.create_json(&key, &record).await? {
            Created::Created => (record, PublishOutcome::Created, None),
            Created::AlreadyExists(existing) => {
                let conflict = (!same_assets(&existing.assets, &record.assets)).then(|| {
                    let why = if existing.metadata.get(DELETED).is_some() {
                        "was deleted by an administrator, and its number may not be used again"
                    } else {
                        "was already published with different contents"
                    };
                    CoreError::Conflict(format!("{} {}@{} {why}", id.format.as_str(), display_name, new.version))
                });
                (existing, PublishOutcome::AlreadyPublished, conflict)
            }
        };
        // Runs on every path: a publisher that crashed after creating the
        // record is completed by the next publish of the version, also one
        // refused for different bytes, so what the 409 refers to is there.
        let indexed = self
            .update_index(repo, id, display_name, |index| {
                let mut changed = false;
                if !index.versions.contains_key(&record.version) {
                    index.versions.insert(
                        record.version.clone(),
                        VersionEntry {
                            status: VersionStatus::Published,
                            created: record.created,
                            metadata: record.metadata.clone(),
                            assets: record.assets.iter().map(|a| (a.name.clone(), a.clone())).collect(),
                            deprecated: None,
                            withdrawn: false,
                            fetched_from: None,
                            published_by: record.published_by.clone(),
                        },
                    );
                    changed = true;
                }
                if outcome == PublishOutcome::Created {
                    for tag in &new.tags {
                        index.tags.insert(tag.clone(), record.version.clone());
                        changed = true;
                    }
                }
                if let Some(withdrawals) = withdrawals {
                    let withdrawn = withdrawals(index);
                    changed |= apply_withdrawals(index, &withdrawn);
                }
                Ok(changed)
            })
            .await;
        if let Some(conflict) = conflict {
            return Err(conflict);
        }
        indexed?;
        Ok(outcome)
    }

    /// Fixes how a package's name is spelled, for formats that compare names
    /// loosely but want one spelling kept (Cargo: `Foo_bar` and `foo-bar`
    /// are one crate, known by the spelling it was first published under).
    /// The first claim wins, atomically; a claim with another spelling is a
    /// conflict that names the kept one. Call it after a publish's input is
    /// validated, so refused input claims nothing.
    pub async fn claim_spelling(&self, repo: &str, id: &PackageId, spelling: &str) -> Result<(), CoreError> {
        let key = keys::package_spelling(repo, id.format.as_str(), &id.name);
        match self.storage.create_json(&key, &spelling.to_owned()).await? {
            Created::Created => Ok(()),
            Created::AlreadyExists(kept) if kept == spelling => Ok(()),
            Created::AlreadyExists(kept) => Err(CoreError::Conflict(format!(
                "{} package {kept} already exists; publish it under that name, not {spelling}",
                id.format.as_str()
            ))),
        }
    }

    /// Keeps a file fetched through an external connection in `repo`, so it
    /// keeps installing when the upstream is down or deletes it. The bytes
    /// are already staged; the version is Published, dated `created` (the
    /// upstream's date, which cooldown compares) and marked with its origin.
    #[allow(clippy::too_many_arguments)]
    pub async fn retain_fetched(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        version: &str,
        version_metadata: serde_json::Value,
        created: chrono::DateTime<Utc>,
        connection: &str,
        asset: NewAsset,
    ) -> Result<PublishOutcome, CoreError> {
        let rules = FileRules::Fetched { created, connection };
        self.add_file(repo, id, display_name, version, version_metadata, rules, asset).await
    }

    /// The package as seen through a chain of Repositories, searched in
    /// order: a version comes from the first Repository holding it, and so
    /// does a tag (the requesting Repository's own tags win). Repositories
    /// `admits` refuses are skipped. `None` when none holds the package.
    pub async fn resolve_package(
        &self,
        repositories: &[String],
        id: &PackageId,
        admits: impl Fn(&str) -> bool,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let snapshots = self.chain_snapshots(repositories, id, admits).await?;
        Ok(merge_snapshots(snapshots.iter().flatten()))
    }

    /// The snapshot of the package in each Repository `admits` lets through,
    /// in chain order (`None` where one does not hold it): what
    /// [`Self::resolve_package`] merges, and whose revisions tell a caller
    /// whether a merge it kept still holds.
    pub async fn chain_snapshots(
        &self,
        repositories: &[String],
        id: &PackageId,
        admits: impl Fn(&str) -> bool,
    ) -> Result<Vec<Option<Arc<PackageSnapshot>>>, CoreError> {
        let mut snapshots = Vec::with_capacity(repositories.len());
        for repo in repositories.iter().filter(|repo| admits(repo)) {
            snapshots.push(self.package(repo, id).await?);
        }
        Ok(snapshots)
    }

    /// The recorded first-version origin of a name in the Domain, if any.
    pub async fn package_origin(&self, id: &PackageId) -> Result<Option<PackageOrigin>, CoreError> {
        if let Some(known) = self.origins.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(Some(known.clone()));
        }
        let origin: Option<PackageOrigin> =
            self.storage.read_json(&keys::package_origin(id.format.as_str(), &id.name)).await?;
        if let Some(origin) = &origin {
            self.remember_origin(id, origin);
        }
        Ok(origin)
    }

    fn remember_origin(&self, id: &PackageId, origin: &PackageOrigin) {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if origins.len() >= MAX_CACHED_PACKAGES {
            origins.clear();
        }
        origins.insert(id.clone(), origin.clone());
    }

    /// Records how the first version of a name reached the Domain. Create-once,
    /// so replicas agree: the first claim is kept and returned to every caller.
    pub async fn claim_origin(&self, id: &PackageId, origin: PackageOrigin) -> Result<PackageOrigin, CoreError> {
        if let Some(known) = self.origins.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(known.clone());
        }
        let key = keys::package_origin(id.format.as_str(), &id.name);
        let kept = match self.storage.create_json(&key, &origin).await? {
            Created::Created => origin,
            Created::AlreadyExists(kept) => kept,
        };
        self.remember_origin(id, &kept);
        Ok(kept)
    }

    /// Adds one file to a version, creating the version on its first file
    /// in `initial_status` (PyPI uploads each file of a release separately).
    /// Files may be added to the version later while it is installable.
    /// A file name is bound to its first bytes forever.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_asset(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        version: &str,
        version_metadata: serde_json::Value,
        initial_status: VersionStatus,
        asset: NewAsset,
    ) -> Result<PublishOutcome, CoreError> {
        let rules = FileRules::Release { initial_status };
        self.add_file(repo, id, display_name, version, version_metadata, rules, asset).await
    }

    /// Adds one file to a version that stays open (Unfinished) for more
    /// files until one arrives with `finalize`, which publishes it in the
    /// same write. A Published version is final: no file joins it any more.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_asset_to_open_version(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        version: &str,
        version_metadata: serde_json::Value,
        finalize: bool,
        asset: NewAsset,
    ) -> Result<PublishOutcome, CoreError> {
        // Refuse before binding the file name, so a late file does not
        // leave a record behind; the index write re-checks under CAS.
        if let Some(snapshot) = self.package(repo, id).await?
            && let Some(entry) = snapshot.index.versions.get(version)
            && entry.status != VersionStatus::Unfinished
            && entry.assets.get(&asset.name).is_none_or(|a| a.digests.sha256 != asset.digests.sha256)
        {
            return Err(closed_version(version, entry.status));
        }
        let rules = FileRules::Open { finalize };
        self.add_file(repo, id, display_name, version, version_metadata, rules, asset).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_file(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        version: &str,
        version_metadata: serde_json::Value,
        rules: FileRules<'_>,
        asset: NewAsset,
    ) -> Result<PublishOutcome, CoreError> {
        let now = match rules {
            FileRules::Fetched { created, .. } => created,
            _ => Utc::now(),
        };
        check_storable(id, version, [asset.name.as_str()])?;
        let format = id.format.as_str();
        let published_by = match rules {
            FileRules::Fetched { .. } => None,
            _ => self.activity.actor(),
        };
        let record = VersionRecord {
            version: version.to_owned(),
            created: now,
            metadata: version_metadata,
            assets: Vec::new(),
            published_by,
        };
        let record =
            match self.storage.create_json(&keys::version_record(repo, format, &id.name, version), &record).await? {
                Created::Created => record,
                Created::AlreadyExists(existing) => existing,
            };
        let asset = AssetRef { name: asset.name, digests: asset.digests, created: now, metadata: asset.metadata };
        let asset_key = keys::asset_record(repo, format, &id.name, version, &asset.name);
        let (asset, outcome, conflict) = match self.storage.create_json(&asset_key, &asset).await? {
            Created::Created => (asset, PublishOutcome::Created, None),
            Created::AlreadyExists(existing) if existing.digests.sha256 == asset.digests.sha256 => {
                (existing, PublishOutcome::AlreadyPublished, None)
            }
            Created::AlreadyExists(existing) => {
                let conflict = CoreError::Conflict(format!(
                    "File already exists: {} was already uploaded with different contents",
                    asset.name
                ));
                (existing, PublishOutcome::AlreadyPublished, Some(conflict))
            }
        };
        // As in `publish`: an upload that crashed after its asset record is
        // completed by the next upload of that file, even a refused one.
        let indexed = self
            .update_index(repo, id, display_name, |index| {
                let initial_status = match rules {
                    FileRules::Release { initial_status } => initial_status,
                    FileRules::Open { .. } => VersionStatus::Unfinished,
                    FileRules::Fetched { .. } => VersionStatus::Published,
                };
                let fetched_from = match rules {
                    FileRules::Fetched { connection, .. } => Some(connection.to_owned()),
                    _ => None,
                };
                let entry = index.versions.entry(version.to_owned()).or_insert_with(|| VersionEntry {
                    status: initial_status,
                    created: record.created,
                    metadata: record.metadata.clone(),
                    assets: Default::default(),
                    deprecated: None,
                    withdrawn: false,
                    fetched_from,
                    published_by: record.published_by.clone(),
                });
                let mut changed = false;
                if !entry.assets.contains_key(&asset.name) {
                    let accepts = match rules {
                        FileRules::Release { .. } => {
                            !matches!(entry.status, VersionStatus::Archived | VersionStatus::Disposed)
                        }
                        FileRules::Open { .. } => entry.status == VersionStatus::Unfinished,
                        FileRules::Fetched { .. } => entry.status.is_installable(),
                    };
                    if !accepts {
                        return Err(closed_version(version, entry.status));
                    }
                    entry.assets.insert(asset.name.clone(), asset.clone());
                    changed = true;
                }
                if conflict.is_none()
                    && let FileRules::Open { finalize: true } = rules
                    && entry.status == VersionStatus::Unfinished
                {
                    entry.status = VersionStatus::Published;
                    changed = true;
                }
                Ok(changed)
            })
            .await;
        if let Some(conflict) = conflict {
            return Err(conflict);
        }
        indexed?;
        Ok(outcome)
    }

    /// Lists a version whose files were added one by one (created
    /// Unfinished by [`Self::add_asset`]): Unfinished → Published. A version
    /// already past Unfinished keeps its status, so a retried last file
    /// changes nothing; an Archived or Disposed one is a conflict.
    ///
    /// `series` may place versions in a series whose newest member
    /// supersedes the others (the timestamped builds of one Maven
    /// SNAPSHOT): then only the newest listed member, by rank, stays
    /// listed and the rest become Unlisted, in the same index revision, so
    /// readers never see two current builds of a series, or none.
    pub async fn finish_version<R: Ord>(
        &self,
        repo: &str,
        id: &PackageId,
        version: &str,
        series: impl Fn(&str) -> Option<(String, R)>,
    ) -> Result<(), CoreError> {
        self.update_existing(repo, id, |index| {
            let entry = index
                .versions
                .get_mut(version)
                .ok_or_else(|| CoreError::NotFound(format!("version {version} not found")))?;
            let mut changed = false;
            match entry.status {
                VersionStatus::Unfinished => {
                    entry.status = VersionStatus::Published;
                    changed = true;
                }
                VersionStatus::Published | VersionStatus::Unlisted => {}
                VersionStatus::Archived | VersionStatus::Disposed => {
                    return Err(CoreError::Conflict(format!(
                        "version {version} is {}; it cannot be published again",
                        entry.status.as_str()
                    )));
                }
            }
            let Some((name, _)) = series(version) else { return Ok(changed) };
            let members: Vec<(String, R)> = index
                .listed_versions()
                .filter_map(|(v, _)| series(v).filter(|(s, _)| *s == name).map(|(_, rank)| (v.clone(), rank)))
                .collect();
            let newest = members.iter().max_by(|a, b| a.1.cmp(&b.1)).map(|(v, _)| v.clone());
            for (member, _) in members {
                if Some(&member) != newest.as_ref()
                    && let Some(entry) = index.versions.get_mut(&member)
                {
                    entry.status = VersionStatus::Unlisted;
                    index.tags.retain(|_, v| *v != member);
                    changed = true;
                }
            }
            Ok(changed)
        })
        .await
    }

    /// Changes a version's status, optionally only from `expected`, on behalf of `by`
    /// (kept in the index's status changes).
    pub async fn set_status(
        &self,
        repo: &str,
        id: &PackageId,
        version: &str,
        expected: Option<VersionStatus>,
        status: VersionStatus,
        by: &str,
    ) -> Result<(), CoreError> {
        let mut changed_from = None;
        self.update_existing(repo, id, |index| {
            changed_from = None;
            let entry = index
                .versions
                .get_mut(version)
                .ok_or_else(|| CoreError::NotFound(format!("version {version} not found")))?;
            if let Some(expected) = expected
                && entry.status != expected
            {
                return Err(CoreError::StatusMismatch {
                    version: version.to_owned(),
                    expected: expected.as_str(),
                    actual: entry.status.as_str(),
                });
            }
            // An operator's choice replaces a withdrawal, even when the
            // status stays the same, so the next publish leaves it alone.
            if entry.status == status && !entry.withdrawn {
                return Ok(false);
            }
            if entry.status == VersionStatus::Disposed {
                return Err(CoreError::Conflict(format!("version {version} is Disposed, which is final")));
            }
            changed_from = Some(entry.status);
            entry.status = status;
            entry.withdrawn = false;
            if status == VersionStatus::Disposed {
                // The blobs go when the collector finds nothing else in the Domain
                // naming them; the entry stays as the tombstone.
                entry.assets.clear();
            }
            index.tags.retain(|_, v| v != version || status.is_listed());
            let changes = index.status_changes.entry(version.to_owned()).or_default();
            changes.push(StatusChange { status, by: by.to_owned(), at: Utc::now() });
            let excess = changes.len().saturating_sub(STATUS_CHANGES_KEPT);
            changes.drain(..excess);
            Ok(true)
        })
        .await?;
        if let Some(from) = changed_from {
            self.report(activity::Action::StatusChanged { from, to: status }, repo, id, Some(version));
        }
        Ok(())
    }

    /// Deletes a version for good (a takedown), on behalf of `by`: its metadata, records
    /// and tags go, and its bytes once the collector finds nothing else naming them. With
    /// `allow_reuse` nothing of it is left and its number may be published again;
    /// otherwise a tombstone (Disposed, who and when, no metadata) keeps the number taken.
    pub async fn delete_version(
        &self,
        repo: &str,
        id: &PackageId,
        version: &str,
        allow_reuse: bool,
        by: &str,
    ) -> Result<(), CoreError> {
        self.update_existing(repo, id, |index| {
            if !index.versions.contains_key(version) {
                return Err(CoreError::NotFound(format!("version {version} not found")));
            }
            index.tags.retain(|_, tagged| tagged != version);
            if allow_reuse {
                index.versions.remove(version);
                index.status_changes.remove(version);
            } else if let Some(entry) = index.versions.get_mut(version) {
                entry.status = VersionStatus::Disposed;
                entry.assets.clear();
                entry.metadata = serde_json::json!({});
                entry.deprecated = None;
                entry.withdrawn = false;
                let changes = index.status_changes.entry(version.to_owned()).or_default();
                changes.push(StatusChange { status: VersionStatus::Disposed, by: by.to_owned(), at: Utc::now() });
                let excess = changes.len().saturating_sub(STATUS_CHANGES_KEPT);
                changes.drain(..excess);
            }
            Ok(true)
        })
        .await?;
        // The records hold the metadata too: they go, and a tombstone record keeps the
        // number taken (a publish of it then meets a record with other contents: 409).
        let format = id.format.as_str();
        let record = keys::version_record(repo, format, &id.name, version);
        let folder = record.parts().take(record.parts().count() - 1).collect();
        self.storage.purge(&folder).await?;
        if !allow_reuse {
            let tombstone = VersionRecord {
                version: version.to_owned(),
                created: Utc::now(),
                metadata: serde_json::json!({DELETED: {"by": by, "at": Utc::now()}}),
                assets: Vec::new(),
                published_by: None,
            };
            self.storage.create_json(&record, &tombstone).await?;
        }
        self.report(activity::Action::Deleted { reusable: allow_reuse }, repo, id, Some(version));
        Ok(())
    }

    /// Points `tag` at `version`, which must be listed.
    pub async fn set_tag(&self, repo: &str, id: &PackageId, tag: &str, version: &str) -> Result<(), CoreError> {
        self.update_existing(repo, id, |index| {
            match index.versions.get(version) {
                Some(entry) if entry.status.is_listed() => {}
                Some(entry) => {
                    return Err(CoreError::Invalid(format!(
                        "version {version} is {} and cannot be tagged",
                        entry.status.as_str()
                    )));
                }
                None => return Err(CoreError::NotFound(format!("version {version} not found"))),
            }
            Ok(index.tags.insert(tag.to_owned(), version.to_owned()).as_deref() != Some(version))
        })
        .await
    }

    pub async fn remove_tag(&self, repo: &str, id: &PackageId, tag: &str) -> Result<(), CoreError> {
        if tag == "latest" {
            return Err(CoreError::Invalid("the latest tag cannot be removed".into()));
        }
        self.update_existing(repo, id, |index| Ok(index.tags.remove(tag).is_some())).await
    }

    /// Sets or clears the deprecation message of some versions.
    pub async fn set_deprecations(
        &self,
        repo: &str,
        id: &PackageId,
        messages: &[(String, Option<String>)],
    ) -> Result<(), CoreError> {
        self.update_existing(repo, id, |index| {
            let mut changed = false;
            for (version, message) in messages {
                if let Some(entry) = index.versions.get_mut(version)
                    && entry.deprecated != *message
                {
                    entry.deprecated = message.clone();
                    changed = true;
                }
            }
            Ok(changed)
        })
        .await
    }

    /// The package as it is now: a cached snapshot, revalidated by probing
    /// for a newer revision so a write on any replica is seen at once.
    pub async fn package(&self, repo: &str, id: &PackageId) -> Result<Option<Arc<PackageSnapshot>>, CoreError> {
        let arrived = self.now();
        let cache_key = (repo.to_owned(), id.clone());
        let dir = keys::package_index(repo, id.format.as_str(), &id.name);
        let slot = self.packages.lock().unwrap_or_else(|e| e.into_inner()).get(&cache_key).cloned();
        if let Some(slot) = slot {
            if self.storage.is_exclusive() {
                // Every write to this storage went through this process.
                return Ok(Some(slot.current()));
            }
            let _turn = slot.probe.lock().await;
            if slot.probed_from.load(Ordering::Acquire) >= arrived {
                return Ok(Some(slot.current()));
            }
            let started = self.now();
            let current = slot.current();
            // A listing, not a look-up of revision N+1: N+1 may have been
            // pruned already, or re-created by a writer that lost track.
            if let Some(newest) = self.storage.newest_revision(&dir, Some(current.revision)).await?
                && let Some((revision, bytes)) = self.storage.read_newest_revision(&dir, Some(newest)).await?
            {
                slot.offer(Arc::new(decode_index(&dir, revision, &bytes)?));
            }
            slot.probed_from.store(started, Ordering::Release);
            return Ok(Some(slot.current()));
        }
        let started = self.now();
        let Some(snapshot) = self.load_latest(&dir).await? else {
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        let mut packages = self.packages.lock().unwrap_or_else(|e| e.into_inner());
        if packages.len() >= MAX_CACHED_PACKAGES {
            packages.clear();
        }
        let slot = packages.entry(cache_key).or_insert_with(|| Arc::new(CachedPackage::new(snapshot.clone(), started)));
        Ok(Some(slot.offer(snapshot)))
    }

    async fn load_latest(&self, dir: &object_store::path::Path) -> Result<Option<PackageSnapshot>, CoreError> {
        let Some((revision, bytes)) = self.storage.latest_revision(dir).await? else {
            return Ok(None);
        };
        Ok(Some(decode_index(dir, revision, &bytes)?))
    }

    /// Names of the packages of one format in a repository (normalised).
    pub async fn package_names(&self, repo: &str, format: wharf_api::PackageFormat) -> Result<Vec<String>, CoreError> {
        Ok(self.storage.list_children(&keys::packages(repo, format.as_str())).await?)
    }

    /// Caches the snapshot a write just created. Readers still probe
    /// before using it: another replica may write next.
    fn remember(&self, key: CacheKey, snapshot: PackageSnapshot) {
        let snapshot = Arc::new(snapshot);
        let mut packages = self.packages.lock().unwrap_or_else(|e| e.into_inner());
        if packages.len() >= MAX_CACHED_PACKAGES {
            packages.clear();
        }
        packages.entry(key).or_insert_with(|| Arc::new(CachedPackage::new(snapshot.clone(), 0))).offer(snapshot);
    }

    async fn update_existing(
        &self,
        repo: &str,
        id: &PackageId,
        change: impl FnMut(&mut PackageIndex) -> Result<bool, CoreError>,
    ) -> Result<(), CoreError> {
        if self.package(repo, id).await?.is_none() {
            return Err(CoreError::NotFound(format!("package {} not found", id.name)));
        }
        self.update_index(repo, id, &id.name, change).await
    }

    /// Compare-and-swap on a package index: read the newest revision, apply
    /// `change` (which says whether it changed anything), create the next
    /// revision; on losing the race, start over from the winner's index.
    ///
    /// Old revisions are pruned, so creating revision N+1 can succeed for a
    /// writer that read N after N+1 existed and was pruned: its revision is
    /// then a stray beside newer ones, not a successor. So a writer lists
    /// after creating: its revision counts only when it is the newest, or
    /// when the newest names this write among its recent writes. Otherwise
    /// it deletes the stray and starts over. Every `change` must be
    /// idempotent: when more than [`RECENT_WRITES`] writes landed between
    /// the create and the listing, a write that did land is applied again.
    async fn update_index(
        &self,
        repo: &str,
        id: &PackageId,
        display_name: &str,
        mut change: impl FnMut(&mut PackageIndex) -> Result<bool, CoreError>,
    ) -> Result<(), CoreError> {
        let dir = keys::package_index(repo, id.format.as_str(), &id.name);
        for attempt in 0..MAX_INDEX_ATTEMPTS {
            let current = self.package(repo, id).await?;
            let (revision, mut index) = match &current {
                Some(snapshot) => (snapshot.revision, snapshot.index.clone()),
                None => (0, PackageIndex { display_name: display_name.to_owned(), ..Default::default() }),
            };
            if !change(&mut index)? {
                return Ok(());
            }
            let now = Utc::now();
            index.created.get_or_insert(now);
            index.modified = Some(now);
            repair_latest(&mut index);
            let write_id = format!("{:016x}", rand::random::<u64>());
            index.recent_writes.push(write_id.clone());
            let excess = index.recent_writes.len().saturating_sub(RECENT_WRITES);
            index.recent_writes.drain(..excess);
            let bytes =
                serde_json::to_vec(&index).map_err(|source| StorageError::Decode { key: dir.to_string(), source })?;
            let next = revision + 1;
            if self.storage.create_revision(&dir, next, Bytes::from(bytes)).await? {
                match self.confirm_revision(&dir, next, &write_id).await? {
                    Confirmed::Newest => {
                        self.remember((repo.to_owned(), id.clone()), PackageSnapshot::new(next, index));
                    }
                    Confirmed::Superseded => {}
                    Confirmed::Stray => {
                        self.storage.delete_revision(&dir, next).await;
                        continue;
                    }
                }
                if next > 2 {
                    let storage = self.storage.clone();
                    tokio::spawn(async move { storage.prune_revisions(&dir, next - 1).await });
                }
                return Ok(());
            }
            // Lost the race: back off a little, with jitter, so 50
            // concurrent writers do not all collide again.
            let jitter = rand::random::<u64>() % (1 + u64::from(attempt.min(20)));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(CoreError::Contention(id.name.clone()))
    }

    /// Whether revision `created`, just created by write `write_id`, is part
    /// of the index's sequence of revisions (see [`Self::update_index`]).
    async fn confirm_revision(
        &self,
        dir: &object_store::path::Path,
        created: u64,
        write_id: &str,
    ) -> Result<Confirmed, CoreError> {
        if self.storage.is_exclusive() {
            // One process writes: no revision it created can have been pruned.
            return Ok(Confirmed::Newest);
        }
        // Nothing newer: ours is the newest (a pruned revision always has
        // newer ones, since the newest is never pruned).
        if self.storage.newest_revision(dir, Some(created)).await?.is_none() {
            return Ok(Confirmed::Newest);
        }
        let Some((revision, bytes)) = self.storage.latest_revision(dir).await? else {
            return Ok(Confirmed::Stray);
        };
        let newest = decode_index(dir, revision, &bytes)?;
        let ours = newest.index.recent_writes.iter().any(|id| id == write_id);
        Ok(if ours { Confirmed::Superseded } else { Confirmed::Stray })
    }
}

/// A package index revision as stored.
fn decode_index(dir: &object_store::path::Path, revision: u64, bytes: &[u8]) -> Result<PackageSnapshot, CoreError> {
    let index: PackageIndex =
        serde_json::from_slice(bytes).map_err(|source| StorageError::Decode { key: dir.to_string(), source })?;
    Ok(PackageSnapshot::new(revision, index))
}

/// What a writer learns about the revision it created.
enum Confirmed {
    /// It is the newest revision.
    Newest,
    /// Newer revisions were built on it.
    Superseded,
    /// It re-created a pruned revision number and is no successor of the
    /// newest revision: the write did not land.
    Stray,
}

/// How a file joins its version (see [`Registry::add_asset`] and
/// [`Registry::add_asset_to_open_version`]).
#[derive(Clone, Copy)]
enum FileRules<'a> {
    Release {
        initial_status: VersionStatus,
    },
    Open {
        finalize: bool,
    },
    /// A copy of an upstream file: Published, dated as upstream dated it,
    /// marked with the connection it came through.
    Fetched {
        created: chrono::DateTime<Utc>,
        connection: &'a str,
    },
}

fn closed_version(version: &str, status: VersionStatus) -> CoreError {
    CoreError::Conflict(format!("version {version} is {}; no files can be added to it", status.as_str()))
}

/// Decides, from a package's whole index, which of its versions the
/// package's own metadata withdraws (Go: the `retract` directives in the
/// go.mod of its newest version).
pub type Withdrawals = dyn Fn(&PackageIndex) -> BTreeSet<String> + Send + Sync;

/// Unlists what `withdrawn` names and relists what it no longer names;
/// versions whose status an operator set are left alone. Whether anything
/// changed.
fn apply_withdrawals(index: &mut PackageIndex, withdrawn: &BTreeSet<String>) -> bool {
    let mut changed = false;
    for (version, entry) in index.versions.iter_mut() {
        let wanted = withdrawn.contains(version);
        if wanted && entry.status == VersionStatus::Published {
            entry.status = VersionStatus::Unlisted;
            entry.withdrawn = true;
            changed = true;
        } else if !wanted && entry.withdrawn {
            entry.status = VersionStatus::Published;
            entry.withdrawn = false;
            changed = true;
        }
    }
    if changed {
        let versions = &index.versions;
        index.tags.retain(|_, v| versions.get(v).is_some_and(|entry| entry.status.is_listed()));
    }
    changed
}

/// Merges snapshots searched in order (see [`Registry::resolve_package`]);
/// `None` when there are none.
pub fn merge_snapshots<'a>(snapshots: impl IntoIterator<Item = &'a Arc<PackageSnapshot>>) -> Option<PackageIndex> {
    let mut merged: Option<PackageIndex> = None;
    for snapshot in snapshots {
        match merged.as_mut() {
            None => merged = Some(snapshot.index.clone()),
            Some(merged) => merge_index(merged, &snapshot.index),
        }
    }
    merged
}

/// Adds what `later` has and `first` lacks: versions, and tags whose name
/// `first` does not use. `first` is searched before `later`, so its values win.
pub fn merge_index(first: &mut PackageIndex, later: &PackageIndex) {
    for (version, entry) in &later.versions {
        first.versions.entry(version.clone()).or_insert_with(|| entry.clone());
    }
    for (tag, version) in &later.tags {
        first.tags.entry(tag.clone()).or_insert_with(|| version.clone());
    }
    first.created = match (first.created, later.created) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    first.modified = first.modified.max(later.modified);
}

fn same_assets(a: &[AssetRef], b: &[AssetRef]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name && x.digests.sha256 == y.digests.sha256)
}

/// `latest` must name a listed version whenever one exists: retarget it to
/// the newest listed version when it names a version that is gone or hidden.
/// Ordering is by publish time; formats with their own ordering set the tag.
pub fn repair_latest(index: &mut PackageIndex) {
    let valid =
        index.tags.get("latest").and_then(|v| index.versions.get(v)).is_some_and(|entry| entry.status.is_listed());
    if valid {
        return;
    }
    match index.listed_versions().max_by_key(|(_, entry)| entry.created) {
        Some((version, _)) => {
            let version = version.clone();
            index.tags.insert("latest".into(), version);
        }
        None => {
            index.tags.remove("latest");
        }
    }
}

/// Refuses, before anything is written, a package name, version or file
/// name too long to be part of a storage key once percent-encoded (see
/// [`keys::MAX_NAME_BYTES`]), so a refused publish leaves no record behind.
/// Handlers call it too, before they commit an upload's bytes.
pub fn check_storable<'a>(
    id: &PackageId,
    version: &str,
    files: impl IntoIterator<Item = &'a str>,
) -> Result<(), CoreError> {
    let too_long = |what: &str, bytes: usize, limit: usize| {
        CoreError::Invalid(format!(
            "the {what} is too long to store: {bytes} bytes once percent-encoded (`/`, `~`, `%` and non-ASCII \
             characters count three bytes each), at most {limit}"
        ))
    };
    let name = keys::encoded_len(&id.name);
    if name > keys::MAX_NAME_BYTES {
        return Err(too_long("package name", name, keys::MAX_NAME_BYTES));
    }
    let version = keys::encoded_len(version);
    if version > keys::MAX_PART_BYTES {
        return Err(too_long("version", version, keys::MAX_PART_BYTES));
    }
    for file in files {
        let file = keys::encoded_len(file);
        if file > keys::MAX_NAME_BYTES {
            return Err(too_long("file name", file, keys::MAX_NAME_BYTES));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use wharf_api::PackageFormat;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Storage::new(Arc::new(InMemory::new()))))
    }

    async fn blob(registry: &Registry, bytes: &'static [u8]) -> BlobDigests {
        let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::from_static(bytes))]);
        registry.stage_asset(body, 1 << 20).await.unwrap().commit().await.unwrap()
    }

    fn npm(name: &str) -> PackageId {
        PackageId::new(PackageFormat::Npm, name)
    }

    fn version(v: &str, digests: BlobDigests) -> NewVersion {
        NewVersion {
            version: v.into(),
            metadata: serde_json::json!({"version": v}),
            assets: vec![NewAsset { name: format!("pkg-{v}.tgz"), digests, metadata: Default::default() }],
            tags: vec!["latest".into()],
        }
    }

    #[tokio::test]
    async fn publish_then_read_and_republish() {
        let registry = registry();
        let id = npm("pkg");
        let a = blob(&registry, b"a").await;
        let b = blob(&registry, b"b").await;
        let outcome = registry.publish_version("main", &id, "pkg", version("1.0.0", a.clone())).await.unwrap();
        assert_eq!(outcome, PublishOutcome::Created);
        let again = registry.publish_version("main", &id, "pkg", version("1.0.0", a.clone())).await.unwrap();
        assert_eq!(again, PublishOutcome::AlreadyPublished);
        let err = registry.publish_version("main", &id, "pkg", version("1.0.0", b)).await.unwrap_err();
        assert!(matches!(err, CoreError::Conflict(_)), "{err}");
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].assets["pkg-1.0.0.tgz"].digests, a);
        assert_eq!(snapshot.index.tags["latest"], "1.0.0");
        assert!(registry.package("other", &id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_deleted_version_keeps_its_number_unless_reuse_was_allowed() {
        let registry = registry();
        let id = npm("pkg");
        let a = blob(&registry, b"a").await;
        registry.publish_version("main", &id, "pkg", version("1.0.0", a.clone())).await.unwrap();
        registry.publish_version("main", &id, "pkg", version("2.0.0", blob(&registry, b"c").await)).await.unwrap();
        registry.delete_version("main", &id, "1.0.0", false, "admin").await.unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        let tombstone = &snapshot.index.versions["1.0.0"];
        assert_eq!((tombstone.status, tombstone.assets.len()), (VersionStatus::Disposed, 0));
        assert_eq!(tombstone.metadata, serde_json::json!({}), "the metadata is gone too");
        assert_eq!(snapshot.index.status_changes["1.0.0"][0].by, "admin");
        let taken = registry.publish_version("main", &id, "pkg", version("1.0.0", a.clone())).await.unwrap_err();
        assert!(taken.to_string().contains("deleted by an administrator"), "{taken}");

        registry.delete_version("main", &id, "2.0.0", true, "admin").await.unwrap();
        assert!(!registry.package("main", &id).await.unwrap().unwrap().index.versions.contains_key("2.0.0"));
        let reused = registry.publish_version("main", &id, "pkg", version("2.0.0", a)).await.unwrap();
        assert_eq!(reused, PublishOutcome::Created);
        let missing = registry.delete_version("main", &id, "3.0.0", false, "admin").await.unwrap_err();
        assert!(matches!(missing, CoreError::NotFound(_)), "{missing}");
    }

    #[tokio::test]
    async fn concurrent_publishes_of_one_version_have_one_winner() {
        let registry = registry();
        let id = npm("race");
        let mut digests = Vec::new();
        for i in 0..50u8 {
            let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::from(vec![i; 10]))]);
            digests.push(registry.stage_asset(body, 1024).await.unwrap().commit().await.unwrap());
        }
        let attempts = digests.iter().cloned().map(|d| {
            let registry = registry.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let sha = d.sha256.clone();
                (registry.publish_version("main", &id, "race", version("1.0.0", d)).await, sha)
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(r, _)| matches!(r, Ok(PublishOutcome::Created))).collect();
        assert_eq!(winners.len(), 1);
        assert!(results.iter().filter(|(r, _)| r.is_err()).all(|(r, _)| matches!(r, Err(CoreError::Conflict(_)))));
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].assets["pkg-1.0.0.tgz"].digests.sha256, winners[0].1);
    }

    #[tokio::test]
    async fn concurrent_publishes_of_different_versions_all_land() {
        let registry = registry();
        let id = npm("many");
        let d = blob(&registry, b"x").await;
        let attempts = (0..20).map(|i| {
            let registry = registry.clone();
            let id = id.clone();
            let d = d.clone();
            tokio::spawn(
                async move { registry.publish_version("main", &id, "many", version(&format!("1.0.{i}"), d)).await },
            )
        });
        for result in futures::future::join_all(attempts).await {
            assert_eq!(result.unwrap().unwrap(), PublishOutcome::Created);
        }
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions.len(), 20);
    }

    #[tokio::test]
    async fn status_changes_are_compare_and_swap() {
        let registry = registry();
        let id = npm("pkg");
        let d = blob(&registry, b"a").await;
        registry.publish_version("main", &id, "pkg", version("1.0.0", d.clone())).await.unwrap();
        registry.publish_version("main", &id, "pkg", version("1.1.0", d)).await.unwrap();
        let err = registry
            .set_status("main", &id, "1.1.0", Some(VersionStatus::Unlisted), VersionStatus::Archived, "test")
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::StatusMismatch { .. }));
        registry
            .set_status("main", &id, "1.1.0", Some(VersionStatus::Published), VersionStatus::Unlisted, "test")
            .await
            .unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.1.0"].status, VersionStatus::Unlisted);
        assert_eq!(snapshot.index.tags["latest"], "1.0.0", "latest moves off a hidden version");
        registry.set_status("main", &id, "1.0.0", None, VersionStatus::Disposed, "test").await.unwrap();
        let err = registry.set_status("main", &id, "1.0.0", None, VersionStatus::Published, "test").await.unwrap_err();
        assert!(matches!(err, CoreError::Conflict(_)));
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert!(snapshot.index.versions["1.0.0"].assets.is_empty());
        assert!(!snapshot.index.tags.contains_key("latest"));
    }

    /// A publisher killed between the version record and the index leaves a
    /// version nobody can read; the next publish of it, even one refused for
    /// other bytes, completes it, so the 409 refers to something that is there.
    #[tokio::test]
    async fn an_interrupted_publish_is_completed_by_the_next_attempt() {
        let registry = registry();
        let id = npm("pkg");
        let first = blob(&registry, b"first").await;
        let record = VersionRecord {
            version: "1.0.0".into(),
            created: Utc::now(),
            metadata: serde_json::json!({"version": "1.0.0"}),
            assets: vec![AssetRef {
                name: "pkg-1.0.0.tgz".into(),
                digests: first.clone(),
                created: Utc::now(),
                metadata: Default::default(),
            }],
            published_by: None,
        };
        let key = keys::version_record("main", "npm", "pkg", "1.0.0");
        assert!(matches!(registry.storage.create_json(&key, &record).await.unwrap(), Created::Created));
        assert!(registry.package("main", &id).await.unwrap().is_none());

        let other = blob(&registry, b"other").await;
        let error = registry.publish_version("main", &id, "pkg", version("1.0.0", other)).await.unwrap_err();
        assert!(matches!(error, CoreError::Conflict(_)), "{error}");
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].assets["pkg-1.0.0.tgz"].digests, first);

        // The same for a file of a multi-file release (PyPI).
        let pypi = PackageId::new(PackageFormat::Pypi, "demo");
        let asset = AssetRef {
            name: "demo-1.0.tar.gz".into(),
            digests: first.clone(),
            created: Utc::now(),
            metadata: Default::default(),
        };
        let record = VersionRecord {
            version: "1.0".into(),
            created: Utc::now(),
            metadata: Default::default(),
            assets: vec![],
            published_by: None,
        };
        registry.storage.create_json(&keys::version_record("main", "pypi", "demo", "1.0"), &record).await.unwrap();
        registry
            .storage
            .create_json(&keys::asset_record("main", "pypi", "demo", "1.0", "demo-1.0.tar.gz"), &asset)
            .await
            .unwrap();
        let other = blob(&registry, b"other").await;
        let file = NewAsset { name: "demo-1.0.tar.gz".into(), digests: other, metadata: Default::default() };
        let error = registry
            .add_asset("main", &pypi, "demo", "1.0", Default::default(), VersionStatus::Published, file)
            .await
            .unwrap_err();
        assert!(matches!(error, CoreError::Conflict(_)), "{error}");
        let snapshot = registry.package("main", &pypi).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0"].assets["demo-1.0.tar.gz"].digests, first);
    }

    #[tokio::test]
    async fn assets_are_bound_to_their_first_bytes() {
        let registry = registry();
        let id = PackageId::new(PackageFormat::Pypi, "demo");
        let a = blob(&registry, b"wheel").await;
        let b = blob(&registry, b"other").await;
        let asset = |d: BlobDigests| NewAsset {
            name: "demo-1.0-py3-none-any.whl".into(),
            digests: d,
            metadata: Default::default(),
        };
        let meta = serde_json::json!({});
        assert_eq!(
            registry
                .add_asset("main", &id, "Demo", "1.0", meta.clone(), VersionStatus::Published, asset(a.clone()))
                .await
                .unwrap(),
            PublishOutcome::Created
        );
        assert_eq!(
            registry
                .add_asset("main", &id, "Demo", "1.0", meta.clone(), VersionStatus::Published, asset(a))
                .await
                .unwrap(),
            PublishOutcome::AlreadyPublished
        );
        let err =
            registry.add_asset("main", &id, "Demo", "1.0", meta, VersionStatus::Published, asset(b)).await.unwrap_err();
        assert!(err.to_string().contains("File already exists"), "{err}");
    }

    /// Files of a version arrive one by one; finishing lists it, and in a
    /// series only the newest finished member stays listed, whatever order
    /// the members finish in.
    #[tokio::test]
    async fn finishing_versions_and_series() {
        let registry = registry();
        let id = PackageId::new(PackageFormat::Maven, "com.acme:lib");
        let d = blob(&registry, b"jar").await;
        let add = |version: &'static str| {
            let registry = registry.clone();
            let id = id.clone();
            let d = d.clone();
            async move {
                let asset = NewAsset { name: format!("lib-{version}.jar"), digests: d, metadata: Default::default() };
                registry
                    .add_asset(
                        "main",
                        &id,
                        "com.acme:lib",
                        version,
                        serde_json::json!({}),
                        VersionStatus::Unfinished,
                        asset,
                    )
                    .await
                    .unwrap();
            }
        };
        // Series "1.1" ranked by build number; release "1.0" is in none.
        let series =
            |v: &str| v.strip_prefix("1.1-b").and_then(|n| n.parse::<u32>().ok()).map(|n| ("1.1".to_owned(), n));
        let status = |v: &'static str| {
            let registry = registry.clone();
            let id = id.clone();
            async move { registry.package("main", &id).await.unwrap().unwrap().index.versions[v].status }
        };
        add("1.0").await;
        assert_eq!(status("1.0").await, VersionStatus::Unfinished);
        registry.finish_version("main", &id, "1.0", series).await.unwrap();
        assert_eq!(status("1.0").await, VersionStatus::Published);
        add("1.1-b1").await;
        add("1.1-b2").await;
        add("1.1-b3").await;
        registry.finish_version("main", &id, "1.1-b1", series).await.unwrap();
        registry.finish_version("main", &id, "1.1-b3", series).await.unwrap();
        assert_eq!(status("1.1-b1").await, VersionStatus::Unlisted);
        assert_eq!(status("1.1-b3").await, VersionStatus::Published);
        // An older build finishing late does not displace the newest.
        registry.finish_version("main", &id, "1.1-b2", series).await.unwrap();
        assert_eq!(status("1.1-b2").await, VersionStatus::Unlisted);
        assert_eq!(status("1.1-b3").await, VersionStatus::Published);
        assert_eq!(status("1.0").await, VersionStatus::Published, "outside the series");
        // Finishing again changes nothing; an archived version cannot be finished.
        registry.finish_version("main", &id, "1.1-b3", series).await.unwrap();
        assert_eq!(status("1.1-b3").await, VersionStatus::Published);
        registry.set_status("main", &id, "1.0", None, VersionStatus::Archived, "test").await.unwrap();
        let err = registry.finish_version("main", &id, "1.0", series).await.unwrap_err();
        assert!(matches!(err, CoreError::Conflict(_)), "{err}");
        let err = registry.finish_version("main", &id, "9.9", series).await.unwrap_err();
        assert!(matches!(err, CoreError::NotFound(_)), "{err}");
    }

    #[tokio::test]
    async fn open_versions_take_files_until_finalised() {
        let registry = registry();
        let id = PackageId::new(PackageFormat::Generic, "ns/tool");
        let file =
            |name: &str, d: BlobDigests| NewAsset { name: name.into(), digests: d, metadata: Default::default() };
        let a = blob(&registry, b"a").await;
        let b = blob(&registry, b"b").await;
        let meta = serde_json::json!({});
        let add = |name: &'static str, d: BlobDigests, finalize: bool| {
            let registry = registry.clone();
            let (id, meta) = (id.clone(), meta.clone());
            async move {
                registry.add_asset_to_open_version("main", &id, "tool", "1.0", meta, finalize, file(name, d)).await
            }
        };
        add("a.bin", a.clone(), false).await.unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0"].status, VersionStatus::Unfinished);
        add("b.bin", b.clone(), true).await.unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0"].status, VersionStatus::Published);
        assert_eq!(snapshot.index.versions["1.0"].assets.len(), 2);
        assert_eq!(add("b.bin", b, true).await.unwrap(), PublishOutcome::AlreadyPublished, "retries are idempotent");
        let err = add("c.bin", a, false).await.unwrap_err();
        assert!(err.to_string().contains("is Published"), "{err}");
    }

    #[tokio::test]
    async fn the_first_spelling_of_a_name_is_kept() {
        let registry = registry();
        let id = PackageId::new(PackageFormat::Cargo, "foo-bar");
        let claims = ["foo_bar", "Foo-Bar", "foo-bar", "FOO_BAR"].map(|spelling| {
            let registry = registry.clone();
            let id = id.clone();
            tokio::spawn(async move { (spelling, registry.claim_spelling("main", &id, spelling).await) })
        });
        let results: Vec<_> = futures::future::join_all(claims).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).map(|(s, _)| *s).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for (spelling, result) in &results {
            if let Err(err) = result {
                assert!(matches!(err, CoreError::Conflict(_)), "{err}");
                assert!(err.to_string().contains(&format!("package {} already exists", winners[0])), "{err}");
                assert!(err.to_string().contains(spelling), "{err}");
            }
        }
        registry.claim_spelling("main", &id, winners[0]).await.unwrap();
        registry.claim_spelling("other", &id, "Foo-Bar").await.unwrap();
    }

    #[tokio::test]
    async fn a_second_registry_sees_writes_at_once() {
        let storage = Storage::new(Arc::new(InMemory::new()));
        let one = Registry::new(storage.clone());
        let two = Registry::new(storage);
        let id = npm("pkg");
        let d = blob(&one, b"a").await;
        one.publish_version("main", &id, "pkg", version("1.0.0", d.clone())).await.unwrap();
        assert_eq!(two.package("main", &id).await.unwrap().unwrap().index.versions.len(), 1);
        one.publish_version("main", &id, "pkg", version("1.1.0", d)).await.unwrap();
        assert_eq!(two.package("main", &id).await.unwrap().unwrap().index.versions.len(), 2);
    }

    /// A burst of readers shares revalidation probes, and each still sees a
    /// write that completed before it arrived.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_readers_see_writes_from_another_replica() {
        let storage = Storage::new(Arc::new(InMemory::new()));
        let writer = Registry::new(storage.clone());
        let reader = Arc::new(Registry::new(storage));
        let id = npm("pkg");
        let d = blob(&writer, b"a").await;
        writer.publish_version("main", &id, "pkg", version("1.0.0", d.clone())).await.unwrap();
        for round in 1..=5usize {
            let readers = (0..32).map(|_| {
                let (reader, id) = (reader.clone(), id.clone());
                tokio::spawn(async move { reader.package("main", &id).await.unwrap().unwrap().index.versions.len() })
            });
            for seen in futures::future::join_all(readers).await {
                assert_eq!(seen.unwrap(), round);
            }
            writer.publish_version("main", &id, "pkg", version(&format!("2.0.{round}"), d.clone())).await.unwrap();
        }
    }

    /// Withdrawals as Go decides them, simplified: the newest version's
    /// metadata lists what the package withdraws.
    fn newest_withdraws(index: &PackageIndex) -> BTreeSet<String> {
        let newest = index.versions.values().max_by_key(|entry| entry.created);
        newest
            .and_then(|entry| entry.metadata["withdraws"].as_array())
            .map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_package_withdraws_its_own_versions_and_operators_keep_theirs() {
        let registry = registry();
        let id = PackageId::new(PackageFormat::Go, "example.com/m");
        let d = blob(&registry, b"zip").await;
        let publish = |v: &str, withdraws: serde_json::Value| {
            let registry = registry.clone();
            let id = id.clone();
            let mut new = version(v, d.clone());
            new.metadata = serde_json::json!({ "withdraws": withdraws });
            new.tags.clear();
            async move {
                registry
                    .publish_version_withdrawing("main", &id, "example.com/m", new, &newest_withdraws)
                    .await
                    .unwrap()
            }
        };
        let statuses = || async {
            let snapshot = registry.package("main", &id).await.unwrap().unwrap();
            snapshot.index.versions.iter().map(|(v, e)| (v.clone(), e.status)).collect::<Vec<_>>()
        };
        use VersionStatus::{Published, Unlisted};
        publish("1.0.0", serde_json::json!([])).await;
        publish("1.1.0", serde_json::json!(["1.0.0"])).await;
        assert_eq!(statuses().await, [("1.0.0".into(), Unlisted), ("1.1.0".into(), Published)]);
        // A version that withdraws itself is never listed; 1.0.0 is no
        // longer withdrawn by the newest version, so it is listed again.
        publish("1.2.0", serde_json::json!(["1.2.0"])).await;
        assert_eq!(
            statuses().await,
            [("1.0.0".into(), Published), ("1.1.0".into(), Published), ("1.2.0".into(), Unlisted)]
        );
        let tags = registry.package("main", &id).await.unwrap().unwrap().index.tags.clone();
        assert_eq!(tags.get("latest").map(String::as_str), Some("1.1.0"), "latest never names a withdrawn version");
        // An operator's Unlisted stays, even when the package stops
        // withdrawing that version; a withdrawal the operator confirmed
        // becomes the operator's.
        registry.set_status("main", &id, "1.1.0", None, Unlisted, "test").await.unwrap();
        registry.set_status("main", &id, "1.2.0", Some(Unlisted), Unlisted, "test").await.unwrap();
        publish("1.3.0", serde_json::json!([])).await;
        assert_eq!(
            statuses().await,
            [
                ("1.0.0".into(), Published),
                ("1.1.0".into(), Unlisted),
                ("1.2.0".into(), Unlisted),
                ("1.3.0".into(), Published)
            ]
        );
        // Plain publishes never change statuses.
        registry.publish_version("main", &id, "example.com/m", version("1.4.0", d.clone())).await.unwrap();
        assert_eq!(statuses().await.len(), 5);
        assert_eq!(statuses().await[1].1, Unlisted);
    }

    #[tokio::test]
    async fn tags_and_deprecations() {
        let registry = registry();
        let id = npm("pkg");
        let d = blob(&registry, b"a").await;
        registry.publish_version("main", &id, "pkg", version("1.0.0", d)).await.unwrap();
        registry.set_tag("main", &id, "beta", "1.0.0").await.unwrap();
        assert!(matches!(registry.set_tag("main", &id, "beta", "9.9.9").await, Err(CoreError::NotFound(_))));
        assert!(matches!(registry.remove_tag("main", &id, "latest").await, Err(CoreError::Invalid(_))));
        registry.remove_tag("main", &id, "beta").await.unwrap();
        registry.set_deprecations("main", &id, &[("1.0.0".into(), Some("use 2".into()))]).await.unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].deprecated.as_deref(), Some("use 2"));
        assert!(!snapshot.index.tags.contains_key("beta"));
    }

    #[tokio::test]
    async fn concurrent_origin_claims_keep_exactly_one() {
        let registry = registry();
        let id = npm("contested");
        let claims = (0..16).map(|i| {
            let registry = registry.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let kind = if i % 2 == 0 { OriginKind::Direct } else { OriginKind::External };
                let origin = PackageOrigin {
                    kind,
                    repository: format!("repo-{i}"),
                    connection: None,
                    version: "1.0.0".into(),
                    recorded: Utc::now(),
                };
                registry.claim_origin(&id, origin).await.unwrap()
            })
        });
        let kept: Vec<PackageOrigin> =
            futures::future::join_all(claims).await.into_iter().map(|r| r.unwrap()).collect();
        assert!(kept.iter().all(|origin| *origin == kept[0]), "every claimant sees the one winner");
        assert_eq!(registry.package_origin(&id).await.unwrap(), Some(kept[0].clone()));
    }

    #[tokio::test]
    async fn fetched_versions_keep_upstream_date_and_origin_and_refuse_other_bytes() {
        let registry = registry();
        let id = npm("fetched");
        let upstream_date = Utc::now() - chrono::Duration::days(3);
        let digests = blob(&registry, b"upstream bytes").await;
        let asset =
            |digests: BlobDigests| NewAsset { name: "fetched-1.0.0.tgz".into(), digests, metadata: Default::default() };
        for _ in 0..2 {
            let outcome = registry
                .retain_fetched(
                    "store",
                    &id,
                    "fetched",
                    "1.0.0",
                    serde_json::json!({}),
                    upstream_date,
                    "public",
                    asset(digests.clone()),
                )
                .await
                .unwrap();
            assert!(matches!(outcome, PublishOutcome::Created | PublishOutcome::AlreadyPublished));
        }
        let snapshot = registry.package("store", &id).await.unwrap().unwrap();
        let entry = &snapshot.index.versions["1.0.0"];
        assert_eq!(entry.status, VersionStatus::Published);
        assert_eq!(entry.created, upstream_date);
        assert_eq!(entry.fetched_from.as_deref(), Some("public"));
        let other = blob(&registry, b"other bytes").await;
        let refused = registry
            .retain_fetched(
                "store",
                &id,
                "fetched",
                "1.0.0",
                serde_json::json!({}),
                upstream_date,
                "public",
                asset(other),
            )
            .await;
        assert!(matches!(refused, Err(CoreError::Conflict(_))), "{refused:?}");
        // A direct publish of a fetched version is refused too.
        let direct = registry.publish_version("store", &id, "fetched", version("1.0.0", digests)).await;
        assert!(matches!(direct, Err(CoreError::Conflict(_))), "{direct:?}");
    }

    #[tokio::test]
    async fn chains_resolve_in_order_and_skip_what_is_not_admitted() {
        let registry = registry();
        let id = npm("pkg");
        let first = blob(&registry, b"first").await;
        let second = blob(&registry, b"second").await;
        registry.publish_version("a", &id, "pkg", version("1.0.0", first.clone())).await.unwrap();
        registry.publish_version("b", &id, "pkg", version("1.0.0", second.clone())).await.unwrap();
        registry.publish_version("b", &id, "pkg", version("2.0.0", second.clone())).await.unwrap();
        let chain = ["a".to_owned(), "b".to_owned()];
        let merged = registry.resolve_package(&chain, &id, |_| true).await.unwrap().unwrap();
        assert_eq!(merged.versions["1.0.0"].assets["pkg-1.0.0.tgz"].digests.sha256, first.sha256);
        assert!(merged.versions.contains_key("2.0.0"));
        assert_eq!(merged.tags["latest"], "1.0.0", "the first repository's tag wins");
        let only_a = registry.resolve_package(&chain, &id, |r| r == "a").await.unwrap().unwrap();
        assert!(!only_a.versions.contains_key("2.0.0"));
        assert!(registry.resolve_package(&chain, &npm("none"), |_| true).await.unwrap().is_none());
    }
}
