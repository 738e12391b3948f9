//! The store test suite, on both backends: embedded SQLite, and a real PostgreSQL that the tests
//! start themselves (`edge_agent_e2e::services`). The same calls must give the same answers.

mod guards;
mod results;
mod rollouts;
mod suite;
