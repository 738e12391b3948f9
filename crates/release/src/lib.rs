//! The release format of edge-agent (protocol.md §3.2): what a release directory holds, how an
//! agent reads it, and how `agent release` writes it. Plain static files that any web server,
//! bucket or mirror can host.
//!
//! # Layout
//! Imports point down this list; of the workspace, `edge-agent-wire` (versions) and
//! `edge-agent-base` are imported.
//! - [`publish`]: `agent release publish`: assets, checksums, signatures, manifests, `latest.json`
//!   and `all.json`, written atomically; [`variants`]: the zstd copy and patches beside an asset;
//!   [`keys`]: minisign key pairs.
//! - [`bundle`]: one version of a release directory in one file, for hosts with no release
//!   source: `agent release bundle` writes it, `agent upgrade --from-file` reads it.
//! - [`header`]: the platform an executable was built for, from its own header.
//! - [`source`]: which file an agent downloads for an asset (a patch, the compressed copy, the
//!   asset), a pure decision.
//! - [`signature`]: the signed trusted comment and its verification.
//! - [`manifest`]: a manifest's fields, its checks, and the asset for a platform.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod header;
pub mod keys;
pub mod manifest;
pub mod publish;
pub mod signature;
pub mod source;
pub mod variants;
