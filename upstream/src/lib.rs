//! Fetching from external connections over HTTP: upstream metadata kept
//! for the policy's TTL, revalidated with ETag / If-Modified-Since, its
//! last good copy kept in storage and served stale (also after a restart)
//! when the upstream fails; artifacts streamed, never buffered, within a
//! deadline and a minimum rate; concurrent fetches of one thing coalesced;
//! unreachable hosts backed off per host; a private upstream's credentials
//! sent to its own origin only. Does network I/O (and reads the
//! credentials' files at start-up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::header::{self, HeaderValue};
use wharf_api::DomainConfig;

use wharf_storage::secrets::{SecretError, SecretsDir};
use wharf_storage::{BodyError, Storage, StorageError, keys};

/// How long one upstream request may take to answer (headers, or the whole
/// metadata document).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Metadata documents kept in memory, per process, and their total size.
const MAX_CACHED_DOCUMENTS: usize = 10_000;
const MAX_CACHED_BYTES: usize = 512 * 1024 * 1024;
/// After a host (scheme, host and port) could not be reached, requests to
/// it fail at once for this long (serving stale metadata and cached files)
/// instead of each waiting for its own connect timeout. Other hosts of the
/// same connection (a file host its metadata points at) are still asked.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(10);
/// How long a failed file fetch is remembered for the callers that waited
/// behind it (longer than any of them can have waited is not needed: a
/// waiter only takes a failure noted after it started waiting).
const FAILED_FETCH_KEPT: Duration = Duration::from_secs(60);
/// Largest upstream metadata document read.
pub const MAX_METADATA_BYTES: usize = 64 * 1024 * 1024;

/// How the client treats external connections (registry options).
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// How old the last good copy of a metadata document may be and still
    /// be served when the upstream fails (counted from when the upstream
    /// last sent or confirmed it).
    pub max_stale: Duration,
    /// The longest one file download may take, start to end.
    pub file_deadline: Duration,
    /// A download is abandoned when fewer than `file_min_bytes` arrive in
    /// any `file_window`.
    pub file_min_bytes: u64,
    pub file_window: Duration,
}

impl Default for UpstreamOptions {
    /// Sized for large artifacts: a 1 GiB file needs about 300 KiB/s to
    /// finish within the hour; the rate floor (64 KiB per 30 s) only
    /// catches a trickle.
    fn default() -> Self {
        UpstreamOptions {
            max_stale: Duration::from_secs(7 * 24 * 60 * 60),
            file_deadline: Duration::from_secs(60 * 60),
            file_min_bytes: 64 * 1024,
            file_window: Duration::from_secs(30),
        }
    }
}

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
    #[error("external connection {connection} answered {status} for {url}: {advice}")]
    Unauthorized { connection: String, url: String, status: u16, advice: &'static str },
    #[error("external connection {connection} sent metadata over {limit} bytes for {url}")]
    TooLarge { connection: String, url: String, limit: usize },
    #[error(
        "external connection {connection} did not finish sending {url} within {seconds} s (--upstream-file-deadline-seconds)"
    )]
    FileDeadline { connection: String, url: String, seconds: u64 },
    #[error(
        "external connection {connection} sent fewer than {bytes} bytes of {url} in {seconds} s (--upstream-file-min-bytes per --upstream-file-window-seconds)"
    )]
    FileTooSlow { connection: String, url: String, bytes: u64, seconds: u64 },
    #[error(
        "external connection {connection}: {host} was unreachable moments ago; not retried before {seconds} s ({url})"
    )]
    BackingOff { connection: String, host: String, url: String, seconds: u64 },
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
        matches!(
            self,
            UpstreamError::Timeout { .. } | UpstreamError::FileDeadline { .. } | UpstreamError::FileTooSlow { .. }
        )
    }

    /// The connection itself failed (not an answer it gave).
    fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. } | UpstreamError::Unreachable { .. })
    }
}

/// Secret keys of an external connection's credentials, when its
/// `credentialsSecretRef` names no key.
const TOKEN_KEY: &str = "token";
const USERNAME_KEY: &str = "username";
const PASSWORD_KEY: &str = "password";

/// A private upstream's credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("failed to read the credentials of external connection {connection} from Secret {secret:?}")]
    Read {
        connection: String,
        secret: String,
        #[source]
        source: Box<SecretError>,
    },
    #[error(
        "external connection {connection}: Secret {secret:?} has neither key {TOKEN_KEY:?} nor keys {USERNAME_KEY:?} and {PASSWORD_KEY:?} (looked for {looked_for})"
    )]
    NoCredentials { connection: String, secret: String, looked_for: String },
    #[error(
        "external connection {connection}: Secret {secret:?} has key {present:?} but not {missing:?} (looked for {looked_for})"
    )]
    Incomplete { connection: String, secret: String, present: &'static str, missing: &'static str, looked_for: String },
    #[error("external connection {connection}: the value in Secret {secret:?} cannot be sent in an HTTP header")]
    NotAHeader { connection: String, secret: String },
    #[error("external connection {connection} has an invalid URL {url:?}")]
    InvalidUrl {
        connection: String,
        url: String,
        #[source]
        source: url::ParseError,
    },
}

/// What Wharf sends one private external connection, and where: only to
/// the connection URL's own origin (scheme, host, port). Metadata may
/// point files at other hosts, and those never see the credentials;
/// reqwest drops `Authorization` itself on a redirect to another origin.
#[derive(Clone)]
pub struct ConnectionCredentials {
    origin: url::Origin,
    authorization: HeaderValue,
}

impl std::fmt::Debug for ConnectionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCredentials")
            .field("origin", &self.origin.ascii_serialization())
            .field("authorization", &"<redacted>")
            .finish()
    }
}

/// Reads the credentials of every external connection of `config` that
/// names a `credentialsSecretRef`: key `token` (sent as `Bearer`), else
/// `username` and `password` (sent as `Basic`); a `key` in the reference
/// names the file holding a token. Any that cannot be read is an error, so
/// a registry never starts half-configured and fails later, per request.
pub fn resolve_credentials(
    config: &DomainConfig,
    secrets: &SecretsDir,
) -> Result<HashMap<String, ConnectionCredentials>, CredentialsError> {
    let mut resolved = HashMap::new();
    for connection in &config.domain.spec.external_connections {
        let Some(reference) = &connection.credentials_secret_ref else { continue };
        let name = connection.name.clone();
        let secret = reference.name.clone();
        let read = |key: &str| {
            secrets.read_optional(reference, key).map_err(|source| CredentialsError::Read {
                connection: name.clone(),
                secret: secret.clone(),
                source: Box::new(source),
            })
        };
        let file = |key: &str| secrets.root().join(&secret).join(key).display().to_string();
        let value = if let Some(key) = &reference.key {
            let token = secrets.read(reference, key).map_err(|source| CredentialsError::Read {
                connection: name.clone(),
                secret: secret.clone(),
                source: Box::new(source),
            })?;
            format!("Bearer {token}")
        } else if let Some(token) = read(TOKEN_KEY)? {
            format!("Bearer {token}")
        } else {
            match (read(USERNAME_KEY)?, read(PASSWORD_KEY)?) {
                (Some(username), Some(password)) => {
                    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                    format!("Basic {pair}")
                }
                (None, None) => {
                    let looked_for = [TOKEN_KEY, USERNAME_KEY, PASSWORD_KEY].map(file).join(", ");
                    return Err(CredentialsError::NoCredentials { connection: name, secret, looked_for });
                }
                (present, _) => {
                    let (present, missing) =
                        if present.is_some() { (USERNAME_KEY, PASSWORD_KEY) } else { (PASSWORD_KEY, USERNAME_KEY) };
                    let looked_for = file(missing);
                    return Err(CredentialsError::Incomplete {
                        connection: name,
                        secret,
                        present,
                        missing,
                        looked_for,
                    });
                }
            }
        };
        let mut authorization = HeaderValue::from_str(&value)
            .map_err(|_| CredentialsError::NotAHeader { connection: name.clone(), secret: secret.clone() })?;
        authorization.set_sensitive(true);
        let origin = url::Url::parse(&connection.url)
            .map_err(|source| CredentialsError::InvalidUrl {
                connection: name.clone(),
                url: connection.url.clone(),
                source,
            })?
            .origin();
        resolved.insert(name, ConnectionCredentials { origin, authorization });
    }
    Ok(resolved)
}

/// Which upstream answers mean "no such document": kept for the TTL like
/// a document (a negative answer), not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absence {
    /// 404 only.
    NotFound,
    /// 403, 404 and 410. Go only: the go command asks for every path
    /// prefix of a module (`github.com/@v/list` on the way to a module
    /// under it), the GOPROXY protocol makes 404 and 410 mean "not here",
    /// and public proxies answer those probes with 404, 410 or 403 (a path
    /// they will not serve). Remembering them is what lets a warm `go get`
    /// make no upstream request. In the other formats a 403 or 410 means
    /// refused credentials or a removed package, which must surface as a
    /// 502 instead of quietly hiding the package.
    GoProxy,
}

impl Absence {
    /// What a connection of `format` answers for a document it lacks.
    pub fn of(format: wharf_api::PackageFormat) -> Self {
        match format {
            wharf_api::PackageFormat::Go => Absence::GoProxy,
            _ => Absence::NotFound,
        }
    }

    fn covers(self, status: reqwest::StatusCode) -> bool {
        use reqwest::StatusCode;
        match self {
            Absence::NotFound => status == StatusCode::NOT_FOUND,
            Absence::GoProxy => matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN),
        }
    }
}

/// How a file fetch failed, told to those who waited for it.
#[derive(Clone, Debug)]
pub struct FailedFetch {
    /// The upstream did not answer, or not fast enough.
    pub timed_out: bool,
    pub message: String,
}

/// An upstream metadata document as last seen.
struct CachedDocument {
    /// `None`: the upstream said 404.
    body: Option<Bytes>,
    etag: Option<String>,
    last_modified: Option<String>,
    /// When this process last had it confirmed; `None` for a copy read
    /// back from storage, which is revalidated before it is served fresh.
    checked: Option<Instant>,
    /// When the upstream last sent or confirmed it (what staleness counts from).
    fetched: chrono::DateTime<chrono::Utc>,
}

/// The record of a metadata document's last good copy kept in storage
/// (`upstream/{connection}/{sha256 of url}.json`), so that a restarted
/// registry can serve it while the upstream is down. The body is a blob;
/// the record stays small.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptDocument {
    url: String,
    /// The body's blob; `None` when the upstream said there is no document.
    body: Option<KeptBody>,
    etag: Option<String>,
    last_modified: Option<String>,
    fetched: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptBody {
    sha256: String,
    size: usize,
}

/// Hands `keep` the blob of every kept upstream document, for the storage collector: the
/// records are this crate's, so is knowing what they reference.
pub async fn kept_document_blobs(storage: &Storage, mut keep: impl FnMut(&str)) -> Result<(), StorageError> {
    use futures::StreamExt;
    let mut records = storage.list_objects(&keys::upstream_documents());
    while let Some(record) = records.next().await {
        let record = record?;
        if let Some(KeptDocument { body: Some(body), .. }) = storage.read_json::<KeptDocument>(&record.key).await? {
            keep(&body.sha256);
        }
    }
    Ok(())
}

/// A metadata document and whether it is older than its TTL because the
/// upstream could not be asked.
pub struct Document {
    pub body: Option<Bytes>,
    pub stale: bool,
    /// The upstream's `Last-Modified`, when it sent one.
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// What back-off is kept per: a URL's scheme, host and port (the URL
/// itself when it has no host).
fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url).map(|u| u.origin()) {
        Ok(origin @ url::Origin::Tuple(..)) => origin.ascii_serialization(),
        _ => url.to_owned(),
    }
}

/// The hex SHA-256 of a URL (what names its kept copy in storage).
fn url_digest(url: &str) -> String {
    sha256_hex(url.as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// An HTTP date (`Last-Modified`).
fn http_date(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc2822(text?).ok().map(|t| t.with_timezone(&chrono::Utc))
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

/// Cached metadata documents, by connection and URL, and their total size.
#[derive(Default)]
struct Documents {
    by_key: HashMap<String, Arc<CachedDocument>>,
    bytes: usize,
}

/// The registry's client of every external connection.
pub struct UpstreamClient {
    /// For metadata: gzip (packuments and index files are large text that
    /// shrinks several times) and HTTP/2 where the upstream offers it (one
    /// connection for the many index files cargo and npm ask for at once).
    http: reqwest::Client,
    /// For artifacts: no transparent decompression, because the bytes kept
    /// must be the upstream's own, checked against its digests, and some
    /// servers label `.gz` files `Content-Encoding: gzip`, which a
    /// decompressing client would undo.
    files: reqwest::Client,
    documents: Mutex<Documents>,
    in_flight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    requests: UpstreamRequests,
    /// Hosts (origins) that could not be reached, and until when to skip them.
    unreachable: Mutex<HashMap<String, Instant>>,
    /// File fetches that failed, by turn key: when, and the answer given.
    failed_fetches: Mutex<HashMap<String, (Instant, FailedFetch)>>,
    /// Credentials of private connections, by connection name; replaced whole
    /// when a new configuration revision is served.
    credentials: std::sync::RwLock<Arc<HashMap<String, ConnectionCredentials>>>,
    /// Where the last good copy of each metadata document is kept across
    /// restarts (the Domain's storage); none in unit tests.
    storage: Option<Storage>,
    options: UpstreamOptions,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new(HashMap::new())
    }
}

impl UpstreamClient {
    /// A client sending `credentials` (from [`resolve_credentials`]) to
    /// their connections.
    pub fn new(credentials: HashMap<String, ConnectionCredentials>) -> Self {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("wharf-registry/", env!("CARGO_PKG_VERSION")))
        };
        UpstreamClient {
            http: builder().gzip(true).build().unwrap_or_default(),
            files: builder().no_gzip().build().unwrap_or_default(),
            documents: Mutex::new(Documents::default()),
            in_flight: Mutex::new(HashMap::new()),
            requests: UpstreamRequests::default(),
            unreachable: Mutex::new(HashMap::new()),
            failed_fetches: Mutex::new(HashMap::new()),
            credentials: std::sync::RwLock::new(Arc::new(credentials)),
            storage: None,
            options: UpstreamOptions::default(),
        }
    }

    /// Keeps the last good copy of every metadata document in `storage`
    /// and serves it when the upstream fails, also after a restart.
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    pub fn with_options(mut self, options: UpstreamOptions) -> Self {
        self.options = options;
        self
    }

    /// Sends `credentials` from now on (a new configuration revision's).
    pub fn replace_credentials(&self, credentials: HashMap<String, ConnectionCredentials>) {
        *self.credentials.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(credentials);
    }

    fn credentials(&self, connection: &str) -> Option<ConnectionCredentials> {
        self.credentials.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(connection).cloned()
    }

    /// Whether `url` is on the origin `connection`'s credentials go to.
    fn sends_credentials(&self, connection: &str, url: &reqwest::Url) -> bool {
        self.credentials(connection).is_some_and(|c| url.origin() == c.origin)
    }

    /// A GET of `url` by `client` for `connection`, with its credentials
    /// when `url` is on the connection's own origin.
    fn get(&self, client: &reqwest::Client, connection: &str, url: &str) -> reqwest::RequestBuilder {
        let request = client.get(url);
        match self.credentials(connection) {
            Some(credentials) if reqwest::Url::parse(url).is_ok_and(|u| self.sends_credentials(connection, &u)) => {
                request.header(header::AUTHORIZATION, credentials.authorization.clone())
            }
            _ => request,
        }
    }

    /// The error for a non-success answer to a request for `url`, answered
    /// from `answered_at` (after redirects): 401 and 403 say what to check.
    fn refused(
        &self,
        connection: &str,
        url: &str,
        answered_at: &reqwest::Url,
        status: reqwest::StatusCode,
    ) -> UpstreamError {
        let (connection_name, url) = (connection.to_owned(), url.to_owned());
        let status_code = status.as_u16();
        if !matches!(status, reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) {
            return UpstreamError::Status { connection: connection_name, url, status: status_code };
        }
        let advice = if self.sends_credentials(connection, answered_at) {
            "it refused the credentials of the connection's credentialsSecretRef"
        } else if self.credentials(connection).is_some() {
            "that answer came from another origin than the connection URL's, which never gets the connection's credentials"
        } else {
            "it wants credentials; give the connection a credentialsSecretRef"
        };
        UpstreamError::Unauthorized { connection: connection_name, url, status: status_code, advice }
    }

    /// Fails at once while the host of `url` is backing off after being unreachable.
    fn check_reachable(&self, connection: &str, url: &str) -> Result<(), UpstreamError> {
        let unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let host = host_of(url);
        match unreachable.get(&host) {
            Some(until) if *until > Instant::now() => Err(UpstreamError::BackingOff {
                connection: connection.to_owned(),
                host,
                url: url.to_owned(),
                seconds: until.saturating_duration_since(Instant::now()).as_secs() + 1,
            }),
            _ => Ok(()),
        }
    }

    /// Notes how a request to `url` went, for [`Self::check_reachable`].
    fn note<T>(&self, url: &str, result: Result<T, UpstreamError>) -> Result<T, UpstreamError> {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(error) if error.is_unreachable() => {
                unreachable.insert(host_of(url), Instant::now() + UNREACHABLE_BACKOFF);
            }
            Ok(_) => {
                unreachable.remove(&host_of(url));
            }
            Err(_) => {}
        }
        result
    }

    /// The request counter, for the registry's `/metrics`.
    pub fn requests(&self) -> UpstreamRequests {
        self.requests.clone()
    }

    /// Starts at zero the counts alerts watch (failures, stale answers) for `connections`,
    /// so `increase()` sees the first one.
    pub fn count_from_zero<'a>(&self, connections: impl IntoIterator<Item = &'a str>) {
        for connection in connections {
            for (kind, outcome) in [("metadata", "failed"), ("artifact", "failed"), ("metadata", "served_stale")] {
                let _ =
                    self.requests.get_or_create(&UpstreamLabels { connection: connection.to_owned(), kind, outcome });
            }
        }
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

    /// Notes that the fetch holding turn `key` failed, for the callers that
    /// waited behind it.
    pub fn note_failed_fetch(&self, key: &str, timed_out: bool, message: &str) {
        let mut failed = self.failed_fetches.lock().unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, (when, _)| when.elapsed() < FAILED_FETCH_KEPT);
        let fetch = FailedFetch { timed_out, message: message.to_owned() };
        failed.insert(key.to_owned(), (Instant::now(), fetch));
    }

    /// How the fetch of turn `key` failed, when it failed after `since`
    /// (while the caller waited for the turn): the waiter gets that answer
    /// rather than starting the same fetch over.
    pub fn failed_since(&self, key: &str, since: Instant) -> Option<FailedFetch> {
        let failed = self.failed_fetches.lock().unwrap_or_else(|e| e.into_inner());
        failed.get(key).filter(|(when, _)| *when >= since).map(|(_, fetch)| fetch.clone())
    }

    /// A document is kept per connection and URL: two connections at one
    /// URL may authenticate differently, and one must not be answered with
    /// what the other's credentials fetched.
    fn document_key(connection: &str, url: &str) -> String {
        format!("{connection} {url}")
    }

    fn cached(&self, key: &str) -> Option<Arc<CachedDocument>> {
        self.documents.lock().unwrap_or_else(|e| e.into_inner()).by_key.get(key).cloned()
    }

    /// Keeps a document; past the count or size limit everything is
    /// dropped at once (the next reads revalidate), which bounds memory
    /// without bookkeeping per entry.
    fn keep(&self, key: &str, document: CachedDocument) {
        let size = |d: &CachedDocument| d.body.as_ref().map_or(0, Bytes::len);
        let mut documents = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        if documents.by_key.len() >= MAX_CACHED_DOCUMENTS || documents.bytes + size(&document) > MAX_CACHED_BYTES {
            documents.by_key.clear();
            documents.bytes = 0;
        }
        documents.bytes += size(&document);
        if let Some(replaced) = documents.by_key.insert(key.to_owned(), Arc::new(document)) {
            documents.bytes -= size(&replaced);
        }
    }

    /// The metadata document at `url`: from memory while younger than
    /// `ttl`, else revalidated (304 keeps it), else fetched; concurrent
    /// callers share one request. An answer `absence` covers is kept as
    /// "no document" for the TTL too. When the upstream fails, the last
    /// document seen is returned marked stale; with none, the error.
    pub async fn metadata(
        &self,
        connection: &str,
        url: &str,
        accept: &str,
        ttl: Duration,
        absence: Absence,
    ) -> Result<Document, UpstreamError> {
        let fresh = |cached: &CachedDocument| cached.checked.is_some_and(|checked| checked.elapsed() < ttl);
        let document = |cached: &CachedDocument, stale: bool| Document {
            body: cached.body.clone(),
            stale,
            last_modified: http_date(cached.last_modified.as_deref()),
        };
        let key = Self::document_key(connection, url);
        if let Some(cached) = self.cached(&key).filter(|c| fresh(c)) {
            return Ok(document(&cached, false));
        }
        let _turn = self.one_at_a_time(&format!("metadata {key}")).await;
        let cached = match self.cached(&key) {
            Some(cached) => Some(cached),
            None => self.read_kept(connection, url).await.and_then(|kept| {
                // Kept in memory too, so that every reader sees this one copy.
                self.keep(&key, kept);
                self.cached(&key)
            }),
        };
        if let Some(cached) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(document(cached, false));
        }
        let answer = match self.check_reachable(connection, url) {
            Ok(()) => self.note(url, self.revalidate(connection, url, accept, cached.as_deref(), absence).await),
            Err(backing_off) => Err(backing_off),
        };
        match answer {
            Ok(fetched) => {
                let answer = document(&fetched, false);
                self.write_kept(connection, url, cached.as_deref(), &fetched).await;
                self.keep(&key, fetched);
                Ok(answer)
            }
            Err(error) => match cached {
                Some(cached) if self.within_max_stale(&cached) => {
                    tracing::warn!(
                        error = %wharf_diagnostics::error_chain(&error),
                        fetched = %cached.fetched,
                        "serving stale upstream metadata"
                    );
                    self.count(connection, "metadata", "served_stale");
                    Ok(document(&cached, true))
                }
                Some(cached) => {
                    tracing::warn!(
                        error = %wharf_diagnostics::error_chain(&error),
                        fetched = %cached.fetched,
                        max_stale_seconds = self.options.max_stale.as_secs(),
                        "the last copy of this upstream metadata is older than --upstream-max-stale-seconds; not serving it"
                    );
                    Err(error)
                }
                None => Err(error),
            },
        }
    }

    fn within_max_stale(&self, cached: &CachedDocument) -> bool {
        let age = chrono::Utc::now().signed_duration_since(cached.fetched);
        age.to_std().map_or(true, |age| age <= self.options.max_stale)
    }

    /// The last good copy of a document kept in storage, if any (a copy
    /// that cannot be read is logged and treated as none).
    async fn read_kept(&self, connection: &str, url: &str) -> Option<CachedDocument> {
        let storage = self.storage.as_ref()?;
        let key = keys::upstream_document(connection, &url_digest(url));
        let read = async {
            let Some(kept) = storage.read_json::<KeptDocument>(&key).await? else { return Ok(None) };
            if kept.url != url {
                return Ok(None);
            }
            let body = match &kept.body {
                None => None,
                Some(body) => match storage.read_blob(&body.sha256).await? {
                    Some(bytes) if bytes.len() == body.size => Some(bytes),
                    _ => return Ok(None),
                },
            };
            Ok::<_, wharf_storage::StorageError>(Some(CachedDocument {
                body,
                etag: kept.etag,
                last_modified: kept.last_modified,
                checked: None,
                fetched: kept.fetched,
            }))
        };
        read.await.unwrap_or_else(|error| {
            tracing::warn!(connection, url, error = %wharf_diagnostics::error_chain(&error), "failed to read the kept copy of upstream metadata");
            None
        })
    }

    /// Keeps `fetched` in storage as the last good copy: its body as a blob
    /// (written only when it changed) and a small record. A document the
    /// upstream says is absent is recorded only over an earlier copy, so
    /// that probes of absent paths write nothing. Failures are logged: the
    /// answer does not depend on them.
    async fn write_kept(
        &self,
        connection: &str,
        url: &str,
        previous: Option<&CachedDocument>,
        fetched: &CachedDocument,
    ) {
        let Some(storage) = &self.storage else { return };
        let had_copy = previous.is_some_and(|p| p.body.is_some());
        if fetched.body.is_none() && !had_copy {
            return;
        }
        let write = async {
            let body = match &fetched.body {
                None => None,
                Some(bytes) => {
                    let unchanged = previous.and_then(|p| p.body.as_ref()).is_some_and(|p| p == bytes);
                    let sha256 =
                        if unchanged { sha256_hex(bytes) } else { storage.put_small_blob(bytes.clone()).await?.sha256 };
                    Some(KeptBody { sha256, size: bytes.len() })
                }
            };
            let record = KeptDocument {
                url: url.to_owned(),
                body,
                etag: fetched.etag.clone(),
                last_modified: fetched.last_modified.clone(),
                fetched: fetched.fetched,
            };
            storage.put_json(&keys::upstream_document(connection, &url_digest(url)), &record).await
        };
        if let Err(error) = write.await {
            tracing::warn!(connection, url, error = %wharf_diagnostics::error_chain(&error), "failed to keep a copy of upstream metadata");
        }
    }

    async fn revalidate(
        &self,
        connection: &str,
        url: &str,
        accept: &str,
        cached: Option<&CachedDocument>,
        absence: Absence,
    ) -> Result<CachedDocument, UpstreamError> {
        let mut request = self.get(&self.http, connection, url).header(header::ACCEPT, accept).timeout(REQUEST_TIMEOUT);
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
            s if absence.covers(s) => "not_found",
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
                checked: Some(Instant::now()),
                fetched: chrono::Utc::now(),
            });
        }
        if absence.covers(status) {
            return Ok(CachedDocument {
                body: None,
                etag,
                last_modified,
                checked: Some(Instant::now()),
                fetched: chrono::Utc::now(),
            });
        }
        if !status.is_success() {
            return Err(self.refused(connection, url, response.url(), status));
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
        Ok(CachedDocument {
            body: Some(Bytes::from(body)),
            etag,
            last_modified,
            checked: Some(Instant::now()),
            fetched: chrono::Utc::now(),
        })
    }

    fn too_large(&self, connection: &str, url: &str) -> UpstreamError {
        UpstreamError::TooLarge { connection: connection.to_owned(), url: url.to_owned(), limit: MAX_METADATA_BYTES }
    }

    /// The bytes at `url`, as a stream for `Registry::stage_asset`.
    pub async fn download(
        &self,
        connection: &str,
        url: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, BodyError>> + Send + use<>, UpstreamError> {
        Ok(self.download_dated(connection, url).await?.0)
    }

    /// [`Self::download`], with the upstream's `Last-Modified` of the file
    /// (what dates a Maven version).
    pub async fn download_dated(
        &self,
        connection: &str,
        url: &str,
    ) -> Result<
        (impl Stream<Item = Result<Bytes, BodyError>> + Send + use<>, Option<chrono::DateTime<chrono::Utc>>),
        UpstreamError,
    > {
        self.check_reachable(connection, url)?;
        let started = tokio::time::Instant::now();
        let sent = self.get(&self.files, connection, url).send().await.map_err(|e| {
            self.count(connection, "artifact", "failed");
            UpstreamError::of(connection, url, e)
        });
        let response = self.note(url, sent)?;
        let outcome = if response.status().is_success() { "fetched" } else { "failed" };
        self.count(connection, "artifact", outcome);
        if !response.status().is_success() {
            return Err(self.refused(connection, url, response.url(), response.status()));
        }
        let modified = http_date(response.headers().get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()));
        let body = response.bytes_stream().map_err(|e| Box::new(e) as BodyError);
        Ok((self.paced(connection, url, started, body), modified))
    }

    /// `body`, ended with [`UpstreamError::FileDeadline`] once
    /// `file_deadline` has passed since `started`, and with
    /// [`UpstreamError::FileTooSlow`] when a `file_window` brings fewer
    /// than `file_min_bytes`.
    fn paced<S>(
        &self,
        connection: &str,
        url: &str,
        started: tokio::time::Instant,
        body: S,
    ) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + use<S>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        use futures::StreamExt as _;
        struct Pace<S> {
            body: std::pin::Pin<Box<S>>,
            deadline: tokio::time::Instant,
            window_end: tokio::time::Instant,
            window_bytes: u64,
            failed: bool,
        }
        let options = self.options.clone();
        let (connection, url) = (connection.to_owned(), url.to_owned());
        let window = options.file_window.max(Duration::from_millis(1));
        let pace = Pace {
            body: Box::pin(body),
            deadline: started + options.file_deadline,
            window_end: tokio::time::Instant::now() + window,
            window_bytes: 0,
            failed: false,
        };
        futures::stream::unfold(pace, move |mut pace| {
            let (connection, url, options) = (connection.clone(), url.clone(), options.clone());
            async move {
                if pace.failed {
                    return None;
                }
                let error = loop {
                    let wake = pace.deadline.min(pace.window_end);
                    match tokio::time::timeout_at(wake, pace.body.next()).await {
                        Ok(Some(Ok(chunk))) => {
                            pace.window_bytes += chunk.len() as u64;
                            return Some((Ok(chunk), pace));
                        }
                        Ok(other) => return other.map(|item| (item, pace)),
                        Err(_) if tokio::time::Instant::now() >= pace.deadline => {
                            let seconds = options.file_deadline.as_secs();
                            break UpstreamError::FileDeadline { connection, url, seconds };
                        }
                        Err(_) if pace.window_bytes < options.file_min_bytes => {
                            let (bytes, seconds) = (options.file_min_bytes, window.as_secs());
                            break UpstreamError::FileTooSlow { connection, url, bytes, seconds };
                        }
                        Err(_) => {
                            pace.window_bytes = 0;
                            pace.window_end = tokio::time::Instant::now() + window;
                        }
                    }
                };
                pace.failed = true;
                Some((Err(Box::new(error) as BodyError), pace))
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::get;

    use super::*;

    fn config(connection_url: &str, secret: &str, key: Option<&str>) -> DomainConfig {
        let key = key.map(|k| format!(", key: {k}")).unwrap_or_default();
        let yaml = format!(
            r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{memory: {{}}}}
  externalConnections:
    - {{name: private-npm, format: npm, url: "{connection_url}", credentialsSecretRef: {{name: {secret}{key}}}}}
    - {{name: public-npm, format: npm, url: "{connection_url}"}}
"#
        );
        DomainConfig::from_yaml_str("test.yaml", &yaml).unwrap()
    }

    fn write(dir: &std::path::Path, secret: &str, key: &str, value: &str) {
        std::fs::create_dir_all(dir.join(secret)).unwrap();
        std::fs::write(dir.join(secret).join(key), value).unwrap();
    }

    fn authorization(credentials: &HashMap<String, ConnectionCredentials>) -> &str {
        credentials["private-npm"].authorization.to_str().unwrap()
    }

    #[test]
    fn reads_a_token_or_a_username_and_password_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretsDir::new(dir.path());
        write(dir.path(), "bearer", "token", "t0ken\n");
        write(dir.path(), "basic", "username", "ci");
        write(dir.path(), "basic", "password", "pa55");
        write(dir.path(), "named", "pat", "named-token");
        write(dir.path(), "half", "username", "ci");
        let url = "https://registry.invalid:8443/npm/";

        let bearer = resolve_credentials(&config(url, "bearer", None), &secrets).unwrap();
        assert_eq!(authorization(&bearer), "Bearer t0ken");
        assert_eq!(bearer.len(), 1, "a connection without a credentialsSecretRef has no credentials");
        assert!(bearer["private-npm"].authorization.is_sensitive());
        assert!(!format!("{:?}", bearer["private-npm"]).contains("t0ken"));
        let basic = resolve_credentials(&config(url, "basic", None), &secrets).unwrap();
        assert_eq!(
            authorization(&basic),
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ci:pa55"))
        );
        let named = resolve_credentials(&config(url, "named", Some("pat")), &secrets).unwrap();
        assert_eq!(authorization(&named), "Bearer named-token");

        let chain = |error: &dyn std::error::Error| wharf_diagnostics::error_chain(error);
        let missing = chain(&resolve_credentials(&config(url, "absent", None), &secrets).unwrap_err());
        let absent_file = dir.path().join("absent/token").display().to_string();
        for part in ["private-npm", "\"absent\"", absent_file.as_str()] {
            assert!(missing.contains(part), "{part} in: {missing}");
        }
        let half = chain(&resolve_credentials(&config(url, "half", None), &secrets).unwrap_err());
        let password_file = dir.path().join("half/password").display().to_string();
        for part in ["private-npm", "\"half\"", password_file.as_str()] {
            assert!(half.contains(part), "{part} in: {half}");
        }
        let unnamed = chain(&resolve_credentials(&config(url, "named", Some("absent-key")), &secrets).unwrap_err());
        assert!(unnamed.contains("private-npm") && unnamed.contains("named/absent-key"), "{unnamed}");
    }

    /// Authorization headers seen, in order (`None` when absent).
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    async fn record(
        State((seen, target)): State<(Seen, String)>,
        uri: axum::http::Uri,
        headers: HeaderMap,
    ) -> Response {
        let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        seen.lock().unwrap().push((uri.path().to_owned(), authorization.clone()));
        match uri.path() {
            "/moved" => Redirect::temporary(&format!("{target}/doc")).into_response(),
            "/gone" => axum::http::StatusCode::GONE.into_response(),
            "/forbidden" => axum::http::StatusCode::FORBIDDEN.into_response(),
            _ if authorization.is_none() => axum::http::StatusCode::UNAUTHORIZED.into_response(),
            _ => "document".into_response(),
        }
    }

    /// A loopback HTTP server recording what it is sent; `/moved`
    /// redirects to `{target}/doc`.
    async fn server(seen: Seen, target: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(get(record)).with_state((seen, target));
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn credentials_go_to_the_connection_origin_only_and_a_refusal_says_what_to_check() {
        let seen_elsewhere: Seen = Arc::default();
        let elsewhere = server(seen_elsewhere.clone(), String::new()).await;
        let seen_upstream: Seen = Arc::default();
        let upstream = server(seen_upstream.clone(), elsewhere.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "private", "token", "s3cret");
        let credentials =
            resolve_credentials(&config(&format!("{upstream}/npm/"), "private", None), &SecretsDir::new(dir.path()))
                .unwrap();
        let client = UpstreamClient::new(credentials);
        let ttl = Duration::from_secs(60);

        let document =
            client.metadata("private-npm", &format!("{upstream}/doc"), "*/*", ttl, Absence::NotFound).await.unwrap();
        assert_eq!(document.body.as_deref(), Some(&b"document"[..]));
        // A redirect to another origin and a file on another host: no credentials.
        let redirected = client.download("private-npm", &format!("{upstream}/moved")).await;
        let elsewhere_file = client.download("private-npm", &format!("{elsewhere}/doc")).await;
        let public = client.metadata("public-npm", &format!("{upstream}/public"), "*/*", ttl, Absence::NotFound).await;

        let bearer = Some("Bearer s3cret".to_owned());
        assert_eq!(
            *seen_upstream.lock().unwrap(),
            vec![("/doc".into(), bearer.clone()), ("/moved".into(), bearer), ("/public".into(), None)]
        );
        assert_eq!(*seen_elsewhere.lock().unwrap(), vec![("/doc".into(), None), ("/doc".into(), None)]);
        for refused in [redirected.err().unwrap(), elsewhere_file.err().unwrap()] {
            let message = refused.to_string();
            assert!(message.contains("private-npm") && message.contains("401"), "{message}");
            assert!(message.contains("never gets the connection's credentials"), "{message}");
        }
        let message = public.err().unwrap().to_string();
        assert!(
            message.contains("public-npm answered 401")
                && message.contains("give the connection a credentialsSecretRef"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_go_proxy_saying_gone_or_forbidden_is_remembered_as_absent_for_the_ttl() {
        let seen: Seen = Arc::default();
        let upstream = server(seen.clone(), String::new()).await;
        let client = UpstreamClient::default();
        let ttl = Duration::from_secs(60);
        for _ in 0..3 {
            for path in ["/gone", "/forbidden"] {
                let document =
                    client.metadata("public-go", &format!("{upstream}{path}"), "*/*", ttl, Absence::GoProxy).await;
                assert_eq!(document.unwrap().body, None, "{path}");
            }
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "one request per path within the TTL");
        // Another connection at the same URL is asked itself, not answered from public-go's copy.
        let npm = client.metadata("public-npm", &format!("{upstream}/gone"), "*/*", ttl, Absence::NotFound).await;
        assert!(npm.err().unwrap().to_string().contains("public-npm answered 410"));
        let gone = format!("{upstream}/gone");
        let expired = client.metadata("public-go", &gone, "*/*", Duration::ZERO, Absence::GoProxy).await;
        assert_eq!(expired.unwrap().body, None);
        assert_eq!(seen.lock().unwrap().len(), 4, "asked again once the TTL is over");
    }

    #[tokio::test]
    async fn an_unreachable_metadata_host_does_not_hold_back_a_reachable_file_host() {
        let seen: Seen = Arc::default();
        let files = server(seen.clone(), String::new()).await;
        // A port nothing listens on any more.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let metadata_host = format!("http://{closed}");
        let client = UpstreamClient::default();
        let ttl = Duration::from_secs(60);

        let first = client.metadata("public-npm", &format!("{metadata_host}/a"), "*/*", ttl, Absence::NotFound).await;
        assert!(first.err().unwrap().is_unreachable());
        let again = client.metadata("public-npm", &format!("{metadata_host}/b"), "*/*", ttl, Absence::NotFound).await;
        let message = again.err().unwrap().to_string();
        assert!(message.contains("unreachable moments ago") && message.contains(&metadata_host), "{message}");

        // The same connection's file on another, reachable host is fetched.
        let file = client.download("public-npm", &format!("{files}/forbidden")).await;
        let message = file.err().unwrap().to_string();
        assert!(message.contains("answered 403"), "the file host was asked: {message}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn metadata_is_fetched_compressed_and_files_as_the_upstream_stores_them() {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"a large packument").unwrap();
        let gzipped = Bytes::from(encoder.finish().unwrap());
        let accepted: Seen = Arc::default();
        let (seen, served) = (accepted.clone(), gzipped.clone());
        let app = axum::Router::new().fallback(get(move |uri: axum::http::Uri, headers: HeaderMap| {
            let (accepted, served) = (seen.clone(), served.clone());
            async move {
                let encoding = headers.get(header::ACCEPT_ENCODING).map(|v| v.to_str().unwrap().to_owned());
                accepted.lock().unwrap().push((uri.path().to_owned(), encoding));
                ([(header::CONTENT_ENCODING, "gzip")], served)
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = UpstreamClient::default();

        let ttl = Duration::from_secs(60);
        let packument = format!("{base}/packument");
        let document = client.metadata("public-npm", &packument, "*/*", ttl, Absence::NotFound).await;
        assert_eq!(document.unwrap().body.as_deref(), Some(&b"a large packument"[..]));
        let file = client.download("public-pypi", &format!("{base}/lib-1.0.tar.gz")).await.unwrap();
        let bytes: Vec<Bytes> = file.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), gzipped, "a file is kept as the upstream sent it");
        let accepted = accepted.lock().unwrap();
        assert!(accepted[0].1.as_deref().is_some_and(|e| e.contains("gzip")), "{accepted:?}");
        assert_eq!(accepted[1], ("/lib-1.0.tar.gz".to_owned(), None));
    }
}
