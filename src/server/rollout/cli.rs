//! `agent-server rollout start|list|show|pause|resume|cancel`: a client of the rollout REST API,
//! with the server's URL and an admin client's credentials from flags or the environment.

use std::io::IsTerminal;
use std::time::Duration;

use serde_json::Value;

/// Where the API is and who calls it.
#[derive(Debug, Clone)]
pub struct Client {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Why a command failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{0}")]
    Refused(String),
}

/// The text of an error answer (`OperationOutcome` or OAuth error), else the status.
fn refusal(status: reqwest::StatusCode, body: &Value) -> CliError {
    let text = body["issue"][0]["details"]["text"]
        .as_str()
        .or_else(|| body["error_description"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the server answered {status}"));
    CliError::Refused(text)
}

impl Client {
    fn endpoint(&self, path: &str) -> String {
        format!("{}/fhir/R4/{path}", self.url.trim_end_matches('/'))
    }

    async fn call(&self, req: reqwest::RequestBuilder, url: &str) -> Result<(u16, Value), CliError> {
        let resp = req
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url: url.to_string(), source })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            return Err(refusal(status, &body));
        }
        Ok((status.as_u16(), body))
    }

    /// Starts a rollout: `selection` and `params` are the Agent search and the strategy.
    pub async fn start(&self, selection: &[(String, String)], params: &[(String, String)]) -> Result<Value, CliError> {
        let http = reqwest::Client::new();
        let query: Vec<&(String, String)> = selection.iter().chain(params).collect();
        let url = self.endpoint("Agent/$upgrade");
        let req = http.post(&url).query(&query).header("prefer", "respond-async");
        Ok(self.call(req, &url).await?.1)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let url = self.endpoint(path);
        Ok(self.call(reqwest::Client::new().get(&url), &url).await?.1)
    }

    pub async fn post(&self, path: &str) -> Result<Value, CliError> {
        let url = self.endpoint(path);
        Ok(self.call(reqwest::Client::new().post(&url), &url).await?.1)
    }

    /// Shows a rollout; with `watch`, redraws it until it ends. The exit code is 0 unless a
    /// watched rollout halted or was cancelled.
    pub async fn show(&self, id: &str, watch: bool) -> Result<i32, CliError> {
        let tty = std::io::stdout().is_terminal();
        let mut last = String::new();
        loop {
            let status = self.get(&format!("Rollout/{id}")).await?;
            let text = render(&status);
            if text != last {
                if tty && watch {
                    print!("\x1b[H\x1b[2J");
                }
                print!("{text}");
                last = text;
            }
            let state = status["state"].as_str().unwrap_or_default();
            if !watch || !matches!(state, "active" | "paused") {
                return Ok(if watch && state != "completed" { 1 } else { 0 });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A rollout's status for a terminal.
pub fn render(s: &Value) -> String {
    let mut out = format!(
        "rollout {} to {}: {}{}, wave {}\n",
        s["id"].as_str().unwrap_or("?"),
        s["version"].as_str().unwrap_or("?"),
        s["state"].as_str().unwrap_or("?"),
        s["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
        s["wave"],
    );
    let counts: Vec<String> = s["counts"]
        .as_object()
        .map(|c| c.iter().filter(|(_, n)| n.as_u64() != Some(0)).map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    out.push_str(&format!("  {} agents: {}\n", s["total"], counts.join(", ")));
    for e in s["events"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}  {}\n", e["at"].as_str().unwrap_or(""), e["text"].as_str().unwrap_or("")));
    }
    for f in s["failures"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {} ({}): {}\n",
            f["state"].as_str().unwrap_or(""),
            f["name"].as_str().unwrap_or(""),
            f["agentId"].as_str().unwrap_or(""),
            f["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

/// One line per rollout, newest first.
pub fn render_list(list: &Value) -> String {
    let mut out = String::new();
    for r in list["rollouts"].as_array().into_iter().flatten() {
        let done: u64 = r["counts"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "pending" | "in-progress"))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let total: u64 = r["counts"].as_object().map(|c| c.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
        out.push_str(&format!(
            "{}  {:<10} {:<10} {done}/{total} done  {}\n",
            r["id"].as_str().unwrap_or("?"),
            r["version"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["createdAt"].as_str().unwrap_or(""),
        ));
    }
    if out.is_empty() {
        out.push_str("no rollouts\n");
    }
    out
}
