//! How a rollout proceeds ([`Strategy`]), read from the parameters of `POST Agent/$upgrade`
//! (query string or `Parameters` body) with each value checked and an error that names it and
//! says what is allowed; kept as JSON with the same names.

use std::time::Duration;

use serde_json::{json, Value};

pub use super::window::Window;
use crate::params::{bool_param, int_param, string_param, ParamError, Params, MAX_TIMEOUT_MS};

/// How a rollout proceeds; each value validated, each with a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    /// Agents asked alone first; any failure among them halts the rollout.
    pub canary: usize,
    /// Each wave is this many times the one before (waves are `canary × growth^n`).
    pub growth: f64,
    /// At most this many members upgrading at once.
    pub max_in_flight: usize,
    /// Time between the end of a wave and the start of the next.
    pub bake: Duration,
    /// Halt when more than this many members have failed.
    pub max_failures: Option<usize>,
    /// Halt when more than this percentage of finished members have failed...
    pub max_failure_percent: f64,
    /// ...once at least this many have finished.
    pub min_finished: usize,
    /// Per-agent wait for an answer, as for `$upgrade`.
    pub timeout: Duration,
    /// Members still offline this long after creation count as expired.
    pub offline_deadline: Duration,
    /// Ask members only inside this daily window.
    pub window: Option<Window>,
    /// Passed to each agent's upgrade request.
    pub force: bool,
    /// Transient failures are retried by whoever made the rollout (the update policy), so only
    /// definite ones count toward the abort criteria (`model::failure`).
    pub transient_retried: bool,
}

impl Default for Strategy {
    fn default() -> Strategy {
        Strategy {
            canary: 1,
            growth: 2.0,
            max_in_flight: 10,
            bake: Duration::ZERO,
            max_failures: None,
            max_failure_percent: 10.0,
            min_finished: 1,
            timeout: Duration::from_secs(45),
            offline_deadline: Duration::from_secs(24 * 3600),
            window: None,
            force: false,
            transient_retried: false,
        }
    }
}

impl Strategy {
    /// How many members wave `n` holds: the canary, then `canary × growth^n`.
    pub fn wave_size(&self, n: u32) -> usize {
        let size = (self.canary as f64) * self.growth.powi(n.min(64) as i32);
        size.ceil().min(1e9) as usize
    }
}

/// The parameters a rollout takes besides the Agent search.
pub const PARAMS: &[&str] = &[
    "version",
    "force",
    "canary",
    "growth",
    "maxInFlight",
    "bake",
    "maxFailures",
    "maxFailurePercent",
    "minFinished",
    "timeout",
    "offlineDeadline",
    "window",
    "timeZone",
];

fn invalid(name: &str, value: impl std::fmt::Display, what: &str) -> ParamError {
    ParamError(format!("Invalid value '{value}' for rollout parameter '{name}': {what}"))
}

fn number(params: &Params, name: &str) -> Result<Option<f64>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            let n = v.as_f64().or_else(|| text.trim().parse().ok()).filter(|n: &f64| n.is_finite());
            n.map(Some).ok_or_else(|| invalid(name, text, "expected a number"))
        }
    }
}

/// A whole number in `min..=max`, or the default.
fn count(params: &Params, name: &str, min: u64, max: u64, default: u64) -> Result<u64, ParamError> {
    let n = int_param(params, name)?.unwrap_or(default);
    if n < min || n > max {
        return Err(invalid(name, n, &format!("expected {min} to {max}")));
    }
    Ok(n)
}

/// The strategy these parameters ask for, with defaults for what they leave out.
pub fn parse(params: &Params) -> Result<Strategy, ParamError> {
    let d = Strategy::default();
    let growth = number(params, "growth")?.unwrap_or(d.growth);
    if !(1.0..=100.0).contains(&growth) {
        return Err(invalid("growth", growth, "expected a factor from 1 to 100"));
    }
    let percent = number(params, "maxFailurePercent")?.unwrap_or(d.max_failure_percent);
    if !(0.0..=100.0).contains(&percent) {
        return Err(invalid("maxFailurePercent", percent, "expected a percentage from 0 to 100"));
    }
    let max_failures = int_param(params, "maxFailures")?.map(|n| n as usize);
    let timeout_ms = count(params, "timeout", 1, MAX_TIMEOUT_MS, d.timeout.as_millis() as u64)?;
    Ok(Strategy {
        canary: count(params, "canary", 1, 1_000_000, d.canary as u64)? as usize,
        growth,
        max_in_flight: count(params, "maxInFlight", 1, 100_000, d.max_in_flight as u64)? as usize,
        bake: Duration::from_secs(count(params, "bake", 0, 7 * 86_400, 0)?),
        max_failures,
        max_failure_percent: percent,
        min_finished: count(params, "minFinished", 1, 1_000_000, d.min_finished as u64)? as usize,
        timeout: Duration::from_millis(timeout_ms),
        offline_deadline: Duration::from_secs(count(
            params,
            "offlineDeadline",
            1,
            365 * 86_400,
            d.offline_deadline.as_secs(),
        )?),
        window: window(params)?,
        force: bool_param(params, "force")?.unwrap_or(false),
        transient_retried: false,
    })
}

/// `window=02:00-04:00` with `timeZone=Europe/Berlin` (UTC when no zone is given).
fn window(params: &Params) -> Result<Option<Window>, ParamError> {
    let zone_name = string_param(params, "timeZone");
    let Some(text) = string_param(params, "window") else {
        if let Some(z) = zone_name {
            return Err(invalid("timeZone", z, "a time zone needs a window (for example window=02:00-04:00)"));
        }
        return Ok(None);
    };
    let expected = "expected a daily range such as 02:00-04:00";
    let (start, end) = text.split_once('-').ok_or_else(|| invalid("window", &text, expected))?;
    let time = |t: &str| jiff::civil::Time::strptime("%H:%M", t.trim()).map_err(|_| invalid("window", &text, expected));
    let (start, end) = (time(start)?, time(end)?);
    if start == end {
        return Err(invalid("window", &text, "the window is empty"));
    }
    let zone_name = zone_name.unwrap_or_else(|| "UTC".into());
    let zone = jiff::tz::TimeZone::get(&zone_name)
        .map_err(|_| invalid("timeZone", &zone_name, "expected a time zone name such as Europe/Berlin"))?;
    Ok(Some(Window::daily(start, end, zone, zone_name)))
}

/// The strategy as JSON, with the parameter names it was given by.
pub fn to_json(s: &Strategy) -> Value {
    let mut v = json!({
        "canary": s.canary,
        "growth": s.growth,
        "maxInFlight": s.max_in_flight,
        "bake": s.bake.as_secs(),
        "maxFailurePercent": s.max_failure_percent,
        "minFinished": s.min_finished,
        "timeout": s.timeout.as_millis() as u64,
        "offlineDeadline": s.offline_deadline.as_secs(),
        "force": s.force,
    });
    if let Some(max) = s.max_failures {
        v["maxFailures"] = json!(max);
    }
    if s.transient_retried {
        v[TRANSIENT_RETRIED] = json!(true);
    }
    if let Some(w) = &s.window {
        v["window"] = json!(format!("{}-{}", w.start.strftime("%H:%M"), w.end.strftime("%H:%M")));
        v["timeZone"] = json!(w.zone_name);
    }
    v
}

/// Where a stored strategy says that transient failures are retried (not a rollout parameter:
/// only the update policy makes such rollouts).
const TRANSIENT_RETRIED: &str = "transientRetried";

/// The strategy back from [`to_json`] (as stored).
pub fn from_json(v: &Value) -> Result<Strategy, ParamError> {
    let params: Params = v.as_object().map(|o| o.clone().into_iter().collect()).unwrap_or_default();
    let transient_retried = bool_param(&params, TRANSIENT_RETRIED)?.unwrap_or(false);
    Ok(Strategy { transient_retried, ..parse(&params)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Params {
        v.as_object().unwrap().clone().into_iter().collect()
    }

    #[test]
    fn defaults_and_round_trip() {
        let s = parse(&Params::new()).unwrap();
        assert_eq!(s, Strategy::default());
        let s = parse(&params(json!({"canary": "2", "growth": 1.5, "maxInFlight": 500, "bake": 30,
            "maxFailures": 3, "window": "22:00-04:00", "timeZone": "Europe/Berlin", "force": "true"})))
        .unwrap();
        assert_eq!((s.canary, s.growth, s.max_in_flight, s.max_failures, s.force), (2, 1.5, 500, Some(3), true));
        assert_eq!(s.window.as_ref().unwrap().describe(), "22:00-04:00 Europe/Berlin");
        assert_eq!(from_json(&to_json(&s)).unwrap(), s);
        let retried = Strategy { transient_retried: true, ..Strategy::default() };
        assert_eq!(from_json(&to_json(&retried)).unwrap(), retried);
        assert!(parse(&params(json!({"transientRetried": true}))).unwrap() == Strategy::default(), "not a parameter");
    }

    #[test]
    fn bad_values_are_named() {
        let err = |v: Value| format!("{:?}", parse(&params(v)).unwrap_err());
        assert!(err(json!({"canary": 0})).contains("'canary': expected 1 to 1000000"));
        assert!(err(json!({"growth": 0.5})).contains("'growth': expected a factor from 1 to 100"));
        assert!(err(json!({"maxFailurePercent": 120})).contains("'maxFailurePercent'"));
        assert!(err(json!({"timeout": 90000})).contains("'timeout': expected 1 to 56000"));
        assert!(err(json!({"window": "2-4"})).contains("'window': expected a daily range"));
        assert!(err(json!({"window": "02:00-04:00", "timeZone": "Mars/Olympus"})).contains("'timeZone'"));
        assert!(err(json!({"timeZone": "UTC"})).contains("a time zone needs a window"));
        assert!(err(json!({"maxInFlight": "lots"})).contains("Invalid value 'lots'"));
    }
}
