//! Resolves the `SecretRef`s of a configuration to their values. Does I/O (reads files).
//!
//! Secrets live in a folder laid out like a Kubernetes Secret volume: `{dir}/{secret}/{key}`.
//! In a cluster the operator mounts each Secret the rendered configuration names at
//! `/var/run/wharf/secrets/{secret}`; locally the platform team writes the same files. One
//! layout, so one resolver serves both modes and no secret value ever sits in the
//! configuration itself.

use std::path::{Path, PathBuf};

use wharf_api::SecretRef;

/// A secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The name or key is not a single path segment a Secret could have.
    #[error("secret {name:?} key {key:?}: not a valid Secret name and key")]
    InvalidReference {
        /// The Secret's name as written.
        name: String,
        /// The key as written or defaulted.
        key: String,
    },
    /// The file is missing or unreadable.
    #[error("secret {name:?} key {key:?}: cannot read {path}: {source}")]
    Unreadable {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
        /// The file that was looked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is there but holds nothing usable.
    #[error("secret {name:?} key {key:?}: {path} is empty")]
    Empty {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
        /// The empty file.
        path: PathBuf,
    },
}

/// The folder secrets are read from.
#[derive(Clone, Debug)]
pub struct SecretsDir {
    root: PathBuf,
}

/// Largest secret value read; anything bigger is not a credential.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

impl SecretsDir {
    /// Secrets under `root` (`{root}/{secret}/{key}`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SecretsDir { root: root.into() }
    }

    /// The folder secrets are read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the value `reference` names, using `default_key` when it names no key. A
    /// trailing newline (what `echo` and most editors leave) is not part of the value.
    pub fn read(&self, reference: &SecretRef, default_key: &str) -> Result<String, SecretError> {
        let key = reference.key.as_deref().unwrap_or(default_key);
        self.read_key(&reference.name, key)
    }

    /// Reads `key` of the Secret `reference` names when that key exists; `Ok(None)` when the
    /// file is missing, so callers can look for alternative keys (`token`, or `username` and
    /// `password`).
    pub fn read_optional(&self, reference: &SecretRef, key: &str) -> Result<Option<String>, SecretError> {
        match self.read_key(&reference.name, key) {
            Ok(value) => Ok(Some(value)),
            Err(SecretError::Unreadable { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The keys Secret `name` holds (its files, without the `..data` links of a Secret
    /// volume), sorted.
    pub fn entries(&self, name: &str) -> Result<Vec<String>, SecretError> {
        if !is_path_segment(name) {
            return Err(SecretError::InvalidReference { name: name.to_owned(), key: String::new() });
        }
        let path = self.root.join(name);
        let unreadable =
            |source| SecretError::Unreadable { name: name.to_owned(), key: String::new(), path: path.clone(), source };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with('.') && is_path_segment(&file) && entry.path().is_file() {
                entries.push(file);
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// Reads key `key` of Secret `name`.
    pub fn read_entry(&self, name: &str, key: &str) -> Result<String, SecretError> {
        self.read_key(name, key)
    }

    fn read_key(&self, name: &str, key: &str) -> Result<String, SecretError> {
        if !is_path_segment(name) || !is_path_segment(key) {
            return Err(SecretError::InvalidReference { name: name.to_owned(), key: key.to_owned() });
        }
        let path = self.root.join(name).join(key);
        let unreadable =
            |source| SecretError::Unreadable { name: name.to_owned(), key: key.to_owned(), path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(unreadable)?;
        let mut value = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SECRET_BYTES), &mut value)
            .map_err(unreadable)?;
        let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
        if value.is_empty() {
            return Err(SecretError::Empty { name: name.to_owned(), key: key.to_owned(), path });
        }
        Ok(value.to_owned())
    }
}

/// Secret names are DNS subdomains and keys are `[-._a-zA-Z0-9]+`; neither may climb out of
/// the folder.
fn is_path_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.len() <= 253
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reference(name: &str, key: Option<&str>) -> SecretRef {
        SecretRef { name: name.to_owned(), key: key.map(str::to_owned) }
    }

    #[test]
    fn reads_the_named_or_default_key_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s3")).unwrap();
        std::fs::write(dir.path().join("s3/accessKeyId"), "AKIA\n").unwrap();
        std::fs::write(dir.path().join("s3/custom"), "value\r\n").unwrap();
        let secrets = SecretsDir::new(dir.path());
        assert_eq!(secrets.read(&reference("s3", None), "accessKeyId").unwrap(), "AKIA");
        assert_eq!(secrets.read(&reference("s3", Some("custom")), "accessKeyId").unwrap(), "value");
        assert_eq!(secrets.read_optional(&reference("s3", None), "token").unwrap(), None);
    }

    #[test]
    fn refuses_traversal_and_reports_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        std::fs::write(dir.path().join("empty/key"), "\n").unwrap();
        let secrets = SecretsDir::new(dir.path());
        for (name, key) in [("..", "key"), ("a/b", "key"), ("ok", "../x"), ("", "key"), ("ok", "")] {
            let error = secrets.read(&reference(name, Some(key)), "unused").unwrap_err();
            assert!(matches!(error, SecretError::InvalidReference { .. }), "{name}/{key}: {error}");
        }
        let missing = secrets.read(&reference("absent", None), "key").unwrap_err().to_string();
        assert!(missing.contains("absent") && missing.contains("cannot read"), "{missing}");
        assert!(matches!(secrets.read(&reference("empty", None), "key").unwrap_err(), SecretError::Empty { .. }));
    }
}
