//! Deterministic simulation of registry replicas sharing one object store:
//! every storage call is delayed by a seeded random amount (on tokio's
//! paused clock), so each seed is one reproducible interleaving of readers,
//! writers and pruning. Pure test code, in memory.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_api::PackageFormat;

use super::*;
use wharf_storage::BodyError;

/// An in-memory store whose every call waits a random time before and after
/// it reaches the data, as a remote store does.
#[derive(Debug)]
struct DelayingStore {
    inner: Arc<InMemory>,
    rng: Arc<Mutex<StdRng>>,
    max_delay_ms: u64,
}

impl DelayingStore {
    fn delay(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        // Mostly short, sometimes long: long pauses are what let a replica
        // fall several revisions behind.
        let ms = if rng.random_ratio(1, 8) {
            rng.random_range(0..=self.max_delay_ms * 10)
        } else {
            rng.random_range(0..=self.max_delay_ms)
        };
        Duration::from_millis(ms)
    }
}

impl fmt::Display for DelayingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DelayingStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for DelayingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.delay()).await;
        let result = self.inner.put_opts(location, payload, opts).await;
        tokio::time::sleep(self.delay()).await;
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        tokio::time::sleep(self.delay()).await;
        let result = self.inner.get_opts(location, options).await;
        tokio::time::sleep(self.delay()).await;
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (before, after) = (self.delay(), self.delay());
        let inner = self.inner.clone();
        futures::stream::once(async move {
            tokio::time::sleep(before).await;
            let deleted: Vec<_> = inner.delete_stream(locations).collect().await;
            tokio::time::sleep(after).await;
            futures::stream::iter(deleted)
        })
        .flatten()
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (before, after) = (self.delay(), self.delay());
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        futures::stream::once(async move {
            tokio::time::sleep(before).await;
            let listed: Vec<_> = inner.list(prefix.as_ref()).collect().await;
            tokio::time::sleep(after).await;
            futures::stream::iter(listed)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        tokio::time::sleep(self.delay()).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        tokio::time::sleep(self.delay()).await;
        self.inner.copy_opts(from, to, options).await
    }
}

const REPLICAS: usize = 4;
const PUBLISHES_PER_REPLICA: usize = 6;
const READS_PER_REPLICA: usize = 6;

/// One interleaving: every replica publishes versions of one package and
/// reads it, concurrently. Checks that a read sees every publish
/// acknowledged before the read started, and that nothing acknowledged is
/// missing at the end. Returns how many index revisions were written.
async fn run_interleaving(seed: u64) -> u64 {
    let store = Arc::new(DelayingStore {
        inner: Arc::new(InMemory::new()),
        rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        max_delay_ms: 5,
    });
    let storage = Storage::new(store);
    let replicas: Vec<Arc<Registry>> = (0..REPLICAS).map(|_| Arc::new(Registry::new(storage.clone()))).collect();
    let id = PackageId::new(PackageFormat::Npm, "pkg");
    let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::from_static(b"tarball"))]);
    let digests = replicas[0].stage_asset(body, 1 << 20).await.expect("stage").commit().await.expect("commit");
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let writes = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for (replica_number, replica) in replicas.iter().enumerate() {
        for n in 0..PUBLISHES_PER_REPLICA {
            let (replica, id, digests) = (replica.clone(), id.clone(), digests.clone());
            let (acknowledged, writes) = (acknowledged.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((n as u64) * 7)).await;
                let version = format!("{replica_number}.{n}.0");
                let new = NewVersion {
                    version: version.clone(),
                    metadata: serde_json::json!({}),
                    assets: vec![NewAsset {
                        name: format!("pkg-{version}.tgz"),
                        digests,
                        metadata: Default::default(),
                    }],
                    tags: vec!["latest".into()],
                };
                replica.publish_version("main", &id, "pkg", new).await.expect("publish");
                writes.fetch_add(1, Ordering::Relaxed);
                acknowledged.lock().unwrap_or_else(|e| e.into_inner()).insert(version);
            }));
        }
        for n in 0..READS_PER_REPLICA {
            let (replica, id, acknowledged) = (replica.clone(), id.clone(), acknowledged.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((n as u64) * 11 + 3)).await;
                let expected = acknowledged.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let seen: BTreeSet<String> = match replica.package("main", &id).await.expect("read") {
                    Some(snapshot) => snapshot.index.versions.keys().cloned().collect(),
                    None => BTreeSet::new(),
                };
                let missing: Vec<_> = expected.difference(&seen).collect();
                assert!(missing.is_empty(), "seed {seed}: a read missed acknowledged publishes {missing:?}");
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    // Let pruning finish, then read as a replica that just started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fresh = Registry::new(storage);
    let stored: BTreeSet<String> =
        fresh.package("main", &id).await.expect("read").expect("package").index.versions.keys().cloned().collect();
    let acknowledged = acknowledged.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(stored, acknowledged, "seed {seed}: the index after all writes differs from what was acknowledged");
    assert_eq!(acknowledged.len(), REPLICAS * PUBLISHES_PER_REPLICA);
    writes.load(Ordering::Relaxed)
}

/// 1,000 seeded interleavings of 4 replicas, each publishing 6 versions and
/// reading 6 times, with pruning. Before the index protocol listed
/// revisions, replicas that fell three writes behind served a stale index
/// and re-created pruned revisions, losing acknowledged publishes.
#[tokio::test(start_paused = true)]
async fn replicas_never_lose_or_hide_acknowledged_writes() {
    let seeds = std::env::var("WHARF_SIMULATION_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000u64);
    let mut writes = 0;
    for seed in 0..seeds {
        writes += run_interleaving(seed).await;
    }
    assert_eq!(writes, seeds * (REPLICAS * PUBLISHES_PER_REPLICA) as u64);
}

/// The case from the field: replica B reads a package, replica A publishes
/// four more versions (pruning behind it), B must see all five and its own
/// publish must land where a new replica sees it.
#[tokio::test]
async fn a_replica_far_behind_sees_the_newest_index_and_its_write_lands() {
    let storage = Storage::new(Arc::new(InMemory::new()));
    let (a, b) = (Registry::new(storage.clone()), Registry::new(storage.clone()));
    let id = PackageId::new(PackageFormat::Npm, "pkg");
    let body = futures::stream::iter([Ok::<_, BodyError>(Bytes::from_static(b"tarball"))]);
    let digests = a.stage_asset(body, 1 << 20).await.expect("stage").commit().await.expect("commit");
    let publish = |version: &str| NewVersion {
        version: version.to_owned(),
        metadata: serde_json::json!({}),
        assets: vec![NewAsset {
            name: format!("pkg-{version}.tgz"),
            digests: digests.clone(),
            metadata: Default::default(),
        }],
        tags: vec!["latest".into()],
    };
    a.publish_version("main", &id, "pkg", publish("1.0.0")).await.expect("publish");
    assert_eq!(b.package("main", &id).await.expect("read").expect("package").index.versions.len(), 1);
    for version in ["1.1.0", "1.2.0", "1.3.0", "1.4.0"] {
        a.publish_version("main", &id, "pkg", publish(version)).await.expect("publish");
        // Pruning runs in the background; let it finish.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.package("main", &id).await.expect("read").expect("package").index.versions.len(), 5);
    b.publish_version("main", &id, "pkg", publish("2.0.0")).await.expect("publish");
    let fresh = Registry::new(storage);
    let versions: Vec<String> =
        fresh.package("main", &id).await.expect("read").expect("package").index.versions.keys().cloned().collect();
    assert_eq!(versions, ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "2.0.0"]);
}

/// A writer whose revision re-created a pruned number finds out, and its
/// write lands in the real sequence instead.
#[tokio::test]
async fn a_stray_revision_is_detected_and_the_write_retried() {
    let storage = Storage::new(Arc::new(InMemory::new()));
    let registry = Registry::new(storage.clone());
    let id = PackageId::new(PackageFormat::Npm, "pkg");
    let dir = keys::package_index("main", "npm", "pkg");
    for n in 1..=5u64 {
        let recent_writes = (1..=n).map(|w| format!("w{w}")).collect();
        let index = PackageIndex { display_name: "pkg".into(), recent_writes, ..Default::default() };
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("encode"));
        assert!(storage.create_revision(&dir, n, bytes).await.expect("create"));
    }
    storage.prune_revisions(&dir, 4).await;
    // A writer that still believes revision 1 is the newest re-creates 2.
    let stale = PackageIndex { display_name: "pkg".into(), recent_writes: vec!["stale".into()], ..Default::default() };
    assert!(
        storage
            .create_revision(&dir, 2, Bytes::from(serde_json::to_vec(&stale).expect("encode")))
            .await
            .expect("create")
    );
    assert!(matches!(registry.confirm_revision(&dir, 2, "stale").await.expect("confirm"), Confirmed::Stray));
    assert!(matches!(registry.confirm_revision(&dir, 4, "w4").await.expect("confirm"), Confirmed::Superseded));
    assert!(matches!(registry.confirm_revision(&dir, 5, "w5").await.expect("confirm"), Confirmed::Newest));
    // Whoever reads sees revision 5, never the stray.
    assert_eq!(registry.package("main", &id).await.expect("read").expect("package").revision, 5);
}
