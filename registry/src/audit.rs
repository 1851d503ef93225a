//! The audit trail: who published, changed, copied, deleted, pulled or was refused what,
//! from where, and who minted, exchanged and revoked tokens.
//!
//! Events are CloudEvents 1.0 in their structured JSON form. Recording one never waits:
//! it goes onto a bounded queue (a full queue drops it and counts the drop), and one task
//! takes it from there to three places:
//! - the audit stream (`--audit-log`: standard output by default, where operational logs
//!   go to standard error), one JSON object a line;
//! - the webhook (`--audit-webhook`), in batches, retried, behind a bounded queue of its
//!   own, so a slow or down receiver costs dropped events (counted), never requests;
//! - the Domain's storage: what one process saw is written every `--audit-flush-interval`
//!   as one object (`audit/{day}/{writer}-{n}.json`), downloads of the same file by the
//!   same caller from the same address folded into one event with a count, so a busy
//!   registry makes one storage write per flush whatever its traffic. `GET /api/v1/audit`
//!   answers from those objects and what this process has not written yet; days past
//!   `--audit-retention-days` are deleted.
//!
//! Who acted comes from the request: [`scope`] wraps every request, and authentication
//! names the principal in it ([`attribute`]), so the core can report what happened without
//! knowing about HTTP.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use wharf_core::activity::{Action, Activity, ActivitySink};
use wharf_storage::Storage;
use wharf_storage::keys;

use crate::auth::Principal;
use crate::server::connections::ClientAddress;
use crate::server::metrics::Metrics;

/// Events one process keeps unwritten before it drops new ones (storage unreachable
/// for long): a bound on memory, not a limit a healthy registry meets.
const MAX_UNWRITTEN: usize = 1_000_000;
/// Events a webhook request carries at most.
const WEBHOOK_BATCH: usize = 500;
/// How long a batch waits to fill before it is sent.
const WEBHOOK_LINGER: Duration = Duration::from_secs(1);
/// Deliveries of one batch before it is dropped.
const WEBHOOK_ATTEMPTS: u32 = 5;
/// Stored objects whose events are kept parsed in memory for queries (they never change).
const CACHED_OBJECTS: usize = 4096;
/// How long the audit task gathers events before it writes them to the stream: one write
/// for many events on a busy registry, at most this late.
const STREAM_LINGER: Duration = Duration::from_millis(20);
/// Events written to the stream at once at most.
const STREAM_BATCH: usize = 1024;

/// Where the audit stream goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditLog {
    Stdout,
    File(PathBuf),
    Off,
}

impl std::str::FromStr for AuditLog {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "stdout" | "-" => AuditLog::Stdout,
            "off" => AuditLog::Off,
            path => AuditLog::File(PathBuf::from(path)),
        })
    }
}

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Whether events are recorded at all (`--no-audit` turns it off, to measure what the
    /// trail costs).
    pub enabled: bool,
    pub log: AuditLog,
    /// Where batches of events are POSTed (`application/cloudevents-batch+json`).
    pub webhook: Option<reqwest::Url>,
    /// How often what this process saw is written to storage.
    pub flush_interval: Duration,
    /// Days of events kept in storage.
    pub retention_days: u32,
    /// Events waiting for the audit task before new ones are dropped.
    pub queue: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            enabled: true,
            log: AuditLog::Stdout,
            webhook: None,
            flush_interval: Duration::from_secs(10),
            retention_days: 90,
            queue: 65_536,
        }
    }
}

/// Who acted, as events name them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// `admin`, `anonymous`, `token`, `serviceAccount`, `oidc` or `kubernetesUser`.
    pub kind: String,
    /// The token's subject, `system:serviceaccount:NS:NAME`, `{issuer}#{sub}`, a user name.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

impl Actor {
    pub fn of(principal: &Principal) -> Actor {
        let (kind, token_id) = match principal {
            Principal::Anonymous => ("anonymous", None),
            Principal::Admin => ("admin", None),
            Principal::Token(claims) => ("token", Some(claims.jti.clone())),
            Principal::ServiceAccount(_) => ("serviceAccount", None),
            Principal::Oidc(_) => ("oidc", None),
            Principal::KubernetesUser(_) => ("kubernetesUser", None),
        };
        Actor { kind: kind.to_owned(), subject: principal.name().to_owned(), token_id }
    }
}

/// One request's facts for the events it causes.
struct RequestScope {
    client: Option<IpAddr>,
    actor: OnceLock<Actor>,
}

tokio::task_local! {
    static REQUEST: Arc<RequestScope>;
}

/// Middleware: runs the request in a scope that authentication fills in.
pub async fn scope(request: Request, next: Next) -> Response {
    let client = request.extensions().get::<ClientAddress>().map(|client| client.0);
    let scope = Arc::new(RequestScope { client, actor: OnceLock::new() });
    REQUEST.scope(scope, next.run(request)).await
}

/// Names who the current request acts for (the first principal authenticated wins).
pub fn attribute(principal: &Principal) {
    let _ = REQUEST.try_with(|scope| scope.actor.get_or_init(|| Actor::of(principal)).clone());
}

fn current() -> (Option<Actor>, Option<IpAddr>) {
    REQUEST.try_with(|scope| (scope.actor.get().cloned(), scope.client)).unwrap_or((None, None))
}

/// An audit event: a CloudEvent, structured mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    pub specversion: String,
    pub id: String,
    /// `/wharf/{domain}`.
    pub source: String,
    /// `dev.wharf.package.published`, `dev.wharf.token.minted`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub time: DateTime<Utc>,
    /// `{repository}/{format}/{package}[@{version}]`, when a package is concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub datacontenttype: String,
    pub data: EventData,
}

/// What an event says; the fields that do not apply are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Downloads folded into this event in storage (same caller, address and file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The last of the folded downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<DateTime<Utc>>,
    /// The action's own facts: files, statuses, the reason of a refusal, a token's id.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl EventData {
    pub fn detail(mut self, key: &str, value: impl Serialize) -> Self {
        self.details.insert(key.to_owned(), serde_json::to_value(value).unwrap_or_default());
        self
    }
}

/// The audit trail of one registry process.
pub struct AuditTrail {
    enabled: bool,
    source: String,
    /// Event ids are this process's random prefix and a counter: unique without a random
    /// draw per event.
    id_prefix: u64,
    next_id: std::sync::atomic::AtomicU64,
    queue: mpsc::Sender<AuditEvent>,
    store: Arc<AuditStore>,
    metrics: Arc<Metrics>,
    /// The command line's settings, which the Domain's `spec.audit` overrides.
    defaults: AuditOptions,
    webhook: Arc<Mutex<Option<Webhook>>>,
    /// Events queued and not yet with the store: a flush at shutdown waits for them.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// The webhook events are delivered to now, and the queue of its delivery task.
struct Webhook {
    url: reqwest::Url,
    queue: mpsc::Sender<AuditEvent>,
}

impl AuditTrail {
    /// Starts the audit task; it ends once the trail is dropped and its queue drained.
    /// Starts the audit task with the command line's `options`, overridden by the Domain's
    /// `spec.audit`.
    pub fn start(
        domain: &str,
        storage: Storage,
        options: &AuditOptions,
        spec: Option<&wharf_api::domain::AuditSpec>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (queue, events) = mpsc::channel(options.queue.max(1));
        let store = Arc::new(AuditStore::new(storage, options.retention_days));
        let webhook = Arc::new(Mutex::new(None));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        if options.enabled {
            let sinks = Sinks { webhook: webhook.clone(), store: store.clone(), in_flight: in_flight.clone() };
            tokio::spawn(dispatch(events, options.log.clone(), sinks, metrics.clone()));
            tokio::spawn(flush_periodically(Arc::downgrade(&store), options.flush_interval));
        }
        let trail = Arc::new(AuditTrail {
            enabled: options.enabled,
            source: format!("/wharf/{domain}"),
            id_prefix: rand::random(),
            next_id: Default::default(),
            queue,
            store,
            metrics,
            defaults: options.clone(),
            webhook,
            in_flight,
        });
        trail.apply(spec);
        trail
    }

    /// Takes the Domain's `spec.audit` (at start and on every configuration revision): a
    /// new webhook gets the events from now on, the old one what it was given.
    pub fn apply(&self, spec: Option<&wharf_api::domain::AuditSpec>) {
        if !self.enabled {
            return;
        }
        let days = spec.and_then(|spec| spec.retention_days).unwrap_or(self.defaults.retention_days);
        self.store.retention_days.store(days, std::sync::atomic::Ordering::Relaxed);
        let url = match spec.and_then(|spec| spec.webhook_url.as_deref()) {
            Some(url) => match reqwest::Url::parse(url) {
                Ok(url) => Some(url),
                Err(error) => {
                    // The configuration loader refuses such a URL; this is a second line.
                    tracing::error!(url, %error, "spec.audit.webhookURL is not a URL; audit events go to no webhook");
                    None
                }
            },
            None => self.defaults.webhook.clone(),
        };
        let mut webhook = self.webhook.lock().unwrap_or_else(|e| e.into_inner());
        if webhook.as_ref().map(|webhook| &webhook.url) == url.as_ref() {
            return;
        }
        *webhook = url.map(|url| {
            tracing::info!(%url, "audit events go to a webhook");
            let (queue, batches) = mpsc::channel(self.defaults.queue.max(1));
            tokio::spawn(deliver(url.clone(), batches, self.metrics.clone()));
            Webhook { url, queue }
        });
    }

    /// Records an event of `kind` (`token.minted`) with the current request's caller and
    /// address filled in where `data` does not name them.
    pub fn emit(&self, kind: &'static str, subject: Option<String>, mut data: EventData) {
        if !self.enabled {
            return;
        }
        let (actor, client) = current();
        if data.actor.is_none() {
            data.actor = actor;
        }
        if data.client_address.is_none() {
            data.client_address = client.map(|address| address.to_string());
        }
        let event = AuditEvent {
            specversion: "1.0".to_owned(),
            id: format!("{:016x}-{}", self.id_prefix, self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            source: self.source.clone(),
            kind: format!("dev.wharf.{kind}"),
            time: Utc::now(),
            subject,
            datacontenttype: "application/json".to_owned(),
            data,
        };
        self.metrics.record_audit_event(kind);
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.queue.try_send(event).is_err() {
            self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.metrics.record_audit_dropped("queue", 1);
        }
    }

    /// Writes what this process has not written yet (at shutdown).
    pub async fn flush(&self) {
        // What is still queued or being written to the stream reaches the store first.
        for _ in 0..100 {
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.store.flush().await;
    }

    /// The newest `query.limit` events matching `query`, oldest first.
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, wharf_storage::StorageError> {
        self.store.query(query).await
    }
}

impl ActivitySink for AuditTrail {
    fn record(&self, activity: Activity) {
        if !self.enabled {
            return;
        }
        let Activity { action, repository, id, version } = activity;
        let kind = action.name();
        let subject = Some(match &version {
            Some(version) => format!("{repository}/{}/{}@{version}", id.format.as_str(), id.name),
            None => format!("{repository}/{}/{}", id.format.as_str(), id.name),
        });
        let data = EventData {
            repository: Some(repository),
            format: Some(id.format.as_str().to_owned()),
            package: Some(id.name),
            version,
            ..EventData::default()
        };
        let data = match action {
            Action::Published { files } => data.detail("files", files),
            Action::Fetched { connection, file } => data.detail("connection", connection).detail("file", file),
            Action::StatusChanged { from, to } => data.detail("from", from.as_str()).detail("to", to.as_str()),
            Action::Deleted { reusable } => data.detail("reusable", reusable),
            Action::Copied { from } => data.detail("sourceRepository", from),
            Action::Downloaded { file } => data.detail("file", file),
            Action::Refused { reason } => data.detail("reason", reason),
        };
        self.emit(kind, subject, data);
    }

    fn actor(&self) -> Option<String> {
        current().0.map(|actor| actor.subject)
    }
}

/// Takes events off the queue to the stream, the webhook's queue and the store.
/// Where the audit task hands events on, besides the stream.
struct Sinks {
    webhook: Arc<Mutex<Option<Webhook>>>,
    store: Arc<AuditStore>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

async fn dispatch(mut events: mpsc::Receiver<AuditEvent>, log: AuditLog, sinks: Sinks, metrics: Arc<Metrics>) {
    let Sinks { webhook, store, in_flight } = sinks;
    let mut stream: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match &log {
        AuditLog::Off => None,
        AuditLog::Stdout => Some(Box::new(tokio::io::stdout())),
        AuditLog::File(path) => match tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
            Ok(file) => Some(Box::new(file)),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the audit log cannot be opened; events go to storage and the webhook only");
                None
            }
        },
    };
    let mut lines = Vec::new();
    while let Some(batch) = gather(&mut events, STREAM_BATCH, STREAM_LINGER).await {
        if let Some(writer) = stream.as_mut() {
            lines.clear();
            for event in &batch {
                if serde_json::to_writer(&mut lines, event).is_ok() {
                    lines.push(b'\n');
                }
            }
            if let Err(error) = async {
                writer.write_all(&lines).await?;
                writer.flush().await
            }
            .await
            {
                tracing::warn!(%error, "audit events could not be written to the audit log");
                metrics.record_audit_dropped("log", batch.len() as u64);
            }
        }
        let webhook = webhook.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|webhook| webhook.queue.clone());
        if let Some(webhook) = &webhook {
            for event in &batch {
                if webhook.try_send(event.clone()).is_err() {
                    metrics.record_audit_dropped("webhook", 1);
                }
            }
        }
        let handed_on = batch.len();
        let dropped = store.add(batch);
        in_flight.fetch_sub(handed_on, std::sync::atomic::Ordering::SeqCst);
        if dropped > 0 {
            metrics.record_audit_dropped("storage", dropped);
        }
    }
}

/// The next events: waits for one, then takes more for up to `linger`, at most `max`;
/// `None` once the queue is closed and empty.
async fn gather(events: &mut mpsc::Receiver<AuditEvent>, max: usize, linger: Duration) -> Option<Vec<AuditEvent>> {
    let mut batch = vec![events.recv().await?];
    let linger = tokio::time::sleep(linger);
    tokio::pin!(linger);
    while batch.len() < max {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => batch.push(event),
                None => break,
            },
            () = &mut linger => break,
        }
    }
    Some(batch)
}

/// POSTs batches to the webhook, retrying each a few times with growing pauses.
async fn deliver(url: reqwest::Url, mut events: mpsc::Receiver<AuditEvent>, metrics: Arc<Metrics>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "the audit webhook's client cannot be built");
            return;
        }
    };
    while let Some(batch) = gather(&mut events, WEBHOOK_BATCH, WEBHOOK_LINGER).await {
        let body = match serde_json::to_vec(&batch) {
            Ok(body) => body,
            Err(_) => continue,
        };
        let mut delivered = false;
        for attempt in 0..WEBHOOK_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250) * 2u32.pow(attempt)).await;
            }
            let sent = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/cloudevents-batch+json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(response) => {
                    tracing::warn!(status = %response.status(), attempt, "the audit webhook refused a batch")
                }
                Err(error) => tracing::warn!(%error, attempt, "the audit webhook could not be reached"),
            }
        }
        if !delivered {
            metrics.record_audit_dropped("webhook", batch.len() as u64);
        }
    }
}

async fn flush_periodically(store: std::sync::Weak<AuditStore>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(store) = store.upgrade() else { return };
        store.flush().await;
        store.expire().await;
    }
}

/// `GET /api/v1/audit`'s filters.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub repository: Option<String>,
    pub format: Option<String>,
    pub package: Option<String>,
    pub version: Option<String>,
    /// An event type without its prefix (`package.downloaded`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// An actor's subject.
    pub actor: Option<String>,
    /// Default: seven days ago.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The newest this many (default 1000, at most 10,000).
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn matches(&self, event: &AuditEvent) -> bool {
        let same = |wanted: &Option<String>, actual: &Option<String>| {
            wanted.as_ref().is_none_or(|wanted| actual.as_ref() == Some(wanted))
        };
        let data = &event.data;
        let last = data.last_time.unwrap_or(event.time);
        same(&self.repository, &data.repository)
            && same(&self.format, &data.format)
            && same(&self.package, &data.package)
            && same(&self.version, &data.version)
            && self.kind.as_ref().is_none_or(|kind| event.kind.strip_prefix("dev.wharf.") == Some(kind.as_str()))
            && self.actor.as_ref().is_none_or(|actor| data.actor.as_ref().is_some_and(|a| a.subject == *actor))
            && self.since.is_none_or(|since| last >= since)
            && self.until.is_none_or(|until| event.time <= until)
    }
}

/// One stored object: what one process saw between two flushes.
#[derive(Serialize, Deserialize)]
struct StoredEvents {
    events: Vec<AuditEvent>,
}

/// The events of a Domain kept in its storage.
struct AuditStore {
    storage: Storage,
    retention_days: std::sync::atomic::AtomicU32,
    /// Names this process's objects (see [`wharf_core::downloads::writer_name`]).
    writer: String,
    sequence: std::sync::atomic::AtomicU64,
    unwritten: Mutex<Unwritten>,
    /// Objects already read: they never change.
    read: Mutex<HashMap<String, Arc<Vec<AuditEvent>>>>,
    expired_through: Mutex<Option<NaiveDate>>,
}

impl AuditStore {
    fn new(storage: Storage, retention_days: u32) -> Self {
        AuditStore {
            storage,
            retention_days: retention_days.into(),
            writer: wharf_core::downloads::writer_name(),
            sequence: Default::default(),
            unwritten: Mutex::default(),
            read: Mutex::default(),
            expired_through: Mutex::default(),
        }
    }

    /// Keeps events for the next flush, downloads folded; returns how many it had to drop.
    fn add(&self, events: Vec<AuditEvent>) -> u64 {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        for event in events {
            if !unwritten.fold(event) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Writes the unwritten events, one object per day they fall on; kept for the next
    /// flush when storage fails.
    async fn flush(&self) {
        let events = std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner())).events;
        if events.is_empty() {
            return;
        }
        let mut days: BTreeMap<NaiveDate, Vec<AuditEvent>> = BTreeMap::new();
        for event in events {
            days.entry(event.time.date_naive()).or_default().push(event);
        }
        for (day, events) in days {
            let sequence = self.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = keys::audit_events(&day.to_string(), &format!("{}-{sequence:010}", self.writer));
            let stored = StoredEvents { events };
            if let Err(error) = self.storage.put_json(&key, &stored).await {
                tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "audit events could not be written to storage; trying again at the next flush");
                self.add(stored.events);
            }
        }
    }

    /// Deletes the days past the retention, once a day.
    async fn expire(&self) {
        let today = Utc::now().date_naive();
        if *self.expired_through.lock().unwrap_or_else(|e| e.into_inner()) == Some(today) {
            return;
        }
        let days = self.retention_days.load(std::sync::atomic::Ordering::Relaxed);
        let oldest_kept = today - chrono::Days::new(u64::from(days));
        let days = match self.storage.list_children(&keys::audit_days()).await {
            Ok(days) => days,
            Err(error) => {
                tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "old audit events could not be listed");
                return;
            }
        };
        for day in days {
            if day.parse::<NaiveDate>().is_ok_and(|date| date < oldest_kept) {
                let folder = keys::audit_day(&day);
                if let Err(error) = self.storage.purge(&folder).await {
                    tracing::warn!(error = %wharf_diagnostics::error_chain(&error), day, "old audit events could not be deleted");
                    return;
                }
            }
        }
        *self.expired_through.lock().unwrap_or_else(|e| e.into_inner()) = Some(today);
    }

    async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, wharf_storage::StorageError> {
        let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
        let now = Utc::now();
        // Nothing older than the retention is kept: no day before it is listed.
        let retention = self.retention_days.load(std::sync::atomic::Ordering::Relaxed);
        let kept_since = now - chrono::Duration::days(i64::from(retention) + 1);
        let since = query.since.unwrap_or(now - chrono::Duration::days(7)).max(kept_since);
        let until = query.until.unwrap_or(now);
        let mut found = Vec::new();
        let mut day = since.date_naive();
        while day <= until.date_naive() {
            let folder = keys::audit_day(&day.to_string());
            let mut objects = self.storage.list_files(&folder).await?;
            objects.sort();
            for object in objects {
                let events = self.read_object(&day.to_string(), &object).await?;
                found.extend(events.iter().filter(|event| query.matches(event)).cloned());
            }
            day = day.succ_opt().unwrap_or(day);
            if day == NaiveDate::MAX {
                break;
            }
        }
        let unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        found.extend(unwritten.events.iter().filter(|event| query.matches(event)).cloned());
        drop(unwritten);
        found.sort_by_key(|event| event.time);
        found.drain(..found.len().saturating_sub(limit));
        Ok(found)
    }

    async fn read_object(&self, day: &str, object: &str) -> Result<Arc<Vec<AuditEvent>>, wharf_storage::StorageError> {
        let name = format!("{day}/{object}");
        if let Some(events) = self.read.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
            return Ok(events.clone());
        }
        let key = keys::audit_events(day, object.trim_end_matches(".json"));
        let stored: Option<StoredEvents> = self.storage.read_json(&key).await?;
        let events = Arc::new(stored.map(|stored| stored.events).unwrap_or_default());
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if read.len() >= CACHED_OBJECTS {
            read.clear();
        }
        read.insert(name, events.clone());
        Ok(events)
    }
}

/// What downloads fold by: who, from where, which version (the event's subject), which file.
type DownloadKey = (Option<Actor>, Option<String>, Option<String>, Option<String>);

/// The events a process has not written yet, downloads of one file by one caller from one
/// address folded into the first of them with a count, so a busy registry holds one event
/// per such download between flushes, not one per request.
#[derive(Default)]
struct Unwritten {
    events: Vec<AuditEvent>,
    downloads: HashMap<DownloadKey, usize>,
}

impl Unwritten {
    /// Adds an event; false when it had no room.
    fn fold(&mut self, event: AuditEvent) -> bool {
        if event.kind != "dev.wharf.package.downloaded" {
            return self.push(event);
        }
        let data = &event.data;
        let file = data.details.get("file").and_then(|f| f.as_str()).map(str::to_owned);
        let key = (data.actor.clone(), data.client_address.clone(), event.subject.clone(), file);
        match self.downloads.get(&key) {
            Some(&index) => {
                let first = &mut self.events[index];
                first.data.count = Some(first.data.count.unwrap_or(1) + event.data.count.unwrap_or(1));
                first.data.last_time = Some(event.data.last_time.unwrap_or(event.time));
                true
            }
            None => {
                self.downloads.insert(key, self.events.len());
                self.push(event)
            }
        }
    }

    fn push(&mut self, event: AuditEvent) -> bool {
        if self.events.len() >= MAX_UNWRITTEN {
            return false;
        }
        self.events.push(event);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn download(subject: &str, actor: &str, at: i64) -> AuditEvent {
        AuditEvent {
            specversion: "1.0".into(),
            id: format!("{actor}-{at}"),
            source: "/wharf/acme".into(),
            kind: "dev.wharf.package.downloaded".into(),
            time: DateTime::from_timestamp(at, 0).unwrap(),
            subject: Some(subject.into()),
            datacontenttype: "application/json".into(),
            data: EventData {
                actor: Some(Actor { kind: "token".into(), subject: actor.into(), token_id: None }),
                ..EventData::default()
            }
            .detail("file", "f.tgz"),
        }
    }

    #[test]
    fn downloads_fold_by_caller_and_file_and_keep_their_count_and_last_time() {
        let events = vec![
            download("app/npm/a@1", "ci", 10),
            download("app/npm/a@1", "ci", 11),
            download("app/npm/a@1", "dev", 12),
            download("app/npm/a@1", "ci", 13),
        ];
        let mut unwritten = Unwritten::default();
        events.into_iter().for_each(|event| assert!(unwritten.fold(event)));
        let folded = unwritten.events;
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].data.count, Some(3));
        assert_eq!(folded[0].data.last_time, DateTime::from_timestamp(13, 0));
        assert_eq!(folded[1].data.count, None);
        // Folding a folded event again (a flush that failed gives its events back) adds
        // the counts up.
        let mut again = Unwritten::default();
        assert!(again.fold(folded[0].clone()) && again.fold(download("app/npm/a@1", "ci", 14)));
        assert_eq!(again.events[0].data.count, Some(4));
    }

    #[test]
    fn a_query_matches_a_folded_download_by_its_last_time() {
        let mut event = download("app/npm/a@1", "ci", 10);
        event.data.last_time = DateTime::from_timestamp(100, 0);
        let query = AuditQuery { since: DateTime::from_timestamp(50, 0), ..AuditQuery::default() };
        assert!(query.matches(&event));
        let query = AuditQuery { kind: Some("package.published".into()), ..AuditQuery::default() };
        assert!(!query.matches(&event));
    }
}
