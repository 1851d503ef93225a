//! The publish pipeline, one for every format: a staged upload is checked
//! (the digests the client declared, the format's own inspection of the
//! archive, storable names, UpstreamPolicy `publish` and the origin rules,
//! a version already reachable through an upstream), committed only when
//! every check passed (a refusal deletes it), written with the core's
//! immutability rules, and its name's origin recorded. A handler extracts
//! the format's request into a [`Publication`], stages the body, and calls
//! [`Packages::accept`] then [`Packages::write`].

use chrono::Utc;
use wharf_storage::{BlobDigests, StagedBlob, SyncBlobReader};

use crate::chain::{Consulted, usable_hop};
use crate::policy;
use crate::{
    CoreError, NewAsset, NewVersion, OriginKind, PackageId, PackageIndex, PackageOrigin, Packages, PublishOutcome,
    VersionStatus, Withdrawals,
};

/// One publish, of a whole version or of one file of it, as every format
/// describes it.
pub struct Publication<'a> {
    pub repo: &'a str,
    pub id: PackageId,
    /// The name as the client published it: shown, and for formats that
    /// compare names loosely (Cargo) the spelling kept.
    pub spelling: &'a str,
    /// The version as the core keys it.
    pub version: String,
    /// The file names it stores under the version.
    pub files: Vec<String>,
    /// Keep the first spelling of the name; another is a conflict (Cargo).
    pub keeps_spelling: bool,
    /// Whether only the first file of a version is admitted by policy, its
    /// later files following it (formats deploying a version file by file
    /// into an open version: Maven, generic).
    pub admitted_by_first_file: bool,
    /// What the client is told when the version exists with other bytes, in
    /// the format's words; the core's own message otherwise.
    pub conflict: Option<String>,
}

impl<'a> Publication<'a> {
    pub fn new(repo: &'a str, id: PackageId, spelling: &'a str, version: impl Into<String>) -> Self {
        Publication {
            repo,
            id,
            spelling,
            version: version.into(),
            files: Vec::new(),
            keeps_spelling: false,
            admitted_by_first_file: false,
            conflict: None,
        }
    }
}

/// How the version is written.
pub enum Placement {
    /// The whole version at once, with its tags. `withdrawals` brings the
    /// statuses of versions the package withdraws itself in line in the
    /// same write (Go's retractions).
    Version { new: NewVersion, withdrawals: Option<&'static Withdrawals> },
    /// One file of a version, which starts in `status` with its first file
    /// (PyPI: Published; Maven: Unfinished until its metadata arrives).
    File { version_metadata: serde_json::Value, status: VersionStatus, asset: NewAsset },
    /// One file of a version open for more until one arrives with `finalize`.
    OpenFile { version_metadata: serde_json::Value, finalize: bool, asset: NewAsset },
}

/// A digest the client declared, and what it is told when the upload's
/// differs (given the upload's own value).
type Expectation = (Digest, String, Box<dyn Fn(&str) -> String + Send + Sync>);

/// The digests a client declared for an upload, checked against what
/// arrived before anything else.
#[derive(Default)]
pub struct Declared(Vec<Expectation>);

/// Which of an upload's digests a declaration is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Size,
    Sha1,
    Sha256,
    Sha512,
    Md5,
}

impl Digest {
    fn of(self, digests: &BlobDigests) -> String {
        match self {
            Digest::Size => digests.size.to_string(),
            Digest::Sha1 => digests.sha1.clone(),
            Digest::Sha256 => digests.sha256.clone(),
            Digest::Sha512 => digests.sha512.clone(),
            Digest::Md5 => digests.md5.clone(),
        }
    }
}

impl Declared {
    /// Expects `digest` to be `value` (hex, compared without case), when the
    /// client declared one; `mismatch` words the refusal from the upload's
    /// own value.
    pub fn expect(
        mut self,
        digest: Digest,
        value: Option<impl Into<String>>,
        mismatch: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        if let Some(value) = value {
            self.0.push((digest, value.into(), Box::new(mismatch)));
        }
        self
    }

    fn check(&self, digests: &BlobDigests) -> Result<(), CoreError> {
        for (digest, declared, mismatch) in &self.0 {
            let actual = digest.of(digests);
            if !declared.trim().eq_ignore_ascii_case(&actual) {
                return Err(CoreError::Invalid(mismatch(&actual)));
            }
        }
        Ok(())
    }
}

impl Packages {
    /// Checks a staged upload for `publication` and commits it: the declared
    /// digests, then `inspect` on the staged bytes (on a blocking thread; it
    /// reads the archive and confirms it names this package and version),
    /// then [`Self::admit`]. Any refusal deletes the staged bytes before it
    /// is returned; nothing that failed a check is kept.
    pub async fn accept<I: Send + 'static>(
        &self,
        publication: &Publication<'_>,
        mut staged: StagedBlob,
        declared: &Declared,
        inspect: impl FnOnce(SyncBlobReader) -> Result<I, CoreError> + Send + 'static,
    ) -> Result<(I, BlobDigests), CoreError> {
        let inspected = self.inspect(&mut staged, declared, inspect).await?;
        let digests = self.commit(publication, staged).await?;
        Ok((inspected, digests))
    }

    /// The first half of [`Self::accept`], for formats whose package says
    /// what it is (a `.nupkg`'s manifest names its id and version): the
    /// declared digests and `inspect`, deleting the staged bytes on a
    /// refusal. [`Self::commit`] finishes, once the inspection told the
    /// handler what the [`Publication`] is.
    pub async fn inspect<I: Send + 'static>(
        &self,
        staged: &mut StagedBlob,
        declared: &Declared,
        inspect: impl FnOnce(SyncBlobReader) -> Result<I, CoreError> + Send + 'static,
    ) -> Result<I, CoreError> {
        let checked = async {
            declared.check(staged.digests())?;
            let reader = staged.reader();
            tokio::task::spawn_blocking(move || inspect(reader))
                .await
                .map_err(|e| CoreError::Crashed(format!("inspecting the upload failed: {e}")))?
        };
        staged.discard_on_err(checked.await).await
    }

    /// The second half of [`Self::accept`]: [`Self::admit`], then the
    /// staged bytes become a blob (deleted on a refusal).
    pub async fn commit(
        &self,
        publication: &Publication<'_>,
        mut staged: StagedBlob,
    ) -> Result<BlobDigests, CoreError> {
        staged.discard_on_err(self.admit(publication).await).await?;
        Ok(staged.commit().await?)
    }

    /// Whether `publication` may be published at all: its names fit in
    /// storage, policy and the name's origin let it be published here, no
    /// upstream already offers the version, and (when it keeps spellings)
    /// the name is spelled as first published.
    pub async fn admit(&self, publication: &Publication<'_>) -> Result<(), CoreError> {
        let Publication { repo, id, spelling, version, .. } = publication;
        crate::check_storable(id, version, publication.files.iter().map(String::as_str))?;
        let decided_before = publication.admitted_by_first_file
            && self.registry.package(repo, id).await?.is_some_and(|p| p.index.versions.contains_key(version.as_str()));
        if !decided_before {
            self.check_publish(repo, id, spelling, version).await.inspect_err(|error| {
                if matches!(error, CoreError::Forbidden(_) | CoreError::Conflict(_)) {
                    let refused = crate::activity::Action::Refused { reason: error.to_string() };
                    self.registry.report(refused, repo, id, Some(version));
                }
            })?;
        }
        if publication.keeps_spelling {
            self.registry.claim_spelling(repo, id, spelling).await?;
        }
        Ok(())
    }

    /// Writes what [`Self::accept`] committed and, once a version is
    /// published here first, records the name's origin as direct.
    pub async fn write(
        &self,
        publication: &Publication<'_>,
        placement: Placement,
    ) -> Result<PublishOutcome, CoreError> {
        let Publication { repo, id, spelling, version, .. } = publication;
        let registry = &self.registry;
        let placement_files: Vec<String> = match &placement {
            Placement::Version { new, .. } => new.assets.iter().map(|a| a.name.clone()).collect(),
            Placement::File { asset, .. } | Placement::OpenFile { asset, .. } => vec![asset.name.clone()],
        };
        let (written, published) = match placement {
            Placement::Version { new, withdrawals: None } => {
                (registry.publish_version(repo, id, spelling, new).await, true)
            }
            Placement::Version { new, withdrawals: Some(withdrawals) } => {
                (registry.publish_version_withdrawing(repo, id, spelling, new, withdrawals).await, true)
            }
            Placement::File { version_metadata, status, asset } => {
                let written = registry.add_asset(repo, id, spelling, version, version_metadata, status, asset).await;
                (written, status == VersionStatus::Published)
            }
            Placement::OpenFile { version_metadata, finalize, asset } => {
                let written = registry
                    .add_asset_to_open_version(repo, id, spelling, version, version_metadata, finalize, asset)
                    .await;
                (written, finalize)
            }
        };
        let outcome = written.map_err(|error| match (error, &publication.conflict) {
            (CoreError::Conflict(_), Some(wording)) => CoreError::Conflict(wording.clone()),
            (other, _) => other,
        })?;
        if published && outcome == PublishOutcome::Created {
            self.record_publish(repo, id, version).await?;
            let published = crate::activity::Action::Published { files: placement_files };
            self.registry.report(published, repo, id, Some(version));
        }
        Ok(outcome)
    }

    /// Publishes the versions of a package deployed file by file once the
    /// client says they are complete (Maven's metadata upload), each with
    /// `series` deciding which older builds it replaces, and records the
    /// name's origin.
    pub async fn finish<R: Ord>(
        &self,
        repo: &str,
        id: &PackageId,
        versions: &[String],
        series: impl Fn(&str) -> Option<(String, R)> + Copy,
    ) -> Result<(), CoreError> {
        let Some(snapshot) = self.registry.package(repo, id).await? else { return Ok(()) };
        for version in versions {
            if snapshot.index.versions.get(version).is_some_and(|e| e.status == VersionStatus::Unfinished) {
                self.registry.finish_version(repo, id, version, series).await?;
                self.record_publish(repo, id, version).await?;
                let files = snapshot.index.versions.get(version).map(|e| e.assets.keys().cloned().collect());
                let published = crate::activity::Action::Published { files: files.unwrap_or_default() };
                self.registry.report(published, repo, id, Some(version));
            }
        }
        Ok(())
    }

    /// Refuses a direct publish the origin controls forbid, and a version
    /// already reachable through an upstream unless the package's upstream
    /// is blocked.
    pub(crate) async fn check_publish(
        &self,
        repo: &str,
        id: &PackageId,
        spelling: &str,
        version: &str,
    ) -> Result<(), CoreError> {
        let effective = policy::evaluate(&self.config, repo, id);
        let recorded = self.registry.package_origin(id).await?;
        let verdict = policy::may_publish(&effective, recorded.as_ref(), repo);
        if !verdict.allowed {
            return Err(CoreError::Forbidden(format!("{} may not be published here: {}", id.name, verdict.reason)));
        }
        let chain = policy::resolution_order(&self.config, repo);
        for upstream in chain.repositories.iter().skip(1).filter(|r| effective.internal_allowed(r)) {
            if let Some(snapshot) = self.registry.package(upstream, id).await?
                && snapshot.index.versions.get(version).is_some_and(|e| e.status != VersionStatus::Disposed)
            {
                return Err(CoreError::Conflict(format!(
                    "{} {version} is already reachable through upstream repository {upstream}",
                    id.name
                )));
            }
        }
        if let Some(hop) = usable_hop(&chain, id, &effective, recorded.as_ref()) {
            // An unreachable upstream cannot say whether it has the version;
            // the publish goes ahead rather than fail on someone else's outage.
            let consulted = Consulted::default();
            let upstream = self.external_index(hop, id, spelling, &effective, &consulted).await.ok().flatten();
            if upstream.is_some_and(|index: PackageIndex| index.versions.contains_key(version)) {
                return Err(CoreError::Conflict(format!(
                    "{} {version} is already reachable through external connection {}; to publish it here, block that package's externalUpstream with an UpstreamPolicy rule",
                    id.name, hop.connection.name
                )));
            }
        }
        Ok(())
    }

    /// Records that the name's first version in the Domain was published
    /// directly, unless an earlier version already decided its origin.
    pub(crate) async fn record_publish(&self, repo: &str, id: &PackageId, version: &str) -> Result<(), CoreError> {
        let origin = PackageOrigin {
            kind: OriginKind::Direct,
            repository: repo.to_owned(),
            connection: None,
            version: version.to_owned(),
            recorded: Utc::now(),
        };
        self.registry.claim_origin(id, origin).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use serde_json::json;
    use wharf_api::{DomainConfig, PackageFormat};
    use wharf_storage::Storage;
    use wharf_upstream::UpstreamClient;

    use super::*;
    use crate::{Adapters, Registry};

    const CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec: {storage: {memory: {}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: app}
spec:
  domainRef: {name: acme}
  upstreams: [{name: internal}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: internal}
spec:
  domainRef: {name: acme}
  allowedDownstreams: [{namespace: default}]
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: frozen}
spec:
  targetRefs: [{kind: Domain, name: acme}]
  rules:
    - patterns: ["/generic/acme/frozen"]
      publish: Block
"#;

    fn packages() -> (Packages, Arc<InMemory>) {
        let store = Arc::new(InMemory::new());
        let registry = Arc::new(Registry::new(Storage::new(store.clone())));
        let config = Arc::new(DomainConfig::from_yaml_str("test.yaml", CONFIG).unwrap());
        let upstream = Arc::new(UpstreamClient::new(Default::default()));
        (Packages::new(config, registry, upstream, Adapters::default(), 1 << 20), store)
    }

    async fn keys(store: &InMemory) -> Vec<String> {
        store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap()
    }

    async fn staged(packages: &Packages, bytes: &'static [u8]) -> StagedBlob {
        let body = futures::stream::iter([Ok(Bytes::from_static(bytes))]);
        packages.registry.stage_asset(body, 1 << 20).await.unwrap()
    }

    fn file(repo: &'static str, name: &'static str, version: &str) -> Publication<'static> {
        let mut publication = Publication::new(repo, PackageId::new(PackageFormat::Generic, name), name, version);
        publication.files.push("tool.bin".into());
        publication.admitted_by_first_file = true;
        publication
    }

    fn finished(asset: NewAsset) -> Placement {
        Placement::OpenFile { version_metadata: json!({}), finalize: true, asset }
    }

    fn asset(name: &str, digests: BlobDigests) -> NewAsset {
        NewAsset { name: name.into(), digests, metadata: json!({}) }
    }

    #[tokio::test]
    async fn a_refused_upload_leaves_nothing_behind() {
        let (packages, store) = packages();
        let publication = file("app", "acme/tool", "1.0.0");
        let declared = Declared::default().expect(Digest::Sha256, Some("00"), |actual| format!("hashes to {actual}"));
        let refused = packages.accept(&publication, staged(&packages, b"bytes").await, &declared, |_| Ok(())).await;
        assert!(matches!(refused, Err(CoreError::Invalid(ref m)) if m.starts_with("hashes to ")), "{refused:?}");

        let inspect = |_| Err::<(), _>(CoreError::Invalid("not an archive".into()));
        let nothing = Declared::default();
        let refused = packages.accept(&publication, staged(&packages, b"bytes").await, &nothing, inspect).await;
        assert!(matches!(refused, Err(CoreError::Invalid(_))));

        let frozen = file("app", "acme/frozen", "1.0.0");
        let refused = packages.accept(&frozen, staged(&packages, b"bytes").await, &nothing, |_| Ok(())).await;
        assert!(matches!(refused, Err(CoreError::Forbidden(ref m)) if m.contains("acme/frozen")), "{refused:?}");
        assert_eq!(keys(&store).await, Vec::<String>::new(), "no staged object, blob or record is left");
    }

    #[tokio::test]
    async fn an_accepted_upload_is_written_once_and_its_origin_recorded() {
        let (packages, store) = packages();
        let publication = file("app", "acme/tool", "1.0.0");
        let declared = Declared::default().expect(Digest::Size, Some("5"), |_| "size".into());
        let ((), digests) =
            packages.accept(&publication, staged(&packages, b"bytes").await, &declared, |_| Ok(())).await.unwrap();
        let written = packages.write(&publication, finished(asset("tool.bin", digests.clone()))).await.unwrap();
        assert_eq!(written, PublishOutcome::Created);
        assert!(keys(&store).await.iter().all(|key| !key.starts_with("uploads/")), "staging is cleared");
        let origin = packages.registry.package_origin(&publication.id).await.unwrap().unwrap();
        assert_eq!((origin.kind, origin.repository.as_str()), (OriginKind::Direct, "app"));

        let again = packages.write(&publication, finished(asset("tool.bin", digests))).await.unwrap();
        assert_eq!(again, PublishOutcome::AlreadyPublished);
    }

    #[tokio::test]
    async fn a_conflict_is_told_in_the_format_s_words() {
        let (packages, _) = packages();
        let mut publication = Publication::new("app", PackageId::new(PackageFormat::Npm, "demo"), "demo", "1.0.0");
        publication.conflict = Some("cannot publish over 1.0.0".into());
        for (bytes, expected) in [(&b"one"[..], true), (&b"two"[..], false)] {
            let digests = packages.registry.store_small_asset(Bytes::copy_from_slice(bytes)).await.unwrap();
            let new = NewVersion {
                version: "1.0.0".into(),
                metadata: json!({}),
                assets: vec![asset("demo.tgz", digests)],
                tags: vec![],
            };
            let written = packages.write(&publication, Placement::Version { new, withdrawals: None }).await;
            match written {
                Ok(outcome) => assert!(expected && outcome == PublishOutcome::Created),
                Err(error) => assert!(!expected && error.to_string() == "cannot publish over 1.0.0", "{error}"),
            }
        }
    }

    #[tokio::test]
    async fn the_first_file_of_an_open_version_admits_the_rest() {
        let (packages, _) = packages();
        let first = file("app", "acme/tool", "1.0.0");
        let ((), digests) =
            packages.accept(&first, staged(&packages, b"a").await, &Declared::default(), |_| Ok(())).await.unwrap();
        let open = Placement::OpenFile { version_metadata: json!({}), finalize: false, asset: asset("a", digests) };
        packages.write(&first, open).await.unwrap();
        // Meanwhile the upstream gets the same version.
        let upstream = file("internal", "acme/tool", "1.0.0");
        let ((), digests) =
            packages.accept(&upstream, staged(&packages, b"u").await, &Declared::default(), |_| Ok(())).await.unwrap();
        packages.write(&upstream, finished(asset("u", digests))).await.unwrap();

        let mut later = file("app", "acme/tool", "1.0.0");
        later.files = vec!["b".into()];
        let nothing = Declared::default();
        let accepted = packages.accept(&later, staged(&packages, b"b").await, &nothing, |_| Ok(())).await;
        assert!(accepted.is_ok(), "the version was admitted by its first file: {accepted:?}");

        let mut whole = later;
        whole.admitted_by_first_file = false;
        let refused = packages.accept(&whole, staged(&packages, b"b").await, &nothing, |_| Ok(())).await;
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("already reachable through upstream repository internal"), "{message}");
    }
}
