//! Cluster mode against a real kube-apiserver: the registry reads its configuration from a
//! ConfigMap under a ServiceAccount token allowed to read only that ConfigMap, applies a new
//! revision within 5 s without a restart, and keeps the last good revision when a new one is
//! invalid or would move its storage.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use wharf_test_harness::{ControlPlane, apply_yaml, eventually};

const NAMESPACE: &str = "cluster-mode";

/// A namespace of the shared control plane, and a data folder for a registry's store.
struct Namespace {
    plane: &'static ControlPlane,
    admin: kube::Client,
    data: tempfile::TempDir,
    /// The store's path in `data`.
    store: String,
}

async fn namespace(name: &str) -> Namespace {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store").display().to_string();
    wharf_test_harness::ensure_namespace(&admin, name).await.unwrap();
    Namespace { plane, admin, data, store }
}

/// The ConfigMap the operator renders for Domain `acme` in `namespace` (filesystem storage
/// at `store`, `domain_extra` added to its spec) and its one Repository `repo`, whose spec
/// ends with `repository_extra`.
fn acme_config_map(namespace: &str, store: &str, domain_extra: &str, repo: &str, repository_extra: &str) -> String {
    let yaml = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: acme, namespace: {namespace}}}\n\
         spec:\n  storage: {{filesystem: {{path: {store}}}}}\n{domain_extra}---\n\
         apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {repo}, namespace: {namespace}}}\n\
         spec:\n  domainRef: {{name: acme}}\n{repository_extra}"
    );
    let data = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "wharf-acme-config", "namespace": namespace},
        "data": {"wharf.yaml": yaml}});
    serde_json::to_string(&data).unwrap()
}

fn config_map(store: &str, anonymous_read: bool, extra: &str) -> String {
    let read = if anonymous_read { "[{kind: Anonymous}]" } else { "[]" };
    acme_config_map(NAMESPACE, store, "", "main", &format!("  access: {{read: {read}}}\n{extra}"))
}

/// What the operator grants the registry in `namespace`: read its own ConfigMap and patch
/// its usage ConfigMap (which the operator creates), nothing else.
fn config_map_reader(namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wharf-acme-usage, namespace: {namespace}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: registry, namespace: {namespace}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [configmaps], resourceNames: [wharf-acme-config], verbs: [get, list, watch]}},\
         {{apiGroups: [\"\"], resources: [configmaps], resourceNames: [wharf-acme-usage], verbs: [get, patch]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: registry, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: registry}}\n\
         subjects: [{{kind: ServiceAccount, name: registry, namespace: {namespace}}}]\n"
    )
}

/// What the operator grants the registry in `namespace`: its ConfigMap, and TokenReview
/// through system:auth-delegator.
fn reviewer_rbac(namespace: &str) -> String {
    format!(
        "{}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {namespace}-registry-auth-delegator}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}}\n\
         subjects: [{{kind: ServiceAccount, name: registry, namespace: {namespace}}}]\n",
        config_map_reader(namespace)
    )
}

async fn metric(metrics_url: String, name: &str) -> f64 {
    let text = reqwest::get(metrics_url).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the registry has rejected `count` revisions.
async fn wait_rejected(server: &TestServer, count: f64) {
    eventually(Duration::from_secs(5), "revision rejected", || {
        let url = server.url("/metrics");
        async move {
            let rejected = metric(url, "wharf_config_reloads_total{result=\"rejected\"}").await;
            if rejected >= count { Ok(()) } else { Err(format!("rejected={rejected}")) }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_its_config_map_and_keeps_the_last_good_revision() {
    let Namespace { plane, admin, data, store } = namespace(NAMESPACE).await;
    apply_yaml(&admin, &config_map(&store, false, ""), None).await.unwrap();
    apply_yaml(&admin, &config_map_reader(NAMESPACE), None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(NAMESPACE, "registry").await.unwrap();

    let server = TestServer::start_in_env(
        data.path(),
        None,
        &["--config-map", &format!("{NAMESPACE}/wharf-acme-config")],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let packument = server.url("/npm/main/left-pad");
    assert_eq!(http_status(&packument).unwrap(), 401, "private until the ConfigMap says otherwise");

    // Anonymous read granted: served within 5 s, same process.
    let changed = Instant::now();
    apply_yaml(&admin, &config_map(&store, true, ""), None).await.unwrap();
    let took = eventually(Duration::from_secs(5), "anonymous read applied", || {
        let status = http_status(&packument).unwrap();
        async move { if status == 404 { Ok(changed.elapsed()) } else { Err(format!("status {status}")) } }
    })
    .await
    .unwrap();
    eprintln!("configuration change applied after {took:?}");

    // An invalid revision (an upstream that does not exist) is rejected; the last good one
    // keeps serving.
    let broken = "  upstreams: [{name: missing}]\n";
    apply_yaml(&admin, &config_map(&store, false, broken), None).await.unwrap();
    wait_rejected(&server, 1.0).await;
    assert_eq!(http_status(&packument).unwrap(), 404, "the last good revision still serves");
    assert!(server.log_lines().iter().any(|line| line.contains("missing")), "the log names the problem");

    // Storage is opened once: a revision moving it is refused, not half-applied.
    let moved = data.path().join("elsewhere").display().to_string();
    apply_yaml(&admin, &config_map(&moved, false, ""), None).await.unwrap();
    wait_rejected(&server, 2.0).await;
    assert_eq!(http_status(&packument).unwrap(), 404);
    assert!(server.log_lines().iter().any(|line| line.contains("take effect when the registry restarts")));
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_are_credentials_as_the_repository_grants() {
    const NS: &str = "k8s-identity";
    let Namespace { plane, admin, data, store } = namespace(NS).await;
    // Every ServiceAccount of team-a reads, team-a/release-bot publishes; team-b nothing.
    let config = |read: &str| {
        let access = format!(
            "  access:\n    read: {read}\n    publish: [{{kind: ServiceAccount, namespace: team-a, name: release-bot}}]\n"
        );
        acme_config_map(NS, &store, "", "web", &access)
    };
    apply_yaml(&admin, &config("[{kind: Namespace, name: team-a}]"), None).await.unwrap();
    apply_yaml(&admin, &reviewer_rbac(NS), None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(NS, "registry").await.unwrap();
    let server = TestServer::start_in_env(
        data.path(),
        None,
        &[
            "--config-map",
            &format!("{NS}/wharf-acme-config"),
            "--usage-config-map",
            &format!("{NS}/wharf-acme-usage"),
            "--gc-interval",
            "2s",
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );

    // What a projected token volume holds.
    let token = |namespace: &'static str, name: &'static str, audience: Option<&'static str>| async move {
        plane.service_account_token_for(namespace, name, audience, 3600).await.unwrap()
    };
    let bot = token("team-a", "release-bot", Some("wharf.dev")).await;
    let reader = token("team-a", "builder", Some("wharf.dev")).await;
    let outsider = token("team-b", "builder", Some("wharf.dev")).await;
    let for_the_apiserver = token("team-a", "release-bot", None).await;

    // The real npm: the release bot publishes with its token, a reader installs with its own.
    let workspace = Workspace::new();
    workspace.write("package/package.json", r#"{"name": "@acme/greeting", "version": "1.0.0", "main": "index.js"}"#);
    workspace.write("package/index.js", "module.exports = 'hello from a pod';\n");
    let npm_as = |dir: &str, token: &str, args: &[&str]| {
        write_npmrc(&workspace, dir, &server, "web", Some(token));
        let mut command = workspace.command("npm", dir);
        command.args(args).args(["--registry", &server.url("/npm/web/")]);
        run(&mut command)
    };
    let refused = npm_as("package", &reader, &["publish"]);
    assert!(!refused.status.success(), "a reader may not publish");
    assert!(text(&refused).contains("system:serviceaccount:team-a:builder may not publish"), "{}", text(&refused));
    let published = npm_as("package", &bot, &["publish"]);
    assert!(published.status.success(), "{}", text(&published));
    let whoami = npm_as("consumer", &reader, &["whoami"]);
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "system:serviceaccount:team-a:builder");
    workspace.write("consumer/package.json", r#"{"name": "consumer", "version": "1.0.0"}"#);
    let installed = npm_as("consumer", &reader, &["install", "@acme/greeting"]);
    assert!(installed.status.success(), "{}", text(&installed));
    assert!(workspace.path("consumer/node_modules/@acme/greeting/index.js").exists());

    // The storage collector reports what the Domain holds in the usage ConfigMap, for the
    // operator's statuses.
    let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(admin.clone(), NS);
    let usage = eventually(Duration::from_secs(15), "usage reported", || async {
        let config_map = config_maps.get("wharf-acme-usage").await.map_err(|e| e.to_string())?;
        let json = config_map.data.and_then(|data| data.get("usage.json").cloned()).ok_or("no report yet")?;
        let report: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        if report["repositories"]["web"]["versions"] == 1 { Ok(report) } else { Err(json) }
    })
    .await
    .unwrap();
    assert_eq!(usage["repositories"]["web"]["packages"], 1);
    assert!(usage["storedBytes"].as_u64().unwrap() > 0, "{usage}");

    // Each identity gets the answer its access and its token call for.
    let packument = server.url("/npm/web/@acme%2fgreeting");
    let status =
        |token: &str| http_request("GET", &packument, &[("authorization", &format!("Bearer {token}"))], "").unwrap();
    assert_eq!(status(&reader), 200);
    // The first request with a token waits for its review; the next ones are answered from
    // the cache.
    let first = Instant::now();
    assert_eq!(status(&outsider), 403, "team-b is not named");
    let reviewed = first.elapsed();
    let cached = Instant::now();
    for _ in 0..100 {
        assert_eq!(status(&outsider), 403);
    }
    eprintln!("first request with a new token {reviewed:?}, then {:?} a request", cached.elapsed() / 100);
    assert_eq!(status(&for_the_apiserver), 401, "a token for another audience is refused");
    // A signature byte changed (in the middle: the last base64 character carries padding bits).
    let middle = reader.rfind('.').unwrap() + 20;
    let replacement = if &reader[middle..=middle] == "A" { "B" } else { "A" };
    let forged = format!("{}{replacement}{}", &reader[..middle], &reader[middle + 1..]);
    assert_eq!(status(&forged), 401);
    // One review per token, however many requests: npm made several with each.
    let reviews = |result: &'static str| metric(server.url("/metrics"), result);
    assert_eq!(reviews("wharf_token_reviews_total{result=\"accepted\"}").await, 3.0, "bot, reader, outsider");
    assert_eq!(reviews("wharf_token_reviews_total{result=\"rejected\"}").await, 2.0, "wrong audience, forged");

    // A ServiceAccount exchanges its token for a registry token within what it is granted.
    let exchange = |token: &str, body: serde_json::Value| {
        let url = server.url("/api/v1/auth/token");
        let token = token.to_owned();
        async move {
            let response = reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (code, minted) = exchange(&reader, serde_json::json!({"repositories": ["web"], "permissions": ["read"]})).await;
    assert_eq!(code, 201, "{minted}");
    let registry_token = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(status(&registry_token), 200);
    let (code, body) =
        exchange(&reader, serde_json::json!({"repositories": ["web"], "permissions": ["publish"]})).await;
    assert_eq!(code, 403, "a reader cannot mint itself publishing: {body}");
    let (code, _) = exchange(&reader, serde_json::json!({"repositories": ["*"], "permissions": ["read"]})).await;
    assert_eq!(code, 400, "a ServiceAccount names its repositories");
    let (code, _) =
        exchange(&registry_token, serde_json::json!({"repositories": ["web"], "permissions": ["read"]})).await;
    assert_eq!(code, 403, "tokens do not mint tokens");

    // Access is decided per request from the configuration in force: taking the namespace
    // off the readers ends the reader's access within seconds, its token still valid.
    apply_yaml(&admin, &config("[]"), None).await.unwrap();
    eventually(Duration::from_secs(5), "the reader refused", || {
        let answer = status(&reader);
        async move { if answer == 403 { Ok(()) } else { Err(format!("status {answer}")) } }
    })
    .await
    .unwrap();
    assert_eq!(status(&bot), 200, "publishers read");

    // A takedown is handed to the operator in the usage ConfigMap, under this process's own
    // key, for an Event on the Repository.
    let takedown = server.url("/api/v1/repositories/web/packages/npm/@acme%2fgreeting/versions/1.0.0");
    let deleted =
        http_request("DELETE", &takedown, &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))], "").unwrap();
    assert_eq!(deleted, 200);
    let action = eventually(Duration::from_secs(10), "the deletion reported", || async {
        let config_map = config_maps.get("wharf-acme-usage").await.map_err(|e| e.to_string())?;
        let data = config_map.data.unwrap_or_default();
        let (_, json) = data.iter().find(|(key, _)| key.starts_with("actions-")).ok_or("no actions key yet")?;
        let actions: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        actions.into_iter().next().ok_or_else(|| json.clone())
    })
    .await
    .unwrap();
    assert_eq!(
        (&action["kind"], &action["repository"], &action["package"], &action["versions"], &action["by"]),
        (
            &serde_json::json!("Deleted"),
            &serde_json::json!("web"),
            &serde_json::json!("@acme/greeting"),
            &serde_json::json!(["1.0.0"]),
            &serde_json::json!("admin")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn people_exchange_their_kubeconfig_token_for_what_user_and_group_subjects_grant() {
    const NS: &str = "k8s-people";
    let Namespace { plane, admin, data, store } = namespace(NS).await;
    // Alice publishes; the developers group (bob's) reads. Without kubernetesUsers, User
    // and Group subjects would name no one (the loader refuses them), so anyone reads.
    let config = |kubernetes_users: bool| {
        let access = if kubernetes_users {
            "read: [{kind: Group, name: developers}]\n    publish: [{kind: User, name: alice}]"
        } else {
            "read: [{kind: Anonymous}]"
        };
        let tokens = format!("  tokens: {{kubernetesUsers: {kubernetes_users}}}\n");
        acme_config_map(NS, &store, &tokens, "web", &format!("  access:\n    {access}\n"))
    };
    apply_yaml(&admin, &config(true), None).await.unwrap();
    apply_yaml(&admin, &reviewer_rbac(NS), None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(NS, "registry").await.unwrap();
    let server = TestServer::start_in_env(
        data.path(),
        None,
        &["--config-map", &format!("{NS}/wharf-acme-config")],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let ws = Workspace::new();
    let wharf_as = |person: &str, args: &[&str]| {
        let mut command = ws.command(wharf_bin(), ".");
        command
            .args(args)
            .args(["--kubeconfig", "--registry", &server.base, "--repository", "web"])
            .env("KUBECONFIG", plane.person_kubeconfig(person).unwrap());
        run(&mut command)
    };

    // Alice logs in with her kubeconfig; npm publishes with what was written.
    let login = wharf_as("alice", &["login", "--tool", "npm"]);
    assert!(login.status.success(), "{}", text(&login));
    ws.write("pkg/package.json", r#"{"name": "from-kubectl", "version": "1.0.0"}"#);
    ws.write("pkg/index.js", "module.exports = 'published with a kubeconfig identity';\n");
    run_ok(ws.command("npm", "pkg").args(["publish", "--no-audit"]));
    let whoami = run(ws.command("npm", "pkg").args(["whoami"]));
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "alice");

    // Bob is a developer: he reads, and may not publish.
    let reader = wharf_as("bob", &["token", "--permission", "read"]);
    assert!(reader.status.success(), "{}", text(&reader));
    let token = String::from_utf8(reader.stdout).unwrap().trim().to_owned();
    let packument = server.url("/npm/web/from-kubectl");
    assert_eq!(http_request("GET", &packument, &[("authorization", &format!("Bearer {token}"))], "").unwrap(), 200);
    // The same as a kubectl plugin: `kubectl wharf …` runs `kubectl-wharf` from PATH.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(wharf_bin(), plugins.path().join("kubectl-wharf")).unwrap();
    let path = std::env::join_paths(
        std::iter::once(plugins.path().to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut kubectl = plane.kubectl().unwrap();
    kubectl
        .args(["wharf", "token", "--kubeconfig", "--permission", "read", "--registry", &server.base])
        .args(["--repository", "web"])
        .env("PATH", path)
        .env("KUBECONFIG", plane.person_kubeconfig("bob").unwrap());
    let plugin = run_ok(&mut kubectl);
    let token = String::from_utf8(plugin.stdout).unwrap().trim().to_owned();
    assert_eq!(http_request("GET", &packument, &[("authorization", &format!("Bearer {token}"))], "").unwrap(), 200);
    let default = wharf_as("bob", &["token"]);
    assert!(
        default.status.success()
            && text(&default).contains("bob may not publish on repository web: the token reads only")
    );
    let publisher = wharf_as("bob", &["token", "--permission", "publish"]);
    assert!(!publisher.status.success());
    assert!(text(&publisher).contains("bob may not publish on repository web"), "{}", text(&publisher));

    // Not people: a ServiceAccount's token, a token the apiserver does not know.
    let exchange = |token: String| {
        let url = server.url("/api/v1/auth/kubernetes");
        async move {
            let body = serde_json::json!({"token": token, "repositories": ["web"], "permissions": ["read"]});
            let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let account = plane.service_account_token(NS, "builder").await.unwrap();
    let (status, body) = exchange(account).await;
    assert_eq!(status, 401);
    assert!(body.contains("is a ServiceAccount"), "{body}");
    let (status, _) = exchange("a-token-nobody-issued".to_owned()).await;
    assert_eq!(status, 401);
    assert_eq!(exchange(" ".to_owned()).await.0, 400);

    // A Domain that does not take them says so.
    apply_yaml(&admin, &config(false), None).await.unwrap();
    eventually(Duration::from_secs(5), "kubernetesUsers turned off", || {
        let answer = exchange(String::new());
        async move {
            let (status, body) = answer.await;
            if status == 403 && body.contains("kubernetesUsers") { Ok(()) } else { Err(format!("{status} {body}")) }
        }
    })
    .await
    .unwrap();
}

/// Made-up tokens cost the apiserver a TokenReview each, so the registry bounds how many it
/// asks for: a flood of them is answered 503 past the bound (never 200), and a real token
/// works again once the bucket refills.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_made_up_tokens_is_bounded_in_reviews() {
    const NS: &str = "k8s-flood";
    let Namespace { plane, admin, data, store } = namespace(NS).await;
    let access = "  access:\n    read: [{kind: Namespace, name: team-a}]\n";
    apply_yaml(&admin, &acme_config_map(NS, &store, "", "web", access), None).await.unwrap();
    apply_yaml(&admin, &reviewer_rbac(NS), None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(NS, "registry").await.unwrap();
    let server = TestServer::start_in_env(
        data.path(),
        None,
        &["--config-map", &format!("{NS}/wharf-acme-config"), "--token-reviews-per-second", "2"],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    // RS256 headers, as a ServiceAccount token has, and nonsense after them.
    let forged = |i: usize| format!("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.forged-signature-{i}");
    let client = reqwest::Client::new();
    let url = server.url("/npm/web/left-pad");
    let attempts = (0..30).map(|i| client.get(&url).bearer_auth(forged(i)).send());
    let mut statuses: Vec<u16> = Vec::new();
    let mut throttled = String::new();
    for response in futures::future::join_all(attempts).await {
        let response = response.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 503 {
            throttled = response.text().await.unwrap();
        }
    }
    assert!(statuses.iter().all(|status| [401, 503].contains(status)), "{statuses:?}");
    let refused = statuses.iter().filter(|status| **status == 503).count();
    assert!(refused >= 16, "at most 4 reviews and 2 a second: {statuses:?}");
    assert!(throttled.contains("too many token reviews"), "{throttled}");

    let reader = plane.service_account_token_for("team-a", "builder", Some("wharf.dev"), 3600).await.unwrap();
    eventually(Duration::from_secs(10), "a real token once the bucket refills", || async {
        let status = client.get(&url).bearer_auth(&reader).send().await.map_err(|e| e.to_string())?.status();
        // The package does not exist: 404 means the token was taken.
        if status == 404 { Ok(()) } else { Err(status.to_string()) }
    })
    .await
    .unwrap();
}
