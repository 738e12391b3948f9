//! The REST API under `/fhir/R4/`: FHIR `Agent` resources and their operations, and rollouts.
//! [`fhir`] routes `Agent` requests (read, search, create, and the operations in [`ops`] and
//! [`relay`]); [`rollouts`] serves rollouts; [`search`] reads an `Agent` search and writes its
//! Bundle; [`access`] says who may call; [`outcome`] writes every answer and error. All of them
//! work with the [`app::AppState`].

pub mod access;
pub mod app;
pub mod fhir;
pub mod ops;
pub mod outcome;
pub mod relay;
pub mod rollouts;
pub mod search;

use axum::routing::{get, post};
use axum::Router;

use app::AppState;

/// The REST API's routes, to be merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/R4/Agent", get(fhir::search).post(fhir::create))
        .route("/fhir/R4/Agent/{id}", get(fhir::read).post(fhir::post_type_op))
        .route("/fhir/R4/Agent/{id}/{op}", get(fhir::instance_op).post(fhir::post_instance_op))
        .route("/fhir/R4/Rollout", get(rollouts::list))
        .route("/fhir/R4/Rollout/{id}", get(rollouts::show))
        .route("/fhir/R4/Rollout/{id}/{op}", post(rollouts::act))
}
