//! Leader election against a real kube-apiserver and etcd (the test harness): several
//! `wharf-operator run --leader-election` processes under exactly
//! `operator/rbac/cluster-role.yaml` plus the chart's leader-election Role; only the Lease's
//! holder reconciles; a killed leader is replaced once its Lease expires, a stopped one exits
//! when it finds its Lease taken, a terminated one hands over at once; `/metrics` tells
//! which replica reconciles and how often. Does I/O (processes,
//! network on loopback).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use wharf_api::{Repository, find_condition};
use wharf_test_harness::{ControlPlane, apply_yaml, ensure_namespace, eventually, free_ports, install_crds};

const WAIT: Duration = Duration::from_secs(30);
const LEASE: &str = "wharf-operator";
const LEASE_NAMESPACE: &str = "wharf-system";
const LEASE_SECONDS: u64 = 6;
const RENEW_SECONDS: u64 = 2;

/// One operator process, stopped when it is dropped or when this test binary exits (its
/// supervisor reads our end of a pipe and kills the operator when it closes).
struct Operator {
    identity: &'static str,
    pid: u32,
    metrics_port: u16,
    log: PathBuf,
    exit_code: PathBuf,
    stdin: Option<ChildStdin>,
    supervisor: Child,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(kubeconfig: &Path, identity: &'static str, log_format: &str) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let pid_file = dir.path().join("pid");
        let exit_code = dir.path().join("exit-code");
        let [metrics_port] = free_ports::<1>().unwrap();
        let script = format!(
            "( {bin} run --leader-election --leader-election-lease {LEASE} --leader-election-lease-seconds {LEASE_SECONDS} \
             --leader-election-renew-seconds {RENEW_SECONDS} >{log} 2>&1 </dev/null & echo $! >{pid}.tmp; mv {pid}.tmp {pid}; \
             wait $!; echo $? >{code} ) &\n\
             cat >/dev/null\npid=$(cat {pid})\nkill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null\n\
             for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do kill -0 $pid 2>/dev/null || break; sleep 1; done\nkill -9 $pid 2>/dev/null",
            bin = env!("CARGO_BIN_EXE_wharf-operator"),
            log = log.display(),
            pid = pid_file.display(),
            code = exit_code.display(),
        );
        let mut supervisor = Command::new("sh")
            .args(["-c", &script])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", LEASE_NAMESPACE)
            .env("POD_NAME", identity)
            .env("WHARF_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info,kube=warn")
            .env("WHARF_LOG_FORMAT", log_format)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = supervisor.stdin.take();
        let started = Instant::now();
        let pid = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                break text.trim().parse().unwrap();
            }
            assert!(started.elapsed() < WAIT, "operator {identity} did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Operator { identity, pid, metrics_port, log, exit_code, stdin, supervisor, _dir: dir }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|line| !line.contains("cert bypassed")).collect::<Vec<_>>().join("\n")
    }

    /// `/metrics`, once the operator serves it.
    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        eventually(WAIT, &format!("operator {} serves /metrics", self.identity), || async {
            let response = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(response.status().to_string());
            }
            response.text().await.map_err(|e| e.to_string())
        })
        .await
        .unwrap()
    }

    async fn probe(&self, path: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        reqwest::get(&url).await.unwrap().status().as_u16()
    }

    fn reconciles(&self) -> bool {
        self.log().contains("controllers started")
    }

    /// The process's exit code, once it has exited.
    async fn exit_code(&self) -> i32 {
        eventually(WAIT, &format!("operator {} exits", self.identity), || async {
            let text = std::fs::read_to_string(&self.exit_code).map_err(|e| e.to_string())?;
            text.trim().parse::<i32>().map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\nlog:\n{}", self.log()))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.supervisor.wait();
    }
}

/// The Role and RoleBinding of `charts/wharf/templates/leader-election.yaml`, with the values
/// the chart would put in.
fn chart_leader_election_rbac() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = std::fs::read_to_string(root.join("charts/wharf/templates/leader-election.yaml")).unwrap();
    let rendered: String = template
        .lines()
        .filter(|line| !line.starts_with("{{- if") && !line.starts_with("{{- end"))
        .filter(|line| line.trim() != "labels:" && !line.contains("include \"wharf.labels\""))
        .map(|line| {
            line.replace("{{ include \"wharf.fullname\" . }}", "wharf-operator")
                .replace("{{ .Release.Namespace }}", LEASE_NAMESPACE)
                .replace("{{ .Values.leaderElection.leaseName | quote }}", &format!("\"{LEASE}\""))
        })
        .map(|line| line + "\n")
        .collect();
    assert!(!rendered.contains("{{"), "the chart's leader-election template has changed:\n{rendered}");
    rendered
}

async fn holder(client: &Client) -> Result<String, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = leases.get(LEASE).await.map_err(|e| e.to_string())?;
    lease.spec.and_then(|spec| spec.holder_identity).ok_or_else(|| "no holder".to_owned())
}

/// Waits until `identity` holds the Lease; returns how long that took.
async fn wait_holder(client: &Client, identity: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually(timeout, &format!("{identity} holds the Lease"), || async {
        let holder = holder(client).await?;
        if holder == identity { Ok(()) } else { Err(holder) }
    })
    .await
    .unwrap();
    started.elapsed()
}

/// Applies Repository `name` in `namespace` and waits until it is served.
async fn repository_served(client: &Client, namespace: &str, name: &str, leader: &Operator) {
    let yaml = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{domainRef: {{name: acme}}, access: {{read: [{{kind: Anonymous}}]}}}}\n"
    );
    apply_yaml(client, &yaml, None).await.unwrap();
    let api: Api<Repository> = Api::namespaced(client.clone(), namespace);
    eventually(WAIT, &format!("Repository {name} is served"), || async {
        let repository = api.get(name).await.map_err(|e| e.to_string())?;
        let status = repository.status.ok_or("no status")?;
        let ready = find_condition(&status.conditions, "Ready").ok_or("no Ready")?;
        let current = status.observed_generation == repository.metadata.generation;
        if current && ready.reason == "Served" { Ok(()) } else { Err(format!("{} current={current}", ready.reason)) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\nleader {} log:\n{}", leader.identity, leader.log()));
}

#[tokio::test]
async fn one_replica_reconciles_and_another_takes_over_when_it_dies_stops_or_leaves() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    install_crds(&admin).await.unwrap();
    ensure_namespace(&admin, LEASE_NAMESPACE).await.unwrap();
    for file in ["cluster-role.yaml", "service-account.yaml"] {
        apply_yaml(&admin, &std::fs::read_to_string(root.join("operator/rbac").join(file)).unwrap(), None)
            .await
            .unwrap();
    }
    apply_yaml(&admin, &chart_leader_election_rbac(), None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(LEASE_NAMESPACE, "wharf-operator").await.unwrap();

    // Two replicas: one takes the Lease and reconciles, the other waits.
    let first = Operator::start(&kubeconfig, "replica-a", "text");
    let second = Operator::start(&kubeconfig, "replica-b", "text");
    let leader_identity = eventually(WAIT, "a replica holds the Lease", || holder(&admin)).await.unwrap();
    let (leader, follower) = if leader_identity == first.identity { (first, second) } else { (second, first) };
    assert_eq!(leader_identity, leader.identity);
    let ns = "it-leader";
    ensure_namespace(&admin, ns).await.unwrap();
    let domain = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: acme, namespace: {ns}}}\nspec: {{storage: {{memory: {{}}}}}}\n"
    );
    apply_yaml(&admin, &domain, None).await.unwrap();
    eventually(WAIT, "the registry Deployment exists", || async {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(admin.clone(), ns);
        deployments.get("wharf-acme").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\nleader log:\n{}", leader.log()));
    plane.mark_available(ns, "wharf-acme").await.unwrap();
    repository_served(&admin, ns, "before", &leader).await;
    assert!(leader.reconciles(), "{}", leader.log());
    assert!(!follower.reconciles(), "the follower reconciles too:\n{}", follower.log());
    assert!(follower.log().contains("waiting for the Lease held by another replica"), "{}", follower.log());
    let leader_metrics = leader.metrics().await;
    let follower_metrics = follower.metrics().await;
    assert!(leader_metrics.contains("wharf_operator_leader 1"), "{leader_metrics}");
    assert!(
        leader_metrics
            .lines()
            .any(|line| line.starts_with("wharf_operator_reconciles_total{kind=\"Repository\",result=\"ok\"}")),
        "{leader_metrics}"
    );
    // Its Domain is known to the leader's metrics, not yet Ready (no pod runs here).
    assert!(leader_metrics.contains("wharf_operator_domain_ready{namespace=\""), "{leader_metrics}");
    assert!(follower_metrics.contains("wharf_operator_leader 0"), "{follower_metrics}");
    assert!(!follower_metrics.contains("wharf_operator_reconciles_total{"), "{follower_metrics}");
    assert_eq!((leader.probe("/healthz").await, follower.probe("/healthz").await), (200, 200));
    // Ready: the leader once its caches are filled (it has reconciled), the follower as a standby.
    assert_eq!((leader.probe("/readyz").await, follower.probe("/readyz").await), (200, 200));

    // SIGKILL: the Lease stays held until it expires, then the follower takes it.
    leader.signal("KILL");
    let killed = Instant::now();
    wait_holder(&admin, follower.identity, WAIT).await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {takeover:?} (lease {LEASE_SECONDS} s, renew {RENEW_SECONDS} s)");
    assert!(
        takeover >= Duration::from_secs(LEASE_SECONDS - RENEW_SECONDS),
        "took over after {takeover:?}, before the Lease expired"
    );
    repository_served(&admin, ns, "after-kill", &follower).await;
    assert!(follower.reconciles(), "{}", follower.log());
    drop(leader);

    // A leader that stops renewing (paused) loses the Lease and, when it runs again, exits
    // non-zero instead of reconciling beside the new leader.
    let paused = follower;
    let third = Operator::start(&kubeconfig, "replica-c", "text");
    paused.signal("STOP");
    wait_holder(&admin, third.identity, WAIT).await;
    paused.signal("CONT");
    assert_ne!(paused.exit_code().await, 0, "{}", paused.log());
    assert!(paused.log().contains("lost Lease"), "{}", paused.log());
    repository_served(&admin, ns, "after-pause", &third).await;

    // SIGTERM: the leader releases the Lease and a follower takes it at its next attempt.
    let fourth = Operator::start(&kubeconfig, "replica-d", "json");
    eventually(WAIT, "the fourth replica is waiting", || async {
        if fourth.log().contains("waiting for the Lease") { Ok(()) } else { Err(fourth.log()) }
    })
    .await
    .unwrap();
    third.signal("TERM");
    let terminated = Instant::now();
    wait_holder(&admin, fourth.identity, WAIT).await;
    let handover = terminated.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(handover < Duration::from_secs(RENEW_SECONDS), "handover took {handover:?}");
    assert_eq!(third.exit_code().await, 0, "{}", third.log());
    assert!(third.log().contains("released the Lease"), "{}", third.log());
    repository_served(&admin, ns, "after-term", &fourth).await;
    // WHARF_LOG_FORMAT=json: every line one JSON object.
    for line in fourth.log().lines() {
        let object: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
}
