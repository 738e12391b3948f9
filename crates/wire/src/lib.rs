//! What crosses the wire between an agent and its control server (`shared/protocol.md`), written
//! once for both sides so they cannot drift: the messages, and the values they carry that both
//! sides read (a callback, an agent's status, a target version).
//!
//! # Layout
//! Imports point down this list; of the workspace, only `edge-agent-base` is imported.
//! - [`message`]: the messages, one JSON object per WebSocket text frame, and why a frame can
//!   not be read.
//! - [`texts`]: the protocol's error texts that both sides must write alike.
//! - [`callback`]: the callback that routes a reply to its request: built and read only here.
//! - [`status`]: an agent's connection status.
//! - [`reported`]: the version an agent reports about itself: short semver, or invalid.
//! - [`target`]: the version an upgrade asks for (the latest, or an exact one), and the one rule
//!   for reading a version (`1.4.2` or `v1.4.2`).

#![forbid(unsafe_code)]

pub mod callback;
pub mod message;
pub mod reported;
pub mod status;
pub mod target;
pub mod texts;

pub use callback::Callback;
pub use message::{Envelope, Message, ParseError};
pub use reported::ReportedVersion;
pub use status::AgentStatus;
pub use target::{parse_version, Target, VersionError};
