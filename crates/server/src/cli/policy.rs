//! `agent-server policy show|set FILE|suspend|resume|halt-clear`: a client of the policy REST
//! API, like `agent-server rollout`. `set` reads a TOML or JSON file with the policy's own field
//! names, checks it here first (each error names its field), and sends it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use semver::Version;
use serde_json::Value;

use super::rollout::{run, ApiArgs, CliError, Client};
use crate::api::policy::parse_selector;
use crate::model::policy::{self, Readers};

#[derive(Args)]
pub struct PolicyCommand {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: PolicyAction,
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Show the policy: its target, and each group's state, why, counts by version, failures
    Show {
        /// The status as JSON (GET Policy/$status)
        #[arg(long)]
        json: bool,
    },
    /// Set the policy from a TOML or JSON file (mode, target, allowDowngrade, unmatched, groups)
    Set { file: PathBuf },
    /// Suspend the policy: nothing new is asked; agents already asked finish
    Suspend,
    /// Resume (enable) the policy
    Resume,
    /// Clear the halts: halted groups go on with the agents that did not fail for good
    HaltClear,
}

/// A TOML value as JSON (times and dates as their text).
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// The policy in `path` as JSON: TOML for `.toml`, JSON for `.json`, else whichever it parses as.
pub fn read_file(path: &Path) -> Result<Value, CliError> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Refused(format!("cannot read {name}: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let json = || serde_json::from_str::<Value>(&text).map_err(|e| format!("{name} is not valid JSON: {e}"));
    let toml = || {
        text.parse::<toml::Table>()
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| format!("{name} is not valid TOML: {e}"))
    };
    let v = match ext {
        "json" => json(),
        "toml" => toml(),
        _ => json().or_else(|_| toml()),
    }
    .map_err(CliError::Refused)?;
    // Checked here first; the server checks it again, and against the fleet.
    let latest = || Ok::<_, String>(Version::new(0, 0, 0));
    policy::parse(&v, &Readers { selector: &parse_selector, latest: &latest })
        .map_err(|e| CliError::Refused(format!("{name}: {e}")))?;
    Ok(v)
}

/// The status for a terminal: the policy, then one block per group.
pub fn render(s: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = format!(
        "update policy {}: target {}{} (generation {}, set {}), {} agents\n",
        text(&s["mode"]),
        text(&s["target"]),
        if s["resolvedFromLatest"] == true { " (latest when set)" } else { "" },
        s["generation"],
        text(&s["targetSetAt"]),
        s["agents"],
    );
    for (i, g) in s["groups"].as_array().into_iter().flatten().enumerate() {
        out.push_str(&format!(
            "{}. {} [{}] {}: {}\n",
            i + 1,
            text(&g["name"]),
            text(&g["selector"]),
            text(&g["state"]),
            text(&g["reason"])
        ));
        if let Some(w) = g["window"].as_str() {
            out.push_str(&format!("   window: {w}\n"));
        }
        let counts = |v: &Value| {
            v.as_object()
                .map(|o| o.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        out.push_str(&format!(
            "   {} agents: {}; versions: {}\n",
            g["agents"],
            counts(&g["states"]),
            counts(&g["versions"])
        ));
        if let Some(next) = g["next"].as_object() {
            out.push_str(&format!("   next: {} at {}\n", text(&next["action"]), text(&next["at"])));
        }
        let failed: Vec<&Value> = g["failures"].as_array().into_iter().flatten().collect();
        let halted = g["halt"]["failures"].as_array().into_iter().flatten();
        let halted = halted.filter(|h| !failed.iter().any(|f| f["agentId"] == h["agentId"]));
        for f in failed.iter().copied().chain(halted) {
            out.push_str(&format!(
                "   failed: {} ({}): {}\n",
                text(&f["name"]),
                text(&f["agentId"]),
                text(&f["reason"])
            ));
        }
    }
    out
}

/// Runs `agent-server policy …`.
pub fn main(cmd: PolicyCommand) -> ExitCode {
    run(cmd.api, "policy", |client| async move {
        let text = match cmd.action {
            PolicyAction::Show { json: true } => format!("{:#}\n", client.get("Policy/$status").await?),
            PolicyAction::Show { json: false } => render(&client.get("Policy/$status").await?),
            PolicyAction::Set { file } => set(&client, &file).await?,
            PolicyAction::Suspend => client.post("Policy/$suspend").await.map(|_| "policy suspended\n".into())?,
            PolicyAction::Resume => client.post("Policy/$resume").await.map(|_| "policy resumed\n".into())?,
            PolicyAction::HaltClear => client.post("Policy/$halt-clear").await.map(|_| "halts cleared\n".into())?,
        };
        Ok((text, 0))
    })
}

/// `policy set FILE`: the warnings, and what was set.
async fn set(client: &Client, file: &Path) -> Result<String, CliError> {
    let spec = read_file(file)?;
    let set = client.put("Policy", &spec).await?;
    let warnings = set["warnings"].as_array().into_iter().flatten();
    let mut out: String = warnings.map(|w| format!("warning: {}\n", w.as_str().unwrap_or_default())).collect();
    let p = &set["policy"];
    out.push_str(&format!(
        "policy set: target {} (generation {})\n",
        p["target"].as_str().unwrap_or("?"),
        p["generation"]
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_file_reads_as_the_same_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        let toml =
            "target = \"1.4.2\"\nallowDowngrade = false\n\n[[groups]]\nname = \"dev\"\nselector = \"name=dev-\"\n\n\
                    [[groups]]\nname = \"prod\"\nselector = \"name=prod-\"\nwaitAfterPrevious = \"24h\"\n\
                    window = { days = [\"sat\"], start = 02:00:00, duration = \"2h\", timeZone = \"Europe/Berlin\" }\n";
        std::fs::write(&file, toml).unwrap();
        let v = read_file(&file).unwrap();
        assert_eq!(v["groups"][1]["window"]["start"], "02:00:00");
        assert_eq!(v["groups"][1]["waitAfterPrevious"], "24h");
        std::fs::write(&file, toml.replace("waitAfterPrevious", "waitAfterPrev")).unwrap();
        let e = read_file(&file).unwrap_err().to_string();
        assert!(e.ends_with("policy.toml: groups[1].waitAfterPrev: unknown field (expected one of: name, selector, window, canary, \
                             maxInFlight, waitAfterPrevious, maxFailures, maxFailurePercent, minFinished, growth, timeout)"), "{e}");
        let json = dir.path().join("p.json");
        std::fs::write(&json, r#"{"target": "1.0.0", "groups": [{"name": "a", "selector": "name=a", "window": {"start": "02:00", "duration": "1h", "timeZone": "Nowhere/City"}}]}"#).unwrap();
        let e = read_file(&json).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "groups[0].window.timeZone: unknown time zone 'Nowhere/City': expected a name such as Europe/Berlin"
            ),
            "{e}"
        );
    }
}
