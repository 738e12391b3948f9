//! A real headless Chromium, driven through the distribution's `chromedriver` (W3C WebDriver over
//! HTTP, spoken here with reqwest), with a fresh profile per browser. Screenshots go to
//! `target/screenshots/`, for a person to look at.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::process::{eventually, Proc};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

/// A port the kernel says is free now (chromedriver cannot be given port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn chromium() -> &'static str {
    // The real binary: /usr/bin/chromium is a wrapper script on Debian.
    if Path::new("/usr/lib/chromium/chromium").exists() {
        "/usr/lib/chromium/chromium"
    } else {
        "/usr/bin/chromium"
    }
}

/// Where screenshots are saved: `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0);
        let driver = Proc { child: cmd.spawn().expect("chromedriver (apt-get install chromium-driver)"), log };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        eventually(Duration::from_secs(20), "chromedriver to answer", || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let v: Value = http.get(&status).send().await.ok()?.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
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
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().join("profile").display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args}
        }}});
        let v: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {v}"));
        let base = format!("{base}/session/{session}");
        Browser { http, base, _driver: driver, _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let v = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(v.get("error").is_none(), "webdriver {path}: {v}");
        v
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The element `css` finds, waiting until it is there.
    pub async fn find(&self, css: &str) -> String {
        eventually(Duration::from_secs(15), &format!("element {css}"), || async move {
            let v = self
                .call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
                .await;
            v[ELEMENT].as_str().map(str::to_owned)
        })
        .await
    }

    /// Clicks the element `css`. The page re-renders live parts (the agents' rows, as their
    /// statuses change): an element replaced between finding and clicking it is found again, as a
    /// person would click the row they see.
    pub async fn click(&self, css: &str) {
        eventually(Duration::from_secs(15), &format!("a click on {css}"), || async move {
            let el = self.find(css).await;
            let v = self.call(reqwest::Method::POST, &format!("/element/{el}/click"), Some(json!({}))).await;
            match v.get("error").and_then(Value::as_str) {
                None => Some(()),
                Some("stale element reference") => None,
                Some(_) => panic!("webdriver click on {css}: {v}"),
            }
        })
        .await
    }

    /// Clears the field `css` and types `text` into it, key by key.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.post(&format!("/element/{el}/clear"), json!({})).await;
        self.post(&format!("/element/{el}/value"), json!({"text": text})).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// The visible text of `css`, or None when no element matches.
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .exec("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", json!([css]))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Waits until the text of `css` contains `want`.
    pub async fn wait_text(&self, css: &str, want: &str, limit: Duration) -> String {
        eventually(
            limit,
            &format!("{want:?} in {css}"),
            || async move { self.text(css).await.filter(|t| t.contains(want)) },
        )
        .await
    }

    /// Waits until the section `css` is shown (not `hidden`).
    pub async fn wait_shown(&self, css: &str) {
        let script = "const e = document.querySelector(arguments[0]); return !!e && !e.hidden;";
        eventually(Duration::from_secs(15), &format!("{css} shown"), || async move {
            self.exec(script, json!([css])).await.as_bool().filter(|b| *b)
        })
        .await;
    }

    /// The browser's cookies for the current page, HttpOnly ones included.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None).await.as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the window as `target/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// A page on another site (another port and host name than the server's), for cross-site tests.
pub async fn foreign_page(html: String) -> SocketAddr {
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(html) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
