//! `GET /metrics` (the counters of [`crate::metrics`], with the gauges read fresh from the store
//! and the rollouts): on the main listener it needs an admin bearer token; `--metrics-listen`
//! serves it without one.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;

use crate::api::access::require_admin;
use crate::api::app::AppState;
use crate::fleet::rollout::engine::RolloutError;
use crate::model::member::{counts, Counts};
use crate::store::StoreError;

/// Members by state across the open rollouts, whichever node drives them: their list from the
/// store, their members as the engine holds them (in memory while driven here).
async fn open_members(app: &AppState) -> Result<Counts, StoreError> {
    let mut total = Counts::new();
    for r in app.store.rollouts().await?.into_iter().filter(|r| r.state.is_open()) {
        match app.rollouts.view(&r.id, |_, members| counts(members)).await {
            Ok(c) => c.into_iter().for_each(|(s, n)| *total.entry(s).or_default() += n),
            Err(RolloutError::Store(e)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(total)
}

async fn exposition(app: &AppState) -> Response {
    let gathered = async { Ok::<_, StoreError>((app.store.fleet_counts().await?, open_members(app).await?)) };
    match gathered.await.map(|(fleet, members)| app.metrics.render(&fleet, &members)) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!("metrics: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable, try again\n").into_response()
        }
    }
}

/// `GET /metrics` on the main listener: admin bearer token required.
pub async fn with_token(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match require_admin(&app, &headers).await {
        Ok(_) => exposition(&app).await,
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics` on the `--metrics-listen` address.
pub async fn open(State(app): State<AppState>) -> Response {
    exposition(&app).await
}
