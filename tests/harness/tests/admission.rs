//! What a real kube-apiserver admits with Wharf's CRDs installed: the schema and CEL rules
//! reject invalid objects at `kubectl apply` time with a message a person can act on, and
//! accept every documented form.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kube::Client;
use wharf_test_harness::{ControlPlane, apply_yaml, ensure_namespace, eventually};

const NAMESPACE: &str = "admission";

async fn client_with_crds() -> Client {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let yaml: String =
        wharf_api::crds().iter().map(|crd| format!("---\n{}\n", serde_json::to_string(crd).unwrap())).collect();
    apply_yaml(&admin, &yaml, None).await.unwrap();
    ensure_namespace(&admin, NAMESPACE).await.unwrap();
    // A CRD is served a moment after it is established.
    eventually(Duration::from_secs(30), "Wharf kinds served", || {
        let admin = admin.clone();
        async move {
            let probe = "apiVersion: wharf.dev/v1alpha1\nkind: UpstreamPolicy\nmetadata: {name: probe}\n\
                         spec: {targetRefs: [{kind: Domain, name: probe}]}\n";
            apply_yaml(&admin, probe, Some(NAMESPACE)).await.map(|_| ()).map_err(|e| format!("{e:#}"))
        }
    })
    .await
    .unwrap();
    admin
}

async fn accepts(client: &Client, yaml: &str) {
    if let Err(error) = apply_yaml(client, yaml, Some(NAMESPACE)).await {
        panic!("rejected:\n{yaml}\n{error:#}");
    }
}

async fn rejects(client: &Client, yaml: &str, message: &str) {
    match apply_yaml(client, yaml, Some(NAMESPACE)).await {
        Ok(_) => panic!("admitted:\n{yaml}"),
        Err(error) => {
            let error = format!("{error:#}");
            assert!(error.contains(message), "expected {message:?} for\n{yaml}\ngot: {error}");
        }
    }
}

fn domain(name: &str, spec: &str) -> String {
    format!("apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

fn repository(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}}}\nspec:\n  domainRef: {{name: acme}}\n{spec}"
    )
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: UpstreamPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{kind: Domain, name: acme}}]\n{spec}"
    )
}

#[tokio::test]
async fn domains() {
    let client = client_with_crds().await;
    accepts(
        &client,
        &domain(
            "acme",
            "  storage: {filesystem: {path: /data}}\n  tokens: {maxTTL: 1h30m}\n  externalConnections:\n\
             \x20 - {name: npm-public, format: npm, url: \"https://npm.example.invalid/\"}\n\
             \x20 - {name: pypi-public, format: pypi, url: \"http://pypi.example.invalid/simple/\",\n\
             \x20    fileOrigins: [\"https://files.example.invalid\", \"http://files.example.invalid:8080/\"]}\n",
        ),
    )
    .await;
    for origin in ["https://files.example.invalid/packages", "ftp://files.example.invalid", "https://x.invalid?q=1"] {
        let yaml = domain(
            "origins",
            &format!(
                "  storage: {{memory: {{}}}}\n  externalConnections: [{{name: p, format: pypi, url: \"https://a.invalid/\", fileOrigins: [\"{origin}\"]}}]\n"
            ),
        );
        rejects(&client, &yaml, "a file origin is a scheme (http or https), a host and an optional port").await;
    }
    for (format, served) in [("nuget", true), ("swift", true), ("generic", false)] {
        let yaml = domain(
            &format!("connection-{format}"),
            &format!(
                "  storage: {{memory: {{}}}}\n  externalConnections: [{{name: c, format: {format}, url: \"https://a.invalid/\"}}]\n"
            ),
        );
        if served {
            accepts(&client, &yaml).await;
        } else {
            rejects(&client, &yaml, "generic connections are not served").await;
        }
    }
    let issuers = |issuer: &str| {
        domain(
            "issuers",
            &format!(
                "  storage: {{memory: {{}}}}\n  tokens:\n    trustedIssuers: [{{issuer: \"{issuer}\", audiences: [wharf]}}]\n"
            ),
        )
    };
    accepts(&client, &issuers("https://token.actions.example")).await;
    accepts(&client, &issuers("http://127.0.0.1:4444")).await;
    rejects(&client, &issuers("http://ci.example"), "http only on a loopback address").await;
    let no_audience = domain(
        "no-audience",
        "  storage: {memory: {}}\n  tokens:\n    trustedIssuers: [{issuer: \"https://ci.example\", audiences: []}]\n",
    );
    rejects(&client, &no_audience, "audiences").await;
    let two_on_a_volume = domain("volume", "  storage: {filesystem: {path: /data}}\n  registry: {replicas: 2}\n");
    rejects(&client, &two_on_a_volume, "filesystem storage lives on one ReadWriteOnce volume").await;
    accepts(&client, &domain("one-on-a-volume", "  storage: {filesystem: {path: /data}}\n  registry: {replicas: 1}\n"))
        .await;
    accepts(
        &client,
        &domain(
            "many-on-s3",
            "  storage: {s3: {bucket: b}}\n  registry: {replicas: 3, image: \"registry.example/wharf:1.2\"}\n",
        ),
    )
    .await;
    rejects(
        &client,
        &domain("svc", "  storage: {memory: {}}\n  registry: {service: {type: ExternalName}}\n"),
        "Unsupported value",
    )
    .await;
    let pods =
        |name: &str, settings: &str| domain(name, &format!("  storage: {{memory: {{}}}}\n  registry: {settings}\n"));
    accepts(
        &client,
        &pods(
            "pods",
            "{nodeSelector: {pool: registry}, tolerations: [{key: dedicated, operator: Exists}], \
        podLabels: {team: platform}, serviceAccountAnnotations: {eks.amazonaws.com/role-arn: arn}, \
        env: [{name: HTTPS_PROXY, value: \"http://proxy:3128\"}], terminationGracePeriodSeconds: 600}",
        ),
    )
    .await;
    rejects(&client, &pods("own-label", "{podLabels: {app.kubernetes.io/name: x}}"), "labels are the operator's").await;
    rejects(
        &client,
        &pods("own-env", "{env: [{name: WHARF_ADMIN_TOKEN, value: x}]}"),
        "WHARF_ variables are the operator's",
    )
    .await;
    rejects(&client, &pods("long-grace", "{terminationGracePeriodSeconds: 7200}"), "3600").await;
    let encrypted = domain("encrypted", "  storage: {memory: {}}\n  encryption: {keySecretRef: {name: acme-keys}}\n");
    accepts(&client, &encrypted).await;
    let one_key =
        domain("one-key", "  storage: {memory: {}}\n  encryption: {keySecretRef: {name: acme-keys, key: k1}}\n");
    rejects(&client, &one_key, "name the Secret only").await;
    accepts(&client, &repository("tidy", "  cleanup: [{name: old, origin: Cached, olderThan: 90d, keepNewest: 5}]\n"))
        .await;
    accepts(&client, &repository("unused", "  cleanup: [{name: unused, origin: Cached, notDownloadedFor: 180d}]\n"))
        .await;
    rejects(
        &client,
        &repository("limitless", "  cleanup: [{name: all, packages: [\"/*\"]}]\n"),
        "needs olderThan, notDownloadedFor or keepNewest",
    )
    .await;
    rejects(
        &client,
        &repository("twice", "  cleanup: [{name: a, keepNewest: 1}, {name: a, olderThan: 1d}]\n"),
        "a name of its own",
    )
    .await;
    let people = |name: &str, people: &str| {
        domain(
            name,
            &format!(
                "  storage: {{memory: {{}}}}\n  tokens:\n    kubernetesUsers: true\n    trustedIssuers:\n\
                 \x20   - {{issuer: \"https://idp.example\", audiences: [wharf-cli], people: {people}}}\n"
            ),
        )
    };
    accepts(
        &client,
        &people("idp", "{usernameClaim: email, groupsClaim: groups, prefix: \"idp:\", clientID: wharf-cli}"),
    )
    .await;
    rejects(
        &client,
        &people("idp-client", "{usernameClaim: email, prefix: \"idp:\", clientID: another}"),
        "people.clientID must be one of the issuer's audiences",
    )
    .await;
    rejects(&client, &people("idp-system", "{usernameClaim: sub, prefix: \"system:\"}"), "`system:` names belong")
        .await;
    rejects(&client, &people("idp-prefix", "{usernameClaim: sub}"), "prefix").await;
    for ttl in ["15m", "12h", "900", "0d1h"] {
        accepts(&client, &domain("ttl", &format!("  storage: {{memory: {{}}}}\n  tokens: {{maxTTL: \"{ttl}\"}}\n")))
            .await;
    }
    let tls =
        |name: &str, block: &str| domain(name, &format!("  storage: {{memory: {{}}}}\n  registry: {{tls: {block}}}\n"));
    accepts(
        &client,
        &domain("cidrs", "  storage: {memory: {}}\n  network: {clusterCIDRs: [10.244.0.0/16, \"fd00::/56\"]}\n"),
    )
    .await;
    rejects(
        &client,
        &domain("cidrs-bad", "  storage: {memory: {}}\n  network: {clusterCIDRs: [10.244.0.0/99]}\n"),
        "a cluster range is a CIDR",
    )
    .await;
    accepts(&client, &tls("tls-secret", "{secretName: acme-tls}")).await;
    accepts(&client, &tls("tls-issuer", "{issuerRef: {name: ca, kind: ClusterIssuer}, dnsNames: [wharf.example]}"))
        .await;
    rejects(&client, &tls("tls-none", "{}"), "exactly one").await;
    rejects(&client, &tls("tls-both", "{secretName: a, issuerRef: {name: ca}}"), "exactly one").await;
    rejects(&client, &tls("tls-names", "{secretName: a, dnsNames: [x.example]}"), "dnsNames are the names").await;
    rejects(&client, &tls("tls-kind", "{issuerRef: {name: ca, kind: Vault}}"), "Unsupported value").await;
    let expose = |name: &str, block: &str| {
        domain(name, &format!("  storage: {{memory: {{}}}}\n  registry: {{expose: {block}}}\n"))
    };
    accepts(&client, &expose("exposed", "{hosts: [wharf.acme.example], ingress: {className: nginx}}")).await;
    rejects(
        &client,
        &expose("exposed-both", "{hosts: [a.example], ingress: {}, httpRoute: {parentRefs: [{name: g}]}}"),
        "exactly one",
    )
    .await;
    rejects(&client, &expose("exposed-url", "{hosts: [\"https://a.example\"], ingress: {}}"), "lowercase DNS name")
        .await;
    rejects(
        &client,
        &domain("proxies", "  storage: {memory: {}}\n  registry: {trustedProxies: [ingress]}\n"),
        "a trusted proxy is a CIDR",
    )
    .await;
    let exactly_one = "set exactly one storage backend";
    rejects(&client, &domain("none", "  storage: {}\n"), exactly_one).await;
    rejects(&client, &domain("two", "  storage: {memory: {}, filesystem: {path: /data}}\n"), exactly_one).await;
    for ttl in ["5m", "13h", "1d", "60"] {
        let yaml = domain("ttl", &format!("  storage: {{memory: {{}}}}\n  tokens: {{maxTTL: \"{ttl}\"}}\n"));
        rejects(&client, &yaml, "maxTTL must be between 15m and 12h").await;
    }
    rejects(
        &client,
        &domain(
            "ftp",
            "  storage: {memory: {}}\n  externalConnections: [{name: x, format: npm, url: \"ftp://host/\"}]\n",
        ),
        "url must be an http or https URL",
    )
    .await;
    rejects(
        &client,
        &domain(
            "twice",
            "  storage: {memory: {}}\n  externalConnections:\n  - {name: x, format: npm, url: \"https://a.invalid/\"}\n\
             \x20 - {name: x, format: pypi, url: \"https://b.invalid/\"}\n",
        ),
        "external connection names must be unique",
    )
    .await;
    rejects(&client, &domain("fmt", "  storage: {memory: {}}\n  externalConnections: [{name: x, format: rubygems, url: \"https://a.invalid/\"}]\n"), "Unsupported value").await;
}

#[tokio::test]
async fn repositories() {
    let client = client_with_crds().await;
    accepts(
        &client,
        &repository(
            "web",
            "  upstreams: [{name: shared}, {name: npm-store}]\n  externalConnection: npm-public\n  access:\n\
             \x20   read: [{kind: Namespace, name: team-web}, {kind: Anonymous}]\n\
             \x20   publish: [{kind: ServiceAccount, namespace: team-web, name: release-bot}]\n",
        ),
    )
    .await;
    accepts(
        &client,
        &repository(
            "ci",
            "  access:\n    publish: [{kind: OIDC, issuer: \"https://issuer.invalid\", claims: {repository: acme/web}}]\n",
        ),
    )
    .await;
    rejects(
        &client,
        &repository("ci-anyone", "  access:\n    publish: [{kind: OIDC, issuer: \"https://issuer.invalid\"}]\n"),
        "OIDC needs claims",
    )
    .await;
    let network = |name: &str, rules: &str| repository(name, &format!("  network: {rules}\n"));
    accepts(&client, &network("net", "{read: [{kind: InCluster}, {kind: CIDR, cidr: 10.0.0.0/8}], publish: [{kind: CIDR, cidr: \"2001:db8::1\"}]}")).await;
    for rules in [
        "{read: [{kind: CIDR}]}",
        "{read: [{kind: CIDR, cidr: 10.0.0.0/33}]}",
        "{publish: [{kind: InCluster, cidr: 10.0.0.0/8}]}",
    ] {
        rejects(&client, &network("net-bad", rules), "kind CIDR names a range in cidr").await;
    }
    rejects(&client, &network("net-kind", "{read: [{kind: Internet}]}"), "Unsupported value").await;
    let eleven: Vec<String> = (0..11).map(|i| format!("{{name: up{i}}}")).collect();
    rejects(&client, &repository("many", &format!("  upstreams: [{}]\n", eleven.join(", "))), "Too many").await;
    rejects(&client, &repository("loop", "  upstreams: [{name: loop}]\n"), "cannot be its own upstream").await;
    rejects(&client, &repository("dup", "  upstreams: [{name: a}, {name: a}]\n"), "each upstream may be listed once")
        .await;
    rejects(
        &client,
        &repository("anon", "  access: {publish: [{kind: Anonymous}]}\n"),
        "Anonymous may read, never publish",
    )
    .await;
    accepts(
        &client,
        &repository(
            "people",
            "  access: {read: [{kind: Group, name: developers}], publish: [{kind: User, name: alice}]}\n",
        ),
    )
    .await;
    for kind in ["User", "Group"] {
        let yaml = repository("nobody", &format!("  access: {{read: [{{kind: {kind}}}]}}\n"));
        rejects(&client, &yaml, "Namespace, User and Group need name").await;
    }
    rejects(
        &client,
        &repository("sa", "  access: {read: [{kind: ServiceAccount, name: bot}]}\n"),
        "ServiceAccount needs name and namespace",
    )
    .await;
    rejects(&client, &repository("Bad_Name", ""), "metadata.name").await;
    accepts(&client, &repository("shared", "  allowedDownstreams: [{namespace: team-web, name: web}, {namespace: team-data}, {namespaceSelector: {matchLabels: {team: x}}}]\n")).await;
    for grant in ["{name: web}", "{namespace: a, namespaceSelector: {matchLabels: {team: x}}}", "{}"] {
        rejects(
            &client,
            &repository("grants", &format!("  allowedDownstreams: [{grant}]\n")),
            "name a namespace (and, optionally, one Repository in it) or a namespaceSelector, not both",
        )
        .await;
    }

    // domainRef is fixed once set: packages do not move between Domains.
    rejects(
        &client,
        &repository("web", "  upstreams: [{name: shared}]\n").replace("name: acme", "name: other"),
        "domainRef is immutable",
    )
    .await;
}

#[tokio::test]
async fn upstream_policies() {
    let client = client_with_crds().await;
    accepts(
        &client,
        &policy(
            "internal-names",
            "  metadataTTL: 30s\n  rules:\n  - patterns: [\"/npm/acme/*\", \"/pypi//acme~\", \"/maven/com.acme/lib$\"]\n\
             \x20   publish: {mode: Allow}\n    externalUpstream: {mode: Block}\n\
             \x20   internalUpstream: {mode: AllowSpecificRepositories, repositories: [shared]}\n\
             \x20 - patterns: [\"/*\"]\n    minimumReleaseAge: 7d\n    externalUpstream: {mode: Inherit}\n\
             \x20   blockedVersions: [\"/npm//event-stream@3.3.6\"]\n",
        ),
    )
    .await;
    // The cluster takes the long form of a restriction only (see api/src/policy.rs).
    let short = policy("short", "  rules:\n  - patterns: [\"/*\"]\n    publish: Allow\n");
    rejects(&client, &short, ".spec.rules[0].publish: expected map").await;
    for restriction in ["{mode: AllowSpecificRepositories}", "{mode: Allow, repositories: [x]}"] {
        let yaml = policy("restriction", &format!("  rules:\n  - patterns: [\"/*\"]\n    publish: {restriction}\n"));
        rejects(&client, &yaml, "AllowSpecificRepositories needs repositories").await;
    }
    rejects(
        &client,
        &policy("mode", "  rules: [{patterns: [\"/*\"], publish: {mode: Permit}}]\n"),
        "Unsupported value",
    )
    .await;
    rejects(&client, &policy("ttl", "  metadataTTL: 25h\n"), "metadataTTL must be between 0s and 24h").await;
    rejects(
        &client,
        &policy("age", "  rules: [{patterns: [\"/*\"], minimumReleaseAge: 400d}]\n"),
        "minimumReleaseAge must be between",
    )
    .await;
    rejects(&client, &policy("pattern", "  rules: [{patterns: [\"npm/acme\"]}]\n"), "should match").await;
    rejects(&client, &policy("format", "  rules: [{patterns: [\"/rubygems/*\"]}]\n"), "should match").await;
}
