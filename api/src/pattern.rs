//! Package-group patterns (`/*`, `/npm/*`, `/npm/acme/*`, `/pypi//acme~`,
//! `/maven/com.acme/lib$`) and blocked-version entries (`/npm//event-stream@3.3.6`):
//! parsing, matching and specificity. Pure, no I/O.
//!
//! The syntax is the one of the managed package-repository services, so rules can be
//! carried over unchanged:
//!
//! | pattern                    | selects                                              |
//! |----------------------------|------------------------------------------------------|
//! | `/*`                       | every package                                        |
//! | `/npm/*`                   | every package of one format                          |
//! | `/npm/acme/*`              | every package in a namespace (npm scope, Maven group) |
//! | `/pypi//acme~`             | names starting with `acme` (here with no namespace)  |
//! | `/maven/com.acme/lib$`     | exactly one package; without `$` it means the same   |
//!
//! The namespace is the npm scope without `@`, the Maven groupId, the Swift scope, and
//! empty for formats without namespaces (PyPI, Cargo, NuGet). The name is everything after
//! the namespace's `/`, so it may itself contain `/` (Go module paths).
//! Names are compared the way each ecosystem compares them: PyPI names are normalized
//! (PEP 503: case-insensitive, runs of `-`, `_`, `.` are equal), Cargo names are
//! case-insensitive with `-` equal to `_`, NuGet and Swift names are case-insensitive; other
//! formats compare exactly.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::domain::PackageFormat;

/// The regular expression the CRD schema uses for rule patterns; it accepts the same
/// strings as [`PackagePattern::parse`].
pub const PATTERN_SCHEMA_PATTERN: &str =
    r"^/(\*|(npm|pypi|maven|nuget|swift|cargo|go|generic)/(\*|[^/*~$@\s]*/(\*|[^*~$@\s]+[~$]?)))$";

/// The regular expression the CRD schema uses for `blockedVersions`; it accepts the same
/// strings as [`BlockedVersion::parse`].
pub const BLOCKED_VERSION_SCHEMA_PATTERN: &str = r"^/(\*|(npm|pypi|maven|nuget|swift|cargo|go|generic)/(\*|[^/*~$@\s]*/(\*|[^*~$@\s]+[~$]?|[^*~$@\s]+\$?@[^@\s]+)))$";

/// A package-group pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PackagePattern {
    /// `/*`: every package.
    All,
    /// `/{format}/*`: every package of a format.
    Format(PackageFormat),
    /// `/{format}/{namespace}/*`: every package in a namespace.
    Namespace {
        /// The format.
        format: PackageFormat,
        /// The namespace (may be empty: packages without a namespace).
        namespace: String,
    },
    /// `/{format}/{namespace}/{prefix}~`: names starting with a prefix.
    Prefix {
        /// The format.
        format: PackageFormat,
        /// The namespace (may be empty).
        namespace: String,
        /// The prefix, without the `~`.
        prefix: String,
    },
    /// `/{format}/{namespace}/{name}$` or `/{format}/{namespace}/{name}`: one package.
    Exact {
        /// The format.
        format: PackageFormat,
        /// The namespace (may be empty).
        namespace: String,
        /// The name, without the `$`.
        name: String,
    },
}

/// Why a pattern was rejected. Every message quotes the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing was given.
    #[error("empty pattern; use /* for every package")]
    Empty,
    /// The pattern does not start with `/`.
    #[error("pattern `{0}` must start with /, like /npm/acme/*")]
    NotAbsolute(String),
    /// Spaces or control characters.
    #[error("pattern `{0}` contains whitespace")]
    Whitespace(String),
    /// The first segment is not a format Wharf serves.
    #[error(
        "pattern `{pattern}` names unknown format `{format}`; expected one of npm, pypi, maven, nuget, swift, cargo, go, generic (lowercase)"
    )]
    UnknownFormat {
        /// The whole pattern.
        pattern: String,
        /// The segment that is not a format.
        format: String,
    },
    /// `/npm` or `/npm/acme`: no name part.
    #[error("pattern `{pattern}` has no package name; use {suggestion}")]
    MissingName {
        /// The whole pattern.
        pattern: String,
        /// A pattern that probably says what was meant.
        suggestion: String,
    },
    /// `*`, `~` or `$` somewhere other than the documented places.
    #[error(
        "pattern `{0}` uses `*`, `~` or `$` in the wrong place; `*` stands alone as the last segment, `~` and `$` end a name"
    )]
    MisplacedWildcard(String),
    /// `@` in the pattern (an npm scope with its `@`, or a version where none is allowed).
    #[error(
        "pattern `{0}` contains `@`; write npm scopes without it (/npm/acme/*), and versions only in blockedVersions"
    )]
    At(String),
    /// A blocked version on a pattern that selects more than one package.
    #[error("blocked version `{0}` needs an exact package name before `@`, like /npm//event-stream@3.3.6")]
    VersionNeedsExactName(String),
    /// Nothing after `@`.
    #[error("blocked version `{0}` has an empty version after `@`")]
    EmptyVersion(String),
}

impl PackagePattern {
    /// Parses a pattern; see the module documentation for the syntax.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace(text.to_owned()));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(PatternError::NotAbsolute(text.to_owned()));
        };
        if body == "*" {
            return Ok(PackagePattern::All);
        }
        if text.contains('@') {
            return Err(PatternError::At(text.to_owned()));
        }
        let mut segments = body.splitn(3, '/');
        let format_text = segments.next().unwrap_or_default();
        let format = PackageFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == format_text)
            .ok_or_else(|| PatternError::UnknownFormat { pattern: text.to_owned(), format: format_text.to_owned() })?;
        let Some(namespace) = segments.next() else {
            return Err(PatternError::MissingName {
                pattern: text.to_owned(),
                suggestion: format!("/{format}/* for every {format} package"),
            });
        };
        let rest = segments.next();
        if namespace == "*" && rest.is_none() {
            return Ok(PackagePattern::Format(format));
        }
        if namespace.contains(['*', '~', '$']) {
            return Err(PatternError::MisplacedWildcard(text.to_owned()));
        }
        let namespace = namespace.to_owned();
        let rest = match rest {
            None | Some("") => {
                let suggestion = if namespace.is_empty() {
                    format!("/{format}//NAME for one package without a namespace")
                } else {
                    format!(
                        "/{format}/{namespace}/* for every package in namespace {namespace}, or /{format}//{namespace} for the package {namespace} without a namespace"
                    )
                };
                return Err(PatternError::MissingName { pattern: text.to_owned(), suggestion });
            }
            Some(rest) => rest,
        };
        if rest == "*" {
            return Ok(PackagePattern::Namespace { format, namespace });
        }
        let (name, pattern) = if let Some(prefix) = rest.strip_suffix('~') {
            let pattern = PackagePattern::Prefix { format, namespace, prefix: prefix.to_owned() };
            (prefix, pattern)
        } else {
            let name = rest.strip_suffix('$').unwrap_or(rest);
            let pattern = PackagePattern::Exact { format, namespace, name: name.to_owned() };
            (name, pattern)
        };
        if name.is_empty() || name.contains(['*', '~', '$']) {
            return Err(PatternError::MisplacedWildcard(text.to_owned()));
        }
        Ok(pattern)
    }

    /// Whether the pattern selects this package. `namespace` is empty for packages without
    /// one; npm scopes come without `@`.
    pub fn matches(&self, format: PackageFormat, namespace: &str, name: &str) -> bool {
        let same_namespace = |pattern_format: &PackageFormat, pattern_namespace: &str| {
            *pattern_format == format && normalize(format, pattern_namespace) == normalize(format, namespace)
        };
        match self {
            PackagePattern::All => true,
            PackagePattern::Format(pattern_format) => *pattern_format == format,
            PackagePattern::Namespace { format: pattern_format, namespace: pattern_namespace } => {
                same_namespace(pattern_format, pattern_namespace)
            }
            PackagePattern::Prefix { format: pattern_format, namespace: pattern_namespace, prefix } => {
                same_namespace(pattern_format, pattern_namespace)
                    && normalize(format, name).starts_with(normalize(format, prefix).as_ref())
            }
            PackagePattern::Exact { format: pattern_format, namespace: pattern_namespace, name: pattern_name } => {
                same_namespace(pattern_format, pattern_namespace)
                    && normalize(format, name) == normalize(format, pattern_name)
            }
        }
    }

    /// How specific the pattern is; when several rules match a package, the highest wins.
    /// Exact name > prefix (a longer prefix beats a shorter one) > namespace > format > `/*`.
    pub fn specificity(&self) -> u32 {
        const EXACT: u32 = u32::MAX;
        const PREFIX_BASE: u32 = 16;
        match self {
            PackagePattern::All => 0,
            PackagePattern::Format(_) => 1,
            PackagePattern::Namespace { .. } => 2,
            PackagePattern::Prefix { prefix, .. } => {
                let length = u32::try_from(prefix.chars().count()).unwrap_or(u32::MAX);
                PREFIX_BASE.saturating_add(length).min(EXACT - 1)
            }
            PackagePattern::Exact { .. } => EXACT,
        }
    }

    /// The format the pattern is limited to, if any.
    pub fn format(&self) -> Option<PackageFormat> {
        match self {
            PackagePattern::All => None,
            PackagePattern::Format(format)
            | PackagePattern::Namespace { format, .. }
            | PackagePattern::Prefix { format, .. }
            | PackagePattern::Exact { format, .. } => Some(*format),
        }
    }
}

impl fmt::Display for PackagePattern {
    /// The canonical text: exact names end with `$`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackagePattern::All => f.write_str("/*"),
            PackagePattern::Format(format) => write!(f, "/{format}/*"),
            PackagePattern::Namespace { format, namespace } => write!(f, "/{format}/{namespace}/*"),
            PackagePattern::Prefix { format, namespace, prefix } => write!(f, "/{format}/{namespace}/{prefix}~"),
            PackagePattern::Exact { format, namespace, name } => write!(f, "/{format}/{namespace}/{name}$"),
        }
    }
}

impl FromStr for PackagePattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PackagePattern::parse(text)
    }
}

/// An entry of `blockedVersions`: a pattern, and for an exact package optionally one
/// version (`/npm//event-stream@3.3.6`). Without a version every version of the selected
/// packages is blocked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockedVersion {
    /// The packages.
    pub pattern: PackagePattern,
    /// The blocked version, exactly as the format writes it; `None` blocks every version.
    pub version: Option<String>,
}

impl BlockedVersion {
    /// Parses `PATTERN` or `EXACT-PATTERN@VERSION`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let Some((pattern_text, version)) = text.rsplit_once('@') else {
            return Ok(BlockedVersion { pattern: PackagePattern::parse(text)?, version: None });
        };
        let pattern = PackagePattern::parse(pattern_text)?;
        if !matches!(pattern, PackagePattern::Exact { .. }) {
            return Err(PatternError::VersionNeedsExactName(text.to_owned()));
        }
        if version.is_empty() {
            return Err(PatternError::EmptyVersion(text.to_owned()));
        }
        Ok(BlockedVersion { pattern, version: Some(version.to_owned()) })
    }

    /// Whether this entry blocks the given version of the package.
    pub fn matches(&self, format: PackageFormat, namespace: &str, name: &str, version: &str) -> bool {
        self.pattern.matches(format, namespace, name)
            && self.version.as_deref().is_none_or(|blocked| blocked == version)
    }
}

impl fmt::Display for BlockedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => {
                let pattern = self.pattern.to_string();
                let pattern = pattern.strip_suffix('$').unwrap_or(&pattern);
                write!(f, "{pattern}@{version}")
            }
            None => write!(f, "{}", self.pattern),
        }
    }
}

impl FromStr for BlockedVersion {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BlockedVersion::parse(text)
    }
}

/// Brings a namespace or name to the form its ecosystem compares.
fn normalize(format: PackageFormat, text: &str) -> Cow<'_, str> {
    match format {
        PackageFormat::Pypi => {
            // PEP 503: lowercase, and any run of `-`, `_`, `.` is one `-`.
            let mut out = String::with_capacity(text.len());
            let mut in_separator_run = false;
            for c in text.chars() {
                if matches!(c, '-' | '_' | '.') {
                    if !in_separator_run {
                        out.push('-');
                    }
                    in_separator_run = true;
                } else {
                    out.extend(c.to_lowercase());
                    in_separator_run = false;
                }
            }
            Cow::Owned(out)
        }
        PackageFormat::Cargo => Cow::Owned(text.to_lowercase().replace('_', "-")),
        PackageFormat::Nuget | PackageFormat::Swift => Cow::Owned(text.to_lowercase()),
        PackageFormat::Npm | PackageFormat::Maven | PackageFormat::Go | PackageFormat::Generic => Cow::Borrowed(text),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use PackageFormat::*;

    fn pattern(text: &str) -> PackagePattern {
        PackagePattern::parse(text).unwrap()
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(pattern("/*"), PackagePattern::All);
        assert_eq!(pattern("/npm/*"), PackagePattern::Format(Npm));
        assert_eq!(pattern("/npm/acme/*"), PackagePattern::Namespace { format: Npm, namespace: "acme".into() });
        assert_eq!(
            pattern("/pypi//acme~"),
            PackagePattern::Prefix { format: Pypi, namespace: String::new(), prefix: "acme".into() }
        );
        assert_eq!(
            pattern("/maven/com.acme/lib$"),
            PackagePattern::Exact { format: Maven, namespace: "com.acme".into(), name: "lib".into() }
        );
        assert_eq!(pattern("/maven/com.acme/lib"), pattern("/maven/com.acme/lib$"));
        assert_eq!(
            pattern("/go/github.com/acme/lib"),
            PackagePattern::Exact { format: Go, namespace: "github.com".into(), name: "acme/lib".into() }
        );
        assert_eq!(pattern("/pypi//*"), PackagePattern::Namespace { format: Pypi, namespace: String::new() });
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for text in ["/*", "/npm/*", "/npm/acme/*", "/pypi//acme~", "/maven/com.acme/lib$"] {
            assert_eq!(pattern(text).to_string(), text);
        }
        assert_eq!(pattern("/cargo//serde").to_string(), "/cargo//serde$");
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert_eq!(PackagePattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(PackagePattern::parse("npm/acme/*"), Err(PatternError::NotAbsolute(_))));
        assert!(matches!(PackagePattern::parse("/rubygems/*"), Err(PatternError::UnknownFormat { .. })));
        assert!(matches!(PackagePattern::parse("/NPM/*"), Err(PatternError::UnknownFormat { .. })));
        assert!(matches!(PackagePattern::parse("/npm"), Err(PatternError::MissingName { .. })));
        assert!(matches!(PackagePattern::parse("/npm/acme"), Err(PatternError::MissingName { .. })));
        assert!(matches!(PackagePattern::parse("/npm/acme/"), Err(PatternError::MissingName { .. })));
        assert!(matches!(PackagePattern::parse("/npm/*/x"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/ac*/x"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/acme/x*"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/acme/~"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/acme/a$b"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/acme/a~$"), Err(PatternError::MisplacedWildcard(_))));
        assert!(matches!(PackagePattern::parse("/npm/@acme/*"), Err(PatternError::At(_))));
        assert!(matches!(PackagePattern::parse("/npm/acme/a b"), Err(PatternError::Whitespace(_))));
        let message = PackagePattern::parse("/npm/acme").unwrap_err().to_string();
        assert!(message.contains("/npm/acme/*"), "{message}");
    }

    #[test]
    fn matching() {
        assert!(pattern("/*").matches(Go, "", "x"));
        assert!(pattern("/npm/*").matches(Npm, "acme", "ui"));
        assert!(!pattern("/npm/*").matches(Pypi, "", "ui"));
        assert!(pattern("/npm/acme/*").matches(Npm, "acme", "ui"));
        assert!(!pattern("/npm/acme/*").matches(Npm, "", "acme"));
        assert!(!pattern("/npm/acme/*").matches(Npm, "acmex", "ui"));
        assert!(pattern("/pypi//acme~").matches(Pypi, "", "acme-tools"));
        assert!(pattern("/pypi//acme~").matches(Pypi, "", "Acme_Tools"));
        assert!(!pattern("/pypi//acme~").matches(Pypi, "", "notacme"));
        assert!(pattern("/pypi//acme.core").matches(Pypi, "", "ACME__core"));
        assert!(pattern("/maven/com.acme/lib$").matches(Maven, "com.acme", "lib"));
        assert!(!pattern("/maven/com.acme/lib$").matches(Maven, "com.acme", "lib2"));
        assert!(!pattern("/maven/com.acme/lib$").matches(Maven, "com.acme", "Lib"));
        assert!(pattern("/cargo//serde_json").matches(Cargo, "", "serde-json"));
        assert!(pattern("/nuget//Newtonsoft.Json").matches(Nuget, "", "newtonsoft.json"));
        assert!(!pattern("/npm//left-pad").matches(Npm, "", "Left-Pad"));
    }

    #[test]
    fn specificity_orders_rules() {
        let ordered = ["/*", "/npm/*", "/npm/acme/*", "/npm/acme/a~", "/npm/acme/abc~", "/npm/acme/abc"];
        for pair in ordered.windows(2) {
            assert!(
                pattern(pair[0]).specificity() < pattern(pair[1]).specificity(),
                "{} should be less specific than {}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(pattern("/npm/acme/abc$").specificity(), pattern("/npm/acme/abc").specificity());
    }

    #[test]
    fn blocked_versions() {
        let blocked = BlockedVersion::parse("/npm//event-stream@3.3.6").unwrap();
        assert_eq!(blocked.pattern, pattern("/npm//event-stream"));
        assert_eq!(blocked.version.as_deref(), Some("3.3.6"));
        assert!(blocked.matches(Npm, "", "event-stream", "3.3.6"));
        assert!(!blocked.matches(Npm, "", "event-stream", "3.3.5"));
        assert_eq!(blocked.to_string(), "/npm//event-stream@3.3.6");

        let with_dollar = BlockedVersion::parse("/npm//event-stream$@3.3.6").unwrap();
        assert_eq!(with_dollar, blocked);

        let whole_package = BlockedVersion::parse("/pypi//evil").unwrap();
        assert_eq!(whole_package.version, None);
        assert!(whole_package.matches(Pypi, "", "evil", "1.0"));

        let namespace = BlockedVersion::parse("/npm/evil/*").unwrap();
        assert!(namespace.matches(Npm, "evil", "x", "1.0.0"));

        assert!(matches!(BlockedVersion::parse("/npm/acme/*@1.0.0"), Err(PatternError::VersionNeedsExactName(_))));
        assert!(matches!(BlockedVersion::parse("/npm//x@"), Err(PatternError::EmptyVersion(_))));
        assert!(matches!(BlockedVersion::parse("/npm/@scope/x@1"), Err(PatternError::At(_))));
    }
}
