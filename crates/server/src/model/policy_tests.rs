//! Reading a policy: defaults, the implicit last group, and each bad value named by its field.

use serde_json::{json, Value};

use super::*;
use crate::model::query::NameMatch;

/// A selector reader for tests: `name=<prefix>` only.
fn selector(text: &str) -> Result<AgentQuery, String> {
    match text.strip_prefix("name=") {
        Some(p) => Ok(AgentQuery { names: vec![(NameMatch::Prefix, p.to_string())], ..AgentQuery::default() }),
        None => Err(format!("Unknown search parameter: {}", text.split('=').next().unwrap_or(text))),
    }
}

fn read(v: Value) -> Result<Policy, FieldError> {
    parse(&v, &Readers { selector: &selector, latest: &|| Ok(Version::new(3, 1, 0)) })
}

fn error(v: Value) -> String {
    read(v).unwrap_err().to_string()
}

#[test]
fn defaults_the_implicit_group_and_a_round_trip() {
    let p = read(json!({
        "target": "latest",
        "groups": [
            {"name": "dev", "selector": "name=dev-"},
            {"name": "prod", "selector": "name=prod-", "canary": 2, "maxInFlight": 50, "waitAfterPrevious": "24h",
             "maxFailures": 3, "window": {"days": ["sat", "sun"], "start": "22:00", "duration": "4h",
             "timeZone": "Europe/Berlin"}}
        ]
    }))
    .unwrap();
    assert_eq!((p.mode, p.target.to_string(), p.allow_downgrade), (Mode::Enabled, "3.1.0".to_string(), false));
    let names: Vec<&str> = p.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["dev", "prod", IMPLICIT_GROUP], "agents no group finds form a last group");
    let prod = &p.groups[1];
    assert_eq!((prod.strategy.canary, prod.strategy.max_in_flight, prod.strategy.max_failures), (2, 50, Some(3)));
    assert!(prod.strategy.transient_retried, "the policy retries transient failures");
    assert_eq!(prod.wait_after_previous, Duration::from_secs(24 * 3600));
    assert_eq!(prod.window.as_ref().unwrap().describe(), "22:00-02:00 Europe/Berlin on sat, sun");
    assert_eq!(p.groups[0].strategy.canary, 1);
    let again = read(to_json(&p)).unwrap();
    assert_eq!(again, p, "what to_json writes reads back the same");
    let left = read(json!({"target": "1.2.3", "unmatched": "leave", "groups": [{"name": "a", "selector": "name=a"}]}));
    assert_eq!(left.unwrap().groups.len(), 1, "no implicit group when unmatched agents are left alone");
    assert_eq!(read(json!({"target": "v2.0.0"})).unwrap().groups[0].name, IMPLICIT_GROUP, "one group: everybody");
}

#[test]
fn each_bad_value_is_named_by_its_field() {
    let g = |extra: Value| {
        let mut group = json!({"name": "dev", "selector": "name=dev-"});
        group.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"target": "2.0.0", "groups": [{"name": "first", "selector": "name=x"}, group]})
    };
    let cases = [
        (json!({"target": "2.0.0", "mdoe": "enabled"}), "mdoe: unknown field (expected one of: mode, target, allowDowngrade, unmatched, groups)"),
        (json!({"groups": []}), "target: missing: name a version (1.4.2), or latest"),
        (json!({"target": "2.x"}), "target: '2.x' is not a valid version"),
        (json!({"target": "2.0.0", "mode": "on"}), "mode: 'on': expected enabled, suspended or disabled"),
        (json!({"target": "2.0.0", "allowDowngrade": "yes"}), "allowDowngrade: expected true or false, found \"yes\""),
        // Found by an attacker's probe: a 1.5 MB value of the wrong type came back whole.
        (json!({"target": "2.0.0", "mode": vec![0; 100]}), "mode: expected text, found [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0…"),
        (json!({"target": "2.0.0", "unmatched": "drop"}), "unmatched: 'drop': expected last-group or leave"),
        (json!({"target": "2.0.0", "unmatched": "leave"}), "groups: none: with unmatched = leave, the policy would manage no agent"),
        (g(json!({"maxInflight": 5})), "groups[1].maxInflight: unknown field (expected one of: name, selector, window, canary, maxInFlight, waitAfterPrevious, maxFailures, maxFailurePercent, minFinished, growth, timeout)"),
        (g(json!({"selector": ""})), "groups[1].selector: missing: an Agent search such as name=clinic- (a group needs members)"),
        (g(json!({"selector": "nmae=x"})), "groups[1].selector: Unknown search parameter: nmae"),
        (g(json!({"name": "first"})), "groups[1].name: 'first' names two groups"),
        (g(json!({"name": "a b"})), "groups[1].name: 'a b': expected 1 to 40 letters, digits, '-', '_' or '.'"),
        (g(json!({"name": "unmatched"})), "groups[1].name: 'unmatched' is the implicit last group's name"),
        (g(json!({"canary": 0})), "groups[1].canary: Invalid value '0' for rollout parameter 'canary': expected 1 to 1000000"),
        (g(json!({"waitAfterPrevious": "soon"})), "groups[1].waitAfterPrevious: expected a duration such as 24h, 90m or 30s (or a number of seconds)"),
        (g(json!({"waitAfterPrevious": 3_000_000})), "groups[1].waitAfterPrevious: expected 0 to 30 days"),
        // Found by the fuzz target `policy`: more seconds than a duration holds.
        (g(json!({"waitAfterPrevious": 6.2e24})), "groups[1].waitAfterPrevious: expected 0 to 30 days"),
        (g(json!({"window": {"start": "02:00", "duration": 1e300}})), "groups[1].window.duration: expected more than 0 and at most 24h"),
        (g(json!({"window": {"start": "02:00", "duration": "2h", "timeZone": "Mars/Olympus"}})), "groups[1].window.timeZone: unknown time zone 'Mars/Olympus': expected a name such as Europe/Berlin"),
        (g(json!({"window": {"start": "02:00", "duration": "2h", "timeZone": "localtime"}})), "groups[1].window.timeZone: 'localtime' is not a time zone every node reads alike: give a name such as Europe/Berlin or UTC"),
        (g(json!({"window": {"start": "02:00", "duration": "2h", "timeZone": "posix/Factory"}})), "groups[1].window.timeZone: 'posix/Factory' is not a time zone every node reads alike: give a name such as Europe/Berlin or UTC"),
        (json!({"target": "2.0.0", "mode": "x".repeat(100)}), "mode: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…': expected enabled, suspended or disabled"),
        (g(json!({"window": {"start": "02:00", "duration": "2h", "timeZone": "Factory"}})), "groups[1].window.timeZone: 'Factory' is not a time zone every node reads alike: give a name such as Europe/Berlin or UTC"),
        (g(json!({"window": {"start": "2am", "duration": "2h"}})), "groups[1].window.start: '2am': expected a time such as 02:00"),
        (g(json!({"window": {"start": "23:59:60", "duration": "2h"}})), "groups[1].window.start: '23:59:60': expected a time such as 02:00"),
        (g(json!({"window": {"start": "02:00"}})), "groups[1].window.duration: missing: e.g. 2h"),
        (g(json!({"window": {"start": "02:00", "duration": "25h"}})), "groups[1].window.duration: expected more than 0 and at most 24h"),
        (g(json!({"window": {"start": "02:00", "duration": "1h", "days": ["funday"]}})), "groups[1].window.days: 'funday': expected mon, tue, wed, thu, fri, sat or sun"),
        (g(json!({"window": {"start": "02:00", "duration": "1h", "days": [{"x": 1}]}})), "groups[1].window.days: {\"x\":1}: expected a day's name as text"),
        (g(json!({"window": {"start": "02:00", "duration": "1h", "days": []}})), "groups[1].window.days: no day: the window would never open"),
        (g(json!({"window": {"start": "02:00", "duration": "1h", "tz": "UTC"}})), "groups[1].window.tz: unknown field (expected one of: days, start, duration, timeZone)"),
        (json!([]), "policy: expected an object"),
    ];
    for (input, want) in cases {
        assert_eq!(error(input.clone()), want, "{input}");
    }
    let many: Vec<Value> = (0..21).map(|i| json!({"name": format!("g{i}"), "selector": "name=x"})).collect();
    assert_eq!(error(json!({"target": "1.0.0", "groups": many})), "groups: 21 groups: at most 20");
}

#[test]
fn a_window_of_seconds_and_a_whole_day() {
    let p = read(json!({"target": "1.0.0", "groups": [
        {"name": "a", "selector": "name=a", "window": {"start": "02:00:30", "duration": 90}},
        {"name": "b", "selector": "name=b", "window": {"start": "00:00", "duration": "24h", "days": "sat,sun"}}
    ]}))
    .unwrap();
    let a = p.groups[0].window.as_ref().unwrap();
    assert_eq!((a.describe(), window_json(a)["duration"].clone()), ("02:00:30-02:02 UTC".to_string(), json!("1m 30s")));
    let b = p.groups[1].window.as_ref().unwrap();
    assert_eq!(b.length(), SignedDuration::from_hours(24));
    assert_eq!(window_json(b), json!({"days": ["sat", "sun"], "start": "00:00", "duration": "24h", "timeZone": "UTC"}));
}
