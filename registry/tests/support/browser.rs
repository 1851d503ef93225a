//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `tests/install-clients.sh` installs): a chromedriver on a loopback port of its
//! own, one session, and the few commands the web interface tests need. Both stop on drop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

pub struct Element(String);

fn program(variable: &str, default: &str) -> String {
    let program = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    assert!(
        Path::new(&program).exists(),
        "{program} is missing: install Debian's chromium and chromium-driver (tests/install-clients.sh does), or set {variable}"
    );
    program
}

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin = program("WHARF_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = program("WHARF_CHROMIUM", "/usr/bin/chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A process group of its own: ending it ends the browser too, even when the
        // session could not be closed.
        let driver = Command::new(driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // Without the background-networking flags Chromium keeps trying hosts this
        // machine cannot reach.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let reply: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_owned();
        Browser { driver, http, session: format!("{base}/session/{session}"), _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|reply| panic!("WebDriver {path}: {reply}"))
    }

    /// A command's value, or the error reply.
    async fn try_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        if reply["value"].get("error").is_some() { Err(reply) } else { Ok(reply["value"].clone()) }
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    /// The id of the first element `css` selects now, if any.
    async fn lookup(&self, css: &str) -> Option<String> {
        let reply: Value = self
            .http
            .post(format!("{}/element", self.session))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// The first element `css` selects, waiting a little for it.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(id) = self.lookup(css).await {
                return Element(id);
            }
            assert!(Instant::now() < deadline, "no element {css} in:\n{}", self.source().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{}/click", element.0), Some(json!({}))).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{}/clear", element.0), Some(json!({}))).await;
        self.call(reqwest::Method::POST, &format!("/element/{}/value", element.0), Some(json!({"text": text}))).await;
    }

    /// Presses Enter in the element (submits its form as a person would).
    pub async fn submit(&self, css: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{}/value", element.0), Some(json!({"text": "\u{E007}"})))
            .await;
    }

    /// The rendered text of the first element `css` selects, waiting a little for it
    /// (a click may still be loading the next page).
    pub async fn text(&self, css: &str) -> String {
        let Element(id) = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await.as_str().unwrap_or("").to_owned()
    }

    /// The text of `css` once it contains `needle` (a click may still be loading the next
    /// page); fails with the last text seen after a few seconds.
    pub async fn expect_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The element may go stale under us while the next page loads.
            let text = match self.lookup(css).await {
                Some(id) => self.try_call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await,
                None => Ok(Value::Null),
            };
            let text = text.unwrap_or_default();
            let text = text.as_str().unwrap_or_default().to_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} never showed {needle:?}; it shows:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or("").to_owned()
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]")).await;
    }

    /// Runs `script` in the page and returns its value.
    pub async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Presses Tab, as a keyboard user moves to the next control.
    pub async fn press_tab(&self) {
        let key = |kind: &str| json!({"type": kind, "value": "\u{E004}"});
        let actions =
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [key("keyDown"), key("keyUp")]}]});
        self.call(reqwest::Method::POST, "/actions", Some(actions)).await;
    }

    /// The form controls of the page that have no label a screen reader would read.
    pub async fn unlabelled_controls(&self) -> Vec<String> {
        let script = "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]\
            .filter(e => e.labels?.length === 0 && !e.getAttribute('aria-label') && !e.textContent.trim())\
            .map(e => e.outerHTML);";
        let found = self.script(script).await;
        found.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Saves a PNG of the viewport as `name` under the screenshots folder, and returns its path.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(async {
                        self.http.delete(&self.session).timeout(Duration::from_secs(10)).send().await
                    })
                })
                .join()
        });
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
