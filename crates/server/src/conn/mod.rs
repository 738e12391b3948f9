//! The agents' connections: their sockets ([`socket`], `/ws/agent`), the live connections and
//! the callbacks that route replies on this node ([`hub`]), and what nodes tell each other
//! ([`bus`]: in-process, or Redis).

pub mod bus;
pub mod hub;
pub mod socket;
