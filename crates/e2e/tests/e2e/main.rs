//! End-to-end tests: real `agent` and `agent-server` processes on loopback.

mod agent_add;
mod cluster;
mod cluster_faults;
mod connection;
mod crash;
mod delta;
mod host;
mod medplum;
mod packaging;
mod relay;
mod releases;
mod rest;
mod rollback;
mod rollout;
mod rollout_outages;
mod store;
mod tls_store;
mod trust;
mod upgrade;
mod web;
mod web_metrics;
mod windows;
mod windows_service;
