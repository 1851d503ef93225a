//! `wharf`: a registry token, and each package client configured for a
//! Wharf repository with it, in one command.
//!
//! ```sh
//! wharf login --tool npm --registry https://wharf.example --repository web
//! wharf logout --tool npm --registry https://wharf.example --repository web
//! wharf token --registry https://wharf.example --repository web
//! wharf packages list --registry https://wharf.example --repository web
//! wharf versions copy --registry https://wharf.example --from dev --to prod --format npm --package app --version 1.2.0
//! wharf audit --registry https://wharf.example --repository prod --type package.downloaded
//! ```
//!
//! The token comes from, in this order: `--token-env` (a registry token
//! already at hand), `--id-token-env` (a CI job's OIDC ID token, exchanged
//! at `/api/v1/auth/oidc`), `--sign-in` (a person signing in with the
//! Domain's identity provider; the ID token is exchanged the same way),
//! `--kubeconfig` (a person's own Kubernetes token, exchanged at
//! `/api/v1/auth/kubernetes`), `--admin-token-env` (the admin token, which
//! mints one at `/api/v1/auth/token`).

mod identity;
mod manage;
mod tools;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tools::{Homes, Target, Tool};

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "Configures package clients for a Wharf repository, and manages its packages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gets a token and writes TOOL's configuration for the repository.
    Login {
        #[arg(long, value_enum)]
        tool: Tool,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        token: TokenArgs,
        /// Print the files that would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Removes what `login` wrote for the repository from TOOL's configuration.
    Logout {
        #[arg(long, value_enum)]
        tool: Tool,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        dry_run: bool,
    },
    /// Prints a registry token for the repository, for scripts.
    Token {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Lists and shows packages (the token in --token-env, WHARF_TOKEN by default).
    #[command(subcommand)]
    Packages(manage::PackagesCommand),
    /// Copies versions between repositories, sets their status, deletes them.
    #[command(subcommand)]
    Versions(manage::VersionsCommand),
    /// Who published, changed, copied, pulled or was refused what.
    Audit(manage::AuditArgs),
}

#[derive(Args)]
struct TargetArgs {
    /// The registry's URL, such as https://wharf.example.
    #[arg(long, env = "WHARF_REGISTRY")]
    registry: String,
    #[arg(long)]
    repository: String,
    /// The name the registry gets in the clients' files (cargo's `--registry`, twine's `-r`).
    #[arg(long, default_value = "wharf")]
    name: String,
    /// Go: module path patterns published in the repository (such as `corp.example/*`),
    /// which the go command must not look up in the public checksum database.
    #[arg(long, value_delimiter = ',')]
    private_modules: Vec<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// An environment variable holding a registry token to use as it is.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// An environment variable holding a CI job's OIDC ID token, exchanged for a registry token.
    #[arg(long, value_name = "VAR")]
    id_token_env: Option<String>,
    /// Sign in with the Domain's identity provider in a browser (authorization code with PKCE).
    #[arg(long)]
    sign_in: bool,
    /// With --sign-in: the provider's issuer, when the Domain names several.
    #[arg(long, requires = "sign_in")]
    issuer: Option<String>,
    /// With --sign-in: print the sign-in address only, do not open a browser.
    #[arg(long, requires = "sign_in")]
    no_browser: bool,
    /// Use the token of your kubeconfig's user: the registry asks the cluster who you are.
    #[arg(long, conflicts_with = "sign_in")]
    kubeconfig: bool,
    /// With --kubeconfig: the context whose user to use (the current one otherwise).
    #[arg(long, requires = "kubeconfig")]
    kube_context: Option<String>,
    /// An environment variable holding the admin token, which mints a registry token.
    #[arg(long, value_name = "VAR", default_value = "WHARF_ADMIN_TOKEN")]
    admin_token_env: String,
    /// What the token may do: read, publish (repeat for both). Without it: publish where
    /// the identity may, else read.
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// Lifetime in seconds (the registry caps it at its Domain's tokens.maxTTL).
    #[arg(long)]
    ttl_seconds: Option<u64>,
}

impl TargetArgs {
    /// The target, with what `tool` needs to know of the machine.
    fn target_for(&self, tool: Tool) -> Target {
        let mut target = self.target();
        if tool == Tool::Go {
            target.go_fallback = go_proxy_in_use();
        }
        target
    }

    fn target(&self) -> Target {
        Target {
            registry: self.registry.trim_end_matches('/').to_owned(),
            repository: self.repository.clone(),
            name: self.name.clone(),
            proxies: Vec::new(),
            go_fallback: String::new(),
            private_modules: self.private_modules.clone(),
        }
    }
}

/// The `GOPROXY` the go command uses without its env file (its own default, unless the
/// environment sets one), or `direct` without a go command.
fn go_proxy_in_use() -> String {
    let output = std::process::Command::new("go")
        .args(["env", "GOPROXY"])
        .env("GOENV", "off")
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let value = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if value.is_empty() { "direct".to_owned() } else { value }
        }
        _ => "direct".to_owned(),
    }
}

fn env_var(name: &str) -> anyhow::Result<String> {
    let value = std::env::var(name).with_context(|| format!("the environment variable {name} is not set"))?;
    Ok(value.trim().to_owned())
}

/// How the token is asked for: what the registry is sent, and where.
enum Credential {
    /// An OIDC ID token (a CI job's, or a person's from signing in).
    IdToken(String),
    /// A person's Kubernetes token.
    Kubernetes(String),
    /// The admin token, which mints any token.
    Admin(String),
}

/// A registry token from the first source the arguments give. Without `--permission`, it
/// may publish where the identity may, and only read where it may only read.
async fn token(target: &Target, args: &TokenArgs) -> anyhow::Result<String> {
    if let Some(name) = &args.token_env {
        return env_var(name);
    }
    let credential = match &args.id_token_env {
        Some(name) => Credential::IdToken(env_var(name)?),
        None if args.sign_in => {
            Credential::IdToken(identity::sign_in(&target.registry, args.issuer.as_deref(), !args.no_browser).await?)
        }
        None if args.kubeconfig => Credential::Kubernetes(identity::kubeconfig_token(args.kube_context.as_deref())?),
        None => Credential::Admin(env_var(&args.admin_token_env).context(
            "no credential to get a token with: pass --sign-in, --kubeconfig, --token-env or --id-token-env, or \
             set the admin token",
        )?),
    };
    if !args.permissions.is_empty() {
        return ask(target, args, &credential, &args.permissions).await?.map_err(refused);
    }
    let both = ["read".to_owned(), "publish".to_owned()];
    match ask(target, args, &credential, &both).await? {
        Err((status, reason)) if status == reqwest::StatusCode::FORBIDDEN && reason.contains("may not publish") => {
            eprintln!("{reason}: the token reads only");
            ask(target, args, &credential, &["read".to_owned()]).await?.map_err(refused)
        }
        answer => answer.map_err(refused),
    }
}

fn refused((status, reason): (reqwest::StatusCode, String)) -> anyhow::Error {
    anyhow::anyhow!("the registry refused the token: {status}: {reason}")
}

/// The registry's answer to a token request for `permissions`: the token, or its refusal.
async fn ask(
    target: &Target,
    args: &TokenArgs,
    credential: &Credential,
    permissions: &[String],
) -> anyhow::Result<Result<String, (reqwest::StatusCode, String)>> {
    let client = reqwest::Client::new();
    let mut body = json!({"repositories": [target.repository], "permissions": permissions});
    if let Some(ttl) = args.ttl_seconds {
        body["ttlSeconds"] = json!(ttl);
    }
    let request = match credential {
        Credential::IdToken(id_token) => {
            body["idToken"] = json!(id_token);
            client.post(format!("{}/api/v1/auth/oidc", target.registry)).json(&body)
        }
        Credential::Kubernetes(token) => {
            body["token"] = json!(token);
            client.post(format!("{}/api/v1/auth/kubernetes", target.registry)).json(&body)
        }
        Credential::Admin(admin) => {
            client.post(format!("{}/api/v1/auth/token", target.registry)).bearer_auth(admin).json(&body)
        }
    };
    let response = request.send().await.with_context(|| format!("cannot reach {}", target.registry))?;
    let status = response.status();
    let reply: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let reason = reply.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
        return Ok(Err((status, reason)));
    }
    let token = reply.get("token").and_then(Value::as_str).map(str::to_owned);
    Ok(Ok(token.context("the registry's answer has no token")?))
}

/// The formats whose public packages the repository serves through its chain, as the
/// registry lists it for the token's holder.
async fn proxies(target: &Target, token: &str) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/api/v1/repositories", target.registry);
    let response = reqwest::Client::new().get(&url).bearer_auth(token).send().await;
    let response = response.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let listing: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", listing["error"].as_str().unwrap_or("no reason given"));
    }
    let repositories = listing["repositories"].as_array().cloned().unwrap_or_default();
    let repository = repositories
        .iter()
        .find(|r| r["name"] == target.repository.as_str())
        .with_context(|| format!("the token cannot read repository {}, or it does not exist", target.repository))?;
    Ok(repository["proxies"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect())
}

fn apply(tool: Tool, target: &Target, token: Option<&str>, dry_run: bool) -> anyhow::Result<()> {
    let homes = Homes::from_environment()?;
    let changes = tools::changes(tool, target, &homes, token, |path: &PathBuf| std::fs::read_to_string(path).ok())?;
    for change in changes {
        if dry_run {
            println!("# {}\n{}", change.path.display(), change.contents);
            continue;
        }
        if let Some(parent) = change.path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_private(&change.path, &change.contents)?;
        eprintln!("wrote {}", change.path.display());
    }
    Ok(())
}

/// Writes a file that may hold a token, readable by its owner only.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Login { tool, target, token: args, dry_run } => {
            let mut target = target.target_for(tool);
            let token = token(&target, &args).await?;
            target.proxies = proxies(&target, &token).await?;
            apply(tool, &target, Some(&token), dry_run)?;
            if let Some(hint) = tools::next_step(tool, &target) {
                eprintln!("{hint}");
            }
            Ok(())
        }
        Command::Logout { tool, target, dry_run } => apply(tool, &target.target_for(tool), None, dry_run),
        Command::Token { target, token: args } => {
            println!("{}", token(&target.target(), &args).await?);
            Ok(())
        }
        Command::Packages(command) => manage::packages(command).await,
        Command::Versions(command) => manage::versions(command).await,
        Command::Audit(args) => manage::audit(args).await,
    }
}
