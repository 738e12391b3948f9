//! `GET /ui/api/events`: Server-Sent Events to the page, pushed as they happen: each upgrade
//! result (`result`), each change of an agent's status or version (`status`), each change of
//! a rollout's state, wave, counts or events (`rollout`, checked every second), and each change
//! of the update policy's status (`policy`, checked every second). The stream ends
//! with a `session` event when the session expires or is signed out, so the page returns to
//! sign-in.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::policy;
use super::rollouts::summary;
use super::sign_in::SignedIn;
use crate::api::app::AppState;
use crate::fleet::results::Event as ResultEvent;
use crate::model::agent::StatusRow;

/// How often the stream checks that its session still stands, and looks for rollout changes.
const CHECK: Duration = Duration::from_secs(1);

struct Feed {
    app: AppState,
    session: String,
    results: Receiver<ResultEvent>,
    status: Receiver<(String, StatusRow)>,
    tick: tokio::time::Interval,
    /// What was last told of each rollout.
    rollouts: HashMap<String, Value>,
    /// Rollout changes found at the last tick, not sent yet.
    queued: Vec<Value>,
    /// What was last told of the update policy.
    policy: Option<Value>,
    done: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if let Some(r) = self.queued.pop() {
            return Some(Event::default().event("rollout").data(r.to_string()));
        }
        loop {
            tokio::select! {
                r = self.results.recv() => match r {
                    Ok(ResultEvent::Result { result, status, version, since }) => {
                        let data = json!({"result": result, "state": status, "version": version, "since": since});
                        return Some(Event::default().event("result").data(data.to_string()));
                    }
                    Err(RecvError::Lagged(n)) => return Some(lagged(n)),
                    Err(RecvError::Closed) => return None,
                },
                s = self.status.recv() => match s {
                    Ok((id, row)) => {
                        let data = json!({"id": id, "state": row.status.as_str(), "version": row.version, "since": row.updated});
                        return Some(Event::default().event("status").data(data.to_string()));
                    }
                    Err(RecvError::Lagged(n)) => return Some(lagged(n)),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.tick.tick() => {
                    if !self.app.sessions.alive(&self.session).await {
                        self.done = true;
                        return Some(Event::default().event("session").data("ended"));
                    }
                    self.queued = self.rollout_changes().await;
                    if let Some(p) = policy::changed(&self.app, &mut self.policy).await {
                        return Some(Event::default().event("policy").data(p.to_string()));
                    }
                    if let Some(r) = self.queued.pop() {
                        return Some(Event::default().event("rollout").data(r.to_string()));
                    }
                }
                _ = self.app.shutdown.cancelled() => return None,
            }
        }
    }
}

impl Feed {
    /// The rollouts whose summary changed since the last look (all of them, the first time).
    /// Only the live rollouts, and those that were live at the last look (to tell how they
    /// ended), are read: ended rollouts do not change.
    async fn rollout_changes(&mut self) -> Vec<Value> {
        let Ok(mut ids) = self.app.store.live_rollout_ids().await else { return Vec::new() };
        let was_live = self.rollouts.iter().filter(|(_, v)| matches!(v["state"].as_str(), Some("active" | "paused")));
        ids.extend(was_live.map(|(id, _)| id.clone()));
        ids.sort();
        ids.dedup();
        let mut changed = Vec::new();
        for id in ids {
            let Ok(now) = self.app.rollouts.summary(&id).await.map(|s| summary(&s.rollout, &s.counts)) else {
                continue;
            };
            if self.rollouts.get(&id) != Some(&now) {
                self.rollouts.insert(id, now.clone());
                changed.push(now);
            }
        }
        changed
    }
}

/// Events were dropped because the page read too slowly: it should refresh what it shows.
fn lagged(n: u64) -> Event {
    Event::default().event("lagged").data(n.to_string())
}

async fn feed(app: AppState, session: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut f = Feed {
        results: app.results.subscribe(),
        status: app.hub.subscribe(),
        tick,
        rollouts: HashMap::new(),
        queued: Vec::new(),
        policy: None,
        app,
        session,
        done: false,
    };
    // What is known now is no news: only later changes are sent.
    f.rollout_changes().await;
    policy::changed(&f.app, &mut f.policy).await;
    stream::unfold(f, |mut f| async move { f.next().await.map(|e| (Ok(e), f)) })
}

pub async fn events(State(app): State<AppState>, who: SignedIn) -> impl IntoResponse {
    Sse::new(feed(app, who.session_id().to_string()).await).keep_alive(KeepAlive::default())
}
