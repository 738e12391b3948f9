//! FHIR search for `Agent`: the query string parsed into an [`AgentQuery`] (modifiers, `_sort`,
//! `_lastUpdated` prefixes, paging), and the searchset Bundle with absolute `fullUrl`s and paging
//! links. An unknown parameter or modifier, an empty value (or an empty item of a list) and a page
//! past [`MAX_OFFSET`] are errors that name the parameter, so that a typo never widens a bulk
//! operation to the whole fleet.

use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::app::AppState;
use crate::model::agent::AgentRow;
use crate::model::query::{AgentQuery, DatePrefix, InstantFilter, NameMatch, SortKey, TokenFilter};
use crate::params::{invalid_value, quoted, ParamError};
use crate::proxy::Peer;

/// The largest page a search returns (Medplum's limit too).
pub const MAX_PAGE: usize = 1000;
/// The largest `_offset`: far past any fleet, and far from any overflow.
pub const MAX_OFFSET: usize = 1_000_000;
const DEFAULT_COUNT: usize = 20;

/// An `Agent` search from query pairs. Pairs named in `op_params` are left for the operation.
pub fn parse_search(
    pairs: &[(String, String)],
    op_params: &[&str],
    max_count: usize,
) -> Result<AgentQuery, ParamError> {
    parse(pairs, op_params, max_count, true)
}

/// A search an earlier build stored (an update policy's selector), read as that build read it: a
/// parameter given twice was taken then, the last one counting. A policy stored so keeps working;
/// setting it again is refused until it says what it means.
pub fn parse_stored_search(pairs: &[(String, String)]) -> Result<AgentQuery, ParamError> {
    parse(pairs, &[], usize::MAX, false)
}

fn parse(
    pairs: &[(String, String)],
    op_params: &[&str],
    max_count: usize,
    each_once: bool,
) -> Result<AgentQuery, ParamError> {
    let mut q = AgentQuery { count: DEFAULT_COUNT, ..Default::default() };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in pairs {
        if op_params.contains(&key.as_str()) {
            continue;
        }
        if value.trim().is_empty() {
            return Err(ParamError(format!(
                "Empty value for search parameter '{}': give a value or leave the parameter out",
                quoted(key)
            )));
        }
        let max = if key.starts_with("name") { crate::params::MAX_NAME_SEARCH } else { usize::MAX };
        crate::params::search_value(value, key, max)?;
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        let bad_modifier = || {
            ParamError(format!(
                "Unknown modifier ':{}' on search parameter '{name}'",
                quoted(modifier.unwrap_or_default())
            ))
        };
        let int = |v: &str| v.parse::<usize>().map_err(|_| invalid_value(v, "integer", key));
        // `name` and `_lastUpdated` may repeat (each one more condition); any other parameter
        // given twice (or with and without `:not`) would have the last one win unsaid.
        if each_once && !matches!(name, "name" | "_lastUpdated") {
            if seen.contains(&name) {
                return Err(ParamError(format!(
                    "Search parameter '{}' is given twice: give it once (comma-separated values match any of them)",
                    quoted(name)
                )));
            }
            seen.push(name);
        }
        match (name, modifier) {
            ("_id", None) => q.ids = Some(split_list(value, key, MAX_PAGE)?),
            ("name", m) => {
                let how = match m {
                    None => NameMatch::Prefix,
                    Some("exact") => NameMatch::Exact,
                    Some("contains") => NameMatch::Contains,
                    Some(_) => return Err(bad_modifier()),
                };
                q.names.push((how, value.clone()));
                at_most(q.names.len(), "name")?;
            }
            ("status", None | Some("not")) => {
                q.status = Some(TokenFilter { any_of: split_list(value, key, MAX_LIST)?, not: modifier.is_some() });
            }
            ("identifier", None | Some("not")) => {
                let any_of = split_list(value, key, MAX_LIST)?
                    .iter()
                    .map(|v| identifier_token(v, key))
                    .collect::<Result<_, _>>()?;
                q.identifier = Some(TokenFilter { any_of, not: modifier.is_some() });
            }
            ("_lastUpdated", None) => {
                q.last_updated.push(instant_filter(value, "_lastUpdated")?);
                at_most(q.last_updated.len(), "_lastUpdated")?;
            }
            ("_sort", None) => q.sort = sort_keys(value)?,
            ("_count", None) => q.count = int(value)?,
            ("_offset", None) => q.offset = int(value)?,
            // Every answer carries its total; accepted so that clients asking for it work.
            ("_total", None) => {}
            ("_id" | "_lastUpdated" | "_sort" | "_count" | "_offset" | "_total" | "status" | "identifier", Some(_)) => {
                return Err(bad_modifier())
            }
            _ => return Err(ParamError(format!("Unknown search parameter: {}", quoted(key)))),
        }
    }
    page_within(q.count, max_count, q.offset)?;
    Ok(q)
}

/// A page of `count` (at most `max_count`) from `offset` (at most [`MAX_OFFSET`]), or the error
/// that names the parameter past its cap.
pub fn page_within(count: usize, max_count: usize, offset: usize) -> Result<(), ParamError> {
    if count > max_count {
        return Err(ParamError(format!("'_count' of {count} is greater than max of {max_count}")));
    }
    if offset > MAX_OFFSET {
        return Err(ParamError(format!("'_offset' of {offset} is greater than max of {MAX_OFFSET}")));
    }
    Ok(())
}

/// Values in one list of `status` or `identifier` (`_id` takes a page's worth, [`MAX_PAGE`]).
pub const MAX_LIST: usize = 100;
/// Times one of `name` and `_lastUpdated` may be given (each one more condition, all of them met).
pub const MAX_REPEATS: usize = 20;

/// Found by fuzzing: a search is one SQL statement, and its depth and bound values have limits
/// (SQLite refuses an expression deeper than 1,000, or more than 32,766 values); a request head
/// of 64 KiB could pass either, and the store's refusal was a 500 rather than a 400.
fn at_most(count: usize, name: &str) -> Result<(), ParamError> {
    if count > MAX_REPEATS {
        return Err(ParamError(format!(
            "Search parameter '{name}' given more than {MAX_REPEATS} times: combine the conditions, or search in several calls"
        )));
    }
    Ok(())
}

/// A comma-separated list of at most `max` values: any of them, none of them empty.
fn split_list(value: &str, key: &str, max: usize) -> Result<Vec<String>, ParamError> {
    if value.split(',').nth(max).is_some() {
        return Err(ParamError(format!(
            "More than {max} values in the list of search parameter '{}': search in several calls",
            quoted(key)
        )));
    }
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(ParamError(format!(
            "Empty item in the list '{}' of search parameter '{}': remove the extra comma",
            quoted(value),
            quoted(key)
        )));
    }
    Ok(items)
}

/// `[system]|value` or `value`; the value may not be empty.
fn identifier_token(token: &str, key: &str) -> Result<(Option<String>, String), ParamError> {
    let (system, value) = match token.split_once('|') {
        Some((system, v)) => (Some(system.to_string()).filter(|s| !s.is_empty()), v.to_string()),
        None => (None, token.to_string()),
    };
    if value.trim().is_empty() {
        return Err(ParamError(format!(
            "Empty value in '{}' for search parameter '{}': write [system]|value",
            quoted(token),
            quoted(key)
        )));
    }
    Ok((system, value))
}

fn sort_keys(value: &str) -> Result<Vec<(SortKey, bool)>, ParamError> {
    split_list(value, "_sort", MAX_LIST)?
        .iter()
        .map(|k| {
            let (desc, name) = match k.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, k.as_str()),
            };
            let key = match name {
                "name" => SortKey::Name,
                "status" => SortKey::Status,
                "identifier" => SortKey::Identifier,
                "_lastUpdated" => SortKey::LastUpdated,
                other => {
                    return Err(ParamError(format!(
                        "Unknown sort key '{}': expected name, status, identifier or _lastUpdated",
                        quoted(other)
                    )))
                }
            };
            Ok((key, desc))
        })
        .collect()
}

/// `_lastUpdated=[prefix]value` (or another instant parameter, `name`): the value's precision (a year down to a millisecond) is the range
/// it stands for. Instants are stored in UTC as `YYYY-MM-DDThh:mm:ss.sssZ`, so the range of all
/// instants that start with the value's UTC text, truncated to its precision, is exactly
/// `[text, text + "\x7f")`.
pub fn instant_filter(raw: &str, name: &str) -> Result<InstantFilter, ParamError> {
    let prefixes = [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("gt", DatePrefix::Gt),
        ("lt", DatePrefix::Lt),
        ("ge", DatePrefix::Ge),
        ("le", DatePrefix::Le),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
    ];
    let (prefix, value) =
        prefixes.iter().find_map(|(p, d)| raw.strip_prefix(p).map(|rest| (*d, rest))).unwrap_or((DatePrefix::Eq, raw));
    let text = utc_text(value).ok_or_else(|| invalid_value(raw, "date", name))?;
    Ok(InstantFilter { prefix, high: format!("{text}\x7f"), low: text })
}

/// The UTC text of a FHIR date or dateTime, as long as its precision; None when it is not one.
fn utc_text(value: &str) -> Option<String> {
    let date_only = |v: &str| v.parse::<jiff::civil::Date>().ok();
    match value.len() {
        4 => date_only(&format!("{value}-01-01")).map(|_| value.to_string()),
        7 => date_only(&format!("{value}-01")).map(|_| value.to_string()),
        10 => date_only(value).map(|_| value.to_string()),
        _ => {
            let (_, time) = value.split_once('T')?;
            let has_offset = time.ends_with('Z') || time.contains('+') || time.contains('-');
            if let Some(at) = time.rfind(['+', '-']) {
                fhir_offset(&time[at + 1..])?;
            }
            let clock = time.trim_end_matches('Z').split(['+', '-']).next()?;
            let precision = match clock.len() {
                5 => 16,
                8 => 19,
                n if n > 9 && clock.as_bytes()[8] == b'.' => 23,
                _ => return None,
            };
            let full = if has_offset { value.to_string() } else { format!("{value}Z") };
            let ts: jiff::Timestamp = full.parse().ok()?;
            let text = ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            Some(text[..precision].to_string())
        }
    }
}

/// A time zone offset as FHIR writes one (`hh:mm`, at most 14:00 either way), where jiff would
/// take up to 25:59:59.
fn fhir_offset(offset: &str) -> Option<()> {
    let (h, m) = offset.split_once(':')?;
    let two_digits =
        |v: &str| (v.len() == 2 && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u32>().ok())?;
    let (h, m) = (two_digits(h)?, two_digits(m)?);
    (m < 60 && (h < 14 || (h, m) == (14, 0))).then_some(())
}

/// The base URL clients reach this server at: `--base-url`, else what a trusted proxy forwarded,
/// else the request's own `Host` (`crate::proxy`).
pub fn public_base(app: &AppState, peer: Peer, headers: &HeaderMap) -> String {
    app.config.proxies.base(peer, headers, &app.config.listen.to_string())
}

/// The `self`, `first`, `previous` and `next` links of a page of a search at `url` (absolute, no
/// query), asked with `pairs`: `count` from `offset`, with `more` after it.
pub fn paging_links(url: &str, pairs: &[(String, String)], count: usize, offset: usize, more: bool) -> Vec<Value> {
    let page = |offset: usize| {
        let mut kept: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| k != "_offset" && k != "_count").cloned().collect();
        kept.extend([("_count".into(), count.to_string()), ("_offset".into(), offset.to_string())]);
        json!(format!("{url}?{}", serde_urlencoded::to_string(&kept).unwrap_or_default()))
    };
    let mut link = vec![json!({"relation": "self", "url": page(offset)}), json!({"relation": "first", "url": page(0)})];
    if offset > 0 {
        link.push(json!({"relation": "previous", "url": page(offset.saturating_sub(count))}));
    }
    if count > 0 && more {
        link.push(json!({"relation": "next", "url": page(offset + count)}));
    }
    link
}

/// A searchset Bundle: absolute `fullUrl`s, `total`, and `self`/`first`/`previous`/`next` links.
/// Each agent's resource carries its last rollout result (`last`) as an extension.
pub fn searchset(
    base: &str,
    pairs: &[(String, String)],
    q: &AgentQuery,
    rows: &[AgentRow],
    total: usize,
    last: &dyn Fn(&str) -> Option<Value>,
) -> Value {
    let link = paging_links(&format!("{base}fhir/R4/Agent"), pairs, q.count, q.offset, q.offset + rows.len() < total);
    let entry: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut resource = r.to_fhir();
            if let Some(ext) = last(&r.id) {
                resource["extension"] = json!([ext]);
            }
            json!({"fullUrl": format!("{base}fhir/R4/Agent/{}", r.id), "resource": resource, "search": {"mode": "match"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": link, "entry": entry})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Found by an attacker's probe: `_count=1&_count=2` took the last (and `status=a&status=b`,
    /// FHIR's "both", took the last too). Only `name` and `_lastUpdated` repeat.
    #[test]
    fn a_parameter_that_does_not_repeat_is_refused_twice() {
        let err = |p: &[(&str, &str)]| parse_search(&pairs(p), &[], MAX_PAGE).unwrap_err().0;
        for (a, b, v) in [
            ("_count", "_count", "1"),
            ("status", "status:not", "off"),
            ("identifier:not", "identifier", "urn:s|1"),
            ("_id", "_id", "a"),
            ("_sort", "_sort", "name"),
            ("_offset", "_offset", "2"),
        ] {
            let name = a.split(':').next().unwrap();
            assert_eq!(
                err(&[(a, v), (b, v)]),
                format!(
                    "Search parameter '{name}' is given twice: give it once (comma-separated values match any of them)"
                )
            );
        }
        let repeats = parse_search(
            &pairs(&[("name", "a"), ("name:contains", "b"), ("_lastUpdated", "ge2026"), ("_lastUpdated", "le2027")]),
            &[],
            MAX_PAGE,
        );
        assert!(repeats.is_ok_and(|q| q.names.len() == 2 && q.last_updated.len() == 2));
    }

    #[test]
    fn instants_keep_their_precision_in_utc() {
        assert_eq!(utc_text("2026").as_deref(), Some("2026"));
        assert_eq!(utc_text("2026-11").as_deref(), Some("2026-11"));
        assert_eq!(utc_text("2026-11-29").as_deref(), Some("2026-11-29"));
        assert_eq!(utc_text("2026-11-29T07:30").as_deref(), Some("2026-11-29T07:30"));
        assert_eq!(utc_text("2026-11-29T07:30:05Z").as_deref(), Some("2026-11-29T07:30:05"));
        assert_eq!(utc_text("2026-11-29T01:30:05+02:00").as_deref(), Some("2026-11-28T23:30:05"));
        assert_eq!(utc_text("2026-11-29T07:30:05.25Z").as_deref(), Some("2026-11-29T07:30:05.250"));
        assert_eq!(utc_text("2026-11-29T07:30:05-14:00").as_deref(), Some("2026-11-29T21:30:05"));
        assert_eq!(utc_text("2026-11-29T07:30:05+13:59").as_deref(), Some("2026-11-28T17:31:05"));
        for bad in [
            "2026-13",
            "2026-02-30",
            "yesterday",
            "2026-11-29T25:00:00Z",
            "2026-11-29T07",
            "2026-11-29T07:30:05+25:59",
            "2026-11-29T07:30:05+14:01",
            "2026-11-29T07:30:05-15:00",
            "2026-11-29T07:30:05+02:60",
            "2026-11-29T07:30:05+0200",
            "2026-11-29T07:30:05+02:00:30",
        ] {
            assert_eq!(utc_text(bad), None, "{bad}");
        }
    }

    /// Found by the `fhir_search` fuzz target: 504 identifiers in one list made an SQL expression
    /// deeper than SQLite takes, a 500. Lists and repeats are bounded, and the largest search they
    /// allow still runs on the store (`fhir_search` runs every accepted one).
    #[test]
    fn lists_and_repeats_are_bounded() {
        let list = |n: usize, item: &str| vec![item; n].join(",");
        let err = |p: &[(&str, &str)]| parse_search(&pairs(p), &[], MAX_PAGE).unwrap_err().0;
        assert!(parse_search(&pairs(&[("identifier", &list(MAX_LIST, "urn:s|v"))]), &[], MAX_PAGE).is_ok());
        assert_eq!(
            err(&[("identifier", &list(MAX_LIST + 1, "urn:s|v"))]),
            "More than 100 values in the list of search parameter 'identifier': search in several calls"
        );
        assert!(err(&[("status:not", &list(MAX_LIST + 1, "off"))]).starts_with("More than 100 values"));
        assert!(parse_search(&pairs(&[("_id", &list(MAX_PAGE, "a"))]), &[], MAX_PAGE).is_ok());
        assert!(err(&[("_id", &list(MAX_PAGE + 1, "a"))]).starts_with("More than 1000 values"));
        let names: Vec<(&str, &str)> = vec![("name", "a"); MAX_REPEATS + 1];
        assert_eq!(
            err(&names),
            "Search parameter 'name' given more than 20 times: combine the conditions, or search in several calls"
        );
        assert!(parse_search(&pairs(&names[1..]), &[], MAX_PAGE).is_ok());
        let dates: Vec<(&str, &str)> = vec![("_lastUpdated", "ge2026"); MAX_REPEATS + 1];
        assert_eq!(err(&dates), "Search parameter '_lastUpdated' given more than 20 times: combine the conditions, or search in several calls");
    }

    #[test]
    fn modifiers_sort_and_prefixes() {
        let q = parse_search(
            &pairs(&[
                ("name:exact", "Lab 7"),
                ("status:not", "off,error"),
                ("identifier", "urn:site|7,8"),
                ("_lastUpdated", "ge2026-11-01"),
                ("_sort", "-_lastUpdated,name"),
            ]),
            &[],
            100,
        )
        .unwrap();
        assert_eq!(q.names, [(NameMatch::Exact, "Lab 7".to_string())]);
        assert_eq!(q.status, Some(TokenFilter { any_of: vec!["off".into(), "error".into()], not: true }));
        let ident = q.identifier.unwrap();
        assert_eq!(ident.any_of, [(Some("urn:site".to_string()), "7".to_string()), (None, "8".to_string())]);
        assert_eq!(q.last_updated[0].prefix, DatePrefix::Ge);
        assert_eq!(q.last_updated[0].low, "2026-11-01");
        assert_eq!(q.sort, [(SortKey::LastUpdated, true), (SortKey::Name, false)]);

        let err = |p: &[(&str, &str)]| format!("{:?}", parse_search(&pairs(p), &[], 100).unwrap_err());
        assert!(err(&[("name:fuzzy", "x")]).contains("Unknown modifier ':fuzzy' on search parameter 'name'"));
        assert!(err(&[("_sort", "version")]).contains("Unknown sort key 'version'"));
        assert!(err(&[("_lastUpdated", "gt-soon")]).contains("Invalid value 'gt-soon'"));
        assert!(err(&[("nmae", "x")]).contains("Unknown search parameter: nmae"));
    }

    #[test]
    fn empty_values_and_far_pages_are_refused_by_name() {
        let err = |p: &[(&str, &str)]| format!("{:?}", parse_search(&pairs(p), &["version"], 100).unwrap_err());
        for (key, value) in
            [("name", ""), ("name:contains", " "), ("status:not", ""), ("identifier", ""), ("_sort", "")]
        {
            assert!(err(&[(key, value)]).contains(&format!("Empty value for search parameter '{key}'")), "{key}");
        }
        assert!(err(&[("status", "active,")]).contains("Empty item in the list 'active,' of search parameter 'status'"));
        assert!(err(&[("identifier", "urn:site|")])
            .contains("Empty value in 'urn:site|' for search parameter 'identifier'"));
        assert!(err(&[("identifier:not", "|")]).contains("for search parameter 'identifier:not'"));
        assert!(err(&[("_offset", "9223372036854775808")]).contains("greater than max of 1000000"));
        assert!(err(&[("_offset", "99999999999999999999999")]).contains("Invalid value"));
        assert!(
            parse_search(&pairs(&[("version", ""), ("name", "a")]), &["version"], 100).is_ok(),
            "an operation's own parameter is its own"
        );
        let long = "k".repeat(10_000);
        assert!(err(&[(long.as_str(), "x")]).len() < 200, "a long parameter name is not echoed whole");
    }
}
