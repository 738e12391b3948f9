//! End-to-end tests: real `agent` and `agent-server` processes on loopback.

mod connection;
mod packaging;
mod releases;
mod rest;
mod support;
mod upgrade;
