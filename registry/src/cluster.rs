//! Cluster mode: the configuration is the ConfigMap the operator renders for the Domain, read
//! through the Kubernetes API and watched, so a change takes effect within seconds without a
//! restart — a mounted ConfigMap would take the kubelet's sync period, a minute or more. A
//! revision that does not validate is logged and skipped; the last good one keeps serving.
//! Does I/O.

use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use wharf_api::DomainConfig;

use crate::startup::LiveServer;
use wharf_storage::secrets::SecretsDir;

/// The key of the ConfigMap that holds the rendered resources.
pub const CONFIG_KEY: &str = "wharf.yaml";

/// `NAMESPACE/NAME` of a ConfigMap named on the command line (`flag` for the message).
fn config_map_reference<'a>(flag: &str, reference: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match reference.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty()) {
        Some(parts) => Ok(parts),
        None => bail!("{flag} {reference:?}: expected NAMESPACE/NAME"),
    }
}

/// The ConfigMap the registry reports the Domain's usage in (`--usage-config-map`), for the
/// operator to show in the Domain's and Repositories' status. The operator creates it and
/// lets the registry patch it alone; the registry writes nothing else to the cluster.
pub struct UsageReporter {
    api: Api<ConfigMap>,
    name: String,
}

impl UsageReporter {
    pub fn new(client: Client, reference: &str) -> anyhow::Result<UsageReporter> {
        let (namespace, name) = config_map_reference("--usage-config-map", reference)?;
        Ok(UsageReporter { api: Api::namespaced(client, namespace), name: name.to_owned() })
    }

    /// Replaces the report; a failure is logged, the next collection reports again.
    pub async fn report(&self, usage: &wharf_api::usage::UsageReport) {
        let Ok(json) = serde_json::to_string(usage) else { return };
        let patch = serde_json::json!({"data": {wharf_api::usage::USAGE_KEY: json}});
        let params = kube::api::PatchParams::default();
        if let Err(error) = self.api.patch(&self.name, &params, &kube::api::Patch::Merge(&patch)).await {
            tracing::warn!(config_map = %self.name, %error, "failed to report storage usage");
        }
    }
}

/// A ConfigMap holding a Domain's configuration.
pub struct ConfigMapSource {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl ConfigMapSource {
    /// The ConfigMap `namespace/name`, read through `client`.
    pub fn new(client: Client, reference: &str) -> anyhow::Result<ConfigMapSource> {
        let (namespace, name) = config_map_reference("--config-map", reference)?;
        Ok(ConfigMapSource {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Reads and validates the current revision; returns it with its resourceVersion.
    pub async fn load(&self) -> anyhow::Result<(DomainConfig, Option<String>)> {
        let config_map = self
            .api
            .get(&self.name)
            .await
            .with_context(|| format!("failed to read ConfigMap {}/{}", self.namespace, self.name))?;
        Ok((self.parse(&config_map)?, config_map.metadata.resource_version))
    }

    fn parse(&self, config_map: &ConfigMap) -> anyhow::Result<DomainConfig> {
        let source = format!("ConfigMap {}/{} key {CONFIG_KEY}", self.namespace, self.name);
        let text = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(CONFIG_KEY))
            .with_context(|| format!("{source}: missing"))?;
        DomainConfig::from_yaml_str(&source, text).map_err(|error| anyhow::anyhow!("{error}"))
    }

    /// Applies every revision after `serving` to `live`, reading connection credentials from
    /// `secrets`, until the process ends. The watch
    /// restarts with backoff when the apiserver is unreachable.
    pub async fn watch(self, live: Arc<LiveServer>, mut serving: Option<String>, secrets: SecretsDir) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut revisions = watcher(self.api.clone(), config).default_backoff().applied_objects().boxed();
        while let Some(event) = revisions.next().await {
            let config_map = match event {
                Ok(config_map) => config_map,
                Err(error) => {
                    tracing::warn!(%error, "watching the configuration failed; retrying");
                    continue;
                }
            };
            let revision = config_map.metadata.resource_version.clone();
            if revision.is_some() && revision == serving {
                continue;
            }
            let outcome = self.parse(&config_map).and_then(|config| Ok(live.replace_config(config, &secrets)?));
            match outcome {
                Ok(()) => {
                    tracing::info!(revision = revision.as_deref().unwrap_or_default(), "configuration updated");
                    live.state().metrics.record_config_reload(true);
                }
                Err(error) => {
                    tracing::error!(
                        revision = revision.as_deref().unwrap_or_default(),
                        "configuration rejected, still serving the last good one: {error:#}"
                    );
                    live.state().metrics.record_config_reload(false);
                }
            }
            serving = revision;
        }
    }
}
