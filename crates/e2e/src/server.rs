//! A real `agent-server` as a process, with its own data directory and an admin client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins::{release_server_bin, server_bin};
use crate::process::{eventually, Proc};

/// An access token for client credentials from the server at `base` (`http://host:port/`), as
/// Medplum's client asks for it: in the form body and in HTTP Basic.
pub async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    token_and_lifetime(http, base, id, secret).await.0
}

async fn token_and_lifetime(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> (String, Duration) {
    let form = [("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)];
    let resp = http.post(format!("{base}oauth2/token")).basic_auth(id, Some(secret)).form(&form).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string();
    (token, Duration::from_secs(v["expires_in"].as_u64().unwrap_or(0)))
}

/// A token reused until half its lifetime is gone, as a well-behaved client does: the server
/// refuses a client more than a few dozen tokens a minute.
#[derive(Clone, Default)]
pub struct TokenCache(Arc<Mutex<Option<(String, Instant, Duration)>>>);

impl TokenCache {
    pub async fn get(&self, http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
        if let Some((token, at, life)) = self.0.lock().unwrap().clone() {
            if at.elapsed() < life / 2 {
                return token;
            }
        }
        let (token, life) = token_and_lifetime(http, base, id, secret).await;
        *self.0.lock().unwrap() = Some((token.clone(), Instant::now(), life));
        token
    }
}

/// A real `agent-server` with its own data directory and an admin client.
pub struct Server {
    /// Dropped before the directory that holds its log and data.
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    admin: (String, String),
    admin_token: TokenCache,
    extra: Vec<String>,
    /// The binary it runs: the debug build, the release build ([`Server::start_release`]), or
    /// another ([`Server::start_with`]).
    bin: String,
}

/// The quoted value of `key = "…"` in TOML text.
pub fn toml_value(text: &str, key: &str) -> String {
    let line =
        text.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_else(|| panic!("no {key} in {text}"));
    line.split('"').nth(1).unwrap().to_string()
}

pub fn spawn_server(data: &Path, listen: &str, extra: &[String], log: PathBuf) -> (Proc, SocketAddr) {
    spawn_server_bin(server_bin(), data, listen, extra, log)
}

/// `bin` (an `agent-server`) listening on `listen` with its data in `data`; its address.
pub fn spawn_server_bin(bin: &str, data: &Path, listen: &str, extra: &[String], log: PathBuf) -> (Proc, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .parse()
        .unwrap();
    (Proc { child, log }, addr)
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        Server::start_with(server_bin(), extra)
    }

    /// The release build of the server, as users run it.
    pub async fn start_release(extra: &[&str]) -> Server {
        Server::start_with(release_server_bin(), extra)
    }

    /// The release build listening on `listen` (an IPv6 one, say) instead of 127.0.0.1.
    pub async fn start_release_on(listen: &str, extra: &[&str]) -> Server {
        Server::start_listening(release_server_bin(), listen, extra)
    }

    /// The server run by `bin` (an `agent-server`, or a script that runs one).
    pub fn start_with(bin: &str, extra: &[&str]) -> Server {
        Server::start_listening(bin, "127.0.0.1:0", extra)
    }

    fn start_listening(bin: &str, listen: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new(bin).args(["client", "add", "--admin", "--data"]).arg(&data).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, addr) = spawn_server_bin(bin, &data, listen, &extra, dir.path().join("server.log"));
        let admin_token = TokenCache::default();
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, admin_token, extra, bin: bin.to_string() }
    }

    /// A server storing everything in the PostgreSQL database `db` (`--database`).
    pub async fn start_on_postgres(db: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", db]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--database".to_string(), db.to_string()]);
        let (proc, addr) = spawn_server(&dir.path().join("data"), "127.0.0.1:0", &extra, dir.path().join("server.log"));
        let admin_token = TokenCache::default();
        let bin = server_bin().to_string();
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, admin_token, extra, bin }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// The admin client's id and secret.
    pub fn admin(&self) -> (String, String) {
        self.admin.clone()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.start_again();
    }

    pub fn start_again(&mut self) {
        let log = self.dir.path().join("server.log");
        let (proc, addr) = spawn_server_bin(&self.bin, &self.data(), &self.addr.to_string(), &self.extra, log);
        assert_eq!(addr, self.addr);
        self.proc = proc;
        // Pooled connections went with the old process.
        self.http = reqwest::Client::new();
    }

    /// Creates an agent; returns its id and a config file body for it.
    pub fn add_agent(&self, name: &str) -> (String, String) {
        let out = Command::new(&self.bin)
            .args(["agent", "add", "--name", name, "--base-url", &self.url("/"), "--data"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        (toml_value(&text, "agent_id"), text)
    }

    pub async fn token_for(&self, id: &str, secret: &str) -> String {
        token(&self.http, &self.url(""), id, secret).await
    }

    /// The admin client's token, reused while it is young.
    pub async fn admin_token(&self) -> String {
        self.admin_token.get(&self.http, &self.url(""), &self.admin.0, &self.admin.1).await
    }

    /// GET with the admin token: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let token = self.admin_token().await;
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POST with the admin token (`Value::Null`: no body): (status, JSON body).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let token = self.admin_token().await;
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let resp = self.http.post(self.url(path)).bearer_auth(token).body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `$upgrade` of one agent: (HTTP status, OperationOutcome text).
    pub async fn upgrade(&self, agent_id: &str, query: &str) -> (u16, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$upgrade?{query}")).await;
        let text = v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        (code, text)
    }

    /// `$status` of an agent as (status, version).
    pub async fn status(&self, agent_id: &str) -> (String, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$status")).await;
        assert_eq!(code, 200, "{v}");
        let p = |name: &str| {
            v["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| {
                p.get("valueCode").or(p.get("valueString")).and_then(Value::as_str).unwrap_or_default().to_string()
            })
        };
        (p("status").unwrap(), p("version").unwrap())
    }

    pub async fn wait_status(&self, agent_id: &str, status: &str, version: &str, limit: Duration) {
        let want = (status.to_string(), version.to_string());
        eventually(limit, &format!("agent {agent_id} {status} at {version}"), || {
            let want = want.clone();
            async move { (self.status(agent_id).await == want).then_some(()) }
        })
        .await
    }
}
