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
    /// This process's key for its recent copies and deletions.
    actions_key: String,
    actions: tokio::sync::Mutex<std::collections::VecDeque<wharf_api::usage::RepositoryAction>>,
}

/// Copies and deletions one process keeps in its key: the operator reads them within
/// seconds, so a few are plenty.
const ACTIONS_KEPT: usize = 20;
/// A key whose newest action is this old belongs to a process long gone: its next writer
/// removes it.
const ACTIONS_STALE: chrono::TimeDelta = chrono::TimeDelta::hours(24);

impl UsageReporter {
    pub fn new(client: Client, reference: &str) -> anyhow::Result<UsageReporter> {
        let (namespace, name) = config_map_reference("--usage-config-map", reference)?;
        Ok(UsageReporter {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            actions_key: format!(
                "{}{}.json",
                wharf_api::usage::ACTIONS_KEY_PREFIX,
                wharf_core::downloads::writer_name()
            ),
            actions: Default::default(),
        })
    }

    /// Hands a copy or deletion to the operator, which makes it an Event on the Repository;
    /// removes keys of processes that have not written for a day. A failure is logged.
    pub async fn report_action(&self, action: wharf_api::usage::RepositoryAction) {
        let mut actions = self.actions.lock().await;
        // Its own stale actions go too: written again after another replica removed the
        // key, they would be announced again.
        let now = chrono::Utc::now();
        actions.retain(|kept| {
            chrono::DateTime::parse_from_rfc3339(&kept.at)
                .is_ok_and(|at| now.signed_duration_since(at) <= ACTIONS_STALE)
        });
        actions.push_back(action);
        while actions.len() > ACTIONS_KEPT {
            actions.pop_front();
        }
        let Ok(json) = serde_json::to_string(&*actions) else { return };
        let mut data = serde_json::Map::new();
        if let Ok(current) = self.api.get(&self.name).await {
            data.extend(
                stale_action_keys(&current, chrono::Utc::now()).into_iter().map(|key| (key, serde_json::Value::Null)),
            );
        }
        data.insert(self.actions_key.clone(), serde_json::Value::String(json));
        let patch = serde_json::json!({"data": data});
        let params = kube::api::PatchParams::default();
        if let Err(error) = self.api.patch(&self.name, &params, &kube::api::Patch::Merge(&patch)).await {
            tracing::warn!(config_map = %self.name, %error, "failed to report a copy or deletion to the operator");
        }
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

/// The action keys of `config_map` whose newest action is older than [`ACTIONS_STALE`].
fn stale_action_keys(config_map: &ConfigMap, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let data = config_map.data.iter().flatten();
    data.filter(|(key, _)| key.starts_with(wharf_api::usage::ACTIONS_KEY_PREFIX))
        .filter(|(_, json)| {
            let actions: Vec<wharf_api::usage::RepositoryAction> = serde_json::from_str(json).unwrap_or_default();
            let newest = actions.iter().filter_map(|a| chrono::DateTime::parse_from_rfc3339(&a.at).ok()).max();
            newest.is_none_or(|newest| now.signed_duration_since(newest) > ACTIONS_STALE)
        })
        .map(|(key, _)| key.clone())
        .collect()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_processes_silent_for_a_day_are_stale() {
        let action = |at: &str| {
            serde_json::json!([{"id": "a", "at": at, "kind": "Deleted", "repository": "web", "format": "npm",
                "package": "app", "versions": ["1.0.0"], "by": "admin"}])
            .to_string()
        };
        let config_map = ConfigMap {
            data: Some(
                [
                    ("usage.json".to_owned(), "{}".to_owned()),
                    ("actions-old.json".to_owned(), action("2026-12-01T00:00:00Z")),
                    ("actions-new.json".to_owned(), action("2026-12-06T07:00:00Z")),
                    ("actions-garbled.json".to_owned(), "not json".to_owned()),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T08:00:00Z").unwrap().to_utc();
        let mut stale = stale_action_keys(&config_map, now);
        stale.sort();
        assert_eq!(stale, ["actions-garbled.json", "actions-old.json"]);
    }
}
