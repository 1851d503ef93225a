//! The checked-in `crds/` folder matches the resource types: fails when stale, rewrites the
//! files when `WHARF_UPDATE_CRDS=1`. Reads and writes files under the repository root.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[test]
fn checked_in_crds_match_the_types() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("crds");
    let update = std::env::var("WHARF_UPDATE_CRDS").is_ok_and(|value| value == "1");
    let files = wharf_api::crd_files().unwrap();
    let mut stale = Vec::new();
    for (name, yaml) in &files {
        let path = folder.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != *yaml {
            if update {
                std::fs::create_dir_all(&folder).unwrap();
                std::fs::write(&path, yaml).unwrap();
            } else {
                stale.push(name.clone());
            }
        }
    }
    let expected: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let mut unexpected = Vec::new();
    for entry in std::fs::read_dir(&folder).into_iter().flatten() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !expected.contains(&name.as_str()) {
            if update {
                std::fs::remove_file(folder.join(&name)).unwrap();
            } else {
                unexpected.push(name);
            }
        }
    }
    assert!(
        stale.is_empty() && unexpected.is_empty(),
        "crds/ is out of date (stale: {stale:?}, no longer generated: {unexpected:?}); \
         regenerate with `WHARF_UPDATE_CRDS=1 cargo test -p wharf-api --test crds_checked_in`"
    );
}
