//! The fleet: staged rollouts ([`rollout`]), the upgrade results every `$upgrade` leaves
//! ([`results`]), and the store's [`lease`] that lets one node at a time do shared work.

pub mod lease;
pub mod results;
pub mod rollout;
