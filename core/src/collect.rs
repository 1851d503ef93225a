//! The storage collector: frees what nothing in the Domain references any more —
//! blobs of Disposed and deleted versions (unless another version, in any Repository,
//! names the same bytes), staging leftovers under `uploads/` and index revisions left
//! behind by pruning. Does storage I/O; one collector at a time per Domain (a lease in
//! storage), whichever replica or process runs it.
//!
//! A blob is freed only when it was unreferenced throughout: it is a candidate if it
//! was last written before the grace period began, the mark reads every package's
//! newest index (and the records of versions an interrupted publish left unindexed,
//! and the kept upstream documents), and the blob is looked at again just before it
//! is deleted. A publish moves its bytes onto the blob's key even when the Domain
//! holds them already ([`wharf_storage::StagedBlob::commit`]), so a blob a publish is
//! about to name always looks recent; the grace period must outlast the few requests
//! between a publish's commit and its index update (the default, an hour, does by far).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use wharf_api::usage::UsageReport;
use wharf_api::{CleanupOrigin, CleanupRule, PackageFormat, PackagePattern};
use wharf_storage::{LeaseRecord, Storage, keys};

use crate::downloads::RecentDownloads;
use crate::{CoreError, PackageId, PackageIndex, Registry, VersionRecord, VersionStatus, decode_index};

/// How long a blob must have been left alone before the collector may free it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// How long one collection may hold the lease before another may take over.
const LEASE: Duration = Duration::from_secs(3 * 3600);
/// Blobs a dry run lists by name (it counts them all).
const LISTED: usize = 1000;

/// How a collection runs.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    pub grace: Duration,
    /// Report what would be disposed of and freed, change nothing.
    pub dry_run: bool,
    /// Each Repository's cleanup rules, by Repository name.
    pub cleanup: BTreeMap<String, Vec<CleanupRule>>,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions { grace: DEFAULT_GRACE, dry_run: false, cleanup: BTreeMap::new() }
    }
}

/// A version a cleanup rule disposed of (or would).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisposedVersion {
    pub repository: String,
    pub format: String,
    pub package: String,
    pub version: String,
    pub rule: String,
}

/// A file the collector freed (or would free).
#[derive(Clone, Debug)]
pub struct FreedBlob {
    pub sha256: String,
    pub size: u64,
}

/// What a collection found and freed.
#[derive(Clone, Debug, Default)]
pub struct CollectReport {
    pub dry_run: bool,
    /// Packages whose index was read.
    pub packages: u64,
    pub blobs: u64,
    /// Blobs some version, record or kept document names.
    pub referenced_blobs: u64,
    /// Blobs written within the grace period, left for a later run.
    pub recent_blobs: u64,
    pub freed_blobs: u64,
    pub freed_bytes: u64,
    /// Up to 1,000 of the freed blobs.
    pub freed: Vec<FreedBlob>,
    pub freed_uploads: u64,
    pub freed_revisions: u64,
    /// Days of download records past the 400 the Domain keeps.
    pub freed_download_days: u64,
    /// Versions cleanup rules disposed of, and up to 1,000 of them.
    pub disposed_versions: u64,
    pub disposed: Vec<DisposedVersion>,
    pub seconds: f64,
    /// What the Domain holds after the collection.
    pub usage: UsageReport,
}

/// The referenced blobs, as raw SHA-256 (32 bytes each: 100,000 blobs take a few MiB).
#[derive(Default)]
struct Marks(HashSet<[u8; 32]>);

impl Marks {
    fn keep(&mut self, sha256: &str) {
        if let Some(raw) = raw_sha256(sha256) {
            self.0.insert(raw);
        }
    }

    fn contains(&self, sha256: &str) -> bool {
        raw_sha256(sha256).is_some_and(|raw| self.0.contains(&raw))
    }
}

fn raw_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let mut raw = [0; 32];
    hex::decode_to_slice(hex_digest, &mut raw).ok()?;
    Some(raw)
}

impl Registry {
    /// Runs one collection on behalf of `holder` (who runs it, for the lease). `Ok(Err)`
    /// when another collection holds the lease: who, until when.
    pub async fn collect(
        &self,
        holder: &str,
        options: &CollectOptions,
    ) -> Result<Result<CollectReport, LeaseRecord>, CoreError> {
        // This process's downloads count in this run; other replicas' since their last
        // flush (minutes) do not, which a window of days does not notice.
        if let Err(error) = self.flush_downloads().await {
            tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "downloads could not be recorded");
        }
        let lease = match self.storage.acquire_lease("gc", holder, LEASE).await? {
            Ok(lease) => lease,
            Err(held) => return Ok(Err(held)),
        };
        let report = self.collect_holding_lease(options).await;
        lease.release().await;
        report.map(Ok)
    }

    async fn collect_holding_lease(&self, options: &CollectOptions) -> Result<CollectReport, CoreError> {
        let started = std::time::Instant::now();
        let storage = &self.storage;
        let cutoff = Utc::now() - chrono::Duration::from_std(options.grace).unwrap_or(chrono::Duration::hours(1));
        let mut report = CollectReport { dry_run: options.dry_run, ..Default::default() };

        // Candidates first: whatever is written after this listing is not one.
        let mut candidates = Vec::new();
        let mut stored_bytes = 0;
        let mut blobs = storage.list_objects(&keys::blobs());
        while let Some(blob) = blobs.next().await {
            let blob = blob?;
            report.blobs += 1;
            stored_bytes += blob.size;
            match blob.key.filename() {
                Some(sha256) if blob.modified < cutoff => candidates.push((sha256.to_owned(), blob.size)),
                _ => report.recent_blobs += 1,
            }
        }
        drop(blobs);

        let mut marks = Marks::default();
        let downloads = match longest_unused_window(&options.cleanup) {
            Some(window) => RecentDownloads::read(storage, (Utc::now() - window).date_naive()).await?,
            None => RecentDownloads::default(),
        };
        self.mark_packages(&mut marks, &mut report, cutoff, options, &downloads).await?;
        report.freed_download_days = RecentDownloads::forget_old_days(storage, Utc::now(), options.dry_run).await?;
        wharf_upstream::kept_document_blobs(storage, |sha256| marks.keep(sha256)).await?;

        for (sha256, size) in candidates {
            if marks.contains(&sha256) {
                report.referenced_blobs += 1;
                continue;
            }
            // Written again since it was listed: a publish is about to name it.
            match storage.head(&keys::blob(&sha256)).await? {
                None => continue,
                Some(now) if now.modified >= cutoff => {
                    report.recent_blobs += 1;
                    continue;
                }
                Some(_) => {}
            }
            if !options.dry_run {
                storage.delete_blob(&sha256).await?;
            }
            report.freed_blobs += 1;
            report.freed_bytes += size;
            if report.freed.len() < LISTED {
                report.freed.push(FreedBlob { sha256, size });
            }
        }

        // A staged upload lives for one request; completed ones older than the grace
        // period belong to requests that died between staging and commit.
        let mut uploads = storage.list_objects(&keys::uploads());
        while let Some(upload) = uploads.next().await {
            let upload = upload?;
            if upload.modified < cutoff {
                if !options.dry_run {
                    storage.delete(&upload.key).await?;
                }
                report.freed_uploads += 1;
            }
        }
        report.usage.blobs = report.blobs - report.freed_blobs;
        report.usage.stored_bytes = stored_bytes - report.freed_bytes;
        report.usage.measured_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Marks every blob a package names, in every Repository and format, and frees index
    /// revisions older than the two newest that pruning left behind.
    async fn mark_packages(
        &self,
        marks: &mut Marks,
        report: &mut CollectReport,
        cutoff: DateTime<Utc>,
        options: &CollectOptions,
        downloads: &RecentDownloads,
    ) -> Result<(), CoreError> {
        let dry_run = options.dry_run;
        let storage = &self.storage;
        for repo in storage.list_children(&keys::repositories()).await? {
            for format in storage.list_children(&keys::repository(&repo)).await? {
                for name in storage.list_children(&keys::packages(&repo, &format)).await? {
                    report.packages += 1;
                    let dir = keys::package_index(&repo, &format, &name);
                    let index = match storage.latest_revision(&dir).await? {
                        Some((revision, bytes)) => Some(decode_index(&dir, revision, &bytes)?),
                        None => None,
                    };
                    let disposed = match (&index, options.cleanup.get(&repo), format.parse::<PackageFormat>()) {
                        (Some(snapshot), Some(rules), Ok(parsed)) => {
                            let id = PackageId::new(parsed, name.clone());
                            let cleanup = Cleanup { rules, downloads, dry_run };
                            self.apply_cleanup(&repo, &id, &snapshot.index, &cleanup, report).await?
                        }
                        _ => BTreeSet::new(),
                    };
                    if let Some(snapshot) = &index {
                        let usage = report.usage.repositories.entry(repo.clone()).or_default();
                        usage.packages += 1;
                        for (version, entry) in &snapshot.index.versions {
                            if disposed.contains(version) {
                                continue;
                            }
                            if entry.status != crate::VersionStatus::Disposed {
                                usage.versions += 1;
                                usage.bytes += entry.assets.values().map(|asset| asset.digests.size).sum::<u64>();
                                if entry.fetched_from.is_none() {
                                    let published = entry.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                                    // RFC 3339 in UTC with whole seconds sorts as time does.
                                    if usage.last_published.as_ref().is_none_or(|last| *last < published) {
                                        usage.last_published = Some(published);
                                    }
                                }
                            }
                            entry.assets.values().for_each(|asset| asset.blobs().for_each(|sha| marks.keep(sha)));
                        }
                        report.freed_revisions +=
                            free_old_revisions(storage, &dir, snapshot.revision, cutoff, dry_run).await?;
                    }
                    // A publish interrupted between its record and its index update is
                    // completed by the next attempt, which needs the record's bytes.
                    for version in storage.list_children(&keys::package_versions(&repo, &format, &name)).await? {
                        if index.as_ref().is_some_and(|snapshot| snapshot.index.versions.contains_key(&version)) {
                            continue;
                        }
                        let key = keys::version_record(&repo, &format, &name, &version);
                        if let Some(record) = storage.read_json::<VersionRecord>(&key).await? {
                            record.assets.iter().flat_map(|asset| asset.blobs()).for_each(|sha256| marks.keep(sha256));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Registry {
    /// Disposes of what `rules` select in one package (or, in a dry run, only says so);
    /// the versions disposed of, whose files then count as named by nothing.
    async fn apply_cleanup(
        &self,
        repo: &str,
        id: &PackageId,
        index: &PackageIndex,
        cleanup: &Cleanup<'_>,
        report: &mut CollectReport,
    ) -> Result<BTreeSet<String>, CoreError> {
        let mut disposed = BTreeSet::new();
        for (version, rule) in expired_versions(index, id, cleanup.rules, cleanup.downloads, Utc::now()) {
            if !cleanup.dry_run {
                let current = index.versions.get(&version).map(|entry| entry.status);
                let by = format!("cleanup/{rule}");
                match self.set_status(repo, id, &version, current, VersionStatus::Disposed, &by).await {
                    Ok(()) => {}
                    // Changed since it was read (by a person, or another run): leave it.
                    Err(CoreError::StatusMismatch { .. } | CoreError::Conflict(_)) => continue,
                    Err(error) => return Err(error),
                }
            }
            report.disposed_versions += 1;
            if report.disposed.len() < LISTED {
                report.disposed.push(DisposedVersion {
                    repository: repo.to_owned(),
                    format: id.format.as_str().to_owned(),
                    package: index.display_name.clone(),
                    version: version.clone(),
                    rule,
                });
            }
            disposed.insert(version);
        }
        Ok(disposed)
    }
}

/// The versions of a package `rules` select, with the rule that selects each: the first
/// rule whose every condition holds. Versions a tag points at (npm's `latest`) and
/// unfinished uploads are never selected.
pub fn expired_versions(
    index: &PackageIndex,
    id: &PackageId,
    rules: &[CleanupRule],
    downloads: &RecentDownloads,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let (namespace, name) = crate::policy::coordinates(id);
    let mut live: Vec<(&String, &crate::VersionEntry)> = index
        .versions
        .iter()
        .filter(|(_, entry)| !matches!(entry.status, VersionStatus::Disposed | VersionStatus::Unfinished))
        .collect();
    live.sort_by(|a, b| b.1.created.cmp(&a.1.created).then_with(|| b.0.cmp(a.0)));
    let mut selected: Vec<(String, String)> = Vec::new();
    for rule in rules {
        let covered = rule.packages.is_empty()
            || rule
                .packages
                .iter()
                .filter_map(|text| PackagePattern::parse(text).ok())
                .any(|pattern| pattern.matches(id.format, &namespace, &name));
        let older_than = rule.older_than.as_deref().map(wharf_api::parse_duration);
        let unused_for = rule.not_downloaded_for.as_deref().map(wharf_api::parse_duration);
        let limitless = older_than.is_none() && unused_for.is_none() && rule.keep_newest.is_none();
        if !covered || matches!(older_than, Some(Err(_))) || matches!(unused_for, Some(Err(_))) || limitless {
            continue;
        }
        let before = |age: std::time::Duration| now - chrono::Duration::from_std(age).unwrap_or_default();
        let cutoff = older_than.and_then(Result::ok).map(before);
        let unused_cutoff = unused_for.and_then(Result::ok).map(before);
        let of_origin = live.iter().filter(|(_, entry)| match rule.origin {
            CleanupOrigin::Any => true,
            CleanupOrigin::Cached => entry.fetched_from.is_some(),
            CleanupOrigin::Published => entry.fetched_from.is_none(),
        });
        for (rank, (version, entry)) in of_origin.enumerate() {
            let kept = rule.keep_newest.is_some_and(|newest| rank < newest as usize);
            let young = cutoff.is_some_and(|cutoff| entry.created > cutoff);
            let used = unused_cutoff.is_some_and(|cutoff| !downloads.unused_since(id, version, entry.created, cutoff));
            let tagged = index.tags.values().any(|tagged| tagged == *version);
            if !kept && !young && !used && !tagged && !selected.iter().any(|(chosen, _)| chosen == *version) {
                selected.push(((*version).clone(), rule.name.clone()));
            }
        }
    }
    selected
}

/// How one package's cleanup runs.
struct Cleanup<'a> {
    rules: &'a [CleanupRule],
    downloads: &'a RecentDownloads,
    dry_run: bool,
}

/// How far back the download record is read: the longest `notDownloadedFor` of any rule.
fn longest_unused_window(cleanup: &BTreeMap<String, Vec<CleanupRule>>) -> Option<chrono::Duration> {
    cleanup
        .values()
        .flatten()
        .filter_map(|rule| rule.not_downloaded_for.as_deref())
        .filter_map(|text| wharf_api::parse_duration(text).ok())
        .filter_map(|window| chrono::Duration::from_std(window).ok())
        .max()
}

/// Frees revisions older than `newest - 1` written before `cutoff`: strays and what a
/// failed prune left. The two newest stay, as pruning keeps them.
async fn free_old_revisions(
    storage: &Storage,
    dir: &object_store::path::Path,
    newest: u64,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, CoreError> {
    let mut freed = 0;
    let mut revisions = storage.list_objects(dir);
    while let Some(revision) = revisions.next().await {
        let revision = revision?;
        let number = revision.key.filename().and_then(|f| f.strip_suffix(".json")).and_then(|n| n.parse::<u64>().ok());
        if number.is_some_and(|number| number + 1 < newest) && revision.modified < cutoff {
            if !dry_run {
                storage.delete(&revision.key).await?;
            }
            freed += 1;
        }
    }
    Ok(freed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use wharf_api::PackageFormat;
    use wharf_storage::{BlobDigests, BodyError, Created};

    use super::*;
    use crate::{NewAsset, NewVersion, PackageId, VersionStatus};

    /// A registry on a local folder, whose file times a test can move back.
    fn registry(folder: &std::path::Path) -> Arc<Registry> {
        let store = object_store::local::LocalFileSystem::new_with_prefix(folder).unwrap().with_automatic_cleanup(true);
        Arc::new(Registry::new(Storage::exclusive(Arc::new(store))))
    }

    /// Makes every file under `folder` look two hours old.
    fn age(folder: &std::path::Path) {
        let past = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
        for entry in walk(folder) {
            std::fs::File::options().write(true).open(&entry).unwrap().set_modified(past).unwrap();
        }
    }

    fn walk(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
        }
        files
    }

    async fn blob(registry: &Registry, bytes: &[u8]) -> BlobDigests {
        let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::copy_from_slice(bytes))]);
        registry.stage_asset(body, 1 << 20).await.unwrap().commit().await.unwrap()
    }

    fn version(v: &str, digests: BlobDigests) -> NewVersion {
        NewVersion {
            version: v.into(),
            metadata: serde_json::json!({"version": v}),
            assets: vec![NewAsset { name: format!("pkg-{v}.tgz"), digests, metadata: Default::default() }],
            tags: Vec::new(),
        }
    }

    async fn exists(registry: &Registry, digests: &BlobDigests) -> bool {
        registry.storage.head(&keys::blob(&digests.sha256)).await.unwrap().is_some()
    }

    fn now() -> CollectOptions {
        CollectOptions { grace: Duration::ZERO, ..Default::default() }
    }

    #[tokio::test]
    async fn disposed_bytes_are_freed_once_no_version_in_the_domain_names_them() {
        let folder = tempfile::tempdir().unwrap();
        let registry = registry(folder.path());
        let (web, data) = (PackageId::new(PackageFormat::Npm, "pkg"), PackageId::new(PackageFormat::Npm, "copy"));
        let shared = blob(&registry, b"the same tarball in two repositories").await;
        let own = blob(&registry, b"only in 2.0.0").await;
        registry.publish_version("web", &web, "pkg", version("1.0.0", shared.clone())).await.unwrap();
        registry.publish_version("web", &web, "pkg", version("2.0.0", own.clone())).await.unwrap();
        registry.publish_version("data", &data, "copy", version("1.0.0", shared.clone())).await.unwrap();

        registry.set_status("web", &web, "1.0.0", None, VersionStatus::Disposed, "alice").await.unwrap();
        registry.set_status("web", &web, "2.0.0", None, VersionStatus::Disposed, "alice").await.unwrap();
        let dry = registry.collect("test", &CollectOptions { dry_run: true, ..now() }).await.unwrap().unwrap();
        assert_eq!((dry.freed_blobs, dry.freed_bytes), (1, own.size), "{dry:?}");
        assert!(exists(&registry, &own).await, "a dry run frees nothing");

        let report = registry.collect("test", &now()).await.unwrap().unwrap();
        assert_eq!(report.freed_blobs, 1, "{report:?}");
        assert_eq!(report.freed[0].sha256, own.sha256);
        assert!(!exists(&registry, &own).await);
        assert!(exists(&registry, &shared).await, "another repository's version still names the shared bytes");
        let data_usage = &report.usage.repositories["data"];
        assert_eq!((data_usage.packages, data_usage.versions, data_usage.bytes), (1, 1, shared.size));
        assert!(data_usage.last_published.is_some(), "{data_usage:?}");
        assert_eq!(report.usage.repositories["web"].versions, 0, "Disposed versions hold nothing");
        assert_eq!((report.usage.blobs, report.usage.stored_bytes), (1, shared.size));
        // The tombstone says who disposed of the version, and when.
        let snapshot = registry.package("web", &web).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].status, VersionStatus::Disposed);
        let change = snapshot.index.status_changes["1.0.0"].last().unwrap();
        assert_eq!((change.status, change.by.as_str()), (VersionStatus::Disposed, "alice"));

        registry.set_status("data", &data, "1.0.0", None, VersionStatus::Disposed, "bob").await.unwrap();
        let report = registry.collect("test", &now()).await.unwrap().unwrap();
        assert_eq!(report.freed_blobs, 1, "{report:?}");
        assert!(!exists(&registry, &shared).await);
    }

    #[tokio::test]
    async fn the_grace_period_keeps_bytes_a_publish_is_about_to_name() {
        let folder = tempfile::tempdir().unwrap();
        let registry = registry(folder.path());
        let id = PackageId::new(PackageFormat::Npm, "pkg");
        let bytes = b"published, disposed, then published again as another version";
        let first = blob(&registry, bytes).await;
        registry.publish_version("main", &id, "pkg", version("1.0.0", first.clone())).await.unwrap();
        registry.set_status("main", &id, "1.0.0", None, VersionStatus::Disposed, "alice").await.unwrap();
        age(folder.path());
        // A new publish of the same bytes has committed them, and not yet indexed them,
        // when a collection runs: the commit made the blob recent, so it stays.
        let again = blob(&registry, bytes).await;
        let report = registry.collect("test", &CollectOptions::default()).await.unwrap().unwrap();
        assert_eq!((report.freed_blobs, report.recent_blobs), (0, 1), "{report:?}");
        registry.publish_version("main", &id, "pkg", version("2.0.0", again.clone())).await.unwrap();
        age(folder.path());
        let report = registry.collect("test", &CollectOptions::default()).await.unwrap().unwrap();
        assert_eq!((report.freed_blobs, report.referenced_blobs), (0, 1), "{report:?}");
        assert!(exists(&registry, &again).await);
    }

    #[tokio::test]
    async fn interrupted_publishes_leases_uploads_and_old_revisions() {
        let folder = tempfile::tempdir().unwrap();
        let registry = registry(folder.path());
        let id = PackageId::new(PackageFormat::Npm, "pkg");
        // A publish that created its record and died before its index update: the next
        // attempt completes it from the record, so its bytes stay.
        let interrupted = blob(&registry, b"record written, index not").await;
        let record = VersionRecord {
            version: "9.0.0".into(),
            created: Utc::now(),
            metadata: serde_json::json!({}),
            assets: vec![crate::AssetRef {
                name: "pkg-9.0.0.tgz".into(),
                digests: interrupted.clone(),
                created: Utc::now(),
                metadata: serde_json::Value::Null,
            }],
            published_by: None,
        };
        let key = keys::version_record("main", "npm", "pkg", "9.0.0");
        assert!(matches!(registry.storage.create_json(&key, &record).await.unwrap(), Created::Created));
        for i in 0..5 {
            let digests = blob(&registry, format!("version {i}").as_bytes()).await;
            registry.publish_version("main", &id, "pkg", version(&format!("1.0.{i}"), digests)).await.unwrap();
        }
        // A staged upload whose request died.
        let staged = registry
            .stage_asset(futures::stream::iter([Ok::<_, BodyError>(Bytes::from_static(b"left"))]), 1 << 20)
            .await
            .unwrap();
        std::mem::forget(staged);

        // One collector at a time.
        let held = registry.storage.acquire_lease("gc", "replica-a", Duration::from_secs(60)).await.unwrap().unwrap();
        let refused = registry.collect("replica-b", &now()).await.unwrap().unwrap_err();
        assert_eq!(refused.holder, "replica-a");
        held.release().await;

        age(folder.path());
        let report = registry.collect("replica-b", &CollectOptions::default()).await.unwrap().unwrap();
        assert!(exists(&registry, &interrupted).await, "{report:?}");
        assert_eq!((report.freed_blobs, report.freed_uploads), (0, 1), "{report:?}");
        let revisions = registry.storage.list_files(&keys::package_index("main", "npm", "pkg")).await.unwrap();
        assert_eq!(revisions.len(), 2, "the two newest revisions stay: {revisions:?}");
        assert!(registry.package("main", &id).await.unwrap().unwrap().index.versions.contains_key("1.0.4"));
    }

    #[test]
    fn cleanup_rules_select_by_pattern_origin_age_and_rank_and_spare_tagged_versions() {
        use crate::VersionEntry;
        let now = Utc::now();
        let entry = |days: i64, cached: bool| VersionEntry {
            status: VersionStatus::Published,
            created: now - chrono::Duration::days(days),
            metadata: serde_json::json!({}),
            assets: Default::default(),
            deprecated: None,
            withdrawn: false,
            fetched_from: cached.then(|| "npmjs".to_owned()),
            published_by: None,
        };
        let mut index = PackageIndex::default();
        for (version, days, cached) in
            [("1.0.0", 400, true), ("1.1.0", 200, true), ("1.2.0", 100, false), ("1.3.0", 5, true), ("2.0.0", 1, true)]
        {
            index.versions.insert(version.into(), entry(days, cached));
        }
        index.versions.get_mut("1.1.0").unwrap().status = VersionStatus::Disposed;
        index.tags.insert("legacy".into(), "1.0.0".into());
        let id = PackageId::new(PackageFormat::Npm, "@acme/tools");
        let rule = |name: &str, packages: &[&str], origin, older_than: Option<&str>, keep_newest| CleanupRule {
            name: name.into(),
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
            origin,
            older_than: older_than.map(Into::into),
            not_downloaded_for: None,
            keep_newest,
        };
        let names = |rules: &[CleanupRule]| {
            expired_versions(&index, &id, rules, &RecentDownloads::default(), now)
                .into_iter()
                .map(|(v, rule)| format!("{v}:{rule}"))
                .collect::<Vec<_>>()
        };
        // Cached and older than 30 days: 1.0.0 is tagged, 1.1.0 Disposed already, 1.2.0 published here.
        assert!(names(&[rule("old", &[], CleanupOrigin::Cached, Some("30d"), None)]).is_empty());
        assert_eq!(names(&[rule("old", &[], CleanupOrigin::Any, Some("30d"), None)]), ["1.2.0:old"]);
        // The newest two of every origin stay; of the cached ones, the newest one.
        assert_eq!(names(&[rule("two", &[], CleanupOrigin::Any, None, Some(2))]), ["1.2.0:two"]);
        assert_eq!(names(&[rule("one", &["/npm/acme/*"], CleanupOrigin::Cached, None, Some(1))]), ["1.3.0:one"]);
        assert!(names(&[rule("other", &["/npm/other/*"], CleanupOrigin::Any, None, Some(0))]).is_empty());
        // Both conditions must hold; the first rule that selects a version names it.
        assert!(names(&[rule("both", &[], CleanupOrigin::Any, Some("150d"), Some(1))]).is_empty());
        assert_eq!(
            names(&[
                rule("a", &[], CleanupOrigin::Published, None, Some(0)),
                rule("b", &[], CleanupOrigin::Any, None, Some(1))
            ]),
            ["1.2.0:a", "1.3.0:b"]
        );
    }

    #[test]
    fn not_downloaded_for_spares_what_was_downloaded_within_the_window_and_waits_for_a_full_record() {
        use crate::VersionEntry;
        let now = Utc::now();
        let days_ago = |days: i64| now - chrono::Duration::days(days);
        let mut index = PackageIndex::default();
        for (version, age) in [("1.0.0", 300), ("1.1.0", 200), ("1.2.0", 100), ("1.3.0", 10)] {
            let entry = VersionEntry {
                status: VersionStatus::Published,
                created: days_ago(age),
                metadata: serde_json::json!({}),
                assets: Default::default(),
                deprecated: None,
                withdrawn: false,
                fetched_from: None,
                published_by: None,
            };
            index.versions.insert(version.into(), entry);
        }
        let id = PackageId::new(PackageFormat::Pypi, "requests");
        let unused = |window: &str| CleanupRule {
            name: "unused".into(),
            not_downloaded_for: Some(window.into()),
            ..CleanupRule::default()
        };
        let mut downloads = RecentDownloads::recorded_since(days_ago(365));
        downloads.note(&id, "1.0.0", days_ago(400).date_naive());
        downloads.note(&id, "1.1.0", days_ago(20).date_naive());
        let names = |rules: &[CleanupRule], downloads: &RecentDownloads| {
            expired_versions(&index, &id, rules, downloads, now).into_iter().map(|(v, _)| v).collect::<Vec<_>>()
        };
        // 1.0.0 was last downloaded before the window, 1.2.0 never; 1.1.0 lately; 1.3.0 is young.
        assert_eq!(names(&[unused("90d")], &downloads), ["1.2.0", "1.0.0"]);
        assert_eq!(names(&[unused("15d")], &downloads), ["1.2.0", "1.1.0", "1.0.0"]);
        // With other conditions, all must hold.
        let kept = CleanupRule { keep_newest: Some(3), ..unused("90d") };
        assert_eq!(names(&[kept], &downloads), ["1.0.0"]);
        // A record begun within the window cannot tell: nothing goes by it.
        let fresh = RecentDownloads::recorded_since(days_ago(30));
        assert!(names(&[unused("90d")], &fresh).is_empty());
        assert!(names(&[unused("90d")], &RecentDownloads::default()).is_empty());
    }

    /// Collections racing publishes that reuse disposed bytes: no acknowledged version
    /// ever loses its bytes, and what is unreferenced at the end is freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn collections_racing_publishes_never_free_named_bytes() {
        let folder = tempfile::tempdir().unwrap();
        let registry = registry(folder.path());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let (registry, done) = (registry.clone(), done.clone());
            tokio::spawn(async move {
                let options = CollectOptions { grace: Duration::from_millis(300), ..Default::default() };
                let mut runs = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if registry.collect("collector", &options).await.unwrap().is_ok() {
                        runs += 1;
                    }
                }
                runs
            })
        };
        let publishers = (0..4).map(|publisher| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let id = PackageId::new(PackageFormat::Npm, format!("pkg-{publisher}"));
                let mut kept = Vec::new();
                for i in 0..40u32 {
                    // Five contents shared by everyone: most publishes deduplicate onto
                    // bytes some other version named, or a disposed one left.
                    let digests = blob(&registry, format!("content {}", (i + publisher) % 5).as_bytes()).await;
                    let v = format!("1.0.{i}");
                    registry.publish_version("main", &id, "pkg", version(&v, digests.clone())).await.unwrap();
                    if i % 2 == 0 {
                        registry.set_status("main", &id, &v, None, VersionStatus::Disposed, "ci").await.unwrap();
                    } else {
                        kept.push(digests);
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                kept
            })
        });
        let kept: Vec<BlobDigests> =
            futures::future::join_all(publishers).await.into_iter().flat_map(Result::unwrap).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = collector.await.unwrap();
        assert!(runs > 3, "the collector ran alongside the publishes ({runs} runs)");
        for digests in &kept {
            let body = registry.storage.open_blob(&digests.sha256, digests.size, None).await.unwrap();
            assert!(body.is_some(), "a Published version lost its bytes");
        }
        registry.collect("collector", &now()).await.unwrap().unwrap();
        let left = walk(&folder.path().join("blobs")).len();
        let named: HashSet<&str> = kept.iter().map(|d| d.sha256.as_str()).collect();
        assert_eq!(left, named.len(), "only named bytes are left");
    }
}
