//! The update policy as `PUT /fhir/R4/Policy` reads it: a JSON body, the policy itself or a
//! `Parameters` resource (`api::policy::from_parameters`), checked by `model::policy::parse` with
//! the real reader of group selectors (`api::policy::parse_selector`, an Agent search). A policy
//! that is accepted must read back the same from what the store keeps of it
//! (`policy::to_json`), and each group's window must answer for any time.
#![no_main]

use edge_agent_server::api::policy::{from_parameters, parse_selector};
use edge_agent_server::model::policy::{self, Readers};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let spec = match v.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => match from_parameters(&v) {
            Ok(spec) => spec,
            Err(_) => return,
        },
        Some(_) => return,
        None => v,
    };
    let latest = || Ok(semver::Version::new(1, 4, 2));
    let readers = Readers { selector: &parse_selector, latest: &latest };
    let Ok(p) = policy::parse(&spec, &readers) else { return };
    let stored = policy::to_json(&p);
    let back = policy::parse(&stored, &readers).unwrap_or_else(|e| panic!("{stored}: {e}"));
    assert_eq!(policy::to_json(&back), stored);
    for g in &p.groups {
        if let Some(w) = &g.window {
            for t in [jiff::Timestamp::UNIX_EPOCH, jiff::Timestamp::MIN, jiff::Timestamp::MAX] {
                let _ = (w.contains(t), w.current(t), w.next_opening(t));
            }
        }
    }
});
