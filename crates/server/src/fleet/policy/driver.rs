//! The policy driven: on the node that holds the rollouts' lease (the one that drives every
//! rollout), the policy is evaluated continuously, a quarter of a second apart while a group
//! canaries or rolls, else every second (`--policy-every-ms`, for benchmarks), and each decision
//! carried out with the rollout machinery. Nothing is asked here: the rollouts ask, and their members' results come back as
//! records. Order matters for a crash at any point: the results of an ended rollout are recorded
//! before the run lets it go; a pause is recorded before it is made, a resume after; a rollout is
//! made before the run records it (a crash in between leaves a tagged rollout, found again).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::engine::{with_pending_resumes, Inner, Policies, PolicyError, Snapshot};
use super::facts::tag;
use super::plan::{Action, Plan};
use super::standing::AgentFacts;
use crate::fleet::rollout::engine::RolloutError;
use crate::fleet::rollout::operate::NewRollout;
use crate::model::agent::AgentRow;
use crate::model::audit::{the_server, AuditRecord, Ref, REST};
use crate::model::policy_run::{fold, Record, Run, Stored};
use crate::model::rollout::{Action as RolloutAction, Rollout};

/// Between evaluations while a group canaries or rolls.
const BUSY: Duration = Duration::from_millis(250);
/// After an evaluation that acted.
const AGAIN: Duration = Duration::from_millis(10);
/// Evaluations in a row that may be followed by [`AGAIN`].
const AGAIN_AT_MOST: u32 = 3;
/// Who the policy's rollouts' events name.
const WHO: &str = "the update policy";

impl Policies {
    /// Evaluates and drives the policy while this node drives the rollouts, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut quick = 0;
        loop {
            let mut pause = self.every;
            if self.rollouts.driving() {
                let started = Instant::now();
                let step = self.step().await;
                if let Ok(Some(_)) = &step {
                    self.metrics.policy_evaluated(started.elapsed());
                }
                match step {
                    // What was just done (results recorded, a rollout made) is looked at at once,
                    // a few times in a row at most: an action that keeps failing waits its turn.
                    Ok(Some(s)) if !s.plan.actions.is_empty() && quick < AGAIN_AT_MOST => pause = AGAIN,
                    Ok(Some(s)) if s.busy() || !s.plan.actions.is_empty() => pause = BUSY,
                    Ok(_) => {}
                    Err(e) => tracing::warn!("update policy: {e}"),
                }
                quick = if pause == AGAIN { quick + 1 } else { 0 };
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One evaluation, carried out.
    async fn step(&self) -> Result<Option<Arc<Snapshot>>, PolicyError> {
        let mut inner = self.inner.lock().await;
        let Some(mut d) = self.decide(&mut inner).await? else { return Ok(None) };
        self.carry_out(&mut inner, &d.stored, &d.agents, &mut d.plan, &d.stored_run).await?;
        Ok(Some(self.publish(d)))
    }

    /// Carries out `plan`: records first, then the run, then the rollouts steered and made.
    async fn carry_out(
        &self,
        inner: &mut Inner,
        stored: &Stored,
        facts: &[AgentFacts],
        plan: &mut Plan,
        stored_run: &Run,
    ) -> Result<(), PolicyError> {
        for action in &plan.actions {
            if let Action::Fold { rollout, .. } = action {
                let records = self.results_of(inner, stored, facts, rollout).await?;
                self.store.save_policy_records(&records).await?;
                inner.facts.recorded(&records);
            }
        }
        let resumed: Vec<usize> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Resume(id) => plan.run.groups.iter().position(|g| g.rollout.as_ref() == Some(id)),
                _ => None,
            })
            .collect();
        let first = with_pending_resumes(&plan.run, &resumed);
        if &first != stored_run {
            self.store.save_policy_run(&first).await?;
        }
        let mut started = false;
        for action in plan.actions.clone() {
            match action {
                Action::Fold { .. } => {}
                Action::Pause(id) => self.steer(&id, RolloutAction::Pause).await,
                Action::Resume(id) => self.steer(&id, RolloutAction::Resume).await,
                Action::Cancel(id) => self.steer(&id, RolloutAction::Cancel).await,
                Action::Start { group, agents } => started |= self.start(stored, facts, plan, group, &agents).await,
            }
        }
        if started || !resumed.is_empty() {
            self.store.save_policy_run(&plan.run).await?;
        }
        Ok(())
    }

    /// The records of the members of an ended rollout.
    async fn results_of(
        &self,
        inner: &Inner,
        stored: &Stored,
        facts: &[AgentFacts],
        rollout: &str,
    ) -> Result<Vec<Record>, PolicyError> {
        let now = self.clock.now();
        let members = match self.rollouts.get(rollout).await {
            Ok((_, members)) => members,
            Err(RolloutError::NotFound(_)) => return Ok(vec![]),
            Err(RolloutError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(PolicyError::Store(crate::store::StoreError::Decode(e.to_string()))),
        };
        let old = |id: &str| inner.facts.records.get(id).map(|r| r.as_ref());
        let target = Some(&stored.policy.target);
        let on_target: HashSet<&str> = facts.iter().filter(|a| a.version.as_ref() == target).map(|a| &*a.id).collect();
        let on = |id: &str| on_target.contains(id);
        let records =
            members.iter().filter_map(|m| fold(old(&m.agent_id), stored.generation, rollout, m, on(&m.agent_id), now));
        Ok(records.collect())
    }

    async fn steer(&self, id: &str, action: RolloutAction) {
        let done = format!("Rollout {} by {WHO}", action.done());
        // Written with the rollout's new state, as an operator's step is.
        let rollout = Ref { reference: format!("Rollout/{id}"), display: None };
        let event = crate::store::audit::record(&[policy_event(action.audit_subtype(), 'U', done, rollout)]);
        match self.rollouts.act_by(id, action, WHO, event).await {
            Ok(r) => tracing::info!(rollout = id, "update policy: rollout {}", r.state.name()),
            // Changed meanwhile (it ended, or an operator steered it): the next look decides again.
            Err(e) => tracing::debug!(rollout = id, "update policy: {e}"),
        }
    }

    /// Makes the group's rollout of `agents`; whether it did.
    async fn start(&self, stored: &Stored, facts: &[AgentFacts], plan: &mut Plan, g: usize, agents: &[usize]) -> bool {
        let group = &stored.policy.groups[g];
        let rows: Vec<AgentRow> = agents
            .iter()
            .map(|&i| AgentRow {
                id: facts[i].id.to_string(),
                name: facts[i].name.to_string(),
                status: "active".into(),
                identifiers: serde_json::Value::Array(vec![]),
                last_updated: String::new(),
            })
            .collect();
        let selection = tag(stored.generation, &group.name);
        let new = NewRollout {
            version: &stored.policy.target,
            strategy: group.strategy.clone(),
            selection: &selection,
            agents: &rows,
        };
        let what = format!("Rollout of group {} started by {WHO}", group.name);
        let event =
            |r: &Rollout| crate::store::audit::record(&[policy_event("rollout-create", 'C', what, r.audit_ref())]);
        match self.rollouts.create(new, event).await {
            Ok(r) => {
                tracing::info!(
                    group = group.name,
                    rollout = r.id,
                    agents = rows.len(),
                    "update policy: rollout started"
                );
                plan.run.groups[g].rollout = Some(r.id);
                true
            }
            Err(e) => {
                tracing::warn!(group = group.name, "update policy: cannot start the group's rollout: {e}");
                false
            }
        }
    }
}

/// The audit event of a step the update policy took on a rollout.
fn policy_event(subtype: &str, action: char, description: String, rollout: Ref) -> AuditRecord {
    let mut e = crate::store::audit::event(REST, subtype, action, Some(the_server("update policy")), None);
    e.description = description;
    e.entities = vec![rollout];
    e
}
