//! `GET /ui/api/events`: Server-Sent Events to the page, pushed as they happen: each upgrade
//! result (`result`) and each change of an agent's status or version (`status`). The stream ends
//! with a `session` event when the session expires or is signed out, so the page returns to
//! sign-in.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use crate::server::db::StatusRow;
use crate::server::results::Event as ResultEvent;
use crate::server::session::SignedIn;
use crate::server::AppState;

/// How often a quiet stream checks that its session still stands.
const SESSION_CHECK: Duration = Duration::from_secs(1);

struct Feed {
    app: AppState,
    session: String,
    results: Receiver<ResultEvent>,
    status: Receiver<(String, StatusRow)>,
    done: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            tokio::select! {
                r = self.results.recv() => match r {
                    Ok(ResultEvent::Result { result, status, version }) => {
                        let data = json!({"result": result, "state": status, "version": version});
                        return Some(Event::default().event("result").data(data.to_string()));
                    }
                    Err(RecvError::Lagged(n)) => return Some(lagged(n)),
                    Err(RecvError::Closed) => return None,
                },
                s = self.status.recv() => match s {
                    Ok((id, row)) => {
                        let data = json!({"id": id, "state": row.status, "version": row.version, "since": row.updated});
                        return Some(Event::default().event("status").data(data.to_string()));
                    }
                    Err(RecvError::Lagged(n)) => return Some(lagged(n)),
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(SESSION_CHECK) => {
                    if !self.app.sessions.alive(&self.session) {
                        self.done = true;
                        return Some(Event::default().event("session").data("ended"));
                    }
                }
                _ = self.app.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Events were dropped because the page read too slowly: it should refresh what it shows.
fn lagged(n: u64) -> Event {
    Event::default().event("lagged").data(n.to_string())
}

fn feed(app: AppState, session: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let f = Feed { results: app.results.subscribe(), status: app.hub.subscribe(), app, session, done: false };
    stream::unfold(f, |mut f| async move { f.next().await.map(|e| (Ok(e), f)) })
}

pub async fn events(State(app): State<AppState>, who: SignedIn) -> impl IntoResponse {
    Sse::new(feed(app, who.session_id().to_string())).keep_alive(KeepAlive::default())
}
