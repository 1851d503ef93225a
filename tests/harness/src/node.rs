//! A stand-in node: in the background, runs every Deployment whose image is registered with
//! the [`Kubelet`] and every Job, as the kubelet together with the Deployment and Job
//! controllers would, and stands in for Services and cluster DNS with a loopback HTTP
//! forward proxy that every process it starts is given. Does I/O (processes, sockets, the
//! apiserver).
//!
//! Deployments: one process per Deployment (whatever `replicas` says, unless 0), reported
//! available once its readiness probe answers; restarted (after a backoff) when it exits or
//! cannot start yet (a Secret not there yet), replaced when the pod template changes (a new
//! `metadata.generation`; Recreate, not a rolling update), stopped when the Deployment goes.
//! A Deployment whose image is not registered is logged once and left alone.
//!
//! Jobs: the first container runs once — `backoffLimit` is not honoured, a failure is final
//! — and the Job's status is written as the Job controller writes it (`startTime`,
//! `completionTime`, `succeeded`/`failed`, `SuccessCriteriaMet` then `Complete`, or
//! `FailureTarget` then `Failed`, which this apiserver's status validation demands), so
//! `kubectl wait --for=condition=complete` and `--for=condition=failed` work.
//!
//! The proxy answers plain-HTTP absolute-form requests (`GET http://HOST:PORT/PATH`, what
//! npm, pip and curl send to an `http_proxy`) for `NAME.NAMESPACE.svc`,
//! `NAME.NAMESPACE.svc.cluster.local` and `NAME.NAMESPACE`: the Service's port, its
//! `targetPort` (a number or a container port's name) and its `selector` matched against the
//! pod template labels of the ready Deployments this node runs. One request per connection
//! (`Connection: close` to both sides). Anything else is a 502 naming the host; `CONNECT`
//! (https through the proxy) is a 501.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::kubelet::{Entrypoint, Image, Kubelet, Process, http_status, https_status, mark_available, probes_https};

/// How often the node lists Deployments and Jobs.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// How long a Deployment's process may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait before a failed process is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

/// Lines of a process's log that [`Node::pod_log`] returns.
const LOG_LINES: usize = 60;

/// The running stand-in node; stops everything it started when dropped.
pub struct Node {
    context: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
}

struct Context {
    kubelet: Kubelet<'static>,
    client: Client,
    proxy_port: u16,
    state: Mutex<NodeState>,
    events: Mutex<Vec<String>>,
}

#[derive(Default)]
struct NodeState {
    deployments: BTreeMap<Key, Run>,
    jobs: BTreeMap<Key, Run>,
    /// Deployments whose image is not registered, with that image, logged once.
    ignored: BTreeSet<(Key, String)>,
}

/// `(namespace, name)`.
type Key = (String, String);

/// What the node runs for one Deployment generation or one Job.
struct Run {
    uid: String,
    generation: Option<i64>,
    /// The pod template's labels, which Service selectors match.
    labels: BTreeMap<String, String>,
    /// The first container's declared ports, by name.
    ports: Vec<(Option<String>, i32)>,
    pod: Arc<Mutex<Option<Pod>>>,
    task: JoinHandle<()>,
}

/// The current process of a [`Run`].
struct Pod {
    process: Process,
    /// The loopback port it listens on, for a Deployment.
    port: Option<u16>,
    /// The port the pod template has it listen on.
    container_port: Option<i32>,
    ready: bool,
}

impl Kubelet<'static> {
    /// Starts the node in the background: it runs the Deployments and Jobs of every
    /// namespace until the returned [`Node`] is dropped.
    pub async fn start_node(&self) -> anyhow::Result<Node> {
        let client = self.plane.admin_client().await?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("failed to bind the node's proxy")?;
        let context = Arc::new(Context {
            kubelet: self.clone(),
            client,
            proxy_port: listener.local_addr()?.port(),
            state: Mutex::new(NodeState::default()),
            events: Mutex::new(Vec::new()),
        });
        let tasks =
            vec![tokio::spawn(serve_proxy(listener, context.clone())), tokio::spawn(sync_loop(context.clone()))];
        Ok(Node { context, tasks })
    }
}

impl Node {
    /// `http://127.0.0.1:PORT`: the proxy standing in for Services and cluster DNS, which
    /// every process the node starts has as `http_proxy`.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.context.proxy_port)
    }

    /// The last lines of the log of the process of Deployment or Job `namespace/name`.
    pub fn pod_log(&self, namespace: &str, name: &str) -> String {
        let state = lock(&self.context.state);
        let key = (namespace.to_owned(), name.to_owned());
        match state.deployments.get(&key).or_else(|| state.jobs.get(&key)) {
            Some(run) => match lock(&run.pod).as_ref() {
                Some(pod) => pod.process.log_tail(LOG_LINES),
                None => format!("{namespace}/{name} has not started a process yet"),
            },
            None => format!("this node runs no Deployment or Job {namespace}/{name}"),
        }
    }

    /// What the node did (started, stopped, failed, ignored), in order.
    pub fn events(&self) -> Vec<String> {
        lock(&self.context.events).clone()
    }

    /// The node's events and the log of every process it runs, for a failing test to print.
    pub fn all_logs(&self) -> String {
        let mut text = format!("--- node events\n{}\n", self.events().join("\n"));
        let state = lock(&self.context.state);
        let runs =
            state.deployments.iter().map(|run| ("Deployment", run)).chain(state.jobs.iter().map(|run| ("Job", run)));
        for (kind, ((namespace, name), run)) in runs {
            let log = lock(&run.pod).as_ref().map(|pod| pod.process.log_tail(LOG_LINES)).unwrap_or_default();
            text.push_str(&format!("--- {kind} {namespace}/{name}\n{log}\n"));
        }
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
        for task in &self.tasks {
            task.abort();
        }
        let runs = {
            let mut state = lock(&self.context.state);
            let deployments = std::mem::take(&mut state.deployments);
            let jobs = std::mem::take(&mut state.jobs);
            deployments.into_values().chain(jobs.into_values()).collect()
        };
        stop_all(runs);
    }
}

/// Stops the processes of `runs`: all are asked first, then each is waited for.
fn stop_all(runs: Vec<Run>) {
    let mut pods = Vec::new();
    for run in runs {
        run.task.abort();
        if let Some(mut pod) = lock(&run.pod).take() {
            pod.process.signal_stop();
            pods.push(pod);
        }
    }
    drop(pods);
}

/// Locks `mutex`, whether or not a panicking holder poisoned it: the node's state stays
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Context {
    fn event(&self, message: String) {
        eprintln!("[node] {message}");
        lock(&self.events).push(message);
    }
}

async fn sync_loop(context: Arc<Context>) {
    let mut last_error = String::new();
    loop {
        match sync(&context).await {
            Ok(()) => last_error.clear(),
            Err(error) => {
                let error = format!("{error:#}");
                if error != last_error {
                    context.event(format!("listing Deployments and Jobs failed: {error}"));
                    last_error = error;
                }
            }
        }
        tokio::time::sleep(SYNC_INTERVAL).await;
    }
}

/// Brings what runs in line with the Deployments and Jobs the apiserver has.
async fn sync(context: &Arc<Context>) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::all(context.client.clone()).list(&ListParams::default()).await?;
    let jobs = Api::<Job>::all(context.client.clone()).list(&ListParams::default()).await?;
    let mut stopped = Vec::new();
    {
        let mut state = lock(&context.state);
        let mut wanted = BTreeSet::new();
        for deployment in deployments {
            let key = key_of(&deployment.metadata);
            let spec = &deployment.spec;
            let image_reference = first_image(spec.template.spec.as_ref());
            let Some(image) = context.kubelet.images.get(repository_name(&image_reference)) else {
                if state.ignored.insert((key.clone(), image_reference.clone())) {
                    context.event(format!(
                        "Deployment {}/{}: image {image_reference:?} is not registered with the node; not run",
                        key.0, key.1
                    ));
                }
                continue;
            };
            if spec.replicas == Some(0) {
                continue;
            }
            wanted.insert(key.clone());
            let uid = deployment.metadata.uid.clone().unwrap_or_default();
            let generation = deployment.metadata.generation;
            if state.deployments.get(&key).is_some_and(|run| run.uid == uid && run.generation == generation) {
                continue;
            }
            if let Some(previous) = state.deployments.remove(&key) {
                context.event(format!(
                    "Deployment {}/{}: generation {generation:?} replaces {:?}; stopping the old process",
                    key.0, key.1, previous.generation
                ));
                stopped.push(previous);
            }
            let pod = Arc::new(Mutex::new(None));
            let template = &spec.template;
            let run = Run {
                uid,
                generation,
                labels: template.metadata.as_ref().and_then(|meta| meta.labels.clone()).unwrap_or_default(),
                ports: declared_ports(template.spec.as_ref()),
                pod: pod.clone(),
                task: tokio::spawn(supervise_deployment(context.clone(), deployment.clone(), image.clone(), pod)),
            };
            state.deployments.insert(key, run);
        }
        let gone: Vec<Key> = state.deployments.keys().filter(|key| !wanted.contains(*key)).cloned().collect();
        for key in gone {
            context.event(format!("Deployment {}/{}: gone or scaled to 0; stopping its process", key.0, key.1));
            stopped.extend(state.deployments.remove(&key));
        }

        let mut present = BTreeSet::new();
        for job in jobs {
            let key = key_of(&job.metadata);
            present.insert(key.clone());
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if state.jobs.get(&key).is_some_and(|run| run.uid == uid) {
                continue;
            }
            stopped.extend(state.jobs.remove(&key));
            let finished =
                job.status.as_ref().and_then(|status| status.conditions.as_ref()).is_some_and(|conditions| {
                    conditions.iter().any(|condition| {
                        matches!(condition.type_.as_str(), "Complete" | "Failed") && condition.status == "True"
                    })
                });
            let suspended = job.spec.as_ref().and_then(|spec| spec.suspend) == Some(true);
            if finished || suspended {
                continue;
            }
            let pod = Arc::new(Mutex::new(None));
            let run = Run {
                uid,
                generation: job.metadata.generation,
                labels: BTreeMap::new(),
                ports: Vec::new(),
                pod: pod.clone(),
                task: tokio::spawn(run_job(context.clone(), job, pod)),
            };
            state.jobs.insert(key, run);
        }
        let gone: Vec<Key> = state.jobs.keys().filter(|key| !present.contains(*key)).cloned().collect();
        for key in gone {
            stopped.extend(state.jobs.remove(&key));
        }
    }
    // Outside the lock: stopping waits for the processes to exit.
    stop_all(stopped);
    Ok(())
}

fn key_of(metadata: &kube::api::ObjectMeta) -> Key {
    (metadata.namespace.clone().unwrap_or_default(), metadata.name.clone().unwrap_or_default())
}

fn first_image(pod: Option<&PodSpec>) -> String {
    pod.and_then(|pod| pod.containers.first()).and_then(|container| container.image.clone()).unwrap_or_default()
}

fn declared_ports(pod: Option<&PodSpec>) -> Vec<(Option<String>, i32)> {
    let container = pod.and_then(|pod| pod.containers.first());
    let ports = container.and_then(|container| container.ports.as_ref());
    ports.iter().flat_map(|ports| ports.iter()).map(|port| (port.name.clone(), port.container_port)).collect()
}

/// The repository name of an image reference: the last path segment, without tag or
/// digest (`registry.example:5000/acme/wharf-operator:0.1.0@sha256:…` → `wharf-operator`).
fn repository_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    segment.split(':').next().unwrap_or(segment)
}

/// Keeps one Deployment generation running: starts it, reports it available once ready,
/// and starts it again (after a growing pause) whenever it exits or cannot start yet.
async fn supervise_deployment(
    context: Arc<Context>,
    deployment: Deployment,
    image: Image,
    pod: Arc<Mutex<Option<Pod>>>,
) {
    let (namespace, name) = key_of(&deployment.metadata);
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let error = run_deployment_once(&context, &deployment, &image, &pod).await;
        let previous_log = lock(&pod).take().map(|pod| pod.process.log_tail(20)).unwrap_or_default();
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        context.event(format!(
            "Deployment {namespace}/{name}: {error:#}; starting again in {backoff:?}; last log lines:\n{previous_log}"
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs the Deployment's process until it exits; returns why it is no longer running.
async fn run_deployment_once(
    context: &Context,
    deployment: &Deployment,
    image: &Image,
    pod: &Mutex<Option<Pod>>,
) -> anyhow::Error {
    let (namespace, name) = key_of(&deployment.metadata);
    let result: anyhow::Result<()> = async {
        let template = deployment.spec.template.spec.as_ref().context("no pod template")?;
        let https = probes_https(template);
        let launch = context
            .kubelet
            .launch(&context.client, &namespace, &name, template, Entrypoint::Image(image), Some(context.proxy_port))
            .await?;
        let port = launch.port.context("an image listens on a port")?;
        let container_port = launch.container_port;
        let process = launch.spawn()?;
        *lock(pod) = Some(Pod { process, port: Some(port), container_port, ready: false });

        let started = Instant::now();
        loop {
            if let Some(code) = exit_code(pod)? {
                bail!("the process exited with code {code} before it was ready");
            }
            let status = if https { https_status(port, &image.probe) } else { http_status(port, &image.probe) };
            if status.is_ok_and(|status| status == 200) {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("{} did not answer 200 within {READY_TIMEOUT:?}", image.probe);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(pod) = lock(pod).as_mut() {
            pod.ready = true;
        }
        mark_available(&context.client, &namespace, &name, deployment.metadata.generation).await?;
        context.event(format!(
            "Deployment {namespace}/{name} (generation {:?}) is ready on 127.0.0.1:{port}",
            deployment.metadata.generation
        ));
        loop {
            if let Some(code) = exit_code(pod)? {
                bail!("the process exited with code {code}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    match result {
        Ok(()) => anyhow::anyhow!("the process stopped"),
        Err(error) => error,
    }
}

fn exit_code(pod: &Mutex<Option<Pod>>) -> anyhow::Result<Option<i32>> {
    match lock(pod).as_mut() {
        Some(pod) => pod.process.exit_code(),
        None => Ok(None),
    }
}

/// Runs a Job's pod once and writes the outcome into the Job's status.
async fn run_job(context: Arc<Context>, job: Job, pod: Arc<Mutex<Option<Pod>>>) {
    let (namespace, name) = key_of(&job.metadata);
    if let Err(error) = run_job_once(&context, &job, &pod).await {
        context.event(format!("Job {namespace}/{name}: {error:#}"));
    }
}

async fn run_job_once(context: &Context, job: &Job, pod: &Mutex<Option<Pod>>) -> anyhow::Result<()> {
    let (namespace, name) = key_of(&job.metadata);
    let jobs = Api::<Job>::namespaced(context.client.clone(), &namespace);
    let start_time = now();
    let status = serde_json::json!({"status": {"startTime": start_time, "active": 1}});
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .context("failed to mark the Job active")?;

    let template = job.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).context("no pod template")?;
    // As a kubelet keeps a pod waiting while a Secret or ConfigMap it needs is missing.
    let mut reported = String::new();
    let launch = loop {
        match context
            .kubelet
            .launch(&context.client, &namespace, &name, template, Entrypoint::Command, Some(context.proxy_port))
            .await
        {
            Ok(launch) => break launch,
            Err(error) => {
                let error = format!("{error:#}");
                if error != reported {
                    context.event(format!("Job {namespace}/{name}: cannot start yet: {error}"));
                    reported = error;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let process = launch.spawn()?;
    *lock(pod) = Some(Pod { process, port: None, container_port: None, ready: false });
    context.event(format!("Job {namespace}/{name} started"));
    let code = loop {
        if let Some(code) = exit_code(pod)? {
            break code;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let end_time = now();
    let condition = |type_: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": "True", "reason": reason, "message": message,
                           "lastProbeTime": end_time, "lastTransitionTime": end_time})
    };
    let status = if code == 0 {
        let message = "Reached expected number of succeeded pods";
        serde_json::json!({"status": {
            "startTime": start_time, "completionTime": end_time, "active": 0, "ready": 0, "succeeded": 1,
            "conditions": [condition("SuccessCriteriaMet", "CompletionsReached", message),
                           condition("Complete", "CompletionsReached", message)],
        }})
    } else {
        let message = format!(
            "Job has reached the specified backoff limit: its container exited with code {code} \
             (the test harness's node runs a Job's pod once)"
        );
        serde_json::json!({"status": {
            "startTime": start_time, "active": 0, "ready": 0, "failed": 1,
            "conditions": [condition("FailureTarget", "BackoffLimitExceeded", &message),
                           condition("Failed", "BackoffLimitExceeded", &message)],
        }})
    };
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .context("failed to write the Job's outcome")?;
    context.event(format!("Job {namespace}/{name} exited with code {code}"));
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn serve_proxy(listener: TcpListener, context: Arc<Context>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = proxy_connection(stream, &context).await {
                context.event(format!("proxy: {error:#}"));
            }
        });
    }
}

/// Forwards one request to the Service it names and streams the response back.
async fn proxy_connection(mut client: TcpStream, context: &Context) -> anyhow::Result<()> {
    let (head, body_start) = read_head(&mut client).await?;
    let request = match ProxyRequest::parse(&head) {
        Ok(request) => request,
        Err((status, message)) => return answer(&mut client, status, &message).await,
    };
    let port = match context.resolve(&request.host, request.port).await {
        Ok(port) => port,
        Err(message) => return answer(&mut client, "502 Bad Gateway", &message).await,
    };
    let mut backend = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(backend) => backend,
        Err(error) => {
            let message =
                format!("{}:{} is served on 127.0.0.1:{port}, which refused: {error}", request.host, request.port);
            return answer(&mut client, "502 Bad Gateway", &message).await;
        }
    };
    backend.write_all(request.origin_form_head().as_bytes()).await?;
    backend.write_all(&body_start).await?;

    let (mut client_read, mut client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = backend.into_split();
    // The request body flows on while the response comes back; the backend closes after its
    // response (Connection: close), which ends the exchange. The backend's read side is never
    // shut: a server may drop a half-closed connection mid-response.
    let upload = tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut backend_write).await });
    let downloaded = tokio::io::copy(&mut backend_read, &mut client_write).await;
    upload.abort();
    let _ = client_write.shutdown().await;
    downloaded.context("failed to stream the response back")?;
    Ok(())
}

/// Reads up to the end of the request head; returns the head and the bytes after it.
async fn read_head(client: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buffer).into_owned(), rest));
        }
        if buffer.len() > MAX_HEAD {
            bail!("a request head longer than {MAX_HEAD} bytes");
        }
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            bail!("the client closed the connection before the end of its request head");
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn answer(client: &mut TcpStream, status: &str, message: &str) -> anyhow::Result<()> {
    let body = format!("wharf test node proxy: {message}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await?;
    Ok(())
}

/// A proxy request: `METHOD http://HOST[:PORT]/PATH VERSION` and its headers.
#[derive(Debug, PartialEq)]
struct ProxyRequest {
    method: String,
    host: String,
    port: u16,
    path: String,
    version: String,
    headers: Vec<String>,
}

impl ProxyRequest {
    /// Parses a request head, or says which status and message answer it.
    fn parse(head: &str) -> Result<ProxyRequest, (&'static str, String)> {
        let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(("400 Bad Request", format!("not an HTTP request line: {request_line:?}")));
        };
        if method == "CONNECT" {
            return Err((
                "501 Not Implemented",
                format!("CONNECT {target}: this node proxies plain http to Services only, not https"),
            ));
        }
        let Some(rest) = target.strip_prefix("http://") else {
            return Err((
                "400 Bad Request",
                format!("{target:?} is not absolute-form: send requests as to an http_proxy (http://HOST:PORT/PATH)"),
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(index) if rest[index..].starts_with('/') => (&rest[..index], rest[index..].to_owned()),
            Some(index) => (&rest[..index], format!("/{}", &rest[index..])),
            None => (rest, "/".to_owned()),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse().map_err(|_| ("400 Bad Request", format!("bad port in {authority:?}")))?;
                (host, port)
            }
            None => (authority, 80),
        };
        let headers = lines
            .filter(|line| {
                let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
                !matches!(name.as_str(), "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization")
            })
            .map(str::to_owned)
            .collect();
        Ok(ProxyRequest {
            method: method.to_owned(),
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
            path,
            version: version.to_owned(),
            headers,
        })
    }

    /// The head to send to the backend: origin-form, one request per connection.
    fn origin_form_head(&self) -> String {
        let mut head = format!("{} {} {}\r\n", self.method, self.path, self.version);
        for header in &self.headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }
}

/// `(name, namespace)` of a Service host name, or `None` for any other host.
fn service_of_host(host: &str) -> Option<(&str, &str)> {
    let short = host.strip_suffix(".svc.cluster.local").or_else(|| host.strip_suffix(".svc")).unwrap_or(host);
    let (name, namespace) = short.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.')).then_some((name, namespace))
}

impl Context {
    /// The loopback port of the ready process behind Service host `host` and `port`, or a
    /// message saying why there is none.
    async fn resolve(&self, host: &str, port: u16) -> Result<u16, String> {
        let Some((name, namespace)) = service_of_host(host) else {
            return Err(format!(
                "{host} is not a Service (NAME.NAMESPACE.svc[.cluster.local] or NAME.NAMESPACE); this node reaches nothing else"
            ));
        };
        let services = Api::<Service>::namespaced(self.client.clone(), namespace);
        let service = match services.get_opt(name).await {
            Ok(Some(service)) => service,
            Ok(None) => return Err(format!("{host}: there is no Service {namespace}/{name}")),
            Err(error) => return Err(format!("{host}: reading Service {namespace}/{name} failed: {error}")),
        };
        let spec = service.spec.unwrap_or_default();
        let service_port = spec.ports.iter().flatten().find(|candidate| candidate.port == i32::from(port));
        let Some(service_port) = service_port else {
            let known: Vec<String> = spec.ports.iter().flatten().map(|port| port.port.to_string()).collect();
            return Err(format!("{host}: Service {namespace}/{name} has no port {port} (it has {})", known.join(", ")));
        };
        let target = service_port.target_port.clone().unwrap_or(IntOrString::Int(i32::from(port)));
        let selector = spec.selector.unwrap_or_default();
        if selector.is_empty() {
            return Err(format!("{host}: Service {namespace}/{name} has no selector, so no pod of this node"));
        }
        let state = lock(&self.state);
        let selected = state.deployments.iter().filter(|((run_namespace, _), run)| {
            run_namespace == namespace && selector.iter().all(|(key, value)| run.labels.get(key) == Some(value))
        });
        let mut reasons = Vec::new();
        for ((_, deployment), run) in selected {
            let target_number = match &target {
                IntOrString::Int(number) => Some(*number),
                IntOrString::String(port_name) => run
                    .ports
                    .iter()
                    .find(|(name, _)| name.as_deref() == Some(port_name.as_str()))
                    .map(|(_, number)| *number),
            };
            let pod = lock(&run.pod);
            let Some(pod) = pod.as_ref() else {
                reasons.push(format!("Deployment {deployment} has not started"));
                continue;
            };
            let serves = target_number.is_some_and(|number| {
                pod.container_port == Some(number) || run.ports.iter().any(|(_, declared)| *declared == number)
            });
            match (serves, pod.ready, pod.port) {
                (true, true, Some(local)) => return Ok(local),
                (true, _, _) => reasons.push(format!("Deployment {deployment} is not ready")),
                (false, _, _) => reasons.push(format!("Deployment {deployment} has no container port {target:?}")),
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("no Deployment this node runs matches the selector {selector:?}"));
        }
        Err(format!("{host}:{port}: Service {namespace}/{name} has no ready endpoint: {}", reasons.join("; ")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_the_repository_of_an_image_reference() {
        assert_eq!(repository_name("registry.example/x/wharf-operator:0.1.0"), "wharf-operator");
        assert_eq!(repository_name("registry.example:5000/acme/wharf-registry@sha256:abc"), "wharf-registry");
        assert_eq!(repository_name("registry.example:5000/wharf-registry:1@sha256:abc"), "wharf-registry");
        assert_eq!(repository_name("busybox"), "busybox");
    }

    #[test]
    fn recognises_service_host_names_only() {
        assert_eq!(service_of_host("wharf-acme.wharf-system.svc"), Some(("wharf-acme", "wharf-system")));
        assert_eq!(service_of_host("wharf-acme.wharf-system.svc.cluster.local"), Some(("wharf-acme", "wharf-system")));
        assert_eq!(service_of_host("wharf-acme.wharf-system"), Some(("wharf-acme", "wharf-system")));
        assert_eq!(service_of_host("registry.example.org"), None);
        assert_eq!(service_of_host("localhost"), None);
    }

    #[test]
    fn turns_a_proxy_request_into_an_origin_form_one() {
        let head = "PUT http://web.team.svc:8080/npm/web/pkg HTTP/1.1\r\nHost: web.team.svc:8080\r\n\
                    Proxy-Connection: Keep-Alive\r\nconnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        let request = ProxyRequest::parse(head).unwrap();
        assert_eq!(
            (request.host.as_str(), request.port, request.path.as_str()),
            ("web.team.svc", 8080, "/npm/web/pkg")
        );
        assert_eq!(
            request.origin_form_head(),
            "PUT /npm/web/pkg HTTP/1.1\r\nHost: web.team.svc:8080\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let request = ProxyRequest::parse("GET http://web.team?x=1 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((request.port, request.path.as_str()), (80, "/?x=1"));
        assert_eq!(ProxyRequest::parse("CONNECT web.team:443 HTTP/1.1\r\n\r\n").unwrap_err().0, "501 Not Implemented");
        assert_eq!(ProxyRequest::parse("GET /readyz HTTP/1.1\r\n\r\n").unwrap_err().0, "400 Bad Request");
    }
}
