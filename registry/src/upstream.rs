//! Fetching from external connections over HTTP: upstream metadata kept
//! for the policy's TTL, revalidated with ETag / If-Modified-Since and
//! served stale when the upstream fails; artifacts streamed, never
//! buffered; concurrent fetches of one thing coalesced. Does network I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::header;

use crate::storage::BodyError;

/// How long one upstream request may take to answer (headers, or the whole
/// metadata document).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Metadata documents kept in memory, per process, and their total size.
const MAX_CACHED_DOCUMENTS: usize = 10_000;
const MAX_CACHED_BYTES: usize = 512 * 1024 * 1024;
/// After a connection could not be reached, requests to it fail at once
/// for this long (serving stale metadata and cached files) instead of each
/// waiting for its own connect timeout.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(10);
/// Largest upstream metadata document read.
pub const MAX_METADATA_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("external connection {connection} did not answer in time ({url})")]
    Timeout { connection: String, url: String },
    #[error("failed to reach external connection {connection} ({url})")]
    Unreachable {
        connection: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("external connection {connection} answered {status} for {url}")]
    Status { connection: String, url: String, status: u16 },
    #[error("external connection {connection} sent metadata over {limit} bytes for {url}")]
    TooLarge { connection: String, url: String, limit: usize },
    #[error("external connection {connection} was unreachable moments ago; not retried before {seconds} s ({url})")]
    BackingOff { connection: String, url: String, seconds: u64 },
}

impl UpstreamError {
    fn of(connection: &str, url: &str, source: reqwest::Error) -> Self {
        let (connection, url) = (connection.to_owned(), url.to_owned());
        if source.is_timeout() {
            UpstreamError::Timeout { connection, url }
        } else {
            UpstreamError::Unreachable { connection, url, source }
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// The connection itself failed (not an answer it gave).
    fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. } | UpstreamError::Unreachable { .. })
    }
}

/// An upstream metadata document as last seen.
struct CachedDocument {
    /// `None`: the upstream said 404.
    body: Option<Bytes>,
    etag: Option<String>,
    last_modified: Option<String>,
    checked: Instant,
}

/// A metadata document and whether it is older than its TTL because the
/// upstream could not be asked.
pub struct Document {
    pub body: Option<Bytes>,
    pub stale: bool,
}

/// Labels of the upstream request counter: which connection, metadata or
/// an artifact, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub connection: String,
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Requests made to external connections (a warm install makes none).
pub type UpstreamRequests = Family<UpstreamLabels, Counter>;

/// Cached metadata documents and their total size.
#[derive(Default)]
struct Documents {
    by_url: HashMap<String, Arc<CachedDocument>>,
    bytes: usize,
}

/// The registry's client of every external connection.
pub struct UpstreamClient {
    http: reqwest::Client,
    documents: Mutex<Documents>,
    in_flight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    requests: UpstreamRequests,
    /// Connections that could not be reached, and until when to skip them.
    unreachable: Mutex<HashMap<String, Instant>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("wharf-registry/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        UpstreamClient {
            http,
            documents: Mutex::new(Documents::default()),
            in_flight: Mutex::new(HashMap::new()),
            requests: UpstreamRequests::default(),
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    /// Fails at once while `connection` is backing off after being unreachable.
    fn check_reachable(&self, connection: &str, url: &str) -> Result<(), UpstreamError> {
        let unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        match unreachable.get(connection) {
            Some(until) if *until > Instant::now() => Err(UpstreamError::BackingOff {
                connection: connection.to_owned(),
                url: url.to_owned(),
                seconds: until.saturating_duration_since(Instant::now()).as_secs() + 1,
            }),
            _ => Ok(()),
        }
    }

    /// Notes how a request to `connection` went, for [`Self::check_reachable`].
    fn note<T>(&self, connection: &str, result: Result<T, UpstreamError>) -> Result<T, UpstreamError> {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(error) if error.is_unreachable() => {
                unreachable.insert(connection.to_owned(), Instant::now() + UNREACHABLE_BACKOFF);
            }
            Ok(_) => {
                unreachable.remove(connection);
            }
            Err(_) => {}
        }
        result
    }

    /// The request counter, for the registry's `/metrics`.
    pub fn requests(&self) -> UpstreamRequests {
        self.requests.clone()
    }

    fn count(&self, connection: &str, kind: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&UpstreamLabels { connection: connection.to_owned(), kind, outcome }).inc();
    }

    /// Holds the one fetch of `key` in progress: the first caller gets the
    /// turn at once, later ones wait for it and should then look again for
    /// what it stored before fetching themselves.
    pub async fn one_at_a_time(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.retain(|_, lock| lock.strong_count() > 0);
            match in_flight.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    in_flight.insert(key.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    fn cached(&self, url: &str) -> Option<Arc<CachedDocument>> {
        self.documents.lock().unwrap_or_else(|e| e.into_inner()).by_url.get(url).cloned()
    }

    /// Keeps a document; past the count or size limit everything is
    /// dropped at once (the next reads revalidate), which bounds memory
    /// without bookkeeping per entry.
    fn keep(&self, url: &str, document: CachedDocument) {
        let size = |d: &CachedDocument| d.body.as_ref().map_or(0, Bytes::len);
        let mut documents = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        if documents.by_url.len() >= MAX_CACHED_DOCUMENTS || documents.bytes + size(&document) > MAX_CACHED_BYTES {
            documents.by_url.clear();
            documents.bytes = 0;
        }
        documents.bytes += size(&document);
        if let Some(replaced) = documents.by_url.insert(url.to_owned(), Arc::new(document)) {
            documents.bytes -= size(&replaced);
        }
    }

    /// The metadata document at `url`: from memory while younger than
    /// `ttl`, else revalidated (304 keeps it), else fetched; concurrent
    /// callers share one request. When the upstream fails, the last
    /// document seen is returned marked stale; with none, the error.
    pub async fn metadata(
        &self,
        connection: &str,
        url: &str,
        accept: &str,
        ttl: Duration,
    ) -> Result<Document, UpstreamError> {
        let fresh = |cached: &CachedDocument| cached.checked.elapsed() < ttl;
        if let Some(cached) = self.cached(url).filter(|c| fresh(c)) {
            return Ok(Document { body: cached.body.clone(), stale: false });
        }
        let _turn = self.one_at_a_time(&format!("metadata {url}")).await;
        let cached = self.cached(url);
        if let Some(cached) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(Document { body: cached.body.clone(), stale: false });
        }
        let answer = match self.check_reachable(connection, url) {
            Ok(()) => self.note(connection, self.revalidate(connection, url, accept, cached.as_deref()).await),
            Err(backing_off) => Err(backing_off),
        };
        match answer {
            Ok(document) => {
                let body = document.body.clone();
                self.keep(url, document);
                Ok(Document { body, stale: false })
            }
            Err(error) => match cached {
                Some(cached) => {
                    tracing::warn!(error = %crate::server::error_chain(&error), "serving stale upstream metadata");
                    Ok(Document { body: cached.body.clone(), stale: true })
                }
                None => Err(error),
            },
        }
    }

    async fn revalidate(
        &self,
        connection: &str,
        url: &str,
        accept: &str,
        cached: Option<&CachedDocument>,
    ) -> Result<CachedDocument, UpstreamError> {
        let mut request = self.http.get(url).header(header::ACCEPT, accept).timeout(REQUEST_TIMEOUT);
        if let Some(cached) = cached {
            if let Some(etag) = &cached.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &cached.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, modified);
            }
        }
        let response = request.send().await.map_err(|e| {
            self.count(connection, "metadata", "failed");
            UpstreamError::of(connection, url, e)
        })?;
        let status = response.status();
        let outcome = match status {
            reqwest::StatusCode::NOT_MODIFIED => "not_modified",
            reqwest::StatusCode::NOT_FOUND => "not_found",
            s if s.is_success() => "fetched",
            _ => "failed",
        };
        self.count(connection, "metadata", outcome);
        let header_text =
            |name: header::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let etag = header_text(header::ETAG);
        let last_modified = header_text(header::LAST_MODIFIED);
        if status == reqwest::StatusCode::NOT_MODIFIED
            && let Some(cached) = cached
        {
            return Ok(CachedDocument {
                body: cached.body.clone(),
                etag: etag.or_else(|| cached.etag.clone()),
                last_modified: last_modified.or_else(|| cached.last_modified.clone()),
                checked: Instant::now(),
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(CachedDocument { body: None, etag, last_modified, checked: Instant::now() });
        }
        if !status.is_success() {
            return Err(UpstreamError::Status {
                connection: connection.to_owned(),
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if response.content_length().is_some_and(|n| n > MAX_METADATA_BYTES as u64) {
            return Err(self.too_large(connection, url));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.try_next().await.map_err(|e| UpstreamError::of(connection, url, e))? {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(self.too_large(connection, url));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(CachedDocument { body: Some(Bytes::from(body)), etag, last_modified, checked: Instant::now() })
    }

    fn too_large(&self, connection: &str, url: &str) -> UpstreamError {
        UpstreamError::TooLarge { connection: connection.to_owned(), url: url.to_owned(), limit: MAX_METADATA_BYTES }
    }

    /// The bytes at `url`, as a stream for [`crate::core::Registry::stage_asset`].
    pub async fn download(
        &self,
        connection: &str,
        url: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, BodyError>> + Send + use<>, UpstreamError> {
        self.check_reachable(connection, url)?;
        let sent = self.http.get(url).send().await.map_err(|e| {
            self.count(connection, "artifact", "failed");
            UpstreamError::of(connection, url, e)
        });
        let response = self.note(connection, sent)?;
        let outcome = if response.status().is_success() { "fetched" } else { "failed" };
        self.count(connection, "artifact", outcome);
        if !response.status().is_success() {
            return Err(UpstreamError::Status {
                connection: connection.to_owned(),
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        Ok(response.bytes_stream().map_err(|e| Box::new(e) as BodyError))
    }
}
