//! The agent's configuration as `agent run` and `agent:reloadconfig` read it
//! (`config::ConfigSource::load`): a TOML file or Medplum's `agent.properties`, under
//! `EDGE_AGENT_*` variables, validated once. Any file gives a configuration or an error; a
//! configuration's URLs and limits are usable.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use edge_agent::config::{ConfigSource, RawConfig};
use edge_agent_wire::message::HARD_MAX_MESSAGE_BYTES;
use libfuzzer_sys::fuzz_target;

const KEYS: &[&str] = &[
    "BASE_URL",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "AGENT_ID",
    "STATE_DIR",
    "LOG_FORMAT",
    "HEARTBEAT_INTERVAL",
    "RECONNECT_MIN_DELAY",
    "RECONNECT_MAX_DELAY",
    "CA_FILE",
    "RELEASES_URL",
    "TRUSTED_KEYS",
    "ALLOW_UNSIGNED",
    "ALLOW_DOWNGRADE",
    "HEALTH_WINDOW",
    "MAX_MESSAGE_BYTES",
];

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("fuzz-config").tempdir().unwrap().keep())
}

fuzz_target!(|data: &[u8]| {
    // A first byte (odd: `agent.properties`, else `agent.toml`), the file, then after a 0xff
    // byte (which no UTF-8 text holds) the environment: lines of a key's number and its value.
    let Some((&kind, rest)) = data.split_first() else { return };
    let (file, env) = match rest.iter().position(|b| *b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let path = dir().join(if kind & 1 == 1 { "agent.properties" } else { "agent.toml" });
    std::fs::write(&path, file).unwrap();
    let env = String::from_utf8_lossy(env);
    let env = env.lines().filter_map(|line| {
        let (k, v) = line.split_once('=')?;
        let key = KEYS[k.parse::<usize>().ok()? % KEYS.len()];
        Some((format!("EDGE_AGENT_{key}"), v.to_string()))
    });
    let source = ConfigSource::new(Some(path), env, RawConfig::default());
    let Ok(config) = source.load() else { return };
    assert!(matches!(config.ws_url().scheme(), "ws" | "wss"));
    assert_eq!(config.ws_url().path(), "/ws/agent");
    assert!(config.token_url().path().ends_with("/oauth2/token"));
    assert!(config.max_message_bytes <= HARD_MAX_MESSAGE_BYTES);
    assert!(config.reconnect_min_delay <= config.reconnect_max_delay);
    let _ = config.trust.warning();
    let _ = format!("{config:?}");
});
