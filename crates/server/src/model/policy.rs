//! The update policy as an operator declares it (one per server): a mode, a target version, and
//! ordered groups of agents, each chosen by an Agent search and upgraded in its own window with
//! its own canary, pace and abort criteria, after the group before it converged and a wait.
//! Read from JSON (TOML is turned into the same JSON by the command line) by [`parse`], each
//! value checked, with an error that names the field (`groups[1].window.timeZone: …`); kept as
//! the JSON [`to_json`] writes, with the same names.

use std::time::Duration;

use jiff::civil::Time;
use jiff::SignedDuration;
use semver::Version;
use serde_json::{json, Map, Value};

use super::query::AgentQuery;
use super::strategy::{self, Strategy};
use super::window::{Days, Window};
use crate::params::{quoted, Params};

/// What the policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It converges the fleet.
    Enabled,
    /// Nothing new is asked (its rollouts are paused; members already asked finish); its state is
    /// kept, and it goes on where it was when enabled again.
    Suspended,
    /// It does nothing: its rollouts are cancelled (members already asked finish).
    Disabled,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Enabled, Mode::Suspended, Mode::Disabled];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Enabled => "enabled",
            Mode::Suspended => "suspended",
            Mode::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == text)
    }
}

/// What becomes of agents that no group's selector finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// They form an implicit last group ([`IMPLICIT_GROUP`]) with the defaults.
    LastGroup,
    /// The policy leaves them alone.
    Leave,
}

impl Unmatched {
    pub fn name(self) -> &'static str {
        match self {
            Unmatched::LastGroup => "last-group",
            Unmatched::Leave => "leave",
        }
    }
}

/// The name of the implicit last group.
pub const IMPLICIT_GROUP: &str = "unmatched";
/// At most this many groups, each name at most [`MAX_NAME`] characters: group names are labels
/// of `/metrics`, whose set must stay small.
pub const MAX_GROUPS: usize = 20;
pub const MAX_NAME: usize = 40;
/// The longest wait after a previous group.
const MAX_WAIT: SignedDuration = SignedDuration::from_hours(30 * 24);
/// How long an agent asked by the policy may stay offline before its rollout gives it up (it is
/// then retried like any transient failure).
pub const OFFLINE_DEADLINE: Duration = Duration::from_secs(3600);

/// One group of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// The Agent search, as given (`name=clinic-&status=active`); empty for the implicit group.
    pub selector: String,
    /// The same, validated; None for the implicit group (agents no other group finds).
    pub query: Option<AgentQuery>,
    /// Agents are asked only inside it; None: at any time.
    pub window: Option<Window>,
    /// How long after the previous group converged this one starts.
    pub wait_after_previous: Duration,
    /// How each of its rollouts proceeds.
    pub strategy: Strategy,
}

/// The policy, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    /// The version every managed agent is to run (`latest` resolved when the policy was set).
    pub target: Version,
    pub allow_downgrade: bool,
    pub unmatched: Unmatched,
    /// In order; the implicit last group, when there is one, is the last.
    pub groups: Vec<Group>,
}

/// A value an operator got wrong: the field (`groups[1].window.timeZone`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct FieldError {
    pub field: String,
    pub why: String,
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), why: why.into() }
}

/// What reading a policy needs from outside the model: the rules of an Agent search (those of
/// the bulk operations), and the latest release when the target is `latest`.
pub struct Readers<'a> {
    pub selector: &'a dyn Fn(&str) -> Result<AgentQuery, String>,
    pub latest: &'a dyn Fn() -> Result<Version, String>,
}

const FIELDS: &[&str] = &["mode", "target", "allowDowngrade", "unmatched", "groups"];
const GROUP_FIELDS: &[&str] = &[
    "name",
    "selector",
    "window",
    "canary",
    "maxInFlight",
    "waitAfterPrevious",
    "maxFailures",
    "maxFailurePercent",
    "minFinished",
    "growth",
    "timeout",
];
/// The group fields that are the rollout's own parameters, checked by [`strategy::parse`].
const STRATEGY_FIELDS: &[&str] =
    &["canary", "maxInFlight", "maxFailures", "maxFailurePercent", "minFinished", "growth", "timeout"];
const WINDOW_FIELDS: &[&str] = &["days", "start", "duration", "timeZone"];

/// The fields of `v` (an object named `at`), each one of `known`.
fn object<'v>(v: &'v Value, at: &str, known: &[&str]) -> Result<&'v Map<String, Value>, FieldError> {
    let o = v.as_object().ok_or_else(|| bad(at, "expected an object"))?;
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        let field = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
        return Err(bad(field, format!("unknown field (expected one of: {})", known.join(", "))));
    }
    Ok(o)
}

/// A value given where another was expected, as an error quotes it: its first 64 characters.
fn found(v: &Value) -> String {
    quoted(&v.to_string())
}

fn text<'v>(o: &'v Map<String, Value>, key: &str, at: &str) -> Result<Option<&'v str>, FieldError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(bad(at, format!("expected text, found {}", found(other)))),
    }
}

/// A duration: seconds as a number, or text such as `24h`, `1h30m`, `90s` or `PT2H`. A number of
/// seconds beyond what a duration holds reads as the longest one, which the caller's bounds refuse.
pub fn duration(v: &Value, at: &str) -> Result<SignedDuration, FieldError> {
    let expected = "expected a duration such as 24h, 90m or 30s (or a number of seconds)";
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| SignedDuration::try_from_secs_f64(s).unwrap_or(SignedDuration::MAX)),
        Value::String(s) => s.trim().parse::<SignedDuration>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad(at, expected))
}

/// A duration as [`to_json`] writes it (`24h`, `1h 30m`).
pub fn duration_text(d: Duration) -> String {
    format!("{:#}", SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO))
}

/// Reads and checks a policy; the first value that is wrong is the error.
pub fn parse(v: &Value, readers: &Readers<'_>) -> Result<Policy, FieldError> {
    let o = object(v, "", FIELDS).map_err(|e| if e.field.is_empty() { bad("policy", e.why) } else { e })?;
    let mode = match text(o, "mode", "mode")? {
        None => Mode::Enabled,
        Some(m) => Mode::parse(m)
            .ok_or_else(|| bad("mode", format!("'{}': expected enabled, suspended or disabled", quoted(m))))?,
    };
    let target = match text(o, "target", "target")?.map(str::trim) {
        None | Some("") => return Err(bad("target", "missing: name a version (1.4.2), or latest")),
        Some("latest") => (readers.latest)().map_err(|why| bad("target", why))?,
        Some(t) => edge_agent_wire::parse_version(t).map_err(|e| bad("target", e.to_string()))?,
    };
    let allow_downgrade = match o.get("allowDowngrade") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad("allowDowngrade", format!("expected true or false, found {}", found(other)))),
    };
    let unmatched = match text(o, "unmatched", "unmatched")? {
        None | Some("last-group") => Unmatched::LastGroup,
        Some("leave") => Unmatched::Leave,
        Some(u) => return Err(bad("unmatched", format!("'{}': expected last-group or leave", quoted(u)))),
    };
    let listed = match o.get("groups") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => &a[..],
        Some(_) => return Err(bad("groups", "expected a list of groups")),
    };
    if listed.len() > MAX_GROUPS {
        return Err(bad("groups", format!("{} groups: at most {MAX_GROUPS}", listed.len())));
    }
    if listed.is_empty() && unmatched == Unmatched::Leave {
        return Err(bad("groups", "none: with unmatched = leave, the policy would manage no agent"));
    }
    let mut groups = Vec::with_capacity(listed.len() + 1);
    for (i, g) in listed.iter().enumerate() {
        let group = parse_group(g, &format!("groups[{i}]"), readers)?;
        if groups.iter().any(|other: &Group| other.name == group.name) {
            return Err(bad(format!("groups[{i}].name"), format!("'{}' names two groups", group.name)));
        }
        groups.push(group);
    }
    if unmatched == Unmatched::LastGroup {
        groups.push(implicit_group());
    }
    Ok(Policy { mode, target, allow_downgrade, unmatched, groups })
}

/// The implicit last group: the agents no group finds, with the defaults.
fn implicit_group() -> Group {
    Group {
        name: IMPLICIT_GROUP.into(),
        selector: String::new(),
        query: None,
        window: None,
        wait_after_previous: Duration::ZERO,
        strategy: policy_strategy(Strategy::default()),
    }
}

/// How a policy's rollouts differ from an operator's: transient failures are retried by the
/// policy (only definite ones count toward a halt), and offline agents are given up sooner.
fn policy_strategy(s: Strategy) -> Strategy {
    Strategy { transient_retried: true, offline_deadline: OFFLINE_DEADLINE, window: None, ..s }
}

fn parse_group(v: &Value, at: &str, readers: &Readers<'_>) -> Result<Group, FieldError> {
    let o = object(v, at, GROUP_FIELDS)?;
    let field = |k: &str| format!("{at}.{k}");
    let name = text(o, "name", &field("name"))?.map(str::trim).unwrap_or_default().to_string();
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(name_ok) {
        let why = format!("'{}': expected 1 to {MAX_NAME} letters, digits, '-', '_' or '.'", quoted(&name));
        return Err(bad(field("name"), why));
    }
    if name == IMPLICIT_GROUP {
        return Err(bad(field("name"), format!("'{IMPLICIT_GROUP}' is the implicit last group's name")));
    }
    let selector = text(o, "selector", &field("selector"))?.map(str::trim).unwrap_or_default().to_string();
    if selector.is_empty() {
        return Err(bad(field("selector"), "missing: an Agent search such as name=clinic- (a group needs members)"));
    }
    let query = (readers.selector)(&selector).map_err(|why| bad(field("selector"), why))?;
    let mut params = Params::new();
    for k in STRATEGY_FIELDS.iter().filter(|k| o.contains_key(**k)) {
        let one = Params::from([(k.to_string(), o[*k].clone())]);
        strategy::parse(&one).map_err(|e| bad(field(k), e.0))?;
        params.insert(k.to_string(), o[*k].clone());
    }
    let strategy = strategy::parse(&params).map_err(|e| bad(at, e.0))?;
    let wait = match o.get("waitAfterPrevious") {
        None | Some(Value::Null) => SignedDuration::ZERO,
        Some(v) => duration(v, &field("waitAfterPrevious"))?,
    };
    if wait < SignedDuration::ZERO || wait > MAX_WAIT {
        return Err(bad(field("waitAfterPrevious"), "expected 0 to 30 days"));
    }
    let window = match o.get("window") {
        None | Some(Value::Null) => None,
        Some(w) => Some(parse_window(w, &field("window"))?),
    };
    Ok(Group {
        name,
        selector,
        query: Some(query),
        window,
        wait_after_previous: wait.unsigned_abs(),
        strategy: policy_strategy(strategy),
    })
}

/// `{days, start, duration, timeZone}`: the days it opens on (every day when left out), its start
/// on the zone's wall clock (`02:00`, `02:00:30`), how long it stays open (at most a day), and
/// the zone (UTC when left out).
fn parse_window(v: &Value, at: &str) -> Result<Window, FieldError> {
    let o = object(v, at, WINDOW_FIELDS)?;
    let field = |k: &str| format!("{at}.{k}");
    let start_text = text(o, "start", &field("start"))?.ok_or_else(|| bad(field("start"), "missing: e.g. 02:00"))?;
    // A leap second (`:60`) would be read as `:59`: it names no time a window can start at.
    let leap = start_text.trim().split(':').nth(2).is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s > 59));
    let start = Time::strptime("%H:%M:%S", start_text.trim())
        .or_else(|_| Time::strptime("%H:%M", start_text.trim()))
        .ok()
        .filter(|_| !leap)
        .ok_or_else(|| bad(field("start"), format!("'{}': expected a time such as 02:00", quoted(start_text))))?;
    let length = match o.get("duration") {
        None | Some(Value::Null) => return Err(bad(field("duration"), "missing: e.g. 2h")),
        Some(d) => duration(d, &field("duration"))?,
    };
    if length <= SignedDuration::ZERO || length > SignedDuration::from_hours(24) {
        return Err(bad(field("duration"), "expected more than 0 and at most 24h"));
    }
    let days = match o.get("days") {
        None | Some(Value::Null) => Days::ALL,
        Some(d) => parse_days(d, &field("days"))?,
    };
    let zone_name = text(o, "timeZone", &field("timeZone"))?.map(str::trim).unwrap_or("UTC").to_string();
    // Files in the zone database that name no place: `localtime` is whatever zone the host is set
    // to (nodes on different hosts would open the window at different times).
    let lower = zone_name.to_ascii_lowercase();
    let base = lower.strip_prefix("posix/").or_else(|| lower.strip_prefix("right/")).unwrap_or(&lower);
    if ["localtime", "posixrules", "factory"].contains(&base) {
        let why = format!(
            "'{}' is not a time zone every node reads alike: give a name such as Europe/Berlin or UTC",
            quoted(&zone_name)
        );
        return Err(bad(field("timeZone"), why));
    }
    let zone = jiff::tz::TimeZone::get(&zone_name).map_err(|_| {
        bad(
            field("timeZone"),
            format!("unknown time zone '{}': expected a name such as Europe/Berlin", quoted(&zone_name)),
        )
    })?;
    Ok(Window { start, end: start.wrapping_add(length), zone, zone_name, days })
}

/// `["mon", "tue"]` or `"mon,tue"`: at least one day.
fn parse_days(v: &Value, at: &str) -> Result<Days, FieldError> {
    let names: Vec<String> = match v {
        Value::String(s) => s.split(',').map(|d| d.trim().to_string()).collect(),
        Value::Array(a) => a
            .iter()
            .map(|d| {
                d.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(at, format!("{}: expected a day's name as text", found(d))))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad(at, "expected a list of days such as [\"sat\", \"sun\"]")),
    };
    let mut days = Vec::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        days.push(
            Days::day(n)
                .ok_or_else(|| bad(at, format!("'{}': expected mon, tue, wed, thu, fri, sat or sun", quoted(n))))?,
        );
    }
    let days = Days::of(&days);
    if days.is_empty() {
        return Err(bad(at, "no day: the window would never open"));
    }
    Ok(days)
}

/// The policy as JSON, with the names it is read by (the target as resolved).
pub fn to_json(p: &Policy) -> Value {
    let groups: Vec<Value> = p.groups.iter().filter(|g| g.query.is_some()).map(group_json).collect();
    json!({
        "mode": p.mode.name(),
        "target": p.target.to_string(),
        "allowDowngrade": p.allow_downgrade,
        "unmatched": p.unmatched.name(),
        "groups": groups,
    })
}

fn group_json(g: &Group) -> Value {
    let s = strategy::to_json(&g.strategy);
    let mut v = json!({"name": g.name, "selector": g.selector});
    for k in STRATEGY_FIELDS.iter().filter(|k| **k != "maxFailures" || s.get("maxFailures").is_some()) {
        v[*k] = s[*k].clone();
    }
    v["waitAfterPrevious"] = json!(duration_text(g.wait_after_previous));
    if let Some(w) = &g.window {
        v["window"] = window_json(w);
    }
    v
}

/// A window as the policy writes it.
pub fn window_json(w: &Window) -> Value {
    let start = w.start.strftime(if w.start.second() == 0 { "%H:%M" } else { "%H:%M:%S" }).to_string();
    let length = std::time::Duration::try_from(w.length()).unwrap_or_default();
    let mut v = json!({"start": start, "duration": duration_text(length), "timeZone": w.zone_name});
    if w.days != Days::ALL {
        v["days"] = json!(w.days.names());
    }
    v
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
