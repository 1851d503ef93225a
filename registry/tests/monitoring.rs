//! `--metrics-listen`: `/metrics` on a port of its own and off the clients' port; and every
//! registry metric the chart's alerts and dashboard name is one the registry exposes, so
//! they cannot drift apart (the operator's are checked in `wharf-operator`).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use support::*;

/// The `wharf_` metric names in a file of the chart, as exposed (`_total`, `_bucket`, … cut
/// off), without the operator's.
pub fn registry_metrics_named_in(file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/wharf/files").join(file),
    )
    .unwrap();
    let pattern = regex::Regex::new(r"\bwharf_[a-z_]+").unwrap();
    pattern
        .find_iter(&text)
        .map(|name| {
            let name = name.as_str();
            ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .filter(|name| !name.starts_with("wharf_operator_"))
        .collect()
}

/// A Domain with an external connection (never reached here), so its counters exist.
const WITH_A_CONNECTION: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {filesystem: {path: "{data}"}}
  externalConnections:
    - {name: npm-public, format: npm, url: "http://127.0.0.1:9/"}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_a_port_of_their_own_and_the_alerts_name_real_ones() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let server = TestServer::start_with(Some(WITH_A_CONNECTION), &["--metrics-listen", &address]);
    let public = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404);
    assert!(public.text().await.unwrap().contains("--metrics-listen"));
    let client = reqwest::Client::new();
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(client.get(format!("http://{address}{probe}")).send().await.unwrap().status(), 200, "{probe}");
    }
    assert_eq!(client.get(format!("http://{address}/npm/main/x")).send().await.unwrap().status(), 404, "metrics only");
    let exposed = client.get(format!("http://{address}/metrics")).send().await.unwrap().text().await.unwrap();
    let named: BTreeSet<String> = registry_metrics_named_in("wharf-alerts.yaml")
        .into_iter()
        .chain(registry_metrics_named_in("wharf-dashboard.json"))
        .collect();
    assert!(named.len() >= 6, "{named:?}");
    for name in &named {
        assert!(
            exposed.contains(&format!("# TYPE {name} ")),
            "{name} is not a metric the registry exposes:\n{exposed}"
        );
    }
}
