//! Go modules: module paths and their `!` case escaping, versions
//! (canonical semver, pseudo-versions, `+incompatible`), the `module` and
//! `retract` directives of go.mod, module zip checks and `h1:` hashes, and
//! the GOPROXY protocol's documents. Pure, no I/O (zips are read from a
//! `Read + Seek` the caller provides).
//!
//! Specs: <https://go.dev/ref/mod#goproxy-protocol>,
//! <https://go.dev/ref/mod#zip-files>, <https://go.dev/ref/mod#go-mod-file>.
//! The rules follow the go command's own checks (`golang.org/x/mod`:
//! `module.CheckPath`, `module.CheckPathMajor`, `zip.CheckZip`,
//! `sumdb/dirhash.Hash1`), so what is accepted here the go command accepts.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use regex::Regex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use wharf_core::UPSTREAM_URL;
use wharf_core::{PackageIndex, VersionEntry};

/// Longest module path accepted. The go command sets none; object store
/// keys do (S3: 1024 bytes for the whole key).
const MAX_PATH_BYTES: usize = 400;
/// Longest version accepted (a pseudo-version of a long pre-release is
/// well under this).
const MAX_VERSION_BYTES: usize = 128;

/// `vX.0.0-yyyymmddhhmmss-abcdef…`, `vX.Y.Z-pre.0.yyyymmddhhmmss-…` and
/// `vX.Y.(Z+1)-0.yyyymmddhhmmss-…` (the go command's pseudo-version forms).
static PSEUDO_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^v[0-9]+\.(0\.0-|\d+\.\d+-([^+]*\.)?0\.)(\d{14})-[A-Za-z0-9]+(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")
        .unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
});
/// Characters of a file path element: the go command allows ASCII letters
/// and digits, `!#$%&()+,-.=@[]^_{}~` and space, and Unicode letters.
static FILE_ELEMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[\p{L}0-9!#$%&()+,.=@\[\]^_{}~ -]+$").unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
});

/// Names Windows reserves; the go command refuses them as path elements.
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoError {
    #[error("invalid escaped path {escaped:?}: {reason}")]
    InvalidEscape { escaped: String, reason: &'static str },
    #[error("malformed module path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("{path}@{version}: {reason}")]
    MajorVersion { path: String, version: String, reason: String },
    #[error("invalid go.mod: {0}")]
    InvalidGoMod(String),
    #[error("invalid module zip: {0}")]
    InvalidZip(String),
}

// ---------------------------------------------------------------------------
// Case escaping

/// Escapes a module path or version for URLs and file systems that ignore
/// case: each uppercase letter becomes `!` and its lowercase.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Undoes [`escape`]; an escaped text has no uppercase letters, and every
/// `!` is followed by a lowercase letter.
pub fn unescape(escaped: &str) -> Result<String, GoError> {
    let invalid = |reason| GoError::InvalidEscape { escaped: escaped.to_owned(), reason };
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '!' => match chars.next() {
                Some(next) if next.is_ascii_lowercase() => out.push(next.to_ascii_uppercase()),
                _ => return Err(invalid("'!' must be followed by a lowercase letter")),
            },
            c if c.is_ascii_uppercase() => {
                return Err(invalid("uppercase letters are written as '!' and the lowercase letter"));
            }
            c if !c.is_ascii() => return Err(invalid("it has a non-ASCII character")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// An escaped module path from a URL, unescaped and checked.
pub fn unescape_path(escaped: &str) -> Result<String, GoError> {
    let path = unescape(escaped)?;
    check_module_path(&path)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Module paths

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Module,
    File,
}

/// Checks a module path as the go command does (`module.CheckPath`):
/// slash-separated elements of ASCII letters, digits and `-._~`, a first
/// element that looks like a host name, and a well-formed major version
/// suffix (`/v2`, never `/v1` or `/v02`).
pub fn check_module_path(path: &str) -> Result<(), GoError> {
    let invalid = |reason: String| GoError::InvalidPath { path: path.to_owned(), reason };
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!("longer than {MAX_PATH_BYTES} bytes")));
    }
    check_path(path, PathKind::Module).map_err(invalid)?;
    let first = path.split('/').next().unwrap_or_default();
    if !first.contains('.') {
        return Err(invalid("missing dot in first path element".into()));
    }
    if let Some(c) = first.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))) {
        return Err(invalid(format!("invalid char {c:?} in first path element")));
    }
    if split_path_version(path).is_none() {
        return Err(invalid("invalid major version suffix (use /v2 and up, never /v0, /v1 or /v02)".into()));
    }
    Ok(())
}

fn check_file_path(path: &str) -> Result<(), String> {
    check_path(path, PathKind::File)
}

fn check_path(path: &str, kind: PathKind) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty string".into());
    }
    if path.starts_with('-') && kind == PathKind::Module {
        return Err("leading dash".into());
    }
    if path.contains("//") {
        return Err("double slash".into());
    }
    if path.ends_with('/') {
        return Err("trailing slash".into());
    }
    path.split('/').try_for_each(|element| check_element(element, kind))
}

fn check_element(element: &str, kind: PathKind) -> Result<(), String> {
    if element.is_empty() {
        return Err("empty path element".into());
    }
    if element.bytes().all(|b| b == b'.') {
        return Err(format!("invalid path element {element:?}"));
    }
    if element.starts_with('.') && kind == PathKind::Module {
        return Err("leading dot in path element".into());
    }
    if element.ends_with('.') {
        return Err("trailing dot in path element".into());
    }
    let chars_ok = match kind {
        PathKind::Module => element.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')),
        PathKind::File => FILE_ELEMENT.is_match(element),
    };
    if !chars_ok {
        return Err(format!("invalid character in path element {element:?}"));
    }
    let short = element.split('.').next().unwrap_or(element);
    if WINDOWS_RESERVED.iter().any(|reserved| reserved.eq_ignore_ascii_case(short)) {
        return Err(format!("{short:?} disallowed as path element component on Windows"));
    }
    if kind == PathKind::Module
        && let Some((_, suffix)) = short.rsplit_once('~')
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_digit())
    {
        // Windows short names look like this (`PROGRA~1`).
        return Err("trailing tilde and digits in path element".into());
    }
    Ok(())
}

/// Splits a module path into its prefix and major version suffix:
/// `example.com/m/v2` → (`example.com/m`, `/v2`), `gopkg.in/yaml.v3` →
/// (`gopkg.in/yaml`, `.v3`), `example.com/m` → (`example.com/m`, ``).
/// `None` for a malformed suffix.
pub fn split_path_version(path: &str) -> Option<(&str, &str)> {
    if path.starts_with("gopkg.in/") {
        return split_gopkg_in(path);
    }
    let bytes = path.as_bytes();
    let mut i = bytes.len();
    let mut dot = false;
    while i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.') {
        dot |= bytes[i - 1] == b'.';
        i -= 1;
    }
    if i <= 1 || i == bytes.len() || bytes[i - 1] != b'v' || bytes[i - 2] != b'/' {
        return Some((path, ""));
    }
    let (prefix, major) = path.split_at(i - 2);
    if dot || major.len() <= 2 || major.as_bytes()[2] == b'0' || major == "/v1" {
        return None;
    }
    Some((prefix, major))
}

fn split_gopkg_in(path: &str) -> Option<(&str, &str)> {
    let bytes = path.as_bytes();
    let mut i = bytes.len() - if path.ends_with("-unstable") { "-unstable".len() } else { 0 };
    while i > 0 && bytes[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i <= 1 || bytes[i - 1] != b'v' || bytes[i - 2] != b'.' {
        return None;
    }
    let (prefix, major) = path.split_at(i - 2);
    if major.len() <= 2 || (major.as_bytes()[2] == b'0' && major != ".v0") {
        return None;
    }
    Some((prefix, major))
}

// ---------------------------------------------------------------------------
// Versions

/// A canonical module version: `vMAJOR.MINOR.PATCH[-PRERELEASE]`, with
/// `+incompatible` the only build suffix the go command allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleVersion {
    semver: semver::Version,
    pub incompatible: bool,
    /// The commit time of a pseudo-version; `None` for a release or
    /// pre-release.
    pub pseudo_time: Option<DateTime<Utc>>,
}

impl ModuleVersion {
    pub fn major(&self) -> u64 {
        self.semver.major
    }

    pub fn is_pseudo(&self) -> bool {
        self.pseudo_time.is_some()
    }

    pub fn is_prerelease(&self) -> bool {
        !self.semver.pre.is_empty()
    }

    /// Semantic version precedence; `+incompatible` does not count.
    pub fn precedence(&self, other: &ModuleVersion) -> Ordering {
        self.semver.cmp_precedence(&other.semver)
    }

    /// How the go command ranks candidates for `latest`: any release over
    /// any pre-release, any tagged version over any pseudo-version.
    fn latest_rank(&self) -> u8 {
        match (self.is_pseudo(), self.is_prerelease()) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        }
    }
}

/// Parses a canonical version. Shorthands the go command would resolve
/// (`v1.2`, `master`) are not versions a module can be published as.
pub fn parse_version(version: &str) -> Result<ModuleVersion, GoError> {
    let invalid = |reason: &str| GoError::InvalidVersion { version: version.to_owned(), reason: reason.to_owned() };
    if version.len() > MAX_VERSION_BYTES {
        return Err(invalid(&format!("longer than {MAX_VERSION_BYTES} bytes")));
    }
    let bare = version.strip_prefix('v').ok_or_else(|| invalid("a module version starts with v (v1.2.3)"))?;
    let semver = semver::Version::parse(bare)
        .map_err(|_| invalid("not a canonical semantic version (vMAJOR.MINOR.PATCH[-PRERELEASE])"))?;
    let incompatible = match semver.build.as_str() {
        "" => false,
        "incompatible" => true,
        _ => return Err(invalid("build metadata other than +incompatible is not part of a canonical version")),
    };
    let pseudo_time = match PSEUDO_VERSION.captures(version) {
        Some(captures) if version.matches('-').count() >= 2 => {
            let stamp = captures.get(3).map(|m| m.as_str()).unwrap_or_default();
            let time = NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S")
                .map_err(|_| invalid("the pseudo-version's timestamp is not a valid UTC time (yyyymmddhhmmss)"))?;
            Some(time.and_utc())
        }
        _ => None,
    };
    Ok(ModuleVersion { semver, incompatible, pseudo_time })
}

/// The go command's rules tying versions to a module path's major version
/// suffix (`module.CheckPathMajor` and its `+incompatible` rules): `v0`
/// and `v1` have no suffix, `vN` (N ≥ 2) needs `/vN`, except
/// `vN.x.y+incompatible` of a module without a go.mod file.
pub fn check_major_version(
    path: &str,
    version_text: &str,
    version: &ModuleVersion,
    has_go_mod: bool,
) -> Result<(), GoError> {
    let mismatch =
        |reason: String| GoError::MajorVersion { path: path.to_owned(), version: version_text.to_owned(), reason };
    let (_, path_major) = split_path_version(path)
        .ok_or_else(|| mismatch("the module path has a malformed major version suffix".into()))?;
    let major = version.major();
    if version.incompatible {
        if !path_major.is_empty() {
            return Err(mismatch("a module path with a major version suffix takes no +incompatible versions".into()));
        }
        if major < 2 {
            return Err(mismatch(format!("+incompatible is only for v2 and above; v{major} is compatible")));
        }
        if has_go_mod {
            return Err(mismatch(format!(
                "+incompatible is only for modules without a go.mod file; this one has one, so publish it as {path}/v{major} with version v{}",
                version_text.trim_end_matches("+incompatible").trim_start_matches('v')
            )));
        }
        return Ok(());
    }
    if path_major.is_empty() {
        if major <= 1 {
            return Ok(());
        }
        return Err(mismatch(format!(
            "a v{major} version needs the module path {path}/v{major} (or, for a module without go.mod, the version {version_text}+incompatible)"
        )));
    }
    let suffix_major = path_major.trim_end_matches("-unstable");
    // gopkg.in serves v0 pseudo-versions of its `.v1` paths.
    if suffix_major == ".v1" && version.is_pseudo() && version_text.starts_with("v0.0.0-") {
        return Ok(());
    }
    if suffix_major[2..] == major.to_string() {
        return Ok(());
    }
    Err(mismatch(format!("the module path ends in {path_major}, so its versions must be {}.x.y", &suffix_major[1..])))
}

// ---------------------------------------------------------------------------
// go.mod

/// What this registry reads from a go.mod: the module path and the
/// versions it retracts (inclusive intervals of canonical versions).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GoMod {
    pub module: String,
    pub retract: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Punct(char),
}

/// Reads the `module` and `retract` directives, in line or block form
/// (`retract ( … )`); other directives are the go command's business.
/// Syntax the go command would refuse (unterminated strings or blocks,
/// `/* */` comments, a missing or repeated `module`) is refused here.
pub fn parse_go_mod(text: &[u8]) -> Result<GoMod, GoError> {
    let text = std::str::from_utf8(text).map_err(|_| GoError::InvalidGoMod("it is not UTF-8".into()))?;
    let mut module = None;
    let mut retract = Vec::new();
    let mut block: Option<(String, usize)> = None;
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let invalid = |reason: String| GoError::InvalidGoMod(format!("line {number}: {reason}"));
        let tokens = tokenize(line).map_err(invalid)?;
        let (verb, args) = match (&block, tokens.as_slice()) {
            (_, []) => continue,
            (Some(_), [Token::Punct(')')]) => {
                block = None;
                continue;
            }
            (Some((verb, _)), args) => (verb.clone(), args),
            (None, [Token::Word(verb), Token::Punct('(')]) => {
                block = Some((verb.clone(), number));
                continue;
            }
            (None, [Token::Word(verb), args @ ..]) => (verb.clone(), args),
            (None, _) => return Err(invalid("a directive starts with a keyword".into())),
        };
        match verb.as_str() {
            "module" => {
                let [arg] = args else { return Err(invalid("usage: module module/path".into())) };
                if module.is_some() {
                    return Err(invalid("repeated module statement".into()));
                }
                module = Some(word(arg).map_err(invalid)?);
            }
            "retract" => retract.push(parse_retraction(args).map_err(invalid)?),
            _ => {}
        }
    }
    if let Some((verb, number)) = block {
        return Err(GoError::InvalidGoMod(format!("line {number}: the {verb} block is never closed with ')'")));
    }
    let module = module.ok_or_else(|| GoError::InvalidGoMod("it has no module directive".into()))?;
    Ok(GoMod { module, retract })
}

fn word(token: &Token) -> Result<String, String> {
    match token {
        Token::Word(text) | Token::Quoted(text) => Ok(text.clone()),
        Token::Punct(c) => Err(format!("unexpected {c:?}")),
    }
}

fn parse_retraction(args: &[Token]) -> Result<(String, String), String> {
    let canonical = |token: &Token| -> Result<(String, ModuleVersion), String> {
        let text = word(token)?;
        let version = parse_version(&text).map_err(|e| format!("retract: {e}"))?;
        Ok((text, version))
    };
    match args {
        [single] => {
            let (text, _) = canonical(single)?;
            Ok((text.clone(), text))
        }
        [Token::Punct('['), low, Token::Punct(','), high, Token::Punct(']')] => {
            let (low_text, low) = canonical(low)?;
            let (high_text, high) = canonical(high)?;
            if low.precedence(&high) == Ordering::Greater {
                return Err(format!("retract: the interval [{low_text}, {high_text}] has its bounds reversed"));
            }
            Ok((low_text, high_text))
        }
        _ => Err("usage: retract version | retract [low, high]".into()),
    }
}

/// Splits one go.mod line into tokens (the go command's lexer: `//`
/// comments, punctuation, "quoted" and `raw` strings, words).
fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r']);
        let Some(c) = rest.chars().next() else { return Ok(tokens) };
        if rest.starts_with("//") {
            return Ok(tokens);
        }
        if rest.starts_with("/*") {
            return Err("go.mod files use // comments, not /* */".into());
        }
        match c {
            '(' | ')' | '[' | ']' | '{' | '}' | ',' => {
                tokens.push(Token::Punct(c));
                rest = &rest[1..];
            }
            '"' | '`' => {
                let body = &rest[1..];
                let mut end = None;
                let mut escaped = false;
                for (i, ch) in body.char_indices() {
                    if escaped {
                        escaped = false;
                    } else if ch == '\\' && c == '"' {
                        escaped = true;
                    } else if ch == c {
                        end = Some(i);
                        break;
                    }
                }
                let end = end.ok_or("unterminated string")?;
                let inner = &body[..end];
                if c == '"' && inner.contains('\\') {
                    // Nothing the go command allows in a module path or
                    // version needs an escape.
                    return Err(format!("escapes in {inner:?} are not valid in paths or versions"));
                }
                tokens.push(Token::Quoted(inner.to_owned()));
                rest = &body[end + 1..];
            }
            c if c.is_whitespace() || c.is_control() => return Err(format!("unexpected character {c:?}")),
            _ => {
                let end = rest
                    .char_indices()
                    .find(|&(i, ch)| {
                        ch.is_whitespace()
                            || ch.is_control()
                            || matches!(ch, '(' | ')' | '[' | ']' | '{' | '}' | ',')
                            || rest[i..].starts_with("//")
                    })
                    .map_or(rest.len(), |(i, _)| i);
                tokens.push(Token::Word(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
    }
}

/// The go.mod the go command assumes for a module without one.
pub fn synthesized_go_mod(path: &str) -> Vec<u8> {
    format!("module {path}\n").into_bytes()
}

// ---------------------------------------------------------------------------
// Module zips

/// Limits on a module zip's contents; the default is the go command's.
#[derive(Clone, Copy, Debug)]
pub struct ZipLimits {
    /// Total uncompressed size of the files.
    pub max_unpacked: u64,
    /// Size of `go.mod` (and of `LICENSE`).
    pub max_go_mod: u64,
    /// Entries in the central directory. Not a go command rule: bounds the
    /// memory the directory takes while it is checked; the largest real
    /// modules have a few tens of thousands of files.
    pub max_files: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits { max_unpacked: 500 << 20, max_go_mod: 16 << 20, max_files: 200_000 }
    }
}

/// The go command's limit on the size of a module zip file itself.
pub const MAX_ZIP_BYTES: u64 = 500 << 20;

/// What a checked module zip holds.
#[derive(Debug, PartialEq, Eq)]
pub struct ModuleZip {
    /// The module's go.mod, when the zip has one.
    pub go_mod: Option<Vec<u8>>,
    /// The `h1:` hash of the file tree, as go.sum records it.
    pub hash: String,
    pub file_count: u64,
    pub unpacked_size: u64,
}

/// Checks a module zip as the go command does before extracting it
/// (`zip.CheckZip`, and the sizes and checksums `zip.Unzip` enforces),
/// reading every file once to verify it and compute the `h1:` hash.
///
/// Every file sits under `{path}@{version}/` with a clean, portable
/// relative path; no two paths are equal under case folding; go.mod, if
/// any, is the root one; sizes stay within `limits`. Directory entries are
/// refused too: the go command never writes them, and one in the zip makes
/// the zip's hash differ from the extracted tree's, so `go mod verify`
/// would report the module as modified. Files under `vendor/` are kept, as
/// `zip.CheckZip` keeps them.
pub fn inspect_zip<R: Read + Seek>(
    mut reader: R,
    path: &str,
    version: &str,
    limits: &ZipLimits,
) -> Result<ModuleZip, GoError> {
    let invalid = |reason: String| GoError::InvalidZip(reason);
    let entries = central_directory_entries(&mut reader).map_err(invalid)?;
    if entries > limits.max_files {
        return Err(invalid(format!("it has {entries} entries; at most {} are accepted", limits.max_files)));
    }
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| invalid(format!("not a zip archive: {e}")))?;
    // The zip crate keeps one entry per name; the go command sees them all
    // and refuses repeated names.
    if archive.len() as u64 != entries {
        return Err(invalid(format!(
            "multiple entries for one file name ({entries} entries, {} distinct names)",
            archive.len()
        )));
    }
    let prefix = format!("{path}@{version}/");
    let mut seen: HashMap<String, (String, bool)> = HashMap::new();
    let mut files = Vec::new();
    let mut unpacked = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| invalid(format!("cannot read entry {index}: {e}")))?;
        let name = std::str::from_utf8(entry.name_raw())
            .map_err(|_| invalid(format!("entry {index} has a file name that is not UTF-8")))?
            .to_owned();
        let file_error = |reason: &str| invalid(format!("{name}: {reason}"));
        let relative =
            name.strip_prefix(&prefix).ok_or_else(|| file_error(&format!("path does not have prefix {prefix:?}")))?;
        if relative.is_empty() || relative.ends_with('/') {
            return Err(file_error(
                "directory entries are not allowed (the go command never writes them, and they change the module's h1: hash)",
            ));
        }
        if relative.split('/').any(|element| element == "." || element == "..") {
            return Err(file_error("file path is not clean (no . or .. elements)"));
        }
        check_file_path(relative).map_err(|reason| file_error(&format!("malformed file path: {reason}")))?;
        check_collision(&mut seen, relative, false).map_err(|reason| file_error(&reason))?;
        let base = relative.rsplit('/').next().unwrap_or(relative);
        if base.eq_ignore_ascii_case("go.mod") {
            if base != relative {
                return Err(file_error(
                    "go.mod file not in module root directory (nested modules are published separately)",
                ));
            }
            if relative != "go.mod" {
                return Err(file_error("go.mod files must have lowercase names"));
            }
        }
        if has_unicode_path_field(entry.extra_data().unwrap_or_default()) {
            // The zip crate would read the name from this field; the go
            // command reads the plain name, so the two could disagree.
            return Err(file_error("Info-ZIP Unicode path fields are not allowed"));
        }
        if entry.encrypted() {
            return Err(file_error("encrypted files are not allowed"));
        }
        if !matches!(entry.compression(), zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated) {
            return Err(file_error("compressed with a method other than store or deflate"));
        }
        let size = entry.size();
        unpacked = unpacked.saturating_add(size);
        if unpacked > limits.max_unpacked {
            return Err(invalid(format!(
                "total uncompressed size of module contents too large (max size is {} bytes)",
                limits.max_unpacked
            )));
        }
        if (relative == "go.mod" || relative == "LICENSE") && size > limits.max_go_mod {
            return Err(file_error(&format!("{relative} file too large (max size is {} bytes)", limits.max_go_mod)));
        }
        files.push((index, name.clone(), relative == "go.mod"));
    }

    let mut go_mod = None;
    let mut hashed = Vec::with_capacity(files.len());
    let mut buffer = vec![0u8; 64 * 1024];
    for (index, name, is_go_mod) in files {
        let entry = archive.by_index(index).map_err(|e| invalid(format!("{name}: cannot read: {e}")))?;
        let declared = entry.size();
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut read = 0u64;
        // One byte past the declared size tells a lying header apart.
        let mut limited = entry.take(declared.saturating_add(1));
        loop {
            let n = limited.read(&mut buffer).map_err(|e| invalid(format!("{name}: cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            if is_go_mod {
                kept.extend_from_slice(&buffer[..n]);
            }
            read += n as u64;
        }
        if read != declared {
            return Err(invalid(format!("{name}: holds {read} bytes, but its header declares {declared}")));
        }
        if is_go_mod {
            go_mod = Some(kept);
        }
        hashed.push((name, hasher.finalize().into()));
    }
    let file_count = hashed.len() as u64;
    Ok(ModuleZip { go_mod, hash: hash1(hashed), file_count, unpacked_size: unpacked })
}

/// Registers `path` (and its parent folders) under its case-folded form;
/// the go command refuses paths equal under case folding, duplicates, and
/// a name used both as a file and as a folder.
fn check_collision(seen: &mut HashMap<String, (String, bool)>, path: &str, is_dir: bool) -> Result<(), String> {
    let folded: String = path.chars().map(fold_case).collect();
    match seen.get(&folded) {
        Some((other, _)) if other != path => {
            return Err(format!("case-insensitive file name collision: {other:?} and {path:?}"));
        }
        Some((_, other_is_dir)) if *other_is_dir != is_dir => {
            return Err(format!("entry {path:?} is both a file and a directory"));
        }
        Some(_) if !is_dir => return Err(format!("multiple entries for file {path:?}")),
        Some(_) => {}
        None => {
            seen.insert(folded, (path.to_owned(), is_dir));
        }
    }
    match path.rsplit_once('/') {
        Some((parent, _)) => check_collision(seen, parent, true),
        None => Ok(()),
    }
}

/// Whether a zip extra field block has an Info-ZIP Unicode path field (0x7075).
fn has_unicode_path_field(mut extra: &[u8]) -> bool {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        if id == 0x7075 {
            return true;
        }
        extra = extra.get(4 + len..).unwrap_or_default();
    }
    false
}

/// Simple case folding (what Go's `strings.EqualFold` compares): maps
/// each character of a case orbit (`K`, `k`, the Kelvin sign) to one.
fn fold_case(c: char) -> char {
    fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
        let first = chars.next();
        if chars.next().is_some() { None } else { first }
    }
    let lower = single(c.to_lowercase()).unwrap_or(c);
    let upper = single(lower.to_uppercase()).unwrap_or(lower);
    single(upper.to_lowercase()).unwrap_or(upper)
}

/// The number of entries the end-of-central-directory record (or its
/// zip64 form) declares, read before the directory itself is loaded.
fn central_directory_entries<R: Read + Seek>(reader: &mut R) -> Result<u64, String> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const ZIP64_LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const ZIP64_EOCD: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    let io = |e: std::io::Error| format!("cannot read the archive: {e}");
    let size = reader.seek(SeekFrom::End(0)).map_err(io)?;
    let tail_len = size.min(22 + 65_535);
    reader.seek(SeekFrom::Start(size - tail_len)).map_err(io)?;
    let mut tail = vec![0u8; tail_len as usize];
    reader.read_exact(&mut tail).map_err(io)?;
    let not_zip = || "not a zip archive: no end of central directory record".to_owned();
    let eocd = (0..tail.len().checked_sub(21).ok_or_else(not_zip)?)
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD)
        .ok_or_else(not_zip)?;
    let entries = u64::from(u16::from_le_bytes([tail[eocd + 10], tail[eocd + 11]]));
    if entries != 0xFFFF || eocd < 20 || tail[eocd - 20..eocd - 16] != ZIP64_LOCATOR {
        return Ok(entries);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&tail[eocd - 12..eocd - 4]);
    reader.seek(SeekFrom::Start(u64::from_le_bytes(offset))).map_err(io)?;
    let mut record = [0u8; 40];
    reader.read_exact(&mut record).map_err(io)?;
    if record[..4] != ZIP64_EOCD {
        return Err("not a zip archive: broken zip64 end of central directory record".into());
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&record[32..40]);
    Ok(u64::from_le_bytes(count))
}

/// `h1:` (dirhash.Hash1): SHA-256 over the sorted lines
/// `"{sha256 hex}  {file name}\n"`, base64.
fn hash1(mut files: Vec<(String, [u8; 32])>) -> String {
    files.sort();
    let mut summary = Sha256::new();
    for (name, digest) in files {
        summary.update(format!("{}  {name}\n", hex::encode(digest)));
    }
    format!("h1:{}", STANDARD.encode(summary.finalize()))
}

/// The go.sum hash of a go.mod: [`hash1`] over the one file `go.mod`.
pub fn go_mod_hash(go_mod: &[u8]) -> String {
    hash1(vec![("go.mod".to_owned(), Sha256::digest(go_mod).into())])
}

// ---------------------------------------------------------------------------
// The proxy protocol

/// What a request under `/go/{repo}/` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `{module}/@v/list`
    List { path: String },
    /// `{module}/@latest`
    Latest { path: String },
    /// `{module}/@v/{version}.{info,mod,zip}`
    File { path: String, version: String, kind: FileKind },
    /// `sumdb/{name}/{path}`: a checksum database's endpoint, proxied to the
    /// upstream proxy (`supported`, `latest`, `lookup/…`, `tile/…`).
    SumDb { name: String, path: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Info,
    Mod,
    Zip,
}

/// `{name}/{path}` of a checksum database request: the name a host name
/// (`sum.golang.org` style), the path one of the protocol's endpoints with
/// plain segments, so it can be appended to the upstream's URL as it is.
fn parse_sumdb(rest: &str) -> Option<ProxyRequest> {
    let (name, path) = rest.split_once('/')?;
    let host_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!@+".contains(&b))
    };
    let endpoint_ok = path == "supported"
        || path == "latest"
        || path.strip_prefix("lookup/").is_some_and(|module| module.split('/').all(segment_ok))
        || path.strip_prefix("tile/").is_some_and(|tile| tile.split('/').all(segment_ok));
    (host_ok && endpoint_ok && path.len() <= 1024)
        .then(|| ProxyRequest::SumDb { name: name.to_owned(), path: path.to_owned() })
}

/// Parses the path after `/go/{repo}/`; `Ok(None)` when it names no
/// endpoint of the protocol.
pub fn parse_request(rest: &str) -> Result<Option<ProxyRequest>, GoError> {
    if let Some(sumdb) = rest.strip_prefix("sumdb/") {
        return Ok(parse_sumdb(sumdb));
    }
    if let Some(module) = rest.strip_suffix("/@latest") {
        return Ok(Some(ProxyRequest::Latest { path: unescape_path(module)? }));
    }
    // Module paths never contain '@', so the first "/@v/" ends the path.
    let Some((module, file)) = rest.split_once("/@v/") else { return Ok(None) };
    let path = unescape_path(module)?;
    if file == "list" {
        return Ok(Some(ProxyRequest::List { path }));
    }
    let Some((escaped_version, extension)) = file.rsplit_once('.') else { return Ok(None) };
    let kind = match extension {
        "info" => FileKind::Info,
        "mod" => FileKind::Mod,
        "zip" => FileKind::Zip,
        _ => return Ok(None),
    };
    let version = unescape(escaped_version)?;
    if version.is_empty() || version.contains('/') {
        return Ok(None);
    }
    Ok(Some(ProxyRequest::File { path, version, kind }))
}

/// Asset names of a version in the core.
pub fn zip_asset(version: &str) -> String {
    format!("{version}.zip")
}

pub fn mod_asset(version: &str) -> String {
    format!("{version}.mod")
}

/// The format's description of a version, kept in the core.
pub fn version_metadata(path: &str, go_mod: &GoMod, has_go_mod: bool) -> Value {
    let retract: Vec<Value> = go_mod.retract.iter().map(|(low, high)| json!([low, high])).collect();
    json!({"module": path, "hasGoMod": has_go_mod, "retract": retract})
}

/// The versions a module retracts, as the go command decides: the
/// `retract` directives of the go.mod of its newest version (the highest
/// release, else the highest pre-release, else the newest pseudo-version),
/// counting versions already retracted, since a version may retract
/// itself. Only installable versions speak for the module.
pub fn retracted_versions(index: &PackageIndex) -> BTreeSet<String> {
    let parsed = parse_candidates(index.versions.iter());
    let newest = newest(parsed.iter().filter(|(_, entry, _)| entry.status.is_installable()));
    let Some((_, source, _)) = newest else { return BTreeSet::new() };
    let intervals: Vec<(ModuleVersion, ModuleVersion)> = source.metadata["retract"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            let low = parse_version(pair.get(0)?.as_str()?).ok()?;
            let high = parse_version(pair.get(1)?.as_str()?).ok()?;
            Some((low, high))
        })
        .collect();
    parsed
        .iter()
        .filter(|(_, _, version)| {
            intervals.iter().any(|(low, high)| {
                version.precedence(low) != Ordering::Less && version.precedence(high) != Ordering::Greater
            })
        })
        .map(|(text, _, _)| (*text).clone())
        .collect()
}

/// A version of a package index, parsed.
type Candidate<'a> = (&'a String, &'a VersionEntry, ModuleVersion);

fn parse_candidates<'a>(versions: impl Iterator<Item = (&'a String, &'a VersionEntry)>) -> Vec<Candidate<'a>> {
    versions.filter_map(|(text, entry)| parse_version(text).ok().map(|version| (text, entry, version))).collect()
}

fn newest<'a, 'b>(candidates: impl Iterator<Item = &'b Candidate<'a>>) -> Option<&'b Candidate<'a>> {
    candidates.max_by(|a, b| a.2.latest_rank().cmp(&b.2.latest_rank()).then_with(|| a.2.precedence(&b.2)))
}

/// Whether the version's zip can be had: published here, kept, or fetchable
/// from upstream. A cached copy may hold only its `.mod` (the go command
/// reads the `.mod` of versions it only checks for retractions); listed
/// while the upstream is down, `go get` would pick it and fail.
fn downloadable(version: &str, entry: &VersionEntry) -> bool {
    entry.fetched_from.is_none() || entry.assets.contains_key(&zip_asset(version))
}

/// `@v/list`: listed versions, oldest first, without pseudo-versions (the
/// protocol leaves those out; the go command finds them through `@latest`
/// or by exact version).
pub fn render_list(index: &PackageIndex) -> Bytes {
    let mut listed: Vec<(&String, ModuleVersion)> = index
        .listed_versions()
        .filter(|(text, entry)| downloadable(text, entry))
        .filter_map(|(text, _)| parse_version(text).ok().map(|version| (text, version)))
        .filter(|(_, version)| !version.is_pseudo())
        .collect();
    listed.sort_by(|a, b| a.1.precedence(&b.1).then_with(|| a.0.cmp(b.0)));
    let mut body = String::new();
    for (text, _) in listed {
        body.push_str(text);
        body.push('\n');
    }
    Bytes::from(body)
}

/// `@latest`: the listed version the go command would pick (release over
/// pre-release over pseudo-version).
pub fn latest(index: &PackageIndex) -> Option<(&str, &VersionEntry)> {
    let parsed = parse_candidates(index.listed_versions().filter(|(text, entry)| downloadable(text, entry)));
    newest(parsed.iter()).map(|(text, entry, _)| (text.as_str(), *entry))
}

/// `.info` and `@latest`: `{"Version": …, "Time": …}`. A pseudo-version's
/// time is the commit time it encodes; otherwise the time it was published.
pub fn render_info(version: &str, entry: &VersionEntry) -> Bytes {
    let time = parse_version(version).ok().and_then(|v| v.pseudo_time).unwrap_or(entry.created);
    let body = json!({"Version": version, "Time": time.to_rfc3339_opts(SecondsFormat::Secs, true)});
    Bytes::from(body.to_string())
}

/// An upstream proxy's `@v/list` as versions not stored here, each with
/// its `.mod` and `.zip` at `module_base` (the module's `…/@v/` URL).
/// Dates are unknown until `.info` is read ([`info_time`]); until then a
/// version is dated `UNIX_EPOCH`. The go command checks the bytes against
/// its checksum database and go.sum; the proxy protocol declares no digests.
pub fn upstream_index(list: &[u8], path: &str, connection: &str, module_base: &str) -> PackageIndex {
    let mut index = PackageIndex { display_name: path.to_owned(), ..Default::default() };
    let text = String::from_utf8_lossy(list);
    for version in text.lines().map(str::trim).filter(|v| parse_version(v).is_ok()) {
        let asset = |name: String, extension: &str| {
            let url = format!("{module_base}{}.{extension}", escape(version));
            let asset = wharf_core::AssetRef {
                name: name.clone(),
                digests: Default::default(),
                created: DateTime::UNIX_EPOCH,
                metadata: json!({UPSTREAM_URL: url}),
            };
            (name, asset)
        };
        index.versions.insert(
            version.to_owned(),
            VersionEntry {
                status: wharf_core::VersionStatus::Published,
                created: DateTime::UNIX_EPOCH,
                metadata: json!({"module": path, "hasGoMod": true, "retract": []}),
                assets: [asset(mod_asset(version), "mod"), asset(zip_asset(version), "zip")].into(),
                deprecated: None,
                withdrawn: false,
                fetched_from: Some(connection.to_owned()),
                published_by: None,
            },
        );
    }
    index
}

/// The `Time` of an `.info` document.
pub fn info_time(body: &[u8]) -> Option<DateTime<Utc>> {
    let info: Value = serde_json::from_slice(body).ok()?;
    let time = info.get("Time")?.as_str()?;
    DateTime::parse_from_rfc3339(time).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;
    use wharf_core::{AssetRef, VersionStatus};

    #[test]
    fn escaping_round_trips_and_rejects_malformed_escapes() {
        assert_eq!(escape("github.com/Azure/azure-sdk"), "github.com/!azure/azure-sdk");
        assert_eq!(unescape("github.com/!azure/azure-sdk").unwrap(), "github.com/Azure/azure-sdk");
        assert_eq!(unescape("v1.0.0-!r!c1").unwrap(), "v1.0.0-RC1");
        for bad in ["github.com/Azure", "github.com/!Azure", "example.com/m!", "example.com/!1", "example.com/é"] {
            assert!(matches!(unescape(bad), Err(GoError::InvalidEscape { .. })), "{bad}");
        }
    }

    #[test]
    fn module_paths() {
        for good in [
            "example.com/m",
            "example.com/Acme/greet",
            "example.com/m/v2",
            "gopkg.in/yaml.v3",
            "gopkg.in/check.v1-unstable",
            "example.com/a_b~c.d-e",
        ] {
            check_module_path(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, reason) in [
            ("example", "missing dot"),
            ("Example.com/m", "first path element"),
            ("example.com/../x", "invalid path element"),
            ("example.com//x", "double slash"),
            ("example.com/x/", "trailing slash"),
            ("-example.com/x", "leading dash"),
            ("example.com/.x", "leading dot"),
            ("example.com/x.", "trailing dot"),
            ("example.com/a b", "invalid character"),
            ("example.com/a+b", "invalid character"),
            ("example.com/m/v1", "major version suffix"),
            ("example.com/m/v02", "major version suffix"),
            ("example.com/con", "Windows"),
            ("example.com/PROGRA~1", "tilde"),
            ("gopkg.in/yaml", "major version suffix"),
        ] {
            let err = check_module_path(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        assert!(check_module_path(&format!("example.com/{}", "a".repeat(500))).is_err());
        assert_eq!(split_path_version("example.com/m/v3"), Some(("example.com/m", "/v3")));
        assert_eq!(split_path_version("example.com/m"), Some(("example.com/m", "")));
        assert_eq!(split_path_version("gopkg.in/yaml.v3"), Some(("gopkg.in/yaml", ".v3")));
    }

    #[test]
    fn versions() {
        let release = parse_version("v1.2.3").unwrap();
        assert!(!release.is_pseudo() && !release.is_prerelease());
        assert!(parse_version("v1.2.3-rc.1").unwrap().is_prerelease());
        assert!(parse_version("v2.0.0+incompatible").unwrap().incompatible);
        let pseudo = parse_version("v0.0.0-20240102030405-abcdefabcdef").unwrap();
        assert_eq!(pseudo.pseudo_time.unwrap().to_rfc3339(), "2024-01-02T03:04:05+00:00");
        assert!(parse_version("v1.2.4-0.20240102030405-abcdefabcdef").unwrap().is_pseudo());
        assert!(parse_version("v1.2.3-pre.0.20240102030405-abcdefabcdef").unwrap().is_pseudo());
        for bad in [
            "1.2.3",
            "v1.2",
            "v1",
            "v01.2.3",
            "v1.2.3-01",
            "v1.2.3+build",
            "master",
            "v1.2.3-",
            "v0.0.0-20241302030405-abcdefabcdef",
        ] {
            assert!(matches!(parse_version(bad), Err(GoError::InvalidVersion { .. })), "{bad}");
        }
        let order = ["v1.0.0-alpha", "v1.0.0-beta.2", "v1.0.0-beta.11", "v1.0.0", "v1.10.0", "v2.0.0+incompatible"];
        for pair in order.windows(2) {
            let (a, b) = (parse_version(pair[0]).unwrap(), parse_version(pair[1]).unwrap());
            assert_eq!(a.precedence(&b), Ordering::Less, "{pair:?}");
        }
    }

    #[test]
    fn major_versions_match_the_path() {
        let check = |path: &str, version: &str, has_go_mod: bool| {
            check_major_version(path, version, &parse_version(version).unwrap(), has_go_mod)
        };
        assert!(check("example.com/m", "v1.5.0", true).is_ok());
        assert!(check("example.com/m", "v0.1.0", true).is_ok());
        assert!(check("example.com/m/v2", "v2.1.0", true).is_ok());
        assert!(check("example.com/m", "v3.0.0+incompatible", false).is_ok());
        assert!(check("gopkg.in/yaml.v3", "v3.0.1", true).is_ok());
        assert!(check("gopkg.in/yaml.v1", "v0.0.0-20240102030405-abcdefabcdef", true).is_ok());
        for (path, version, has_go_mod, reason) in [
            ("example.com/m", "v2.0.0", true, "needs the module path example.com/m/v2"),
            ("example.com/m/v2", "v3.0.0", true, "must be v2.x.y"),
            ("example.com/m/v2", "v1.0.0", true, "must be v2.x.y"),
            ("example.com/m", "v1.0.0+incompatible", false, "only for v2 and above"),
            ("example.com/m", "v2.0.0+incompatible", true, "without a go.mod file"),
            ("example.com/m/v2", "v2.0.0+incompatible", false, "takes no +incompatible"),
            ("gopkg.in/yaml.v3", "v2.0.0", true, "must be v3.x.y"),
        ] {
            let err = check(path, version, has_go_mod).unwrap_err().to_string();
            assert!(err.contains(reason), "{path}@{version}: {err}");
        }
    }

    #[test]
    fn go_mod_module_and_retractions() {
        let text = br#"// A comment.
module "example.com/m" // Deprecated: use example.com/n

go 1.21

require (
	example.com/dep v1.0.0 // indirect
)

retract v1.0.1 // published too early
retract [v1.1.0, v1.1.9]
retract (
	v1.2.0 // self
	[v1.3.0, v1.3.2]
)
"#;
        let parsed = parse_go_mod(text).unwrap();
        assert_eq!(parsed.module, "example.com/m");
        assert_eq!(
            parsed.retract,
            [
                ("v1.0.1".into(), "v1.0.1".into()),
                ("v1.1.0".into(), "v1.1.9".into()),
                ("v1.2.0".into(), "v1.2.0".into()),
                ("v1.3.0".into(), "v1.3.2".into())
            ]
        );
        assert_eq!(parse_go_mod(b"module `example.com/raw`\n").unwrap().module, "example.com/raw");
        for (bad, reason) in [
            (&b"go 1.21\n"[..], "no module directive"),
            (b"module a.com/x\nmodule a.com/y\n", "repeated module"),
            (b"module a.com/x\nretract v1\n", "retract"),
            (b"module a.com/x\nretract [v1.2.0, v1.0.0]\n", "reversed"),
            (b"module a.com/x\nretract (\nv1.0.0\n", "never closed"),
            (b"module \"a.com/x\n", "unterminated string"),
            (b"module a.com/x /* no */\n", "// comments"),
            (b"module a.com/x a.com/y\n", "usage: module"),
            (b"module a.com/\xff\n", "not UTF-8"),
        ] {
            let err = parse_go_mod(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{}: {err}", String::from_utf8_lossy(bad));
        }
    }

    fn module_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            if name.ends_with('/') {
                zip.add_directory(*name, zip::write::SimpleFileOptions::default()).unwrap();
            } else {
                zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
                zip.write_all(data).unwrap();
            }
        }
        zip.finish().unwrap().into_inner()
    }

    fn inspect(bytes: Vec<u8>, limits: &ZipLimits) -> Result<ModuleZip, GoError> {
        inspect_zip(Cursor::new(bytes), "example.com/m", "v1.0.0", limits)
    }

    #[test]
    fn zips_are_checked_and_hashed() {
        let go_mod = b"module example.com/m\n";
        let zip = module_zip(&[
            ("example.com/m@v1.0.0/go.mod", go_mod),
            ("example.com/m@v1.0.0/m.go", b"package m\n"),
            ("example.com/m@v1.0.0/vendor/x/x.go", b"package x\n"),
        ]);
        let inspected = inspect(zip, &ZipLimits::default()).unwrap();
        assert_eq!(inspected.go_mod.as_deref(), Some(&go_mod[..]));
        assert_eq!(inspected.file_count, 3);
        // By hand: "{sha256}  {name}\n" lines in file name order, hashed, base64.
        let lines = [
            ("example.com/m@v1.0.0/go.mod", &go_mod[..]),
            ("example.com/m@v1.0.0/m.go", &b"package m\n"[..]),
            ("example.com/m@v1.0.0/vendor/x/x.go", &b"package x\n"[..]),
        ]
        .map(|(name, data)| format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
        let expected = format!("h1:{}", STANDARD.encode(Sha256::digest(lines.concat())));
        assert_eq!(inspected.hash, expected);
        assert_eq!(
            go_mod_hash(go_mod),
            format!(
                "h1:{}",
                STANDARD.encode(Sha256::digest(format!("{}  go.mod\n", hex::encode(Sha256::digest(go_mod)))))
            )
        );
    }

    #[test]
    fn bad_zips_are_refused() {
        let limits = ZipLimits { max_unpacked: 1000, max_go_mod: 100, max_files: 10 };
        let p = "example.com/m@v1.0.0/";
        let name = |rest: &str| format!("{p}{rest}");
        type Entries = Vec<(String, Vec<u8>)>;
        let cases: Vec<(Entries, &str)> = vec![
            (vec![("other.com/m@v1.0.0/a.go".into(), vec![])], "does not have prefix"),
            (vec![("example.com/m@v1.0.1/a.go".into(), vec![])], "does not have prefix"),
            (vec![(name("../escape.go"), vec![])], "not clean"),
            (vec![(name("a/./b.go"), vec![])], "not clean"),
            (vec![(name("a//b.go"), vec![])], "double slash"),
            (vec![(name("a\\b.go"), vec![])], "malformed file path"),
            (vec![(name("a:b.go"), vec![])], "malformed file path"),
            (vec![(name("sub/"), vec![])], "directory entries"),
            (vec![(name("A.go"), vec![]), (name("a.go"), vec![])], "case-insensitive"),
            (vec![(name("x/a.go"), vec![]), (name("X/b.go"), vec![])], "case-insensitive"),
            (vec![(name("a.go"), vec![]), (name("a.go/b.go"), vec![])], "both a file and a directory"),
            (vec![(name("sub/go.mod"), b"module example.com/m/sub\n".to_vec())], "not in module root"),
            (vec![(name("GO.MOD"), vec![])], "lowercase"),
            (vec![(name("go.mod"), vec![b' '; 101])], "go.mod file too large"),
            (vec![(name("LICENSE"), vec![b' '; 101])], "LICENSE file too large"),
            (vec![(name("a.go"), vec![0; 600]), (name("b.go"), vec![0; 600])], "total uncompressed size"),
            ((0..11).map(|i| (name(&format!("f{i}.go")), vec![])).collect(), "at most 10"),
        ];
        for (entries, reason) in cases {
            let borrowed: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            let err = inspect(module_zip(&borrowed), &limits).unwrap_err().to_string();
            assert!(err.contains(reason), "{reason}: {err}");
        }
        // Duplicate names cannot be written with the zip crate's writer;
        // craft one by renaming a second entry byte for byte.
        let mut duplicated = module_zip(&[(&name("a.go"), b"1"), (&name("b.go"), b"2")]);
        let (from, to) = (name("b.go").into_bytes(), name("a.go").into_bytes());
        let mut i = 0;
        while let Some(at) = duplicated[i..].windows(from.len()).position(|w| w == from.as_slice()) {
            duplicated[i + at..i + at + to.len()].copy_from_slice(&to);
            i += at + 1;
        }
        let err = inspect(duplicated, &limits).unwrap_err().to_string();
        assert!(err.contains("multiple entries"), "{err}");
        // Corrupt data: the CRC check fails.
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        writer.start_file(name("a.go"), stored).unwrap();
        writer.write_all(b"package m // some text\n").unwrap();
        let mut corrupt = writer.finish().unwrap().into_inner();
        let at = corrupt.windows(4).position(|w| w == b"pack").unwrap();
        corrupt[at] = b'X';
        assert!(inspect(corrupt, &limits).unwrap_err().to_string().contains("cannot read"));
        assert!(inspect(b"not a zip".to_vec(), &limits).unwrap_err().to_string().contains("not a zip archive"));
    }

    fn entry(status: VersionStatus, retract: &[(&str, &str)]) -> VersionEntry {
        let retract: Vec<Value> = retract.iter().map(|(l, h)| json!([l, h])).collect();
        VersionEntry {
            status,
            created: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            metadata: json!({"retract": retract}),
            assets: Default::default(),
            deprecated: None,
            withdrawn: false,
            fetched_from: None,
            published_by: None,
        }
    }

    #[test]
    fn listing_latest_and_retractions() {
        use VersionStatus::*;
        let mut index = PackageIndex::default();
        for (version, status, retract) in [
            ("v1.0.0", Published, vec![]),
            ("v1.10.0", Published, vec![]),
            ("v1.9.0", Published, vec![]),
            ("v1.11.0-rc.1", Published, vec![]),
            ("v1.10.1-0.20240102030405-abcdefabcdef", Published, vec![]),
            ("v1.2.0", Archived, vec![("v1.0.0", "v1.0.0")]),
        ] {
            index.versions.insert(version.into(), entry(status, &retract));
        }
        assert_eq!(&render_list(&index)[..], b"v1.0.0\nv1.9.0\nv1.10.0\nv1.11.0-rc.1\n");
        assert_eq!(latest(&index).unwrap().0, "v1.10.0");
        // The newest version (v1.10.0) retracts nothing; the archived
        // v1.2.0 does not speak for the module.
        assert!(retracted_versions(&index).is_empty());
        // A cached copy holding only its `.mod` (upstream down, zip never
        // fetched) is not offered; with its zip, or a URL to fetch it, it is.
        let mut mod_only = entry(Published, &[]);
        mod_only.fetched_from = Some("public-go".into());
        let zip = |url: Value| AssetRef {
            name: zip_asset("v1.10.2"),
            digests: Default::default(),
            created: DateTime::UNIX_EPOCH,
            metadata: json!({ UPSTREAM_URL: url }),
        };
        index.versions.insert("v1.10.2".into(), mod_only.clone());
        assert_eq!(latest(&index).unwrap().0, "v1.10.0");
        assert!(!String::from_utf8_lossy(&render_list(&index)).contains("v1.10.2"));
        mod_only.assets.insert(zip_asset("v1.10.2"), zip(json!("http://127.0.0.1:9/go/@v/v1.10.2.zip")));
        index.versions.insert("v1.10.2".into(), mod_only);
        assert_eq!(latest(&index).unwrap().0, "v1.10.2");
        index.versions.remove("v1.10.2");
        // A newer release that retracts itself and an interval.
        index.versions.insert("v1.12.0".into(), entry(Published, &[("v1.9.0", "v1.10.1"), ("v1.12.0", "v1.12.0")]));
        let retracted: Vec<_> = retracted_versions(&index).into_iter().collect();
        assert_eq!(retracted, ["v1.10.0", "v1.10.1-0.20240102030405-abcdefabcdef", "v1.12.0", "v1.9.0"]);
        // Once the core has unlisted them, the self-retracted version
        // still decides (it is installable).
        for version in &retracted {
            index.versions.get_mut(version).unwrap().status = Unlisted;
        }
        assert_eq!(retracted_versions(&index).len(), 4);
        assert_eq!(&render_list(&index)[..], b"v1.0.0\nv1.11.0-rc.1\n");
        assert_eq!(latest(&index).unwrap().0, "v1.0.0");
        // Only pseudo-versions: @latest falls back to the newest of them.
        let mut pseudo = PackageIndex::default();
        pseudo.versions.insert("v0.0.0-20240102030405-abcdefabcdef".into(), entry(Published, &[]));
        pseudo.versions.insert("v0.0.0-20250102030405-abcdefabcdef".into(), entry(Published, &[]));
        assert!(render_list(&pseudo).is_empty());
        let (version, found) = latest(&pseudo).unwrap();
        assert_eq!(version, "v0.0.0-20250102030405-abcdefabcdef");
        assert_eq!(
            &render_info(version, found)[..],
            br#"{"Time":"2025-01-02T03:04:05Z","Version":"v0.0.0-20250102030405-abcdefabcdef"}"#
        );
        assert_eq!(
            &render_info("v1.0.0", &index.versions["v1.0.0"])[..],
            br#"{"Time":"2023-11-14T22:13:20Z","Version":"v1.0.0"}"#
        );
    }

    #[test]
    fn proxy_requests() {
        let parse = |rest: &str| parse_request(rest).unwrap();
        assert_eq!(
            parse("example.com/!acme/m/@v/list"),
            Some(ProxyRequest::List { path: "example.com/Acme/m".into() })
        );
        assert_eq!(parse("example.com/m/@latest"), Some(ProxyRequest::Latest { path: "example.com/m".into() }));
        assert_eq!(
            parse("example.com/m/@v/v1.0.0-!r!c1.info"),
            Some(ProxyRequest::File {
                path: "example.com/m".into(),
                version: "v1.0.0-RC1".into(),
                kind: FileKind::Info
            })
        );
        assert_eq!(
            parse("example.com/m/v2/@v/v2.0.0+incompatible.zip"),
            Some(ProxyRequest::File {
                path: "example.com/m/v2".into(),
                version: "v2.0.0+incompatible".into(),
                kind: FileKind::Zip
            })
        );
        let sumdb = |name: &str, path: &str| Some(ProxyRequest::SumDb { name: name.into(), path: path.into() });
        assert_eq!(parse("sumdb/sum.example.org/supported"), sumdb("sum.example.org", "supported"));
        assert_eq!(parse("sumdb/sum.example.org/latest"), sumdb("sum.example.org", "latest"));
        assert_eq!(
            parse("sumdb/sum.example.org/lookup/example.com/!acme/m@v1.0.0"),
            sumdb("sum.example.org", "lookup/example.com/!acme/m@v1.0.0")
        );
        assert_eq!(
            parse("sumdb/sum.example.org/tile/8/0/x001/234.p/5"),
            sumdb("sum.example.org", "tile/8/0/x001/234.p/5")
        );
        for refused in [
            "sumdb/sum.example.org/lookup/../../etc",
            "sumdb/Sum.Example.org/supported",
            "sumdb/sum.example.org/other",
            "sumdb/sum.example.org/tile/8//1",
            "sumdb/127.0.0.1:9/supported",
            "sumdb/sum.example.org/lookup/a?b",
        ] {
            assert_eq!(parse(refused), None, "{refused}");
        }
        assert_eq!(parse("example.com/m/@v/v1.0.0.tar"), None);
        assert_eq!(parse("example.com/m"), None);
        assert!(matches!(parse_request("example.com/Acme/@v/list"), Err(GoError::InvalidEscape { .. })));
        assert!(matches!(parse_request("example.com/m!/@v/list"), Err(GoError::InvalidEscape { .. })));
        assert!(matches!(parse_request("example/m/@v/list"), Err(GoError::InvalidPath { .. })));
        assert!(matches!(parse_request("example.com/m/@v/V1.0.0.info"), Err(GoError::InvalidEscape { .. })));
    }

    #[test]
    fn upstream_lists_become_unstored_versions() {
        let index = upstream_index(
            b"v1.0.0\nnot-a-version\nv1.1.0-rc.1\n",
            "example.internal/Acme/m",
            "pub",
            "http://up/example.internal/!acme/m/@v/",
        );
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["v1.0.0", "v1.1.0-rc.1"]);
        let entry = &index.versions["v1.0.0"];
        assert_eq!(
            entry.assets["v1.0.0.zip"].metadata[UPSTREAM_URL],
            "http://up/example.internal/!acme/m/@v/v1.0.0.zip"
        );
        assert_eq!(
            entry.assets["v1.0.0.mod"].metadata[UPSTREAM_URL],
            "http://up/example.internal/!acme/m/@v/v1.0.0.mod"
        );
        assert_eq!(entry.fetched_from.as_deref(), Some("pub"));
        assert_eq!(
            info_time(br#"{"Version":"v1.0.0","Time":"2023-04-05T06:07:08Z"}"#).unwrap().to_rfc3339(),
            "2023-04-05T06:07:08+00:00"
        );
        assert!(info_time(b"{}").is_none());
    }
}
