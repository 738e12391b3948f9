//! The update policy: one declared target for the fleet, converged group by group in their
//! windows, halting by itself, with the reason for every group and agent. What a policy is and
//! where it stands are the model's (`model::policy`, `model::policy_run`); the store keeps them.
//! Here, imports pointing down the list: [`operate`] is what operators do (set, suspend, resume,
//! clear halts, read), on any node; [`driver`] carries the decisions out with the rollout
//! machinery on the node that drives the rollouts; [`engine`] evaluates and keeps the latest
//! [`engine::Snapshot`]; [`facts`] and [`membership`] gather what the planner is given; [`plan`]
//! decides, a pure function of (policy, fleet, time); [`standing`] says where one agent stands.

pub mod driver;
pub mod engine;
pub mod facts;
pub mod membership;
pub mod operate;
pub mod plan;
pub mod standing;
