//! `agent-server`'s commands besides serving: [`admin`] (clients and agents, on the store itself,
//! whether or not a server runs), [`credentials`] (listing them, and taking them back), [`audit`]
//! (the audit trail exported as NDJSON), [`rollout`] and [`policy`] (clients of a running
//! server's rollout and update policy APIs).

pub mod admin;
pub mod audit;
pub mod credentials;
pub mod policy;
pub mod rollout;
