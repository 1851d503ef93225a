//! Measures one storage collection of a Domain on a local folder with many blobs:
//! `cargo run --release -p wharf-core --example collect -- 100000` (see `bench/collect.sh`).
//! The Domain gets 1,000 npm packages sharing the blobs as versions, one in four versions
//! Disposed (its blob unreferenced); the collection frees those. Prints the collection's
//! time and the process's peak-RSS rise during it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use wharf_core::collect::CollectOptions;
use wharf_core::{AssetRef, PackageIndex, Registry, VersionEntry, VersionStatus};
use wharf_storage::{Storage, keys};

const PACKAGES: usize = 1000;

fn kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main]
async fn main() {
    let blobs: usize = std::env::args().nth(1).map_or(100_000, |n| n.parse().unwrap());
    let folder = tempfile::tempdir().unwrap();
    let store = object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap();
    let storage = Storage::exclusive(Arc::new(store));

    let started = Instant::now();
    let per_package = blobs.div_ceil(PACKAGES);
    let mut written = 0;
    for package in 0..PACKAGES {
        let mut index = PackageIndex { display_name: format!("pkg-{package}"), ..Default::default() };
        for version in 0..per_package {
            if written == blobs {
                break;
            }
            written += 1;
            let digests = storage.put_small_blob(Bytes::from(format!("blob {package}/{version}"))).await.unwrap();
            let disposed = version % 4 == 0;
            let asset = AssetRef { name: "pkg.tgz".into(), digests, created: Utc::now(), metadata: Default::default() };
            index.versions.insert(
                format!("1.0.{version}"),
                VersionEntry {
                    status: if disposed { VersionStatus::Disposed } else { VersionStatus::Published },
                    created: Utc::now(),
                    metadata: serde_json::json!({}),
                    assets: if disposed { BTreeMap::new() } else { BTreeMap::from([(asset.name.clone(), asset)]) },
                    deprecated: None,
                    withdrawn: false,
                    fetched_from: None,
                    published_by: None,
                },
            );
        }
        let dir = keys::package_index("main", "npm", &format!("pkg-{package}"));
        storage.create_revision(&dir, 1, serde_json::to_vec(&index).unwrap().into()).await.unwrap();
    }
    eprintln!("seeded {written} blobs in {PACKAGES} packages in {:.1} s", started.elapsed().as_secs_f64());

    let registry = Registry::new(storage);
    // Peak RSS counts from here (clear_refs 5 resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = kib("VmHWM:");
    let started = Instant::now();
    let options = CollectOptions { grace: Duration::ZERO, ..Default::default() };
    let report = registry.collect("bench", &options).await.unwrap().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let after = kib("VmHWM:");
    println!(
        "{{\"blobs\": {}, \"packages\": {}, \"freed\": {}, \"seconds\": {seconds:.2}, \"peak_rss_rise_mib\": {:.1}, \"peak_rss_mib\": {:.1}}}",
        report.blobs,
        report.packages,
        report.freed_blobs,
        (after - before) as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
