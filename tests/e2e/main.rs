//! End-to-end tests: real `agent` and `agent-server` processes on loopback.

mod connection;
mod host;
mod packaging;
mod releases;
mod rest;
mod rollback;
mod support;
mod upgrade;
mod web;
mod web_metrics;
