//! Reads through upstream chains and external connections for the format
//! handlers: the merged, policy-filtered view of a package, kept while
//! nothing it was built from changed; fetching an upstream file into the
//! Domain on first use; the origin checks of a direct publish. Decisions
//! come from `core::policy`, storage is written only through the core,
//! HTTP to upstreams goes through `crate::upstream`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use wharf_api::PackageFormat;

use super::{ApiError, ErrorStyle, SharedState};
use wharf_core::policy::{self, Chain, EffectivePolicy, ExternalHop};
use wharf_core::{
    CoreError, NewAsset, OriginKind, PackageId, PackageIndex, PackageOrigin, PublishOutcome, Rendered, VersionStatus,
};
use wharf_formats::{cargo, go, maven, npm, pypi};
use wharf_storage::{BlobDigests, StagedBlob};
use wharf_upstream::{Absence, Document, UpstreamError};

/// Key of an unstored upstream asset's metadata holding its URL (the same
/// for every format).
const UPSTREAM_URL: &str = npm::upstream::UPSTREAM_URL;

/// Views kept at most, per process, and their estimated total size; past
/// either all are dropped at once (the next reads rebuild them), which
/// bounds memory without bookkeeping per entry.
const MAX_CACHED_VIEWS: usize = 4096;
const MAX_CACHED_VIEW_BYTES: usize = 256 * 1024 * 1024;
/// What a version costs in a kept index, roughly, beyond the upstream
/// document it was parsed from.
const VIEW_BYTES_PER_VERSION: usize = 512;

/// A package as the requesting Repository sees it. Cheap to clone: the
/// index and the bodies rendered from it are shared with the view cache.
#[derive(Clone)]
pub struct View {
    pub index: Arc<PackageIndex>,
    pub chain: Arc<Chain>,
    /// How long upstream metadata read for this view may be reused.
    pub metadata_ttl: std::time::Duration,
    /// Whether policy and origin let the chain's external connection serve
    /// this package (what may complete a cached copy from outside).
    pub external_allowed: bool,
    renders: Arc<wharf_core::Renders>,
}

impl View {
    /// The body `render` produces from this view, computed once per `key`
    /// (a format's variant and base URL) while the view holds.
    pub fn rendered(&self, key: &str, render: impl FnOnce(&PackageIndex) -> Bytes) -> Rendered {
        self.renders.get_or_render(key, &self.index, render)
    }
}

/// One upstream metadata document a view was built from, and which copy
/// of it: the body itself, compared by address (a copy kept or
/// revalidated keeps it; holding it keeps the address from being reused
/// by a later, different document).
struct Reading {
    connection: String,
    url: String,
    accept: &'static str,
    absence: Absence,
    copy: Option<Bytes>,
}

/// Whether `document` is the copy a reading saw.
fn same_copy(document: &Document, seen: Option<&Bytes>) -> bool {
    match (&document.body, seen) {
        (Some(now), Some(seen)) => now.as_ptr() == seen.as_ptr() && now.len() == seen.len(),
        (None, None) => true,
        _ => false,
    }
}

/// The upstream documents read while building a view.
#[derive(Default)]
struct Consulted(Mutex<Vec<Reading>>);

impl Consulted {
    /// Reads a metadata document through the client's cache, noting it.
    async fn read(
        &self,
        state: &SharedState,
        connection: &str,
        url: &str,
        accept: &'static str,
        ttl: std::time::Duration,
        absence: Absence,
    ) -> Result<Document, UpstreamError> {
        let document = state.upstream.metadata(connection, url, accept, ttl, absence).await?;
        let reading = Reading {
            connection: connection.to_owned(),
            url: url.to_owned(),
            accept,
            absence,
            copy: document.body.clone(),
        };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(reading);
        Ok(document)
    }
}

/// What a view was built from besides upstream documents. The index
/// revision of each Repository searched stands for its versions; the
/// configuration itself for policy and chain (compared by identity: a new
/// revision is a new allocation, and holding the old one keeps its address
/// from being reused); the recorded origin for whether the connection may
/// serve.
struct Stamp {
    config: Arc<wharf_api::DomainConfig>,
    revisions: Vec<Option<u64>>,
    origin: Option<OriginKind>,
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.revisions == other.revisions && self.origin == other.origin
    }
}

struct CachedView {
    stamp: Stamp,
    readings: Vec<Reading>,
    /// When a too-young upstream version comes of age, and the view with it.
    expires: Option<Instant>,
    view: Option<View>,
}

type ViewKey = (String, PackageId, String);

/// Views through chains, kept while nothing they were built from changed:
/// a warm install reads each packument or index file many times (the
/// metadata, then every file of the package), and merging, filtering and
/// parsing the upstream document each time cost more than the request.
#[derive(Default)]
pub struct ViewCache {
    views: Mutex<KeptViews>,
}

#[derive(Default)]
struct KeptViews {
    by_key: HashMap<ViewKey, Arc<CachedView>>,
    bytes: usize,
}

impl CachedView {
    /// A view's size, estimated: the upstream documents it parsed (its
    /// index is of their order) and its versions; what is rendered from it
    /// later is of the same order again, hence twice.
    fn estimated_bytes(&self) -> usize {
        let documents: usize = self.readings.iter().filter_map(|r| r.copy.as_ref()).map(Bytes::len).sum();
        let versions = self.view.as_ref().map_or(0, |v| v.index.versions.len());
        2 * (documents + versions * VIEW_BYTES_PER_VERSION)
    }
}

impl ViewCache {
    fn get(&self, key: &ViewKey) -> Option<Arc<CachedView>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).by_key.get(key).cloned()
    }

    fn keep(&self, key: ViewKey, view: CachedView) {
        let size = view.estimated_bytes();
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if views.by_key.len() >= MAX_CACHED_VIEWS || views.bytes + size > MAX_CACHED_VIEW_BYTES {
            views.by_key.clear();
            views.bytes = 0;
        }
        views.bytes += size;
        if let Some(replaced) = views.by_key.insert(key, Arc::new(view)) {
            views.bytes = views.bytes.saturating_sub(replaced.estimated_bytes());
        }
    }
}

/// Whether every upstream document a view read is still the same copy
/// (asking the client, which revalidates what is past its TTL).
async fn readings_hold(state: &SharedState, readings: &[Reading], ttl: std::time::Duration) -> bool {
    for reading in readings {
        let now =
            state.upstream.metadata(&reading.connection, &reading.url, reading.accept, ttl, reading.absence).await;
        if !now.is_ok_and(|document| same_copy(&document, reading.copy.as_ref())) {
            return false;
        }
    }
    true
}

/// Whether a read of `repo` can involve anything but `repo` itself.
pub fn has_chain(state: &SharedState, repo: &str) -> bool {
    state.config.repository(repo).is_some_and(|r| !r.spec.upstreams.is_empty() || r.spec.external_connection.is_some())
}

fn core_error(style: ErrorStyle) -> impl Fn(CoreError) -> ApiError {
    move |e| ApiError::from_core(e, style)
}

/// The origin record, or what the chain's own versions imply when none was
/// written (versions published before origins were recorded).
fn origin_of(recorded: Option<PackageOrigin>, local: Option<&PackageIndex>) -> Option<PackageOrigin> {
    recorded.or_else(|| {
        let (version, _) = local?.versions.iter().find(|(_, entry)| entry.fetched_from.is_none())?;
        Some(PackageOrigin {
            kind: OriginKind::Direct,
            repository: String::new(),
            connection: None,
            version: version.clone(),
            recorded: Utc::now(),
        })
    })
}

/// The external connection of the chain, when it serves this format and
/// the policy and the name's origin let it serve this package.
fn usable_hop<'a>(
    chain: &'a Chain,
    id: &PackageId,
    effective: &EffectivePolicy,
    origin: Option<&PackageOrigin>,
) -> Option<&'a ExternalHop> {
    let hop = chain.external(id.format)?;
    let allowed = policy::may_fetch_external(effective, origin, &hop.holder).allowed;
    allowed.then_some(hop)
}

/// The upstream's versions of the package, as unstored entries.
async fn external_index(
    state: &SharedState,
    hop: &ExternalHop,
    id: &PackageId,
    spelling: &str,
    effective: &EffectivePolicy,
    consulted: &Consulted,
    style: ErrorStyle,
) -> Result<Option<PackageIndex>, ApiError> {
    let base = hop.connection.url.trim_end_matches('/');
    let name = &hop.connection.name;
    let ttl = effective.metadata_ttl.value;
    let absence = Absence::of(id.format);
    let unreadable = |e: &dyn std::error::Error| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("external connection {name} sent unreadable metadata: {e}"),
            style,
        )
    };
    match id.format {
        PackageFormat::Npm => {
            let url = format!("{base}/{}", id.name.replacen('/', "%2f", 1));
            // Cooldown needs each version's publish time, which only the
            // full packument carries.
            let accept = if effective.minimum_release_age.value.is_some() {
                "application/json"
            } else {
                "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"
            };
            let document = consulted
                .read(state, name, &url, accept, ttl, absence)
                .await
                .map_err(|e| ApiError::from_upstream(&e, style))?;
            let Some(body) = document.body else { return Ok(None) };
            npm::upstream::upstream_index(&body, &id.name, name).map(Some).map_err(|e| unreadable(&e))
        }
        PackageFormat::Pypi => {
            let url = format!("{base}/{}/", id.name);
            let page = reqwest::Url::parse(&url).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("external connection {name} has an invalid URL: {e}"),
                    style,
                )
            })?;
            let document = consulted
                .read(state, name, &url, pypi::JSON_CONTENT_TYPE, ttl, absence)
                .await
                .map_err(|e| ApiError::from_upstream(&e, style))?;
            let Some(body) = document.body else { return Ok(None) };
            let resolve =
                |link: &str| page.join(link).ok().filter(|u| matches!(u.scheme(), "http" | "https")).map(String::from);
            pypi::upstream_index(&body, &id.name, name, resolve).map(Some).map_err(|e| unreadable(&e))
        }
        PackageFormat::Go => {
            let module_base = format!("{base}/{}/@v/", go::escape(&id.name));
            let document = consulted
                .read(state, name, &format!("{module_base}list"), "text/plain", ttl, absence)
                .await
                .map_err(|e| ApiError::from_upstream(&e, style))?;
            let Some(body) = document.body else { return Ok(None) };
            let mut index = go::upstream_index(&body, &id.name, name, &module_base);
            if effective.minimum_release_age.value.is_some() {
                // Cooldown needs dates, which only each version's `.info`
                // carries; a version whose date cannot be read counts as new.
                for (version, entry) in index.versions.iter_mut() {
                    let url = format!("{module_base}{}.info", go::escape(version));
                    let info = consulted.read(state, name, &url, "application/json", ttl, absence).await.ok();
                    entry.created = info.and_then(|d| d.body).and_then(|b| go::info_time(&b)).unwrap_or_else(Utc::now);
                }
            }
            Ok(Some(index))
        }
        PackageFormat::Cargo => {
            // The sparse index: `config.json` says where crates download
            // from; the index file is found by the name as cargo spelled it.
            let upstream = |e: wharf_upstream::UpstreamError| ApiError::from_upstream(&e, style);
            let config_url = format!("{base}/config.json");
            let config =
                consulted.read(state, name, &config_url, "application/json", ttl, absence).await.map_err(upstream)?;
            let Some(config) = config.body else {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("external connection {name} has no config.json at {config_url}"),
                    style,
                ));
            };
            let template = cargo::upstream::download_template(&config).map_err(|e| unreadable(&e))?;
            let url = format!("{base}/{}", cargo::index_path(spelling));
            let document = consulted.read(state, name, &url, "text/plain", ttl, absence).await.map_err(upstream)?;
            let Some(body) = document.body else { return Ok(None) };
            cargo::upstream::upstream_index(&body, spelling, name, &template).map(Some).map_err(|e| unreadable(&e))
        }
        PackageFormat::Maven => {
            let coordinates =
                maven::parse_package_name(&id.name).map_err(|e| ApiError::bad_request(e.to_string(), style))?;
            let folder = format!("{base}/{}", maven::package_path(&coordinates));
            let url = format!("{folder}{}", maven::METADATA_FILE);
            let document = consulted
                .read(state, name, &url, "application/xml", ttl, absence)
                .await
                .map_err(|e| ApiError::from_upstream(&e, style))?;
            let Some(body) = document.body else { return Ok(None) };
            let mut index = maven::upstream_index(&body, &id.name, name).map_err(|e| unreadable(&e))?;
            if effective.minimum_release_age.value.is_some() {
                // Cooldown needs dates, which Maven metadata does not
                // give per version: a release is as old as its POM's
                // Last-Modified. One with no readable date counts as new.
                let (folder, artifact) = (&folder, &coordinates.artifact_id);
                let dates: Vec<_> = futures::stream::iter(index.versions.keys().cloned().collect::<Vec<_>>())
                    .map(|version| async move {
                        let url = format!("{folder}{version}/{artifact}-{version}.pom");
                        let pom = consulted.read(state, name, &url, "application/xml", ttl, absence).await;
                        (version, pom.ok().and_then(|d| d.last_modified))
                    })
                    .buffer_unordered(8)
                    .collect()
                    .await;
                for (version, date) in dates {
                    if let Some(entry) = index.versions.get_mut(&version) {
                        entry.created = date.unwrap_or_else(Utc::now);
                    }
                }
            }
            Ok(Some(index))
        }
        _ => Ok(None),
    }
}

/// The package as `repo` sees it: its own versions, its upstreams' (where
/// `internalUpstream` admits them) and the external connection's (where
/// policy and origin admit them), with blocked and too-young versions
/// hidden. `None` when nobody has the package. An unreachable upstream is
/// an error only when nothing else has the package. `spelling` is the name
/// as the client wrote it (Cargo index paths depend on it).
pub async fn view(
    state: &SharedState,
    repo: &str,
    id: &PackageId,
    spelling: &str,
    style: ErrorStyle,
) -> Result<Option<View>, ApiError> {
    let chain = policy::resolution_order(&state.config, repo);
    let effective = policy::evaluate(&state.config, repo, id);
    let ttl = effective.metadata_ttl.value;
    let snapshots = state
        .registry
        .chain_snapshots(&chain.repositories, id, |r| r == repo || effective.internal_allowed(r))
        .await
        .map_err(core_error(style))?;
    let recorded = state.registry.package_origin(id).await.map_err(core_error(style))?;
    let stamp = Stamp {
        config: state.config.clone(),
        revisions: snapshots.iter().map(|s| s.as_ref().map(|s| s.revision)).collect(),
        origin: recorded.as_ref().map(|o| o.kind),
    };
    let key = (repo.to_owned(), id.clone(), spelling.to_owned());
    if let Some(cached) = state.views.get(&key)
        && cached.stamp == stamp
        && cached.expires.is_none_or(|expires| expires > Instant::now())
        && readings_hold(state, &cached.readings, ttl).await
    {
        return Ok(cached.view.clone());
    }

    let local = wharf_core::merge_snapshots(snapshots.iter().flatten());
    let origin = origin_of(recorded, local.as_ref());
    let hop = usable_hop(&chain, id, &effective, origin.as_ref());
    let external_allowed = hop.is_some();
    let consulted = Consulted::default();
    // Only a view built from answers is kept: after an upstream failure
    // the next read asks again.
    let mut answered = true;
    let external = match hop {
        Some(hop) => match external_index(state, hop, id, spelling, &effective, &consulted, style).await {
            Ok(index) => index,
            Err(error) if local.is_some() => {
                tracing::warn!(package = %id.name, error = %error.message, "serving cached versions only");
                answered = false;
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let now = Utc::now();
    let view = match (local, external) {
        (None, None) => None,
        (local, external) => {
            let mut index = match (local, external) {
                (local, Some(external)) => policy::merge_external(local, external),
                (Some(local), None) => local,
                (None, None) => PackageIndex::default(),
            };
            let comes_of_age = next_coming_of_age(&index, &effective, now);
            policy::apply_policy(&mut index, id, &effective, now);
            let view = View {
                index: Arc::new(index),
                chain: Arc::new(chain),
                metadata_ttl: ttl,
                external_allowed,
                renders: Arc::default(),
            };
            Some((view, comes_of_age))
        }
    };
    let expires = view.as_ref().and_then(|(_, at)| *at).map(|at| {
        let wait = (at - now).to_std().unwrap_or_default();
        Instant::now() + wait
    });
    let view = view.map(|(view, _)| view);
    if answered {
        let readings = consulted.0.into_inner().unwrap_or_else(|e| e.into_inner());
        state.views.keep(key, CachedView { stamp, readings, expires, view: view.clone() });
    }
    Ok(view)
}

/// When the first upstream version the cooldown hides becomes old enough
/// to show (and a view kept from now stops holding).
fn next_coming_of_age(
    index: &PackageIndex,
    effective: &EffectivePolicy,
    now: chrono::DateTime<Utc>,
) -> Option<chrono::DateTime<Utc>> {
    let age = chrono::Duration::from_std(effective.minimum_release_age.value?).ok()?;
    index
        .versions
        .values()
        .filter(|entry| entry.fetched_from.is_some() && now - entry.created < age)
        .map(|entry| entry.created + age)
        .min()
}

/// The stored digests of `asset_name` of `version` in the view, fetching
/// it from the external connection first when the Domain does not hold it
/// yet. Concurrent requests for one file make one upstream fetch; the
/// copy is kept in `repo` and in the Repository holding the connection.
pub async fn stored_asset(
    state: &SharedState,
    repo: &str,
    view: &View,
    id: &PackageId,
    version: &str,
    asset_name: &str,
    style: ErrorStyle,
) -> Result<BlobDigests, ApiError> {
    let missing = || ApiError::not_found(format!("{} {version} has no file {asset_name}", id.name), style);
    let entry = view.index.versions.get(version).ok_or_else(missing)?;
    if !entry.status.is_installable() {
        return Err(ApiError::not_found(format!("{} {version} is {}", id.name, entry.status.as_str()), style));
    }
    let asset = entry.assets.get(asset_name).ok_or_else(missing)?;
    let Some(url) = asset.metadata.get(UPSTREAM_URL).and_then(|u| u.as_str()) else {
        return Ok(asset.digests.clone());
    };
    let Some(hop) = view.chain.external(id.format) else { return Err(missing()) };
    let connection = hop.connection.name.as_str();
    let keepers = keepers(repo, hop);
    unstorable(connection, id, version, asset_name, style)?;
    let turn = format!("{connection} {} {} {version} {asset_name}", id.format.as_str(), id.name);
    let asked = Instant::now();
    let _turn = state.upstream.one_at_a_time(&turn).await;
    // Whoever held the turn before may have stored it meanwhile.
    for keeper in &keepers {
        if let Some(snapshot) = state.registry.package(keeper, id).await.map_err(core_error(style))?
            && let Some(stored) = snapshot.index.versions.get(version).and_then(|e| e.assets.get(asset_name))
        {
            return Ok(stored.digests.clone());
        }
    }
    // Or failed meanwhile: its answer, rather than the same wait again.
    if let Some((status, message)) = state.upstream.failed_since(&turn, asked) {
        return Err(ApiError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), message, style));
    }
    check_file_origin(state, view, hop, id.format, url, asset_name, style).await?;
    let fetch = async {
        let body = state.upstream.download(connection, url).await.map_err(|e| ApiError::from_upstream(&e, style))?;
        stage_upstream_file(state, connection, asset_name, body, style).await
    };
    let mut staged = fetch.await.inspect_err(|error| {
        state.upstream.note_failed_fetch(&turn, error.status.as_u16(), &error.message);
    })?;
    let (declared, fetched) = (&asset.digests, staged.digests());
    let differs = |declared: &str, actual: &str| !declared.is_empty() && !declared.eq_ignore_ascii_case(actual);
    let checked = if differs(&declared.sha256, &fetched.sha256)
        || differs(&declared.sha512, &fetched.sha512)
        || differs(&declared.sha1, &fetched.sha1)
    {
        Err(mismatched(connection, asset_name, style))
    } else {
        Ok(())
    };
    staged.discard_on_err(checked).await?;
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, style))?;
    let mut metadata = asset.metadata.clone();
    if let Some(map) = metadata.as_object_mut() {
        map.remove(UPSTREAM_URL);
    }
    let new = NewAsset { name: asset_name.to_owned(), digests: digests.clone(), metadata };
    let fetched = Fetched { repo, view, id, version, created: entry.created, connection };
    keep_fetched(state, &fetched, &keepers, new, style).await?;
    Ok(digests)
}

/// Refuses, before fetching it, an upstream file whose name or version is
/// too long to store (502: the upstream's document is at fault).
fn unstorable(
    connection: &str,
    id: &PackageId,
    version: &str,
    file_name: &str,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    wharf_core::check_storable(id, version, [file_name]).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("external connection {connection} offers a file that cannot be stored here: {e}"),
            style,
        )
    })
}

/// Refuses (502) a file URL from upstream metadata that is not on an origin
/// the connection may fetch from: the connection URL's own, for Cargo the
/// `dl` origin of the connection's own `config.json`, and the connection's
/// `fileOrigins`. Metadata pointing files elsewhere (at an
/// internal address, say) would otherwise make Wharf fetch it; the URL is
/// logged, never told the client.
async fn check_file_origin(
    state: &SharedState,
    view: &View,
    hop: &ExternalHop,
    format: PackageFormat,
    url: &str,
    file_name: &str,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    let connection = hop.connection.name.as_str();
    let origin_of = |text: &str| reqwest::Url::parse(text).ok().map(|u| u.origin());
    let origin = origin_of(url).filter(|o| o.is_tuple());
    let mut allowed = origin.as_ref().is_some_and(|origin| {
        std::iter::once(&hop.connection.url)
            .chain(&hop.connection.file_origins)
            .any(|allowed| origin_of(allowed).as_ref() == Some(origin))
    });
    if !allowed && format == PackageFormat::Cargo && origin.is_some() {
        let config_url = format!("{}/config.json", hop.connection.url.trim_end_matches('/'));
        let config = state
            .upstream
            .metadata(connection, &config_url, "application/json", view.metadata_ttl, Absence::of(format))
            .await
            .map_err(|e| ApiError::from_upstream(&e, style))?;
        let template = config.body.and_then(|body| cargo::upstream::download_template(&body).ok());
        allowed = template.and_then(|t| origin_of(&t)) == origin;
    }
    if allowed {
        return Ok(());
    }
    tracing::warn!(
        connection,
        file = file_name,
        url,
        "refused an upstream file URL on an origin the connection may not fetch from"
    );
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "external connection {connection} points {file_name} at a host other than its own; refused (the registry's log names it; to allow a separate file host, add its origin to the connection's fileOrigins in the Domain)"
        ),
        style,
    ))
}

fn mismatched(connection: &str, file_name: &str, style: ErrorStyle) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "external connection {connection} sent bytes for {file_name} that do not match the digest its metadata declares"
        ),
        style,
    )
}

/// Streams an upstream file into staging, to be checked against what the
/// upstream declared before it is committed; a body that breaks off is the
/// upstream's failure (502), not the client's.
async fn stage_upstream_file(
    state: &SharedState,
    connection: &str,
    file_name: &str,
    body: impl futures::Stream<Item = Result<bytes::Bytes, wharf_storage::BodyError>> + Send,
    style: ErrorStyle,
) -> Result<StagedBlob, ApiError> {
    state.registry.stage_asset(body, state.limits.max_upload_bytes).await.map_err(|e| {
        // Too slow or past its deadline: 504, naming the connection.
        if let CoreError::Storage(wharf_storage::StorageError::Body(cause)) = &e
            && let Some(upstream) = cause.downcast_ref::<UpstreamError>()
        {
            return ApiError::from_upstream(upstream, style);
        }
        match e {
            CoreError::Storage(wharf_storage::StorageError::Body(cause)) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("external connection {connection} broke off sending {file_name}: {cause}"),
                style,
            ),
            other => ApiError::from_core(other, style),
        }
    })
}

/// A version a file was just fetched for.
struct Fetched<'a> {
    repo: &'a str,
    view: &'a View,
    id: &'a PackageId,
    version: &'a str,
    created: chrono::DateTime<Utc>,
    connection: &'a str,
}

/// Keeps a fetched file in each of `keepers` (the requesting Repository
/// and the one holding the connection) and claims the name's origin as
/// external.
async fn keep_fetched(
    state: &SharedState,
    fetched: &Fetched<'_>,
    keepers: &[&str],
    asset: NewAsset,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    let Fetched { repo, view, id, version, created, connection } = *fetched;
    let version_metadata = view.index.versions.get(version).map(|e| e.metadata.clone()).unwrap_or_default();
    for keeper in keepers {
        state
            .registry
            .retain_fetched(
                keeper,
                id,
                &view.index.display_name,
                version,
                version_metadata.clone(),
                created,
                connection,
                asset.clone(),
            )
            .await
            .map_err(core_error(style))?;
    }
    let origin = PackageOrigin {
        kind: OriginKind::External,
        repository: repo.to_owned(),
        connection: Some(connection.to_owned()),
        version: version.to_owned(),
        recorded: Utc::now(),
    };
    state.registry.claim_origin(id, origin).await.map_err(core_error(style))?;
    tracing::info!(package = %id.name, version, asset = asset.name, connection, "fetched from upstream");
    Ok(())
}

/// The Repositories a file fetched for `repo` through `hop` is kept in.
fn keepers<'a>(repo: &'a str, hop: &'a ExternalHop) -> Vec<&'a str> {
    if hop.holder == repo { vec![repo] } else { vec![hop.holder.as_str(), repo] }
}

/// The stored digests of the Maven file `file_name` of `version` in the
/// view, fetched through the external connection first when the version
/// came from there and the Domain lacks that file. Maven metadata lists
/// no files, so the layout gives the upstream URL; a file the upstream
/// lacks is a 404 (clients ask for optional ones), and the bytes are
/// checked against the upstream's `.sha1` sidecar when it has one.
#[allow(clippy::too_many_arguments)]
pub async fn stored_maven_file(
    state: &SharedState,
    repo: &str,
    view: &View,
    id: &PackageId,
    coordinates: &maven::Coordinates,
    version: &str,
    file_name: &str,
    style: ErrorStyle,
) -> Result<BlobDigests, ApiError> {
    let missing = || ApiError::not_found(format!("{file_name} not found"), style);
    let entry = view.index.versions.get(version).filter(|e| e.status.is_installable()).ok_or_else(missing)?;
    if let Some(asset) = entry.assets.get(file_name) {
        return Ok(asset.digests.clone());
    }
    // Versions published in the Domain are never completed from outside.
    let hop = view.chain.external(id.format).filter(|_| view.external_allowed && entry.fetched_from.is_some());
    let Some(hop) = hop else { return Err(missing()) };
    let connection = hop.connection.name.as_str();
    let keepers = keepers(repo, hop);
    unstorable(connection, id, version, file_name, style)?;
    let _turn = state.upstream.one_at_a_time(&format!("{connection} maven {} {version} {file_name}", id.name)).await;
    for keeper in &keepers {
        if let Some(snapshot) = state.registry.package(keeper, id).await.map_err(core_error(style))?
            && let Some(stored) = snapshot.index.versions.get(version).and_then(|e| e.assets.get(file_name))
        {
            return Ok(stored.digests.clone());
        }
    }
    let base = hop.connection.url.trim_end_matches('/');
    let url = format!("{base}/{}{version}/{file_name}", maven::package_path(coordinates));
    let (body, modified) = match state.upstream.download_dated(connection, &url).await {
        Ok(download) => download,
        Err(wharf_upstream::UpstreamError::Status { status: 404, .. }) => return Err(missing()),
        Err(error) => return Err(ApiError::from_upstream(&error, style)),
    };
    let mut staged = stage_upstream_file(state, connection, file_name, body, style).await?;
    let checked = check_maven_sidecar(state, view, connection, &url, file_name, staged.digests(), style).await;
    staged.discard_on_err(checked).await?;
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, style))?;
    // The metadata dates no release; the file's own date stands in.
    let created =
        if entry.created == chrono::DateTime::UNIX_EPOCH { modified.unwrap_or_else(Utc::now) } else { entry.created };
    let new = NewAsset { name: file_name.to_owned(), digests: digests.clone(), metadata: serde_json::Value::Null };
    let fetched = Fetched { repo, view, id, version, created, connection };
    keep_fetched(state, &fetched, &keepers, new, style).await?;
    Ok(digests)
}

/// Compares an upstream Maven file with the upstream's `.sha1` sidecar,
/// when it has one.
async fn check_maven_sidecar(
    state: &SharedState,
    view: &View,
    connection: &str,
    url: &str,
    file_name: &str,
    fetched: &BlobDigests,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    let sidecar = state
        .upstream
        .metadata(connection, &format!("{url}.sha1"), "text/plain", view.metadata_ttl, Absence::NotFound)
        .await
        .map_err(|e| ApiError::from_upstream(&e, style))?;
    if let Some(sidecar) = sidecar.body {
        let declared = maven::ChecksumAlgorithm::Sha1.parse_sidecar(&sidecar).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("external connection {connection} sent an unreadable checksum for {file_name}"),
                style,
            )
        })?;
        if !declared.eq_ignore_ascii_case(&fetched.sha1) {
            return Err(mismatched(connection, file_name, style));
        }
    }
    Ok(())
}

/// A small upstream document about a version not stored here (Go's
/// `.info`), through the metadata cache; `None` when the upstream has none.
pub async fn upstream_document(
    state: &SharedState,
    view: &View,
    format: PackageFormat,
    url: &str,
    accept: &str,
    style: ErrorStyle,
) -> Result<Option<bytes::Bytes>, ApiError> {
    let Some(hop) = view.chain.external(format) else { return Ok(None) };
    let document = state
        .upstream
        .metadata(&hop.connection.name, url, accept, view.metadata_ttl, Absence::of(format))
        .await
        .map_err(|e| ApiError::from_upstream(&e, style))?;
    Ok(document.body)
}

/// Refuses a direct publish the origin controls forbid (403), and a
/// version already reachable through an upstream (409) unless the
/// package's upstream is blocked.
pub async fn check_publish(
    state: &SharedState,
    repo: &str,
    id: &PackageId,
    spelling: &str,
    version: &str,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    let effective = policy::evaluate(&state.config, repo, id);
    let recorded = state.registry.package_origin(id).await.map_err(core_error(style))?;
    let verdict = policy::may_publish(&effective, recorded.as_ref(), repo);
    if !verdict.allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} may not be published here: {}", id.name, verdict.reason),
            style,
        ));
    }
    let chain = policy::resolution_order(&state.config, repo);
    for upstream in chain.repositories.iter().skip(1).filter(|r| effective.internal_allowed(r)) {
        if let Some(snapshot) = state.registry.package(upstream, id).await.map_err(core_error(style))?
            && snapshot.index.versions.get(version).is_some_and(|e| e.status != VersionStatus::Disposed)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{} {version} is already reachable through upstream repository {upstream}", id.name),
                style,
            ));
        }
    }
    if let Some(hop) = usable_hop(&chain, id, &effective, recorded.as_ref()) {
        // An unreachable upstream cannot say whether it has the version;
        // the publish goes ahead rather than fail on someone else's outage.
        let consulted = Consulted::default();
        let upstream = external_index(state, hop, id, spelling, &effective, &consulted, style).await.ok().flatten();
        if upstream.is_some_and(|index| index.versions.contains_key(version)) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{} {version} is already reachable through external connection {}; to publish it here, block that package's externalUpstream with an UpstreamPolicy rule",
                    id.name, hop.connection.name
                ),
                style,
            ));
        }
    }
    Ok(())
}

/// Records that the name's first version in the Domain was published
/// directly, unless an earlier version already decided its origin.
pub async fn record_publish(
    state: &SharedState,
    repo: &str,
    id: &PackageId,
    version: &str,
    outcome: PublishOutcome,
    style: ErrorStyle,
) -> Result<(), ApiError> {
    if outcome != PublishOutcome::Created {
        return Ok(());
    }
    let origin = PackageOrigin {
        kind: OriginKind::Direct,
        repository: repo.to_owned(),
        connection: None,
        version: version.to_owned(),
        recorded: Utc::now(),
    };
    state.registry.claim_origin(id, origin).await.map_err(core_error(style))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kept(document_bytes: usize) -> CachedView {
        let config = wharf_api::DomainConfig::from_yaml_str(
            "test.yaml",
            "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: acme}\nspec: {storage: {memory: {}}}\n",
        )
        .unwrap();
        let reading = Reading {
            connection: "public-npm".into(),
            url: "http://127.0.0.1:9/npm/big".into(),
            accept: "application/json",
            absence: Absence::NotFound,
            copy: Some(Bytes::from(vec![0; document_bytes])),
        };
        CachedView {
            stamp: Stamp { config: Arc::new(config), revisions: vec![None], origin: None },
            readings: vec![reading],
            expires: None,
            view: None,
        }
    }

    fn key(name: &str) -> ViewKey {
        ("app".into(), PackageId::new(PackageFormat::Npm, name), name.into())
    }

    #[test]
    fn kept_views_stay_within_their_memory_budget() {
        let cache = ViewCache::default();
        cache.keep(key("a"), kept(1000));
        cache.keep(key("a"), kept(2000));
        assert_eq!(cache.views.lock().unwrap().bytes, 4000, "a replaced view no longer counts");
        cache.keep(key("b"), kept(MAX_CACHED_VIEW_BYTES / 4));
        assert!(cache.get(&key("a")).is_some() && cache.get(&key("b")).is_some());
        cache.keep(key("c"), kept(MAX_CACHED_VIEW_BYTES / 4));
        assert!(cache.get(&key("a")).is_none(), "over the budget, everything kept before goes");
        assert!(cache.get(&key("c")).is_some());
        assert_eq!(cache.views.lock().unwrap().bytes, MAX_CACHED_VIEW_BYTES / 2);
    }
}
