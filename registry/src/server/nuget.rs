//! NuGet v3 endpoints under `/nuget/{repo}/v3/`: the service index, push
//! (`PUT package`), unlist (`DELETE`) and relist (`POST`), the flat
//! container, registrations and search; and under `v2/` the one v2 search
//! nuget.exe's `list` reads. Errors are plain text with the message as the
//! reason phrase, which is what nuget and dotnet print.
//!
//! Users configure the source `http://HOST/nuget/{repo}/v3/index.json`.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;
use wharf_api::PackageFormat;
use wharf_core::{
    CoreError, Declared, NewAsset, NewVersion, PackageId, Placement, Publication, PublishOutcome, VersionStatus,
};
use wharf_formats::nuget::documents::{self, Feed, SearchFilter};
use wharf_formats::nuget::{self as format, Nupkg, PackageLimits};
use wharf_storage::{BodyError, StagedBlob};

use super::access::{Access, Authorized, Client};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};

/// nuget and dotnet: plain text, the message also the reason phrase.
pub enum Nuget {}

impl Client for Nuget {
    const STYLE: ErrorStyle = ErrorStyle::Text;
}

const STYLE: ErrorStyle = Nuget::STYLE;
/// Search results per page unless asked otherwise, and at most.
const DEFAULT_TAKE: usize = 20;
const MAX_TAKE: usize = 1000;
/// Room for the push form's boundaries and part headers beyond the package.
const FORM_FRAMING_BYTES: u64 = 16 * 1024;

fn bad_request(error: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(error.to_string(), STYLE)
}

fn core_error(error: CoreError) -> ApiError {
    ApiError::from_core(error, STYLE)
}

fn package_id(id: &str) -> Result<PackageId, ApiError> {
    format::validate_id(id).map_err(bad_request)?;
    Ok(PackageId::new(PackageFormat::Nuget, format::lower_id(id)))
}

fn version_key(version: &str) -> Result<String, ApiError> {
    format::parse_version(version).map(|v| v.key()).map_err(bad_request)
}

fn feed(headers: &HeaderMap, repo: &str) -> Feed {
    Feed::new(format!("{}/nuget/{repo}/v3", super::origin(headers)))
}

pub async fn dispatch(
    access: Authorized<Nuget>,
    Path((_, rest)): Path<(String, String)>,
    State(state): State<SharedState>,
    request: Request,
) -> Response {
    let (operation, result) = match access {
        Ok(access) => handle(&state, &access, &rest, request).await,
        Err(refused) => ("nuget", Err(refused)),
    };
    tagged(operation, result)
}

async fn handle(
    state: &SharedState,
    access: &Access<Nuget>,
    rest: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    let headers = request.headers().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let feed = feed(&headers, &access.repo);
    let (protocol, segments) = match segments.split_first() {
        Some((protocol, rest)) => (*protocol, rest),
        None => ("", &segments[..]),
    };
    if protocol == "v2" {
        return legacy(state, access, &feed, segments, read, request.uri()).await;
    }
    if protocol != "v3" {
        return (
            "nuget",
            Err(ApiError::not_found(format!("no NuGet resource at {rest}; the feed is v3/index.json"), STYLE)),
        );
    }
    match (segments, read) {
        (["index.json"], true) => ("nuget_service_index", Ok(json_body(documents::render_service_index(&feed)))),
        (["package"], false) if method == Method::PUT => ("nuget_push", push(state, access, &headers, request).await),
        (["package", id, version], false) if method == Method::DELETE => {
            ("nuget_unlist", set_listed(state, access, id, version, false).await)
        }
        (["package", id, version], false) if method == Method::POST => {
            ("nuget_relist", set_listed(state, access, id, version, true).await)
        }
        (["flatcontainer", id, "index.json"], true) => ("nuget_versions", versions(state, access, id, &headers).await),
        (["flatcontainer", id, version, file], true) => {
            ("nuget_download", download(state, access, id, version, file, &method, &headers).await)
        }
        (["registration", id, "index.json"], true) => {
            ("nuget_registration", registration(state, access, &feed, id, Registration::Index, &headers).await)
        }
        (["registration", id, "page", lower, upper], true) => {
            let part = Registration::Page(lower, upper.strip_suffix(".json").unwrap_or(upper));
            ("nuget_registration", registration(state, access, &feed, id, part, &headers).await)
        }
        (["registration", id, leaf], true) if leaf.ends_with(".json") => {
            let part = Registration::Leaf(leaf.strip_suffix(".json").unwrap_or(leaf));
            ("nuget_registration", registration(state, access, &feed, id, part, &headers).await)
        }
        (["search"], true) => ("nuget_search", search(state, access, &feed, request.uri()).await),
        (["autocomplete"], true) => ("nuget_autocomplete", autocomplete(state, access, request.uri()).await),
        (_, true) => ("nuget", Err(ApiError::not_found(format!("no NuGet resource at {rest}"), STYLE))),
        (_, false) => (
            "nuget",
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on {rest}"), STYLE)),
        ),
    }
}

fn json_body(body: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

/// The package as the repository's clients see it, through its chain.
async fn view(
    state: &SharedState,
    access: &Access<Nuget>,
    id: &str,
) -> Result<(PackageId, wharf_core::View), ApiError> {
    let package = package_id(id)?;
    let view = state.view(&access.repo, &package, id, STYLE).await?;
    let view = view.ok_or_else(|| ApiError::not_found(format!("package {id} not found"), STYLE))?;
    Ok((package, view))
}

/// `flatcontainer/{id}/index.json`.
async fn versions(
    state: &SharedState,
    access: &Access<Nuget>,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (_, view) = view(state, access, id).await?;
    let rendered = view.rendered("nuget:versions", documents::render_versions);
    if rendered.body.is_empty() {
        return Err(ApiError::not_found(format!("package {id} has no installable version"), STYLE));
    }
    Ok(super::metadata_document(rendered, "application/json; charset=utf-8", headers, None))
}

/// `flatcontainer/{id}/{version}/{id}.{version}.nupkg` and `…/{id}.nuspec`.
async fn download(
    state: &SharedState,
    access: &Access<Nuget>,
    id: &str,
    version: &str,
    file: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = version_key(version)?;
    let lower = format::lower_id(id);
    let (file_name, content_type) = if file.eq_ignore_ascii_case(&documents::nupkg_filename(&lower, &key)) {
        (documents::nupkg_filename(&lower, &key), "application/octet-stream")
    } else if file.eq_ignore_ascii_case(&documents::nuspec_filename(&lower)) {
        (documents::nuspec_filename(&lower), "application/xml")
    } else {
        return Err(ApiError::not_found(format!("{file} is not a file of {id} {version}"), STYLE));
    };
    let (package, view) = view(state, access, id).await?;
    let digests = state.stored_asset(&access.repo, &view, &package, &key, &file_name, STYLE).await?;
    blob::serve(&state.packages.registry, &digests, content_type, method, headers, STYLE).await
}

enum Registration<'a> {
    Index,
    Page(&'a str, &'a str),
    Leaf(&'a str),
}

/// `registration/{id}/index.json`, its pages and its leaves.
async fn registration(
    state: &SharedState,
    access: &Access<Nuget>,
    feed: &Feed,
    id: &str,
    part: Registration<'_>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (_, view) = view(state, access, id).await?;
    let missing = || ApiError::not_found(format!("package {id} has no such registration document"), STYLE);
    let index = view.index();
    let body = match part {
        Registration::Index => {
            let key = format!("nuget:registration:{}", feed.registrations());
            let rendered = view.rendered(&key, |index| documents::render_registration_index(feed, index));
            if rendered.body.is_empty() {
                return Err(missing());
            }
            return Ok(super::metadata_document(rendered, "application/json; charset=utf-8", headers, None));
        }
        Registration::Page(lower, upper) => documents::render_registration_page(feed, index, lower, upper),
        Registration::Leaf(version) => documents::render_registration_leaf(feed, index, &version_key(version)?),
    };
    body.map(json_body).ok_or_else(missing)
}

/// `PUT package`: a multipart form whose first file is the `.nupkg`.
async fn push(
    state: &SharedState,
    access: &Access<Nuget>,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let limits = state.limits;
    let too_large = || {
        let message = format!("the package exceeds the upload limit of {} bytes", limits.max_upload_bytes);
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message, STYLE)
    };
    if super::declared_length(headers).is_some_and(|n| n > limits.max_upload_bytes + FORM_FRAMING_BYTES) {
        return Err(too_large());
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| bad_request(format!("expected the package as a multipart/form-data upload: {e}")))?;
    let field = form
        .next_field()
        .await
        .map_err(|e| bad_request(format!("malformed upload form: {e}")))?
        .ok_or_else(|| bad_request("the upload form has no package"))?;
    let body = field.map_err(|e| Box::new(e) as BodyError);
    let mut staged = state.packages.registry.stage_asset(body, limits.max_upload_bytes).await.map_err(core_error)?;
    let inspect =
        |reader| format::inspect_nupkg(reader, PackageLimits::default()).map_err(|e| CoreError::Invalid(e.to_string()));
    let nupkg = state.packages.inspect(&mut staged, &Declared::default(), inspect).await.map_err(core_error)?;
    publish(state, access, nupkg, staged).await
}

async fn publish(
    state: &SharedState,
    access: &Access<Nuget>,
    nupkg: Nupkg,
    staged: StagedBlob,
) -> Result<Response, ApiError> {
    let Nupkg { manifest, version, nuspec, file_count, unpacked_size } = nupkg;
    let lower = format::lower_id(&manifest.id);
    let key = version.key();
    let mut publication =
        Publication::new(&access.repo, PackageId::new(PackageFormat::Nuget, &lower), &manifest.id, &key);
    publication.files = vec![documents::nupkg_filename(&lower, &key), documents::nuspec_filename(&lower)];
    publication.conflict = Some(format!(
        "{} {} already exists with different contents; versions are immutable, so push a new version",
        manifest.id,
        version.normalized()
    ));
    let digests = state.packages.commit(&publication, staged).await.map_err(core_error)?;
    let registry = &state.packages.registry;
    let nuspec_digests = registry.store_small_asset(nuspec.into()).await.map_err(core_error)?;
    let mut metadata = serde_json::to_value(&manifest).map_err(|e| core_error(CoreError::Crashed(e.to_string())))?;
    metadata["publisher"] = json!(access.principal.name());
    let assets = vec![
        NewAsset {
            name: documents::nupkg_filename(&lower, &key),
            digests,
            metadata: json!({"fileCount": file_count, "unpackedSize": unpacked_size}),
        },
        NewAsset {
            name: documents::nuspec_filename(&lower),
            digests: nuspec_digests,
            metadata: serde_json::Value::Null,
        },
    ];
    let new = NewVersion { version: key, metadata, assets, tags: Vec::new() };
    let written = state.packages.write(&publication, Placement::Version { new, withdrawals: None }).await;
    let (status, message) = match written.map_err(core_error)? {
        PublishOutcome::Created => (StatusCode::CREATED, "created"),
        PublishOutcome::AlreadyPublished => {
            (StatusCode::OK, "already published with these exact bytes; nothing changed")
        }
    };
    Ok((status, format!("{} {} {message}\n", manifest.id, version.normalized())).into_response())
}

/// `DELETE package/{id}/{version}` unlists (the version stays installable
/// by exact version), `POST` relists.
async fn set_listed(
    state: &SharedState,
    access: &Access<Nuget>,
    id: &str,
    version: &str,
    listed: bool,
) -> Result<Response, ApiError> {
    let (package, key) = (package_id(id)?, version_key(version)?);
    let (from, to) = if listed {
        (VersionStatus::Unlisted, VersionStatus::Published)
    } else {
        (VersionStatus::Published, VersionStatus::Unlisted)
    };
    match state
        .packages
        .registry
        .set_status(&access.repo, &package, &key, Some(from), to, access.principal.name())
        .await
    {
        Ok(()) => {}
        Err(CoreError::StatusMismatch { actual, .. }) if actual == to.as_str() => {}
        Err(CoreError::StatusMismatch { actual, .. }) => {
            let action = if listed { "relisted" } else { "unlisted" };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{id} {version} is {actual}; only a {} version can be {action}", from.as_str()),
                STYLE,
            ));
        }
        Err(CoreError::NotFound(_)) => return Err(ApiError::not_found(format!("{id} {version} not found"), STYLE)),
        Err(other) => return Err(core_error(other)),
    }
    Ok(if listed { StatusCode::OK } else { StatusCode::NO_CONTENT }.into_response())
}

/// The v2 (OData) resources `nuget list` reads, which the service index
/// names `LegacyGallery`: the service root (whose body the client does not
/// read), no `$metadata` (so the client assumes `Search()`), and `Search()`.
async fn legacy(
    state: &SharedState,
    access: &Access<Nuget>,
    feed: &Feed,
    segments: &[&str],
    read: bool,
    uri: &axum::http::Uri,
) -> (&'static str, Result<Response, ApiError>) {
    match (segments, read) {
        ([], true) => ("nuget_v2", Ok("NuGet v2 search for nuget list; the feed is v3/index.json\n".into_response())),
        (["Search()"], true) => ("nuget_v2_search", legacy_search(state, access, feed, uri).await),
        _ => ("nuget_v2", Err(ApiError::not_found("only Search() of the v2 protocol is served", STYLE))),
    }
}

/// An OData string literal: `'text'` with `''` for a quote.
fn odata_string(value: &str) -> String {
    let value = value.trim();
    value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value).replace("''", "'")
}

/// `v2/Search()?$filter=&searchTerm=&includePrerelease=&$skip=&$top=`:
/// versions as an Atom feed, ordered by id, `$top` (at most 100) from `$skip`.
async fn legacy_search(
    state: &SharedState,
    access: &Access<Nuget>,
    feed: &Feed,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| bad_request(format!("malformed query: {e}")))?
        .0;
    let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let filter = match value("$filter").map(str::trim) {
        None | Some("") => documents::V2Filter::All,
        Some("IsLatestVersion") => documents::V2Filter::Latest,
        Some("IsAbsoluteLatestVersion") => documents::V2Filter::AbsoluteLatest,
        Some(other) => {
            return Err(bad_request(format!(
                "unsupported $filter {other:?}; IsLatestVersion and IsAbsoluteLatestVersion are"
            )));
        }
    };
    let prerelease = value("includePrerelease").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let number = |key: &str, default: usize| -> Result<usize, ApiError> {
        value(key).map_or(Ok(default), |v| v.parse().map_err(|_| bad_request(format!("{key} must be a whole number"))))
    };
    let (skip, top) = (number("$skip", 0)?, number("$top", 30)?.min(100));
    let term = value("searchTerm").map(odata_string).unwrap_or_default();
    let names = state.packages.held_names(&access.repo, PackageFormat::Nuget).await.map_err(core_error)?;
    let mut indexes = Vec::new();
    for name in names {
        let id = PackageId::new(PackageFormat::Nuget, name);
        if let Some(index) = state.packages.held(&access.repo, &id).await.map_err(core_error)?
            && documents::matches_query(&term, &index)
        {
            indexes.push(index);
        }
    }
    indexes.sort_by_key(|index| index.display_name.to_ascii_lowercase());
    let entries: Vec<_> = indexes
        .iter()
        .flat_map(|index| documents::v2_versions(index, filter, prerelease).into_iter().rev().map(move |r| (index, r)))
        .skip(skip)
        .take(top)
        .collect();
    let body = documents::render_v2_feed(feed, entries);
    Ok(([(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")], body).into_response())
}

/// The query of a search or autocomplete request.
struct Query {
    q: String,
    id: Option<String>,
    skip: usize,
    take: usize,
    filter: SearchFilter,
}

fn parse_query(uri: &axum::http::Uri) -> Result<Query, ApiError> {
    let mut parsed = Query {
        q: String::new(),
        id: None,
        skip: 0,
        take: DEFAULT_TAKE,
        filter: SearchFilter { prerelease: false, semver2: false },
    };
    let number = |key: &str, value: &str| {
        value.parse::<usize>().map_err(|_| bad_request(format!("{key} must be a whole number, not {value:?}")))
    };
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| bad_request(format!("malformed query: {e}")))?;
    for (key, value) in pairs.0 {
        match key.as_str() {
            "q" => parsed.q = value.trim().to_owned(),
            "id" => parsed.id = Some(value.trim().to_owned()),
            "skip" => parsed.skip = number("skip", &value)?,
            "take" => {
                parsed.take = number("take", &value)?;
                if parsed.take > MAX_TAKE {
                    return Err(bad_request(format!("take may be at most {MAX_TAKE}")));
                }
            }
            "prerelease" => parsed.filter.prerelease = value.eq_ignore_ascii_case("true"),
            "semVerLevel" => {
                parsed.filter.semver2 =
                    value.split('.').next().is_some_and(|major| major.parse::<u32>().is_ok_and(|m| m >= 2))
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// The packages of the repository and its upstream Repositories that match
/// `q` and show a version under the filter: exact id first, then by id.
async fn matching(
    state: &SharedState,
    repo: &str,
    q: &str,
    filter: SearchFilter,
) -> Result<Vec<wharf_core::PackageIndex>, ApiError> {
    let names = state.packages.held_names(repo, PackageFormat::Nuget).await.map_err(core_error)?;
    let mut found = Vec::new();
    for name in names {
        let id = PackageId::new(PackageFormat::Nuget, name);
        let Some(index) = state.packages.held(repo, &id).await.map_err(core_error)? else { continue };
        if documents::matches_query(q, &index) && !documents::visible(&index, filter).is_empty() {
            found.push(index);
        }
    }
    let exact = q.to_ascii_lowercase();
    found.sort_by_key(|index| {
        (index.display_name.to_ascii_lowercase() != exact, index.display_name.to_ascii_lowercase())
    });
    Ok(found)
}

/// `search?q=&skip=&take=&prerelease=&semVerLevel=`: what the repository
/// and its upstream Repositories hold (an external connection's packages
/// once fetched), matched on id, title and tags.
async fn search(
    state: &SharedState,
    access: &Access<Nuget>,
    feed: &Feed,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let query = parse_query(uri)?;
    let found = matching(state, &access.repo, &query.q, query.filter).await?;
    let data: Vec<serde_json::Value> = found
        .iter()
        .skip(query.skip)
        .take(query.take)
        .filter_map(|index| documents::search_result(feed, index, query.filter))
        .collect();
    Ok(axum::Json(json!({"totalHits": found.len(), "data": data})).into_response())
}

/// `autocomplete?q=`: matching ids; `autocomplete?id=`: a package's versions.
async fn autocomplete(
    state: &SharedState,
    access: &Access<Nuget>,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let query = parse_query(uri)?;
    if let Some(id) = &query.id {
        let package = package_id(id)?;
        let index = state.packages.held(&access.repo, &package).await.map_err(core_error)?;
        let versions: Vec<String> = index
            .as_ref()
            .map(|index| documents::visible(index, query.filter).iter().map(|r| r.full_version()).collect())
            .unwrap_or_default();
        return Ok(axum::Json(json!({"totalHits": versions.len(), "data": versions})).into_response());
    }
    let found = matching(state, &access.repo, &query.q, query.filter).await?;
    let ids: Vec<&str> = found.iter().skip(query.skip).take(query.take).map(|i| i.display_name.as_str()).collect();
    Ok(axum::Json(json!({"totalHits": found.len(), "data": ids})).into_response())
}
