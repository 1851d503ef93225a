//! Each package client's configuration for one Wharf repository, written
//! the way the client reads it: merged into the user's own files (settings
//! that are not this registry's are kept as they are), and removed again by
//! `logout`. Pure text editing; the caller reads and writes the files.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// A client `wharf login` configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// npm and pnpm: the user's `~/.npmrc` (read by both; pnpm expands no
    /// variables in a project's `.npmrc`, so the token goes here).
    #[value(alias = "pnpm")]
    Npm,
    /// Yarn 2 and later (Berry): the user's `~/.yarnrc.yml`.
    Yarn,
    /// Maven: the user's `~/.m2/settings.xml` (a server with the token, a profile with
    /// the repository, and a mirror of Maven Central when the repository proxies it).
    Mvn,
    /// NuGet: the user `NuGet.Config` of the dotnet CLI and of nuget.exe (a package
    /// source with its credentials).
    Nuget,
    /// The go command: the user's go env file (`go env -w`: `GOPROXY` and `GONOSUMDB`)
    /// and `~/.netrc` (the token, which the go command sends only over https).
    Go,
    /// pip: the user's `pip.conf` (`index-url` with the token).
    Pip,
    /// twine: `~/.pypirc`, a repository named after the registry.
    Twine,
    /// Poetry: its user `config.toml` (a repository named after the registry, to publish
    /// to) and `auth.toml` (its token, used for a project source of the same name).
    Poetry,
    /// uv: the user `uv.toml`, an `[[index]]` named after the registry (the default
    /// index, with its publish URL).
    Uv,
    /// cargo: `$CARGO_HOME/config.toml` (the registry) and `credentials.toml` (its token).
    Cargo,
}

/// Where the repository is and what the client is told.
#[derive(Clone, Debug)]
pub struct Target {
    /// The registry's base URL, no trailing slash.
    pub registry: String,
    pub repository: String,
    /// The name the registry gets in the clients' configurations.
    pub name: String,
    /// The formats whose public packages the repository serves through its chain: a
    /// client of such a format gets it as its mirror of the public index.
    pub proxies: Vec<String>,
    /// Go: the go command's `GOPROXY` without its env file (its default, or the
    /// environment's): what follows the repository when the file sets none, for modules
    /// the repository does not have (unless it proxies Go modules).
    pub go_fallback: String,
    /// Go: module path patterns published in the repository, which the public checksum
    /// database does not know (`GONOSUMDB`).
    pub private_modules: Vec<String>,
}

impl Target {
    fn proxies(&self, format: &str) -> bool {
        self.proxies.iter().any(|proxied| proxied == format)
    }
}

/// One file's new contents.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub contents: String,
}

/// The user's folders the clients read.
pub struct Homes {
    pub home: PathBuf,
    pub xdg_config: PathBuf,
    pub cargo: PathBuf,
}

impl Homes {
    pub fn from_environment() -> anyhow::Result<Homes> {
        let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
        let xdg_config = std::env::var_os("XDG_CONFIG_HOME").map_or_else(|| home.join(".config"), PathBuf::from);
        let cargo = std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
        Ok(Homes { home, xdg_config, cargo })
    }
}

impl Target {
    fn npm_url(&self) -> String {
        format!("{}/npm/{}/", self.registry, self.repository)
    }

    /// `//host:port/npm/{repo}/`: the key npm files a token under.
    fn npm_auth_prefix(&self) -> String {
        let url = self.npm_url();
        let without_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        format!("//{without_scheme}")
    }

    fn pypi_upload_url(&self) -> String {
        format!("{}/pypi/{}/", self.registry, self.repository)
    }

    fn pypi_index_url(&self, token: Option<&str>) -> String {
        let index = format!("{}/pypi/{}/simple/", self.registry, self.repository);
        match (token, index.split_once("://")) {
            (Some(token), Some((scheme, rest))) => format!("{scheme}://__token__:{token}@{rest}"),
            _ => index,
        }
    }

    /// The simple index without its scheme: how this registry's
    /// `index-url` ends, with or without credentials in it.
    fn pypi_index_host_path(&self) -> String {
        let index = self.pypi_index_url(None);
        index.split_once("://").map_or(index.clone(), |(_, rest)| rest.to_owned())
    }

    fn go_proxy(&self) -> String {
        format!("{}/go/{}", self.registry, self.repository)
    }

    fn maven_url(&self) -> String {
        format!("{}/maven/{}/", self.registry, self.repository)
    }

    fn nuget_url(&self) -> String {
        format!("{}/nuget/{}/v3/index.json", self.registry, self.repository)
    }

    /// The registry's host and port, as its URL gives them.
    fn authority(&self) -> &str {
        let rest = self.registry.split_once("://").map_or(self.registry.as_str(), |(_, rest)| rest);
        rest.split('/').next().unwrap_or_default()
    }

    /// The registry's host name, without port.
    fn host(&self) -> String {
        let authority = self.authority();
        match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default().to_owned(),
            None => authority.split(':').next().unwrap_or_default().to_owned(),
        }
    }

    fn is_http(&self) -> bool {
        self.registry.starts_with("http://")
    }

    fn cargo_index(&self) -> String {
        format!("sparse+{}/cargo/{}/index/", self.registry, self.repository)
    }
}

/// The files `tool` needs changed for `target`, from their current
/// contents (`read` gives `None` for a file that does not exist); `token`
/// `None` removes this registry's settings (logout).
pub fn changes(
    tool: Tool,
    target: &Target,
    homes: &Homes,
    token: Option<&str>,
    read: impl Fn(&PathBuf) -> Option<String>,
) -> anyhow::Result<Vec<Change>> {
    // A file the edit leaves as it is (a logout with nothing of ours in it,
    // a file that is not there) is not written.
    let change = |path: PathBuf, edit: &dyn Fn(&str) -> anyhow::Result<String>| -> anyhow::Result<Option<Change>> {
        let current = read(&path);
        let contents = edit(current.as_deref().unwrap_or_default())
            .with_context(|| format!("cannot update {}", path.display()))?;
        Ok((current.as_deref() != Some(contents.as_str()) && !(current.is_none() && contents.is_empty()))
            .then_some(Change { path, contents }))
    };
    let changes = match tool {
        Tool::Npm => vec![change(homes.home.join(".npmrc"), &|text| Ok(npmrc(text, target, token)))?],
        Tool::Pip => vec![change(homes.xdg_config.join("pip/pip.conf"), &|text| Ok(pip_conf(text, target, token)))?],
        Tool::Twine => vec![change(homes.home.join(".pypirc"), &|text| Ok(pypirc(text, target, token)))?],
        Tool::Uv => vec![change(homes.xdg_config.join("uv/uv.toml"), &|text| uv_toml(text, target, token))?],
        Tool::Yarn => vec![change(homes.home.join(".yarnrc.yml"), &|text| Ok(yarnrc(text, target, token)))?],
        Tool::Mvn => {
            vec![change(homes.home.join(".m2/settings.xml"), &|text| Ok(maven_settings(text, target, token)))?]
        }
        // dotnet reads ~/.nuget/NuGet; nuget.exe on Mono reads the XDG folder.
        Tool::Nuget => vec![
            change(homes.home.join(".nuget/NuGet/NuGet.Config"), &|text| Ok(nuget_config(text, target, token)))?,
            change(homes.xdg_config.join("NuGet/NuGet.Config"), &|text| Ok(nuget_config(text, target, token)))?,
        ],
        Tool::Poetry => vec![
            change(homes.xdg_config.join("pypoetry/config.toml"), &|text| {
                let url = token.map(|_| target.pypi_upload_url());
                toml_table_set(text, &["repositories", &target.name], &[("url", url.as_deref())])
            })?,
            change(homes.xdg_config.join("pypoetry/auth.toml"), &|text| {
                let user = token.map(|_| "__token__");
                toml_table_set(text, &["http-basic", &target.name], &[("username", user), ("password", token)])
            })?,
        ],
        Tool::Go => vec![
            change(homes.xdg_config.join("go/env"), &|text| Ok(go_env(text, target, token.is_some())))?,
            change(homes.home.join(".netrc"), &|text| Ok(netrc(text, target, token)))?,
        ],
        Tool::Cargo => vec![
            change(homes.cargo.join("config.toml"), &|text| cargo_config(text, target, token.is_some()))?,
            change(homes.cargo.join("credentials.toml"), &|text| cargo_credentials(text, target, token))?,
        ],
    };
    Ok(changes.into_iter().flatten().collect())
}

/// What to type next, for a client whose publishing the written files cannot set up alone.
pub fn next_step(tool: Tool, target: &Target) -> Option<String> {
    match tool {
        Tool::Mvn => Some(format!(
            "deploy with: mvn deploy -DaltDeploymentRepository={}::{} (or a distributionManagement repository with id {})",
            target.name,
            target.maven_url(),
            target.name
        )),
        Tool::Nuget => {
            Some(format!("push with: nuget push PACKAGE.nupkg -Source {} (or dotnet nuget push)", target.name))
        }
        Tool::Twine => Some(format!("upload with: twine upload -r {} dist/*", target.name)),
        Tool::Poetry => Some(format!(
            "publish with: poetry publish -r {name}; install through it with: poetry source add --priority=primary {name} {}",
            target.pypi_index_url(None),
            name = target.name
        )),
        Tool::Cargo => Some(format!("publish with: cargo publish --registry {}", target.name)),
        Tool::Go if target.is_http() => Some(
            "the go command sends credentials only over https: serve the registry over https, or read anonymously"
                .to_owned(),
        ),
        Tool::Go if target.private_modules.is_empty() => Some(
            "name the module paths published here with --private-modules, or the go command checks them in the \
             public checksum database, which does not know them"
                .to_owned(),
        ),
        Tool::Npm | Tool::Yarn | Tool::Pip | Tool::Uv | Tool::Go => None,
    }
}

/// `~/.npmrc`: `registry=` pointing at the repository and the token under
/// its URL; other lines kept. Logout removes both (the `registry=` line
/// only if it is this repository's).
fn npmrc(text: &str, target: &Target, token: Option<&str>) -> String {
    let auth_key = format!("{}:_authToken", target.npm_auth_prefix());
    let registry_line = format!("registry={}", target.npm_url());
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            key != auth_key && !(key == "registry" && (token.is_some() || line.trim() == registry_line))
        })
        .map(str::to_owned)
        .collect();
    if let Some(token) = token {
        lines.push(registry_line);
        lines.push(format!("{auth_key}={token}"));
    }
    join_lines(&lines)
}

fn join_lines(lines: &[String]) -> String {
    if lines.is_empty() { String::new() } else { format!("{}\n", lines.join("\n")) }
}

/// Sets (or with `None` removes, when `ours` says the value is this
/// registry's) `key` in `[section]` of an INI file, keeping everything else.
fn ini_set(text: &str, section: &str, key: &str, value: Option<&str>, ours: impl Fn(&str) -> bool) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut placed = false;
    let header = format!("[{section}]");
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            if current == section
                && !placed
                && let Some(value) = value
            {
                lines.push(format!("{key} = {value}"));
                placed = true;
            }
            current = trimmed[1..trimmed.len() - 1].trim().to_owned();
            lines.push(line.to_owned());
            continue;
        }
        let line_key = trimmed.split(['=', ':']).next().unwrap_or_default().trim();
        if current == section && line_key == key {
            let existing = trimmed.split_once(['=', ':']).map_or("", |(_, v)| v.trim());
            match value {
                Some(value) if !placed => {
                    lines.push(format!("{key} = {value}"));
                    placed = true;
                }
                Some(_) => {}
                None if ours(existing) => {}
                None => lines.push(line.to_owned()),
            }
            continue;
        }
        lines.push(line.to_owned());
    }
    if let Some(value) = value.filter(|_| !placed) {
        if current != section {
            if !lines.iter().any(|l| l.trim() == header) {
                lines.push(header);
            } else {
                // The section exists earlier: insert right after its header.
                let at = lines.iter().position(|l| l.trim() == header).map_or(lines.len(), |i| i + 1);
                lines.insert(at, format!("{key} = {value}"));
                return join_lines(&lines);
            }
        }
        lines.push(format!("{key} = {value}"));
    }
    join_lines(&lines)
}

/// The user `pip.conf`: `[global] index-url` with the token. An index the user had is
/// kept in a comment and put back by logout (added as an extra index instead, it would let
/// a public package shadow an internal one).
fn pip_conf(text: &str, target: &Target, token: Option<&str>) -> String {
    const KEPT: &str = "# index-url before wharf login: ";
    let ours = |value: &str| value.ends_with(&target.pypi_index_host_path());
    let current = text
        .lines()
        .skip_while(|line| line.trim() != "[global]")
        .skip(1)
        .take_while(|line| !line.trim().starts_with('['))
        .find_map(|line| {
            let (key, value) = line.split_once(['=', ':'])?;
            (key.trim() == "index-url").then(|| value.trim().to_owned())
        });
    let kept = text.lines().find_map(|line| line.strip_prefix(KEPT)).map(str::to_owned);
    let without_kept: String =
        text.lines().filter(|line| !line.starts_with(KEPT)).map(|line| format!("{line}\n")).collect();
    match token {
        Some(token) => {
            let value = target.pypi_index_url(Some(token));
            let mut text = ini_set(&without_kept, "global", "index-url", Some(&value), ours);
            let previous = current.filter(|value| !ours(value)).or(kept);
            if let Some(previous) = previous {
                text.push_str(&format!("{KEPT}{previous}\n"));
            }
            text
        }
        // Ours gives way to the kept index, in its place; an index the user set since is
        // theirs, and the kept one is stale.
        None => match kept {
            Some(previous) if current.as_deref().is_some_and(ours) => {
                ini_set(&without_kept, "global", "index-url", Some(&previous), ours)
            }
            _ => ini_set(&without_kept, "global", "index-url", None, ours),
        },
    }
}

/// `~/.pypirc`: a repository section named after the registry, listed in
/// `[distutils] index-servers`; logout removes both.
fn pypirc(text: &str, target: &Target, token: Option<&str>) -> String {
    let text = join_continuations(text);
    // Drop our section, whatever it held.
    let mut kept: Vec<String> = Vec::new();
    let mut in_ours = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            in_ours = trimmed[1..trimmed.len() - 1].trim() == target.name;
        }
        if !in_ours {
            kept.push(line.to_owned());
        }
    }
    let text = join_lines(&kept);
    let servers: Vec<String> = text
        .lines()
        .skip_while(|l| l.trim() != "[distutils]")
        .skip(1)
        .take_while(|l| !l.trim().starts_with('['))
        .find_map(|l| {
            l.trim().strip_prefix("index-servers").map(|rest| rest.trim_start_matches(['=', ':', ' ']).to_owned())
        })
        .map(|list| list.split_whitespace().map(str::to_owned).filter(|s| *s != target.name).collect())
        .unwrap_or_default();
    let mut servers = servers;
    if token.is_some() {
        servers.push(target.name.clone());
    }
    let list = servers.join(" ");
    let mut text = ini_set(&text, "distutils", "index-servers", (!list.is_empty()).then_some(list.as_str()), |_| true);
    if let Some(token) = token {
        text.push_str(&format!(
            "\n[{}]\nrepository = {}\nusername = __token__\npassword = {token}\n",
            target.name,
            target.pypi_upload_url()
        ));
    }
    text
}

/// An INI file with each value on one line: indented lines continue the
/// value above them (`index-servers =` followed by one name per line).
fn join_continuations(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let continues = line.starts_with([' ', '\t']) && !line.trim().is_empty();
        match lines.last_mut() {
            Some(previous) if continues && previous.contains(['=', ':']) && !previous.trim().starts_with('[') => {
                previous.push(' ');
                previous.push_str(line.trim());
            }
            _ => lines.push(line.to_owned()),
        }
    }
    join_lines(&lines)
}

/// The user `uv.toml`: an `[[index]]` named after the registry, the
/// default, with the token in its URL and its publish URL; logout removes
/// that entry. Other indexes and settings are kept.
fn uv_toml(text: &str, target: &Target, token: Option<&str>) -> anyhow::Result<String> {
    let mut document: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let indexes = document.entry("index").or_insert(toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    let Some(indexes) = indexes.as_array_of_tables_mut() else { bail!("its `index` is not an array of tables") };
    indexes.retain(|index| index.get("name").and_then(|n| n.as_str()) != Some(target.name.as_str()));
    if let Some(token) = token {
        let mut index = toml_edit::Table::new();
        index["name"] = toml_edit::value(target.name.as_str());
        index["url"] = toml_edit::value(target.pypi_index_url(Some(token)));
        index["publish-url"] = toml_edit::value(target.pypi_upload_url());
        index["default"] = toml_edit::value(true);
        indexes.push(index);
    }
    if indexes.is_empty() {
        document.remove("index");
    }
    Ok(document.to_string())
}

/// The keys of `~/.yarnrc.yml` a login sets: the registry, its token, auth on reads (a
/// private repository answers 401 otherwise), http allowed for its host when it is http,
/// and Yarn's own release-age gate off (the registry decides release age for what it
/// proxies, with its cooldown, and a package published in-house minutes ago must install).
const YARN_KEYS: [&str; 5] =
    ["npmRegistryServer", "npmAuthToken", "npmAlwaysAuth", "unsafeHttpWhitelist", "npmMinimalAgeGate"];

/// `~/.yarnrc.yml`: our settings in a block between marker comments, any earlier value of
/// those keys taken out (Yarn refuses a key given twice); logout removes the block.
fn yarnrc(text: &str, target: &Target, token: Option<&str>) -> String {
    let (begin, end) = markers("#", "", &target.name);
    let mut kept: Vec<String> = Vec::new();
    let mut in_ours = false;
    let mut in_replaced_key = false;
    for line in text.lines() {
        if line.trim() == begin {
            in_ours = true;
            continue;
        }
        if in_ours {
            in_ours = line.trim() != end;
            continue;
        }
        // A replaced key's value may continue on indented lines (a list).
        let top_level_key =
            (!line.starts_with([' ', '\t', '-', '#'])).then(|| line.split(':').next().unwrap_or("").trim());
        if let Some(key) = top_level_key.filter(|key| !key.is_empty()) {
            in_replaced_key = token.is_some() && YARN_KEYS.contains(&key);
        }
        if !in_replaced_key {
            kept.push(line.to_owned());
        }
    }
    if let Some(token) = token {
        kept.push(begin);
        kept.push(format!("npmRegistryServer: \"{}\"", target.npm_url()));
        kept.push(format!("npmAuthToken: \"{token}\""));
        kept.push("npmAlwaysAuth: true".to_owned());
        if target.is_http() {
            kept.push(format!("unsafeHttpWhitelist: [\"{}\"]", target.host()));
        }
        kept.push("npmMinimalAgeGate: 0".to_owned());
        kept.push(end);
    }
    join_lines(&kept)
}

/// The comment lines that open and close what `login` wrote for registry `name`.
fn markers(open: &str, close: &str, name: &str) -> (String, String) {
    (format!("{open} wharf login: {name}{close}"), format!("{open} end of wharf login: {name}{close}"))
}

/// `text` without the blocks between `begin` and `end` (each on a line of its own, or
/// inline), and without the line breaks those leave empty.
fn without_blocks(text: &str, begin: &str, end: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(begin) {
        let Some(stop) = rest[start..].find(end).map(|at| start + at + end.len()) else { break };
        let before = &rest[..start];
        // A block alone on its lines goes with its indentation and line break.
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        let alone = before[line_start..].trim().is_empty() && rest[stop..].starts_with('\n');
        if alone {
            out.push_str(&before[..line_start]);
            rest = &rest[stop + 1..];
        } else {
            out.push_str(before);
            rest = &rest[stop..];
        }
    }
    out.push_str(rest);
    out
}

/// An XML configuration file with, for each `(container, entry)`, `entry` added to the
/// root's `container` element between marker comments (or, when the file has no such
/// container, the container itself between them); earlier blocks of ours are taken out
/// first. Everything else in the file is kept as it is.
fn xml_with_entries(text: &str, root: &str, name: &str, entries: &[(&str, String)]) -> String {
    let (begin, end) = markers("<!--", " -->", name);
    let mut text = without_blocks(text, &begin, &end);
    if entries.is_empty() {
        return text;
    }
    if !text.contains(&format!("<{root}")) {
        text = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<{root}>\n</{root}>\n");
    } else if let Some(at) = text.find(&format!("<{root}/>")).or_else(|| text.find(&format!("<{root} />"))) {
        let width = text[at..].find("/>").map_or(0, |i| i + 2);
        text.replace_range(at..at + width, &format!("<{root}>\n</{root}>"));
    }
    for (container, entry) in entries {
        let closing = format!("</{container}>");
        let block = format!("{begin}{entry}{end}");
        match text.find(&closing) {
            Some(at) => text.insert_str(at, &format!("  {block}\n  ")),
            None => {
                let at = text.rfind(&format!("</{root}>")).unwrap_or(text.len());
                text.insert_str(at, &format!("  {begin}<{container}>{entry}</{container}>{end}\n"));
            }
        }
    }
    text
}

fn xml_escape(value: &str) -> String {
    value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `~/.m2/settings.xml`: a server named after the registry holding the token, an active
/// profile adding the repository (releases and snapshots, for dependencies and plugins),
/// and, when the repository proxies Maven Central, a mirror of it (so nothing goes around
/// the registry). Deploy with `-DaltDeploymentRepository={name}::{url}` or a
/// `distributionManagement` naming the same id.
fn maven_settings(text: &str, target: &Target, token: Option<&str>) -> String {
    let name = xml_escape(&target.name);
    let url = xml_escape(&target.maven_url());
    let entries = match token {
        None => Vec::new(),
        Some(token) => {
            let repository = |element: &str| {
                format!(
                    "<{element}><id>{name}</id><url>{url}</url><releases><enabled>true</enabled></releases>\
                     <snapshots><enabled>true</enabled></snapshots></{element}>"
                )
            };
            let mut entries = vec![
                (
                    "servers",
                    format!(
                        "<server><id>{name}</id><username>token</username><password>{}</password></server>",
                        xml_escape(token)
                    ),
                ),
                (
                    "profiles",
                    format!(
                        "<profile><id>{name}</id><repositories>{}</repositories><pluginRepositories>{}</pluginRepositories></profile>",
                        repository("repository"),
                        repository("pluginRepository")
                    ),
                ),
                ("activeProfiles", format!("<activeProfile>{name}</activeProfile>")),
            ];
            if target.proxies("maven") {
                entries.push((
                    "mirrors",
                    format!("<mirror><id>{name}</id><mirrorOf>central</mirrorOf><url>{url}</url></mirror>"),
                ));
            }
            entries
        }
    };
    xml_with_entries(text, "settings", &target.name, &entries)
}

/// A user `NuGet.Config`: a package source named after the registry and its credentials
/// (the token as a clear-text password: NuGet encrypts passwords only on Windows).
fn nuget_config(text: &str, target: &Target, token: Option<&str>) -> String {
    let name = xml_escape(&target.name);
    let entries = match token {
        None => Vec::new(),
        Some(token) => {
            let insecure = if target.is_http() { " allowInsecureConnections=\"true\"" } else { "" };
            vec![
                (
                    "packageSources",
                    format!(
                        "<add key=\"{name}\" value=\"{}\" protocolVersion=\"3\"{insecure} />",
                        xml_escape(&target.nuget_url())
                    ),
                ),
                (
                    "packageSourceCredentials",
                    format!(
                        "<{name}><add key=\"Username\" value=\"token\" /><add key=\"ClearTextPassword\" value=\"{}\" /></{name}>",
                        xml_escape(token)
                    ),
                ),
            ]
        }
    };
    xml_with_entries(text, "configuration", &target.name, &entries)
}

/// The go env file (`go env -w` writes it): `GOPROXY` with the repository first (alone
/// when it proxies Go modules, else before what was in use), and `GONOSUMDB` with the
/// private module patterns added. Not `GOPRIVATE`: that would also send those modules
/// around the proxy. Logout takes the repository out of `GOPROXY`.
fn go_env(text: &str, target: &Target, login: bool) -> String {
    let ours = target.go_proxy();
    let value = |key: &str| text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned);
    let list = |value: &str| -> Vec<String> {
        value.split([',', '|']).map(str::trim).filter(|entry| !entry.is_empty()).map(str::to_owned).collect()
    };
    let without_ours = |value: &str| -> String {
        // `,` and `|` both separate entries; keep the separators of the rest.
        let mut entries: Vec<&str> = Vec::new();
        let mut separators: Vec<char> = Vec::new();
        let mut start = 0;
        for (at, c) in value.char_indices().filter(|(_, c)| *c == ',' || *c == '|') {
            entries.push(&value[start..at]);
            separators.push(c);
            start = at + 1;
        }
        entries.push(&value[start..]);
        let mut out = String::new();
        for (position, entry) in entries.iter().enumerate() {
            if entry.trim() == ours || entry.trim().is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(separators.get(position.saturating_sub(1)).copied().unwrap_or(','));
            }
            out.push_str(entry.trim());
        }
        out
    };
    let proxy = match (login, value("GOPROXY")) {
        (true, _) if target.proxies("go") => Some(ours.clone()),
        (true, current) => {
            let rest = without_ours(current.as_deref().unwrap_or(&target.go_fallback));
            let rest = if rest.is_empty() { "direct".to_owned() } else { rest };
            Some(format!("{ours},{rest}"))
        }
        // What login put after ours when the file set nothing is the go command's own
        // default: with ours gone, the line has nothing left to say.
        (false, Some(current)) => {
            Some(without_ours(&current)).filter(|rest| !rest.is_empty() && *rest != target.go_fallback)
        }
        (false, None) => None,
    };
    let mut private = list(&value("GONOSUMDB").unwrap_or_default());
    if login {
        for pattern in &target.private_modules {
            if !private.contains(pattern) {
                private.push(pattern.clone());
            }
        }
    }
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with("GOPROXY=") && !line.starts_with("GONOSUMDB="))
        .map(str::to_owned)
        .collect();
    if let Some(proxy) = proxy {
        lines.push(format!("GOPROXY={proxy}"));
    }
    if !private.is_empty() {
        lines.push(format!("GONOSUMDB={}", private.join(",")));
    }
    join_lines(&lines)
}

/// `~/.netrc`: an entry for the registry with the token (`login token`); other entries
/// kept. The machine is the host and, when the URL has one, the port: the go command
/// matches it so. One token per host and port. Logout removes the entry if it is ours.
fn netrc(text: &str, target: &Target, token: Option<&str>) -> String {
    let host = target.authority();
    let mut lines: Vec<String> = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if matches!(first, "machine" | "default" | "macdef") {
            let entry_host = if first == "machine" { words.next().unwrap_or_default() } else { "" };
            let rest: Vec<&str> = line.split_whitespace().collect();
            let ours = rest.windows(2).any(|pair| pair == ["login", "token"]);
            skipping = first == "machine" && entry_host == host && (token.is_some() || ours);
        }
        if !skipping {
            lines.push(line.to_owned());
        }
    }
    if let Some(token) = token {
        lines.push(format!("machine {host} login token password {token}"));
    }
    join_lines(&lines)
}

/// A TOML file with the table at `path` holding `values` (a `None` value, or every value
/// `None`, takes the table out); other tables and comments kept. Tables left empty above
/// it go too.
fn toml_table_set(text: &str, path: &[&str], values: &[(&str, Option<&str>)]) -> anyhow::Result<String> {
    let mut document: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let Some((name, parents)) = path.split_last() else { return Ok(text.to_owned()) };
    let mut table = document.as_table_mut();
    for parent in parents {
        let item = table.entry(parent).or_insert(toml_edit::table());
        let Some(inner) = item.as_table_mut() else { bail!("its `{parent}` is not a table") };
        inner.set_implicit(true);
        table = inner;
    }
    if values.iter().all(|(_, value)| value.is_none()) {
        table.remove(name);
    } else {
        let mut entry = toml_edit::Table::new();
        for (key, value) in values {
            if let Some(value) = value {
                entry[*key] = toml_edit::value(*value);
            }
        }
        table.insert(name, toml_edit::Item::Table(entry));
    }
    // Parents left empty by a removal are removed too, innermost first.
    for depth in (1..=parents.len()).rev() {
        let mut table = document.as_table_mut();
        for parent in &parents[..depth - 1] {
            match table.get_mut(parent).and_then(|item| item.as_table_mut()) {
                Some(inner) => table = inner,
                None => return Ok(document.to_string()),
            }
        }
        if table.get(parents[depth - 1]).and_then(|item| item.as_table()).is_some_and(|t| t.is_empty()) {
            table.remove(parents[depth - 1]);
        }
    }
    Ok(document.to_string())
}

/// `$CARGO_HOME/config.toml`: `[registries.{name}]` with the sparse index
/// and the plain token provider, and, when the repository proxies the public
/// index, crates.io replaced by it (`[source.crates-io] replace-with`);
/// logout removes both (the replacement only if it is ours).
fn cargo_config(text: &str, target: &Target, login: bool) -> anyhow::Result<String> {
    let mut document: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let sources = document.entry("source").or_insert(toml_edit::table());
    let Some(sources) = sources.as_table_mut() else { bail!("its `source` is not a table") };
    sources.set_implicit(true);
    let replaced_by_us = sources
        .get("crates-io")
        .and_then(|crates_io| crates_io.get("replace-with"))
        .and_then(|with| with.as_str())
        .is_some_and(|with| with == target.name);
    if login && target.proxies("cargo") {
        let crates_io = sources.entry("crates-io").or_insert(toml_edit::table());
        let Some(crates_io) = crates_io.as_table_mut() else { bail!("its `source.crates-io` is not a table") };
        crates_io["replace-with"] = toml_edit::value(target.name.as_str());
    } else if replaced_by_us && let Some(crates_io) = sources.get_mut("crates-io").and_then(|t| t.as_table_mut()) {
        crates_io.remove("replace-with");
        if crates_io.is_empty() {
            sources.remove("crates-io");
        }
    }
    if sources.is_empty() {
        document.remove("source");
    }
    let registries = document.entry("registries").or_insert(toml_edit::table());
    let Some(registries) = registries.as_table_mut() else { bail!("its `registries` is not a table") };
    registries.set_implicit(true);
    if login {
        let mut table = toml_edit::Table::new();
        table["index"] = toml_edit::value(target.cargo_index());
        table["credential-provider"] = toml_edit::value("cargo:token");
        registries.insert(&target.name, toml_edit::Item::Table(table));
    } else {
        registries.remove(&target.name);
    }
    Ok(document.to_string())
}

/// `$CARGO_HOME/credentials.toml`: the token of `[registries.{name}]`.
fn cargo_credentials(text: &str, target: &Target, token: Option<&str>) -> anyhow::Result<String> {
    let mut document: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let registries = document.entry("registries").or_insert(toml_edit::table());
    let Some(registries) = registries.as_table_mut() else { bail!("its `registries` is not a table") };
    registries.set_implicit(true);
    match token {
        Some(token) => {
            let mut table = toml_edit::Table::new();
            table["token"] = toml_edit::value(token);
            registries.insert(&target.name, toml_edit::Item::Table(table));
        }
        None => {
            registries.remove(&target.name);
        }
    }
    Ok(document.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            registry: "http://127.0.0.1:8080".into(),
            repository: "main".into(),
            name: "wharf".into(),
            proxies: Vec::new(),
            go_fallback: "direct".into(),
            private_modules: Vec::new(),
        }
    }

    #[test]
    fn logout_writes_no_file_that_was_not_there_and_login_writes_the_missing() {
        let homes = Homes { home: "/h".into(), xdg_config: "/h/.config".into(), cargo: "/h/.cargo".into() };
        for tool in [
            Tool::Npm,
            Tool::Yarn,
            Tool::Mvn,
            Tool::Nuget,
            Tool::Go,
            Tool::Pip,
            Tool::Twine,
            Tool::Poetry,
            Tool::Uv,
            Tool::Cargo,
        ] {
            assert!(changes(tool, &target(), &homes, None, |_| None).unwrap().is_empty(), "{tool:?}");
            assert!(!changes(tool, &target(), &homes, Some("T"), |_| None).unwrap().is_empty(), "{tool:?}");
        }
        let written = npmrc("", &target(), Some("T"));
        let again = changes(Tool::Npm, &target(), &homes, Some("T"), |_| Some(written.clone())).unwrap();
        assert!(again.is_empty(), "an unchanged file is not rewritten");
    }

    #[test]
    fn npmrc_keeps_other_settings_and_logout_removes_only_ours() {
        let before = "fund=false\nregistry=http://other.example/\n//other.example/:_authToken=keep\n";
        let after = npmrc(before, &target(), Some("T"));
        assert_eq!(
            after,
            "fund=false\n//other.example/:_authToken=keep\nregistry=http://127.0.0.1:8080/npm/main/\n//127.0.0.1:8080/npm/main/:_authToken=T\n"
        );
        assert_eq!(npmrc(&after, &target(), Some("T")), after, "logging in twice changes nothing");
        assert_eq!(npmrc(&after, &target(), None), "fund=false\n//other.example/:_authToken=keep\n");
    }

    #[test]
    fn ini_values_are_set_in_their_section() {
        let text = "[install]\ntimeout = 60\n[global]\nindex-url = http://old/\ntrusted-host = x\n";
        let set = ini_set(text, "global", "index-url", Some("http://new/"), |_| true);
        assert_eq!(set, "[install]\ntimeout = 60\n[global]\nindex-url = http://new/\ntrusted-host = x\n");
        assert_eq!(ini_set("", "global", "index-url", Some("v"), |_| true), "[global]\nindex-url = v\n");
        assert_eq!(
            ini_set("[global]\na = 1\n[other]\nb = 2\n", "global", "k", Some("v"), |_| true),
            "[global]\na = 1\nk = v\n[other]\nb = 2\n"
        );
        assert_eq!(
            ini_set(&set, "global", "index-url", None, |v| v == "http://new/"),
            "[install]\ntimeout = 60\n[global]\ntrusted-host = x\n"
        );
        assert_eq!(ini_set(&set, "global", "index-url", None, |_| false), set, "a value not ours stays");
    }

    #[test]
    fn pip_keeps_the_users_index_and_logout_puts_it_back() {
        let before = "[global]\nindex-url = https://mirror.example/simple/\ntimeout = 60\n";
        let after = pip_conf(before, &target(), Some("T"));
        assert_eq!(
            after,
            "[global]\nindex-url = http://__token__:T@127.0.0.1:8080/pypi/main/simple/\ntimeout = 60\n\
             # index-url before wharf login: https://mirror.example/simple/\n"
        );
        assert_eq!(pip_conf(&after, &target(), Some("T")), after, "logging in twice changes nothing");
        assert_eq!(pip_conf(&after, &target(), None), before);
        assert_eq!(pip_conf(&pip_conf("", &target(), Some("T")), &target(), None), "[global]\n");
    }

    #[test]
    fn pypirc_lists_the_repository_and_logout_takes_it_out() {
        let before = "[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = me\n";
        let after = pypirc("[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = me\n", &target(), Some("T"));
        assert!(after.contains("index-servers = pypi wharf"), "{after}");
        assert!(
            after.contains(
                "[wharf]\nrepository = http://127.0.0.1:8080/pypi/main/\nusername = __token__\npassword = T\n"
            ),
            "{after}"
        );
        assert!(after.contains("[pypi]\nusername = me"), "{after}");
        let out = pypirc(&after, &target(), None);
        assert!(!out.contains("wharf") && out.contains("index-servers = pypi") && out.contains("[pypi]"), "{out}");
        let multi_line = pypirc(before, &target(), Some("T"));
        assert!(multi_line.contains("index-servers = pypi wharf\n"), "{multi_line}");
        assert!(multi_line.contains("[wharf]") && multi_line.contains("[pypi]\nusername = me"), "{multi_line}");
    }

    #[test]
    fn uv_gets_a_default_index_and_keeps_the_others() {
        let before = "native-tls = true\n\n[[index]]\nname = \"mirror\"\nurl = \"https://m/simple/\"\n";
        let after = uv_toml(before, &target(), Some("T")).unwrap();
        assert!(after.starts_with("native-tls = true\n") && after.contains("name = \"mirror\""), "{after}");
        assert!(after.contains("url = \"http://__token__:T@127.0.0.1:8080/pypi/main/simple/\""), "{after}");
        assert!(
            after.contains("default = true") && after.contains("publish-url = \"http://127.0.0.1:8080/pypi/main/\"")
        );
        assert_eq!(uv_toml(&after, &target(), Some("T")).unwrap(), after, "logging in twice changes nothing");
        let out = uv_toml(&after, &target(), None).unwrap();
        assert!(!out.contains("pypi/main") && out.contains("mirror"), "{out}");
        assert_eq!(uv_toml(&uv_toml("", &target(), Some("T")).unwrap(), &target(), None).unwrap(), "");
    }

    #[test]
    fn yarnrc_replaces_the_keys_it_sets_and_logout_removes_its_block() {
        let before = "enableTelemetry: false\nnpmRegistryServer: \"https://other.example\"\nunsafeHttpWhitelist:\n  - intranet\nnodeLinker: node-modules\n";
        let after = yarnrc(before, &target(), Some("T"));
        assert_eq!(
            after,
            "enableTelemetry: false\nnodeLinker: node-modules\n# wharf login: wharf\nnpmRegistryServer: \"http://127.0.0.1:8080/npm/main/\"\n\
             npmAuthToken: \"T\"\nnpmAlwaysAuth: true\nunsafeHttpWhitelist: [\"127.0.0.1\"]\nnpmMinimalAgeGate: 0\n# end of wharf login: wharf\n"
        );
        assert_eq!(yarnrc(&after, &target(), Some("T")), after, "logging in twice changes nothing");
        assert_eq!(yarnrc(&after, &target(), None), "enableTelemetry: false\nnodeLinker: node-modules\n");
    }

    #[test]
    fn xml_files_get_marked_entries_and_keep_the_rest() {
        let proxy = Target { proxies: vec!["maven".into()], ..target() };
        let empty = maven_settings("", &proxy, Some("T"));
        assert!(
            empty.contains("<servers><server><id>wharf</id><username>token</username><password>T</password>"),
            "{empty}"
        );
        assert!(empty.contains("<mirrorOf>central</mirrorOf><url>http://127.0.0.1:8080/maven/main/</url>"), "{empty}");
        assert_eq!(
            maven_settings(&empty, &proxy, None),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<settings>\n</settings>\n"
        );
        let mine =
            "<settings>\n  <!-- mine -->\n  <servers>\n    <server><id>corp</id></server>\n  </servers>\n</settings>\n";
        let after = maven_settings(mine, &target(), Some("T"));
        assert!(
            after.contains("<server><id>corp</id></server>\n    <!-- wharf login: wharf --><server><id>wharf</id>"),
            "{after}"
        );
        assert!(!after.contains("<mirrors>"), "no mirror for a repository that proxies nothing: {after}");
        assert_eq!(maven_settings(&after, &target(), Some("T")), after, "logging in twice changes nothing");
        assert_eq!(maven_settings(&after, &target(), None), mine);
        let nuget = nuget_config("<?xml version=\"1.0\"?>\n<configuration />\n", &target(), Some("a&b"));
        assert!(nuget.contains("<add key=\"wharf\" value=\"http://127.0.0.1:8080/nuget/main/v3/index.json\" protocolVersion=\"3\" allowInsecureConnections=\"true\" />"), "{nuget}");
        assert!(nuget.contains("<add key=\"ClearTextPassword\" value=\"a&amp;b\" />"), "{nuget}");
        assert_eq!(
            nuget_config(&nuget, &target(), None),
            "<?xml version=\"1.0\"?>\n<configuration>\n</configuration>\n"
        );
    }

    #[test]
    fn go_env_puts_the_repository_first_and_logout_takes_it_out() {
        let private = Target { private_modules: vec!["corp.example/*".into()], ..target() };
        let before = "GOFLAGS=-mod=mod\nGOPROXY=https://mirror.example|direct\nGONOSUMDB=other.example\n";
        let after = go_env(before, &private, true);
        assert_eq!(
            after,
            "GOFLAGS=-mod=mod\nGOPROXY=http://127.0.0.1:8080/go/main,https://mirror.example|direct\nGONOSUMDB=other.example,corp.example/*\n"
        );
        assert_eq!(go_env(&after, &private, true), after, "logging in twice changes nothing");
        assert_eq!(
            go_env(&after, &private, false),
            "GOFLAGS=-mod=mod\nGOPROXY=https://mirror.example|direct\nGONOSUMDB=other.example,corp.example/*\n"
        );
        let fresh = go_env("", &target(), true);
        assert_eq!(fresh, "GOPROXY=http://127.0.0.1:8080/go/main,direct\n");
        assert_eq!(go_env(&fresh, &target(), false), "");
        let proxy = Target { proxies: vec!["go".into()], ..target() };
        assert_eq!(go_env(before, &proxy, true).lines().nth(1), Some("GOPROXY=http://127.0.0.1:8080/go/main"));
    }

    #[test]
    fn netrc_holds_one_entry_for_the_host() {
        let before =
            "machine other.example\n  login me\n  password secret\nmachine 127.0.0.1:8080 login old password x\n";
        let after = netrc(before, &target(), Some("T"));
        assert_eq!(
            after,
            "machine other.example\n  login me\n  password secret\nmachine 127.0.0.1:8080 login token password T\n"
        );
        assert_eq!(netrc(&after, &target(), None), "machine other.example\n  login me\n  password secret\n");
        let theirs = "machine 127.0.0.1:8080 login me password mine\n";
        assert_eq!(netrc(theirs, &target(), None), theirs, "logout leaves an entry it did not write");
    }

    #[test]
    fn toml_tables_are_set_and_removed_with_their_empty_parents() {
        let before = "# mine\n[repositories.other]\nurl = \"https://o/\"\n";
        let after = toml_table_set(before, &["repositories", "wharf"], &[("url", Some("http://w/"))]).unwrap();
        assert_eq!(
            after,
            "# mine\n[repositories.other]\nurl = \"https://o/\"\n\n[repositories.wharf]\nurl = \"http://w/\"\n"
        );
        assert_eq!(
            toml_table_set(&after, &["repositories", "wharf"], &[("url", None)]).unwrap().trim_end(),
            before.trim_end()
        );
        let alone =
            toml_table_set("", &["http-basic", "wharf"], &[("username", Some("__token__")), ("password", Some("T"))]);
        let alone = alone.unwrap();
        assert_eq!(alone, "[http-basic.wharf]\nusername = \"__token__\"\npassword = \"T\"\n");
        assert_eq!(
            toml_table_set(&alone, &["http-basic", "wharf"], &[("username", None), ("password", None)]).unwrap(),
            ""
        );
    }

    #[test]
    fn cargo_files_keep_comments_and_other_registries() {
        let config = "# mine\n[net]\nretry = 2\n\n[registries.other]\nindex = \"sparse+https://o/\"\n";
        let after = cargo_config(config, &target(), true).unwrap();
        assert!(after.starts_with("# mine\n[net]\nretry = 2\n"), "{after}");
        assert!(after.contains("[registries.other]") && after.contains("[registries.wharf]"), "{after}");
        assert!(after.contains("index = \"sparse+http://127.0.0.1:8080/cargo/main/index/\""), "{after}");
        let out = cargo_config(&after, &target(), false).unwrap();
        assert!(!out.contains("wharf") && out.contains("[registries.other]"), "{out}");
        let credentials = cargo_credentials("", &target(), Some("T")).unwrap();
        assert_eq!(credentials, "[registries.wharf]\ntoken = \"T\"\n");
        assert!(cargo_config("registries = 1", &target(), true).is_err());
        let proxy = Target { proxies: vec!["cargo".into()], ..target() };
        let replaced = cargo_config(config, &proxy, true).unwrap();
        assert!(replaced.contains("[source.crates-io]\nreplace-with = \"wharf\""), "{replaced}");
        assert_eq!(cargo_config(&replaced, &proxy, false).unwrap(), config, "logout restores the file");
        let theirs = "[source.crates-io]\nreplace-with = \"vendored\"\n";
        assert_eq!(cargo_config(theirs, &target(), false).unwrap(), theirs, "a replacement not ours stays");
    }
}
