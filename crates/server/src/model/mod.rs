//! The records every layer of the server reads and writes, and the pure rules over them: no I/O,
//! no clock. The store keeps them; the fleet, the API and the page work on them.
//!
//! - [`access`]: the roles of clients and what an endpoint needs of its caller.
//! - [`audit`]: an audit event and its FHIR `AuditEvent`, and a search of them.
//! - [`agent`]: an `Agent` resource, its last status, the clients that may call the server.
//! - [`query`]: an `Agent` search; [`fleet`]: the page's fleet queries and answers.
//! - [`result`]: upgrade results and their outcomes.
//! - [`rollout`]: a rollout and its one transition; [`member`]: a member and its one transition;
//!   [`strategy`]: how a rollout proceeds; [`window`]: a maintenance window (rollouts and the
//!   policy); [`failure`]: which failures are definite.
//! - [`policy`]: the update policy as an operator declares it; [`policy_run`]: where the policy
//!   stands (its groups' progress, each agent's attempts) and the rules that move it.
//! - [`revocation`]: what every node must forget or close when credentials are taken back.

pub mod access;
pub mod agent;
pub mod audit;
pub mod failure;
pub mod fleet;
pub mod member;
pub mod policy;
pub mod policy_run;
pub mod query;
pub mod result;
pub mod revocation;
pub mod rollout;
pub mod strategy;
pub mod window;
