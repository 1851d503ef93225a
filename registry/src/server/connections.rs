//! Accepting TCP connections and serving HTTP on them (HTTP/1.1, and HTTP/2 when TLS
//! negotiates it) within bounds, so that nobody can hold the registry's file
//! descriptors: at most so many connections in all and from one client address (the
//! rest are answered `503` with `Retry-After` and closed), a request head must arrive
//! within the header timeout (the TLS handshake included), and a
//! connection with no request in flight is closed after the idle timeout, as is one
//! whose client takes none of a response for as long. Bodies are otherwise not
//! timed: a large upload or download takes as long as it takes. Also
//! drops `X-Forwarded-*` headers from peers that are not trusted proxies. Does I/O.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a refused client may take to send its request head (to tell a health
/// probe from the rest), and how long we spend writing the refusal.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Refused connections being answered at once; beyond this, refusals are written
/// without reading the request, so a flood of refusals holds few descriptors.
const REFUSALS_IN_PROGRESS: usize = 64;
/// What a refused client is asked to wait before it retries, in seconds.
const RETRY_AFTER_SECONDS: u64 = 5;
/// Descriptors kept for the process itself (listener, epoll, logs, storage and
/// upstream clients) when the connection cap is derived from `RLIMIT_NOFILE`.
const RESERVED_DESCRIPTORS: u64 = 64;
/// While stopping, how long a connection with nothing in flight is given to close by itself
/// (HTTP/2 waits for the client to acknowledge its GOAWAY) before it is closed: a client that
/// holds a connection open without reading it must not hold the shutdown.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Upper end of the derived connection cap: each idle connection costs a task and
/// buffers, so a huge descriptor limit is not an invitation to hold millions.
const MAX_DERIVED_CONNECTIONS: u64 = 8192;

/// Bounds on connections; command-line options of `wharf-registry serve`.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Time allowed for a request head, from the connection's start or from the
    /// first byte of the head of a later request.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one client address (trusted proxies excepted).
    pub max_connections_per_client: usize,
    /// Peers whose `X-Forwarded-Host`/`-Proto`/`-For` and `Forwarded` headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// The URLs clients reach the registry at, for absolute links; any `Host` when empty.
    pub external_urls: ExternalUrls,
}

/// The URLs clients reach the registry at (`--external-url`): a request's absolute links
/// (npm tarball URLs, NuGet and Swift links, cargo's `dl`) use the one whose host it names,
/// and the first when it names none of them, so a client cannot point links elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalUrls(Vec<(String, String)>);

/// An `--external-url` that is not `http(s)://HOST[:PORT]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid external URL {0:?}: write a scheme and a host, and a port if not the scheme's own (https://wharf.example.com, http://wharf-acme.wharf-system.svc:8080), no path"
)]
pub struct ExternalUrlError(String);

impl ExternalUrls {
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<ExternalUrls, ExternalUrlError> {
        let mut urls = Vec::new();
        for value in values {
            let invalid = || ExternalUrlError(value.to_owned());
            let (scheme, rest) = value.trim_end_matches('/').split_once("://").ok_or_else(invalid)?;
            let scheme = scheme.to_ascii_lowercase();
            let valid_host = !rest.is_empty()
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
            if !matches!(scheme.as_str(), "http" | "https") || !valid_host {
                return Err(invalid());
            }
            let default_port = if scheme == "https" { ":443" } else { ":80" };
            let host = rest.to_ascii_lowercase();
            let host = host.strip_suffix(default_port).unwrap_or(&host).to_owned();
            urls.push((scheme, host));
        }
        Ok(ExternalUrls(urls))
    }

    /// The scheme and host a request's links are made of, given the host it names.
    fn origin_for(&self, requested: Option<&str>) -> Option<&(String, String)> {
        let requested = requested.map(str::to_ascii_lowercase);
        let named = requested.as_deref().and_then(|requested| {
            self.0.iter().find(|(scheme, host)| {
                let default_port = if scheme == "https" { ":443" } else { ":80" };
                requested == host || requested.strip_suffix(default_port) == Some(host.as_str())
            })
        });
        named.or(self.0.first())
    }
}

impl std::fmt::Display for ExternalUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any Host");
        }
        let urls: Vec<String> = self.0.iter().map(|(scheme, host)| format!("{scheme}://{host}")).collect();
        f.write_str(&urls.join(","))
    }
}

/// The default connection cap: half of the soft `RLIMIT_NOFILE` after
/// [`RESERVED_DESCRIPTORS`], since a connection being served may hold one more
/// descriptor (a blob file on filesystem storage, an upstream or object-store socket);
/// at most [`MAX_DERIVED_CONNECTIONS`]. 480 under the common limit of 1,024.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let derived = (soft.saturating_sub(RESERVED_DESCRIPTORS) / 2).clamp(16, MAX_DERIVED_CONNECTIONS);
    usize::try_from(derived).unwrap_or(usize::MAX)
}

/// Address ranges of the proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxy` value that is neither an address, nor a CIDR range, nor `none`.
#[derive(Debug, thiserror::Error)]
#[error("invalid trusted proxy {0:?}: write an address (10.0.0.7), a CIDR range (10.0.0.0/8, fd00::/8), or none")]
pub struct TrustedProxyError(String);

impl TrustedProxies {
    /// Only this pod's (or host's) own network namespace: a TLS-terminating sidecar.
    pub fn loopback() -> TrustedProxies {
        TrustedProxies(vec![
            IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8),
            IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
        ])
    }

    /// Parses `--trusted-proxy` values; `none` alone trusts nobody.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<TrustedProxies, TrustedProxyError> {
        let mut ranges = Vec::new();
        for value in values {
            let value = value.trim();
            if value.eq_ignore_ascii_case("none") {
                continue;
            }
            ranges.push(wharf_api::repository::parse_cidr(value).ok_or_else(|| TrustedProxyError(value.to_owned()))?);
        }
        Ok(TrustedProxies(ranges))
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|range| range.contains(&address))
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let ranges: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&ranges.join(","))
    }
}

/// Headers a client could use to make us build URLs on another host or scheme, or to
/// pass for another address; kept only from trusted proxies.
const FORWARDING_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("forwarded"),
];

/// Who is connected, counted per address, and the cap on all connections.
struct Admission {
    all: Arc<Semaphore>,
    max_connections: usize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    max_per_client: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TooManyFromClient { limit: usize },
    TooMany { limit: usize },
}

impl Refusal {
    fn message(self, client: IpAddr) -> String {
        match self {
            Refusal::TooManyFromClient { limit } => format!(
                "too many connections from {client}: the registry accepts at most {limit} at a time from one \
                 address; reuse or close open connections and retry"
            ),
            Refusal::TooMany { limit } => {
                format!("the registry is serving its maximum of {limit} connections; retry shortly")
            }
        }
    }
}

/// A place among the open connections, given back on drop.
struct Admitted {
    _slot: OwnedSemaphorePermit,
    counted: Option<(Arc<Admission>, IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((admission, client)) = self.counted.take() {
            let mut per_client = admission.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&client);
                }
            }
        }
    }
}

impl Admission {
    fn admit(self: &Arc<Self>, client: IpAddr, counted_per_client: bool) -> Result<Admitted, Refusal> {
        let slot =
            self.all.clone().try_acquire_owned().map_err(|_| Refusal::TooMany { limit: self.max_connections })?;
        if !counted_per_client {
            return Ok(Admitted { _slot: slot, counted: None });
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_client.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            return Err(Refusal::TooManyFromClient { limit: self.max_per_client });
        }
        *count += 1;
        Ok(Admitted { _slot: slot, counted: Some((self.clone(), client)) })
    }
}

/// What a connection is doing, as its deadlines see it.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose responses are not yet fully handed to the connection.
    in_flight: usize,
    /// When the connection last had nothing in flight.
    idle_since: Instant,
    /// When the head of the next request began: the connection's start, or the first
    /// byte read while idle.
    head_started: Option<Instant>,
    /// Since when the client has taken none of a response (the socket's send buffer is
    /// full): a stalled download, or a slow-read attack.
    write_blocked_since: Option<Instant>,
}

/// Why a connection was closed by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderTimeout,
    Idle,
    ResponseNotRead,
}

impl Activity {
    fn new() -> Arc<Activity> {
        let now = Instant::now();
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: now,
                head_started: Some(now),
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn is_idle(&self) -> bool {
        self.lock().in_flight == 0
    }

    fn request_started(&self) {
        let mut state = self.lock();
        state.in_flight += 1;
        state.head_started = None;
        drop(state);
        self.changed.notify_one();
    }

    fn request_finished(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.changed.notify_one();
    }

    fn write_blocked(&self) {
        let mut state = self.lock();
        if state.write_blocked_since.is_none() {
            state.write_blocked_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn write_unblocked(&self) {
        // Only moves a deadline later: the watchdog sees it when it wakes.
        self.lock().write_blocked_since = None;
    }

    /// The next deadline, if any. While a request is in flight, only a response the
    /// client takes none of for the idle timeout has one: bodies are not otherwise timed.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Expiry)> {
        let state = self.lock();
        if state.in_flight > 0 {
            return state.write_blocked_since.map(|since| (since + limits.idle_timeout, Expiry::ResponseNotRead));
        }
        Some(match state.head_started {
            Some(started) => (started + limits.header_read_timeout, Expiry::HeaderTimeout),
            None => (state.idle_since + limits.idle_timeout, Expiry::Idle),
        })
    }

    /// Resolves when the connection has outlived a deadline.
    async fn expired(&self, limits: &ConnectionLimits) -> Expiry {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((deadline, expiry)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {
                            if self.deadline(limits).is_some_and(|(now_due, _)| now_due <= Instant::now()) {
                                return expiry;
                            }
                        }
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// Ends an in-flight request when its response body is done (or dropped).
struct TrackedBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.activity.request_finished();
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream: a socket, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A socket that reports bytes read, so a request head's clock starts with its first byte.
struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl TrackedStream {
    fn note_write<T>(&self, result: Poll<T>) -> Poll<T> {
        match result {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_unblocked(),
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `service` on `listener` within `limits` (over TLS when `tls` is given) until
/// `shutdown` resolves; then stops accepting, lets requests in flight finish (uploads
/// included) and returns once every connection has closed.
pub async fn serve<S>(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut limits = limits;
    limits.max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let limits = Arc::new(limits);
    let admission = Arc::new(Admission {
        all: Arc::new(Semaphore::new(limits.max_connections)),
        max_connections: limits.max_connections,
        per_client: Mutex::new(HashMap::new()),
        max_per_client: limits.max_connections_per_client,
    });
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_PROGRESS));
    let mut refused = RefusalLog::default();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of descriptors (EMFILE) or memory: wait for connections to close.
                tracing::warn!(%error, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Responses are written whole by hyper; Nagle would hold a small tail (a 64 KiB
        // range's last bytes) back for the client's delayed ACK, 40 ms on Linux.
        let _ = stream.set_nodelay(true);
        let client = peer.ip().to_canonical();
        let trusted = limits.trusted_proxies.contains(client);
        match admission.admit(client, !trusted) {
            Ok(admitted) => {
                let (limits, service, stopping, tls) = (limits.clone(), service.clone(), stopping.clone(), tls.clone());
                tokio::spawn(async move {
                    serve_connection(stream, peer, trusted, &limits, tls, service, stopping).await;
                    drop(admitted);
                });
            }
            Err(refusal) => {
                refused.count(client, refusal);
                let reading = refusals.clone().try_acquire_owned().ok();
                tokio::spawn(refuse(stream, tls.clone(), client, refusal, reading));
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it closes.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = admission.all.acquire_many(all).await;
}

/// Refusals, logged at most every [`REFUSAL_LOG_INTERVAL`]: a flood must not flood the log.
#[derive(Default)]
struct RefusalLog {
    since_logged: u64,
    logged_at: Option<Instant>,
}

/// How often refusals are summed up in the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn count(&mut self, client: IpAddr, refusal: Refusal) {
        self.since_logged += 1;
        let now = Instant::now();
        if self.logged_at.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(
                refused = self.since_logged,
                latest = %refusal.message(client),
                "refused connections over the limits (--max-connections, --max-connections-per-client)"
            );
            self.since_logged = 0;
            self.logged_at = Some(now);
        }
    }
}

/// Errors of one connection that the listener survives unchanged.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    trusted: bool,
    limits: &ConnectionLimits,
    tls: Option<TlsAcceptor>,
    service: S,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let activity = Activity::new();
    let secure = tls.is_some();
    let stream = TrackedStream { inner: stream, activity: activity.clone() };
    // The handshake is part of the first request head's time: a client that starts one
    // and stalls holds a connection no longer than one that sends half a head.
    let (io, http2): (Box<dyn Io>, bool) = match tls {
        None => (Box::new(stream), false),
        Some(acceptor) => {
            let handshake = tokio::select! {
                handshake = acceptor.accept(stream) => handshake,
                _ = activity.expired(limits) => {
                    tracing::debug!(%peer, "closed: no TLS handshake in time");
                    return;
                }
            };
            match handshake {
                Ok(stream) => {
                    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    (Box::new(stream), http2)
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "closed: TLS handshake failed");
                    return;
                }
            }
        }
    };
    let io = TokioIo::new(io);
    let requests = activity.clone();
    let proxies = limits.trusted_proxies.clone();
    let external_urls = limits.external_urls.clone();
    let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
        requests.request_started();
        let mut request = request.map(Body::new);
        if !trusted {
            for name in &FORWARDING_HEADERS {
                request.headers_mut().remove(name);
            }
        }
        complete_origin(&mut request, secure, &external_urls);
        let client = if trusted { forwarded_client(request.headers(), &proxies) } else { None };
        request.extensions_mut().insert(ClientAddress(client.unwrap_or_else(|| peer.ip().to_canonical())));
        request.extensions_mut().insert(ConnectInfo(peer));
        let (service, activity) = (service.clone(), requests.clone());
        // The request is in flight until its response body is sent (or dropped). If the
        // connection ends first, so does the activity it tracks.
        async move {
            let response = service.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, activity }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder = if http2 { builder.http2_only() } else { builder.http1_only() };
    let connection = builder.serve_connection(io, handler);
    let mut connection = std::pin::pin!(connection);
    let mut draining = *stopping.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            expiry = activity.expired(limits) => {
                match expiry {
                    Expiry::HeaderTimeout => tracing::debug!(%peer, "closed: no complete request head in time"),
                    Expiry::Idle => tracing::debug!(%peer, "closed: idle"),
                    Expiry::ResponseNotRead => tracing::debug!(%peer, "closed: the client stopped reading the response"),
                }
                return;
            }
            changed = stopping.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(DRAIN_IDLE_GRACE), if draining => {
                if activity.is_idle() {
                    tracing::debug!(%peer, "closed: idle while the registry stops");
                    return;
                }
            }
        }
    }
}

/// The address a request comes from, for Repositories' network rules: the peer's, or when
/// the peer is a trusted proxy, the nearest address in `X-Forwarded-For` that is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The client a chain of trusted proxies reports: `X-Forwarded-For` read from the right
/// (each proxy appends who connected to it), skipping the trusted proxies themselves, so a
/// client cannot choose its address by sending the header itself.
fn forwarded_client(headers: &axum::http::HeaderMap, proxies: &TrustedProxies) -> Option<IpAddr> {
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|hop| {
            let hop = hop.trim();
            hop.parse::<IpAddr>()
                .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
                .map(|address| address.to_canonical())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    hops.iter().rev().find(|hop| !proxies.contains(**hop)).or(hops.first()).copied()
}

/// Gives every request what absolute links are made of in the headers the handlers read:
/// HTTP/2 names the host in the URI's authority, not in `Host`, and a connection we
/// terminate TLS on is https unless a trusted proxy said what its client used. With
/// external URLs, the links' scheme and host are always one of them.
fn complete_origin(request: &mut Request<Body>, secure: bool, external_urls: &ExternalUrls) {
    use axum::http::{HeaderValue, header};
    if !request.headers().contains_key(header::HOST)
        && let Some(host) = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    if secure && !request.headers().contains_key("x-forwarded-proto") {
        request.headers_mut().insert("x-forwarded-proto", HeaderValue::from_static("https"));
    }
    let headers = request.headers();
    let requested = headers.get("x-forwarded-host").or_else(|| headers.get(header::HOST)).and_then(|v| v.to_str().ok());
    let Some((scheme, host)) = external_urls.origin_for(requested) else { return };
    let (Ok(scheme), Ok(host)) = (HeaderValue::from_str(scheme), HeaderValue::from_str(host)) else { return };
    let headers = request.headers_mut();
    headers.remove("x-forwarded-host");
    headers.insert("x-forwarded-proto", scheme);
    headers.insert(header::HOST, host);
}

/// Answers a connection over a limit: `200 ok` to a health probe (the registry is alive,
/// restarting it would not help), else `503` with `Retry-After` and why. The request head
/// is read first, within a second, when a reading slot is free: closing a socket with
/// unread data resets it, and the client would see the reset instead of the answer.
async fn refuse(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    client: IpAddr,
    refusal: Refusal,
    reading: Option<OwnedSemaphorePermit>,
) {
    let mut stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        // Without a slot to read in, a TLS client cannot be answered at all.
        Some(_) if reading.is_none() => return,
        Some(acceptor) => match tokio::time::timeout(REFUSAL_READ_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Box::new(stream),
            _ => return,
        },
    };
    let mut head = Vec::new();
    if reading.is_some() {
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT, read_head(&mut stream, &mut head)).await;
    }
    let response = if is_health_probe(&head) {
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_owned()
    } else {
        let message = refusal.message(client);
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\nContent-Type: text/plain; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}\n",
            message.len() + 1
        )
    };
    let written = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(REFUSAL_READ_TIMEOUT, written).await.is_ok() && reading.is_some() {
        // Let the client read the answer before the socket goes (a body may still come).
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT, async {
            while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    }
}

/// Reads until the end of a request head, at most 4 KiB.
async fn read_head(stream: &mut (impl AsyncRead + Unpin), head: &mut Vec<u8>) {
    let mut buffer = [0u8; 1024];
    while head.len() < 4096 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
}

fn is_health_probe(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next(), words.next());
    matches!(method, Some(b"GET" | b"HEAD")) && target == Some(b"/healthz") && head.ends_with(b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn trusted_proxies_parse_and_match() {
        let proxies = TrustedProxies::parse(["10.1.2.3/8", "fd00::/8", "192.168.1.9"]).unwrap();
        assert_eq!(proxies.to_string(), "10.0.0.0/8,fd00::/8,192.168.1.9/32");
        assert!(proxies.contains("10.200.0.1".parse().unwrap()));
        assert!(proxies.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped IPv6 is IPv4");
        assert!(proxies.contains("fd12::1".parse().unwrap()));
        assert!(proxies.contains("192.168.1.9".parse().unwrap()));
        assert!(!proxies.contains("192.168.1.10".parse().unwrap()));
        assert!(!proxies.contains("127.0.0.1".parse().unwrap()));
        let none = TrustedProxies::parse(["none"]).unwrap();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
        assert_eq!(none.to_string(), "none");
        assert!(TrustedProxies::loopback().contains("127.0.0.2".parse().unwrap()));
        assert!(TrustedProxies::loopback().contains("::1".parse().unwrap()));
        assert!(!TrustedProxies::loopback().contains("10.0.0.1".parse().unwrap()));
        let error = TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/33"), "{error}");
    }

    #[test]
    fn links_use_the_external_url_a_request_names_or_the_first() {
        let urls = ExternalUrls::parse(["https://wharf.example.com/", "http://wharf-acme.ns.svc:8080"]).unwrap();
        assert_eq!(urls.to_string(), "https://wharf.example.com,http://wharf-acme.ns.svc:8080");
        let origin = |requested: Option<&str>| urls.origin_for(requested).map(|(s, h)| format!("{s}://{h}"));
        assert_eq!(origin(Some("WHARF.example.com:443")).as_deref(), Some("https://wharf.example.com"));
        assert_eq!(origin(Some("wharf-acme.ns.svc:8080")).as_deref(), Some("http://wharf-acme.ns.svc:8080"));
        assert_eq!(origin(Some("evil.example")).as_deref(), Some("https://wharf.example.com"));
        assert_eq!(origin(None).as_deref(), Some("https://wharf.example.com"));
        assert_eq!(ExternalUrls::default().origin_for(Some("any")), None);
        for wrong in ["wharf.example.com", "ftp://x", "https://x/path", "https://"] {
            assert!(ExternalUrls::parse([wrong]).is_err(), "{wrong}");
        }
    }

    #[test]
    fn the_forwarded_client_is_the_nearest_untrusted_hop() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let client = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("x-forwarded-for", value.parse().unwrap());
            forwarded_client(&headers, &proxies).map(|address| address.to_string())
        };
        assert_eq!(client("203.0.113.9").as_deref(), Some("203.0.113.9"));
        // A client's own header comes first: the hop the first proxy saw wins.
        assert_eq!(client("127.0.0.1, 203.0.113.9, 10.1.1.1").as_deref(), Some("203.0.113.9"));
        assert_eq!(client("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(client("10.1.1.1, 10.2.2.2").as_deref(), Some("10.1.1.1"), "proxies all the way");
        assert_eq!(client("not-an-address"), None, "a garbled header is not believed");
    }

    #[test]
    fn only_complete_health_probe_heads_are_answered_ok() {
        assert!(is_health_probe(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_health_probe(b"HEAD /healthz HTTP/1.1\r\n\r\n"));
        assert!(!is_health_probe(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), "half-sent");
        assert!(!is_health_probe(b"GET /healthzz HTTP/1.1\r\n\r\n"));
        assert!(!is_health_probe(b"PUT /healthz HTTP/1.1\r\n\r\n"));
        assert!(!is_health_probe(b""));
    }

    #[test]
    fn the_derived_connection_cap_leaves_descriptors_over() {
        let cap = default_max_connections() as u64;
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        assert!((16..=MAX_DERIVED_CONNECTIONS).contains(&cap));
        assert!(soft < 96 || cap * 2 + RESERVED_DESCRIPTORS <= soft, "{cap} of {soft}");
    }
}
