//! The operator's Prometheus metrics (reconciles by kind and result, whether this replica
//! leads, each Domain's readiness) and the small HTTP server for `/metrics`, `/healthz` and
//! `/readyz`. Recording is in memory;
//! [`serve`] does I/O (a TCP listener).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    namespace: String,
    name: String,
}

/// What the operator counts.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    domain_ready: Family<DomainLabels, Gauge<i64, AtomicI64>>,
    /// The Domains as the reconciling replica sees them, read at each scrape.
    domains: std::sync::OnceLock<kube::runtime::reflector::Store<wharf_api::Domain>>,
    /// Whether this replica can do its work: a standby can, the reconciling one once its
    /// caches are filled.
    ready: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wharf_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("reconciles", "Reconciles by kind and result (ok or error)", reconciles.clone());
        registry.register(
            "leader",
            "1 while this replica reconciles (holds the Lease, or runs without leader election)",
            leader.clone(),
        );
        let domain_ready = Family::<DomainLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "domain_ready",
            "1 for a Domain whose Ready condition is True, 0 otherwise (reported by the reconciling replica)",
            domain_ready.clone(),
        );
        let ready = std::sync::atomic::AtomicBool::new(true);
        Self { registry, reconciles, leader, domain_ready, domains: std::sync::OnceLock::new(), ready }
    }
}

impl Metrics {
    /// Counts one reconcile of `kind` (`Domain`, `Repository`, `UpstreamPolicy`).
    pub fn reconciled(&self, kind: &'static str, ok: bool) {
        self.reconciles.get_or_create(&ReconcileLabels { kind, result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Records whether this replica reconciles.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Reads the Domains' readiness from `domains` at each scrape from now on.
    pub fn watch_domains(&self, domains: kube::runtime::reflector::Store<wharf_api::Domain>) {
        let _ = self.domains.set(domains);
    }

    /// Records whether this replica can do its work (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this replica can do its work.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Some(domains) = self.domains.get() {
            // From the cache at each scrape: a deleted Domain leaves no series behind.
            self.domain_ready.clear();
            for domain in domains.state() {
                let ready = domain.status.as_ref().is_some_and(|status| {
                    wharf_api::find_condition(&status.conditions, "Ready").is_some_and(|ready| ready.status == "True")
                });
                let labels = DomainLabels {
                    namespace: domain.metadata.namespace.clone().unwrap_or_default(),
                    name: domain.metadata.name.clone().unwrap_or_default(),
                };
                self.domain_ready.get_or_create(&labels).set(i64::from(ready));
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(metrics);
    axum::serve(listener, app).await
}

/// Binds the metrics address, so a taken port is an error at start rather than later.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Ready while this replica can do its work; alive (`/healthz`) as long as it answers.
async fn readyz(State(metrics): State<Arc<Metrics>>) -> Response {
    if metrics.is_ready() {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "filling the caches\n").into_response()
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_kind_and_result() {
        let metrics = Metrics::default();
        metrics.reconciled("Repository", true);
        metrics.reconciled("Repository", true);
        metrics.reconciled("Domain", false);
        metrics.set_leader(true);
        let text = metrics.encode().unwrap();
        assert!(text.contains("wharf_operator_reconciles_total{kind=\"Repository\",result=\"ok\"} 2"), "{text}");
        assert!(text.contains("wharf_operator_reconciles_total{kind=\"Domain\",result=\"error\"} 1"), "{text}");
        assert!(text.contains("wharf_operator_leader 1"), "{text}");
    }

    #[test]
    fn the_chart_names_only_metrics_the_operator_exposes() {
        let metrics = Metrics::default();
        metrics.reconciled("Domain", true);
        // As a scrape with one Domain in the cache writes it.
        metrics.domain_ready.get_or_create(&DomainLabels { namespace: "n".into(), name: "d".into() }).set(1);
        let exposed = metrics.encode().unwrap();
        let pattern = regex::Regex::new(r"\bwharf_operator_[a-z_]+").unwrap();
        let files = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/wharf/files");
        let mut named = std::collections::BTreeSet::new();
        for file in ["wharf-alerts.yaml", "wharf-dashboard.json"] {
            let text = std::fs::read_to_string(files.join(file)).unwrap();
            named.extend(pattern.find_iter(&text).map(|name| name.as_str().trim_end_matches("_total").to_owned()));
        }
        assert!(named.contains("wharf_operator_domain_ready"), "{named:?}");
        for name in &named {
            assert!(exposed.contains(&format!("# TYPE {name} ")), "{name} is not exposed:\n{exposed}");
        }
    }
}
