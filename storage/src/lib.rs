//! Object storage for one Domain: content-addressed blobs, create-once
//! records and revisioned documents, on any `object_store` backend. Does I/O.
//!
//! Every key the registry writes is built here ([`keys`]), so the layout is
//! visible in one place:
//!
//! ```text
//! blobs/sha256/ab/abcdef…                                   asset bytes, stored once per Domain
//! uploads/{uuid}                                            staging area for streaming uploads
//! repositories/{repo}/{format}/{name}/index/{rev}.json      package index revisions (compare-and-swap)
//! repositories/{repo}/{format}/{name}/spelling.json        create-once spelling of the name (Cargo)
//! repositories/{repo}/{format}/{name}/versions/{v}/record.json          create-once version record
//! repositories/{repo}/{format}/{name}/versions/{v}/assets/{file}.json   create-once asset record
//! keys/token-signing                                        generated token signing key
//! encryption/canary, encryption/rewrapped/…                 with encryption (see [`encryption`])
//! probes/conditional-write/{uuid}                           start-up check that create-once holds (deleted)
//! ```
//!
//! Only small records use conditional writes: multipart uploads cannot be
//! conditional, and `LocalFileSystem` has no `PutMode::Update`, so large
//! bytes go under content-addressed keys (an overwrite is harmless) and
//! compare-and-swap is built from `PutMode::Create` of numbered revisions.

pub mod backends;
pub mod encryption;
pub mod secrets;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use md5::Md5;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::encryption::EncryptedStore;

/// Part size for multipart uploads: S3's minimum, and small enough that a
/// streaming upload holds at most a few parts in memory.
const UPLOAD_PART_SIZE: usize = 5 * 1024 * 1024;
/// How many parts of one upload may be in flight at once.
const UPLOAD_CONCURRENCY: usize = 2;
/// Read size when streaming a blob from a local file.
const FILE_READ_CHUNK: usize = 256 * 1024;
/// How long the readiness check waits for storage: a probe answered later
/// than this is as good as none.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// An error from a body stream handed to [`Storage::stage_blob`].
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("failed to {action} {key}")]
    Store {
        action: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("failed to read the request body")]
    Body(#[source] BodyError),
    #[error("failed to decode stored document {key}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to read stored blob")]
    Io(#[source] std::io::Error),
    #[error(
        "storage ignored a conditional write: a second create-only write of {key} succeeded. Wharf needs \
         create-if-absent writes (S3: PUT with If-None-Match: *) so that of concurrent publishers exactly one \
         wins; use a store that supports them"
    )]
    ConditionalWritesIgnored { key: String },
    #[error("storage did not answer within {seconds} s")]
    Unresponsive { seconds: u64 },
    #[error(
        "cannot store {key}: a part of its key is {bytes} bytes long once percent-encoded, more than the \
         {limit} it may have; use shorter names"
    )]
    KeyTooLong { key: String, bytes: usize, limit: usize },
    #[error("the encryption keys cannot be used: {why}")]
    Encryption { why: String },
    #[error(
        "storage holds data the registry encrypted (it has {}), but the Domain names no encryption key: set \
         spec.encryption.keySecretRef to the Secret with its keys",
        encryption::canary_key()
    )]
    EncryptedWithoutKeys,
    #[error("failed to restrict {path} to its owner (mode 0600)")]
    Permissions {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    fn store(action: &'static str, key: &Path, source: object_store::Error) -> Self {
        StorageError::Store { action, key: key.to_string(), source }
    }

    /// Refuses a key with a part too long to store (see
    /// [`keys::oversized_part`]) before anything is written under it.
    fn check_key(key: &Path) -> Result<(), Self> {
        match keys::oversized_part(key) {
            None => Ok(()),
            Some((bytes, limit)) => {
                let full = key.as_ref();
                let shown = match full.char_indices().nth(160) {
                    Some((cut, _)) => format!("{}…", &full[..cut]),
                    None => full.to_owned(),
                };
                Err(StorageError::KeyTooLong { key: shown, bytes, limit })
            }
        }
    }

    /// Whether storage could not be reached or failed in a way that may pass
    /// (connection refused, timeout, a 5xx), as opposed to an answer that
    /// will not change by waiting: access denied, no such bucket, conditional
    /// writes ignored.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StorageError::Store { source, .. } => {
                matches!(source, object_store::Error::Generic { .. } | object_store::Error::JoinError { .. })
            }
            StorageError::Unresponsive { .. } => true,
            _ => false,
        }
    }

    /// Whether storage answered "not found" (a write into a bucket that does not exist).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Store { source: object_store::Error::NotFound { .. }, .. })
    }

    /// Whether storage refused the credentials (HTTP 401 or 403).
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self,
            StorageError::Store {
                source: object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. },
                ..
            }
        )
    }
}

/// The digests of a blob, computed while it streamed in.
/// (`Default`: no digests, for a file known only by its upstream URL.)
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobDigests {
    /// Hex SHA-256: the blob's address.
    pub sha256: String,
    /// Hex SHA-512 (npm's `integrity`, Maven's `.sha512`).
    pub sha512: String,
    /// Hex SHA-1 (npm's `shasum`, Maven's `.sha1`).
    pub sha1: String,
    /// Hex MD5 (PyPI's `md5_digest`, Maven's `.md5`).
    pub md5: String,
    pub size: u64,
}

/// A blob opened for streaming to a client.
pub struct BlobBody {
    /// Size of the whole blob.
    pub size: u64,
    /// The byte range `stream` yields.
    pub range: Range<u64>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Outcome of a create-once write.
pub enum Created<T> {
    Created,
    /// Somebody else created it first; this is what they wrote.
    AlreadyExists(T),
}

/// Blobs up to this size are kept in memory once read (poms, `.info`
/// files, PEP 658 metadata): their bytes never change, so the cache needs
/// no invalidation.
const SMALL_BLOB_MAX: u64 = 64 * 1024;
/// Attempts to read the newest revision while writers keep replacing it.
const MAX_REVISION_READS: u32 = 16;
/// Memory the small-blob cache may hold before it starts over.
const SMALL_BLOB_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The storage of one Domain.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Whether this process is the only writer (a local folder, memory):
    /// then what it wrote last is what storage holds, and readers need not
    /// ask storage whether another replica wrote since.
    exclusive: bool,
    /// Set once this store was seen to refuse a second create of one key;
    /// until then a shared store is not ready to serve.
    conditional_writes_verified: Arc<AtomicBool>,
    small_blobs: Arc<Mutex<SmallBlobs>>,
    /// The folder a local filesystem store keeps its objects in, so the
    /// files holding secrets can be restricted to their owner.
    local_folder: Option<Arc<std::path::PathBuf>>,
    /// Set when everything is encrypted by the registry: `store` is this.
    encryption: Option<Arc<EncryptedStore>>,
    /// Set once a store without encryption was seen to hold no encrypted data.
    plaintext_verified: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct SmallBlobs {
    bytes: usize,
    blobs: HashMap<String, Bytes>,
}

impl SmallBlobs {
    fn forget(&mut self, sha256: &str) {
        if let Some(bytes) = self.blobs.remove(sha256) {
            self.bytes -= bytes.len();
        }
    }
}

/// An object as a listing or a head shows it.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub key: Path,
    /// Bytes of content (without encryption's overhead).
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(meta: object_store::ObjectMeta) -> Self {
        ObjectInfo { key: meta.location, size: meta.size, modified: meta.last_modified }
    }
}

/// Who holds a lease, until when.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// A lease taken by [`Storage::acquire_lease`]; give it back with [`Lease::release`].
#[derive(Debug)]
pub struct Lease {
    storage: Storage,
    key: Path,
    holder: String,
}

impl Lease {
    /// Gives the lease back, if it is still this holder's.
    pub async fn release(self) {
        if let Ok(Some(record)) = self.storage.read_json::<LeaseRecord>(&self.key).await
            && record.holder == self.holder
        {
            let _ = self.storage.delete(&self.key).await;
        }
    }
}

pub mod keys {
    //! The storage layout: every object key the registry uses.
    use object_store::path::{Path, PathPart};

    fn path<'a>(parts: impl IntoIterator<Item = &'a str>) -> Path {
        Path::from_iter(parts.into_iter().map(PathPart::from))
    }

    /// Longest part of a key, in bytes as stored: a file name on common
    /// file systems (object stores allow more, and every backend is held
    /// to the strictest). Parts are percent-encoded, so `/`, `~`, `%` and
    /// every non-ASCII byte count three times.
    pub const MAX_PART_BYTES: usize = 255;
    /// Longest last part of a key: a local folder writes a file as
    /// `{file}#{n}` first, then renames it.
    pub const MAX_FILE_PART_BYTES: usize = MAX_PART_BYTES - "#1234567".len();
    /// Longest package or file name: both are also stored as `{name}.json`.
    pub const MAX_NAME_BYTES: usize = MAX_FILE_PART_BYTES - ".json".len();

    /// How many bytes `part` takes as a key part.
    pub fn encoded_len(part: &str) -> usize {
        PathPart::from(part).as_ref().len()
    }

    /// The length of a part of `key` too long to store, with the limit it
    /// passes ([`MAX_PART_BYTES`], or [`MAX_FILE_PART_BYTES`] for the last).
    pub fn oversized_part(key: &Path) -> Option<(usize, usize)> {
        let parts: Vec<usize> = key.parts().map(|part| part.as_ref().len()).collect();
        let last = parts.len().saturating_sub(1);
        parts.into_iter().enumerate().find_map(|(i, bytes)| {
            let limit = if i == last { MAX_FILE_PART_BYTES } else { MAX_PART_BYTES };
            (bytes > limit).then_some((bytes, limit))
        })
    }

    pub fn blob(sha256: &str) -> Path {
        let shard = sha256.get(..2).unwrap_or("00");
        path(["blobs", "sha256", shard, sha256])
    }

    pub fn upload(id: &str) -> Path {
        path(["uploads", id])
    }

    pub fn packages(repo: &str, format: &str) -> Path {
        path(["repositories", repo, format])
    }

    pub fn package_index(repo: &str, format: &str, name: &str) -> Path {
        path(["repositories", repo, format, name, "index"])
    }

    pub fn package_index_revision(index: &Path, revision: u64) -> Path {
        index.clone().join(format!("{revision:020}.json"))
    }

    pub fn package_spelling(repo: &str, format: &str, name: &str) -> Path {
        path(["repositories", repo, format, name, "spelling.json"])
    }

    /// The folder of a package's version records.
    pub fn package_versions(repo: &str, format: &str, name: &str) -> Path {
        path(["repositories", repo, format, name, "versions"])
    }

    pub fn version_record(repo: &str, format: &str, name: &str, version: &str) -> Path {
        path(["repositories", repo, format, name, "versions", version, "record.json"])
    }

    pub fn asset_record(repo: &str, format: &str, name: &str, version: &str, asset: &str) -> Path {
        let file = format!("{asset}.json");
        path(["repositories", repo, format, name, "versions", version, "assets", &file])
    }

    /// The per-Domain first-version origin of a package name.
    pub fn package_origin(format: &str, name: &str) -> Path {
        let file = format!("{name}.json");
        path(["origins", format, &file])
    }

    /// The last good copy of an upstream metadata document, per external
    /// connection and request URL (`url_sha256`: the URL's SHA-256, hex).
    pub fn upstream_document(connection: &str, url_sha256: &str) -> Path {
        let file = format!("{url_sha256}.json");
        path(["upstream", connection, &file])
    }

    pub fn token_signing_key() -> Path {
        path(["keys", "token-signing"])
    }

    /// The record of an issued registry token (`name` carries its expiry
    /// and id), and the folder of them.
    pub fn issued_token(name: &str) -> Path {
        path(["tokens", "issued", name])
    }

    pub fn issued_tokens() -> Path {
        path(["tokens", "issued"])
    }

    /// A revoked token (`name` carries its expiry and id), and the folder.
    pub fn revoked_token(name: &str) -> Path {
        path(["tokens", "revoked", name])
    }

    pub fn revoked_tokens() -> Path {
        path(["tokens", "revoked"])
    }

    /// A revocation of every token of a subject issued until a time
    /// (`name` carries the time and the subject's digest), and the folder.
    pub fn revoked_subject(name: &str) -> Path {
        path(["tokens", "revoked-subjects", name])
    }

    pub fn revoked_subjects() -> Path {
        path(["tokens", "revoked-subjects"])
    }

    /// Everything a Repository holds (its packages of every format).
    pub fn repository(repo: &str) -> Path {
        path(["repositories", repo])
    }

    /// Every day's record of downloaded versions.
    pub fn download_days() -> Path {
        path(["downloads", "days"])
    }

    /// What one writer (a registry process) saw downloaded on `day` (`YYYY-MM-DD`).
    pub fn download_shard(day: &str, writer: &str) -> Path {
        let file = format!("{writer}.json");
        path(["downloads", "days", day, &file])
    }

    /// Every day's audit events.
    pub fn audit_days() -> Path {
        path(["audit"])
    }

    /// The audit events of `day` (`YYYY-MM-DD`).
    pub fn audit_day(day: &str) -> Path {
        path(["audit", day])
    }

    /// The audit events one writer (a registry process) recorded in one flush.
    pub fn audit_events(day: &str, name: &str) -> Path {
        let file = format!("{name}.json");
        path(["audit", day, &file])
    }

    /// When the Domain's downloads began to be recorded.
    pub fn downloads_since() -> Path {
        path(["downloads", "since.json"])
    }

    /// A lease one process holds at a time (`gc`: the storage collector).
    pub fn lease(name: &str) -> Path {
        let file = format!("{name}.json");
        path(["leases", &file])
    }

    /// Every blob, and every upload being staged.
    pub fn blobs() -> Path {
        path(["blobs"])
    }

    pub fn uploads() -> Path {
        path(["uploads"])
    }

    /// Every package index and record, and the kept upstream documents.
    pub fn repositories() -> Path {
        path(["repositories"])
    }

    pub fn upstream_documents() -> Path {
        path(["upstream"])
    }

    pub fn conditional_write_probe(id: &str) -> Path {
        path(["probes", "conditional-write", id])
    }
}

impl Storage {
    /// Storage other registry replicas may write to as well (object storage).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Storage {
            store,
            exclusive: false,
            conditional_writes_verified: Arc::new(AtomicBool::new(false)),
            small_blobs: Default::default(),
            local_folder: None,
            encryption: None,
            plaintext_verified: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Encrypts everything from now on with the store `encrypt` builds around this one
    /// (see [`encryption`]).
    pub fn with_encryption(self, encrypt: impl FnOnce(Arc<dyn ObjectStore>) -> EncryptedStore) -> Self {
        let encrypted = Arc::new(encrypt(self.store.clone()));
        Storage { store: encrypted.clone(), encryption: Some(encrypted), ..self }
    }

    /// The encryption layer, when the registry encrypts.
    pub fn encryption(&self) -> Option<&Arc<EncryptedStore>> {
        self.encryption.as_ref()
    }

    /// Checks at start-up that the data matches the configuration: with encryption, reads
    /// the keys and checks them against the data (failures leave the store unready, see
    /// [`Self::check`]); without, refuses a store the registry encrypted before.
    pub async fn check_encryption(&self) -> Result<(), StorageError> {
        match &self.encryption {
            Some(encryption) => {
                encryption.refresh().await;
                Ok(())
            }
            None => {
                let canary = encryption::canary_key();
                match self.store.head(&canary).await {
                    Ok(_) => Err(StorageError::EncryptedWithoutKeys),
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(StorageError::store("look up", &canary, e)),
                }
            }
        }
    }

    /// Says that the store keeps its objects as files under `folder`.
    pub fn with_local_folder(self, folder: impl Into<std::path::PathBuf>) -> Self {
        Storage { local_folder: Some(Arc::new(folder.into())), ..self }
    }

    /// Storage only this process writes to (a local folder, memory).
    pub fn exclusive(store: Arc<dyn ObjectStore>) -> Self {
        Storage { exclusive: true, ..Self::new(store) }
    }

    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Streams `body` into a staging object under `uploads/`, hashing as it
    /// goes, and refuses it once it passes `limit` bytes. Nothing is
    /// buffered beyond a couple of upload parts. The bytes become a blob
    /// only through [`StagedBlob::commit`], after the caller's checks;
    /// anything else deletes them.
    pub async fn stage_blob<S>(&self, body: S, limit: u64) -> Result<StagedBlob, StorageError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send,
    {
        let staging = keys::upload(&uuid::Uuid::new_v4().to_string());
        let upload =
            self.store.put_multipart(&staging).await.map_err(|e| StorageError::store("start upload", &staging, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_SIZE);
        let mut hashes = Hashes::default();
        let mut body = std::pin::pin!(body);
        let streamed: Result<(), StorageError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                hashes.update(&chunk);
                if hashes.size > limit {
                    return Err(StorageError::TooLarge { limit });
                }
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(|e| StorageError::store("upload part of", &staging, e))?;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        if let Err(error) = streamed {
            // Aborting removes the parts written so far; nothing was
            // completed under the staging key.
            let _ = writer.abort().await;
            return Err(error);
        }
        if let Err(e) = writer.finish().await {
            // A failed completion may still have left the object behind.
            let _ = self.store.delete(&staging).await;
            return Err(StorageError::store("finish upload", &staging, e));
        }
        Ok(StagedBlob { storage: self.clone(), key: staging, digests: hashes.finish(), pending: true })
    }

    /// Stores small bytes (a wheel's METADATA, say) as a blob.
    pub async fn put_small_blob(&self, bytes: Bytes) -> Result<BlobDigests, StorageError> {
        let mut hashes = Hashes::default();
        hashes.update(&bytes);
        let digests = hashes.finish();
        let target = keys::blob(&digests.sha256);
        self.store
            .put(&target, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| StorageError::store("write", &target, e))?;
        Ok(digests)
    }

    /// Opens a blob of `size` bytes for streaming, optionally a byte range
    /// of it. `None` when the Domain has no such blob.
    pub async fn open_blob(
        &self,
        sha256: &str,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobBody>, StorageError> {
        if (1..=SMALL_BLOB_MAX).contains(&size) {
            return self.open_small_blob(sha256, range).await;
        }
        let key = keys::blob(sha256);
        let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = match self.store.get_opts(&key, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StorageError::store("read", &key, e)),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let stream = match result.payload {
            // object_store reads local files 8 KiB per blocking task; larger
            // reads cut the per-request overhead of serving tarballs.
            GetResultPayload::File(file, _) => file_stream(file, range.clone()).await?,
            GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
        };
        Ok(Some(BlobBody { size, range, stream }))
    }

    async fn open_small_blob(&self, sha256: &str, range: Option<Range<u64>>) -> Result<Option<BlobBody>, StorageError> {
        let cached = self.small_blobs.lock().unwrap_or_else(|e| e.into_inner()).blobs.get(sha256).cloned();
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let Some(bytes) = self.read_bytes(&keys::blob(sha256)).await? else { return Ok(None) };
                let mut cache = self.small_blobs.lock().unwrap_or_else(|e| e.into_inner());
                if cache.bytes + bytes.len() > SMALL_BLOB_CACHE_BYTES {
                    *cache = SmallBlobs::default();
                }
                cache.bytes += bytes.len();
                cache.blobs.insert(sha256.to_owned(), bytes.clone());
                bytes
            }
        };
        let size = bytes.len() as u64;
        let range = range.unwrap_or(0..size);
        let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(bytes.len());
        let end = usize::try_from(range.end).unwrap_or(usize::MAX).min(bytes.len()).max(start);
        let chunk = bytes.slice(start..end);
        Ok(Some(BlobBody { size, range, stream: futures::stream::once(async move { Ok(chunk) }).boxed() }))
    }

    /// Reads a byte range of an object into memory (for small reads such as
    /// a zip's central directory).
    async fn read_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.store.get_range(key, range).await.map_err(|e| StorageError::store("read range of", key, e))
    }

    /// Writes `value` at `key` unless something is there already, in which
    /// case the existing value is returned. Exactly one of any number of
    /// concurrent writers gets [`Created::Created`].
    pub async fn create_json<T>(&self, key: &Path, value: &T) -> Result<Created<T>, StorageError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        StorageError::check_key(key)?;
        let bytes =
            serde_json::to_vec(value).map_err(|source| StorageError::Decode { key: key.to_string(), source })?;
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(key, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.read_json(key).await?;
                // A record is never deleted while its package lives, so it
                // is there to read; if not, report the lost race plainly.
                existing.map(Created::AlreadyExists).ok_or_else(|| StorageError::Store {
                    action: "read back",
                    key: key.to_string(),
                    source: object_store::Error::NotFound {
                        path: key.to_string(),
                        source: "record vanished after a conflicting create".into(),
                    },
                })
            }
            Err(e) => Err(StorageError::store("create", key, e)),
        }
    }

    /// Writes `value` at `key`, replacing what is there (a record only
    /// one writer's last word matters for, such as a cached copy).
    pub async fn put_json<T: serde::Serialize>(&self, key: &Path, value: &T) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(value).map_err(|source| StorageError::Decode { key: key.to_string(), source })?;
        self.store.put(key, PutPayload::from(bytes)).await.map_err(|e| StorageError::store("write", key, e))?;
        Ok(())
    }

    /// A whole blob in memory (a small one, such as a kept metadata
    /// document); `None` when the Domain has no such blob.
    pub async fn read_blob(&self, sha256: &str) -> Result<Option<Bytes>, StorageError> {
        self.read_bytes(&keys::blob(sha256)).await
    }

    pub async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &Path) -> Result<Option<T>, StorageError> {
        match self.read_bytes(key).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StorageError::Decode { key: key.to_string(), source }),
            None => Ok(None),
        }
    }

    async fn read_bytes(&self, key: &Path) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(key).await {
            Ok(result) => result.bytes().await.map(Some).map_err(|e| StorageError::store("read", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("read", key, e)),
        }
    }

    /// The newest revision under a revisioned document's folder and its
    /// bytes (see [`Self::read_newest_revision`]).
    pub async fn latest_revision(&self, dir: &Path) -> Result<Option<(u64, Bytes)>, StorageError> {
        self.read_newest_revision(dir, None).await
    }

    /// Reads the newest revision, starting from `candidate` (a revision a
    /// listing just named) or from a listing. Pruning deletes old revisions
    /// and a writer that lost track may re-create a pruned number, so what
    /// key N holds by the time it is read may be such a stray. Pruning N
    /// takes a revision N+2, and the newest is never pruned, so a stray at N
    /// always has N+2 or newer beside it: revision N counts when, after it
    /// was read, nothing past N+1 is listed (N+1 is a write that began after
    /// the listing that named N); otherwise the newest listed is read instead.
    pub async fn read_newest_revision(
        &self,
        dir: &Path,
        candidate: Option<u64>,
    ) -> Result<Option<(u64, Bytes)>, StorageError> {
        let mut candidate = candidate;
        for _ in 0..MAX_REVISION_READS {
            let revision = match candidate {
                Some(revision) => revision,
                None => match self.newest_revision(dir, None).await? {
                    Some(revision) => revision,
                    None => return Ok(None),
                },
            };
            // Pruned since it was listed: list again, a newer one exists.
            let Some(bytes) = self.read_bytes(&keys::package_index_revision(dir, revision)).await? else {
                candidate = None;
                continue;
            };
            match self.newest_revision(dir, Some(revision + 1)).await? {
                None => return Ok(Some((revision, bytes))),
                newer => candidate = newer,
            }
        }
        Err(StorageError::Store {
            action: "read the newest revision of",
            key: dir.to_string(),
            source: object_store::Error::Generic {
                store: "wharf",
                source: format!("revisions kept being replaced while {MAX_REVISION_READS} reads tried").into(),
            },
        })
    }

    /// The number of the newest revision under `dir`; with `after`, only
    /// revisions newer than that one count. Revision keys are zero-padded,
    /// so they sort as numbers and an object store lists only the newer
    /// ones (S3's `start-after`).
    pub async fn newest_revision(&self, dir: &Path, after: Option<u64>) -> Result<Option<u64>, StorageError> {
        let listing: Vec<_> = match after {
            Some(revision) => {
                self.store.list_with_offset(Some(dir), &keys::package_index_revision(dir, revision)).try_collect().await
            }
            None => self.store.list(Some(dir)).try_collect().await,
        }
        .map_err(|e| StorageError::store("list", dir, e))?;
        Ok(listing
            .iter()
            .filter_map(|meta| meta.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok())
            .filter(|&revision| after.is_none_or(|after| revision > after))
            .max())
    }

    pub async fn read_revision(&self, dir: &Path, revision: u64) -> Result<Option<Bytes>, StorageError> {
        self.read_bytes(&keys::package_index_revision(dir, revision)).await
    }

    /// Deletes one revision a writer found was not part of the sequence
    /// (see `Registry::update_index`); best effort, pruning removes it later
    /// otherwise.
    pub async fn delete_revision(&self, dir: &Path, revision: u64) {
        let _ = self.store.delete(&keys::package_index_revision(dir, revision)).await;
    }

    /// Creates revision `revision`; `false` when another writer created it
    /// first (the compare-and-swap lost).
    pub async fn create_revision(&self, dir: &Path, revision: u64, bytes: Bytes) -> Result<bool, StorageError> {
        let key = keys::package_index_revision(dir, revision);
        StorageError::check_key(&key)?;
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&key, PutPayload::from_bytes(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(StorageError::store("create", &key, e)),
        }
    }

    /// Deletes revisions older than `keep_from`, best effort: they are only
    /// history, and a failure here must not fail the write that won.
    pub async fn prune_revisions(&self, dir: &Path, keep_from: u64) {
        let Ok(listing) = self.store.list(Some(dir)).try_collect::<Vec<_>>().await else { return };
        for meta in listing {
            let old = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|r| r < keep_from);
            if old {
                let _ = self.store.delete(&meta.location).await;
            }
        }
    }

    /// Names of the objects directly in `dir` (not in its sub-folders), decoded.
    pub async fn list_files(&self, dir: &Path) -> Result<Vec<String>, StorageError> {
        let listing =
            self.store.list_with_delimiter(Some(dir)).await.map_err(|e| StorageError::store("list", dir, e))?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|meta| meta.location.filename())
            .map(|name| percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned())
            .collect())
    }

    /// Deletes the object at `key`; one already gone is not an error.
    pub async fn delete(&self, key: &Path) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store("delete", key, e)),
        }
    }

    /// Every object under `prefix` (sub-folders included), streamed: for collectors that
    /// must not hold a whole listing.
    pub fn list_objects(&self, prefix: &Path) -> BoxStream<'static, Result<ObjectInfo, StorageError>> {
        let scope = prefix.clone();
        self.store
            .list(Some(prefix))
            .map(move |meta| match meta {
                Ok(meta) => Ok(ObjectInfo::from(meta)),
                Err(e) => Err(StorageError::store("list", &scope, e)),
            })
            .boxed()
    }

    /// The size and last change of the object at `key`, if there is one.
    pub async fn head(&self, key: &Path) -> Result<Option<ObjectInfo>, StorageError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(ObjectInfo::from(meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("look up", key, e)),
        }
    }

    /// Deletes a blob (and, with encryption, its re-wrapped data key). Only a collector
    /// that made sure nothing references it may call this.
    pub async fn delete_blob(&self, sha256: &str) -> Result<(), StorageError> {
        let key = keys::blob(sha256);
        self.delete(&key).await?;
        self.small_blobs.lock().unwrap_or_else(|e| e.into_inner()).forget(sha256);
        if let Some(encryption) = &self.encryption {
            encryption.forget(&key).await;
        }
        Ok(())
    }

    /// Takes the lease `name` for `ttl` on behalf of `holder`, unless someone else holds
    /// it: one collector at a time per Domain, across replicas and processes. A lease
    /// whose holder died expires; it is then taken over by a conditional update where the
    /// store has one (so of two takers one wins), else by delete and create.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Result<Lease, LeaseRecord>, StorageError> {
        let key = keys::lease(name);
        let now = chrono::Utc::now();
        let record = LeaseRecord {
            holder: holder.to_owned(),
            expires: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
        };
        let lease = || Lease { storage: self.clone(), key: key.clone(), holder: holder.to_owned() };
        for _ in 0..3 {
            let existing = match self.create_json(&key, &record).await? {
                Created::Created => return Ok(Ok(lease())),
                Created::AlreadyExists(existing) => existing,
            };
            if existing.expires > now {
                return Ok(Err(existing));
            }
            let meta = match self.store.head(&key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(StorageError::store("look up", &key, e)),
            };
            let bytes =
                serde_json::to_vec(&record).map_err(|source| StorageError::Decode { key: key.to_string(), source })?;
            let update = object_store::UpdateVersion { e_tag: meta.e_tag, version: meta.version };
            let options = PutOptions { mode: PutMode::Update(update), ..Default::default() };
            match self.store.put_opts(&key, PutPayload::from(bytes), options).await {
                Ok(_) => return Ok(Ok(lease())),
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => self.delete(&key).await?,
                Err(e) => return Err(StorageError::store("take over", &key, e)),
            }
        }
        match self.read_json::<LeaseRecord>(&key).await? {
            Some(existing) => Ok(Err(existing)),
            None => Err(StorageError::Store {
                action: "take",
                key: key.to_string(),
                source: object_store::Error::Generic { store: "wharf", source: "the lease kept changing hands".into() },
            }),
        }
    }

    /// Names of the child folders of `dir`, decoded.
    pub async fn list_children(&self, dir: &Path) -> Result<Vec<String>, StorageError> {
        let listing =
            self.store.list_with_delimiter(Some(dir)).await.map_err(|e| StorageError::store("list", dir, e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .map(|name| percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned())
            .collect())
    }

    /// Reads the token signing key, generating and storing one on first
    /// use. Conditional create makes every replica agree on one key. In a
    /// local folder its file is made readable by its owner alone (0600):
    /// with it, anyone can mint an admin token.
    pub async fn token_signing_key(&self) -> Result<Vec<u8>, StorageError> {
        let key = keys::token_signing_key();
        let (bytes, created) = match self.read_bytes(&key).await? {
            Some(bytes) => (bytes.to_vec(), false),
            None => {
                let generated: [u8; 32] = rand::random();
                let options = PutOptions { mode: PutMode::Create, ..Default::default() };
                match self.store.put_opts(&key, PutPayload::from(generated.to_vec()), options).await {
                    Ok(_) => (generated.to_vec(), true),
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        let kept = self.read_bytes(&key).await?.map(|b| b.to_vec());
                        (kept.unwrap_or_else(|| generated.to_vec()), false)
                    }
                    Err(e) => return Err(StorageError::store("create", &key, e)),
                }
            }
        };
        if let Some(folder) = &self.local_folder {
            // A key created just now was never open to anyone: tighten it quietly.
            restrict_to_owner(&folder.join(key.as_ref()), !created)?;
        }
        Ok(bytes)
    }

    /// Whether the store answers (readiness). A shared store must also have
    /// shown that it honours conditional writes, once.
    pub async fn check(&self) -> Result<(), StorageError> {
        let seconds = READINESS_TIMEOUT.as_secs();
        tokio::time::timeout(READINESS_TIMEOUT, async {
            if let Some(encryption) = &self.encryption
                && encryption.unavailable().is_some()
            {
                // Keys read or storage reached since: check them again.
                encryption.refresh().await;
                if let Some(why) = encryption.unavailable() {
                    return Err(StorageError::Encryption { why });
                }
            }
            if self.encryption.is_none() && !self.plaintext_verified.load(Ordering::Relaxed) {
                self.check_encryption().await?;
                self.plaintext_verified.store(true, Ordering::Relaxed);
            }
            if !self.exclusive && !self.conditional_writes_verified.load(Ordering::Relaxed) {
                return self.verify_conditional_writes().await;
            }
            let key = keys::token_signing_key();
            match self.store.head(&key).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StorageError::store("reach storage at", &key, e)),
            }
        })
        .await
        .unwrap_or(Err(StorageError::Unresponsive { seconds }))
    }

    /// Checks that the store refuses a second create-only write of one key,
    /// which every create-once record and compare-and-swap here relies on. A
    /// store that silently overwrites (an S3-compatible server without
    /// If-None-Match) would let two publishers both win and lose data, so it
    /// is refused before anything is stored. The probe object is removed.
    pub async fn verify_conditional_writes(&self) -> Result<(), StorageError> {
        let key = keys::conditional_write_probe(&uuid::Uuid::new_v4().to_string());
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        // The probe holds nothing worth encrypting, and runs before the keys are checked.
        let store = self.encryption.as_ref().map_or(&self.store, |encryption| encryption.inner());
        store
            .put_opts(&key, PutPayload::from_static(b"first"), create.clone())
            .await
            .map_err(|e| StorageError::store("create", &key, e))?;
        let second = store.put_opts(&key, PutPayload::from_static(b"second"), create).await;
        // Best effort: a leftover probe is a few bytes under probes/.
        let _ = store.delete(&key).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.conditional_writes_verified.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => Err(StorageError::ConditionalWritesIgnored { key: key.to_string() }),
            Err(e) => Err(StorageError::store("create again (expecting a refusal)", &key, e)),
        }
    }

    /// Deletes every object under `prefix` (an empty path: everything this
    /// Storage holds, i.e. the whole Domain under its configured prefix),
    /// streaming the listing into batched deletes so no listing is held in
    /// memory. Returns how many objects were deleted. Objects written while
    /// the purge runs may survive it; stop the writers first.
    pub async fn purge(&self, prefix: &Path) -> Result<u64, StorageError> {
        let scope = if prefix.as_ref().is_empty() { None } else { Some(prefix) };
        let listing = self.store.list(scope).map_ok(|meta| meta.location).boxed();
        let deleted = self
            .store
            .delete_stream(listing)
            .try_fold(0u64, |count, _| async move { Ok(count + 1) })
            .await
            .map_err(|e| StorageError::store("purge", prefix, e))?;
        // Cached small blobs may be among what is gone.
        *self.small_blobs.lock().unwrap_or_else(|e| e.into_inner()) = SmallBlobs::default();
        Ok(deleted)
    }
}

/// An upload held under `uploads/{uuid}` with its digests: checked there,
/// then either committed to `blobs/` or deleted. Dropping it without
/// [`Self::commit`] or [`Self::discard`] deletes the staged object in the
/// background, a safety net for a request that is cancelled midway; every
/// refusal should still discard it explicitly, so it is gone before the
/// answer. Only the staging object is ever deleted: a blob the Domain
/// already holds is never touched by a failed upload of the same bytes.
#[must_use = "a staged upload is deleted unless committed"]
pub struct StagedBlob {
    storage: Storage,
    key: Path,
    digests: BlobDigests,
    /// Whether the staging object may still exist and is ours to delete.
    pending: bool,
}

impl std::fmt::Debug for StagedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBlob").field("key", &self.key.as_ref()).field("digests", &self.digests).finish()
    }
}

impl StagedBlob {
    pub fn digests(&self) -> &BlobDigests {
        &self.digests
    }

    /// A blocking reader of the staged bytes, for archive checks (call
    /// from the runtime; read on a blocking thread).
    pub fn reader(&self) -> SyncBlobReader {
        SyncBlobReader {
            storage: self.storage.clone(),
            handle: tokio::runtime::Handle::current(),
            key: self.key.clone(),
            size: self.digests.size,
            position: 0,
            buffer: Bytes::new(),
            buffer_start: 0,
        }
    }

    /// Makes the bytes a content-addressed blob: moves them to `blobs/sha256/…`. Call
    /// only once every check has passed. When the Domain holds these bytes already they
    /// are moved over them all the same (same content, one object): the blob's time then
    /// says a new reference is on its way, which the collector's grace period counts
    /// from, so it never frees bytes a publish is about to name.
    pub async fn commit(mut self) -> Result<BlobDigests, StorageError> {
        let target = keys::blob(&self.digests.sha256);
        let moved = match self.storage.store.rename(&self.key, &target).await {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(e) => Err(StorageError::store("move upload to", &target, e)),
        };
        self.delete_staged().await;
        moved.map(|()| self.digests.clone())
    }

    /// Deletes the staged bytes (a refused upload).
    pub async fn discard(mut self) {
        self.delete_staged().await;
    }

    /// Passes `result` through, discarding the staged bytes first when it
    /// is an error: `staged.discard_on_err(check(&staged).await).await?`.
    pub async fn discard_on_err<T, E>(&mut self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.delete_staged().await;
        }
        result
    }

    async fn delete_staged(&mut self) {
        if std::mem::take(&mut self.pending) {
            match self.storage.store.delete(&self.key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(key = %self.key, error = %e, "failed to delete a staged upload"),
            }
        }
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.pending {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "a staged upload outlived the runtime and stays in storage");
            return;
        };
        let store = self.storage.store.clone();
        let key = self.key.clone();
        runtime.spawn(async move {
            if let Err(e) = store.delete(&key).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %key, error = %e, "failed to delete a dropped staged upload");
            }
        });
    }
}

/// A blocking `Read + Seek` view of a staged upload over ranged reads, for
/// parsers that need one (zip's central directory sits at the end). Made
/// by [`StagedBlob::reader`]; use it only on a blocking thread
/// (`spawn_blocking`).
pub struct SyncBlobReader {
    storage: Storage,
    handle: tokio::runtime::Handle,
    key: Path,
    size: u64,
    position: u64,
    buffer: Bytes,
    buffer_start: u64,
}

/// How much one ranged read fetches ahead.
const SYNC_READ_AHEAD: u64 = 256 * 1024;

impl std::io::Read for SyncBlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.size || out.is_empty() {
            return Ok(0);
        }
        let buffer_end = self.buffer_start + self.buffer.len() as u64;
        if self.position < self.buffer_start || self.position >= buffer_end {
            let end = (self.position + SYNC_READ_AHEAD.max(out.len() as u64)).min(self.size);
            let range = self.position..end;
            self.buffer =
                self.handle.block_on(self.storage.read_range(&self.key, range)).map_err(std::io::Error::other)?;
            self.buffer_start = self.position;
            if self.buffer.is_empty() {
                return Ok(0);
            }
        }
        let offset = (self.position - self.buffer_start) as usize;
        let available = &self.buffer[offset..];
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for SyncBlobReader {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(n) => self.size.checked_add_signed(n),
            std::io::SeekFrom::Current(n) => self.position.checked_add_signed(n),
        };
        let target =
            target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.position = target;
        Ok(target)
    }
}

/// Makes a secret's file readable and writable by its owner alone (0600),
/// saying so when it was open to others before.
fn restrict_to_owner(path: &std::path::Path, warn: bool) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| StorageError::Permissions { path: path.display().to_string(), source };
    let mode = std::fs::metadata(path).map_err(failed)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        if warn && mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                was = format!("{mode:o}"),
                "the token signing key was readable by other users, who could mint admin tokens with it; it is \
                 0600 now, but rotate it (delete the file and restart) if others may have read it"
            );
        }
    }
    Ok(())
}

async fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, StorageError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(StorageError::Io)?;
    let limited = file.take(range.end - range.start);
    Ok(tokio_util::io::ReaderStream::with_capacity(limited, FILE_READ_CHUNK).boxed())
}

#[derive(Default)]
struct Hashes {
    sha256: Sha256,
    sha512: Sha512,
    sha1: Sha1,
    md5: Md5,
    size: u64,
}

impl Hashes {
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.sha512.update(bytes);
        self.sha1.update(bytes);
        self.md5.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> BlobDigests {
        BlobDigests {
            sha256: hex::encode(self.sha256.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            md5: hex::encode(self.md5.finalize()),
            size: self.size,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn storage() -> Storage {
        Storage::new(Arc::new(InMemory::new()))
    }

    fn body(parts: Vec<&'static [u8]>) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
        futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p))))
    }

    #[tokio::test]
    async fn staged_blob_is_content_addressed_and_deduplicated() {
        let storage = storage();
        let first = storage.stage_blob(body(vec![b"hello ", b"world"]), 1024).await.unwrap().commit().await.unwrap();
        assert_eq!(first.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(first.size, 11);
        let second = storage.stage_blob(body(vec![b"hello world"]), 1024).await.unwrap().commit().await.unwrap();
        assert_eq!(first, second);
        let blobs: Vec<_> = storage.store.list(None).try_collect().await.unwrap();
        assert_eq!(blobs.len(), 1, "one object for identical bytes, no staging leftovers: {blobs:?}");
        for size in [first.size, 0, SMALL_BLOB_MAX + 1] {
            // Served from the small-blob cache, or streamed from storage.
            let opened = storage.open_blob(&first.sha256, size, Some(6..11)).await.unwrap().unwrap();
            let bytes: Vec<Bytes> = opened.stream.try_collect().await.unwrap();
            assert_eq!(bytes.concat(), b"world", "size hint {size}");
        }
        assert!(storage.open_blob(&"0".repeat(64), 10, None).await.unwrap().is_none());
    }

    async fn keys_in(storage: &Storage) -> Vec<String> {
        storage.store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap()
    }

    #[tokio::test]
    async fn staged_bytes_become_a_blob_only_when_committed() {
        let storage = storage();
        let staged = storage.stage_blob(body(vec![b"checked ", b"first"]), 1024).await.unwrap();
        let held = keys_in(&storage).await;
        assert!(held.len() == 1 && held[0].starts_with("uploads/"), "staged, not yet a blob: {held:?}");
        // Checks read the staged bytes.
        let reader = staged.reader();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut { reader }, &mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert_eq!(read, "checked first");
        staged.discard().await;
        assert!(keys_in(&storage).await.is_empty(), "a refused upload leaves nothing");

        let digests = storage.stage_blob(body(vec![b"kept"]), 1024).await.unwrap().commit().await.unwrap();
        assert_eq!(keys_in(&storage).await, [keys::blob(&digests.sha256).to_string()]);

        // Dropped mid-request (a cancelled handler): deleted in the background.
        drop(storage.stage_blob(body(vec![b"abandoned"]), 1024).await.unwrap());
        for _ in 0..100 {
            if keys_in(&storage).await.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(keys_in(&storage).await, [keys::blob(&digests.sha256).to_string()]);
    }

    #[tokio::test]
    async fn a_refused_upload_of_bytes_already_stored_keeps_the_stored_blob() {
        let storage = storage();
        let stored = storage.stage_blob(body(vec![b"same bytes"]), 1024).await.unwrap().commit().await.unwrap();
        let mut again = storage.stage_blob(body(vec![b"same bytes"]), 1024).await.unwrap();
        assert_eq!(again.digests(), &stored);
        let refused: Result<(), &str> = Err("declared digest differs");
        assert!(again.discard_on_err(refused).await.is_err());
        drop(again);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(keys_in(&storage).await, [keys::blob(&stored.sha256).to_string()]);
        let opened = storage.open_blob(&stored.sha256, SMALL_BLOB_MAX + 1, None).await.unwrap();
        assert!(opened.is_some(), "the Domain's copy is untouched");
    }

    #[tokio::test]
    async fn oversize_upload_is_refused_and_leaves_nothing() {
        let storage = storage();
        let err = storage.stage_blob(body(vec![b"0123456789", b"0123456789"]), 15).await.unwrap_err();
        assert!(matches!(err, StorageError::TooLarge { limit: 15 }));
        let left: Vec<_> = storage.store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn create_json_has_exactly_one_winner() {
        let storage = storage();
        let key = keys::version_record("main", "npm", "left-pad", "1.0.0");
        let attempts = (0..32).map(|i| {
            let storage = storage.clone();
            let key = key.clone();
            async move { storage.create_json(&key, &i).await.unwrap() }
        });
        let outcomes = futures::future::join_all(attempts).await;
        let winners = outcomes.iter().filter(|o| matches!(o, Created::Created)).count();
        assert_eq!(winners, 1);
        let stored: i32 = storage.read_json(&key).await.unwrap().unwrap();
        for outcome in outcomes {
            if let Created::AlreadyExists(seen) = outcome {
                assert_eq!(seen, stored);
            }
        }
    }

    #[tokio::test]
    async fn revisions_compare_and_swap() {
        let storage = storage();
        let dir = keys::package_index("main", "npm", "a");
        assert!(storage.latest_revision(&dir).await.unwrap().is_none());
        assert!(storage.create_revision(&dir, 1, Bytes::from_static(b"one")).await.unwrap());
        assert!(!storage.create_revision(&dir, 1, Bytes::from_static(b"lost")).await.unwrap());
        assert!(storage.create_revision(&dir, 2, Bytes::from_static(b"two")).await.unwrap());
        assert_eq!(storage.newest_revision(&dir, None).await.unwrap(), Some(2));
        assert_eq!(storage.newest_revision(&dir, Some(1)).await.unwrap(), Some(2));
        assert_eq!(storage.newest_revision(&dir, Some(2)).await.unwrap(), None);
        storage.prune_revisions(&dir, 2).await;
        let (rev, bytes) = storage.latest_revision(&dir).await.unwrap().unwrap();
        assert_eq!((rev, &bytes[..]), (2, &b"two"[..]));
        assert!(storage.read_revision(&dir, 1).await.unwrap().is_none());
        // Revision numbers sort as numbers, past a change of digit count.
        for revision in 3..=12 {
            assert!(storage.create_revision(&dir, revision, Bytes::from_static(b"n")).await.unwrap());
        }
        assert_eq!(storage.newest_revision(&dir, Some(9)).await.unwrap(), Some(12));
    }

    #[tokio::test]
    async fn conditional_writes_are_verified_and_a_store_ignoring_them_is_refused() {
        let honest = storage();
        honest.verify_conditional_writes().await.unwrap();
        honest.check().await.unwrap();

        let careless = Storage::new(Arc::new(crate::testing::IgnoresPreconditions::default()));
        let error = careless.verify_conditional_writes().await.unwrap_err();
        assert!(matches!(error, StorageError::ConditionalWritesIgnored { .. }), "{error}");
        assert!(!error.is_unreachable(), "waiting will not fix it");
        assert!(careless.check().await.is_err(), "never ready");
        let left: Vec<_> = careless.store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "the probe is removed: {left:?}");
    }

    #[tokio::test]
    async fn purge_deletes_everything_under_a_prefix_on_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::backends::open_storage(
            &wharf_api::StorageSpec::filesystem(&dir.path().display().to_string()),
            &crate::secrets::SecretsDir::new("unused"),
        )
        .unwrap();
        for i in 0..30 {
            let key = keys::version_record("web", "npm", &format!("pkg-{}", i % 7), &format!("1.0.{i}"));
            assert!(matches!(storage.create_json(&key, &i).await.unwrap(), Created::Created));
        }
        let kept = keys::version_record("web2", "npm", "kept", "1.0.0");
        storage.create_json(&kept, &1).await.unwrap();
        let blob = storage.put_small_blob(Bytes::from_static(b"cached once read")).await.unwrap();
        assert!(storage.open_blob(&blob.sha256, blob.size, None).await.unwrap().is_some());

        assert_eq!(storage.purge(&keys::repository("web")).await.unwrap(), 30);
        assert!(storage.list_children(&keys::packages("web", "npm")).await.unwrap().is_empty());
        assert_eq!(storage.read_json::<i32>(&kept).await.unwrap(), Some(1), "web2 is not under web/");

        assert_eq!(storage.purge(&Path::from("")).await.unwrap(), 2);
        let left: Vec<_> = storage.store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        assert!(storage.open_blob(&blob.sha256, blob.size, None).await.unwrap().is_none(), "not served from cache");
        let folders: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(folders.is_empty(), "emptied folders go too: {folders:?}");
    }

    #[tokio::test]
    async fn a_local_data_folder_and_its_signing_key_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("wharf-data");
        let open = || {
            crate::backends::open_storage(
                &wharf_api::StorageSpec::filesystem(&data.display().to_string()),
                &crate::secrets::SecretsDir::new("unused"),
            )
            .unwrap()
        };
        let storage = open();
        assert_eq!(mode(&data), 0o700, "created for its owner alone");
        let key = storage.token_signing_key().await.unwrap();
        let key_file = data.join("keys").join("token-signing");
        assert_eq!(mode(&key_file), 0o600);

        // A key left readable by an older version is tightened at start.
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open().token_signing_key().await.unwrap(), key);
        assert_eq!(mode(&key_file), 0o600);
    }

    #[tokio::test]
    async fn signing_key_is_stable() {
        let storage = storage();
        let a = storage.token_signing_key().await.unwrap();
        let b = storage.token_signing_key().await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[tokio::test]
    async fn purge_removes_one_repository_or_everything_on_a_local_folder() {
        let folder = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap();
        let storage = Storage::exclusive(Arc::new(store));
        for key in [
            keys::version_record("web", "npm", "left-pad", "1.0.0"),
            keys::version_record("web", "pypi", "demo", "1.0"),
            keys::version_record("webby", "npm", "left-pad", "1.0.0"),
            keys::version_record("api", "npm", "left-pad", "1.0.0"),
        ] {
            assert!(matches!(storage.create_json(&key, &serde_json::json!({})).await.unwrap(), Created::Created));
        }
        storage.put_small_blob(Bytes::from_static(b"shared")).await.unwrap();

        assert_eq!(storage.purge(&keys::repository("web")).await.unwrap(), 2);
        let left: Vec<String> =
            storage.store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
        assert_eq!(left.len(), 3, "`webby` is not under `web/`, blobs stay: {left:?}");
        assert!(left.iter().any(|key| key.starts_with("repositories/webby/")), "{left:?}");
        assert_eq!(storage.purge(&keys::repository("web")).await.unwrap(), 0, "idempotent");

        assert_eq!(storage.purge(&Path::default()).await.unwrap(), 3);
        let left: Vec<_> = storage.store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
