//! Runs the storage collector ([`wharf_core::collect`]) of the Domain on a schedule, and
//! soon after a version's bytes may have become free (a dispose, a delete). Every replica
//! keeps the schedule; the lease in storage lets one of them collect at a time, so no
//! CronJob or leader election is needed and a registry outside a cluster collects too.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use wharf_api::{CleanupRule, DomainConfig};
use wharf_core::Registry;
use wharf_core::collect::CollectOptions;

/// When and how the collector runs.
#[derive(Clone, Debug)]
pub struct CollectSchedule {
    /// Time between scheduled runs.
    pub interval: Duration,
    /// How long a blob must have been left alone before it may be freed.
    pub grace: Duration,
}

impl Default for CollectSchedule {
    fn default() -> Self {
        CollectSchedule { interval: Duration::from_secs(6 * 3600), grace: wharf_core::collect::DEFAULT_GRACE }
    }
}

/// Each Repository's cleanup rules in `config`, by name.
pub fn cleanup_rules(config: &DomainConfig) -> BTreeMap<String, Vec<CleanupRule>> {
    config
        .repositories
        .iter()
        .filter(|repository| !repository.spec.cleanup.is_empty())
        .map(|repository| (repository.name().to_owned(), repository.spec.cleanup.clone()))
        .collect()
}

/// How long after start the first collection runs.
const FIRST_RUN: Duration = Duration::from_secs(10 * 60);

pub struct Collector {
    registry: Arc<Registry>,
    schedule: CollectSchedule,
    /// The cleanup rules of the configuration being served, by Repository.
    cleanup: std::sync::RwLock<BTreeMap<String, Vec<CleanupRule>>>,
    /// Where each collection's count of the Domain's storage goes (cluster mode).
    usage: Option<Arc<crate::cluster::UsageReporter>>,
    /// Who collects, for the lease: the pod's (host's) name and the process.
    holder: String,
    wake: Arc<Notify>,
    /// What the last collection this process ran counted (the web interface shows it).
    last_usage: std::sync::Mutex<Option<Arc<wharf_api::usage::UsageReport>>>,
}

impl Collector {
    /// Hands a copy or deletion to the operator (cluster mode; elsewhere nothing to do),
    /// without holding up the request.
    pub fn report_action(&self, action: wharf_api::usage::RepositoryAction) {
        if let Some(usage) = self.usage.clone() {
            tokio::spawn(async move { usage.report_action(action).await });
        }
    }

    /// A collector of `registry`'s storage, running on its own task until dropped.
    pub fn start(
        registry: Arc<Registry>,
        schedule: CollectSchedule,
        usage: Option<Arc<crate::cluster::UsageReporter>>,
    ) -> Arc<Collector> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "registry".to_owned());
        let holder = format!("{host}/{}", std::process::id());
        let wake = Arc::new(Notify::new());
        let interval = schedule.interval;
        let collector = Arc::new(Collector {
            registry,
            schedule,
            cleanup: Default::default(),
            usage,
            holder,
            wake: wake.clone(),
            last_usage: Default::default(),
        });
        tokio::spawn(run(Arc::downgrade(&collector), wake, interval));
        collector
    }

    /// What the last collection run by this process counted, if one ran.
    pub fn last_usage(&self) -> Option<Arc<wharf_api::usage::UsageReport>> {
        self.last_usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies the cleanup rules of `config` from the next run on.
    pub fn set_cleanup(&self, config: &DomainConfig) {
        *self.cleanup.write().unwrap_or_else(|e| e.into_inner()) = cleanup_rules(config);
    }

    /// Asks for a run soon (a version's bytes may be free now).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn collect(&self) {
        let cleanup = self.cleanup.read().unwrap_or_else(|e| e.into_inner()).clone();
        let options = CollectOptions { grace: self.schedule.grace, dry_run: false, cleanup };
        match self.registry.collect(&self.holder, &options).await {
            Ok(Ok(report)) => {
                tracing::info!(
                    freed_blobs = report.freed_blobs,
                    freed_bytes = report.freed_bytes,
                    freed_uploads = report.freed_uploads,
                    freed_revisions = report.freed_revisions,
                    freed_download_days = report.freed_download_days,
                    disposed_versions = report.disposed_versions,
                    blobs = report.blobs,
                    packages = report.packages,
                    stored_bytes = report.usage.stored_bytes,
                    seconds = report.seconds,
                    "storage collected"
                );
                if let Some(usage) = &self.usage {
                    usage.report(&report.usage).await;
                }
                *self.last_usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(report.usage));
            }
            Ok(Err(held)) => tracing::debug!(holder = held.holder, until = %held.expires, "another collector runs"),
            Err(error) => {
                tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "storage collection failed")
            }
        }
    }
}

/// Sleeps without holding the collector, so dropping it (a configuration that ends, a
/// test) ends the task.
async fn run(collector: Weak<Collector>, wake: Arc<Notify>, interval: Duration) {
    // The first run comes soon after start, so usage is known early; then every interval.
    let mut wait = interval.min(FIRST_RUN);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
        wait = interval;
        let Some(collector) = collector.upgrade() else { return };
        collector.collect().await;
    }
}
