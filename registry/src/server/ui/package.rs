//! A package's page (its versions, where each came from and whether clients get it, one
//! version in full with its install commands) and the explain view of one version.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use wharf_core::VersionStatus;
use wharf_core::explain::{Explanation, VersionFate};
use wharf_core::policy::{Hiding, RuleSource};

use super::changes::StatusName;
use super::{
    Layout, Page, STYLE, VERSIONS_SHOWN, Viewer, bytes, error_page, explain_href, from_api, install, not_readable,
    package_href, package_path, readme, segment, short_time,
};
use crate::auth::Permission;
use crate::server::{ApiError, SharedState};

// ---- Package ----

struct FileRow {
    name: String,
    size: String,
    sha256: String,
    sha512: String,
    sha1: String,
}

struct SelectedVersion {
    version: String,
    status: &'static str,
    verdict: String,
    origin: String,
    created: String,
    created_short: String,
    published_by: Option<String>,
    tags: Vec<String>,
    deprecated: Option<String>,
    explain_href: String,
    files: Vec<FileRow>,
    dependencies: Vec<wharf_formats::inventory::Dependency>,
    readme: Option<String>,
    /// Stored in this Repository, so its status can change here.
    changeable: bool,
    /// Its status in this Repository, which a change must find unchanged.
    status_here: &'static str,
    /// Stored in the Domain and installable, so it can be copied to another Repository.
    copyable: bool,
    next_statuses: Vec<&'static str>,
}

struct VersionRow {
    version: String,
    href: String,
    explain_href: String,
    status: &'static str,
    served: bool,
    verdict: String,
    origin: String,
    created: String,
    created_short: String,
    published_by: String,
    size: String,
    sha256: String,
    sha256_short: String,
}

#[derive(Template)]
#[template(path = "ui/package.html")]
struct PackagePage {
    layout: Layout,
    repository: String,
    name: String,
    format: &'static str,
    done: Option<String>,
    read_error: Option<String>,
    selected: Option<SelectedVersion>,
    snippets: Vec<install::Snippet>,
    may_publish: bool,
    status_action: String,
    copy_action: String,
    explain_action: String,
    copy_targets: Vec<String>,
    tags: Vec<(String, String)>,
    rows: Vec<VersionRow>,
    show_all: Option<String>,
    total_versions: usize,
}

#[derive(Deserialize, Default)]
pub(super) struct PackageQuery {
    version: Option<String>,
    #[serde(default)]
    all: bool,
    /// What the last action did: `status` or `copy`, with `to`.
    done: Option<String>,
    to: Option<String>,
}

/// A sentence for what clients get of a version.
fn verdict(fate: &VersionFate) -> String {
    if fate.listed {
        return "yes".to_owned();
    }
    if fate.installable {
        return "only by exact version (Unlisted)".to_owned();
    }
    if fate.served {
        return format!("no: it is {}", fate.status.as_str());
    }
    match &fate.hidden_by {
        Some(Hiding::Blocked { entry, source }) => format!("no: blocked ({entry}, {})", rule(source.as_ref())),
        Some(Hiding::TooYoung { shown_from, .. }) => format!("no: too new until {}", short_time(shown_from)),
        None if !fate.excluded_in.is_empty() => "no: its Repository is not searched".to_owned(),
        None => "no".to_owned(),
    }
}

fn rule(source: Option<&RuleSource>) -> String {
    match source {
        Some(RuleSource { policy, rule: Some(rule), pattern: Some(pattern), .. }) => {
            format!("UpstreamPolicy {policy}, rule {}, pattern {pattern}", rule + 1)
        }
        Some(RuleSource { policy, .. }) => format!("UpstreamPolicy {policy}"),
        None => "the default".to_owned(),
    }
}

/// Where a version came from, naming the step it was taken from.
fn origin_text(explanation: &Explanation, fate: &VersionFate) -> String {
    let step = explanation.steps.get(fate.step);
    let place = step.and_then(|s| s.name.clone()).unwrap_or_else(|| "a private Repository".to_owned());
    match (&fate.fetched_from, step.map(|s| s.kind)) {
        (_, Some("externalConnection")) => format!("offered by {place}, not fetched yet"),
        (Some(connection), _) => format!("cached from {connection} in {place}"),
        (None, _) => format!("published in {place}"),
    }
}

pub(super) async fn package(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path((repo, format, package)): Path<(String, String, String)>,
    Query(query): Query<PackageQuery>,
) -> Page {
    let Some(repository) = state.packages.config.repository(&repo).filter(|r| viewer.may(&state, r, Permission::Read))
    else {
        return not_readable(&state, &viewer, &format!("Repository {repo}"));
    };
    let id = match crate::server::admin::package_id(&format, &package) {
        Ok(id) => id,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let explanation = match state.packages.explain(&repo, &id, &package, |r| viewer.reads(&state, r)).await {
        Ok(explanation) => explanation,
        Err(error) => return from_api(&state, &viewer, ApiError::from_core(error, STYLE)),
    };
    if explanation.versions.is_empty() && explanation.read_error.is_none() {
        return not_readable(&state, &viewer, &format!("Package {package} in {repo}"));
    }
    // The version shown in full: the one asked for, else `latest`, else the newest.
    let index = explanation.view.as_ref().map(|view| view.index());
    let chosen = query
        .version
        .clone()
        .or_else(|| explanation.tags.get("latest").cloned())
        .or_else(|| explanation.versions.first().map(|fate| fate.version.clone()));
    let may_publish = viewer.may(&state, repository, Permission::Publish);
    let held_here = &explanation.here;
    let base = viewer.origin.clone();
    let sign_in = crate::server::admin::people_sign_in(&state);
    let credential = install::credential_flag(sign_in, state.packages.config.domain.spec.kubernetes_users());
    let mut snippets = Vec::new();
    let chosen_entry = chosen.as_deref().and_then(|version| index.and_then(|index| index.versions.get(version)));
    let dependencies = match chosen_entry {
        Some(entry) => crate::server::inventory::dependencies_of(&state, id.format, entry).await,
        None => Vec::new(),
    };
    let selected = chosen.as_deref().and_then(|version| explanation.version(version)).map(|fate| {
        let entry = index.and_then(|index| index.versions.get(&fate.version));
        let display = index.map_or(id.name.as_str(), |index| index.display_name.as_str());
        let display = if display.is_empty() { id.name.as_str() } else { display };
        if fate.installable {
            let file = entry.and_then(|e| e.assets.keys().next()).map(String::as_str);
            snippets = install::snippets(id.format, &base, &repo, display, &fate.version, file, credential);
        }
        let stored_here = held_here.as_ref().and_then(|s| s.index.versions.get(&fate.version));
        let next_statuses = match stored_here.map(|e| e.status) {
            Some(VersionStatus::Published) => vec!["Unlisted", "Archived", "Disposed"],
            Some(VersionStatus::Unlisted) => vec!["Published", "Archived", "Disposed"],
            Some(VersionStatus::Archived) => vec!["Published", "Unlisted", "Disposed"],
            _ => Vec::new(),
        };
        SelectedVersion {
            version: fate.version.clone(),
            status: fate.status.as_str(),
            verdict: verdict(fate),
            origin: origin_text(&explanation, fate),
            created: fate.created.to_rfc3339(),
            created_short: short_time(&fate.created),
            published_by: fate.published_by.clone(),
            tags: explanation.tags.iter().filter(|(_, v)| **v == fate.version).map(|(t, _)| t.clone()).collect(),
            deprecated: entry.and_then(|e| e.deprecated.clone()),
            explain_href: explain_href(&repo, id.format, &id.name, &fate.version),
            files: entry
                .map(|e| {
                    e.assets
                        .values()
                        .map(|a| FileRow {
                            name: a.name.clone(),
                            size: if a.digests.sha256.is_empty() { "—".to_owned() } else { bytes(a.digests.size) },
                            sha256: a.digests.sha256.clone(),
                            sha512: a.digests.sha512.clone(),
                            sha1: a.digests.sha1.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            dependencies,
            readme: entry.and_then(|e| wharf_formats::inventory::readme(id.format, &e.metadata)).map(readme::render),
            changeable: !next_statuses.is_empty(),
            status_here: stored_here.map_or("", |e| e.status.as_str()),
            copyable: fate.stored && fate.status.is_installable(),
            next_statuses,
        }
    });
    let total_versions = explanation.versions.len();
    let shown = if query.all { total_versions } else { VERSIONS_SHOWN };
    let rows = explanation
        .versions
        .iter()
        .take(shown)
        .map(|fate| {
            let files = &fate.files;
            let sha256 = files.first().map(|f| f.sha256.clone()).unwrap_or_default();
            VersionRow {
                href: format!("{}?version={}", package_href(&repo, id.format, &id.name), segment(&fate.version)),
                explain_href: explain_href(&repo, id.format, &id.name, &fate.version),
                version: fate.version.clone(),
                status: fate.status.as_str(),
                served: fate.listed,
                verdict: verdict(fate),
                origin: origin_text(&explanation, fate),
                created: fate.created.to_rfc3339(),
                created_short: short_time(&fate.created),
                published_by: fate.published_by.clone().unwrap_or_default(),
                size: if fate.stored { bytes(files.iter().map(|f| f.size).sum()) } else { "—".to_owned() },
                sha256_short: sha256.chars().take(12).collect(),
                sha256,
            }
        })
        .collect();
    // Copying needs read here (the viewer has it) and publish on the destination.
    let copy_targets = viewer
        .readable(&state)
        .into_iter()
        .filter(|r| r.name() != repo && viewer.may(&state, r, Permission::Publish))
        .map(|r| r.name().to_owned())
        .collect();
    let done = match (query.done.as_deref(), query.to.as_deref()) {
        (Some("status"), Some(to)) => {
            to.parse::<StatusName>().ok().map(|s| format!("Status changed to {}.", s.0.as_str()))
        }
        (Some("copy"), Some(to)) if viewer.reads(&state, to) => Some(format!("Copied to {to}.")),
        _ => None,
    };
    let path = package_path(&id.name);
    Page::render(&PackagePage {
        layout: viewer.layout(&state, ""),
        name: index.map(|i| i.display_name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| id.name.clone()),
        format: id.format.as_str(),
        done,
        read_error: explanation.read_error.clone(),
        selected,
        snippets,
        may_publish,
        status_action: format!("/ui/repositories/{}/status/{}/{path}", segment(&repo), id.format.as_str()),
        copy_action: format!("/ui/repositories/{}/copy/{}/{path}", segment(&repo), id.format.as_str()),
        explain_action: format!("/ui/repositories/{}/explain/{}/{path}", segment(&repo), id.format.as_str()),
        copy_targets,
        tags: explanation.tags.clone().into_iter().collect(),
        rows,
        show_all: (total_versions > shown).then(|| format!("{}?all=true", package_href(&repo, id.format, &id.name))),
        total_versions,
        repository: repo,
    })
}

// ---- Explain ----

struct StepLine {
    title: String,
    searched: bool,
    reason: String,
    found: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/explain.html")]
struct ExplainPage {
    layout: Layout,
    repository: String,
    name: String,
    version: String,
    package_href: String,
    served: bool,
    verdict: String,
    reasons: Vec<String>,
    read_error: Option<String>,
    steps: Vec<StepLine>,
    cooldown: String,
    blocked: Vec<String>,
    first_origin: String,
}

#[derive(Deserialize)]
pub(super) struct ExplainQuery {
    #[serde(default)]
    version: String,
}

pub(super) async fn explain(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path((repo, format, package)): Path<(String, String, String)>,
    Query(query): Query<ExplainQuery>,
) -> Page {
    if !viewer.reads(&state, &repo) {
        return not_readable(&state, &viewer, &format!("Repository {repo}"));
    }
    let id = match crate::server::admin::package_id(&format, &package) {
        Ok(id) => id,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let version = match crate::server::admin::version_key(&id, query.version.trim()) {
        Ok(version) if !version.is_empty() => version,
        Ok(_) => {
            return error_page(&state, &viewer, StatusCode::BAD_REQUEST, "Bad request", "Name a version to explain.");
        }
        Err(error) => return from_api(&state, &viewer, error),
    };
    let explanation = match state.packages.explain(&repo, &id, &package, |r| viewer.reads(&state, r)).await {
        Ok(explanation) => explanation,
        Err(error) => return from_api(&state, &viewer, ApiError::from_core(error, STYLE)),
    };
    let fate = explanation.version(&version);
    let mut reasons = Vec::new();
    let (served, verdict) = match fate {
        Some(fate) if fate.listed => (true, format!("Clients of {repo} get {version}: it is listed and installable.")),
        Some(fate) if fate.installable => (
            true,
            format!(
                "Clients of {repo} install {version} only when they ask for exactly it: it is Unlisted, so ranges and latest skip it."
            ),
        ),
        Some(fate) if fate.served => {
            (false, format!("Clients of {repo} see {version} but cannot install it: it is {}.", fate.status.as_str()))
        }
        Some(fate) => {
            match &fate.hidden_by {
                Some(Hiding::Blocked { entry, source }) => reasons.push(format!(
                    "Blocked: the blockedVersions entry {entry} of {} matches it.",
                    rule(source.as_ref())
                )),
                Some(Hiding::TooYoung { minimum_release_age, shown_from, source }) => reasons.push(format!(
                    "Too new: it came from outside on {} and {} sets a minimum release age of {minimum_release_age}; it is served from {}.",
                    short_time(&fate.created),
                    rule(source.as_ref()),
                    short_time(shown_from)
                )),
                None => {}
            }
            (false, format!("Clients of {repo} do not get {version}."))
        }
        None => {
            reasons.push(format!("No Repository or connection searched for {repo} has {version}."));
            (false, format!("Clients of {repo} do not get {version}: nothing searched has it."))
        }
    };
    if let Some(fate) = fate {
        reasons.push(format!("Found: {}.", origin_text(&explanation, fate)));
        for place in &fate.excluded_in {
            reasons.push(format!(
                "Also held by {}, which this Repository does not search.",
                place.as_deref().unwrap_or("a private Repository")
            ));
        }
    }
    for step in
        explanation.steps.iter().filter(|s| s.kind == "externalConnection" && (!s.searched || s.error.is_some()))
    {
        let name = step.name.as_deref().unwrap_or("the external connection");
        match &step.error {
            Some(error) => reasons.push(format!(
                "External connection {name} could not be read ({error}): only what the Domain holds is served."
            )),
            None => reasons.push(format!("External connection {name} was not asked: {}.", step.reason)),
        }
    }
    let steps = explanation
        .steps
        .iter()
        .map(|step| {
            let place = step.name.clone().unwrap_or_else(|| "a private Repository".to_owned());
            let title = match step.kind {
                "externalConnection" => format!(
                    "External connection {place}{}",
                    step.url.as_ref().map(|u| format!(" ({u})")).unwrap_or_default()
                ),
                _ if step.name.is_none() => "A Repository you may not read".to_owned(),
                _ => format!("Repository {place}"),
            };
            let has =
                explanation.versions.iter().any(|f| {
                    explanation.steps.get(f.step).is_some_and(|s| std::ptr::eq(s, step)) && f.version == version
                }) || fate.is_some_and(|f| step.kind == "repository" && f.excluded_in.contains(&step.name));
            let found = step.versions.map(|count| {
                format!(
                    "It has {count} version{} of the package{}.",
                    if count == 1 { "" } else { "s" },
                    if has { format!(", {version} among them") } else { String::new() }
                )
            });
            StepLine { title, searched: step.searched, reason: step.reason.clone(), found, error: step.error.clone() }
        })
        .collect();
    let cooldown = match &explanation.minimum_release_age {
        Some(age) => {
            format!("{age} for versions from outside, set by {}", rule(explanation.minimum_release_age_source.as_ref()))
        }
        None => "none".to_owned(),
    };
    let first_origin = match &explanation.first_version_origin {
        Some(origin) => match origin.kind {
            wharf_core::OriginKind::Direct => format!(
                "{} was published directly to {} on {}: the name is reserved for the Domain",
                origin.version,
                if origin.repository.is_empty() { "this Domain" } else { origin.repository.as_str() },
                short_time(&origin.recorded)
            ),
            wharf_core::OriginKind::External => format!(
                "{} came through external connection {} on {}",
                origin.version,
                origin.connection.as_deref().unwrap_or("?"),
                short_time(&origin.recorded)
            ),
        },
        None => "not recorded (or made in a Repository you may not read)".to_owned(),
    };
    Page::render(&ExplainPage {
        layout: viewer.layout(&state, ""),
        package_href: package_href(&repo, id.format, &id.name),
        name: id.name.clone(),
        version,
        served,
        verdict,
        reasons,
        read_error: explanation.read_error.clone(),
        steps,
        cooldown,
        blocked: explanation
            .blocked_versions
            .iter()
            .map(|b| format!("{} ({})", b.entry, rule(b.source.as_ref())))
            .collect(),
        first_origin,
        repository: repo,
    })
}
