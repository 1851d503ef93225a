//! Prometheus metrics: requests by route, method and status, their
//! durations, the bytes that went in and out, and requests to external
//! connections.

use std::borrow::Cow;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::SharedState;

/// A handler's name for what a request did (`npm_packument`), set as a
/// response extension; more useful than one catch-all route pattern.
#[derive(Clone, Copy, Debug)]
pub struct Operation(pub &'static str);

/// A handler's result as a response labelled with its [`Operation`].
pub fn tagged(operation: &'static str, result: Result<Response, super::ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(Operation(operation));
    response
}

/// Labels borrow their text where they can: hot routes name an
/// [`Operation`], so recording a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Cow<'static, str>,
    method: Cow<'static, str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Cow<'static, str>,
}

#[derive(Clone)]
struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        // 100 µs … ~13 s
        Histogram::new(exponential_buckets(0.0001, 2.0, 18))
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, DurationBuckets>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    token_reviews: Family<ResultLabels, Counter>,
    audit_events: Family<EventLabels, Counter>,
    audit_dropped: Family<SinkLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(wharf_upstream::UpstreamRequests::default())
    }
}

impl Metrics {
    /// The registry's metrics, with the external connections' request
    /// counter among them.
    pub fn new(upstream_requests: wharf_upstream::UpstreamRequests) -> Self {
        let mut registry = Registry::with_prefix("wharf");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, DurationBuckets>::new_with_constructor(DurationBuckets);
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to the response head, by route", durations.clone());
        registry.register("http_request_bytes", "Declared request body bytes, by route", bytes_in.clone());
        registry.register("http_response_bytes", "Declared response body bytes, by route", bytes_out.clone());
        registry.register(
            "upstream_requests",
            "Requests to external connections by connection, kind (metadata, artifact) and outcome (fetched, not_modified, not_found, failed; served_stale counts a failure answered with the last good copy)",
            upstream_requests,
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration revisions received in cluster mode, by result (applied, rejected)",
            config_reloads.clone(),
        );
        let token_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_reviews",
            "ServiceAccount tokens sent to the apiserver's TokenReview API, by result (accepted, rejected, unavailable)",
            token_reviews.clone(),
        );
        // Every outcome an alert watches starts at zero, so `increase()` sees the first one.
        for result in ["applied", "rejected"] {
            let _ = config_reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["accepted", "rejected", "unavailable"] {
            let _ = token_reviews.get_or_create(&ResultLabels { result });
        }
        let audit_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "audit_events",
            "Audit events recorded, by type (package.downloaded, …)",
            audit_events.clone(),
        );
        let audit_dropped = Family::<SinkLabels, Counter>::default();
        registry.register(
            "audit_events_dropped",
            "Audit events lost, by where (queue: the audit task fell behind; log, webhook, storage: that sink failed or its queue was full)",
            audit_dropped.clone(),
        );
        for sink in ["queue", "log", "webhook", "storage"] {
            let _ = audit_dropped.get_or_create(&SinkLabels { sink });
        }
        Metrics {
            registry,
            requests,
            durations,
            bytes_in,
            bytes_out,
            config_reloads,
            token_reviews,
            audit_events,
            audit_dropped,
        }
    }

    /// Counts an audit event taken off the queue.
    pub fn record_audit_event(&self, kind: &'static str) {
        self.audit_events.get_or_create(&EventLabels { r#type: kind }).inc();
    }

    /// Counts audit events lost at `sink`.
    pub fn record_audit_dropped(&self, sink: &'static str, count: u64) {
        self.audit_dropped.get_or_create(&SinkLabels { sink }).inc_by(count);
    }

    /// Counts a configuration revision received while serving.
    pub fn record_config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a review the apiserver was asked for (cached answers are not counted).
    pub fn record_token_review<T>(&self, outcome: &Result<T, crate::token_review::ReviewError>) {
        let result = match outcome {
            Ok(_) => "accepted",
            Err(crate::token_review::ReviewError::Rejected(_)) => "rejected",
            Err(crate::token_review::ReviewError::Unavailable(_)) => "unavailable",
        };
        self.token_reviews.get_or_create(&ResultLabels { result }).inc();
    }
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub async fn track(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let bytes_in = content_length(request.headers());
    let response = next.run(request).await;
    let route: Cow<'static, str> = match (response.extensions().get::<Operation>(), matched) {
        (Some(operation), _) => Cow::Borrowed(operation.0),
        (None, Some(matched)) => Cow::Owned(matched.as_str().to_owned()),
        (None, None) => Cow::Borrowed("unmatched"),
    };
    let metrics = &state.metrics;
    let labels = RouteLabels { route: route.clone() };
    metrics.requests.get_or_create(&RequestLabels { route, method, status: response.status().as_u16() }).inc();
    metrics.durations.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    metrics.bytes_in.get_or_create(&labels).inc_by(bytes_in);
    metrics.bytes_out.get_or_create(&labels).inc_by(content_length(response.headers()));
    response
}

fn method_label(method: &Method) -> Cow<'static, str> {
    match *method {
        Method::GET => Cow::Borrowed("GET"),
        Method::HEAD => Cow::Borrowed("HEAD"),
        Method::PUT => Cow::Borrowed("PUT"),
        Method::POST => Cow::Borrowed("POST"),
        Method::DELETE => Cow::Borrowed("DELETE"),
        _ => Cow::Owned(method.as_str().to_owned()),
    }
}

pub async fn render(State(state): State<SharedState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
