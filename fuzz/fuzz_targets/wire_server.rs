//! A frame as the server reads it from an agent's socket (`conn/socket.rs`): parsed with the
//! server's default limit, answered with an `agent:error` when it is no message, and a heartbeat's
//! version read as the hub reads it. A message that parses must write back to the same message, and
//! the one-pass read must answer what the read by way of a JSON value answers. The same frame past
//! a small limit keeps at most a short callback.
#![no_main]

use edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES;
use edge_agent_wire::{Envelope, Message, ReportedVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = Envelope::parse(text, DEFAULT_MAX_MESSAGE_BYTES);
    // The one-pass read answers exactly what the read by way of a JSON value answers.
    assert_eq!(parsed, Envelope::parse_diagnosed(text, DEFAULT_MAX_MESSAGE_BYTES));
    match parsed {
        Ok(env) => {
            if let Message::HeartbeatResponse { version } = &env.msg {
                let reported = ReportedVersion::parse(version);
                assert!(reported.label().len() <= edge_agent_wire::reported::MAX_REPORTED_LEN);
                assert_eq!(ReportedVersion::shown(&reported.label()), reported.label());
            }
            if let Some(cb) = &env.callback {
                let _ = cb.agent_id();
            }
            same_after_writing(&env);
        }
        Err(e) => {
            let reply = e.reply();
            assert!(matches!(reply.msg, Message::Error { .. }));
            same_after_writing(&reply);
        }
    }
    // The same frame past a small limit: too large, its callback read in one pass (bounded).
    if text.len() > 16 {
        let Err(e) = Envelope::parse(text, 16) else { panic!("a frame past the limit parsed") };
        let reply = e.reply();
        assert!(reply.callback.as_ref().is_none_or(|cb| cb.as_str().len() <= 256));
        same_after_writing(&reply);
    }
});

/// What the server writes, read back, is what it meant. The free JSON inside logs and stats is
/// only required to read back: serde_json's default parser may round a float's last digit.
fn same_after_writing(env: &Envelope) {
    let json = env.to_json();
    let again = Envelope::parse(&json, usize::MAX).expect("a written message parses");
    if !matches!(env.msg, Message::LogsResponse { .. } | Message::StatsResponse { .. }) {
        assert_eq!(&again, env);
        assert_eq!(again.to_json(), json);
    }
}
