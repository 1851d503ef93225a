//! Why a package is served the way it is: the origin report of the
//! management API, built from the same decisions the pipelines take
//! ([`crate::policy`]), so the two cannot drift apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::policy::{self, Decided, Hiding, RuleSource, rule_reason};
use crate::{CoreError, PackageId, PackageIndex, PackageOrigin, PackageSnapshot, Packages, VersionStatus, View};

/// A restriction and the rule that set it.
fn decided_restriction(decided: &Decided<Option<wharf_api::Restriction>>) -> Value {
    json!({"restriction": decided.value, "source": decided.source})
}

impl Packages {
    /// The effective origin configuration of a package in `repo` and what
    /// produced each part: the chain searched, the external connection, each
    /// UpstreamPolicy setting with its rule, the name's first-version
    /// origin, and the verdicts for publishing here and fetching from
    /// outside. The origin record is per Domain: one made in a Repository
    /// `readable` refuses is left out, so that the answer for a private name
    /// is the answer for a name nobody used; and no Repository the caller
    /// cannot read is named (`null` in the chain).
    pub async fn origin_report(
        &self,
        repo: &str,
        id: &PackageId,
        readable: impl Fn(&str) -> bool,
    ) -> Result<Value, CoreError> {
        let effective = policy::evaluate(&self.config, repo, id);
        let chain = policy::resolution_order(&self.config, repo);
        let first = self.registry.package_origin(id).await?.filter(|origin| readable(&origin.repository));
        // A Repository the caller may not read is in the chain, unnamed.
        let named = |name: &str| readable(name).then(|| name.to_owned());
        let searched: Vec<Option<String>> = chain.repositories.iter().map(|name| named(name)).collect();
        let blocked: Vec<_> = effective
            .blocked_versions
            .iter()
            .map(|b| json!({"entry": b.value.to_string(), "source": b.source}))
            .collect();
        Ok(json!({
            "repository": repo,
            "format": id.format.as_str(),
            "package": id.name,
            "chain": searched,
            "externalConnection": chain.external(id.format).map(|hop| json!({
                "name": hop.connection.name,
                "url": hop.connection.url,
                "heldBy": named(&hop.holder),
            })),
            "publish": decided_restriction(&effective.publish),
            "externalUpstream": decided_restriction(&effective.external_upstream),
            "internalUpstream": decided_restriction(&effective.internal_upstream),
            "minimumReleaseAge": {
                "value": effective.minimum_release_age.value.map(wharf_api::format_duration),
                "source": effective.minimum_release_age.source,
            },
            "blockedVersions": blocked,
            "metadataTTL": {
                "value": wharf_api::format_duration(effective.metadata_ttl.value),
                "source": effective.metadata_ttl.source,
            },
            "firstVersionOrigin": first,
            "effective": {
                "publish": policy::may_publish(&effective, first.as_ref(), repo),
                "externalUpstream": policy::may_fetch_external(&effective, first.as_ref(), repo),
            },
        }))
    }
}

/// Why each version of a package is, or is not, served to a Repository's
/// clients: the steps a read takes and what each found, then per version
/// where it came from and what hid it. Built from the read pipeline's own
/// parts (the chain, the policy, the origin, the external connection's
/// client) and checked against the view itself, so that `served` is what
/// clients get even where a reason could be missing.
#[derive(Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub repository: String,
    #[schema(value_type = String)]
    pub format: &'static str,
    pub package: String,
    /// The Repositories searched, in order, then the external connection.
    pub steps: Vec<Step>,
    /// The name's first-version origin, when the caller may read where it was made.
    pub first_version_origin: Option<PackageOrigin>,
    /// `minimumReleaseAge` for versions from outside, and its rule.
    pub minimum_release_age: Option<String>,
    pub minimum_release_age_source: Option<RuleSource>,
    /// The `blockedVersions` entries that apply to the package, and their rules.
    pub blocked_versions: Vec<BlockedEntry>,
    /// Every version any step has, newest first.
    pub versions: Vec<VersionFate>,
    /// The tags clients see.
    pub tags: BTreeMap<String, String>,
    /// Why the read failed, when it did (an unreachable upstream with nothing cached).
    pub read_error: Option<String>,
    /// The package as clients see it (the versions' full metadata).
    #[serde(skip)]
    #[schema(ignore)]
    pub view: Option<View>,
    /// The package as the Repository asked holds it itself.
    #[serde(skip)]
    #[schema(ignore)]
    pub here: Option<Arc<PackageSnapshot>>,
}

/// One Repository, or the external connection, a read goes through.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// `repository` or `externalConnection`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// `None`: a Repository the caller may not read (its name is not shown).
    pub name: Option<String>,
    /// The connection's URL.
    pub url: Option<String>,
    /// Whether the read uses what this step has.
    pub searched: bool,
    pub reason: String,
    /// How many versions of the package it has (`None`: not asked).
    pub versions: Option<usize>,
    /// Why asking failed.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FileFact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedEntry {
    pub entry: String,
    pub source: Option<RuleSource>,
}

/// One version: where the read found it and whether clients get it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionFate {
    pub version: String,
    /// The step it is taken from (its position in `steps`).
    pub step: usize,
    pub status: VersionStatus,
    pub created: DateTime<Utc>,
    pub fetched_from: Option<String>,
    pub published_by: Option<String>,
    /// Whether the Domain holds its files (a version only offered upstream has none yet).
    pub stored: bool,
    /// Its files: name, size and SHA-256 (both unknown, 0 and empty, until fetched).
    pub files: Vec<FileFact>,
    /// Clients see it (it is in the package's metadata).
    pub served: bool,
    /// Clients install it: served, and its status lets it be downloaded.
    pub installable: bool,
    /// Resolution picks it for a range or `latest`: installable and listed.
    pub listed: bool,
    /// What the policy says, for a version it hides.
    pub hidden_by: Option<Hiding>,
    /// Repositories of the chain that have the version but are not searched.
    pub excluded_in: Vec<Option<String>>,
}

impl Explanation {
    /// The fate of `version`, as the format spells it.
    pub fn version(&self, version: &str) -> Option<&VersionFate> {
        self.versions.iter().find(|fate| fate.version == version)
    }
}

impl Packages {
    /// Why each version of `id` is or is not served to `repo`'s clients (see
    /// [`Explanation`]). `readable` says which Repositories the caller may
    /// read: the others are not named. An external connection the policy or
    /// the name's origin closes is not asked (asking would tell it the name).
    pub async fn explain(
        &self,
        repo: &str,
        id: &PackageId,
        spelling: &str,
        readable: impl Fn(&str) -> bool,
    ) -> Result<Explanation, CoreError> {
        let effective = policy::evaluate(&self.config, repo, id);
        let chain = policy::resolution_order(&self.config, repo);
        let named = |r: &str| readable(r).then(|| r.to_owned());
        let mut steps = Vec::new();
        let mut held: Vec<(usize, Arc<PackageSnapshot>)> = Vec::new();
        let mut excluded: Vec<(Option<String>, PackageIndex)> = Vec::new();
        for repository in &chain.repositories {
            let searched = repository == repo || effective.internal_allowed(repository);
            // What an excluded Repository holds reaches nobody through this one: it is
            // shown only to those who may read it.
            let snapshot =
                if searched || readable(repository) { self.registry.package(repository, id).await? } else { None };
            let reason = if repository == repo {
                "the Repository asked".to_owned()
            } else if searched {
                "an upstream Repository, searched in listed order".to_owned()
            } else {
                format!("internalUpstream excludes it, by {}", rule_reason(effective.internal_upstream.source.as_ref()))
            };
            steps.push(Step {
                kind: "repository",
                name: named(repository),
                url: None,
                searched,
                reason,
                versions: (searched || readable(repository))
                    .then(|| snapshot.as_ref().map_or(0, |s| s.index.versions.len())),
                error: None,
            });
            if let Some(snapshot) = snapshot {
                if searched {
                    held.push((steps.len() - 1, snapshot));
                } else {
                    excluded.push((named(repository), snapshot.index.clone()));
                }
            }
        }
        let recorded = self.registry.package_origin(id).await?;
        let local = crate::merge_snapshots(held.iter().map(|(_, snapshot)| snapshot));
        let origin = crate::chain::origin_of(recorded, local.as_ref());
        let mut external = None;
        if let Some(hop) = chain.external(id.format) {
            let verdict = policy::may_fetch_external(&effective, origin.as_ref(), &hop.holder);
            let mut step = Step {
                kind: "externalConnection",
                name: Some(hop.connection.name.clone()),
                url: Some(hop.connection.url.clone()),
                searched: verdict.allowed,
                reason: verdict.reason,
                versions: None,
                error: None,
            };
            if verdict.allowed {
                let consulted = crate::chain::Consulted::default();
                match self.external_index(hop, id, spelling, &effective, &consulted).await {
                    Ok(index) => {
                        step.versions = Some(index.as_ref().map_or(0, |i| i.versions.len()));
                        external = index;
                    }
                    Err(error) => step.error = Some(error.to_string()),
                }
            }
            steps.push(step);
        }
        let (view, read_error) = match self.view(repo, id, spelling).await {
            Ok(view) => (view, None),
            Err(error) => (None, Some(error.to_string())),
        };
        let served = view.as_ref().map(View::index);

        let now = Utc::now();
        // Each version once, from the first step that has it (as the merge takes it).
        let mut fates: BTreeMap<&str, VersionFate> = BTreeMap::new();
        let found = held.iter().map(|(step, s)| (*step, &s.index)).chain(external.iter().map(|i| (steps.len() - 1, i)));
        for (step, index) in found {
            for (version, entry) in &index.versions {
                if fates.contains_key(version.as_str()) {
                    continue;
                }
                let shown = served.and_then(|served| served.versions.get(version));
                let status = shown.map_or(entry.status, |shown| shown.status);
                fates.insert(
                    version,
                    VersionFate {
                        version: version.clone(),
                        step,
                        status,
                        created: entry.created,
                        fetched_from: entry.fetched_from.clone(),
                        published_by: entry.published_by.clone(),
                        stored: entry.assets.values().any(|asset| !asset.digests.sha256.is_empty()),
                        files: entry
                            .assets
                            .values()
                            .map(|asset| FileFact {
                                name: asset.name.clone(),
                                size: asset.digests.size,
                                sha256: asset.digests.sha256.clone(),
                            })
                            .collect(),
                        served: shown.is_some(),
                        installable: shown.is_some() && status.is_installable(),
                        listed: shown.is_some() && status.is_listed(),
                        hidden_by: if shown.is_some() {
                            None
                        } else {
                            policy::hiding(entry, id, version, &effective, now)
                        },
                        excluded_in: Vec::new(),
                    },
                );
            }
        }
        for (name, index) in &excluded {
            for version in index.versions.keys() {
                if let Some(fate) = fates.get_mut(version.as_str()) {
                    fate.excluded_in.push(name.clone());
                }
            }
        }
        let tags = served.map(|index| index.tags.clone()).unwrap_or_default();
        let here = held.iter().find(|(step, _)| *step == 0).map(|(_, snapshot)| snapshot.clone());
        let mut versions: Vec<VersionFate> = fates.into_values().collect();
        versions.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.version.cmp(&a.version)));
        let (namespace, name) = policy::coordinates(id);
        Ok(Explanation {
            repository: repo.to_owned(),
            format: id.format.as_str(),
            package: id.name.clone(),
            steps,
            first_version_origin: origin.filter(|origin| readable(&origin.repository)),
            minimum_release_age: effective.minimum_release_age.value.map(wharf_api::format_duration),
            minimum_release_age_source: effective.minimum_release_age.source.clone(),
            blocked_versions: effective
                .blocked_versions
                .iter()
                .filter(|b| b.value.pattern.matches(id.format, &namespace, &name))
                .map(|b| BlockedEntry { entry: b.value.to_string(), source: b.source.clone() })
                .collect(),
            versions,
            tags,
            read_error,
            view,
            here,
        })
    }
}
