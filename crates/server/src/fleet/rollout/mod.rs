//! Fleet rollouts: staged, self-halting upgrade campaigns that survive restarts and reach offline
//! agents. What a rollout is, and its members' one transition, are the model's
//! (`model::rollout`, `model::member`, `model::strategy`); the store keeps them. Here:
//! [`plan`] decides each next step as a pure function; [`engine`] holds the rollouts driven on
//! this node; [`driver`] runs them (decides, writes, asks) on the node that holds the store's
//! lease ([`leader`]); [`answers`] files the agents' answers; [`operate`] is what operators do
//! (start, pause, resume, cancel, read).

pub mod answers;
pub mod driver;
pub mod engine;
pub mod leader;
pub mod operate;
pub mod plan;
