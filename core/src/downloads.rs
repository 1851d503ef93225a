//! Which versions were downloaded lately, for cleanup rules' `notDownloadedFor`.
//!
//! A download is noted in memory (a set lookup per request); each process writes the set
//! of versions it saw downloaded today, now and then, as an object of its own for that day
//! (`downloads/days/{day}/{writer}.json`, rewritten whole). A busy registry so makes one
//! storage write per flush whatever its traffic, and replicas never write the same object.
//! The collector reads the days a rule looks back over and deletes days older than
//! [`DOWNLOADS_KEPT_DAYS`].
//!
//! A version counts as downloaded on a day when any Repository of the Domain served one of
//! its files that day: a version used through a chain keeps its copies in every Repository
//! of the chain alive.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use wharf_api::repository::DOWNLOADS_KEPT_DAYS;
use wharf_storage::{Created, Storage, keys};

use crate::{CoreError, PackageId};

/// Versions one shard holds before its writer starts another for the same day, so no
/// object (nor the memory behind it) grows without bound on a busy day.
const SHARD_VERSIONS: usize = 100_000;

/// A downloaded version: (format, package name as stored, version).
type Downloaded = (String, String, String);

/// What a process notes between flushes.
pub struct DownloadLog {
    /// Names this process's objects: host (the pod) and a random suffix, so a restarted
    /// process never overwrites what the one before it wrote.
    writer: String,
    shards: Mutex<BTreeMap<(NaiveDate, u32), Shard>>,
}

#[derive(Default)]
struct Shard {
    versions: HashSet<Downloaded>,
    /// Holds downloads not written yet.
    dirty: bool,
}

/// One shard as stored: format → package → versions.
#[derive(Serialize, Deserialize, Default)]
struct StoredShard {
    versions: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// When recording began (see [`keys::downloads_since`]).
#[derive(Serialize, Deserialize)]
struct Since {
    since: DateTime<Utc>,
}

/// A name for the objects one process writes: host (the pod) and a random suffix, so a
/// restarted process never overwrites what the one before it wrote.
pub fn writer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "registry".to_owned());
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(63).collect();
    format!("{host}-{:016x}", rand::random::<u64>())
}

impl Default for DownloadLog {
    fn default() -> Self {
        DownloadLog { writer: writer_name(), shards: Mutex::default() }
    }
}

impl DownloadLog {
    /// Notes that a file of `version` was served.
    pub fn record(&self, id: &PackageId, version: &str) {
        self.record_on(Utc::now().date_naive(), id, version);
    }

    fn record_on(&self, day: NaiveDate, id: &PackageId, version: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let today = shards.range((day, 0)..=(day, u32::MAX)).next_back().map(|(key, _)| *key);
        let key = match today {
            Some(key) if shards[&key].versions.len() < SHARD_VERSIONS => key,
            Some((_, sequence)) => (day, sequence + 1),
            None => (day, 0),
        };
        let shard = shards.entry(key).or_default();
        let downloaded = (id.format.as_str().to_owned(), id.name.clone(), version.to_owned());
        if shard.versions.insert(downloaded) {
            shard.dirty = true;
        }
    }

    /// Notes when recording began, unless a process of the Domain has already: a serving
    /// process calls this before it serves.
    pub async fn begin(storage: &Storage) -> Result<(), CoreError> {
        if let Created::Created = storage.create_json(&keys::downloads_since(), &Since { since: Utc::now() }).await? {
            tracing::info!("recording downloads for cleanup rules from now on");
        }
        Ok(())
    }

    /// Writes what was noted since the last flush. A shard that fails to write is tried
    /// again next time.
    pub async fn flush(&self, storage: &Storage) -> Result<(), CoreError> {
        let dirty: Vec<((NaiveDate, u32), StoredShard)> = {
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            shards
                .iter_mut()
                .filter(|(_, shard)| shard.dirty)
                .map(|(key, shard)| {
                    shard.dirty = false;
                    let mut stored = StoredShard::default();
                    for (format, name, version) in &shard.versions {
                        stored
                            .versions
                            .entry(format.clone())
                            .or_default()
                            .entry(name.clone())
                            .or_default()
                            .insert(version.clone());
                    }
                    (*key, stored)
                })
                .collect()
        };
        let mut failed = None;
        for ((day, sequence), stored) in dirty {
            let key = keys::download_shard(&day.to_string(), &format!("{}-{sequence}", self.writer));
            if let Err(error) = storage.put_json(&key, &stored).await {
                let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(shard) = shards.get_mut(&(day, sequence)) {
                    shard.dirty = true;
                }
                failed = Some(error);
            }
        }
        // Earlier shards are complete once written: nothing is noted on a past day.
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(newest) = shards.keys().next_back().copied() {
            shards.retain(|key, shard| *key == newest || shard.dirty);
        }
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// The downloads of the last days, as the collector reads them.
#[derive(Debug, Default)]
pub struct RecentDownloads {
    /// When recording began; `None` when it has not.
    pub since: Option<DateTime<Utc>>,
    /// The last day each version read was downloaded.
    last: HashMap<Downloaded, NaiveDate>,
}

impl RecentDownloads {
    /// Reads the days from `first` on.
    pub async fn read(storage: &Storage, first: NaiveDate) -> Result<RecentDownloads, CoreError> {
        let since = storage.read_json::<Since>(&keys::downloads_since()).await?.map(|since| since.since);
        let mut recent = RecentDownloads { since, last: HashMap::new() };
        for day in storage.list_children(&keys::download_days()).await? {
            let Ok(date) = day.parse::<NaiveDate>() else { continue };
            if date < first {
                continue;
            }
            let mut shards = storage.list_objects(&keys::download_days().join(day.as_str()));
            while let Some(shard) = shards.next().await {
                let shard = shard?;
                let Some(stored) = storage.read_json::<StoredShard>(&shard.key).await? else { continue };
                for (format, packages) in stored.versions {
                    for (name, versions) in packages {
                        for version in versions {
                            let last = recent.last.entry((format.clone(), name.clone(), version)).or_insert(date);
                            *last = (*last).max(date);
                        }
                    }
                }
            }
        }
        Ok(recent)
    }

    /// An empty record begun at `since` (tests of the selection).
    pub fn recorded_since(since: DateTime<Utc>) -> RecentDownloads {
        RecentDownloads { since: Some(since), last: HashMap::new() }
    }

    /// Notes a download directly (tests of the selection).
    pub fn note(&mut self, id: &PackageId, version: &str, day: NaiveDate) {
        let last = self.last.entry((id.format.as_str().to_owned(), id.name.clone(), version.to_owned())).or_insert(day);
        *last = (*last).max(day);
    }

    /// Whether `version`, created at `created`, went undownloaded from `cutoff` until now,
    /// as far as the record tells: never when recording began after `cutoff`.
    pub fn unused_since(&self, id: &PackageId, version: &str, created: DateTime<Utc>, cutoff: DateTime<Utc>) -> bool {
        if self.since.is_none_or(|since| since > cutoff) || created > cutoff {
            return false;
        }
        let key = (id.format.as_str().to_owned(), id.name.clone(), version.to_owned());
        self.last.get(&key).is_none_or(|day| *day < cutoff.date_naive())
    }

    /// Deletes the days older than [`DOWNLOADS_KEPT_DAYS`]; how many days went.
    pub async fn forget_old_days(storage: &Storage, now: DateTime<Utc>, dry_run: bool) -> Result<u64, CoreError> {
        let oldest_kept = (now - chrono::Duration::days(DOWNLOADS_KEPT_DAYS as i64)).date_naive();
        let mut forgotten = 0;
        for day in storage.list_children(&keys::download_days()).await? {
            if day.parse::<NaiveDate>().is_ok_and(|date| date < oldest_kept) {
                if !dry_run {
                    storage.purge(&keys::download_days().join(day.as_str())).await?;
                }
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_api::PackageFormat;

    fn storage() -> Storage {
        Storage::new(std::sync::Arc::new(object_store::memory::InMemory::new()))
    }

    #[tokio::test]
    async fn downloads_are_written_once_per_flush_and_read_back_by_day() {
        let storage = storage();
        let log = DownloadLog::default();
        let left_pad = PackageId::new(PackageFormat::Npm, "left-pad".to_owned());
        let day = |d: &str| d.parse::<NaiveDate>().unwrap();
        for _ in 0..1000 {
            log.record_on(day("2026-11-01"), &left_pad, "1.0.0");
        }
        log.record_on(day("2026-11-02"), &left_pad, "1.1.0");
        DownloadLog::begin(&storage).await.unwrap();
        log.flush(&storage).await.unwrap();
        let shards: Vec<_> = storage.list_objects(&keys::download_days()).collect().await;
        assert_eq!(shards.len(), 2, "one object per day for this writer: {shards:?}");
        // Nothing new: nothing written; the past day is no longer held.
        log.flush(&storage).await.unwrap();
        assert_eq!(log.shards.lock().unwrap().len(), 1);

        let recent = RecentDownloads::read(&storage, day("2026-11-02")).await.unwrap();
        assert!(recent.since.is_some());
        let created = "2026-01-01T00:00:00Z".parse().unwrap();
        let cutoff = |d: &str| format!("{d}T00:00:00Z").parse::<DateTime<Utc>>().unwrap();
        // Day 1 was not read: 1.0.0 looks unused from the 2nd, 1.1.0 does not.
        let recent = RecentDownloads { since: Some(created), ..recent };
        assert!(recent.unused_since(&left_pad, "1.0.0", created, cutoff("2026-11-02")));
        assert!(!recent.unused_since(&left_pad, "1.1.0", created, cutoff("2026-11-02")));
        let all = RecentDownloads::read(&storage, day("2026-10-01")).await.unwrap();
        let all = RecentDownloads { since: Some(created), ..all };
        assert!(!all.unused_since(&left_pad, "1.0.0", created, cutoff("2026-11-01")));
        assert!(all.unused_since(&left_pad, "1.0.0", created, cutoff("2026-11-02")));
        // Young versions, and a record younger than the window, say nothing.
        assert!(!all.unused_since(&left_pad, "2.0.0", cutoff("2026-11-05"), cutoff("2026-11-02")));
        let young = RecentDownloads { since: Some(cutoff("2026-11-03")), ..RecentDownloads::default() };
        assert!(!young.unused_since(&left_pad, "2.0.0", created, cutoff("2026-11-02")));
    }

    #[tokio::test]
    async fn a_full_shard_is_followed_by_another_and_old_days_are_forgotten() {
        let storage = storage();
        let log = DownloadLog::default();
        let day = "2026-11-01".parse::<NaiveDate>().unwrap();
        let id = PackageId::new(PackageFormat::Npm, "many".to_owned());
        for version in 0..=SHARD_VERSIONS {
            log.record_on(day, &id, &version.to_string());
        }
        assert_eq!(log.shards.lock().unwrap().len(), 2);
        log.flush(&storage).await.unwrap();
        let recent = RecentDownloads::read(&storage, day).await.unwrap();
        assert_eq!(recent.last.len(), SHARD_VERSIONS + 1);
        let later = Utc::now() + chrono::Duration::days(DOWNLOADS_KEPT_DAYS as i64 + 400);
        assert_eq!(RecentDownloads::forget_old_days(&storage, later, true).await.unwrap(), 1);
        assert_eq!(RecentDownloads::forget_old_days(&storage, later, false).await.unwrap(), 1);
        assert!(storage.list_children(&keys::download_days()).await.unwrap().is_empty());
    }
}
