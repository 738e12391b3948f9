//! An `Agent` resource as `POST`/`PUT /fhir/R4/Agent` read it (`api::lifecycle::agent_fields`):
//! refused with a short error, or read into a name, a status and identifiers that are what the
//! store keeps. What it accepts, written back as an Agent, reads back the same; an error never
//! quotes more than a bounded part of what was sent.
#![no_main]

use edge_agent_server::api::lifecycle::agent_fields;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// The longest error text the body may cause (fields are shown at most 64 characters, names and
/// identifiers at most the store's text length).
const MAX_ERROR: usize = 2_000;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    match agent_fields(&v) {
        Err(e) => assert!(e.text().len() <= MAX_ERROR, "an error of {} bytes", e.text().len()),
        Ok((name, status, identifiers)) => {
            assert!(!name.is_empty() && name.trim() == name, "{name:?}");
            assert!(matches!(status.as_str(), "active" | "error" | "off"), "{status}");
            assert!(identifiers.as_array().is_some(), "{identifiers}");
            let again = json!({"resourceType": "Agent", "name": name, "status": status, "identifier": identifiers});
            let read =
                agent_fields(&again).unwrap_or_else(|e| panic!("what was kept does not read back: {}", e.text()));
            assert_eq!(read, (name, status, identifiers));
        }
    }
});
