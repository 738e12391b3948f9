//! Recording the audit trail: every call that changes something or asks an agent something, and
//! every refused call, leaves exactly one event. [`super::rules::guard`] opens an [`Audit`] for the
//! request (who, from where, on what) and writes it when the answer is known, unless the handler
//! wrote it in the transaction of its change ([`in_transaction`]); handlers add what only they
//! know ([`entities`], [`subtype`], [`actor`]) through a task-local, without passing it along.
//!
//! Calls refused before their caller is known (a 401, a cross-site or throttled request) are the
//! one thing an attacker without credentials can make the server write: at most
//! [`ANONYMOUS_PER_SECOND`] of them a second are written one by one, and the next one written says
//! how many more there were (so a flood costs no more than that in writes, and the trail still
//! counts every refusal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limits::throttle::gcra;
use crate::model::audit::{AuditRecord, Outcome, Ref, LOGIN, REST};
pub use crate::store::audit::event;
use crate::store::db::Stmt;
use crate::store::Store;

tokio::task_local! {
    static CURRENT: Arc<Audit>;
}

/// The event of one request, filled in as it is served.
#[derive(Debug)]
pub struct Audit {
    record: Mutex<AuditRecord>,
    /// Written in the transaction of the change; only a failure is left to write.
    in_tx: AtomicBool,
}

/// Which endpoints are recorded, as (subtype, action); reads are not, refusals always are.
pub fn audited(method: &str, key: &str) -> Option<(&'static str, char)> {
    let op = key.rsplit('/').next().unwrap_or_default().trim_start_matches('$');
    let instance = key.contains("{id}/");
    Some(match (method, key) {
        ("POST", "/oauth2/revoke") => ("token-revoke", 'D'),
        ("POST", "/fhir/R4/Agent") => ("agent-create", 'C'),
        ("PUT", "/fhir/R4/Agent/{id}") => ("agent-update", 'U'),
        ("DELETE", "/fhir/R4/Agent/{id}") => ("agent-remove", 'D'),
        ("DELETE", "/fhir/R4/ClientApplication/{id}") => ("client-remove", 'D'),
        ("POST", "/fhir/R4/ClientApplication/{id}/$rotate-secret") => ("client-rotate", 'U'),
        ("POST", "/fhir/R4/ClientApplication/{id}/$set-role") => ("client-role", 'U'),
        (_, k) if k.starts_with("/fhir/R4/Rollout/{id}/") || k.starts_with("/ui/api/rollouts/{id}/") => {
            (crate::model::rollout::Action::by_operator(op)?.audit_subtype(), 'U')
        }
        ("POST", "/ui/api/rollouts") => ("rollout-create", 'C'),
        ("PUT", "/fhir/R4/Policy") => ("policy-set", 'U'),
        ("POST", k) if k.starts_with("/fhir/R4/Policy/") || k.starts_with("/ui/api/policy/") => match op {
            "suspend" => ("policy-suspend", 'U'),
            "resume" => ("policy-resume", 'U'),
            "halt-clear" => ("policy-halt-clear", 'U'),
            _ => return None,
        },
        ("POST", "/ui/api/upgrade") => ("upgrade", 'E'),
        ("POST", "/ui/api/login") => ("sign-in", 'E'),
        ("POST", "/ui/api/logout") => ("sign-out", 'E'),
        ("GET", "/ui/api/agents/{id}/logs") => ("fetch-logs", 'E'),
        ("GET", "/ui/api/agents/{id}/stats") => ("stats", 'E'),
        (_, k) if k.starts_with("/fhir/R4/Agent/") => match op {
            "upgrade" if instance => ("upgrade", 'E'),
            "upgrade" => ("bulk-upgrade", 'E'),
            "reload-config" => ("reload-config", 'E'),
            "fetch-logs" => ("fetch-logs", 'E'),
            "stats" => ("stats", 'E'),
            "push" => ("push", 'E'),
            "rotate-secret" => ("agent-rotate", 'U'),
            _ => return None,
        },
        _ => return None,
    })
}

impl Audit {
    pub fn new(record: AuditRecord) -> Arc<Audit> {
        Arc::new(Audit { record: Mutex::new(record), in_tx: AtomicBool::new(false) })
    }

    /// Runs `f` with this event as the current one.
    pub async fn scope<F: std::future::Future>(self: Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// Ends the event with the answer's status and writes it, unless its handler already did.
    pub async fn finish(&self, store: &dyn Store, status: u16, why: Option<String>) {
        let outcome = Outcome::of_status(status);
        if self.in_tx.load(Ordering::Relaxed) && outcome == Outcome::Success {
            return;
        }
        let record = {
            let mut r = self.record.lock().unwrap();
            r.outcome = outcome;
            if r.description.is_empty() || outcome != Outcome::Success {
                r.description = why.unwrap_or_else(|| status_text(status));
            }
            // Refused before its caller was known (a 401, a cross-site or throttled request): the
            // events anyone can make the server write, budgeted. (Handlers that refuse a caller
            // they know name it first, with `actor`.) A known caller's refusals are budgeted for
            // each caller: a viewer's or an agent's token looping on a 403 wrote an event a call,
            // kept for a year. Its other failures are each written, as every action is.
            let refused = matches!(status, 401 | 403 | 405 | 429);
            if (r.who.is_none() && status >= 400) || refused {
                let known = r.who.as_ref().and_then(|who| FAILED.admit(&who.reference, Instant::now()));
                let (admitted, whose) = match known {
                    Some(admitted) => (admitted, "of this caller refused"),
                    None => (ANONYMOUS.admit(), "refused without credentials"),
                };
                match admitted {
                    None => return,
                    Some(0) => {}
                    Some(more) => {
                        r.description +=
                            &format!(" (and {more} more calls {whose} before it, not recorded one by one)");
                    }
                }
            }
            r.clone()
        };
        if let Err(e) = store.record_audit(&[record]).await {
            tracing::error!("cannot record an audit event: {e}");
        }
    }
}

/// Calls refused without credentials written one by one, at most, each second.
pub const ANONYMOUS_PER_SECOND: u64 = 50;

/// The budget of [`ANONYMOUS_PER_SECOND`]: the current second, the events written in it, and the
/// refusals not written since the last one that was.
struct Budget {
    second: AtomicU64,
    written: AtomicU64,
    skipped: AtomicU64,
}

static ANONYMOUS: Budget = Budget { second: AtomicU64::new(0), written: AtomicU64::new(0), skipped: AtomicU64::new(0) };

impl Budget {
    /// `Some(n)`: write this one, noting `n` refusals skipped before it; `None`: skip it.
    fn admit(&self) -> Option<u64> {
        self.admit_at(edge_agent_base::time::now_ms() as u64 / 1000)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) >= ANONYMOUS_PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// A known caller's refused calls written one by one: this many at once, then one a second.
pub const FAILED_BURST: u32 = 60;
/// Callers whose budget is remembered at most; past it, those whose budget is whole again are
/// forgotten.
const FAILED_CALLERS: usize = 10_000;

/// Each known caller's budget of refused calls: when its next one is written without waiting
/// ([`gcra`]'s arrival time), and how many were not written since the last that was.
struct Failed(std::sync::LazyLock<Mutex<HashMap<String, (Instant, u64)>>>);

static FAILED: Failed = Failed(std::sync::LazyLock::new(Mutex::default));

impl Failed {
    /// `Some(Some(n))`: write this one, noting `n` refused calls of `who` skipped before it;
    /// `Some(None)`: skip it; `None`: no room for another caller (the anonymous budget decides:
    /// callers are named by what they claimed, as a refused sign-in's client id).
    fn admit(&self, who: &str, now: Instant) -> Option<Option<u64>> {
        let mut callers = self.0.lock().unwrap();
        if callers.len() >= FAILED_CALLERS && !callers.contains_key(who) {
            callers.retain(|_, (at, skipped)| *at > now || *skipped > 0);
            if callers.len() >= FAILED_CALLERS {
                return None;
            }
        }
        let (at, skipped) = callers.entry(who.to_string()).or_insert((now, 0));
        Some(match gcra(Some(*at), now, Duration::from_secs(1), FAILED_BURST) {
            Ok(next) => {
                *at = next;
                Some(std::mem::take(skipped))
            }
            Err(_) => {
                *skipped += 1;
                None
            }
        })
    }
}

impl Audit {
    /// The request turned out refused (by its handler): recorded as such.
    pub fn refused(&self) {
        let mut r = self.record.lock().unwrap();
        (r.subtype, r.action) = ("refused".into(), 'R');
    }
}

fn status_text(status: u16) -> String {
    let reason = axum::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
    format!("{status} {}", reason.unwrap_or(""))
}

/// Longest reason of a failed call recorded, in characters (the rest is cut, with an ellipsis).
pub const REASON_CHARS: usize = 1_000;

/// The description of a call that failed or was refused with this answer: its status, and what
/// the caller was told (`409 Conflict: rollout 4 is cancelled: …`), cut at [`REASON_CHARS`], its
/// control and direction-changing characters escaped (parts of it may be the caller's own text),
/// and not saying the status twice (`403 Forbidden: this needs …`, not `… Forbidden: Forbidden:`).
pub fn failed_because(status: u16, said: &str) -> String {
    let head = status_text(status);
    let reason = head.split_once(' ').map_or("", |(_, r)| r);
    let said = said.strip_prefix(reason).and_then(|rest| rest.strip_prefix(": ")).unwrap_or(said);
    let mut shown = String::with_capacity(said.len().min(REASON_CHARS * 4));
    for c in said.chars().take(REASON_CHARS) {
        let turns = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || turns {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    if said.chars().nth(REASON_CHARS).is_some() {
        shown.push('…');
    }
    format!("{head}: {shown}")
}

fn with_current(f: impl FnOnce(&mut AuditRecord)) {
    let _ = CURRENT.try_with(|a| f(&mut a.record.lock().unwrap()));
}

/// The agents or rollout the current request acts on (replacing what the path said).
pub fn entities(refs: impl IntoIterator<Item = Ref>) {
    let refs: Vec<Ref> = refs.into_iter().collect();
    with_current(|r| r.entities = refs);
}

/// What the current request turned out to be (a `$upgrade` that starts a rollout).
pub fn subtype(subtype: &str, action: char) {
    with_current(|r| (r.subtype, r.action) = (subtype.into(), action));
}

/// Who made the current request, when only its handler knows (it authenticated it).
pub fn actor(who: Ref) {
    with_current(|r| r.who = Some(who));
}

/// The statements that write the current event as a success, to run in the transaction of the
/// change it records; a failure of that transaction is recorded after (and a failure after it
/// commits is refused by the event's key: the success stays).
pub fn in_transaction(description: &str) -> Vec<Stmt> {
    in_transaction_on(None, description)
}

/// [`in_transaction`] of a change that makes what it acts on: the success names `entities`, a
/// failure of the transaction does not (they were never made).
pub fn in_transaction_on(entities: Option<Vec<Ref>>, description: &str) -> Vec<Stmt> {
    CURRENT
        .try_with(|a| {
            a.in_tx.store(true, Ordering::Relaxed);
            let mut r = a.record.lock().unwrap();
            (r.outcome, r.description) = (Outcome::Success, description.to_string());
            let mut written = r.clone();
            if let Some(entities) = entities {
                written.entities = entities;
            }
            crate::store::audit::record(&[written])
        })
        .unwrap_or_default()
}

/// Records an authentication (a token request, a sign-in) outside any request's event.
pub async fn login(store: &dyn Store, subtype: &str, who: Ref, address: Option<String>, outcome: Outcome, why: &str) {
    let mut e = event(LOGIN, subtype, 'E', Some(who), address);
    (e.outcome, e.description) = (outcome, why.to_string());
    if let Err(err) = store.record_audit(&[e]).await {
        tracing::error!("cannot record an audit event: {err}");
    }
}

/// A REST event's kind.
pub const KIND: &str = REST;

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_failed_calls_reason_is_its_status_and_what_it_was_told_cut_at_the_limit() {
        assert_eq!(failed_because(409, "rollout 4 is cancelled"), "409 Conflict: rollout 4 is cancelled");
        let long = "é".repeat(REASON_CHARS + 5);
        let cut = failed_because(400, &long);
        assert_eq!(cut, format!("400 Bad Request: {}…", "é".repeat(REASON_CHARS)));
        assert_eq!(failed_because(400, &long[..REASON_CHARS * 2]).chars().last(), Some('é'), "at the limit, not cut");
        assert_eq!(
            failed_because(403, "Forbidden: this needs the viewer role"),
            "403 Forbidden: this needs the viewer role",
            "the status said once"
        );
        assert_eq!(
            failed_because(400, "Unknown parameter: a\nb\u{202e}c\u{7f}"),
            "400 Bad Request: Unknown parameter: a\\nb\\u{202e}c\\u{7f}"
        );
    }

    #[test]
    fn a_flood_of_anonymous_refusals_is_written_at_most_the_budget_a_second_and_counted() {
        let b = Budget { second: AtomicU64::new(0), written: AtomicU64::new(0), skipped: AtomicU64::new(0) };
        let first: Vec<_> = (0..ANONYMOUS_PER_SECOND + 30).map(|_| b.admit_at(7)).collect();
        assert_eq!(first.iter().filter(|a| a.is_some()).count() as u64, ANONYMOUS_PER_SECOND);
        assert!(first.iter().take(ANONYMOUS_PER_SECOND as usize).all(|a| *a == Some(0)));
        // The next second: the first one written carries the 30 skipped, the next ones none.
        assert_eq!((b.admit_at(8), b.admit_at(8)), (Some(30), Some(0)));
    }

    #[test]
    fn a_known_callers_refused_calls_are_written_in_a_burst_then_one_a_second_and_counted() {
        let f = Failed(std::sync::LazyLock::new(Mutex::default));
        let t0 = Instant::now();
        let burst: Vec<_> = (0..FAILED_BURST + 25).map(|_| f.admit("ClientApplication/v", t0).unwrap()).collect();
        assert_eq!(burst.iter().filter(|a| a.is_some()).count() as u32, FAILED_BURST);
        assert!(burst.iter().take(FAILED_BURST as usize).all(|a| *a == Some(0)));
        assert_eq!(f.admit("ClientApplication/other", t0), Some(Some(0)), "each caller has its own");
        // A second later, one more is written, carrying the 25 skipped; the next waits again.
        let t1 = t0 + Duration::from_secs(1);
        let twice = (f.admit("ClientApplication/v", t1), f.admit("ClientApplication/v", t1));
        assert_eq!(twice, (Some(Some(25)), Some(None)));
        assert_eq!(f.admit("ClientApplication/v", t1 + Duration::from_secs(1)), Some(Some(1)));
        // Full of callers still waiting: a new one is left to the anonymous budget.
        for i in 0..FAILED_CALLERS {
            for _ in 0..=FAILED_BURST {
                f.admit(&format!("c{i}"), t0);
            }
        }
        assert_eq!(f.admit("ClientApplication/new", t0), None);
        assert!(f.0.lock().unwrap().len() <= FAILED_CALLERS);
    }
}
