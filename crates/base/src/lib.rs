//! edge-agent's base: what every other crate of the workspace needs, and nothing of theirs.
//!
//! # Layout
//! A leaf: it imports no crate of the workspace.
//! - [`build_info`]: the version, target and commit this build was stamped with (`build.rs`).
//! - [`id`]: random identifiers and hex text; [`time`]: FHIR instants; [`fs`]: atomic writes,
//!   durable renames and owner-only files; [`error`]: errors with their causes; [`secret`]:
//!   passwords kept out of messages.
//! - [`backoff`]: jittered exponential backoff for reconnects and retries.
//! - [`tls`]: the one rustls client configuration (system roots, an extra CA).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod build_info;
pub mod error;
pub mod fs;
pub mod id;
pub mod secret;
pub mod time;
pub mod tls;
