//! Which namespaces the operator watches and reconciles (`--watch-namespaces`): every one, or
//! a list of names checked up front. Pure.

use std::fmt;

/// Where the controllers look for Wharf objects and their children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace, with cluster-wide watches (the all-namespaces ClusterRole).
    All,
    /// Only these namespaces, each watched on its own, so that Roles in them suffice. In the
    /// order given, without duplicates, never empty.
    Namespaces(Vec<String>),
}

/// A `--watch-namespaces` value that names no usable set of namespaces.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Two commas in a row, or a comma at either end.
    #[error("name {position} of the list is empty; separate namespace names with single commas")]
    EmptyName {
        /// 1-based position in the list.
        position: usize,
    },
    /// Not something a namespace can be called.
    #[error("{name:?} is not a namespace name: {problem}")]
    InvalidName {
        /// The name as given (trimmed).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The same namespace twice.
    #[error("namespace {name:?} is listed twice")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
}

impl WatchScope {
    /// Parses a comma-separated list of namespace names; blank means every namespace.
    /// Spaces around names are ignored.
    pub fn parse(value: &str) -> Result<WatchScope, ScopeError> {
        if value.trim().is_empty() {
            return Ok(WatchScope::All);
        }
        let mut namespaces: Vec<String> = Vec::new();
        for (index, name) in value.split(',').map(str::trim).enumerate() {
            if name.is_empty() {
                return Err(ScopeError::EmptyName { position: index + 1 });
            }
            if let Some(problem) = label_problem(name) {
                return Err(ScopeError::InvalidName { name: name.to_owned(), problem });
            }
            if namespaces.iter().any(|known| known == name) {
                return Err(ScopeError::Duplicate { name: name.to_owned() });
            }
            namespaces.push(name.to_owned());
        }
        Ok(WatchScope::Namespaces(namespaces))
    }

    /// Whether objects in `namespace` are watched.
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            WatchScope::All => true,
            WatchScope::Namespaces(namespaces) => namespaces.iter().any(|known| known == namespace),
        }
    }
}

impl fmt::Display for WatchScope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchScope::All => formatter.write_str("all namespaces"),
            WatchScope::Namespaces(namespaces) => write!(formatter, "namespaces {}", namespaces.join(", ")),
        }
    }
}

/// Why `name` is not an RFC 1123 DNS label (what Kubernetes requires of a namespace name), or
/// `None` when it is one.
fn label_problem(name: &str) -> Option<&'static str> {
    if name.len() > 63 {
        return Some("longer than 63 characters");
    }
    if !name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-') {
        return Some("only lower-case letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("it must start and end with a letter or digit");
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(scope: &WatchScope) -> Vec<&str> {
        match scope {
            WatchScope::All => Vec::new(),
            WatchScope::Namespaces(namespaces) => namespaces.iter().map(String::as_str).collect(),
        }
    }

    #[test]
    fn blank_means_every_namespace() {
        for value in ["", "  ", "\t"] {
            assert_eq!(WatchScope::parse(value).unwrap(), WatchScope::All, "{value:?}");
        }
        assert!(WatchScope::All.includes("anything"));
        assert_eq!(WatchScope::All.to_string(), "all namespaces");
    }

    #[test]
    fn a_list_keeps_its_order_and_ignores_spaces() {
        let scope = WatchScope::parse("team-web, team-data ,wharf-system").unwrap();
        assert_eq!(names(&scope), ["team-web", "team-data", "wharf-system"]);
        assert!(scope.includes("team-data"));
        assert!(!scope.includes("team"));
        assert_eq!(scope.to_string(), "namespaces team-web, team-data, wharf-system");
        assert_eq!(names(&WatchScope::parse("a").unwrap()), ["a"]);
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let cases = [
            ("a,,b", ScopeError::EmptyName { position: 2 }),
            ("a,", ScopeError::EmptyName { position: 2 }),
            (
                "Team-Web",
                ScopeError::InvalidName {
                    name: "Team-Web".to_owned(),
                    problem: "only lower-case letters, digits and '-' are allowed",
                },
            ),
            (
                "a,team_web",
                ScopeError::InvalidName {
                    name: "team_web".to_owned(),
                    problem: "only lower-case letters, digits and '-' are allowed",
                },
            ),
            (
                "-web",
                ScopeError::InvalidName {
                    name: "-web".to_owned(),
                    problem: "it must start and end with a letter or digit",
                },
            ),
            ("a,b,a", ScopeError::Duplicate { name: "a".to_owned() }),
            ("a, a", ScopeError::Duplicate { name: "a".to_owned() }),
        ];
        for (value, expected) in cases {
            assert_eq!(WatchScope::parse(value).unwrap_err(), expected, "{value:?}");
        }
        let long = "n".repeat(64);
        assert!(matches!(
            WatchScope::parse(&long),
            Err(ScopeError::InvalidName { problem: "longer than 63 characters", .. })
        ));
        assert!(WatchScope::parse(&"n".repeat(63)).is_ok());
        assert_eq!(WatchScope::parse("a,b,a").unwrap_err().to_string(), "namespace \"a\" is listed twice");
    }
}
