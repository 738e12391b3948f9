//! `GET /metrics` (the counters of [`crate::metrics`], with the gauges read fresh from the store,
//! the rollouts and the update policy): on the main listener it needs a viewer's credentials
//! (`api::rules`); `--metrics-listen` serves it without one.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;

use std::collections::HashMap;

use crate::api::app::AppState;
use crate::api::policy_status::code;
use crate::fleet::rollout::engine::RolloutError;
use crate::model::member::Counts;
use crate::store::StoreError;

/// Members by state across the open rollouts, whichever node drives them: their list from the
/// store, their members as the engine holds them (in memory while driven here).
async fn open_members(app: &AppState) -> Result<Counts, StoreError> {
    let mut total = Counts::new();
    for r in app.store.rollouts().await?.into_iter().filter(|r| r.state.is_open()) {
        match app.rollouts.summary(&r.id).await {
            Ok(s) => s.counts.into_iter().for_each(|(s, n)| *total.entry(s).or_default() += n),
            Err(RolloutError::Store(e)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(total)
}

/// The update policy's figures for `/metrics`, from its latest evaluation.
async fn policy(app: &AppState) {
    let snap = match app.policy.snapshot().await {
        Ok(s) => s,
        Err(e) => return tracing::warn!("metrics: update policy: {e}"),
    };
    let Some(snap) = snap else { return app.metrics.policy(&[], &[]) };
    let groups = &snap.stored.policy.groups;
    let mut counts: HashMap<(usize, &'static str), usize> = HashMap::new();
    for (a, st) in snap.facts.iter().zip(&snap.plan.agents) {
        if let Some(g) = a.group {
            *counts.entry((g, code(&st.standing))).or_default() += 1;
        }
    }
    let agents: Vec<(String, &'static str, usize)> =
        counts.into_iter().map(|((g, state), n)| (groups[g].name.clone(), state, n)).collect();
    let states: Vec<(String, &'static str)> =
        snap.plan.groups.iter().zip(groups).map(|(s, g)| (g.name.clone(), s.state.name())).collect();
    app.metrics.policy(&agents, &states);
}

async fn exposition(app: &AppState) -> Response {
    policy(app).await;
    app.hub.statuses_written().await;
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
pub async fn with_token(State(app): State<AppState>) -> Response {
    exposition(&app).await
}

/// `GET /metrics` on the `--metrics-listen` address.
pub async fn open(State(app): State<AppState>) -> Response {
    exposition(&app).await
}
