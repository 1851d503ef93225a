//! What happens to packages, as the core sees it: publishes, fetches from upstream,
//! status changes, deletions, copies, downloads and policy refusals. The core says what
//! happened to which version; whoever observes it (the registry's audit trail) adds who
//! asked and from where. Recording never waits and never fails a request.

use std::sync::Arc;

use crate::{PackageId, VersionStatus};

/// One thing that happened to a package in a Repository.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    pub action: Action,
    pub repository: String,
    pub id: PackageId,
    /// The version concerned, when it is one.
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A version, or files of one, published here.
    Published {
        files: Vec<String>,
    },
    /// A file fetched through an external connection and kept.
    Fetched {
        connection: String,
        file: String,
    },
    StatusChanged {
        from: VersionStatus,
        to: VersionStatus,
    },
    /// Deleted for good; `reusable` when its number may be published again.
    Deleted {
        reusable: bool,
    },
    /// Copied here from another Repository of the Domain.
    Copied {
        from: String,
    },
    /// A file of the version served.
    Downloaded {
        file: String,
    },
    /// A policy or origin rule refused the request.
    Refused {
        reason: String,
    },
}

impl Action {
    /// The action's name in events (`package.published`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Published { .. } => "package.published",
            Action::Fetched { .. } => "package.fetched",
            Action::StatusChanged { .. } => "package.status_changed",
            Action::Deleted { .. } => "package.deleted",
            Action::Copied { .. } => "package.copied",
            Action::Downloaded { .. } => "package.downloaded",
            Action::Refused { .. } => "policy.refused",
        }
    }
}

/// Where the core reports activity.
pub trait ActivitySink: Send + Sync {
    /// Must return at once: it runs on the request's path.
    fn record(&self, activity: Activity);

    /// Who the request being served acts for, if anyone is known: stored as a version's
    /// publisher.
    fn actor(&self) -> Option<String> {
        None
    }
}

/// Reports nowhere (tests, one-off commands).
pub struct Unobserved;

impl ActivitySink for Unobserved {
    fn record(&self, _activity: Activity) {}
}

pub(crate) fn unobserved() -> Arc<dyn ActivitySink> {
    Arc::new(Unobserved)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use wharf_api::PackageFormat;
    use wharf_storage::{BodyError, Storage};

    use super::*;
    use crate::{NewAsset, NewVersion, Registry};

    /// Keeps what it is told, and acts for `ci`.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Activity>>);

    impl ActivitySink for Recorded {
        fn record(&self, activity: Activity) {
            self.0.lock().unwrap().push(activity);
        }

        fn actor(&self) -> Option<String> {
            Some("ci".into())
        }
    }

    #[tokio::test]
    async fn publishing_changing_deleting_and_downloading_are_reported_and_the_publisher_kept() {
        let sink = Arc::new(Recorded::default());
        let registry = Registry::new(Storage::new(Arc::new(InMemory::new()))).with_activity(sink.clone());
        let id = PackageId::new(PackageFormat::Npm, "pkg");
        let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::from_static(b"bytes"))]);
        let digests = registry.stage_asset(body, 1 << 20).await.unwrap().commit().await.unwrap();
        let new = NewVersion {
            version: "1.0.0".into(),
            metadata: serde_json::json!({}),
            assets: vec![NewAsset { name: "pkg-1.0.0.tgz".into(), digests, metadata: Default::default() }],
            tags: vec![],
        };
        registry.publish_version("main", &id, "pkg", new).await.unwrap();
        let snapshot = registry.package("main", &id).await.unwrap().unwrap();
        assert_eq!(snapshot.index.versions["1.0.0"].published_by.as_deref(), Some("ci"));

        registry.record_download("main", &id, "1.0.0", "pkg-1.0.0.tgz");
        registry.set_status("main", &id, "1.0.0", None, VersionStatus::Unlisted, "ci").await.unwrap();
        // Setting the status it has changes nothing, and reports nothing.
        registry.set_status("main", &id, "1.0.0", None, VersionStatus::Unlisted, "ci").await.unwrap();
        registry.delete_version("main", &id, "1.0.0", false, "admin").await.unwrap();
        let actions: Vec<Action> = sink.0.lock().unwrap().iter().map(|a| a.action.clone()).collect();
        assert_eq!(
            actions,
            [
                Action::Downloaded { file: "pkg-1.0.0.tgz".into() },
                Action::StatusChanged { from: VersionStatus::Published, to: VersionStatus::Unlisted },
                Action::Deleted { reusable: false },
            ]
        );
        assert!(sink.0.lock().unwrap().iter().all(|a| a.version.as_deref() == Some("1.0.0") && a.repository == "main"));
    }
}
