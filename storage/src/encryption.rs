//! Envelope encryption of everything a Domain stores, as an [`ObjectStore`] around the
//! real one, so no caller can write a byte in the clear by taking another path.
//!
//! Every object gets its own random 256-bit data key (DEK), wrapped by the Domain's
//! current key (a KEK from the Domain's key Secret) with AES-256-GCM. The content is
//! cut into segments of 64 KiB, each sealed with AES-256-GCM under the DEK; a segment's
//! nonce is its index and whether it is the last one (the STREAM construction), so a
//! truncated, extended or reordered object fails to open. Range reads open only the
//! segments they touch.
//!
//! ```text
//! object:   header (104 bytes) | segment 0 | segment 1 | … | last segment (maybe empty)
//! header:   "WHARFENC" | version 1 | flags | log2(segment size) | 0
//!           | KEK fingerprint (16) | object id (16, random) | wrap nonce (12) | wrapped DEK (32 + 16)
//! segment:  ciphertext (64 KiB, less in the last) | tag (16)
//! ```
//!
//! The DEK is wrapped with the header's first 44 bytes as associated data and, for
//! objects written whole (records, index revisions, tokens, small blobs), the object's
//! key: such an object moved to another key does not open. Objects written in parts
//! (uploads) are staged and then renamed to their content address, so they are bound to
//! their DEK but not to a key.
//!
//! **Rotation**: a new current key seals new objects at once. [`EncryptedStore::rekey`]
//! re-wraps existing DEKs under the current key without rewriting data: the re-wrapped
//! DEK goes to `encryption/rewrapped/{key}`, bound to the object id, and is used when the
//! header's KEK is no longer in the Secret. The canary `encryption/canary` is re-wrapped
//! last, so the registry is ready with a key set only when every object opens with it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};
use sha2::{Digest, Sha256};

use crate::secrets::{SecretError, SecretsDir};

/// Plaintext bytes per segment.
pub const SEGMENT_BYTES: usize = 64 * 1024;
const SEGMENT_LOG2: u8 = 16;
const TAG_BYTES: usize = 16;
const SEALED_SEGMENT_BYTES: usize = SEGMENT_BYTES + TAG_BYTES;
/// Size of the header in front of every encrypted object.
pub const HEADER_BYTES: usize = 104;
const MAGIC: &[u8; 8] = b"WHARFENC";
const FORMAT_VERSION: u8 = 1;
/// The DEK's wrap is bound to the object's key as well.
const FLAG_BOUND_TO_KEY: u8 = 1;
/// Header bytes covered by the wrap as associated data.
const WRAP_AAD_BYTES: usize = 44;
const FINGERPRINT: Range<usize> = 12..28;
const OBJECT_ID: Range<usize> = 28..44;
const WRAP_NONCE: Range<usize> = 44..56;
const WRAPPED_DEK: Range<usize> = 56..104;
/// A re-wrapped DEK: object id, KEK fingerprint, nonce, wrapped DEK.
const REWRAP_BYTES: usize = 16 + 16 + NONCE_LEN + 48;
/// Plaintext of one multipart part: 80 segments, 5 MiB, S3's minimum part size.
const PART_PLAINTEXT_BYTES: usize = 80 * SEGMENT_BYTES;
/// Unwrapped DEKs kept for range reads and re-wrapped objects.
const DEK_CACHE_ENTRIES: usize = 4096;
const CANARY_TEXT: &[u8] = b"wharf encryption canary";

/// The key of a Secret entry that names the current key.
pub const CURRENT_KEY_ENTRY: &str = "current";

pub(crate) fn canary_key() -> Path {
    Path::from_iter(["encryption", "canary"])
}

fn rewrapped_folder() -> Path {
    Path::from_iter(["encryption", "rewrapped"])
}

fn rewrapped_key(location: &Path) -> Path {
    rewrapped_folder().parts().chain(location.parts()).collect()
}

fn is_encryption_bookkeeping(location: &Path) -> bool {
    location.prefix_matches(&Path::from("encryption"))
}

/// Why the Domain's keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the encryption keys of Secret {secret:?}")]
    Secret {
        secret: String,
        #[source]
        source: SecretError,
    },
    #[error(
        "encryption key Secret {secret:?} has no {CURRENT_KEY_ENTRY:?} entry naming the key that seals new data \
         (for example `current: k1` beside `k1: <base64 of 32 random bytes>`)"
    )]
    NoCurrent { secret: String },
    #[error("encryption key Secret {secret:?}: {CURRENT_KEY_ENTRY:?} names key {current:?}, which it does not hold")]
    CurrentMissing { secret: String, current: String },
    #[error(
        "encryption key Secret {secret:?}: key {id:?} is not 32 bytes in base64 (make one with \
         `openssl rand -base64 32`)"
    )]
    Malformed { secret: String, id: String },
    #[error("encryption key Secret {secret:?}: keys {first:?} and {second:?} are the same key")]
    Duplicate { secret: String, first: String, second: String },
}

/// One key-encryption key.
struct Kek {
    id: String,
    key: LessSafeKey,
}

/// The Domain's keys: the current one seals, every one opens.
pub struct KeyRing {
    /// Where the keys came from, for messages ("Secret \"wharf-keys\"").
    source: String,
    current: [u8; 16],
    keys: HashMap<[u8; 16], Kek>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.values().map(|kek| kek.id.as_str()).collect();
        f.debug_struct("KeyRing").field("source", &self.source).field("keys", &ids).finish()
    }
}

fn fingerprint(key: &[u8]) -> [u8; 16] {
    let digest = Sha256::new().chain_update(b"wharf key fingerprint\0").chain_update(key).finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn aes_key(bytes: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes).ok().map(LessSafeKey::new)
}

impl KeyRing {
    /// Reads the keys of Secret `secret`: every entry but `current` is a key (base64 of 32
    /// bytes), `current` names the one that seals.
    pub fn from_secret(secrets: &SecretsDir, secret: &str) -> Result<KeyRing, KeyError> {
        let failed = |source| KeyError::Secret { secret: secret.to_owned(), source };
        let mut entries = Vec::new();
        for entry in secrets.entries(secret).map_err(failed)? {
            let value = secrets.read_entry(secret, &entry).map_err(failed)?;
            entries.push((entry, value));
        }
        KeyRing::from_entries(secret, entries)
    }

    /// The keys of a Secret named `secret` with `entries` (key, value): every entry but
    /// `current` is a key (base64 of 32 bytes), `current` names the one that seals.
    pub fn from_entries(secret: &str, entries: Vec<(String, String)>) -> Result<KeyRing, KeyError> {
        let mut current = None;
        let mut keys = Vec::new();
        for (entry, value) in entries {
            if entry == CURRENT_KEY_ENTRY {
                current = Some(value.trim().to_owned());
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok().filter(|b| b.len() == 32);
            let bytes = bytes.ok_or_else(|| KeyError::Malformed { secret: secret.to_owned(), id: entry.clone() })?;
            keys.push((entry, bytes));
        }
        let current = current.ok_or_else(|| KeyError::NoCurrent { secret: secret.to_owned() })?;
        KeyRing::new(secret.to_owned(), &current, keys)
    }

    /// A ring of `keys` (id, 32 bytes) sealing with `current`, from Secret `secret`.
    pub fn new(secret: String, current: &str, keys: Vec<(String, Vec<u8>)>) -> Result<KeyRing, KeyError> {
        let source = format!("Secret {secret:?}");
        let mut ring = KeyRing { source, current: [0; 16], keys: HashMap::new() };
        let mut current_fingerprint = None;
        for (id, bytes) in keys {
            let print = fingerprint(&bytes);
            let key = aes_key(&bytes).ok_or_else(|| KeyError::Malformed { secret: secret.clone(), id: id.clone() })?;
            if let Some(other) = ring.keys.get(&print) {
                return Err(KeyError::Duplicate { secret, first: other.id.clone(), second: id });
            }
            if id == current {
                current_fingerprint = Some(print);
            }
            ring.keys.insert(print, Kek { id, key });
        }
        ring.current = current_fingerprint
            .ok_or_else(|| KeyError::CurrentMissing { secret: secret.clone(), current: current.to_owned() })?;
        Ok(ring)
    }

    /// The id of the key that seals new objects.
    pub fn current_id(&self) -> &str {
        self.keys.get(&self.current).map_or("", |kek| kek.id.as_str())
    }

    fn current(&self) -> &Kek {
        // `new` refuses a ring whose current key it does not hold.
        &self.keys[&self.current]
    }

    fn same_keys(&self, other: &KeyRing) -> bool {
        self.current == other.current
            && self.keys.len() == other.keys.len()
            && self.keys.keys().all(|print| other.keys.contains_key(print))
    }
}

fn crypto_error(location: &Path, message: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic { store: "wharf-encryption", source: format!("{location}: {}", message.into()).into() }
}

/// What [`EncryptedStore::refresh`] found.
enum KeyState {
    /// Keys read and checked against the canary.
    Ready(Arc<KeyRing>),
    /// Keys cannot be used; `last` (if any) still opens what it can.
    Unavailable { last: Option<Arc<KeyRing>>, why: String },
}

/// A data key in the clear, for one object.
struct Dek {
    object_id: [u8; 16],
    e_tag: Option<String>,
    key: Arc<LessSafeKey>,
}

/// Where the keys come from: a Secret in the secrets folder, or fixed (tests).
enum KeySource {
    Secret { secrets: SecretsDir, name: String },
    Fixed(Mutex<Arc<KeyRing>>),
}

/// An [`ObjectStore`] that encrypts everything written to `inner` and opens everything
/// read from it (see the module's documentation).
pub struct EncryptedStore {
    inner: Arc<dyn ObjectStore>,
    source: KeySource,
    state: RwLock<KeyState>,
    deks: Mutex<HashMap<Path, Dek>>,
}

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore").field("inner", &self.inner).finish()
    }
}

impl fmt::Display for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encrypted({})", self.inner)
    }
}

/// Progress of a [`EncryptedStore::rekey`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Objects looked at.
    pub examined: u64,
    /// Objects whose DEK this run re-wrapped under the current key.
    pub rewrapped: u64,
    /// Objects sealed or re-wrapped under the current key already.
    pub current: u64,
}

impl EncryptedStore {
    /// Encrypts with the keys of Secret `secret` in `secrets`, read now and again at every
    /// [`Self::refresh`]. Keys that cannot be read leave the store unavailable (reads and
    /// writes fail, saying why) until a refresh reads them.
    pub fn from_secret(inner: Arc<dyn ObjectStore>, secrets: SecretsDir, secret: String) -> EncryptedStore {
        let state = match KeyRing::from_secret(&secrets, &secret) {
            Ok(ring) => KeyState::Unavailable {
                last: Some(Arc::new(ring)),
                why: "the keys have not been checked against storage yet".to_owned(),
            },
            Err(error) => KeyState::Unavailable { last: None, why: wharf_diagnostics::error_chain(&error) },
        };
        EncryptedStore {
            inner,
            source: KeySource::Secret { secrets, name: secret },
            state: RwLock::new(state),
            deks: Mutex::default(),
        }
    }

    /// Encrypts with `ring` (tests, and tools that hold the keys).
    pub fn with_keys(inner: Arc<dyn ObjectStore>, ring: KeyRing) -> EncryptedStore {
        let ring = Arc::new(ring);
        EncryptedStore {
            inner,
            source: KeySource::Fixed(Mutex::new(ring.clone())),
            state: RwLock::new(KeyState::Unavailable {
                last: Some(ring),
                why: "the keys have not been checked against storage yet".to_owned(),
            }),
            deks: Mutex::default(),
        }
    }

    /// Replaces the fixed key ring (tests of rotation).
    #[cfg(test)]
    pub fn set_keys(&self, ring: KeyRing) {
        if let KeySource::Fixed(fixed) = &self.source {
            *fixed.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        }
    }

    /// The store underneath, holding ciphertext.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Reads the keys again and checks that they open the Domain's data: the canary
    /// (created with the current key in a Domain that has none yet) must open, and a
    /// Domain without a canary must hold no unencrypted data. Keeps the last good keys
    /// for reading when the new ones fail, and says why in [`Self::unavailable`].
    pub async fn refresh(&self) {
        let ring = match &self.source {
            KeySource::Secret { secrets, name } => KeyRing::from_secret(secrets, name).map(Arc::new),
            KeySource::Fixed(fixed) => Ok(fixed.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        };
        let checked = match ring {
            Ok(ring) => match self.check_canary(&ring).await {
                Ok(()) => Ok(ring),
                Err(why) => Err((Some(ring), why)),
            },
            Err(error) => Err((None, wharf_diagnostics::error_chain(&error))),
        };
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match checked {
            Ok(ring) => {
                if let KeyState::Ready(old) = &*state
                    && !old.same_keys(&ring)
                {
                    tracing::info!(current = ring.current_id(), "encryption keys changed");
                }
                *state = KeyState::Ready(ring);
            }
            Err((ring, why)) => {
                if !matches!(&*state, KeyState::Unavailable { why: before, .. } if *before == why) {
                    tracing::warn!(%why, "the encryption keys cannot be used; writes are refused until they can");
                }
                let last = match &*state {
                    KeyState::Ready(old) => Some(old.clone()),
                    // The keys that last opened the data keep serving reads.
                    KeyState::Unavailable { last, .. } => last.clone().or(ring),
                };
                *state = KeyState::Unavailable { last, why };
            }
        }
    }

    /// Forgets an object that was deleted: its cached data key and its re-wrapped one.
    pub async fn forget(&self, location: &Path) {
        self.deks.lock().unwrap_or_else(|e| e.into_inner()).remove(location);
        match self.inner.delete(&rewrapped_key(location)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key = %location, error = %e, "failed to delete a re-wrapped data key"),
        }
    }

    /// Why the keys cannot be used, when they cannot.
    pub fn unavailable(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            KeyState::Ready(_) => None,
            KeyState::Unavailable { why, .. } => Some(why.clone()),
        }
    }

    /// The id of the current key, when the keys are ready.
    pub fn current_key_id(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            KeyState::Ready(ring) => Some(ring.current_id().to_owned()),
            KeyState::Unavailable { .. } => None,
        }
    }

    fn source_name(&self) -> String {
        match &self.source {
            KeySource::Secret { name, .. } => format!("Secret {name:?}"),
            KeySource::Fixed(_) => "the configured keys".to_owned(),
        }
    }

    /// Keys for sealing: only checked ones, so a wrong key never seals new data.
    fn sealing_ring(&self, location: &Path) -> object_store::Result<Arc<KeyRing>> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            KeyState::Ready(ring) => Ok(ring.clone()),
            KeyState::Unavailable { why, .. } => {
                Err(crypto_error(location, format!("not written: the encryption keys cannot be used: {why}")))
            }
        }
    }

    /// Keys for opening: the checked ones, or the last ones read.
    fn opening_ring(&self, location: &Path) -> object_store::Result<Arc<KeyRing>> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            KeyState::Ready(ring) | KeyState::Unavailable { last: Some(ring), .. } => Ok(ring.clone()),
            KeyState::Unavailable { last: None, why } => {
                Err(crypto_error(location, format!("not readable: the encryption keys cannot be used: {why}")))
            }
        }
    }

    async fn check_canary(&self, ring: &Arc<KeyRing>) -> Result<(), String> {
        let key = canary_key();
        let opened = match self.inner.get(&key).await {
            Ok(result) => {
                let sealed = result.bytes().await.map_err(|e| wharf_diagnostics::error_chain(&e))?;
                self.open_whole(ring, &key, sealed).await
            }
            Err(object_store::Error::NotFound { .. }) => return self.create_canary(ring).await,
            Err(e) => return Err(format!("cannot read the encryption canary: {}", wharf_diagnostics::error_chain(&e))),
        };
        match opened {
            Ok(text) if text == CANARY_TEXT => Ok(()),
            Ok(_) => Err(format!("the encryption canary {key} does not hold what Wharf wrote there")),
            Err(e) => Err(format!(
                "the Domain's data does not open with the keys of {}: {}; restore the key that sealed it (a key \
                 may be removed only after `wharf-registry storage rekey` finished)",
                ring.source,
                wharf_diagnostics::error_chain(&e)
            )),
        }
    }

    /// Creates the canary, unless the Domain already holds data in the clear.
    async fn create_canary(&self, ring: &Arc<KeyRing>) -> Result<(), String> {
        let mut listing = self.inner.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| format!("cannot list storage: {}", wharf_diagnostics::error_chain(&e)))?;
            if meta.location.prefix_matches(&Path::from("probes")) || is_encryption_bookkeeping(&meta.location) {
                continue;
            }
            let head = self.inner.get_range(&meta.location, 0..MAGIC.len() as u64).await;
            if !matches!(&head, Ok(bytes) if bytes.as_ref() == MAGIC) {
                return Err(format!(
                    "storage holds unencrypted data ({}); encryption can be turned on only for a Domain with \
                     empty storage (a new bucket or prefix)",
                    meta.location
                ));
            }
            break;
        }
        let key = canary_key();
        let sealed = seal_whole(ring, &key, CANARY_TEXT);
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&key, sealed.into(), options).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(format!("cannot write the encryption canary: {}", wharf_diagnostics::error_chain(&e))),
        }
    }

    /// Opens a whole object read into memory.
    async fn open_whole(&self, ring: &KeyRing, location: &Path, sealed: Bytes) -> object_store::Result<Bytes> {
        let header = parse_header(location, &sealed)?;
        let dek = self.unwrap_dek(ring, location, &header, None).await?;
        let size = plaintext_size(location, sealed.len() as u64)?;
        let segments = segment_count(size);
        let mut out = BytesMut::with_capacity(size as usize);
        let mut body = sealed.slice(HEADER_BYTES..);
        for index in 0..segments {
            let take = body.len().min(SEALED_SEGMENT_BYTES);
            let plain = open_segment(&dek, location, index, index + 1 == segments, &body[..take])?;
            out.extend_from_slice(&plain);
            body = body.slice(take..);
        }
        Ok(out.freeze())
    }

    /// The DEK of an object with `header`, from the header's own wrap when its KEK is in
    /// the ring, else from the object's re-wrapped DEK.
    async fn unwrap_dek(
        &self,
        ring: &KeyRing,
        location: &Path,
        header: &Header,
        e_tag: Option<&str>,
    ) -> object_store::Result<Arc<LessSafeKey>> {
        {
            let cache = self.deks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dek) = cache.get(location)
                && dek.object_id == header.object_id
            {
                return Ok(dek.key.clone());
            }
        }
        let dek = self.unwrap_dek_bytes(ring, location, header).await?;
        let dek = aes_key(&dek).ok_or_else(|| crypto_error(location, "its data key has the wrong length"))?;
        let dek = Arc::new(dek);
        self.remember(location, header.object_id, e_tag.map(str::to_owned), dek.clone());
        Ok(dek)
    }

    fn missing_key(&self, location: &Path, print: &[u8; 16]) -> object_store::Error {
        crypto_error(
            location,
            format!(
                "sealed with a key (fingerprint {}) that {} does not hold: restore it, or keep it until \
                 `wharf-registry storage rekey` has finished",
                hex::encode(print),
                self.source_name()
            ),
        )
    }

    fn remember(&self, location: &Path, object_id: [u8; 16], e_tag: Option<String>, key: Arc<LessSafeKey>) {
        let mut cache = self.deks.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= DEK_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(location.clone(), Dek { object_id, e_tag, key });
    }

    async fn read_rewrap(&self, location: &Path) -> object_store::Result<Option<Rewrap>> {
        match self.inner.get(&rewrapped_key(location)).await {
            Ok(result) => {
                let bytes = result.bytes().await?;
                Ok(Rewrap::parse(&bytes))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The DEK of `location` for a range read whose response carried `e_tag`: cached,
    /// or from the object's header (read only if the object is still that version).
    async fn dek_for_range(&self, location: &Path, e_tag: Option<&str>) -> object_store::Result<Arc<LessSafeKey>> {
        if let Some(e_tag) = e_tag {
            let cache = self.deks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dek) = cache.get(location)
                && dek.e_tag.as_deref() == Some(e_tag)
            {
                return Ok(dek.key.clone());
            }
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..HEADER_BYTES as u64)),
            if_match: e_tag.map(str::to_owned),
            ..Default::default()
        };
        let bytes = self.inner.get_opts(location, options).await?.bytes().await?;
        let header = parse_header(location, &bytes)?;
        let ring = self.opening_ring(location)?;
        {
            // A cached DEK of this object id needs the e_tag remembered for next time.
            let mut cache = self.deks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dek) = cache.get_mut(location)
                && dek.object_id == header.object_id
            {
                dek.e_tag = e_tag.map(str::to_owned);
                return Ok(dek.key.clone());
            }
        }
        self.unwrap_dek(&ring, location, &header, e_tag).await
    }

    /// Re-wraps the DEK of every object under the current key, without rewriting data
    /// (see the module's documentation). Safe to interrupt and run again: objects done
    /// already are only read. Passes repeat until one finds nothing sealed under another
    /// key (a replica that had not read the new current key yet may have sealed some
    /// while the pass ran); the canary goes last. `progress` hears every 1,000 objects.
    pub async fn rekey(&self, mut progress: impl FnMut(&RekeyReport)) -> object_store::Result<RekeyReport> {
        const PASSES: usize = 3;
        self.refresh().await;
        let ring = self.sealing_ring(&Path::from(""))?;
        let mut total = RekeyReport::default();
        for _ in 0..PASSES {
            let before = total.rewrapped;
            let mut objects = self.inner.list(None);
            let mut batch = Vec::new();
            loop {
                let next = objects.next().await.transpose()?;
                if let Some(meta) = &next
                    && !is_encryption_bookkeeping(&meta.location)
                    && !meta.location.prefix_matches(&Path::from("probes"))
                {
                    batch.push(meta.location.clone());
                }
                if batch.len() >= 64 || (next.is_none() && !batch.is_empty()) {
                    let results: Vec<object_store::Result<bool>> =
                        futures::stream::iter(batch.drain(..).map(|location| {
                            let ring = ring.clone();
                            async move { self.rekey_object(&ring, &location).await }
                        }))
                        .buffer_unordered(16)
                        .collect()
                        .await;
                    for result in results {
                        match result? {
                            true => total.rewrapped += 1,
                            false => total.current += 1,
                        }
                        total.examined += 1;
                        if total.examined.is_multiple_of(1000) {
                            progress(&total);
                        }
                    }
                }
                if next.is_none() {
                    break;
                }
            }
            if total.rewrapped == before {
                break;
            }
        }
        let canary = canary_key();
        if self.rekey_object(&ring, &canary).await? {
            total.rewrapped += 1;
        }
        self.refresh().await;
        progress(&total);
        Ok(total)
    }

    /// Re-wraps one object's DEK under the current key; `false` when it was already.
    async fn rekey_object(&self, ring: &KeyRing, location: &Path) -> object_store::Result<bool> {
        let header = match self.inner.get_range(location, 0..HEADER_BYTES as u64).await {
            Ok(bytes) => parse_header(location, &bytes)?,
            // Deleted since the listing.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if header.fingerprint == ring.current {
            return Ok(false);
        }
        if let Some(rewrap) = self.read_rewrap(location).await?
            && rewrap.object_id == header.object_id
            && rewrap.fingerprint == ring.current
        {
            return Ok(false);
        }
        let dek = self.unwrap_dek_bytes(ring, location, &header).await?;
        let kek = ring.current();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut wrapped = dek.to_vec();
        let tag = kek
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header.wrap_aad(location)),
                &mut wrapped,
            )
            .map_err(|_| crypto_error(location, "cannot wrap its data key"))?;
        wrapped.extend_from_slice(tag.as_ref());
        let rewrap = Rewrap { object_id: header.object_id, fingerprint: ring.current, nonce, wrapped };
        self.inner.put(&rewrapped_key(location), rewrap.to_bytes().into()).await?;
        Ok(true)
    }

    /// The raw DEK (for re-wrapping), from the header or an earlier re-wrap.
    async fn unwrap_dek_bytes(
        &self,
        ring: &KeyRing,
        location: &Path,
        header: &Header,
    ) -> object_store::Result<[u8; 32]> {
        let aad = header.wrap_aad(location);
        let (kek, nonce, wrapped) = match ring.keys.get(&header.fingerprint) {
            Some(kek) => (kek, header.wrap_nonce, header.wrapped.to_vec()),
            None => match self.read_rewrap(location).await? {
                Some(rewrap) if rewrap.object_id == header.object_id => match ring.keys.get(&rewrap.fingerprint) {
                    Some(kek) => (kek, rewrap.nonce, rewrap.wrapped),
                    None => return Err(self.missing_key(location, &rewrap.fingerprint)),
                },
                _ => return Err(self.missing_key(location, &header.fingerprint)),
            },
        };
        let mut buffer = wrapped;
        let opened = kek
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buffer)
            .map_err(|_| crypto_error(location, "its data key does not open (tampered, or moved from another key)"))?;
        let mut dek = [0; 32];
        if opened.len() != 32 {
            return Err(crypto_error(location, "its data key has the wrong length"));
        }
        dek.copy_from_slice(opened);
        Ok(dek)
    }
}

/// A parsed object header.
struct Header {
    prefix: [u8; WRAP_AAD_BYTES],
    fingerprint: [u8; 16],
    object_id: [u8; 16],
    wrap_nonce: [u8; NONCE_LEN],
    wrapped: [u8; 48],
    bound: bool,
}

impl Header {
    fn wrap_aad(&self, location: &Path) -> Vec<u8> {
        let mut aad = self.prefix.to_vec();
        if self.bound {
            aad.extend_from_slice(location.as_ref().as_bytes());
        }
        aad
    }
}

fn parse_header(location: &Path, bytes: &[u8]) -> object_store::Result<Header> {
    if bytes.len() < HEADER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        return Err(crypto_error(location, "not encrypted by Wharf (no header): written around the registry?"));
    }
    if bytes[8] != FORMAT_VERSION || bytes[10] != SEGMENT_LOG2 {
        return Err(crypto_error(
            location,
            format!("unknown encryption format {} / segment 2^{}", bytes[8], bytes[10]),
        ));
    }
    let mut header = Header {
        prefix: [0; WRAP_AAD_BYTES],
        fingerprint: [0; 16],
        object_id: [0; 16],
        wrap_nonce: [0; NONCE_LEN],
        wrapped: [0; 48],
        bound: bytes[9] & FLAG_BOUND_TO_KEY != 0,
    };
    header.prefix.copy_from_slice(&bytes[..WRAP_AAD_BYTES]);
    header.fingerprint.copy_from_slice(&bytes[FINGERPRINT]);
    header.object_id.copy_from_slice(&bytes[OBJECT_ID]);
    header.wrap_nonce.copy_from_slice(&bytes[WRAP_NONCE]);
    header.wrapped.copy_from_slice(&bytes[WRAPPED_DEK]);
    Ok(header)
}

/// A DEK re-wrapped under a newer key.
struct Rewrap {
    object_id: [u8; 16],
    fingerprint: [u8; 16],
    nonce: [u8; NONCE_LEN],
    wrapped: Vec<u8>,
}

impl Rewrap {
    fn parse(bytes: &[u8]) -> Option<Rewrap> {
        if bytes.len() != REWRAP_BYTES {
            return None;
        }
        let mut rewrap =
            Rewrap { object_id: [0; 16], fingerprint: [0; 16], nonce: [0; NONCE_LEN], wrapped: bytes[44..].to_vec() };
        rewrap.object_id.copy_from_slice(&bytes[..16]);
        rewrap.fingerprint.copy_from_slice(&bytes[16..32]);
        rewrap.nonce.copy_from_slice(&bytes[32..44]);
        Some(rewrap)
    }

    fn to_bytes(&self) -> Vec<u8> {
        [&self.object_id[..], &self.fingerprint, &self.nonce, &self.wrapped].concat()
    }
}

/// Seals segments with one object's DEK, in order.
struct Sealer {
    dek: LessSafeKey,
    next_segment: u64,
}

impl Sealer {
    /// A fresh DEK wrapped under the ring's current key; the header to write first.
    fn new(ring: &KeyRing, bound_to: Option<&Path>) -> (Sealer, Vec<u8>) {
        let dek_bytes: [u8; 32] = rand::random();
        let object_id: [u8; 16] = rand::random();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&[
            FORMAT_VERSION,
            if bound_to.is_some() { FLAG_BOUND_TO_KEY } else { 0 },
            SEGMENT_LOG2,
            0,
        ]);
        header.extend_from_slice(&ring.current);
        header.extend_from_slice(&object_id);
        let mut aad = header.clone();
        if let Some(location) = bound_to {
            aad.extend_from_slice(location.as_ref().as_bytes());
        }
        header.extend_from_slice(&nonce);
        let mut wrapped = dek_bytes.to_vec();
        // Sealing 32 bytes with a valid key cannot fail.
        if let Ok(tag) = ring.current().key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut wrapped,
        ) {
            wrapped.extend_from_slice(tag.as_ref());
        }
        header.extend_from_slice(&wrapped);
        let dek = aes_key(&dek_bytes).unwrap_or_else(|| unreachable!("32 bytes make an AES-256 key"));
        (Sealer { dek, next_segment: 0 }, header)
    }

    /// Appends the sealed form of `plain` (at most one segment) to `out`.
    fn seal_segment(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        self.seal_tail(out, start, last);
    }

    /// Seals `out[start..]` (at most one segment of plaintext) in place and appends its tag.
    fn seal_tail(&mut self, out: &mut Vec<u8>, start: usize, last: bool) {
        let nonce = segment_nonce(self.next_segment, last);
        if let Ok(tag) = self.dek.seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[start..]) {
            out.extend_from_slice(tag.as_ref());
        }
        self.next_segment += 1;
    }

    /// Seals `plain` as whole segments, the last flagged when `ends` says so.
    fn seal(&mut self, plain: &[u8], ends: bool, out: &mut Vec<u8>) {
        let mut chunks = plain.chunks(SEGMENT_BYTES).peekable();
        if plain.is_empty() && ends {
            self.seal_segment(&[], true, out);
        }
        while let Some(chunk) = chunks.next() {
            let last = ends && chunks.peek().is_none() && chunk.len() < SEGMENT_BYTES;
            self.seal_segment(chunk, last, out);
        }
        // A body that is a whole number of segments ends with an empty last one.
        if ends && !plain.is_empty() && plain.len().is_multiple_of(SEGMENT_BYTES) {
            self.seal_segment(&[], true, out);
        }
    }
}

fn segment_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[8] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

fn open_segment(
    dek: &LessSafeKey,
    location: &Path,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> object_store::Result<Bytes> {
    let mut buffer = sealed.to_vec();
    let plain = dek.open_in_place(segment_nonce(index, last), Aad::empty(), &mut buffer).map_err(|_| {
        crypto_error(location, format!("segment {index} does not open: the object is damaged, truncated or reordered"))
    })?;
    let length = plain.len();
    buffer.truncate(length);
    Ok(Bytes::from(buffer))
}

/// Seals a whole object in memory.
fn seal_whole(ring: &KeyRing, location: &Path, plain: &[u8]) -> Vec<u8> {
    let (mut sealer, mut out) = Sealer::new(ring, Some(location));
    out.reserve(sealed_size(plain.len() as u64) as usize - HEADER_BYTES);
    sealer.seal(plain, true, &mut out);
    out
}

/// Segments of an object of `size` plaintext bytes (the last may be empty).
fn segment_count(size: u64) -> u64 {
    size / SEGMENT_BYTES as u64 + 1
}

/// Stored size of an object of `size` plaintext bytes.
pub fn sealed_size(size: u64) -> u64 {
    HEADER_BYTES as u64 + size + TAG_BYTES as u64 * segment_count(size)
}

/// Plaintext size of a stored object of `sealed` bytes.
fn plaintext_size(location: &Path, sealed: u64) -> object_store::Result<u64> {
    let body = sealed
        .checked_sub((HEADER_BYTES + TAG_BYTES) as u64)
        .ok_or_else(|| crypto_error(location, "too short to be encrypted"))?;
    let full = body / SEALED_SEGMENT_BYTES as u64;
    let rest = body % SEALED_SEGMENT_BYTES as u64;
    if rest >= SEGMENT_BYTES as u64 {
        return Err(crypto_error(location, "its size is not that of an encrypted object (truncated?)"));
    }
    Ok(full * SEGMENT_BYTES as u64 + rest)
}

fn plaintext_meta(meta: ObjectMeta) -> ObjectMeta {
    let size = plaintext_size(&meta.location, meta.size).unwrap_or(0);
    ObjectMeta { size, ..meta }
}

/// Segments opened per chunk handed on: 256 KiB, as unencrypted files are read.
const SEGMENTS_PER_CHUNK: u64 = 4;

type SealedReader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// The stored bytes of a get as a reader, whatever the backend returned: a local file is
/// read straight into the buffers segments are opened in, a stream through one copy.
async fn sealed_reader(result: GetResult) -> object_store::Result<SealedReader> {
    match result.payload {
        GetResultPayload::Stream(stream) => {
            Ok(Box::pin(tokio_util::io::StreamReader::new(stream.map_err(std::io::Error::other))))
        }
        GetResultPayload::File(file, path) => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let failed = |source: std::io::Error| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("{}: {source}", path.display()).into(),
            };
            let mut file = tokio::fs::File::from_std(file);
            file.seek(std::io::SeekFrom::Start(result.range.start)).await.map_err(failed)?;
            Ok(Box::pin(file.take(result.range.end - result.range.start)))
        }
    }
}

fn read_failed(location: &Path, error: std::io::Error) -> object_store::Error {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        crypto_error(location, "ended before its last segment (truncated)")
    } else {
        object_store::Error::Generic { store: "wharf-encryption", source: Box::new(error) }
    }
}

/// Opens segments `segment..` of an object as they are read, yielding the plaintext in
/// `wanted` (offsets in the object's plaintext), several segments per chunk.
struct Opening {
    sealed: SealedReader,
    location: Path,
    dek: Arc<LessSafeKey>,
    segment: u64,
    segments: u64,
    size: u64,
    wanted: Range<u64>,
}

impl Opening {
    fn into_stream(self) -> BoxStream<'static, object_store::Result<Bytes>> {
        use tokio::io::AsyncReadExt;
        futures::stream::try_unfold(self, |mut state| async move {
            let segment_bytes = SEGMENT_BYTES as u64;
            if state.segment >= state.segments || state.segment * segment_bytes >= state.wanted.end {
                return Ok(None);
            }
            let first = state.segment;
            let needed = (state.wanted.end - 1) / segment_bytes;
            let count = (needed.min(state.segments - 1) - first + 1).min(SEGMENTS_PER_CHUNK);
            let plain_start = first * segment_bytes;
            let plain_end = ((first + count) * segment_bytes).min(state.size);
            let sealed_len = (plain_end - plain_start) as usize + count as usize * TAG_BYTES;
            let mut buffer = BytesMut::zeroed(sealed_len);
            state.sealed.read_exact(&mut buffer).await.map_err(|e| read_failed(&state.location, e))?;
            // Open each segment where it lies, then close the gaps its tags leave.
            let mut plain_len = 0;
            let mut at = 0;
            for index in first..first + count {
                let length = (sealed_len - at).min(SEALED_SEGMENT_BYTES);
                let last = index + 1 == state.segments;
                let opened = state
                    .dek
                    .open_in_place(segment_nonce(index, last), Aad::empty(), &mut buffer[at..at + length])
                    .map_err(|_| {
                        crypto_error(
                            &state.location,
                            format!("segment {index} does not open: the object is damaged, truncated or reordered"),
                        )
                    })?
                    .len();
                buffer.copy_within(at..at + opened, plain_len);
                plain_len += opened;
                at += length;
            }
            buffer.truncate(plain_len);
            state.segment += count;
            let plain = buffer.freeze();
            let from = state.wanted.start.saturating_sub(plain_start).min(plain_len as u64) as usize;
            let to = (state.wanted.end - plain_start).min(plain_len as u64) as usize;
            Ok(Some((plain.slice(from..to.max(from)), state)))
        })
        .try_filter(|chunk| futures::future::ready(!chunk.is_empty()))
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for EncryptedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let ring = self.sealing_ring(location)?;
        let mut plain = Vec::with_capacity(payload.content_length());
        for chunk in payload.iter() {
            plain.extend_from_slice(chunk);
        }
        let sealed = seal_whole(&ring, location, &plain);
        self.inner.put_opts(location, sealed.into(), opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let ring = self.sealing_ring(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        let (sealer, header) = Sealer::new(&ring, None);
        Ok(Box::new(SealingUpload {
            inner,
            sealer,
            header: Some(header),
            pending: Default::default(),
            pending_bytes: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        if options.head {
            let mut result = self.inner.get_opts(location, options).await?;
            result.meta = plaintext_meta(result.meta);
            result.range = 0..result.meta.size;
            return Ok(result);
        }
        let wanted = options.range.clone();
        let Some(wanted) = wanted else {
            let result = self.inner.get_opts(location, options).await?;
            return self.open_from_start(location, result).await;
        };
        // A range: fetch only its segments (the size first, for a suffix).
        let bounded = match wanted {
            GetRange::Bounded(range) => range,
            GetRange::Offset(start) => start..u64::MAX,
            GetRange::Suffix(n) => {
                let head = self.inner.get_opts(location, GetOptions { head: true, ..Default::default() }).await?;
                let size = plaintext_size(location, head.meta.size)?;
                size.saturating_sub(n)..size
            }
        };
        if bounded.start >= bounded.end {
            return Err(object_store::Error::Generic {
                store: "wharf-encryption",
                source: format!("{location}: empty range {bounded:?}").into(),
            });
        }
        let first = bounded.start / SEGMENT_BYTES as u64;
        let last = (bounded.end - 1) / SEGMENT_BYTES as u64;
        let sealed_start = HEADER_BYTES as u64 + first * SEALED_SEGMENT_BYTES as u64;
        let sealed_end = (HEADER_BYTES as u64).saturating_add((last + 1).saturating_mul(SEALED_SEGMENT_BYTES as u64));
        let options = GetOptions { range: Some(GetRange::Bounded(sealed_start..sealed_end)), ..options };
        let result = self.inner.get_opts(location, options).await?;
        let size = plaintext_size(location, result.meta.size)?;
        let end = bounded.end.min(size);
        if bounded.start >= size && size > 0 {
            return Err(object_store::Error::Generic {
                store: "wharf-encryption",
                source: format!("{location}: range {bounded:?} starts past the end ({size} bytes)").into(),
            });
        }
        let dek = self.dek_for_range(location, result.meta.e_tag.as_deref()).await?;
        let meta = ObjectMeta { size, ..result.meta.clone() };
        let attributes = result.attributes.clone();
        let extensions = result.extensions.clone();
        let opening = Opening {
            sealed: sealed_reader(result).await?,
            location: location.clone(),
            dek,
            segment: first,
            segments: segment_count(size),
            size,
            wanted: bounded.start..end,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(opening.into_stream()),
            meta,
            range: bounded.start..end,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix).map_ok(plaintext_meta).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset).map_ok(plaintext_meta).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listing = self.inner.list_with_delimiter(prefix).await?;
        listing.objects = listing.objects.into_iter().map(plaintext_meta).collect();
        Ok(listing)
    }

    /// Copies the stored bytes: an object written in parts opens at its new key, one
    /// written whole is bound to its old key and refuses to (loudly, never wrongly).
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

impl EncryptedStore {
    async fn open_from_start(&self, location: &Path, result: GetResult) -> object_store::Result<GetResult> {
        use tokio::io::AsyncReadExt;
        let size = plaintext_size(location, result.meta.size)?;
        let meta = ObjectMeta { size, ..result.meta.clone() };
        let attributes = result.attributes.clone();
        let extensions = result.extensions.clone();
        let e_tag = result.meta.e_tag.clone();
        let mut sealed = sealed_reader(result).await?;
        let mut header = [0u8; HEADER_BYTES];
        sealed.read_exact(&mut header).await.map_err(|e| read_failed(location, e))?;
        let header = parse_header(location, &header)?;
        let ring = self.opening_ring(location)?;
        let dek = self.unwrap_dek(&ring, location, &header, e_tag.as_deref()).await?;
        let opening = Opening {
            sealed,
            location: location.clone(),
            dek,
            segment: 0,
            segments: segment_count(size),
            size,
            wanted: 0..size,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(opening.into_stream()),
            meta,
            range: 0..size,
            attributes,
            extensions,
        })
    }
}

/// A multipart upload that seals as it goes: whole parts of 80 segments, holding back
/// the end so the last segment (flagged) goes out with the last part.
struct SealingUpload {
    inner: Box<dyn MultipartUpload>,
    sealer: Sealer,
    /// The header, sent in front of the first part.
    header: Option<Vec<u8>>,
    /// Plaintext not sealed yet: the chunks as they came, not copied.
    pending: std::collections::VecDeque<Bytes>,
    pending_bytes: usize,
}

impl fmt::Debug for SealingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingUpload").field("inner", &self.inner).finish()
    }
}

impl SealingUpload {
    /// Seals the next `bytes` of pending plaintext into one part, gathering each segment
    /// straight into the part it is sealed in; the last segment flagged when `ends`.
    fn sealed_part(&mut self, bytes: usize, ends: bool) -> PutPayload {
        let mut out = self.header.take().unwrap_or_default();
        out.reserve(bytes + (bytes / SEGMENT_BYTES + 2) * TAG_BYTES);
        let mut remaining = bytes;
        loop {
            let take = remaining.min(SEGMENT_BYTES);
            let start = out.len();
            let mut needed = take;
            while needed > 0 {
                let Some(front) = self.pending.front_mut() else { break };
                let n = needed.min(front.len());
                out.extend_from_slice(&front[..n]);
                bytes::Buf::advance(front, n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                needed -= n;
            }
            self.pending_bytes -= take;
            remaining -= take;
            // A segment of less than full size is the last; a body of whole segments
            // ends with an empty last one.
            let last = ends && remaining == 0 && take < SEGMENT_BYTES;
            self.sealer.seal_tail(&mut out, start, last);
            if remaining == 0 {
                if ends && take == SEGMENT_BYTES {
                    let start = out.len();
                    self.sealer.seal_tail(&mut out, start, true);
                }
                break;
            }
        }
        out.into()
    }
}

#[async_trait]
impl MultipartUpload for SealingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for chunk in data.iter() {
            self.pending_bytes += chunk.len();
            self.pending.push_back(chunk.clone());
        }
        let mut parts = Vec::new();
        // Strictly more than a part: the end stays behind for the flagged last segment.
        while self.pending_bytes > PART_PLAINTEXT_BYTES {
            let payload = self.sealed_part(PART_PLAINTEXT_BYTES, false);
            parts.push(self.inner.put_part(payload));
        }
        Box::pin(async move {
            futures::future::try_join_all(parts).await?;
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let payload = self.sealed_part(self.pending_bytes, true);
        self.inner.put_part(payload).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{BodyError, Created, Storage, keys};
    use object_store::memory::InMemory;

    fn ring(current: &str, ids: &[&str]) -> KeyRing {
        let keys = ids.iter().map(|id| (id.to_string(), Sha256::digest(id.as_bytes()).to_vec())).collect();
        KeyRing::new("test keys".to_owned(), current, keys).unwrap()
    }

    /// Storage encrypting into `raw`, with its keys checked.
    async fn encrypted(raw: Arc<dyn ObjectStore>, keys: KeyRing) -> Storage {
        let storage = Storage::new(raw).with_encryption(|inner| EncryptedStore::with_keys(inner, keys));
        storage.check_encryption().await.unwrap();
        assert_eq!(storage.encryption().unwrap().unavailable(), None);
        storage
    }

    /// Bytes that show where they sit: every 8 bytes say their offset.
    fn content(size: usize) -> Vec<u8> {
        (0..size.div_ceil(8)).flat_map(|i| format!("{:07x}|", i * 8).into_bytes()).take(size).collect()
    }

    async fn stage(storage: &Storage, bytes: &[u8], chunk: usize) -> crate::BlobDigests {
        let chunks: Vec<Result<Bytes, BodyError>> =
            bytes.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        storage.stage_blob(futures::stream::iter(chunks), u64::MAX).await.unwrap().commit().await.unwrap()
    }

    async fn read(storage: &Storage, sha256: &str, size: u64, range: Option<Range<u64>>) -> Vec<u8> {
        let body = storage.open_blob(sha256, size, range).await.unwrap().unwrap();
        let chunks: Vec<Bytes> = body.stream.try_collect().await.unwrap();
        chunks.concat()
    }

    async fn raw_objects(raw: &Arc<dyn ObjectStore>) -> Vec<(Path, Bytes)> {
        let metas: Vec<ObjectMeta> = raw.list(None).try_collect().await.unwrap();
        let mut objects = Vec::new();
        for meta in metas {
            let bytes = raw.get(&meta.location).await.unwrap().bytes().await.unwrap();
            objects.push((meta.location, bytes));
        }
        objects
    }

    #[tokio::test]
    async fn blobs_of_every_size_round_trip_and_nothing_stored_is_readable() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let storage = encrypted(raw.clone(), ring("k1", &["k1"])).await;
        let sizes = [0, 1, SEGMENT_BYTES - 1, SEGMENT_BYTES, SEGMENT_BYTES + 1, 5 * 1024 * 1024, 11 * 1024 * 1024 + 7];
        let mut stored = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let bytes = content(size);
            // Chunk sizes that do not line up with segments or parts.
            let digests = stage(&storage, &bytes, [1000, 65_537, 3 * 1024 * 1024][i % 3]).await;
            assert_eq!(digests.size, size as u64);
            assert_eq!(read(&storage, &digests.sha256, digests.size, None).await, bytes, "size {size}");
            let sealed = raw.head(&keys::blob(&digests.sha256)).await.unwrap().size;
            assert_eq!(sealed, sealed_size(size as u64), "size {size}");
            stored.push((digests, bytes));
        }
        // Ranges across segment edges, inside one segment and up to the end.
        let (big, bytes) = &stored[6];
        let s = SEGMENT_BYTES as u64;
        for range in [0..1, s - 3..s + 3, 5..s, s..2 * s, 3 * s + 17..9 * s - 1, big.size - 10..big.size, 70..5_300_000]
        {
            let expected = &bytes[range.start as usize..range.end as usize];
            assert_eq!(read(&storage, &big.sha256, big.size, Some(range.clone())).await, expected, "{range:?}");
        }
        // Records are encrypted too; the small-blob path reads whole objects.
        storage
            .create_json(&keys::version_record("r", "npm", "secret-name", "1.0.0"), &"publisher: alice".to_owned())
            .await
            .unwrap();
        let small = storage.put_small_blob(Bytes::from_static(b"METADATA of secret-name")).await.unwrap();
        assert_eq!(read(&storage, &small.sha256, small.size, None).await, b"METADATA of secret-name");
        for (location, bytes) in raw_objects(&raw).await {
            assert!(bytes.starts_with(MAGIC), "{location} is not encrypted");
            for needle in [&b"0000008|"[..], b"publisher", b"alice", b"secret-name", b"METADATA"] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{location} shows {needle:?}");
            }
        }
    }

    #[tokio::test]
    async fn damaged_truncated_reordered_or_moved_objects_do_not_open() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let storage = encrypted(raw.clone(), ring("k1", &["k1"])).await;
        let bytes = content(3 * SEGMENT_BYTES + 100);
        let blob = stage(&storage, &bytes, 4096).await;
        let key = keys::blob(&blob.sha256);
        let sealed = raw.get(&key).await.unwrap().bytes().await.unwrap();
        let segment = |i: usize| HEADER_BYTES + i * SEALED_SEGMENT_BYTES..HEADER_BYTES + (i + 1) * SEALED_SEGMENT_BYTES;
        let mut truncated = sealed[..segment(3).start].to_vec();
        let mut reordered = sealed.to_vec();
        reordered[segment(0)].copy_from_slice(&sealed[segment(1)]);
        reordered[segment(1)].copy_from_slice(&sealed[segment(0)]);
        let mut flipped = sealed.to_vec();
        flipped[segment(2).start + 10] ^= 1;
        let mut header = sealed.to_vec();
        header[OBJECT_ID.start] ^= 1;
        for (what, damaged) in [
            ("truncated", &mut truncated),
            ("reordered", &mut reordered),
            ("flipped", &mut flipped),
            ("header", &mut header),
        ] {
            raw.put(&key, Bytes::from(damaged.clone()).into()).await.unwrap();
            let opened = match storage.open_blob(&blob.sha256, blob.size, None).await {
                Ok(body) => body.unwrap().stream.try_collect::<Vec<Bytes>>().await.map(|_| ()),
                Err(e) => Err(std::io::Error::other(e)),
            };
            assert!(opened.is_err(), "{what} object opened");
        }
        // A record copied over another record's key does not open there.
        let a = keys::version_record("r", "npm", "a", "1.0.0");
        let b = keys::version_record("r", "npm", "b", "1.0.0");
        storage.create_json(&a, &"a".to_owned()).await.unwrap();
        storage.create_json(&b, &"b".to_owned()).await.unwrap();
        raw.copy(&a, &b).await.unwrap();
        let error = storage.read_json::<String>(&b).await.unwrap_err();
        assert!(wharf_diagnostics::error_chain(&error).contains("does not open"), "{error:?}");
    }

    #[tokio::test]
    async fn rotation_seals_with_the_new_key_and_rekey_lets_the_old_one_go() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let storage = encrypted(raw.clone(), ring("k1", &["k1"])).await;
        let encryption = storage.encryption().unwrap().clone();
        let old = stage(&storage, &content(200_000), 10_000).await;
        let record = keys::version_record("r", "npm", "p", "1.0.0");
        storage.create_json(&record, &"old".to_owned()).await.unwrap();

        // Removing the key before re-keying: not ready, and nothing is served wrongly.
        encryption.set_keys(ring("k2", &["k2"]));
        encryption.refresh().await;
        let why = encryption.unavailable().unwrap();
        assert!(why.contains("does not hold") && why.contains("rekey"), "{why}");
        assert!(storage.put_small_blob(Bytes::from_static(b"refused")).await.is_err(), "a write with an unchecked key");
        let check = storage.check().await.unwrap_err().to_string();
        assert!(check.contains("encryption keys cannot be used"), "{check}");

        // Rotation: both keys, the new one current.
        encryption.set_keys(ring("k2", &["k1", "k2"]));
        encryption.refresh().await;
        assert_eq!(encryption.unavailable(), None);
        let new = stage(&storage, &content(70_000), 5_000).await;
        let sealed = raw.get(&keys::blob(&new.sha256)).await.unwrap().bytes().await.unwrap();
        assert_eq!(&sealed[FINGERPRINT], &fingerprint(&Sha256::digest(b"k2")), "new writes use the current key");

        let mut reports = Vec::new();
        let report = encryption.rekey(|r| reports.push(r.clone())).await.unwrap();
        assert_eq!(report.rewrapped, 3, "the old blob, the record and the canary: {report:?}");
        let again = encryption.rekey(|_| {}).await.unwrap();
        assert_eq!(again.rewrapped, 0, "a second run finds everything done: {again:?}");

        encryption.set_keys(ring("k2", &["k2"]));
        encryption.refresh().await;
        assert_eq!(encryption.unavailable(), None);
        assert_eq!(read(&storage, &old.sha256, old.size, Some(1000..90_000)).await, &content(200_000)[1000..90_000]);
        assert_eq!(read(&storage, &old.sha256, old.size, None).await, content(200_000));
        assert_eq!(storage.read_json::<String>(&record).await.unwrap().as_deref(), Some("old"));
        // The data was never rewritten.
        let after = raw.get(&keys::blob(&old.sha256)).await.unwrap().bytes().await.unwrap();
        assert_eq!(&after[FINGERPRINT], &fingerprint(&Sha256::digest(b"k1")));
        let fresh =
            Storage::new(raw.clone()).with_encryption(|inner| EncryptedStore::with_keys(inner, ring("k2", &["k2"])));
        fresh.check_encryption().await.unwrap();
        assert_eq!(fresh.read_json::<String>(&record).await.unwrap().as_deref(), Some("old"), "a new process");
    }

    #[tokio::test]
    async fn plaintext_and_encrypted_data_are_never_mixed() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plain = Storage::new(raw.clone());
        assert!(matches!(
            plain.create_json(&keys::package_origin("npm", "x"), &"x".to_owned()).await.unwrap(),
            Created::Created
        ));
        let storage =
            Storage::new(raw.clone()).with_encryption(|inner| EncryptedStore::with_keys(inner, ring("k1", &["k1"])));
        storage.check_encryption().await.unwrap();
        let why = storage.encryption().unwrap().unavailable().unwrap();
        assert!(why.contains("unencrypted data"), "{why}");

        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        encrypted(raw.clone(), ring("k1", &["k1"])).await;
        let error = Storage::new(raw).check_encryption().await.unwrap_err().to_string();
        assert!(error.contains("names no encryption key"), "{error}");
    }

    #[tokio::test]
    async fn a_local_folder_serves_ranges_from_files() {
        let folder = tempfile::tempdir().unwrap();
        let raw: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap());
        let storage = encrypted(raw, ring("k1", &["k1"])).await;
        let bytes = content(300_000);
        let blob = stage(&storage, &bytes, 50_000).await;
        assert_eq!(read(&storage, &blob.sha256, blob.size, Some(65_000..140_000)).await, &bytes[65_000..140_000]);
        assert_eq!(read(&storage, &blob.sha256, blob.size, None).await, bytes);
    }

    #[test]
    fn key_secrets_are_read_with_their_current_key_and_refused_clearly() {
        let folder = tempfile::tempdir().unwrap();
        let secrets = SecretsDir::new(folder.path());
        let secret = folder.path().join("keys");
        std::fs::create_dir(&secret).unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(secret.join("k1"), format!("{key}\n")).unwrap();
        let missing = KeyRing::from_secret(&secrets, "keys").unwrap_err().to_string();
        assert!(missing.contains("no \"current\" entry"), "{missing}");
        std::fs::write(secret.join("current"), "k2").unwrap();
        let unknown = KeyRing::from_secret(&secrets, "keys").unwrap_err().to_string();
        assert!(unknown.contains("names key \"k2\""), "{unknown}");
        std::fs::write(secret.join("k2"), "c2hvcnQ=").unwrap();
        let short = KeyRing::from_secret(&secrets, "keys").unwrap_err().to_string();
        assert!(short.contains("\"k2\" is not 32 bytes"), "{short}");
        std::fs::write(secret.join("k2"), &key).unwrap();
        let same = KeyRing::from_secret(&secrets, "keys").unwrap_err().to_string();
        assert!(same.contains("same key"), "{same}");
        std::fs::write(secret.join("k2"), base64::engine::general_purpose::STANDARD.encode([8u8; 32])).unwrap();
        // A Secret volume's own links are not keys.
        std::fs::create_dir(secret.join("..2026_12_05")).unwrap();
        let ring = KeyRing::from_secret(&secrets, "keys").unwrap();
        assert_eq!(ring.current_id(), "k2");
        assert_eq!(ring.keys.len(), 2);
        let absent = KeyRing::from_secret(&secrets, "absent").unwrap_err().to_string();
        assert!(absent.contains("Secret \"absent\""), "{absent}");
    }
}
