//! `agent-server rollout start|list|show|pause|resume|cancel`: a client of the rollout REST API,
//! with the server's URL and an admin client's credentials from flags or the environment.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
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

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let url = self.endpoint(path);
        let req = reqwest::Client::new().put(&url).header("content-type", "application/json").body(body.to_string());
        Ok(self.call(req, &url).await?.1)
    }

    /// Shows a rollout; with `watch`, redraws it until it ends. The exit code is 0 unless a
    /// watched rollout halted or was cancelled.
    pub async fn show(&self, id: &str, watch: bool) -> Result<u8, CliError> {
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
    // The status lists the first failures only; the counts say how many there are.
    let listed = s["failures"].as_array().map_or(0, Vec::len) as u64;
    let failed: u64 = ["failed", "timed-out"].iter().filter_map(|k| s["counts"][k].as_u64()).sum();
    if failed > listed {
        out.push_str(&format!("  … and {} more failed (the first {listed} are listed)\n", failed - listed));
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
    let shown = list["rollouts"].as_array().map_or(0, Vec::len) as u64;
    match list["total"].as_u64() {
        _ if shown == 0 => out.push_str("no rollouts\n"),
        Some(total) if total > shown => out.push_str(&format!(
            "the newest {shown} of {total} rollouts (GET /fhir/R4/Rollout?_offset={shown} for more)\n"
        )),
        _ => {}
    }
    out
}

#[derive(Args)]
pub struct RolloutCommand {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Args)]
pub struct ApiArgs {
    /// The server's URL
    #[arg(long, env = "AGENT_SERVER_URL", default_value = "http://127.0.0.1:8103/", global = true)]
    pub url: String,
    /// An admin client's id
    #[arg(long, env = "AGENT_SERVER_CLIENT_ID", global = true)]
    pub client_id: Option<String>,
    /// An admin client's secret
    #[arg(long, env = "AGENT_SERVER_CLIENT_SECRET", hide_env_values = true, global = true)]
    pub client_secret: Option<String>,
}

#[derive(Args)]
pub struct StartArgs {
    /// Target version, or `latest` when the server hosts releases
    #[arg(long, default_value = "latest")]
    pub version: String,
    /// An Agent search parameter, e.g. `name=clinic-` or `identifier=urn:site|7` (repeatable; none: every agent)
    #[arg(long = "select", value_name = "PARAM=VALUE")]
    pub select: Vec<String>,
    /// Agents upgraded alone first [default: 1]
    #[arg(long)]
    pub canary: Option<u64>,
    /// Growth factor of each wave [default: 2]
    #[arg(long)]
    pub growth: Option<f64>,
    /// At most this many agents upgrading at once [default: 10]
    #[arg(long)]
    pub max_in_flight: Option<u64>,
    /// Seconds between waves [default: 0]
    #[arg(long)]
    pub bake: Option<u64>,
    /// Halt when more than this many agents have failed
    #[arg(long)]
    pub max_failures: Option<u64>,
    /// Halt when more than this percentage of finished agents have failed [default: 10]
    #[arg(long)]
    pub max_failure_percent: Option<f64>,
    /// ...once at least this many have finished [default: 1]
    #[arg(long)]
    pub min_finished: Option<u64>,
    /// Per-agent timeout in milliseconds [default: 45000, at most 56000]
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds an offline agent may take to come back before it counts as expired [default: 86400]
    #[arg(long)]
    pub offline_deadline: Option<u64>,
    /// Daily maintenance window, e.g. 02:00-04:00
    #[arg(long)]
    pub window: Option<String>,
    /// Time zone of the window, e.g. Europe/Berlin [default: UTC]
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Reinstall on agents already on the version
    #[arg(long)]
    pub force: bool,
    /// Follow the rollout until it ends
    #[arg(long)]
    pub watch: bool,
}

#[derive(Subcommand)]
pub enum RolloutAction {
    /// Start a rollout of every agent the selection finds
    Start(Box<StartArgs>),
    /// List rollouts, newest first
    List,
    /// Show a rollout's progress
    Show {
        id: String,
        /// Redraw until the rollout ends (exit code 1 if it halted or was cancelled)
        #[arg(long)]
        watch: bool,
    },
    /// Pause a rollout: agents upgrading finish, no new ones are asked
    Pause { id: String },
    /// Resume a paused rollout
    Resume { id: String },
    /// Cancel a rollout: agents upgrading finish, the others are skipped
    Cancel { id: String },
}

impl ApiArgs {
    /// The API's client for `agent-server <command>`; without credentials, says so and gives the
    /// exit code of a usage error.
    pub fn client(self, command: &str) -> Result<Client, ExitCode> {
        let (Some(client_id), Some(client_secret)) = (self.client_id, self.client_secret) else {
            eprintln!(
                "agent-server {command}: needs an admin client: --client-id and --client-secret, or \
                 AGENT_SERVER_CLIENT_ID and AGENT_SERVER_CLIENT_SECRET"
            );
            return Err(ExitCode::from(64));
        };
        Ok(Client { url: self.url, client_id, client_secret })
    }
}

/// Runs a client command (`agent-server <command> …`): `f` with the API's client, its text
/// printed and its exit code returned; an error said on stderr, exit code 1.
pub fn run<F, Fut>(api: ApiArgs, command: &str, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(String, u8), CliError>>,
{
    let client = match api.client(command) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(f(client)) {
        Ok((text, code)) => {
            print!("{text}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("agent-server {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `agent-server rollout …`.
pub fn main(cmd: RolloutCommand) -> ExitCode {
    run(cmd.api, "rollout", |client| async move {
        match cmd.action {
            RolloutAction::List => client.get("Rollout").await.map(|v| (render_list(&v), 0)),
            RolloutAction::Show { id, watch } => client.show(&id, watch).await.map(|code| (String::new(), code)),
            RolloutAction::Pause { id } => client.post(&format!("Rollout/{id}/$pause")).await.map(|v| (render(&v), 0)),
            RolloutAction::Resume { id } => {
                client.post(&format!("Rollout/{id}/$resume")).await.map(|v| (render(&v), 0))
            }
            RolloutAction::Cancel { id } => {
                client.post(&format!("Rollout/{id}/$cancel")).await.map(|v| (render(&v), 0))
            }
            RolloutAction::Start(start) => start_rollout(&client, *start).await,
        }
    })
}

async fn start_rollout(client: &Client, start: StartArgs) -> Result<(String, u8), CliError> {
    let StartArgs {
        version,
        select,
        canary,
        growth,
        max_in_flight,
        bake,
        max_failures,
        max_failure_percent,
        min_finished,
        timeout,
        offline_deadline,
        window,
        time_zone,
        force,
        watch,
    } = start;
    let mut selection = Vec::new();
    for s in select {
        let Some((k, v)) = s.split_once('=') else {
            return Err(CliError::Refused(format!("--select {s:?}: expected PARAM=VALUE, e.g. name=clinic-")));
        };
        selection.push((k.to_string(), v.to_string()));
    }
    let params: Vec<(String, String)> = [
        ("version", Some(version)),
        ("canary", canary.map(|v| v.to_string())),
        ("growth", growth.map(|v| v.to_string())),
        ("maxInFlight", max_in_flight.map(|v| v.to_string())),
        ("bake", bake.map(|v| v.to_string())),
        ("maxFailures", max_failures.map(|v| v.to_string())),
        ("maxFailurePercent", max_failure_percent.map(|v| v.to_string())),
        ("minFinished", min_finished.map(|v| v.to_string())),
        ("timeout", timeout.map(|v| v.to_string())),
        ("offlineDeadline", offline_deadline.map(|v| v.to_string())),
        ("window", window),
        ("timeZone", time_zone),
        ("force", force.then(|| "true".to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    let status = client.start(&selection, &params).await?;
    let id = status["id"].as_str().unwrap_or_default().to_string();
    if watch {
        return client.show(&id, true).await.map(|code| (String::new(), code));
    }
    Ok((format!("{}follow it: agent-server rollout show {id} --watch\n", render(&status)), 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_listing_the_first_failures_says_how_many_more_there_are() {
        let failure = json!({"state": "failed", "name": "lab-1", "agentId": "a1", "reason": "no space left"});
        let status = |failed: u64, timed_out: u64| {
            json!({"id": "r", "version": "2.0.0", "state": "active", "wave": 1, "total": 300, "events": [],
                   "counts": {"failed": failed, "timed-out": timed_out, "succeeded": 10}, "failures": [failure]})
        };
        let shown = render(&status(1, 0));
        assert!(shown.contains("failed lab-1 (a1): no space left") && !shown.contains("more failed"), "{shown}");
        let shown = render(&status(150, 50));
        assert!(shown.ends_with("  … and 199 more failed (the first 1 are listed)\n"), "{shown}");
    }
}
