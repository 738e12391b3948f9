//! The REST API under `/fhir/R4/`: FHIR `Agent` resources and their operations, and rollouts.
//! [`fhir`] routes `Agent` requests (read, search, create, and the operations in [`ops`] and
//! [`relay`]); [`lifecycle`] changes and removes agents and replaces their credentials,
//! [`clients`] lists, removes, re-keys and re-roles clients; [`revoke`]
//! is OAuth token revocation (RFC 7009); [`rollouts`] serves rollouts; [`policy`] the update
//! policy (its status in [`policy_status`]); [`search`] reads an `Agent` search and writes its
//! Bundle; [`access`] says who calls and [`rules`] what each role may call, [`audit`] records
//! what was done and [`audit_search`] searches it; [`outcome`] writes every answer and error. All of them
//! work with the [`app::AppState`].

pub mod access;
pub mod app;
pub mod audit;
pub mod audit_search;
pub mod clients;
pub mod fhir;
pub mod lifecycle;
pub mod ops;
pub mod outcome;
pub mod policy;
pub mod policy_status;
pub mod relay;
pub mod revoke;
pub mod rollouts;
pub mod rules;
pub mod search;

use axum::routing::{get, post};
use axum::Router;

use app::AppState;

/// The REST API's routes, to be merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/R4/Agent", get(fhir::search).post(fhir::create))
        .route(
            "/fhir/R4/Agent/{id}",
            get(fhir::read).post(fhir::post_type_op).put(lifecycle::update).delete(lifecycle::delete),
        )
        .route("/fhir/R4/Agent/{id}/{op}", get(fhir::instance_op).post(fhir::post_instance_op))
        .route("/oauth2/revoke", post(revoke::revoke))
        .route("/fhir/R4/ClientApplication", get(clients::search))
        .route("/fhir/R4/ClientApplication/{id}", get(clients::read).delete(clients::delete))
        .route("/fhir/R4/ClientApplication/{id}/{op}", post(clients::op))
        .route("/fhir/R4/AuditEvent", get(audit_search::search))
        .route("/fhir/R4/Rollout", get(rollouts::list))
        .route("/fhir/R4/Rollout/{id}", get(rollouts::show))
        .route("/fhir/R4/Rollout/{id}/{op}", post(rollouts::act))
        .route("/fhir/R4/Policy", get(policy::get).put(policy::put))
        .route("/fhir/R4/Policy/{op}", get(policy::op_get).post(policy::op_post))
}
