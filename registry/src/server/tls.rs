//! HTTPS served by the registry itself: a certificate and key read from PEM files (a
//! mounted `kubernetes.io/tls` Secret, a cert-manager certificate) and read again when
//! they change, so a renewal takes effect without a restart. ALPN offers HTTP/2 and
//! HTTP/1.1. A pair that does not load (half-written files, a key that is not the
//! certificate's) is refused with a warning and the previous pair stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Where the certificate chain and its private key are, as PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the private key in {path} cannot sign: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    #[error("the private key in {key} does not belong to the certificate in {certificate}")]
    Mismatch { certificate: PathBuf, key: PathBuf },
}

/// The certificate being served, swapped when its files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes when loaded (or last refused): a reload happens when they differ.
    digest: [u8; 32],
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).key.clone())
    }
}

impl ReloadingCertificate {
    /// Loads `files` now: a registry asked to serve HTTPS does not start without a usable pair.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingCertificate>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (key, digest) = load_pair(&files, &provider)?;
        let current = RwLock::new(Loaded { key: Arc::new(key), digest });
        Ok(Arc::new(ReloadingCertificate { files, provider, current }))
    }

    /// The TLS side of the listener: this certificate, TLS 1.2 and 1.3, HTTP/2 preferred.
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default protocol versions");
        let mut config = builder.with_no_client_auth().with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Reads the files again when their bytes changed; `Ok(true)` when a new pair is served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let digest = digest_of(&self.files)?;
        if digest == self.current.read().unwrap_or_else(|e| e.into_inner()).digest {
            return Ok(false);
        }
        let loaded = load_pair(&self.files, &self.provider);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok((key, digest)) => {
                *current = Loaded { key: Arc::new(key), digest };
                Ok(true)
            }
            Err(error) => {
                // The same bad bytes are not reported again; new ones are tried again.
                current.digest = digest;
                Err(error)
            }
        }
    }

    /// Checks the files every `interval` until the process ends.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            match self.reload() {
                Ok(false) => {}
                Ok(true) => tracing::info!(
                    certificate = %self.files.certificate.display(),
                    "TLS certificate reloaded; new connections get it"
                ),
                Err(error) => tracing::warn!(%error, "TLS certificate not reloaded; the previous one stays in use"),
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn digest_of(files: &TlsFiles) -> Result<[u8; 32], TlsError> {
    let mut hasher = Sha256::new();
    hasher.update(read(&files.certificate)?);
    hasher.update(read(&files.key)?);
    Ok(hasher.finalize().into())
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<(CertifiedKey, [u8; 32]), TlsError> {
    let (certificate_pem, key_pem) = (read(&files.certificate)?, read(&files.key)?);
    let mut hasher = Sha256::new();
    hasher.update(&certificate_pem);
    hasher.update(&key_pem);
    let digest = hasher.finalize().into();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certificate_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate { path: files.certificate.clone() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.certificate.clone() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| TlsError::NoKey { path: files.key.clone(), reason: error.to_string() })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::UnusableKey { path: files.key.clone(), reason: error.to_string() })?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch { certificate: files.certificate.clone(), key: files.key.clone() });
    }
    Ok((certified, digest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn issue(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        let files = TlsFiles { certificate: dir.join("tls.crt"), key: dir.join("tls.key") };
        std::fs::write(&files.certificate, certificate.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn served(certificate: &ReloadingCertificate) -> Vec<u8> {
        certificate.current.read().unwrap().key.end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_is_refused_keeping_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let files = issue(dir.path(), "first.test");
        let certificate = ReloadingCertificate::load(files.clone()).unwrap();
        let first = served(&certificate);
        assert!(!certificate.reload().unwrap(), "nothing changed");

        // Half a rotation: the new certificate with the old key.
        let old_key = std::fs::read(&files.key).unwrap();
        issue(dir.path(), "second.test");
        let new_key = std::fs::read(&files.key).unwrap();
        std::fs::write(&files.key, &old_key).unwrap();
        let error = certificate.reload().unwrap_err();
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        assert!(error.to_string().contains("does not belong"), "{error}");
        assert_eq!(served(&certificate), first);

        std::fs::write(&files.key, new_key).unwrap();
        assert!(certificate.reload().unwrap());
        assert_ne!(served(&certificate), first);

        std::fs::write(&files.certificate, "not a certificate").unwrap();
        assert!(matches!(certificate.reload().unwrap_err(), TlsError::NoCertificate { .. }));
        assert!(!certificate.reload().unwrap(), "the same broken files are not reported twice");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles { certificate: dir.path().join("absent.crt"), key: dir.path().join("absent.key") };
        let error = ReloadingCertificate::load(files).unwrap_err();
        assert!(error.to_string().contains("absent.crt"), "{error}");
    }
}
