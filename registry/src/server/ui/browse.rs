//! Browsing: the Repositories a viewer may read, one Repository's packages, and search
//! across them.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use wharf_api::PackageFormat;
use wharf_core::PackageId;

use super::{
    Layout, PACKAGES_PAGE, Page, SEARCH_PAGE, SEARCH_SCAN, STYLE, Viewer, from_api, graph, not_readable, order_names,
    package_href, policy_summary, segment, usage_summary,
};
use crate::auth::Permission;
use crate::server::{ApiError, SharedState};

// ---- Repositories ----

struct RepositoryCard {
    name: String,
    description: Option<String>,
    anonymous: bool,
    formats: Vec<&'static str>,
    policies: Vec<String>,
    usage: String,
    graph: String,
    order: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/repositories.html")]
struct RepositoriesPage {
    layout: Layout,
    repositories: Vec<RepositoryCard>,
}

pub(super) async fn repositories(State(state): State<SharedState>, viewer: Viewer) -> Page {
    let config = &state.packages.config;
    let mut repositories = Vec::new();
    for (index, repo) in viewer.readable(&state).into_iter().enumerate() {
        let name = repo.name();
        let chain = wharf_core::policy::resolution_order(config, name);
        let mut formats = Vec::new();
        for format in PackageFormat::ALL {
            let proxied = chain.external(format).is_some();
            if proxied || !state.search_names.held_by(&state, name, format).await.unwrap_or_default().is_empty() {
                formats.push(format.as_str());
            }
        }
        repositories.push(RepositoryCard {
            name: name.to_owned(),
            description: repo.spec.description.clone(),
            anonymous: repo.allows_anonymous_read(),
            formats,
            policies: policy_summary(config, name),
            usage: usage_summary(&state, name),
            graph: graph::chain_svg(config, name, |r| viewer.reads(&state, r), index),
            order: order_names(&state, &viewer, name),
        });
    }
    Page::render(&RepositoriesPage { layout: viewer.layout(&state, ""), repositories })
}

// ---- One Repository ----

struct PackageLink {
    name: String,
    format: &'static str,
    href: String,
}

#[derive(Template)]
#[template(path = "ui/repository.html")]
struct RepositoryPage {
    layout: Layout,
    name: String,
    description: Option<String>,
    anonymous: bool,
    graph: String,
    order: Vec<String>,
    policies: Vec<String>,
    usage: String,
    prefix: String,
    packages: Vec<PackageLink>,
    next_page: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RepositoryQuery {
    #[serde(default)]
    prefix: String,
    /// `format/name` of the last package of the page before.
    after: Option<String>,
}

pub(super) async fn repository(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(query): Query<RepositoryQuery>,
) -> Page {
    let Some(repo) = state.packages.config.repository(&name).filter(|repo| viewer.may(&state, repo, Permission::Read))
    else {
        return not_readable(&state, &viewer, &format!("Repository {name}"));
    };
    let mut packages = Vec::new();
    let mut next_page = None;
    'formats: for format in PackageFormat::ALL {
        // What this Repository holds itself; what its upstreams add is found by search,
        // which shows only what a read through it serves.
        let mut names = match state.packages.registry.package_names(&name, format).await {
            Ok(names) => names,
            Err(error) => return from_api(&state, &viewer, ApiError::from_core(error, STYLE)),
        };
        names.retain(|n| n.starts_with(&query.prefix));
        names.sort_unstable();
        for package in names {
            let key = format!("{}/{package}", format.as_str());
            if query.after.as_ref().is_some_and(|after| key.as_str() <= after.as_str()) {
                continue;
            }
            if packages.len() == PACKAGES_PAGE {
                let last: &PackageLink = &packages[PACKAGES_PAGE - 1];
                next_page = Some(format!(
                    "/ui/repositories/{}?prefix={}&after={}",
                    segment(&name),
                    segment(&query.prefix),
                    segment(&format!("{}/{}", last.format, last.name))
                ));
                break 'formats;
            }
            packages.push(PackageLink {
                href: package_href(&name, format, &package),
                name: package,
                format: format.as_str(),
            });
        }
    }
    let config = &state.packages.config;
    Page::render(&RepositoryPage {
        layout: viewer.layout(&state, ""),
        description: repo.spec.description.clone(),
        anonymous: repo.allows_anonymous_read(),
        graph: graph::chain_svg(config, &name, |r| viewer.reads(&state, r), 0),
        order: order_names(&state, &viewer, &name),
        policies: policy_summary(config, &name),
        usage: usage_summary(&state, &name),
        prefix: query.prefix,
        packages,
        next_page,
        name,
    })
}

// ---- Search ----

struct SearchHit {
    name: String,
    format: &'static str,
    href: String,
    latest: String,
    origin: &'static str,
    description: Option<String>,
    repositories: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/search.html")]
struct SearchPage {
    layout: Layout,
    formats: Vec<(&'static str, bool)>,
    any_format: bool,
    origin: String,
    summary: String,
    hits: Vec<SearchHit>,
    next_page: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    page: usize,
}

/// How well `name` matches `query` (lower is better), or `None`.
fn rank(name: &str, query: &str) -> Option<u8> {
    let name = name.to_lowercase();
    if name == query {
        Some(0)
    } else if name.starts_with(query) || name.rsplit(['/', ':', '.']).next().is_some_and(|last| last.starts_with(query))
    {
        Some(1)
    } else if name.contains(query) {
        Some(2)
    } else {
        None
    }
}

/// Where a package's versions came from, as a search result says it (the management
/// API's `local`, `cached` or `mixed`, in words).
fn origin_label(origin: &str) -> &'static str {
    match origin {
        "mixed" => "published here and cached",
        "cached" => "cached from upstream",
        _ => "published here",
    }
}

pub(super) async fn search(State(state): State<SharedState>, viewer: Viewer, Query(query): Query<SearchQuery>) -> Page {
    let wanted: Option<PackageFormat> = query.format.parse().ok();
    let needle = query.q.trim().to_lowercase();
    let origin = match query.origin.as_str() {
        "local" | "cached" | "" => query.origin.clone(),
        _ => String::new(),
    };
    let formats = PackageFormat::ALL.iter().map(|f| (f.as_str(), Some(*f) == wanted)).collect();
    let mut page = SearchPage {
        layout: viewer.layout(&state, &query.q),
        formats,
        any_format: wanted.is_some(),
        origin: origin.clone(),
        summary: String::new(),
        hits: Vec::new(),
        next_page: None,
    };
    if needle.is_empty() && wanted.is_none() && origin.is_empty() {
        return Page::render(&page);
    }
    // Every name each readable Repository serves (its own and its upstreams'), once per
    // format and name, with the Repositories that serve it.
    let mut found: BTreeMap<(u8, PackageFormat, String), Vec<String>> = BTreeMap::new();
    for repo in viewer.readable(&state) {
        let chain = wharf_core::policy::resolution_order(&state.packages.config, repo.name()).repositories;
        for format in PackageFormat::ALL.into_iter().filter(|f| wanted.is_none_or(|w| w == *f)) {
            // Each name once per Repository read through, from any step of its chain.
            let mut seen = std::collections::HashSet::new();
            for step in &chain {
                let names = match state.search_names.held_by(&state, step, format).await {
                    Ok(names) => names,
                    Err(error) => return from_api(&state, &viewer, ApiError::from_core(error, STYLE)),
                };
                for name in names.iter() {
                    if let Some(rank) = rank(name, &needle)
                        && seen.insert(name.clone())
                    {
                        found.entry((rank, format, name.clone())).or_default().push(repo.name().to_owned());
                    }
                }
            }
        }
    }
    let total = found.len();
    let mut scanned = 0;
    let mut matched = 0;
    let skip = query.page * SEARCH_PAGE;
    for ((_, format, name), repositories) in found {
        if page.hits.len() == SEARCH_PAGE {
            page.next_page = Some(format!(
                "/ui/search?q={}&format={}&origin={}&page={}",
                segment(&query.q),
                segment(&query.format),
                segment(&origin),
                query.page + 1
            ));
            break;
        }
        // Without an origin filter a page costs one index read per result shown.
        if origin.is_empty() && matched < skip {
            matched += 1;
            continue;
        }
        if scanned == SEARCH_SCAN {
            page.summary = format!("Stopped after reading {SEARCH_SCAN} packages: narrow the search to see more. ");
            break;
        }
        scanned += 1;
        let id = PackageId::new(format, name.clone());
        let index = match state.packages.held(&repositories[0], &id).await {
            Ok(Some(index)) => index,
            Ok(None) => continue,
            Err(error) => return from_api(&state, &viewer, ApiError::from_core(error, STYLE)),
        };
        let package_origin = crate::server::inventory::origin_of(&index);
        // A package with both kinds of versions matches either filter, as in the API.
        if !origin.is_empty() && package_origin != origin && package_origin != "mixed" {
            continue;
        }
        let label = origin_label(package_origin);
        matched += 1;
        if matched <= skip {
            continue;
        }
        let latest = index.tags.get("latest").cloned().or_else(|| index.versions.keys().next_back().cloned());
        let description = latest
            .as_ref()
            .and_then(|v| index.versions.get(v))
            .and_then(|entry| entry.metadata.get("description").or_else(|| entry.metadata.get("summary")))
            .and_then(|d| d.as_str())
            .map(|d| d.chars().take(200).collect());
        page.hits.push(SearchHit {
            href: package_href(&repositories[0], format, &name),
            name: if index.display_name.is_empty() { name } else { index.display_name.clone() },
            format: format.as_str(),
            latest: latest.unwrap_or_default(),
            origin: label,
            description,
            repositories,
        });
    }
    page.summary.push_str(&if origin.is_empty() {
        format!("{total} package{} found.", if total == 1 { "" } else { "s" })
    } else {
        format!(
            "{total} name{} match; showing those {}.",
            if total == 1 { "" } else { "s" },
            match origin.as_str() {
                "local" => "published here",
                _ => "cached from upstream",
            }
        )
    });
    Page::render(&page)
}

#[cfg(test)]
mod tests {
    use super::rank;

    #[test]
    fn names_rank_exact_then_prefix_then_contains() {
        assert_eq!(rank("left-pad", "left-pad"), Some(0));
        assert_eq!(rank("left-pad", "left"), Some(1));
        assert_eq!(rank("@acme/tools", "tools"), Some(1));
        assert_eq!(rank("com.acme:tools", "tools"), Some(1));
        assert_eq!(rank("my-tools", "tools"), Some(2));
        assert_eq!(rank("left-pad", "right"), None);
    }
}
