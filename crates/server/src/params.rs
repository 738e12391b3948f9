//! Operation parameters from a query string and a POST body (a `Parameters` resource or a plain
//! JSON object), read one by one. A bad value is a [`ParamError`] that names it; the HTTP layer
//! turns it into a 400 `OperationOutcome`.

use std::collections::HashMap;

use serde_json::Value;

/// An operation's parameters by name.
pub type Params = HashMap<String, Value>;

/// The longest an operation waits for an agent's answer (Medplum's limit for `$upgrade`).
pub const MAX_TIMEOUT_MS: u64 = 56_000;

/// A parameter the caller got wrong, in words for the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// A value of the wrong type; a long value is quoted shortened (anyone may send any text).
pub fn invalid_value(value: &str, ty: &str, name: &str) -> ParamError {
    let short: String = value.chars().take(64).collect();
    let more = if short.len() < value.len() { "…" } else { "" };
    ParamError(format!("Invalid value '{short}{more}' provided for {ty} parameter '{name}'"))
}

/// Query-string parameters named in `names`, overridden by those of a POST body.
pub fn merge_params(pairs: &[(String, String)], names: &[&str], body: Params) -> Params {
    let mut raw: Params = pairs
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    raw.extend(body);
    raw
}

fn text_of(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

/// A string parameter; an empty one counts as absent.
pub fn string_param(params: &Params, name: &str) -> Option<String> {
    match params.get(name) {
        None | Some(Value::Null) => None,
        Some(v) => Some(text_of(v).trim().to_string()).filter(|v| !v.is_empty()),
    }
}

/// A non-negative integer parameter (a JSON number, or its text).
pub fn int_param(params: &Params, name: &str) -> Result<Option<u64>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Some)
            .ok_or_else(|| invalid_value(&text_of(v), "integer", name)),
    }
}

/// A boolean parameter (`true`/`false`, as JSON or text).
pub fn bool_param(params: &Params, name: &str) -> Result<Option<bool>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match text_of(v).as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            other => Err(invalid_value(other, "boolean", name)),
        },
    }
}

/// A number parameter (a JSON number, or its text).
pub fn number_param(params: &Params, name: &str) -> Result<Option<f64>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v.as_f64().or_else(|| text_of(v).trim().parse().ok()).filter(|n: &f64| n.is_finite());
            n.map(Some).ok_or_else(|| invalid_value(&text_of(v), "number", name))
        }
    }
}
