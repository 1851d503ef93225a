//! The operator's Prometheus metrics (reconciles by kind and result, whether this replica
//! leads) and the small HTTP server for `/metrics` and `/healthz`. Recording is in memory;
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

/// What the operator counts.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
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
        Self { registry, reconciles, leader }
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

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
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
        .with_state(metrics);
    axum::serve(listener, app).await
}

/// Binds the metrics address, so a taken port is an error at start rather than later.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
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
}
