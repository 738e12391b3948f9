//! The fleet: the update [`policy`], which converges the fleet on a declared target by making
//! rollouts; staged rollouts ([`rollout`]); the upgrade results every `$upgrade` leaves
//! ([`results`]); the store's [`lease`] that lets one node at a time do shared work; and the
//! audit trail's [`retention`].

pub mod lease;
pub mod policy;
pub mod results;
pub mod retention;
pub mod rollout;
