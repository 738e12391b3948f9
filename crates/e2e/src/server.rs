//! A real `agent-server` as a process, with its own data directory and an admin client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::server_bin;
use crate::process::{eventually, Proc};

/// An access token for client credentials from the server at `base` (`http://host:port/`), as
/// Medplum's client asks for it: in the form body and in HTTP Basic.
pub async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let form = [("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)];
    let resp = http.post(format!("{base}oauth2/token")).basic_auth(id, Some(secret)).form(&form).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
}

/// A real `agent-server` with its own data directory and an admin client.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub proc: Proc,
    pub http: reqwest::Client,
    admin: (String, String),
    extra: Vec<String>,
}

/// The quoted value of `key = "…"` in TOML text.
pub fn toml_value(text: &str, key: &str) -> String {
    let line =
        text.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_else(|| panic!("no {key} in {text}"));
    line.split('"').nth(1).unwrap().to_string()
}

pub fn spawn_server(data: &Path, listen: &str, extra: &[String], log: PathBuf) -> (Proc, SocketAddr) {
    let mut child = Command::new(server_bin())
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
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--data"]).arg(&data).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, addr) = spawn_server(&data, "127.0.0.1:0", &extra, dir.path().join("server.log"));
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, extra }
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
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, extra }
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
        let (proc, addr) = spawn_server(&self.data(), &self.addr.to_string(), &self.extra, log);
        assert_eq!(addr, self.addr);
        self.proc = proc;
        // Pooled connections went with the old process.
        self.http = reqwest::Client::new();
    }

    /// Creates an agent; returns its id and a config file body for it.
    pub fn add_agent(&self, name: &str) -> (String, String) {
        let out = Command::new(server_bin())
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

    pub async fn admin_token(&self) -> String {
        self.token_for(&self.admin.0.clone(), &self.admin.1.clone()).await
    }

    /// GET with the admin token: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let token = self.admin_token().await;
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let token = self.admin_token().await;
        let resp = self.http.post(self.url(path)).bearer_auth(token).body(body.to_string()).send().await.unwrap();
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
