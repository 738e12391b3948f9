//! Fleet rollouts: staged, self-halting upgrade campaigns that survive restarts and reach offline
//! agents. [`model`] says what a rollout is; [`plan`] decides each next step as a pure function;
//! [`strategy`] reads and checks the operator's parameters; [`store`] keeps rollouts in the
//! server's database; [`driver`] runs them (asks agents, files answers); [`api`] serves them over
//! REST; [`cli`] is `agent-server rollout`, a client of that API.

pub mod api;
pub mod cli;
pub mod driver;
pub mod model;
pub mod plan;
pub mod store;
pub mod strategy;

pub use driver::Rollouts;
