//! What a Domain's storage holds, as the registry's storage collector counts it: the report
//! the registry hands the operator (a ConfigMap it may patch), and the parts of it the
//! operator shows in the Domain's and each Repository's status. Pure data.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The key of the usage ConfigMap that holds the report (JSON).
pub const USAGE_KEY: &str = "usage.json";

/// The keys of the usage ConfigMap holding each registry process's recent copies and
/// deletions (`actions-{process}.json`, a JSON list of [`RepositoryAction`]s), which the
/// operator announces as Events on the Repositories.
pub const ACTIONS_KEY_PREFIX: &str = "actions-";

/// A copy into a Repository, or a deletion from it: what a platform team wants to see in
/// `kubectl describe repository` (publishes are too many; the audit trail has them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryAction {
    /// Unique: an Event is made once per id.
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// `Copied` or `Deleted`.
    pub kind: String,
    /// The Repository copied into, or deleted from.
    pub repository: String,
    /// The package's format (`npm`, …).
    pub format: String,
    /// The package's name, as the format normalises it.
    pub package: String,
    /// The versions copied, or the one deleted.
    pub versions: Vec<String>,
    /// Who did it.
    pub by: String,
    /// The Repository copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl RepositoryAction {
    /// The Event's reason and note.
    pub fn event(&self) -> (&'static str, String) {
        let versions = self.versions.join(", ");
        let package = format!("{} {}", self.format, self.package);
        match &self.source {
            Some(source) => ("VersionsCopied", format!("{} copied {package} {versions} from {source}", self.by)),
            None => ("VersionDeleted", format!("{} deleted {package} {versions}", self.by)),
        }
    }
}

/// One count of the Domain's storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// Per Repository name: what its versions hold.
    pub repositories: BTreeMap<String, RepositoryUsage>,
    /// Files stored, each once however many versions name it.
    pub blobs: u64,
    /// Bytes of those files: what deduplication leaves.
    pub stored_bytes: u64,
    /// When it was counted (RFC 3339).
    pub measured_at: String,
}

/// What one Repository's versions hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryUsage {
    /// Packages of every format.
    pub packages: u64,
    /// Versions not Disposed.
    pub versions: u64,
    /// Bytes their files take, each file counted once per version naming it (files shared
    /// with other versions or Repositories are stored once: see the Domain's usage).
    pub bytes: u64,
    /// When the newest version published here (not fetched from upstream) was published
    /// (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_published: Option<String>,
}

/// A Repository's usage in its status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryUsageStatus {
    /// Packages, versions and bytes.
    #[serde(flatten)]
    pub counts: RepositoryUsage,
    /// `bytes` for people (`kubectl get repositories` shows it).
    pub size: String,
    /// When the registry counted it (RFC 3339); counts are refreshed by each storage
    /// collection.
    pub measured_at: String,
}

/// A Domain's usage in its status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainUsageStatus {
    /// Files stored, each once.
    pub blobs: u64,
    /// Bytes stored after deduplication.
    pub stored_bytes: u64,
    /// Bytes all Repositories' versions name, before deduplication.
    pub logical_bytes: u64,
    /// `storedBytes` for people (`kubectl get domains` shows it).
    pub size: String,
    /// When the registry counted it (RFC 3339).
    pub measured_at: String,
}

impl UsageReport {
    /// The Domain's part.
    pub fn domain_status(&self) -> DomainUsageStatus {
        DomainUsageStatus {
            blobs: self.blobs,
            stored_bytes: self.stored_bytes,
            logical_bytes: self.repositories.values().map(|usage| usage.bytes).sum(),
            size: human_size(self.stored_bytes),
            measured_at: self.measured_at.clone(),
        }
    }

    /// The usage of Repository `name`; a Repository with no package yet holds nothing.
    pub fn repository_status(&self, name: &str) -> RepositoryUsageStatus {
        let counts = self.repositories.get(name).cloned().unwrap_or_default();
        RepositoryUsageStatus { size: human_size(counts.bytes), counts, measured_at: self.measured_at.clone() }
    }
}

/// Bytes in binary units with one decimal, as people read sizes: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn statuses_come_from_the_report() {
        let report = UsageReport {
            repositories: BTreeMap::from([(
                "web".into(),
                RepositoryUsage { packages: 2, versions: 3, bytes: 3072, ..Default::default() },
            )]),
            blobs: 2,
            stored_bytes: 2048,
            measured_at: "2026-12-06T00:00:00Z".into(),
        };
        assert_eq!(report.domain_status().logical_bytes, 3072);
        assert_eq!(report.domain_status().size, "2.0 KiB");
        assert_eq!(report.repository_status("web").size, "3.0 KiB");
        assert_eq!(report.repository_status("empty").counts, RepositoryUsage::default());
    }
}
