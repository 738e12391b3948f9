//! The agents' connections: their sockets ([`socket`], `/ws/agent`), the live connections and
//! the callbacks that route replies on this node ([`hub`]), and what nodes tell each other
//! ([`bus`]: in-process, or Redis), the loops that keep this node's presence on the bus and send
//! lost requests again ([`presence`]), credentials taken back on every node ([`revocations`]), and when the bus or the store last failed ([`outages`]).

pub mod bus;
pub mod hub;
pub mod outages;
pub mod presence;
pub mod revocations;
pub mod socket;
pub mod sweep;
