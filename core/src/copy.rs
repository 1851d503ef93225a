//! Copying versions between Repositories of one Domain: the dev → staging → prod
//! promotion. Only metadata is written: the Domain holds each blob once, so a copy names
//! the same bytes. The destination's rules apply as to a publish there (UpstreamPolicy
//! `publish`, the name's origin, a version already reachable through its upstreams); a
//! copy cannot bypass them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::activity::Action;
use crate::{CoreError, NewAsset, NewVersion, PackageId, Packages, VersionStatus, policy};

/// What to copy.
pub struct Copy<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub id: &'a PackageId,
    /// The versions (as the core keys them); every version of the package when `None`.
    pub versions: Option<&'a [String]>,
    /// Replace a destination version with other contents (a takedown and a new publish of
    /// its number: administrators only).
    pub allow_overwrite: bool,
    /// Copy versions the source fetched through an external connection too; they stay
    /// marked as fetched from it.
    pub include_from_upstream: bool,
    /// Who copies (kept with status changes the copy makes).
    pub by: &'a str,
}

/// Why a version was not copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CopyFailure {
    /// The source has no such version.
    NotFound,
    /// The destination has the version with other contents (and no overwrite was asked).
    AlreadyExists,
    /// The destination's rules refuse it (reachable through its upstreams).
    NotAllowed,
    /// Not copyable as it is: unfinished, disposed, or fetched from upstream without
    /// `includeFromUpstream`.
    Skipped,
}

/// What a copy did, version by version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    pub copied: Vec<String>,
    /// Already in the destination with the same files.
    pub unchanged: Vec<String>,
    pub failed: BTreeMap<String, FailedCopy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FailedCopy {
    pub code: CopyFailure,
    pub message: String,
}

impl CopyReport {
    fn fail(&mut self, version: &str, code: CopyFailure, message: String) {
        self.failed.insert(version.to_owned(), FailedCopy { code, message });
    }
}

impl Packages {
    /// Copies versions of a package from one Repository to another. The whole copy is
    /// refused (403) when the destination may not hold the name at all; single versions
    /// fail on their own in the report.
    pub async fn copy(&self, copy: &Copy<'_>) -> Result<CopyReport, CoreError> {
        let Copy { source, destination, id, .. } = *copy;
        if source == destination {
            return Err(CoreError::Invalid("source and destination are the same repository".into()));
        }
        let snapshot = self
            .registry
            .package(source, id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("package {} not found in repository {source}", id.name)))?;
        let index = &snapshot.index;
        let wanted: Vec<String> = match copy.versions {
            Some(versions) => versions.to_vec(),
            None => index.versions.keys().cloned().collect(),
        };
        let effective = policy::evaluate(&self.config, destination, id);
        let mut report = CopyReport::default();
        let mut copyable = Vec::new();
        for version in wanted {
            let Some(entry) = index.versions.get(&version) else {
                report.fail(&version, CopyFailure::NotFound, format!("{source} has no version {version}"));
                continue;
            };
            if matches!(entry.status, VersionStatus::Unfinished | VersionStatus::Disposed) {
                report.fail(&version, CopyFailure::Skipped, format!("version {version} is {}", entry.status.as_str()));
                continue;
            }
            if let Some(connection) = &entry.fetched_from
                && !copy.include_from_upstream
            {
                let message = format!(
                    "version {version} was fetched through external connection {connection}; set includeFromUpstream to copy it"
                );
                report.fail(&version, CopyFailure::Skipped, message);
                continue;
            }
            copyable.push((version, entry));
        }
        // Read once: each version below writes only itself there.
        let existing = self.registry.package(destination, id).await?;
        for (version, entry) in copyable {
            // A version published here must be publishable at the destination; one fetched
            // from upstream only where no rule blocks publishing the name there.
            let admitted = match entry.fetched_from {
                None => self.check_publish(destination, id, &index.display_name, &version).await,
                Some(_) if effective.publish_allowed(destination) == Some(false) => Err(CoreError::Forbidden(format!(
                    "{} may not be copied to {destination}: an UpstreamPolicy rule blocks publishing it there",
                    id.name
                ))),
                Some(_) => Ok(()),
            };
            match admitted {
                Ok(()) => {}
                Err(error @ CoreError::Forbidden(_)) => {
                    let refused = Action::Refused { reason: error.to_string() };
                    self.registry.report(refused, destination, id, Some(&version));
                    return Err(error);
                }
                Err(CoreError::Conflict(message)) => {
                    report.fail(&version, CopyFailure::NotAllowed, message);
                    continue;
                }
                Err(other) => return Err(other),
            }
            if let Some(there) = existing.as_ref().and_then(|p| p.index.versions.get(&version)) {
                let same = there.assets.len() == entry.assets.len()
                    && there.assets.iter().zip(&entry.assets).all(|((a, x), (b, y))| a == b && x.digests == y.digests);
                if same && there.status != VersionStatus::Disposed {
                    report.unchanged.push(version);
                    continue;
                }
                if !copy.allow_overwrite {
                    let message = format!(
                        "{destination} already has version {version} with other contents (or as a tombstone); versions are immutable unless allowOverwrite replaces it"
                    );
                    report.fail(&version, CopyFailure::AlreadyExists, message);
                    continue;
                }
                self.registry.delete_version(destination, id, &version, true, copy.by).await?;
            }
            let assets: Vec<NewAsset> = entry
                .assets
                .values()
                .map(|a| NewAsset { name: a.name.clone(), digests: a.digests.clone(), metadata: a.metadata.clone() })
                .collect();
            match &entry.fetched_from {
                Some(connection) => {
                    for asset in assets {
                        self.registry
                            .retain_fetched(
                                destination,
                                id,
                                &index.display_name,
                                &version,
                                entry.metadata.clone(),
                                entry.created,
                                connection,
                                asset,
                            )
                            .await?;
                    }
                }
                None => {
                    let tags = index.tags.iter().filter(|(_, v)| **v == version).map(|(tag, _)| tag.clone()).collect();
                    let new = NewVersion { version: version.clone(), metadata: entry.metadata.clone(), assets, tags };
                    self.registry.publish_version(destination, id, &index.display_name, new).await?;
                    self.record_publish(destination, id, &version).await?;
                }
            }
            if entry.status != VersionStatus::Published {
                self.registry.set_status(destination, id, &version, None, entry.status, copy.by).await?;
            }
            self.registry.report(Action::Copied { from: source.to_owned() }, destination, id, Some(&version));
            report.copied.push(version);
        }
        Ok(report)
    }
}
