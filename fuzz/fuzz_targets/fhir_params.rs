//! The parameters of an operation as the REST API reads them: a POST body (a `Parameters`
//! resource or a plain JSON object, `api::fhir::parameters_body`, where a key or a parameter given
//! twice is refused) merged with the query string,
//! then read as `$upgrade` reads them (`api::ops::upgrade_params`) and as a rollout reads its
//! strategy (`model::strategy::parse`). A strategy that is accepted must read back the same from
//! what the store keeps of it (`strategy::to_json`).
#![no_main]

use edge_agent_server::api::fhir::parameters_body;
use edge_agent_server::api::ops::upgrade_params;
use edge_agent_server::model::strategy;
use edge_agent_server::params::merge_params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A query string, a newline, then the body.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (query, body) = text.split_once('\n').unwrap_or(("", text));
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default();
    let Ok(params) = parameters_body(body) else { return };
    let _ = upgrade_params(&pairs, params.clone());
    let Ok(raw) = merge_params(&pairs, strategy::PARAMS, params) else { return };
    let Ok(s) = strategy::parse(&raw) else { return };
    for n in [0, 1, 2, 10, 64, u32::MAX] {
        let _ = s.wave_size(n);
    }
    if let Some(w) = &s.window {
        let _ = w.describe();
        let _ = w.contains(jiff::Timestamp::UNIX_EPOCH);
    }
    let stored = strategy::to_json(&s);
    let back = strategy::from_json(&stored).unwrap_or_else(|e| panic!("{stored}: {e}"));
    assert_eq!(strategy::to_json(&back), stored);
});
