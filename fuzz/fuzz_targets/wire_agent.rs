//! A frame as the agent reads it from the server's socket (`daemon/session.rs`): parsed with the
//! agent's default limit, and an upgrade request's version read into a target as the request
//! handler reads it (`Target::parse`). A message that parses must write back to the same message.
#![no_main]

use edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES;
use edge_agent_wire::{Envelope, Message, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Envelope::parse(text, DEFAULT_MAX_MESSAGE_BYTES) {
        Ok(env) => {
            if let Message::UpgradeRequest { version, .. } = &env.msg {
                if let Ok(target) = Target::parse(version.as_deref()) {
                    // The journal stores a target by its label: it must read back the same.
                    assert_eq!(Target::from_label(&target.label()).ok(), Some(target.clone()));
                    assert_eq!(Target::parse(target.to_wire().as_deref()).ok(), Some(target));
                }
            }
            let json = env.to_json();
            let again = Envelope::parse(&json, usize::MAX).expect("a written message parses");
            if !matches!(env.msg, Message::LogsResponse { .. } | Message::StatsResponse { .. }) {
                assert_eq!(again, env);
                assert_eq!(again.to_json(), json);
            }
        }
        Err(e) => {
            let reply = e.reply().to_json();
            assert!(Envelope::parse(&reply, usize::MAX).is_ok());
        }
    }
});
