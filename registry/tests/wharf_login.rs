//! `wharf login` (the `wharf-cli` binary) against the real registry, each
//! tool followed by its real client working through what was written, in a
//! home that already has settings of its own (kept): npm publishes and
//! installs with no project `.npmrc`, twine uploads with `-r wharf`, pip
//! downloads through its user `pip.conf`, uv installs through its user
//! `uv.toml`, cargo publishes and builds with
//! its user `config.toml` and `credentials.toml`. `--dry-run` writes
//! nothing; `logout` takes out only what `login` put in; `wharf token`
//! prints a working token.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::*;

fn wharf(ws: &Workspace, server: &TestServer, args: &[&str]) -> Command {
    let mut command = ws.command(wharf_bin(), ".");
    command.args(args).args(["--registry", &server.base, "--repository", "main"]);
    command.env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN).env("CARGO_HOME", ws.path("home/.cargo"));
    command
}

fn read(ws: &Workspace, path: &str) -> String {
    std::fs::read_to_string(ws.path(path)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tool_works_after_one_login() {
    let server = TestServer::start();
    let ws = Workspace::new();
    ws.write("home/.npmrc", "fund=false\n");
    ws.write("home/.cargo/config.toml", "# my settings\n[net]\nretry = 0\n");

    // npm: the user's .npmrc, its own setting kept; publish and install with no project .npmrc.
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "npm"]));
    let npmrc = read(&ws, "home/.npmrc");
    assert!(
        npmrc.starts_with("fund=false\n") && npmrc.contains(&format!("registry={}/npm/main/", server.base)),
        "{npmrc}"
    );
    ws.write("pkg/package.json", &serde_json::json!({"name": "logged-in", "version": "1.0.0"}).to_string());
    ws.write("pkg/index.js", "module.exports = 'via wharf login';\n");
    run_ok(ws.command("npm", "pkg").args(["publish", "--no-audit"]));
    ws.write("app/package.json", &serde_json::json!({"name": "app", "version": "0.0.0", "private": true}).to_string());
    run_ok(ws.command("npm", "app").args(["install", "--no-audit", "logged-in@1.0.0"]));
    assert_eq!(read(&ws, "app/node_modules/logged-in/index.js"), "module.exports = 'via wharf login';\n");

    // pnpm reads the same user file (`--tool pnpm` is the same login).
    ws.write(
        "pnpm-app/package.json",
        &serde_json::json!({"name": "pnpm-app", "version": "0.0.0", "private": true}).to_string(),
    );
    run_ok(ws.command(test_tool("pnpm/node_modules/.bin/pnpm"), "pnpm-app").args(["add", "logged-in@1.0.0"]));
    assert_eq!(read(&ws, "pnpm-app/node_modules/logged-in/index.js"), "module.exports = 'via wharf login';\n");

    // Yarn (Berry): ~/.yarnrc.yml; a package published a minute ago installs (Yarn's own
    // age gate would hold it back a day), over http to this host only.
    ws.write("home/.yarnrc.yml", "enableTelemetry: false\n");
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "yarn"]));
    assert!(read(&ws, "home/.yarnrc.yml").starts_with("enableTelemetry: false\n"));
    ws.write(
        "yarn-app/package.json",
        &serde_json::json!({"name": "yarn-app", "version": "0.0.0", "private": true, "dependencies": {"logged-in": "1.0.0"}})
            .to_string(),
    );
    let yarn = test_tool("yarn/node_modules/.bin/yarn");
    // Under CI=true Yarn refuses to create a lockfile; this project has none yet.
    run_ok(ws.command(&yarn, "yarn-app").arg("install").env("YARN_ENABLE_IMMUTABLE_INSTALLS", "false"));
    let required = run_ok(ws.command(&yarn, "yarn-app").args(["node", "-e", "console.log(require('logged-in'))"]));
    assert_eq!(String::from_utf8_lossy(&required.stdout).trim(), "via wharf login");
    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "yarn"]));
    assert_eq!(read(&ws, "home/.yarnrc.yml"), "enableTelemetry: false\n");

    // twine: ~/.pypirc, then `twine upload -r wharf`.
    let tools = python_tools();
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "twine"]));
    let wheel = ws.path("logged_in-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, "logged-in", "1.0.0", "VIA = 'wharf login'\n");
    run_ok(ws.command(venv_bin(&tools, "twine"), ".").args(["upload", "--non-interactive", "-r", "wharf"]).arg(&wheel));

    // pip: the user's pip.conf (the workspace's pip ignores config files unless told
    // otherwise), whose own index (a closed port: pip would fail through it) is kept aside
    // and put back by logout.
    let own_pip_conf = "[global]\nindex-url = http://127.0.0.1:9/simple/\n";
    ws.write("home/.config/pip/pip.conf", own_pip_conf);
    let dry = run_ok(&mut wharf(&ws, &server, &["login", "--tool", "pip", "--dry-run"]));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("index-url = http://__token__:"), "{}", text(&dry));
    assert_eq!(read(&ws, "home/.config/pip/pip.conf"), own_pip_conf, "--dry-run wrote the file");
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "pip"]));
    let mut pip = ws.command(venv_bin(&tools, "pip"), ".");
    pip.env_remove("PIP_CONFIG_FILE").args(["download", "--no-deps", "-d", "downloads", "logged-in==1.0.0"]);
    run_ok(&mut pip);
    assert!(ws.path("downloads/logged_in-1.0.0-py3-none-any.whl").exists());
    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "pip"]));
    assert_eq!(read(&ws, "home/.config/pip/pip.conf"), own_pip_conf);

    // uv: the user uv.toml's default index (the workspace's uv ignores config files unless told).
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "uv"]));
    let uv = venv_bin(&tools, "uv");
    let mut venv = ws.command(&uv, ".");
    venv.env_remove("UV_NO_CONFIG").args(["venv", "--quiet", "uv-env"]);
    run_ok(&mut venv);
    let mut install = ws.command(&uv, ".");
    install.env_remove("UV_NO_CONFIG").args([
        "pip",
        "install",
        "--quiet",
        "--python",
        "uv-env/bin/python",
        "logged-in==1.0.0",
    ]);
    run_ok(&mut install);
    let imported =
        run_ok(ws.command(ws.path("uv-env/bin/python"), ".").args(["-c", "import logged_in; print(logged_in.VIA)"]));
    assert_eq!(String::from_utf8_lossy(&imported.stdout).trim(), "wharf login");

    // cargo: the registry and its token in CARGO_HOME, the user's config kept.
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "cargo"]));
    let config = read(&ws, "home/.cargo/config.toml");
    assert!(
        config.starts_with("# my settings\n[net]\nretry = 0\n") && config.contains("[registries.wharf]"),
        "{config}"
    );
    ws.write(
        "lib/Cargo.toml",
        "[package]\nname = \"logged-in\"\nversion = \"1.0.0\"\nedition = \"2021\"\ndescription = \"test\"\nlicense = \"MIT\"\npublish = [\"wharf\"]\n",
    );
    ws.write("lib/src/lib.rs", "pub fn via() -> &'static str {\n    \"wharf login\"\n}\n");
    run_ok(isolated_cargo(&ws, "lib").args(["publish", "--registry", "wharf", "--allow-dirty"]));
    ws.write(
        "bin/Cargo.toml",
        "[package]\nname = \"bin\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\nlogged-in = { version = \"1\", registry = \"wharf\" }\n",
    );
    ws.write("bin/src/main.rs", "fn main() {\n    println!(\"{}\", logged_in::via());\n}\n");
    let output = run_ok(isolated_cargo(&ws, "bin").args(["run", "--quiet"]));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "wharf login");

    // logout takes out what login put in, nothing else.
    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "npm"]));
    assert_eq!(read(&ws, "home/.npmrc"), "fund=false\n");
    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "cargo"]));
    let config = read(&ws, "home/.cargo/config.toml");
    assert!(!config.contains("wharf") && config.contains("retry = 0"), "{config}");
    assert!(!read(&ws, "home/.cargo/credentials.toml").contains("token"));

    // `wharf token` prints a token that works; a refusal says why.
    let token = run_ok(&mut wharf(&ws, &server, &["token", "--permission", "publish"]));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let whoami = reqwest::Client::new().get(server.url("/npm/main/-/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(whoami.status(), 200);
    let mut refused = wharf(&ws, &server, &["token"]);
    refused.env("WHARF_ADMIN_TOKEN", "wrong");
    let output = run(&mut refused);
    assert!(!output.status.success() && text(&output).contains("401"), "{}", text(&output));
}

/// A Domain whose repository `main` (private) proxies the public crates
/// index at `public` (a second registry on loopback playing it).
fn proxy_config(public: &TestServer) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  externalConnections:
    - {{name: public-crates, format: cargo, url: "{}/cargo/public/index"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: main}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-crates
"#,
        public.base
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_login_to_a_proxy_repository_replaces_the_public_index() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let server = TestServer::start_with(Some(&proxy_config(&public)), &[]);
    let publisher = Workspace::new();
    publisher.write(
        "home/.cargo/config.toml",
        &format!("[registries.public]\nindex = \"sparse+{}\"\n", public.url("/cargo/public/index/")),
    );
    publisher.write(
        "lib/Cargo.toml",
        "[package]\nname = \"public-answer\"\nversion = \"1.0.0\"\nedition = \"2021\"\ndescription = \"test\"\nlicense = \"MIT\"\n",
    );
    publisher.write("lib/src/lib.rs", "pub fn answer() -> u32 {\n    42\n}\n");
    let publish_token = public.token(&["public"], &["publish"]).await;
    let mut publish = isolated_cargo(&publisher, "lib");
    publish
        .args(["publish", "--registry", "public", "--allow-dirty"])
        .env("CARGO_REGISTRIES_PUBLIC_TOKEN", publish_token);
    run_ok(&mut publish);

    // The login sees that `main` proxies crates and makes it crates.io's replacement: a
    // project naming no registry builds through the private repository.
    let ws = Workspace::new();
    run_ok(&mut wharf(&ws, &server, &["login", "--tool", "cargo", "--permission", "read"]));
    let config = read(&ws, "home/.cargo/config.toml");
    assert!(config.contains("[source.crates-io]\nreplace-with = \"wharf\""), "{config}");
    ws.write(
        "app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\npublic-answer = \"1\"\n",
    );
    ws.write("app/src/main.rs", "fn main() {\n    println!(\"answer={}\", public_answer::answer());\n}\n");
    // https goes to a closed port: nothing but the registry can be reached.
    let mut build = isolated_cargo(&ws, "app");
    build.args(["run", "--quiet"]).env("https_proxy", "http://127.0.0.1:9").env("HTTPS_PROXY", "http://127.0.0.1:9");
    let output = run_ok(&mut build);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "answer=42");

    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "cargo"]));
    assert_eq!(read(&ws, "home/.cargo/config.toml"), "", "logout takes out the replacement too");
}

#[tokio::test(flavor = "multi_thread")]
async fn poetry_publishes_and_installs_after_wharf_login() {
    // Private: the install, too, needs the token login stored.
    let private = "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: acme}\n\
                   spec: {storage: {filesystem: {path: \"{data}\"}}}\n---\napiVersion: wharf.dev/v1alpha1\n\
                   kind: Repository\nmetadata: {name: main}\nspec: {domainRef: {name: acme}}\n";
    let server = TestServer::start_with(Some(private), &[]);
    assert_eq!(http_status(&server.url("/pypi/main/simple/")).unwrap(), 401);
    let ws = Workspace::new();
    let poetry = |dir: &str| {
        let mut command = ws.command(test_tool("poetry/bin/poetry"), dir);
        // No desktop keyring here: Poetry reads the token from auth.toml.
        command
            .env("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
            .env("POETRY_VIRTUALENVS_IN_PROJECT", "true")
            .env("POETRY_NO_INTERACTION", "1");
        command
    };
    let login = run_ok(&mut wharf(&ws, &server, &["login", "--tool", "poetry"]));
    assert!(text(&login).contains("poetry source add --priority=primary wharf"), "{}", text(&login));

    ws.write(
        "lib/pyproject.toml",
        "[project]\nname = \"poetry-answer\"\nversion = \"1.0.0\"\ndescription = \"test\"\nrequires-python = \">=3.9\"\n\
         authors = [{name = \"Acme\"}]\n\n[tool.poetry]\npackages = [{include = \"poetry_answer\"}]\n\n\
         [build-system]\nrequires = [\"poetry-core>=2.0\"]\nbuild-backend = \"poetry.core.masonry.api\"\n",
    );
    ws.write("lib/poetry_answer/__init__.py", "ANSWER = 42\n");
    run_ok(poetry("lib").arg("build"));
    run_ok(poetry("lib").args(["publish", "-r", "wharf"]));

    // A project whose one source is the repository: Poetry finds the token by its name.
    ws.write(
        "app/pyproject.toml",
        &format!(
            "[project]\nname = \"app\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\ndependencies = [\"poetry-answer==1.0.0\"]\n\n\
             [tool.poetry]\npackage-mode = false\n\n[[tool.poetry.source]]\nname = \"wharf\"\nurl = \"{}\"\npriority = \"primary\"\n",
            server.url("/pypi/main/simple/")
        ),
    );
    run_ok(poetry("app").arg("install"));
    let imported = run_ok(
        ws.command(ws.path("app/.venv/bin/python"), "app")
            .args(["-c", "import poetry_answer; print(poetry_answer.ANSWER)"]),
    );
    assert_eq!(String::from_utf8_lossy(&imported.stdout).trim(), "42");

    run_ok(&mut wharf(&ws, &server, &["logout", "--tool", "poetry"]));
    assert_eq!(read(&ws, "home/.config/pypoetry/auth.toml"), "");
}
