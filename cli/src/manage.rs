//! `wharf packages`, `wharf versions` and `wharf audit`: the management API
//! (`/api/v1/`) for people at a terminal. Tables by default, the API's JSON with `--json`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the registry is and the token to use.
#[derive(Args)]
pub struct Api {
    /// The registry's URL, such as https://wharf.example.
    #[arg(long, env = "WHARF_REGISTRY")]
    registry: String,
    /// An environment variable holding the registry token (or the admin token).
    #[arg(long, value_name = "VAR", default_value = "WHARF_TOKEN")]
    token_env: String,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// A package of a repository.
#[derive(Args)]
pub struct PackageArgs {
    #[arg(long)]
    repository: String,
    /// npm, pypi, cargo, go, maven, nuget, swift or generic.
    #[arg(long)]
    format: String,
    /// As the format names it: `@scope/name`, `group:artifact`, `namespace/package`, `scope.name`.
    #[arg(long)]
    package: String,
}

#[derive(Subcommand)]
pub enum PackagesCommand {
    /// Lists the packages a repository holds.
    List {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        repository: String,
        #[arg(long)]
        format: Option<String>,
        /// Names starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// local (published here) or cached (fetched from upstream).
        #[arg(long)]
        origin: Option<String>,
        /// Packages with a version in this status (Published, Unlisted, Archived, Disposed).
        #[arg(long)]
        status: Option<String>,
    },
    /// Shows a package's versions, or one version in full.
    Show {
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long)]
        version: Option<String>,
    },
    /// Says for each version whether the repository's clients get it and, if not, what
    /// hides it (cooldown, blocked versions, origin control, an excluded upstream), and how
    /// a read goes; with --version, for that one version, stored or not.
    Explain {
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum VersionsCommand {
    /// Copies versions to another repository of the Domain (promotion): the destination's
    /// rules apply as to a publish there.
    Copy {
        #[command(flatten)]
        api: Api,
        /// The repository copied from.
        #[arg(long)]
        from: String,
        /// The repository copied to.
        #[arg(long)]
        to: String,
        #[arg(long)]
        format: String,
        #[arg(long)]
        package: String,
        /// Versions to copy (repeat), or --all.
        #[arg(long = "version", required_unless_present = "all")]
        versions: Vec<String>,
        #[arg(long, conflicts_with = "versions")]
        all: bool,
        /// Also versions the source fetched through an external connection.
        #[arg(long)]
        include_from_upstream: bool,
        /// Replace a destination version with other contents (administrators).
        #[arg(long)]
        allow_overwrite: bool,
    },
    /// Sets the status of versions: Published, Unlisted, Archived, or Disposed for good.
    Status {
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long = "version", required = true)]
        versions: Vec<String>,
        #[arg(long)]
        status: String,
        /// Change only versions in this status now.
        #[arg(long)]
        expected_status: Option<String>,
    },
    /// Deletes a version for good, a takedown (administrators).
    Delete {
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long)]
        version: String,
        /// Let the number be published again (by default a tombstone keeps it taken).
        #[arg(long)]
        allow_reuse: bool,
    },
}

/// `wharf audit`'s filters.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    api: Api,
    /// Needed unless the token is the admin's: events of a repository you may publish to.
    #[arg(long)]
    repository: Option<String>,
    #[arg(long)]
    format: Option<String>,
    #[arg(long)]
    package: Option<String>,
    #[arg(long)]
    version: Option<String>,
    /// An event type: package.published, package.downloaded, package.copied, policy.refused, token.minted, …
    #[arg(long = "type")]
    kind: Option<String>,
    /// An actor's subject.
    #[arg(long)]
    actor: Option<String>,
    /// RFC 3339; seven days ago by default.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    limit: Option<usize>,
}

impl PackageArgs {
    /// The API path of the package, then `rest`.
    fn path<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let package = ["repositories", &self.repository, "packages", &self.format, &self.package];
        package.into_iter().chain(rest.iter().copied()).collect()
    }
}

impl Api {
    fn url(&self, segments: &[&str]) -> anyhow::Result<url::Url> {
        let mut url = url::Url::parse(self.registry.trim_end_matches('/'))
            .with_context(|| format!("{} is not a URL", self.registry))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot hold a path", self.registry))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// Sends a request and returns the JSON answer, or the API's error as an error.
    async fn call(&self, method: reqwest::Method, url: url::Url, body: Option<Value>) -> anyhow::Result<Value> {
        let token = crate::env_var(&self.token_env)
            .or_else(|_| crate::env_var("WHARF_ADMIN_TOKEN"))
            .with_context(|| format!("set {} (or WHARF_ADMIN_TOKEN) to a token", self.token_env))?;
        let mut request = reqwest::Client::new().request(method, url.clone()).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{status}: {}", answer["error"].as_str().unwrap_or("no reason given"));
        }
        Ok(answer)
    }

    fn print(&self, answer: &Value, table: impl FnOnce(&Value) -> Vec<String>) {
        if self.json {
            println!("{answer:#}");
        } else {
            for line in table(answer) {
                println!("{line}");
            }
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn rows(values: &Value) -> impl Iterator<Item = &Value> {
    values.as_array().into_iter().flatten()
}

/// A header line and a line per row of `values`, each column `(header, key, width)`.
fn table(columns: &[(&str, &str, usize)], values: &Value) -> Vec<String> {
    let line = |cell: &dyn Fn(&(&str, &str, usize)) -> String| {
        columns.iter().map(|column| format!("{:<width$}", cell(column), width = column.2)).collect::<Vec<_>>().join(" ")
    };
    let mut lines = vec![line(&|(header, _, _)| (*header).to_owned())];
    lines.extend(rows(values).map(|row| line(&|(_, key, _)| text(&row[*key]))));
    lines
}

pub async fn packages(command: PackagesCommand) -> anyhow::Result<()> {
    match command {
        PackagesCommand::List { api, repository, format, prefix, origin, status } => {
            let mut packages = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut url = api.url(&["repositories", &repository, "packages"])?;
                {
                    let mut query = url.query_pairs_mut();
                    for (key, value) in
                        [("format", &format), ("prefix", &prefix), ("origin", &origin), ("status", &status)]
                    {
                        if let Some(value) = value {
                            query.append_pair(key, value);
                        }
                    }
                    if let Some(cursor) = &cursor {
                        query.append_pair("cursor", cursor);
                    }
                }
                let page = api.call(reqwest::Method::GET, url, None).await?;
                packages.extend(rows(&page["packages"]).cloned());
                cursor = page["nextCursor"].as_str().map(str::to_owned);
                if cursor.is_none() {
                    break;
                }
            }
            let columns = [
                ("FORMAT", "format", 8),
                ("NAME", "displayName", 40),
                ("VERSIONS", "versions", 8),
                ("LATEST", "latest", 12),
                ("ORIGIN", "origin", 7),
            ];
            api.print(&json!({"repository": repository, "packages": packages}), |answer| {
                table(&columns, &answer["packages"])
            });
        }
        PackagesCommand::Show { api, package, version: None } => {
            let answer = api.call(reqwest::Method::GET, api.url(&package.path(&["versions"]))?, None).await?;
            let columns = [
                ("VERSION", "version", 20),
                ("STATUS", "status", 10),
                ("CREATED", "created", 25),
                ("PUBLISHED BY", "publishedBy", 20),
                ("ORIGIN", "origin", 8),
            ];
            api.print(&answer, |answer| table(&columns, &answer["versions"]));
        }
        PackagesCommand::Show { api, package, version: Some(version) } => {
            let segments = package.path(&["versions", &version]);
            let answer = api.call(reqwest::Method::GET, api.url(&segments)?, None).await?;
            api.print(&answer, |v| {
                let mut lines = vec![
                    format!("{} {} ({})", text(&v["package"]), text(&v["version"]), text(&v["status"])),
                    format!(
                        "published {} by {}, origin {}",
                        text(&v["created"]),
                        text(&v["publishedBy"]),
                        text(&v["origin"])
                    ),
                ];
                lines.extend(rows(&v["assets"]).map(|a| {
                    format!("  {}  {} bytes  sha256:{}", text(&a["name"]), text(&a["size"]), text(&a["sha256"]))
                }));
                lines.extend(rows(&v["dependencies"]).map(|d| {
                    format!("  depends on {} {} ({})", text(&d["name"]), text(&d["requirement"]), text(&d["kind"]))
                }));
                lines.extend(
                    rows(&v["statusHistory"])
                        .map(|c| format!("  {} by {} at {}", text(&c["status"]), text(&c["by"]), text(&c["at"]))),
                );
                lines
            });
        }
        PackagesCommand::Explain { api, package, version } => {
            let answer = api.call(reqwest::Method::GET, api.url(&package.path(&["explain"]))?, None).await?;
            api.print(&answer, |explanation| explained(explanation, version.as_deref()));
        }
    }
    Ok(())
}

/// What clients get of a version, and why not, in words.
fn fate(version: &Value) -> String {
    let rule = |source: &Value| match (source["policy"].as_str(), source["pattern"].as_str()) {
        (Some(policy), Some(pattern)) => format!("UpstreamPolicy {policy}, pattern {pattern}"),
        (Some(policy), None) => format!("UpstreamPolicy {policy}"),
        _ => "the default".to_owned(),
    };
    let hidden = &version["hiddenBy"];
    match hidden["reason"].as_str() {
        _ if version["listed"] == true => "served".to_owned(),
        _ if version["installable"] == true => "served by exact version only (Unlisted)".to_owned(),
        _ if version["served"] == true => format!("not installable: {}", text(&version["status"])),
        Some("blocked") => format!("blocked by {} ({})", text(&hidden["entry"]), rule(&hidden["source"])),
        Some("tooYoung") => format!(
            "too new until {} (minimumReleaseAge {}, {})",
            text(&hidden["shownFrom"]),
            text(&hidden["minimumReleaseAge"]),
            rule(&hidden["source"])
        ),
        _ => "not served".to_owned(),
    }
}

/// The explanation as lines: the read's steps, then every version (or the one asked for).
fn explained(explanation: &Value, version: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    let steps: Vec<&Value> = rows(&explanation["steps"]).collect();
    for (position, step) in steps.iter().enumerate() {
        let name = step["name"].as_str().unwrap_or("a repository you may not read");
        let searched = if step["searched"] == true { "searched" } else { "not searched" };
        let count = step["versions"].as_u64().map(|n| format!(", {n} versions")).unwrap_or_default();
        lines.push(format!(
            "{}. {} {name}: {searched} ({}){count}",
            position + 1,
            text(&step["kind"]),
            text(&step["reason"])
        ));
    }
    let from = |v: &Value| {
        let step = v["step"].as_u64().and_then(|i| steps.get(i as usize));
        step.and_then(|s| s["name"].as_str()).unwrap_or("a repository you may not read").to_owned()
    };
    let versions: Vec<&Value> = rows(&explanation["versions"]).collect();
    match version {
        Some(wanted) => match versions.iter().find(|v| v["version"] == wanted) {
            Some(v) => lines.push(format!("{wanted}: {} (from {})", fate(v), from(v))),
            None => lines.push(format!("{wanted}: no step has it")),
        },
        None => {
            for v in versions {
                lines.push(format!(
                    "{:<16} {:<11} {:<24} {}",
                    text(&v["version"]),
                    text(&v["status"]),
                    from(v),
                    fate(v)
                ));
            }
        }
    }
    lines
}

pub async fn versions(command: VersionsCommand) -> anyhow::Result<()> {
    match command {
        VersionsCommand::Copy {
            api,
            from,
            to,
            format,
            package,
            versions,
            all,
            include_from_upstream,
            allow_overwrite,
        } => {
            let body = json!({
                "source": from,
                "format": format,
                "package": package,
                "versions": versions,
                "allVersions": all,
                "includeFromUpstream": include_from_upstream,
                "allowOverwrite": allow_overwrite,
            });
            let answer = api.call(reqwest::Method::POST, api.url(&["repositories", &to, "copy"])?, Some(body)).await?;
            api.print(&answer, |report| {
                let mut lines: Vec<String> = rows(&report["copied"]).map(|v| format!("copied {}", text(v))).collect();
                lines.extend(rows(&report["unchanged"]).map(|v| format!("already there {}", text(v))));
                for (version, failure) in report["failed"].as_object().into_iter().flatten() {
                    lines.push(format!(
                        "not copied {version}: {} ({})",
                        text(&failure["message"]),
                        text(&failure["code"])
                    ));
                }
                lines
            });
            if answer["failed"].as_object().is_some_and(|failed| !failed.is_empty()) {
                bail!("some versions were not copied");
            }
        }
        VersionsCommand::Status { api, package, versions, status, expected_status } => {
            let mut body = json!({"versions": versions, "status": status});
            if let Some(expected) = expected_status {
                body["expectedStatus"] = json!(expected);
            }
            let segments = package.path(&["versions", "status"]);
            let answer = api.call(reqwest::Method::POST, api.url(&segments)?, Some(body)).await?;
            api.print(&answer, |result| {
                let mut lines: Vec<String> =
                    rows(&result["changed"]).map(|v| format!("{} is {}", text(v), text(&result["status"]))).collect();
                for (version, failure) in result["failed"].as_object().into_iter().flatten() {
                    lines.push(format!("{version} unchanged: {}", text(&failure["message"])));
                }
                lines
            });
            if answer["failed"].as_object().is_some_and(|failed| !failed.is_empty()) {
                bail!("some versions were not changed");
            }
        }
        VersionsCommand::Delete { api, package, version, allow_reuse } => {
            let segments = package.path(&["versions", &version]);
            let mut url = api.url(&segments)?;
            if allow_reuse {
                url.query_pairs_mut().append_pair("allowReuse", "true");
            }
            let answer = api.call(reqwest::Method::DELETE, url, None).await?;
            api.print(&answer, |deleted| {
                let reuse = if deleted["reusable"] == true { "; its number may be published again" } else { "" };
                vec![format!("deleted {}{reuse}", text(&deleted["version"]))]
            });
        }
    }
    Ok(())
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut url = args.api.url(&["audit"])?;
    {
        let mut query = url.query_pairs_mut();
        let filters = [
            ("repository", &args.repository),
            ("format", &args.format),
            ("package", &args.package),
            ("version", &args.version),
            ("type", &args.kind),
            ("actor", &args.actor),
            ("since", &args.since),
        ];
        for (key, value) in filters {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        if let Some(limit) = args.limit {
            query.append_pair("limit", &limit.to_string());
        }
    }
    let answer = args.api.call(reqwest::Method::GET, url, None).await?;
    args.api.print(&answer, |answer| {
        rows(&answer["events"])
            .map(|event| {
                let data = &event["data"];
                let kind = text(&event["type"]);
                let count = data["count"].as_u64().map(|n| format!(" ×{n}")).unwrap_or_default();
                format!(
                    "{} {:<24} {:<40} {} from {}{count}",
                    text(&event["time"]),
                    kind.strip_prefix("dev.wharf.").unwrap_or(&kind),
                    text(&event["subject"]),
                    text(&data["actor"]["subject"]),
                    text(&data["clientAddress"])
                )
            })
            .collect()
    });
    Ok(())
}
