//! Medplum's own clients against our server: the real `medplum` command-line client (installed
//! from npm by `.ci/run`), and a stand-in for what Medplum's agent does at start-up.

use std::path::Path;
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::server::Server;

/// The `medplum` CLI with its profile directory (`~/.medplum`) in a scratch home.
pub struct MedplumCli {
    home: tempfile::TempDir,
    base_url: String,
}

/// What one `medplum` command did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON the command printed (`--output json`, `get`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl MedplumCli {
    pub fn new(server: &Server) -> MedplumCli {
        let found = Command::new("medplum").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "the medplum CLI is missing: `npm install -g @medplum/cli@5.0.10` (.ci/run installs it)"
        );
        MedplumCli { home: tempfile::tempdir().unwrap(), base_url: server.url("/") }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs `medplum ARGS` with `envs`, from the scratch home.
    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let out = Command::new("medplum")
            .args(args)
            .env("HOME", self.home.path())
            .env("NODE_NO_WARNINGS", "1")
            .envs(envs.iter().copied())
            .current_dir(self.home.path())
            .output()
            .unwrap();
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ medplum {}\n{}{}", args.join(" "), run.stdout, run.stderr);
        run
    }

    /// Runs `medplum ARGS` and asserts that it exits 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run_with(args, &[]);
        assert_eq!(run.code, Some(0), "medplum {args:?} failed: {run:?}");
        run
    }

    /// `medplum login` with client credentials, saved in the default profile.
    pub fn login(&self, client_id: &str, secret: &str) {
        self.ok(&[
            "login",
            "--auth-type",
            "client-credentials",
            "--client-id",
            client_id,
            "--client-secret",
            secret,
            "--base-url",
            &self.base_url,
        ]);
    }
}

/// What Medplum's agent does at start-up with its four settings (base URL, client id and secret,
/// agent id): a client-credentials token (form and Basic at once, as Medplum's client can send),
/// a read of its own `Agent` (for its settings and channels), then the WebSocket handshake.
/// Returns the `Agent` it read, and the live socket.
pub async fn medplum_agent_startup(server: &Server, client_id: &str, secret: &str, agent_id: &str) -> (Value, Socket) {
    let http = reqwest::Client::new();
    let access = crate::server::token(&http, &server.url(""), client_id, secret).await;
    let resp = http
        .get(server.url(&format!("fhir/R4/Agent/{agent_id}")))
        .header("cache-control", "no-cache")
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the agent reads its own Agent");
    let agent: Value = resp.json().await.unwrap();

    let ws_url = format!("ws://{}/ws/agent", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let hello = json!({"type": "agent:connect:request", "accessToken": access, "agentId": agent_id});
    ws.send(Frame::text(hello.to_string())).await.unwrap();
    let reply = loop {
        let Some(Ok(Frame::Text(text))) = ws.next().await else { panic!("socket closed during the handshake") };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] != "agent:heartbeat:request" {
            break v;
        }
    };
    assert_eq!(reply["type"], "agent:connect:response", "{reply}");
    (agent, ws)
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
