//! The records every layer of the server reads and writes, and the pure rules over them: no I/O,
//! no clock. The store keeps them; the fleet, the API and the page work on them.
//!
//! - [`agent`]: an `Agent` resource, its last status, the clients that may call the server.
//! - [`query`]: an `Agent` search; [`fleet`]: the page's fleet queries and answers.
//! - [`result`]: upgrade results and their outcomes.
//! - [`rollout`]: a rollout and its one transition; [`member`]: a member and its one transition;
//!   [`strategy`]: how a rollout proceeds.

pub mod agent;
pub mod fleet;
pub mod member;
pub mod query;
pub mod result;
pub mod rollout;
pub mod strategy;
