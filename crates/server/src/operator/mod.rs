//! What the operator sees: the web page ([`page`]) and `/metrics` ([`metrics`]).

pub mod metrics;
pub mod page;
