//! NuGet's identity rules, as the NuGet client applies them: package ids are
//! compared without case, and versions by their normalised form (`1.0` is
//! `1.0.0`, `01.2.3.0` is `1.2.3`, build metadata is not part of a version's
//! identity, release labels compare without case). The registry stores and
//! serves NuGet packages under these keys so that every spelling a client
//! may send finds the same package. The package check is in [`package`],
//! the v3 documents served in [`documents`], an upstream feed read in
//! [`upstream`]. Pure, no I/O.

use std::cmp::Ordering;

pub mod documents;
pub mod package;
pub mod upstream;

pub use package::{Manifest, Nupkg, PackageLimits, inspect_nupkg};

/// Longest package id NuGet accepts.
pub const MAX_ID_LENGTH: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NugetError {
    #[error(
        "invalid package id `{0}`: use letters, digits and _, with single . or - between them, at most 100 characters"
    )]
    InvalidId(String),
    #[error("invalid version `{version}`: {reason}")]
    InvalidVersion { version: String, reason: &'static str },
    #[error("invalid package: {0}")]
    InvalidPackage(String),
    #[error("unreadable upstream document: {0}")]
    InvalidDocument(String),
}

/// Checks a package id: words of ASCII letters, digits and `_`, joined by
/// single `.` or `-`, at most [`MAX_ID_LENGTH`] characters.
pub fn validate_id(id: &str) -> Result<(), NugetError> {
    let word = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let valid = id.len() <= MAX_ID_LENGTH && id.split(['.', '-']).all(word);
    if valid { Ok(()) } else { Err(NugetError::InvalidId(id.to_owned())) }
}

/// The id as NuGet compares and the flat container addresses it.
pub fn lower_id(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// A NuGet version: one to four numbers, an optional release label and
/// optional build metadata.
#[derive(Clone, Debug)]
pub struct NugetVersion {
    numbers: [u32; 4],
    release: Vec<String>,
    metadata: Option<String>,
}

/// Reads a version as the NuGet client does (`NuGetVersion.TryParse`): one
/// to four dot-separated numbers (leading zeros allowed, missing parts 0),
/// then `-` and dot-separated release labels, then `+` and metadata.
pub fn parse_version(text: &str) -> Result<NugetVersion, NugetError> {
    let invalid = |reason| NugetError::InvalidVersion { version: text.to_owned(), reason };
    let (rest, metadata) = match text.split_once('+') {
        Some((rest, metadata)) => (rest, Some(metadata)),
        None => (text, None),
    };
    let (numbers_text, release) = match rest.split_once('-') {
        Some((numbers, release)) => (numbers, Some(release)),
        None => (rest, None),
    };
    let parts: Vec<&str> = numbers_text.split('.').collect();
    if parts.len() > 4 {
        return Err(invalid("it has more than four numbers"));
    }
    let mut numbers = [0u32; 4];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("each of its numbers must be digits only"));
        }
        *slot = part.parse().map_err(|_| invalid("a number is too large"))?;
    }
    let labels = |text: &str| {
        text.split('.').all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let release: Vec<String> = match release {
        Some(release) if labels(release) => release.split('.').map(str::to_owned).collect(),
        Some(_) => return Err(invalid("its release label must be dot-separated letters, digits and -")),
        None => Vec::new(),
    };
    if metadata.is_some_and(|metadata| !labels(metadata)) {
        return Err(invalid("its build metadata must be dot-separated letters, digits and -"));
    }
    Ok(NugetVersion { numbers, release, metadata: metadata.map(str::to_owned) })
}

impl NugetVersion {
    /// The normalised form (`NuGetVersion.ToNormalizedString`): three
    /// numbers, a fourth only when it is not 0, the release label; no
    /// metadata. Unique to the version's identity, up to case.
    pub fn normalized(&self) -> String {
        let [major, minor, patch, revision] = self.numbers;
        let mut text = format!("{major}.{minor}.{patch}");
        if revision != 0 {
            text.push_str(&format!(".{revision}"));
        }
        if !self.release.is_empty() {
            text.push('-');
            text.push_str(&self.release.join("."));
        }
        text
    }

    /// The normalised form with its build metadata (`ToFullString`): what
    /// registrations and search show.
    pub fn full(&self) -> String {
        match &self.metadata {
            Some(metadata) => format!("{}+{metadata}", self.normalized()),
            None => self.normalized(),
        }
    }

    /// What the registry keys the version by, and the flat container
    /// addresses it by: the normalised form in lower case.
    pub fn key(&self) -> String {
        self.normalized().to_ascii_lowercase()
    }

    pub fn is_prerelease(&self) -> bool {
        !self.release.is_empty()
    }

    /// Whether only SemVer 2.0.0 clients understand it (a dotted release
    /// label or build metadata): hidden from searches that do not ask for
    /// `semVerLevel=2.0.0`.
    pub fn is_semver2(&self) -> bool {
        self.release.len() > 1 || self.metadata.is_some()
    }
}

/// NuGet's order: the numbers, then a release before none, then the labels
/// one by one (numeric labels as numbers and before alphanumeric ones,
/// others without case), a shorter list of equal labels first. Metadata
/// plays no part.
impl Ord for NugetVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers.cmp(&other.numbers).then_with(|| match (self.release.is_empty(), other.release.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => compare_labels(&self.release, &other.release),
        })
    }
}

impl PartialOrd for NugetVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for NugetVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for NugetVersion {}

fn compare_labels(left: &[String], right: &[String]) -> Ordering {
    for (a, b) in left.iter().zip(right) {
        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    left.len().cmp(&right.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_nugets_rules_and_compare_without_case() {
        for id in ["Newtonsoft.Json", "a", "My_Lib-2.Core", "x1.y2-z3"] {
            assert!(validate_id(id).is_ok(), "{id}");
        }
        for id in ["", ".a", "a.", "a..b", "a-.b", "a b", "ä", "a/b", "..", &"a".repeat(101)] {
            assert!(validate_id(id).is_err(), "{id}");
        }
        assert!(validate_id(&"a".repeat(100)).is_ok());
        assert_eq!(lower_id("Newtonsoft.Json"), "newtonsoft.json");
    }

    #[test]
    fn versions_normalise_as_the_nuget_client_does() {
        for (given, normalized) in [
            ("1", "1.0.0"),
            ("1.0", "1.0.0"),
            ("1.0.0.0", "1.0.0"),
            ("01.002.0003", "1.2.3"),
            ("1.2.3.4", "1.2.3.4"),
            ("1.0.0-Beta.1+build.5", "1.0.0-Beta.1"),
            ("1.0.0+git.abc", "1.0.0"),
            ("2.0.0.0-rc-2", "2.0.0-rc-2"),
        ] {
            assert_eq!(parse_version(given).unwrap().normalized(), normalized, "{given}");
        }
        assert_eq!(parse_version("1.0.0-BETA").unwrap().key(), "1.0.0-beta");
        for bad in ["", "1.", ".1", "1.2.3.4.5", "v1.0", "1.0-", "1.0-a..b", "1.0+", "1.0-é", "99999999999"] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_ignores_metadata_and_case_and_order_follows_semver() {
        let v = |text: &str| parse_version(text).unwrap();
        assert_eq!(v("1.0"), v("1.0.0.0+abc"));
        assert_eq!(v("1.0.0-BETA"), v("1.0.0-beta"));
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0",
            "1.0.0.1",
            "1.0.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert!(v("1.0.0-beta.1").is_semver2() && v("1.0.0+meta").is_semver2());
        assert!(!v("1.0.0-beta").is_semver2() && v("1.0.0-beta").is_prerelease());
    }
}
