//! The read pipeline: a package as a Repository's clients see it, through
//! its chain of upstream Repositories and its external connection, with
//! policy applied; and a file of it, fetched into the Domain on first use.
//! The same for every format: what differs comes from the format's
//! [`FormatAdapter`]. Decisions come from [`crate::policy`], storage is
//! written only through [`Registry`], HTTP to upstreams goes through
//! `wharf-upstream`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use wharf_api::{DomainConfig, PackageFormat};
use wharf_storage::{BlobDigests, BodyError, StagedBlob, StorageError};
use wharf_upstream::{Absence, Document, UpstreamClient, UpstreamError};

use crate::adapter::{Adapters, FormatAdapter, UpstreamSource};
use crate::policy::{self, Chain, EffectivePolicy, ExternalHop};
use crate::{
    CoreError, NewAsset, OriginKind, PackageId, PackageIndex, PackageOrigin, PackageSnapshot, Registry, Rendered,
    Renders, UPSTREAM_URL,
};

/// Views kept at most, per process, and their estimated total size; past
/// either all are dropped at once (the next reads rebuild them), which
/// bounds memory without bookkeeping per entry.
const MAX_CACHED_VIEWS: usize = 4096;
const MAX_CACHED_VIEW_BYTES: usize = 256 * 1024 * 1024;
/// What a version costs in a kept index, roughly, beyond the upstream
/// document it was parsed from.
const VIEW_BYTES_PER_VERSION: usize = 512;

/// The packages of a Domain as one revision of its configuration serves
/// them: what a Repository's clients read (this module) and publish
/// ([`crate::publish`]). Every format goes through these pipelines; a
/// handler only extracts its request and renders the answer.
pub struct Packages {
    pub config: Arc<DomainConfig>,
    pub registry: Arc<Registry>,
    pub upstream: Arc<UpstreamClient>,
    adapters: Adapters,
    views: ViewCache,
    /// Largest file fetched from an upstream (the upload limit).
    max_file_bytes: u64,
}

/// A package as the requesting Repository sees it. Cheap to clone: the
/// index and the bodies rendered from it are shared with the caches.
#[derive(Clone)]
pub struct View {
    held: Held,
    /// How long upstream metadata read for this view may be reused.
    metadata_ttl: Duration,
}

#[derive(Clone)]
enum Held {
    /// A Repository without upstreams: its own index as stored.
    Stored(Arc<PackageSnapshot>),
    /// Merged through a chain, policy applied.
    Merged {
        index: Arc<PackageIndex>,
        chain: Arc<Chain>,
        /// Whether policy and origin let the chain's external connection
        /// serve this package (what may complete a cached copy from outside).
        external_allowed: bool,
        renders: Arc<Renders>,
    },
}

impl View {
    pub fn index(&self) -> &PackageIndex {
        match &self.held {
            Held::Stored(snapshot) => &snapshot.index,
            Held::Merged { index, .. } => index,
        }
    }

    /// The body `render` produces from this view, computed once per `key`
    /// (a format's variant and base URL) while the view holds.
    pub fn rendered(&self, key: &str, render: impl FnOnce(&PackageIndex) -> Bytes) -> Rendered {
        match &self.held {
            Held::Stored(snapshot) => snapshot.rendered(key, render),
            Held::Merged { index, renders, .. } => renders.get_or_render(key, index, render),
        }
    }

    /// Dates an upstream version whose metadata did not (Go's `.info` is
    /// read only when the version is asked for). Changes this copy only,
    /// which from then on renders its own bodies.
    pub fn date_version(&mut self, version: &str, created: chrono::DateTime<Utc>) {
        if let Held::Merged { index, renders, .. } = &mut self.held
            && let Some(entry) = Arc::make_mut(index).versions.get_mut(version)
        {
            entry.created = created;
            *renders = Arc::default();
        }
    }

    /// The external connection that may complete this package from outside.
    fn external(&self, format: PackageFormat) -> Option<&ExternalHop> {
        match &self.held {
            Held::Merged { chain, external_allowed: true, .. } => chain.external(format),
            _ => None,
        }
    }

    /// The chain's external connection for `format`, allowed to serve this package or not.
    fn connection(&self, format: PackageFormat) -> Option<&ExternalHop> {
        match &self.held {
            Held::Merged { chain, .. } => chain.external(format),
            Held::Stored(_) => None,
        }
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
pub(crate) struct Consulted(Mutex<Vec<Reading>>);

impl Consulted {
    /// Reads a metadata document through the client's cache, noting it.
    pub(crate) async fn read(
        &self,
        client: &UpstreamClient,
        connection: &str,
        url: &str,
        accept: &'static str,
        ttl: Duration,
        absence: Absence,
    ) -> Result<Document, UpstreamError> {
        let document = client.metadata(connection, url, accept, ttl, absence).await?;
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
    config: Arc<DomainConfig>,
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
struct ViewCache {
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
        let versions = self.view.as_ref().map_or(0, |v| v.index().versions.len());
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

/// The origin record, or what the chain's own versions imply when none was
/// written (versions published before origins were recorded).
pub(crate) fn origin_of(recorded: Option<PackageOrigin>, local: Option<&PackageIndex>) -> Option<PackageOrigin> {
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
pub(crate) fn usable_hop<'a>(
    chain: &'a Chain,
    id: &PackageId,
    effective: &EffectivePolicy,
    origin: Option<&PackageOrigin>,
) -> Option<&'a ExternalHop> {
    let hop = chain.external(id.format)?;
    let allowed = policy::may_fetch_external(effective, origin, &hop.holder).allowed;
    allowed.then_some(hop)
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

/// A version a file was just fetched for.
struct Fetched<'a> {
    repo: &'a str,
    view: &'a View,
    id: &'a PackageId,
    version: &'a str,
    created: chrono::DateTime<Utc>,
    connection: &'a str,
}

/// The Repositories a file fetched for `repo` through `hop` is kept in:
/// the requesting Repository and the one holding the connection.
fn keepers<'a>(repo: &'a str, hop: &'a ExternalHop) -> Vec<&'a str> {
    if hop.holder == repo { vec![repo] } else { vec![hop.holder.as_str(), repo] }
}

fn mismatched(connection: &str, file_name: &str) -> CoreError {
    CoreError::upstream_unusable(format!(
        "external connection {connection} sent bytes for {file_name} that do not match the digest its metadata declares"
    ))
}

/// Refuses, before fetching it, an upstream file whose name or version is
/// too long to store (the upstream's document is at fault).
fn unstorable(connection: &str, id: &PackageId, version: &str, file_name: &str) -> Result<(), CoreError> {
    crate::check_storable(id, version, [file_name]).map_err(|e| {
        CoreError::upstream_unusable(format!(
            "external connection {connection} offers a file that cannot be stored here: {e}"
        ))
    })
}

impl Packages {
    pub fn new(
        config: Arc<DomainConfig>,
        registry: Arc<Registry>,
        upstream: Arc<UpstreamClient>,
        adapters: Adapters,
        max_file_bytes: u64,
    ) -> Self {
        Packages { config, registry, upstream, adapters, views: ViewCache::default(), max_file_bytes }
    }

    /// Whether a read of `repo` can involve anything but `repo` itself.
    fn has_chain(&self, repo: &str) -> bool {
        self.config
            .repository(repo)
            .is_some_and(|r| !r.spec.upstreams.is_empty() || r.spec.external_connection.is_some())
    }

    fn adapter(&self, format: PackageFormat) -> Option<&dyn FormatAdapter> {
        self.adapters.get(format)
    }

    /// The package as `repo` sees it: its own versions, its upstreams'
    /// (where `internalUpstream` admits them) and the external connection's
    /// (where policy and origin admit them), with blocked and too-young
    /// versions hidden. `None` when nobody has the package. An unreachable
    /// upstream is an error only when nothing else has the package.
    /// `spelling` is the name as the client wrote it (Cargo index paths
    /// depend on it).
    pub async fn view(&self, repo: &str, id: &PackageId, spelling: &str) -> Result<Option<View>, CoreError> {
        if !self.has_chain(repo) {
            // Nothing is read from upstreams for it, so no TTL applies.
            let snapshot = self.registry.package(repo, id).await?;
            return Ok(snapshot.map(|snapshot| View { held: Held::Stored(snapshot), metadata_ttl: Duration::ZERO }));
        }
        let chain = policy::resolution_order(&self.config, repo);
        let effective = policy::evaluate(&self.config, repo, id);
        let ttl = effective.metadata_ttl.value;
        let snapshots = self
            .registry
            .chain_snapshots(&chain.repositories, id, |r| r == repo || effective.internal_allowed(r))
            .await?;
        let recorded = self.registry.package_origin(id).await?;
        let stamp = Stamp {
            config: self.config.clone(),
            revisions: snapshots.iter().map(|s| s.as_ref().map(|s| s.revision)).collect(),
            origin: recorded.as_ref().map(|o| o.kind),
        };
        let key = (repo.to_owned(), id.clone(), spelling.to_owned());
        if let Some(cached) = self.views.get(&key)
            && cached.stamp == stamp
            && cached.expires.is_none_or(|expires| expires > Instant::now())
            && self.readings_hold(&cached.readings, ttl).await
        {
            return Ok(cached.view.clone());
        }

        let local = crate::merge_snapshots(snapshots.iter().flatten());
        let origin = origin_of(recorded, local.as_ref());
        let hop = usable_hop(&chain, id, &effective, origin.as_ref());
        let external_allowed = hop.is_some();
        let consulted = Consulted::default();
        // Only a view built from answers is kept: after an upstream failure
        // the next read asks again.
        let mut answered = true;
        let external = match hop {
            Some(hop) => match self.external_index(hop, id, spelling, &effective, &consulted).await {
                Ok(index) => index,
                Err(error) if local.is_some() => {
                    tracing::warn!(package = %id.name, %error, "serving cached versions only");
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
                let held = Held::Merged {
                    index: Arc::new(index),
                    chain: Arc::new(chain),
                    external_allowed,
                    renders: Arc::default(),
                };
                Some((View { held, metadata_ttl: ttl }, comes_of_age))
            }
        };
        let expires = view.as_ref().and_then(|(_, at)| *at).map(|at| {
            let wait = (at - now).to_std().unwrap_or_default();
            Instant::now() + wait
        });
        let view = view.map(|(view, _)| view);
        if answered {
            let readings = consulted.0.into_inner().unwrap_or_else(|e| e.into_inner());
            self.views.keep(key, CachedView { stamp, readings, expires, view: view.clone() });
        }
        Ok(view)
    }

    /// What `repo` and its upstream Repositories hold of the package, with
    /// policy applied as in [`Self::view`], without reading any external
    /// connection: for listings that span many packages (search), where a
    /// fetch per package would be too slow. `None` when none holds it.
    pub async fn held(&self, repo: &str, id: &PackageId) -> Result<Option<PackageIndex>, CoreError> {
        let chain = policy::resolution_order(&self.config, repo);
        let effective = policy::evaluate(&self.config, repo, id);
        let snapshots = self
            .registry
            .chain_snapshots(&chain.repositories, id, |r| r == repo || effective.internal_allowed(r))
            .await?;
        let Some(mut index) = crate::merge_snapshots(snapshots.iter().flatten()) else { return Ok(None) };
        policy::apply_policy(&mut index, id, &effective, Utc::now());
        Ok(Some(index))
    }

    /// The names of `format` that `repo` and its upstream Repositories
    /// hold, sorted, each once.
    pub async fn held_names(&self, repo: &str, format: PackageFormat) -> Result<Vec<String>, CoreError> {
        let mut names = std::collections::BTreeSet::new();
        for repository in policy::resolution_order(&self.config, repo).repositories {
            names.extend(self.registry.package_names(&repository, format).await?);
        }
        Ok(names.into_iter().collect())
    }

    /// Whether every upstream document a view read is still the same copy
    /// (asking the client, which revalidates what is past its TTL).
    async fn readings_hold(&self, readings: &[Reading], ttl: Duration) -> bool {
        for reading in readings {
            let now =
                self.upstream.metadata(&reading.connection, &reading.url, reading.accept, ttl, reading.absence).await;
            if !now.is_ok_and(|document| same_copy(&document, reading.copy.as_ref())) {
                return false;
            }
        }
        true
    }

    /// The upstream's versions of the package, as unstored entries.
    pub(crate) async fn external_index(
        &self,
        hop: &ExternalHop,
        id: &PackageId,
        spelling: &str,
        effective: &EffectivePolicy,
        consulted: &Consulted,
    ) -> Result<Option<PackageIndex>, CoreError> {
        let Some(adapter) = self.adapter(id.format) else { return Ok(None) };
        let source = self.source(hop, id.format, effective.metadata_ttl.value, consulted);
        let source = UpstreamSource { needs_dates: effective.minimum_release_age.value.is_some(), ..source };
        adapter.upstream_index(&source, id, spelling).await
    }

    fn source<'a>(
        &'a self,
        hop: &'a ExternalHop,
        format: PackageFormat,
        ttl: Duration,
        consulted: &'a Consulted,
    ) -> UpstreamSource<'a> {
        UpstreamSource {
            client: &self.upstream,
            consulted,
            connection: &hop.connection.name,
            base: hop.connection.url.trim_end_matches('/'),
            ttl,
            absence: Absence::of(format),
            needs_dates: false,
        }
    }

    /// The stored digests of `asset_name` of `version` in the view,
    /// fetching it from the external connection first when the Domain does
    /// not hold it yet. Concurrent requests for one file make one upstream
    /// fetch; the copy is kept in `repo` and in the Repository holding the
    /// connection. Asking counts as a download of the version (cleanup rules).
    pub async fn stored_asset(
        &self,
        repo: &str,
        view: &View,
        id: &PackageId,
        version: &str,
        asset_name: &str,
    ) -> Result<BlobDigests, CoreError> {
        let missing = || CoreError::NotFound(format!("{} {version} has no file {asset_name}", id.name));
        let entry = view.index().versions.get(version).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(CoreError::NotFound(format!("{} {version} is {}", id.name, entry.status.as_str())));
        }
        let asset = entry.assets.get(asset_name).ok_or_else(missing)?;
        self.registry.record_download(repo, id, version, asset_name);
        let Some(url) = asset.metadata.get(UPSTREAM_URL).and_then(|u| u.as_str()) else {
            return Ok(asset.digests.clone());
        };
        let Some(hop) = view.connection(id.format) else { return Err(missing()) };
        let connection = hop.connection.name.as_str();
        let keepers = keepers(repo, hop);
        unstorable(connection, id, version, asset_name)?;
        let turn = format!("{connection} {} {} {version} {asset_name}", id.format.as_str(), id.name);
        let asked = Instant::now();
        let _turn = self.upstream.one_at_a_time(&turn).await;
        // Whoever held the turn before may have stored it meanwhile.
        if let Some(stored) = self.kept_copy(&keepers, id, version, asset_name).await? {
            return Ok(stored);
        }
        // Or failed meanwhile: its answer, rather than the same wait again.
        if let Some(failed) = self.upstream.failed_since(&turn, asked) {
            return Err(CoreError::Upstream { message: failed.message, timed_out: failed.timed_out });
        }
        self.check_file_origin(view, hop, id.format, url, asset_name).await?;
        let fetch = async {
            let body = self.upstream.download(connection, url).await.map_err(|e| CoreError::upstream(&e))?;
            self.stage_upstream_file(connection, asset_name, body).await
        };
        let mut staged = fetch.await.inspect_err(|error| {
            if let CoreError::Upstream { message, timed_out } = error {
                self.upstream.note_failed_fetch(&turn, *timed_out, message);
            }
        })?;
        let (declared, fetched) = (&asset.digests, staged.digests());
        let differs = |declared: &str, actual: &str| !declared.is_empty() && !declared.eq_ignore_ascii_case(actual);
        let checked = if differs(&declared.sha256, &fetched.sha256)
            || differs(&declared.sha512, &fetched.sha512)
            || differs(&declared.sha1, &fetched.sha1)
        {
            Err(mismatched(connection, asset_name))
        } else {
            Ok(())
        };
        staged.discard_on_err(checked).await?;
        let digests = staged.commit().await?;
        let mut metadata = asset.metadata.clone();
        if let Some(map) = metadata.as_object_mut() {
            map.remove(UPSTREAM_URL);
        }
        let new = NewAsset { name: asset_name.to_owned(), digests: digests.clone(), metadata };
        let fetched = Fetched { repo, view, id, version, created: entry.created, connection };
        self.keep_fetched(&fetched, &keepers, new).await?;
        Ok(digests)
    }

    /// The stored digests of a file the upstream's metadata does not list
    /// (Maven's), fetched through the external connection first when the
    /// version came from there and the Domain lacks that file. The format's
    /// layout gives the upstream URL; a file the upstream lacks is missing
    /// here too (clients ask for optional ones), and the bytes are checked
    /// against the upstream's SHA-1 sidecar when it has one.
    pub async fn stored_layout_file(
        &self,
        repo: &str,
        view: &View,
        id: &PackageId,
        version: &str,
        file_name: &str,
    ) -> Result<BlobDigests, CoreError> {
        let missing = || CoreError::NotFound(format!("{file_name} not found"));
        let entry = view.index().versions.get(version).filter(|e| e.status.is_installable()).ok_or_else(missing)?;
        self.registry.record_download(repo, id, version, file_name);
        if let Some(asset) = entry.assets.get(file_name) {
            return Ok(asset.digests.clone());
        }
        // Versions published in the Domain are never completed from outside.
        let hop = view.external(id.format).filter(|_| entry.fetched_from.is_some());
        let Some(hop) = hop else { return Err(missing()) };
        let adapter = self.adapter(id.format).ok_or_else(missing)?;
        let connection = hop.connection.name.as_str();
        let base = hop.connection.url.trim_end_matches('/');
        let file = adapter.layout_file(base, id, version, file_name).ok_or_else(missing)?;
        let keepers = keepers(repo, hop);
        unstorable(connection, id, version, file_name)?;
        let turn = format!("{connection} {} {} {version} {file_name}", id.format.as_str(), id.name);
        let _turn = self.upstream.one_at_a_time(&turn).await;
        if let Some(stored) = self.kept_copy(&keepers, id, version, file_name).await? {
            return Ok(stored);
        }
        let (body, modified) = match self.upstream.download_dated(connection, &file.url).await {
            Ok(download) => download,
            Err(UpstreamError::Status { status: 404, .. }) => return Err(missing()),
            Err(error) => return Err(CoreError::upstream(&error)),
        };
        let mut staged = self.stage_upstream_file(connection, file_name, body).await?;
        let checked =
            self.check_sha1_sidecar(adapter, view, connection, &file.sha1_url, file_name, staged.digests()).await;
        staged.discard_on_err(checked).await?;
        let digests = staged.commit().await?;
        // The metadata dates no release; the file's own date stands in.
        let created = if entry.created == chrono::DateTime::UNIX_EPOCH {
            modified.unwrap_or_else(Utc::now)
        } else {
            entry.created
        };
        let new = NewAsset { name: file_name.to_owned(), digests: digests.clone(), metadata: serde_json::Value::Null };
        let fetched = Fetched { repo, view, id, version, created, connection };
        self.keep_fetched(&fetched, &keepers, new).await?;
        Ok(digests)
    }

    /// The file as already kept by one of `keepers`, if one holds it.
    async fn kept_copy(
        &self,
        keepers: &[&str],
        id: &PackageId,
        version: &str,
        file_name: &str,
    ) -> Result<Option<BlobDigests>, CoreError> {
        for keeper in keepers {
            if let Some(snapshot) = self.registry.package(keeper, id).await?
                && let Some(stored) = snapshot.index.versions.get(version).and_then(|e| e.assets.get(file_name))
            {
                return Ok(Some(stored.digests.clone()));
            }
        }
        Ok(None)
    }

    /// Compares a fetched file with the upstream's SHA-1 sidecar, when it has one.
    async fn check_sha1_sidecar(
        &self,
        adapter: &dyn FormatAdapter,
        view: &View,
        connection: &str,
        sidecar_url: &str,
        file_name: &str,
        fetched: &BlobDigests,
    ) -> Result<(), CoreError> {
        let sidecar = self
            .upstream
            .metadata(connection, sidecar_url, "text/plain", view.metadata_ttl, Absence::NotFound)
            .await
            .map_err(|e| CoreError::upstream(&e))?;
        if let Some(sidecar) = sidecar.body {
            let declared = adapter.parse_sha1_sidecar(&sidecar).ok_or_else(|| {
                CoreError::upstream_unusable(format!(
                    "external connection {connection} sent an unreadable checksum for {file_name}"
                ))
            })?;
            if !declared.eq_ignore_ascii_case(&fetched.sha1) {
                return Err(mismatched(connection, file_name));
            }
        }
        Ok(())
    }

    /// A small upstream document about a version not stored here (Go's
    /// `.info`), through the metadata cache; `None` when the upstream has
    /// none or the view has no connection.
    pub async fn upstream_document(
        &self,
        view: &View,
        format: PackageFormat,
        url: &str,
        accept: &str,
    ) -> Result<Option<Bytes>, CoreError> {
        let Some(hop) = view.connection(format) else { return Ok(None) };
        let document = self
            .upstream
            .metadata(&hop.connection.name, url, accept, view.metadata_ttl, Absence::of(format))
            .await
            .map_err(|e| CoreError::upstream(&e))?;
        Ok(document.body)
    }

    /// The document at `path` under the external connection `repo`'s chain
    /// ends with for `format`, through the metadata cache (Go's checksum
    /// database, which module proxies serve too); `None` when the upstream
    /// has none, not found when the chain has no such connection.
    pub async fn connection_document(
        &self,
        repo: &str,
        format: PackageFormat,
        path: &str,
        accept: &str,
    ) -> Result<Option<Bytes>, CoreError> {
        let chain = policy::resolution_order(&self.config, repo);
        let Some(hop) = chain.external(format) else {
            return Err(CoreError::NotFound(format!(
                "no {} external connection to proxy {path} through",
                format.as_str()
            )));
        };
        let url = format!("{}/{path}", hop.connection.url.trim_end_matches('/'));
        let ttl = policy::metadata_ttl(&self.config, repo).value;
        let document = self
            .upstream
            .metadata(&hop.connection.name, &url, accept, ttl, Absence::of(format))
            .await
            .map_err(|e| CoreError::upstream(&e))?;
        Ok(document.body)
    }

    /// Refuses a file URL from upstream metadata that is not on an origin
    /// the connection may fetch from: the connection URL's own, one the
    /// upstream declares itself (Cargo's `dl`, through the format's
    /// adapter), and the connection's `fileOrigins`. Metadata pointing files
    /// elsewhere (at an internal address, say) would otherwise make Wharf
    /// fetch it; the URL is logged, never told the client.
    async fn check_file_origin(
        &self,
        view: &View,
        hop: &ExternalHop,
        format: PackageFormat,
        url: &str,
        file_name: &str,
    ) -> Result<(), CoreError> {
        let connection = hop.connection.name.as_str();
        let origin_of = url_origin;
        let origin = origin_of(url);
        let mut allowed = origin.as_ref().is_some_and(|origin| {
            std::iter::once(&hop.connection.url)
                .chain(&hop.connection.file_origins)
                .any(|allowed| origin_of(allowed).as_ref() == Some(origin))
        });
        if !allowed
            && origin.is_some()
            && let Some(adapter) = self.adapter(format)
        {
            let consulted = Consulted::default();
            let source = self.source(hop, format, view.metadata_ttl, &consulted);
            let declared = adapter.declared_file_origin(&source).await?;
            allowed = declared.as_deref().and_then(origin_of) == origin;
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
        Err(CoreError::upstream_unusable(format!(
            "external connection {connection} points {file_name} at a host other than its own; refused (the registry's log names it; to allow a separate file host, add its origin to the connection's fileOrigins in the Domain)"
        )))
    }

    /// Streams an upstream file into staging, to be checked against what the
    /// upstream declared before it is committed; a body that breaks off is the
    /// upstream's failure, not the client's.
    async fn stage_upstream_file(
        &self,
        connection: &str,
        file_name: &str,
        body: impl futures::Stream<Item = Result<Bytes, BodyError>> + Send,
    ) -> Result<StagedBlob, CoreError> {
        self.registry.stage_asset(body, self.max_file_bytes).await.map_err(|e| match e {
            // Too slow or past its deadline, naming the connection.
            CoreError::Storage(StorageError::Body(cause)) => match cause.downcast_ref::<UpstreamError>() {
                Some(upstream) => CoreError::upstream(upstream),
                None => CoreError::upstream_unusable(format!(
                    "external connection {connection} broke off sending {file_name}: {cause}"
                )),
            },
            other => other,
        })
    }

    /// Keeps a fetched file in each of `keepers` and claims the name's
    /// origin as external.
    async fn keep_fetched(&self, fetched: &Fetched<'_>, keepers: &[&str], asset: NewAsset) -> Result<(), CoreError> {
        let Fetched { repo, view, id, version, created, connection } = *fetched;
        let index = view.index();
        let version_metadata = index.versions.get(version).map(|e| e.metadata.clone()).unwrap_or_default();
        for keeper in keepers {
            self.registry
                .retain_fetched(
                    keeper,
                    id,
                    &index.display_name,
                    version,
                    version_metadata.clone(),
                    created,
                    connection,
                    asset.clone(),
                )
                .await?;
        }
        let origin = PackageOrigin {
            kind: OriginKind::External,
            repository: repo.to_owned(),
            connection: Some(connection.to_owned()),
            version: version.to_owned(),
            recorded: Utc::now(),
        };
        self.registry.claim_origin(id, origin).await?;
        tracing::info!(package = %id.name, version, asset = asset.name, connection, "fetched from upstream");
        let action = crate::activity::Action::Fetched { connection: connection.to_owned(), file: asset.name };
        self.registry.report(action, repo, id, Some(version));
        Ok(())
    }
}

/// The scheme, host and port of an absolute http(s) URL, to compare origins.
fn url_origin(text: &str) -> Option<url::Origin> {
    url::Url::parse(text).ok().map(|u| u.origin()).filter(url::Origin::is_tuple)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kept(document_bytes: usize) -> CachedView {
        let config = DomainConfig::from_yaml_str(
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

    const CHAIN: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
  externalConnections: [{name: public, format: npm, url: "http://127.0.0.1:9/npm"}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: app}
spec: {domainRef: {name: acme}, upstreams: [{name: store}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: store}
spec: {domainRef: {name: acme}, externalConnection: public}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: plain}
spec: {domainRef: {name: acme}}
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: blocked}
spec:
  targetRefs: [{kind: Domain, name: acme}]
  rules:
    - patterns: ["/*"]
      blockedVersions: ["/npm//left-pad@1.0.1"]
"#;

    /// An upstream that offers two versions of every package, counting the questions.
    struct TwoVersions(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl FormatAdapter for TwoVersions {
        fn format(&self) -> PackageFormat {
            PackageFormat::Npm
        }

        async fn upstream_index(
            &self,
            upstream: &UpstreamSource<'_>,
            id: &PackageId,
            _spelling: &str,
        ) -> Result<Option<PackageIndex>, CoreError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut index = PackageIndex { display_name: id.name.clone(), ..Default::default() };
            for version in ["1.0.0", "1.0.1"] {
                let entry = crate::VersionEntry {
                    status: crate::VersionStatus::Published,
                    created: chrono::DateTime::UNIX_EPOCH,
                    metadata: serde_json::Value::Null,
                    assets: Default::default(),
                    deprecated: None,
                    withdrawn: false,
                    fetched_from: Some(upstream.connection().to_owned()),
                    published_by: None,
                };
                index.versions.insert(version.into(), entry);
            }
            Ok(Some(index))
        }
    }

    fn chain_packages() -> (Packages, Arc<TwoVersions>) {
        let storage = wharf_storage::Storage::new(Arc::new(object_store::memory::InMemory::new()));
        let config = Arc::new(DomainConfig::from_yaml_str("test.yaml", CHAIN).unwrap());
        let adapter = Arc::new(TwoVersions(Default::default()));
        let adapters = Adapters::new([adapter.clone() as Arc<dyn FormatAdapter>]);
        let upstream = Arc::new(UpstreamClient::new(Default::default()));
        (Packages::new(config, Arc::new(Registry::new(storage)), upstream, adapters, 1 << 20), adapter)
    }

    fn versions(view: &View) -> Vec<&str> {
        view.index().versions.keys().map(String::as_str).collect()
    }

    #[tokio::test]
    async fn a_view_through_a_chain_merges_the_upstream_under_policy_and_is_kept() {
        let (packages, adapter) = chain_packages();
        let id = PackageId::new(PackageFormat::Npm, "left-pad");
        let view = packages.view("app", &id, "left-pad").await.unwrap().unwrap();
        assert_eq!(versions(&view), ["1.0.0"], "the blocked version is hidden");
        let again = packages.view("app", &id, "left-pad").await.unwrap().unwrap();
        assert_eq!(versions(&again), ["1.0.0"]);
        assert_eq!(adapter.0.load(std::sync::atomic::Ordering::SeqCst), 1, "the kept view is reused");
        assert!(packages.view("plain", &id, "left-pad").await.unwrap().is_none(), "no chain, nothing upstream");
    }

    #[tokio::test]
    async fn a_name_published_here_first_is_never_read_from_outside() {
        let (packages, adapter) = chain_packages();
        let id = PackageId::new(PackageFormat::Npm, "internal-tool");
        let digests = packages.registry.store_small_asset(Bytes::from_static(b"tarball")).await.unwrap();
        let new = crate::NewVersion {
            version: "2.0.0".into(),
            metadata: serde_json::Value::Null,
            assets: vec![NewAsset {
                name: "internal-tool-2.0.0.tgz".into(),
                digests,
                metadata: serde_json::Value::Null,
            }],
            tags: vec![],
        };
        let publication = crate::Publication::new("app", id.clone(), "internal-tool", "2.0.0");
        packages.write(&publication, crate::Placement::Version { new, withdrawals: None }).await.unwrap();
        let view = packages.view("app", &id, "internal-tool").await.unwrap().unwrap();
        assert_eq!(versions(&view), ["2.0.0"]);
        assert_eq!(adapter.0.load(std::sync::atomic::Ordering::SeqCst), 0, "the upstream was not asked");
        let digests = packages.stored_asset("app", &view, &id, "2.0.0", "internal-tool-2.0.0.tgz").await.unwrap();
        assert_eq!(digests.size, 7);
        let missing = packages.stored_asset("app", &view, &id, "2.0.0", "other.tgz").await.unwrap_err();
        assert!(matches!(missing, CoreError::NotFound(_)), "{missing}");
    }
}
