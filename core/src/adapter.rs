//! What a format supplies to the read pipeline ([`crate::Packages`]): how to
//! read a package's versions from an external connection, and where files
//! come from that the upstream's metadata does not list. Implemented by each
//! format in `wharf-formats`; the pipeline does the rest (chains, policy,
//! origins, caching, fetching, checking and keeping files) the same way for
//! all of them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use wharf_api::PackageFormat;
use wharf_upstream::{Absence, Document, UpstreamClient};

use crate::chain::Consulted;
use crate::{CoreError, PackageId, PackageIndex};

/// One format's part in reading through external connections.
#[async_trait::async_trait]
pub trait FormatAdapter: Send + Sync {
    /// The format this adapter speaks.
    fn format(&self) -> PackageFormat;

    /// The upstream's versions of `id` as unstored entries: each asset's
    /// metadata names its URL under [`crate::UPSTREAM_URL`] and its digests
    /// are those the upstream declares. `spelling` is the name as the client
    /// wrote it (Cargo index paths depend on it). `None` when the upstream
    /// has no such package. When [`UpstreamSource::needs_dates`], each
    /// version's `created` must be the upstream's date for it (cooldown
    /// compares it); one that cannot be dated counts as new.
    async fn upstream_index(
        &self,
        upstream: &UpstreamSource<'_>,
        id: &PackageId,
        spelling: &str,
    ) -> Result<Option<PackageIndex>, CoreError>;

    /// An origin files may be fetched from besides the connection's own and
    /// its `fileOrigins`, as the upstream itself declares it (Cargo's `dl`).
    async fn declared_file_origin(&self, _upstream: &UpstreamSource<'_>) -> Result<Option<String>, CoreError> {
        Ok(None)
    }

    /// Where a file of an upstream version comes from when the upstream's
    /// metadata lists versions but no files (Maven: the repository layout),
    /// with the URL of a SHA-1 sidecar to check it against.
    fn layout_file(&self, _base: &str, _id: &PackageId, _version: &str, _file_name: &str) -> Option<LayoutFile> {
        None
    }

    /// The SHA-1 in a sidecar named by [`LayoutFile::sha1_url`].
    fn parse_sha1_sidecar(&self, _body: &[u8]) -> Option<String> {
        None
    }
}

/// A file found by the repository layout rather than listed by the upstream.
pub struct LayoutFile {
    pub url: String,
    pub sha1_url: String,
}

/// The adapters of every format the registry serves.
#[derive(Clone, Default)]
pub struct Adapters(HashMap<PackageFormat, Arc<dyn FormatAdapter>>);

impl Adapters {
    pub fn new(adapters: impl IntoIterator<Item = Arc<dyn FormatAdapter>>) -> Self {
        Adapters(adapters.into_iter().map(|adapter| (adapter.format(), adapter)).collect())
    }

    pub fn get(&self, format: PackageFormat) -> Option<&dyn FormatAdapter> {
        self.0.get(&format).map(|adapter| &**adapter)
    }
}

/// An external connection as an adapter reads it: through the client's
/// metadata cache (so TTLs, revalidation and stale copies apply), with each
/// document read noted so a kept view knows what it was built from.
pub struct UpstreamSource<'a> {
    pub(crate) client: &'a UpstreamClient,
    pub(crate) consulted: &'a Consulted,
    pub(crate) connection: &'a str,
    pub(crate) base: &'a str,
    pub(crate) ttl: std::time::Duration,
    pub(crate) absence: Absence,
    pub(crate) needs_dates: bool,
}

impl UpstreamSource<'_> {
    /// The connection's URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.base
    }

    /// The connection's name, for messages.
    pub fn connection(&self) -> &str {
        self.connection
    }

    /// Whether a cooldown applies, so versions must carry upstream dates.
    pub fn needs_dates(&self) -> bool {
        self.needs_dates
    }

    /// A metadata document; its body is `None` when the upstream has none.
    pub async fn read(&self, url: &str, accept: &'static str) -> Result<Document, CoreError> {
        self.consulted
            .read(self.client, self.connection, url, accept, self.ttl, self.absence)
            .await
            .map_err(|e| CoreError::upstream(&e))
    }

    /// A document's body, `None` when the upstream has none.
    pub async fn read_body(&self, url: &str, accept: &'static str) -> Result<Option<Bytes>, CoreError> {
        Ok(self.read(url, accept).await?.body)
    }

    /// The upstream sent metadata that cannot be read.
    pub fn unreadable(&self, error: impl std::fmt::Display) -> CoreError {
        CoreError::upstream_unusable(format!(
            "external connection {} sent unreadable metadata: {error}",
            self.connection
        ))
    }
}
