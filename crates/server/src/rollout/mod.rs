//! Fleet rollouts: staged, self-halting upgrade campaigns that survive restarts and reach offline
//! agents. [`model`] says what a rollout is; [`plan`] decides each next step as a pure function;
//! [`strategy`] reads and checks the operator's parameters; the server's store keeps them
//! (`store::rollouts`); [`driver`] runs them (decides, writes, asks) on the node that holds the
//! store's lease ([`leader`]); [`answers`] files the agents' answers; [`operate`] is what operators
//! do (start, pause, resume, cancel, read); [`api`] serves that over REST; [`cli`] is
//! `agent-server rollout`, its client.

pub mod answers;
pub mod api;
pub mod cli;
pub mod driver;
pub mod leader;
pub mod model;
pub mod operate;
pub mod plan;
pub mod strategy;

pub use driver::Rollouts;
