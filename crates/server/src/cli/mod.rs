//! `agent-server`'s commands besides serving: [`admin`] (clients and agents, on the store itself,
//! whether or not a server runs) and [`rollout`] (a client of a running server's rollout API).

pub mod admin;
pub mod rollout;
