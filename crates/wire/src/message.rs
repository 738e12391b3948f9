//! The wire messages shared by the agent and the server (Medplum agent protocol, see
//! `shared/protocol.md` §2): one JSON object per WebSocket text frame, tagged by `type`, with an
//! optional `callback` that a reply echoes exactly.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::callback::Callback;

/// Frames above this size are answered with an `agent:error` instead of being parsed.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Frames above this size close the socket: the WebSocket layer will not buffer more.
pub const HARD_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A message together with the callback that routes its reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub msg: Message,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

/// Every message type of the protocol; the serde tag is the wire `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    /// Agent → server, first frame on every socket.
    /// Both fields default to empty so the server can answer `Missing access token` /
    /// `Missing agent ID` rather than a parse error.
    #[serde(rename = "agent:connect:request", rename_all = "camelCase")]
    ConnectRequest {
        #[serde(default)]
        access_token: String,
        #[serde(default)]
        agent_id: String,
    },
    /// Server → agent: the handshake succeeded; the agent is live.
    #[serde(rename = "agent:connect:response")]
    ConnectResponse {},
    /// Either direction: are you there?
    #[serde(rename = "agent:heartbeat:request")]
    HeartbeatRequest {},
    /// Either direction: yes, and this is my version.
    #[serde(rename = "agent:heartbeat:response")]
    HeartbeatResponse { version: String },
    /// Server → agent: upgrade to `version` (latest when absent).
    #[serde(rename = "agent:upgrade:request")]
    UpgradeRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force: Option<bool>,
    },
    /// Agent → server: the upgrade (or its no-op) succeeded.
    #[serde(rename = "agent:upgrade:response", rename_all = "camelCase")]
    UpgradeResponse { status_code: u16 },
    /// Server → agent: re-read the local configuration.
    #[serde(rename = "agent:reloadconfig:request")]
    ReloadConfigRequest {},
    #[serde(rename = "agent:reloadconfig:response", rename_all = "camelCase")]
    ReloadConfigResponse { status_code: u16 },
    /// Server → agent: send recent log records.
    #[serde(rename = "agent:logs:request")]
    LogsRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    #[serde(rename = "agent:logs:response", rename_all = "camelCase")]
    LogsResponse { status_code: u16, logs: Vec<Value> },
    /// Server → agent: send runtime statistics.
    #[serde(rename = "agent:stats:request")]
    StatsRequest {},
    #[serde(rename = "agent:stats:response", rename_all = "camelCase")]
    StatsResponse { status_code: u16, stats: Value },
    /// Either direction: a message for a channel (HL7, DICOM); this agent has no channels.
    #[serde(rename = "agent:transmit:request", rename_all = "camelCase")]
    TransmitRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        remote: String,
        content_type: String,
        body: String,
    },
    #[serde(rename = "agent:transmit:response", rename_all = "camelCase")]
    TransmitResponse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        remote: String,
        content_type: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_code: Option<u16>,
    },
    /// Either direction: what went wrong, in words.
    #[serde(rename = "agent:error")]
    Error { body: String },
}

const KNOWN_TYPES: &[&str] = &[
    "agent:connect:request",
    "agent:connect:response",
    "agent:heartbeat:request",
    "agent:heartbeat:response",
    "agent:upgrade:request",
    "agent:upgrade:response",
    "agent:reloadconfig:request",
    "agent:reloadconfig:response",
    "agent:logs:request",
    "agent:logs:response",
    "agent:stats:request",
    "agent:stats:response",
    "agent:transmit:request",
    "agent:transmit:response",
    "agent:error",
];

impl Message {
    /// Wraps the message without a callback.
    pub fn plain(self) -> Envelope {
        Envelope { msg: self, callback: None }
    }

    /// Wraps the message with the callback of the request it answers.
    pub fn reply_to(self, callback: Option<Callback>) -> Envelope {
        Envelope { msg: self, callback }
    }

    pub fn error(body: impl Into<String>) -> Message {
        Message::Error { body: body.into() }
    }
}

impl Envelope {
    /// The JSON text of one frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("protocol messages always serialize")
    }

    /// Parses one frame, or says what was wrong with it (and which callback to answer).
    ///
    /// A well-formed message is read in one pass; only a frame that fails it is read again, as a
    /// JSON value, to say what is wrong (the same answer either way: [`Envelope::parse_diagnosed`]
    /// is the reference, and the `wire_server` fuzz target holds them equal).
    pub fn parse(text: &str, max_bytes: usize) -> Result<Envelope, ParseError> {
        if text.len() > max_bytes {
            return Err(ParseError::TooLarge { len: text.len(), max: max_bytes, callback: callback_of(text) });
        }
        // Its type must be text: serde would take a number as a variant's index (`{"type":0}`).
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow)]
            _ty: std::borrow::Cow<'a, str>,
        }
        match serde_json::from_str::<Typed>(text).ok().and_then(|_| serde_json::from_str(text).ok()) {
            Some(env) => Ok(env),
            None => Self::parse_diagnosed(text, max_bytes),
        }
    }

    /// [`Envelope::parse`] by way of a JSON value: the message, or which of its parts is wrong.
    #[doc(hidden)]
    pub fn parse_diagnosed(text: &str, max_bytes: usize) -> Result<Envelope, ParseError> {
        if text.len() > max_bytes {
            return Err(ParseError::TooLarge { len: text.len(), max: max_bytes, callback: callback_of(text) });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Err(ParseError::NotObject);
        };
        let callback = map.get("callback").and_then(Value::as_str).map(Callback::from);
        let ty = match map.get("type") {
            Some(Value::String(ty)) => ty.clone(),
            _ => return Err(ParseError::MissingType { callback }),
        };
        if !KNOWN_TYPES.contains(&ty.as_str()) {
            return Err(ParseError::UnknownType { ty, callback });
        }
        serde_json::from_value(value).map_err(|e| ParseError::Invalid { ty, detail: e.to_string(), callback })
    }
}

/// The longest callback read from a frame too large to read whole: far past any issued.
const MAX_CALLBACK: usize = 256;

/// The callback of a frame too large to read whole, so that its error answers the request it
/// meant to answer: its top-level `callback` read in one pass, nothing else kept.
fn callback_of(text: &str) -> Option<Callback> {
    #[derive(Deserialize)]
    struct Only {
        callback: Option<String>,
    }
    let only: Only = serde_json::from_str(text).ok()?;
    only.callback.filter(|c| c.len() <= MAX_CALLBACK).map(Callback::from)
}

/// Why a frame could not be understood. Each is answered with an `agent:error`; none closes the
/// connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("Message too large: {len} bytes (limit {max})")]
    TooLarge { len: usize, max: usize, callback: Option<Callback> },
    #[error("Invalid JSON: {0}")]
    NotJson(String),
    #[error("Invalid message: expected a JSON object")]
    NotObject,
    #[error("Invalid message: missing 'type'")]
    MissingType { callback: Option<Callback> },
    #[error("Unknown message type: {ty}")]
    UnknownType { ty: String, callback: Option<Callback> },
    #[error("Invalid '{ty}' message: {detail}")]
    Invalid { ty: String, detail: String, callback: Option<Callback> },
}

impl ParseError {
    /// The `agent:error` that answers the bad frame, with its callback when it had one.
    pub fn reply(&self) -> Envelope {
        let callback = match self {
            ParseError::TooLarge { callback, .. }
            | ParseError::MissingType { callback }
            | ParseError::UnknownType { callback, .. }
            | ParseError::Invalid { callback, .. } => callback.clone(),
            _ => None,
        };
        Message::error(self.to_string()).reply_to(callback)
    }
}

/// The answer to a transmit request: this agent runs no channels.
pub fn no_channels_error() -> Message {
    Message::error("This agent has no channels: agent:transmit:request is not supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;

    #[test]
    fn wire_names_match_the_protocol() {
        let cases = [
            (
                Message::ConnectRequest { access_token: "t".into(), agent_id: "a".into() }.plain(),
                r#"{"type":"agent:connect:request","accessToken":"t","agentId":"a"}"#,
            ),
            (Message::ConnectResponse {}.plain(), r#"{"type":"agent:connect:response"}"#),
            (
                Message::HeartbeatResponse { version: "1.4.2".into() }.plain(),
                r#"{"type":"agent:heartbeat:response","version":"1.4.2"}"#,
            ),
            (
                Message::UpgradeResponse { status_code: 200 }.reply_to(Some("Agent/x-1".into())),
                r#"{"type":"agent:upgrade:response","statusCode":200,"callback":"Agent/x-1"}"#,
            ),
            (
                Message::UpgradeRequest { version: None, force: None }.reply_to(Some("c".into())),
                r#"{"type":"agent:upgrade:request","callback":"c"}"#,
            ),
            (Message::error("boom").plain(), r#"{"type":"agent:error","body":"boom"}"#),
        ];
        for (msg, json) in cases {
            assert_eq!(msg.to_json(), json);
            assert_eq!(Envelope::parse(json, MAX).unwrap(), msg);
        }
    }

    #[test]
    fn bad_frames_say_what_is_wrong_and_keep_the_callback() {
        let unknown = Envelope::parse(r#"{"type":"agent:foo","callback":"cb1"}"#, MAX).unwrap_err();
        assert_eq!(
            unknown.reply().to_json(),
            r#"{"type":"agent:error","body":"Unknown message type: agent:foo","callback":"cb1"}"#
        );
        let missing = Envelope::parse(r#"{"type":"agent:heartbeat:response","callback":"cb2"}"#, MAX).unwrap_err();
        let reply = missing.reply();
        assert_eq!(reply.callback.as_ref().map(Callback::as_str), Some("cb2"));
        assert!(missing.to_string().contains("missing field `version`"), "{missing}");
        assert!(matches!(Envelope::parse("{not json", MAX), Err(ParseError::NotJson(_))));
        assert!(matches!(Envelope::parse("[1,2]", MAX), Err(ParseError::NotObject)));
        assert!(matches!(Envelope::parse(r#"{"callback":"x"}"#, MAX), Err(ParseError::MissingType { .. })));
        let big = format!(r#"{{"type":"agent:error","body":"{}"}}"#, "x".repeat(100));
        assert_eq!(Envelope::parse(&big, 50), Err(ParseError::TooLarge { len: big.len(), max: 50, callback: None }));
        // A frame too large still answers the request it meant to: its callback is read.
        let big = format!(r#"{{"type":"agent:fetchlogs:response","logs":"{}","callback":"cb3"}}"#, "x".repeat(100));
        let too_large = Envelope::parse(&big, 50).unwrap_err();
        assert_eq!(too_large.reply().callback.as_ref().map(Callback::as_str), Some("cb3"));
        assert_eq!(too_large.to_string(), format!("Message too large: {} bytes (limit 50)", big.len()));
        let long = format!(r#"{{"callback":"{}","body":"{}"}}"#, "c".repeat(MAX_CALLBACK + 1), "x".repeat(100));
        assert_eq!(Envelope::parse(&long, 50).unwrap_err().reply().callback, None, "a callback no one issued");
    }

    #[test]
    fn the_one_pass_read_and_the_diagnosed_read_agree_on_odd_frames() {
        for text in [
            r#"{"type":"agent:heartbeat:request"}"#,
            r#"{"type":"agent:heartbeat:request","type":"agent:error","body":"x"}"#,
            r#"{"type":"agent:error","body":"x","type":"agent:heartbeat:request"}"#,
            r#"{"type":"agent:heartbeat:request","callback":"a","callback":"b"}"#,
            r#"{"type":"agent:heartbeat:response","version":"1","version":"2"}"#,
            r#"{"type":"agent:heartbeat:request","extra":[1,{"x":null}],"callback":"c"}"#,
            r#"{"type":"agent:heartbeat:request","callback":5}"#,
            r#"{"type":"agent:heartbeat:request","callback":null}"#,
            r#"{"type":"agent:upgrade:request","version":null,"force":true}"#,
            r#"{"type":"agent:upgrade:response","statusCode":-1}"#,
            r#"{"type":"agent:upgrade:response","statusCode":200.0}"#,
            r#"{"type":"agent:stats:response","statusCode":200,"stats":{"a":1e400}}"#,
            r#"{"type":"agent:logs:response","statusCode":200,"logs":[0.1,"\u0000",{}]}"#,
            r#"{"type":"agent:error","body":"\ud800"}"#,
            r#"{"type":"agent:error","body":"x"} "#,
            r#"{"type":"agent:error","body":"x"}x"#,
            r#"{"type":7}"#,
            r#"{"type":0}"#,
            r#"{"type":3,"version":"1"}"#,
            r#"{"type":"agent:heartbeat:\u0072equest"}"#,
            r#"{"type":"agent:heartbeat:request""#,
            "\u{feff}{\"type\":\"agent:heartbeat:request\"}",
        ] {
            assert_eq!(Envelope::parse(text, MAX), Envelope::parse_diagnosed(text, MAX), "{text}");
        }
    }

    #[test]
    fn callbacks_of_any_shape_are_echoed() {
        for cb in ["Agent/123-abc", "agent:cb:host:uuid", ""] {
            let json = format!(r#"{{"type":"agent:stats:request","callback":"{cb}"}}"#);
            assert_eq!(Envelope::parse(&json, MAX).unwrap().callback.as_ref().map(Callback::as_str), Some(cb));
        }
    }
}
