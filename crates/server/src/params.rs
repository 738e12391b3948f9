//! Operation parameters from a query string and a POST body (a `Parameters` resource or a plain
//! JSON object), read one by one, and request bodies' JSON. A bad value is a [`ParamError`] that
//! names it; the HTTP layer turns it into a 400 `OperationOutcome`. What is given twice (a
//! parameter, a JSON key) is refused rather than guessed at.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::limits::throttle::shown;

/// An operation's parameters by name.
pub type Params = HashMap<String, Value>;

/// The longest an operation waits for an agent's answer (Medplum's limit for `$upgrade`).
pub const MAX_TIMEOUT_MS: u64 = 56_000;

/// A parameter the caller got wrong, in words for the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Text anyone sent, as an error quotes it: its first 64 characters, and `…` past them (a
/// request may hold megabytes of it).
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A value of the wrong type; a long value is quoted shortened (anyone may send any text).
pub fn invalid_value(value: &str, ty: &str, name: &str) -> ParamError {
    ParamError(format!("Invalid value '{}' provided for {ty} parameter '{name}'", quoted(value)))
}

/// The most characters a name searched for may have: far past any agent's name (the store's
/// pattern limit is 50,000 bytes, and a pattern past it was a 503, as if the store were down).
pub const MAX_NAME_SEARCH: usize = 1_024;

/// A search value anyone may send, checked: no control character (a NUL cut the store's pattern
/// short: `name:contains=%00` matched every agent), and at most `max` characters.
pub fn search_value(value: &str, name: &str, max: usize) -> Result<(), ParamError> {
    let shown = shown(name);
    if value.chars().count() > max {
        return Err(ParamError(format!("Value of search parameter '{shown}' is too long: at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ParamError(format!("Value of search parameter '{shown}' has a control character: remove it")));
    }
    Ok(())
}

/// Refuses the first (in order) of `keys` not in `names`, by name.
pub fn known_params<'a>(keys: impl Iterator<Item = &'a String>, names: &[&str]) -> Result<(), ParamError> {
    match keys.filter(|k| !names.contains(&k.as_str())).min() {
        Some(k) if names.is_empty() => Err(ParamError(format!("Unknown parameter: {} (this takes none)", shown(k)))),
        Some(k) => Err(ParamError(format!("Unknown parameter: {} (expected one of: {})", shown(k), names.join(", ")))),
        None => Ok(()),
    }
}

/// An operation that takes no parameter refuses a body that gives one (`{"role": "admin"}` to a
/// rotation was ignored, and the caller may have believed it done). `{}` and an empty
/// `Parameters` are no parameter.
pub fn takes_none(op: &str, body: &Params) -> Result<(), ParamError> {
    match body.is_empty() {
        true => Ok(()),
        false => Err(ParamError(format!("{op} takes no parameter: send it with an empty body"))),
    }
}

/// Query-string parameters named in `names`, with those of a POST body; one given twice, in the
/// query or in both, is refused, and so is a body's parameter not in `names` (a misspelt `version`
/// would otherwise be no version: the latest).
pub fn merge_params(pairs: &[(String, String)], names: &[&str], body: Params) -> Result<Params, ParamError> {
    known_params(body.keys(), names)?;
    let mut raw = body;
    let in_body: Vec<String> = raw.keys().cloned().collect();
    for (k, v) in pairs.iter().filter(|(k, _)| names.contains(&k.as_str())) {
        if raw.insert(k.clone(), Value::String(v.clone())).is_some() {
            let place = if in_body.contains(k) { "in the query string and in the body" } else { "twice" };
            return Err(ParamError(format!("Parameter '{k}' is given {place}: give it once")));
        }
    }
    Ok(raw)
}

/// A request body's JSON, where an object giving a key twice is refused (a plain parse would keep
/// the last, and a proxy or a log reading the first would see another request).
pub fn json_body(text: &str) -> Result<Value, ParamError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict::deserialize(&mut de).and_then(|Strict(v)| de.end().map(|()| v));
    parsed.map_err(|e| ParamError(format!("Invalid JSON: {e}")))
}

/// A JSON value whose objects give each key once.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown = quoted(&key);
                return Err(de::Error::custom(format!("the key \"{shown}\" is given twice")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_takes_nothing_says_so() {
        assert_eq!(takes_none("$pause", &Params::new()), Ok(()));
        let given: Params = [("reason".to_string(), json!("x"))].into();
        assert_eq!(
            takes_none("$pause", &given).unwrap_err().0,
            "$pause takes no parameter: send it with an empty body"
        );
        let keys = ["b".to_string(), "a".to_string()];
        assert_eq!(known_params(keys.iter(), &[]).unwrap_err().0, "Unknown parameter: a (this takes none)");
        assert_eq!(known_params(keys.iter(), &["b"]).unwrap_err().0, "Unknown parameter: a (expected one of: b)");
        assert_eq!(known_params(keys.iter(), &["a", "b"]), Ok(()));
    }

    #[test]
    fn json_giving_a_key_twice_is_refused_at_any_depth() {
        let v = json_body(r#"{"a": [1, -2, 2.5, "x", null, true, {"b": {}}]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, -2, 2.5, "x", null, true, {"b": {}}]}));
        let e = json_body(r#"{"name": "a", "name": "b"}"#).unwrap_err();
        assert_eq!(e.0, "Invalid JSON: the key \"name\" is given twice at line 1 column 20");
        assert!(json_body(r#"{"x": [{"t": 1, "t": 1}]}"#).unwrap_err().0.contains("\"t\" is given twice"));
        assert!(json_body(r#"{} {}"#).unwrap_err().0.contains("trailing characters"));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(json_body(&deep).unwrap_err().0.contains("recursion limit"));
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let names = &["version", "force"];
        let one = merge_params(&pairs(&[("version", "1.2.3"), ("_id", "a"), ("_id", "b")]), names, Params::new());
        assert_eq!(one.unwrap().get("version"), Some(&Value::from("1.2.3")));
        let e = merge_params(&pairs(&[("version", "1"), ("version", "2")]), names, Params::new()).unwrap_err();
        assert_eq!(e.0, "Parameter 'version' is given twice: give it once");
        let body = Params::from([("version".to_string(), Value::from("2"))]);
        let e = merge_params(&pairs(&[("version", "1")]), names, body).unwrap_err();
        assert_eq!(e.0, "Parameter 'version' is given in the query string and in the body: give it once");
        let typo = Params::from([("verison".to_string(), Value::from("2"))]);
        let e = merge_params(&pairs(&[]), names, typo).unwrap_err();
        assert_eq!(e.0, "Unknown parameter: verison (expected one of: version, force)");
    }
}
