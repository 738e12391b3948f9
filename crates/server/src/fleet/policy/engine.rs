//! The policy's state on this node, and one evaluation: the policy read from the store, the facts
//! gathered, the planner asked ([`Policies::decide`]), and the result kept as a [`Snapshot`] that
//! the API, the page, `$status` and `/metrics` read. The node that drives the rollouts evaluates
//! continuously and carries the decisions out (`super::driver`); any other node evaluates when
//! asked, read-only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semver::Version;
use tokio::sync::Notify;

use super::facts::{FactsError, Gatherer};
use super::plan::{plan, Input, Plan};
use super::standing::AgentFacts;
use crate::config::PolicyClock;
use crate::conn::hub::Hub;
use crate::fleet::rollout::engine::Rollouts;
use crate::metrics::Metrics;
use crate::model::policy::{self, FieldError, Readers};
use crate::model::policy_run::{Run, Stored};
use crate::model::query::AgentQuery;
use crate::store::policy::PolicyRow;
use crate::store::{Store, StoreError};

/// How an Agent search is read (the rules of the bulk operations, which the API owns).
pub type Selector = fn(&str) -> Result<AgentQuery, String>;

/// How selectors are read: a new policy's strictly, a stored one's as the build that stored it
/// read it (a policy stored before a rule was tightened keeps working).
#[derive(Clone, Copy)]
pub struct Selectors {
    pub new: Selector,
    pub stored: Selector,
}

/// A snapshot this recent is answered as it is (the driving node takes one every second at most).
const FRESH: Duration = Duration::from_secs(2);

/// Why an operator's request about the policy failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no update policy is set: set one with PUT /fhir/R4/Policy (or agent-server policy set FILE)")]
    NotSet,
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("the policy was changed at the same time; read it again and retry")]
    Changed,
    #[error("no group is halted: there is nothing to clear")]
    NotHalted,
    #[error("the stored policy cannot be read ({0}); set it again")]
    Unreadable(#[source] FieldError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot gather the fleet's state: {0}")]
    Facts(#[from] FactsError),
}

/// One evaluation: the policy, where it stands, the facts, and the decision.
pub struct Snapshot {
    pub taken: Instant,
    /// The policy's clock when it was taken.
    pub now: i64,
    pub stored: Stored,
    pub plan: Plan,
    pub facts: Vec<AgentFacts>,
    /// Each agent's index in `facts` and `plan.agents`.
    pub index: Arc<HashMap<Arc<str>, usize>>,
}

impl Snapshot {
    /// Whether anything moves (a group canaries or rolls): looked at again sooner.
    pub fn busy(&self) -> bool {
        use super::plan::GroupState::{Canary, Rolling};
        !self.plan.actions.is_empty() || self.plan.groups.iter().any(|g| matches!(g.state, Canary | Rolling))
    }
}

/// One decision, before it is carried out.
pub(super) struct Decided {
    pub(super) stored: Stored,
    /// The run as the store had it.
    pub(super) stored_run: Run,
    pub(super) agents: Vec<AgentFacts>,
    pub(super) index: Arc<HashMap<Arc<str>, usize>>,
    pub(super) plan: Plan,
    pub(super) now: i64,
}

/// What one evaluation at a time uses and keeps.
#[derive(Default)]
pub(super) struct Inner {
    pub(super) facts: Gatherer,
    /// The policy as last read, parsed (by revision).
    parsed: Option<(i64, Stored)>,
}

pub struct Policies {
    pub(super) store: Arc<dyn Store>,
    pub(super) hub: Arc<Hub>,
    pub(super) rollouts: Arc<Rollouts>,
    pub(super) clock: PolicyClock,
    /// Between evaluations while nothing moves.
    pub(super) every: Duration,
    pub(super) selectors: Selectors,
    pub(super) inner: tokio::sync::Mutex<Inner>,
    pub(super) last: Mutex<Option<Arc<Snapshot>>>,
    pub(super) wake: Notify,
    /// Where the evaluations that drove the policy are counted and timed.
    pub(super) metrics: Arc<Metrics>,
}

/// The policy as stored, read back (its target is a version: `latest` was resolved when set).
pub fn stored_of(row: &PolicyRow, selector: Selector) -> Result<Stored, PolicyError> {
    let no_latest = || Err::<Version, String>("latest is resolved when the policy is set".into());
    let readers = Readers { selector: &selector, latest: &no_latest };
    let policy = policy::parse(&row.spec, &readers).map_err(PolicyError::Unreadable)?;
    Ok(Stored {
        policy,
        generation: row.generation,
        set_at: row.set_at,
        clears: row.clears,
        from_latest: row.from_latest,
        revision: row.revision,
    })
}

impl Inner {
    fn stored(&mut self, row: &PolicyRow, selector: Selector) -> Result<Stored, PolicyError> {
        if let Some((rev, s)) = &self.parsed {
            if *rev == row.revision {
                return Ok(s.clone());
            }
        }
        let s = stored_of(row, selector)?;
        self.parsed = Some((row.revision, s.clone()));
        Ok(s)
    }
}

impl Policies {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        rollouts: Arc<Rollouts>,
        (clock, every): (PolicyClock, Duration),
        selectors: Selectors,
        metrics: Arc<Metrics>,
    ) -> Arc<Policies> {
        Arc::new(Policies {
            store,
            hub,
            rollouts,
            clock,
            every,
            selectors,
            inner: Default::default(),
            last: Mutex::default(),
            wake: Notify::new(),
            metrics,
        })
    }

    /// The policy's clock.
    pub fn clock(&self) -> PolicyClock {
        self.clock
    }

    /// Reads the policy, gathers the facts and asks the planner; None when no policy is set.
    pub(super) async fn decide(&self, inner: &mut Inner) -> Result<Option<Decided>, PolicyError> {
        let Some(row) = self.store.policy().await? else {
            *self.last.lock().unwrap() = None;
            return Ok(None);
        };
        let stored = inner.stored(&row, self.selectors.stored)?;
        let run = row.run.aligned(&stored);
        let parts = (&self.store, self.hub.as_ref(), self.rollouts.as_ref());
        let gathered = inner.facts.gather(parts, &stored, &run, self.clock).await?;
        let now = self.clock.now();
        let input = Input {
            stored: &stored,
            run: &run,
            rollouts: &gathered.rollouts,
            strays: &gathered.strays,
            agents: &gathered.agents,
            now,
        };
        let plan = plan(&input);
        let (agents, index) = (gathered.agents, gathered.index);
        Ok(Some(Decided { stored, stored_run: row.run, agents, index, plan, now }))
    }

    /// Keeps a decision as the latest snapshot.
    pub(super) fn publish(&self, d: Decided) -> Arc<Snapshot> {
        let snapshot = Arc::new(Snapshot {
            taken: Instant::now(),
            now: d.now,
            stored: d.stored,
            plan: d.plan,
            facts: d.agents,
            index: d.index,
        });
        *self.last.lock().unwrap() = Some(snapshot.clone());
        snapshot
    }

    /// Evaluates the policy without acting on it.
    async fn evaluate(&self) -> Result<Option<Arc<Snapshot>>, PolicyError> {
        let mut inner = self.inner.lock().await;
        Ok(self.decide(&mut inner).await?.map(|d| self.publish(d)))
    }

    /// The latest evaluation, at most two seconds old (evaluated now, read-only, when older).
    pub async fn snapshot(&self) -> Result<Option<Arc<Snapshot>>, PolicyError> {
        if let Some(s) = self.last.lock().unwrap().as_ref().filter(|s| s.taken.elapsed() < FRESH) {
            return Ok(Some(s.clone()));
        }
        self.evaluate().await
    }

    /// The latest evaluation as it is, however old (None before the first).
    pub fn last(&self) -> Option<Arc<Snapshot>> {
        self.last.lock().unwrap().clone()
    }

    /// Something changed (an operator's request): evaluate again now, and answer nothing older.
    pub fn poke(&self) {
        *self.last.lock().unwrap() = None;
        self.wake.notify_one();
    }
}

/// The run as the store had it, with `groups` paused where a resume is still to come.
pub(super) fn with_pending_resumes(run: &Run, resumed: &[usize]) -> Run {
    let mut r = run.clone();
    for &g in resumed {
        r.groups[g].paused = true;
    }
    r
}
