//! What the planner is given, gathered from the rest of the server: each agent's group (kept by
//! [`Membership`]), its status as `$status` tells it (the hub: live on a node, else as stored),
//! its attempts at the target (the store, kept in memory between looks), whether an operator's
//! `$upgrade` pinned it, and the rollouts that hold it; and each group's rollout.
//!
//! The policy's rollouts are tagged in their selection (`update policy 3: group prod`), so that a
//! rollout made just before a crash, before the run recorded it, is found again ([`tag`],
//! [`untag`]).

use std::collections::HashMap;
use std::sync::Arc;

use edge_agent_wire::{parse_version, AgentStatus, Target};
use semver::Version;

use super::membership::Membership;
use super::plan::{GroupRollout, Stray};
use super::standing::AgentFacts;
use crate::config::PolicyClock;
use crate::conn::hub::{Hub, StatusError};
use crate::fleet::rollout::engine::{RolloutError, Rollouts};
use crate::model::member::{Member, MemberState};
use crate::model::policy_run::{Attempt, Failure, Record, Run, Stored};
use crate::model::rollout::Rollout;
use crate::store::{Store, StoreError};

/// Why the facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl From<RolloutError> for FactsError {
    fn from(e: RolloutError) -> FactsError {
        match e {
            RolloutError::Store(s) => FactsError::Store(s),
            other => FactsError::Store(StoreError::Decode(other.to_string())),
        }
    }
}

/// The selection of a policy rollout: which generation and group it is for.
pub fn tag(generation: i64, group: &str) -> String {
    format!("update policy {generation}: group {group}")
}

/// The generation and group of a policy rollout's selection; None for an operator's rollout.
pub fn untag(selection: &str) -> Option<(i64, &str)> {
    let (generation, group) = selection.strip_prefix("update policy ")?.split_once(": group ")?;
    Some((generation.parse().ok()?, group))
}

/// Everything [`super::plan::plan`] is given besides the policy and its run.
pub struct Gathered {
    pub agents: Vec<AgentFacts>,
    /// Each agent's index in `agents` (kept with the groups, not built again each look).
    pub index: Arc<HashMap<Arc<str>, usize>>,
    /// Each group's rollout, by group.
    pub rollouts: Vec<Option<GroupRollout>>,
    pub strays: Vec<Stray>,
}

/// What is kept between looks: groups, records, pins, parsed versions.
#[derive(Default)]
pub struct Gatherer {
    pub membership: Membership,
    /// The records of `records_of`'s generation, by agent.
    pub records: HashMap<String, Arc<Record>>,
    records_of: Option<i64>,
    /// Agents pinned by a manual `$upgrade` since `pins_since`, and the last result read.
    pins: HashMap<String, Target>,
    pins_since: Option<i64>,
    last_result: i64,
    versions: HashMap<String, Option<Version>>,
}

/// A rollout seen by the planner.
fn group_rollout(r: &Rollout, members: &[Member]) -> GroupRollout {
    let failures = members
        .iter()
        .filter(|m| m.state.is_failure())
        .map(|m| Failure {
            agent_id: m.agent_id.clone(),
            name: m.name.clone(),
            reason: m.reason.clone().unwrap_or_default(),
        })
        .collect();
    GroupRollout {
        id: r.id.clone(),
        state: r.state,
        wave: r.wave,
        in_flight: members.iter().filter(|m| m.state == MemberState::InProgress).count(),
        reason: r.reason.clone(),
        failures,
    }
}

/// The rollouts a look reads: each agent a rollout holds (its member state, and which), each
/// group's rollout, the strays.
struct Held {
    members: HashMap<String, (String, MemberState)>,
    rollouts: Vec<Option<GroupRollout>>,
    strays: Vec<Stray>,
}

impl Gatherer {
    /// Gathers the facts for `stored` and its `run` (lined up with it), on the policy's `clock`.
    pub async fn gather(
        &mut self,
        (store, hub, rollouts): (&Arc<dyn Store>, &Hub, &Rollouts),
        stored: &Stored,
        run: &Run,
        clock: PolicyClock,
    ) -> Result<Gathered, FactsError> {
        self.membership.refresh(store, &stored.policy, stored.revision).await?;
        self.load_records(store, stored.generation).await?;
        self.load_pins(store, stored).await?;
        let driven = if rollouts.driving() { rollouts.driven() } else { store.live_rollout_ids().await? };
        let held = held(rollouts, &driven, run, stored).await?;
        let target = &stored.policy.target;
        let versions = &mut self.versions;
        // Only what the planner reads is taken (no copy of each status): whether connected, the
        // version (parsed once per distinct text; most agents run the same as the one before),
        // and, off the target, since when.
        let mut last: (String, Option<Version>) = (String::new(), None);
        let statuses = hub
            .statuses_with(&self.membership.ids, |s| {
                if s.version != last.0 {
                    last = (s.version.clone(), version_of(versions, &s.version));
                }
                let version = last.1.clone();
                let since = (version.as_ref() != Some(target)).then(|| s.updated.parse::<jiff::Timestamp>().ok());
                (s.status == AgentStatus::Connected, version, since.flatten())
            })
            .await?;
        let mut agents = Vec::with_capacity(statuses.len());
        for (m, status) in self.membership.agents.iter().zip(statuses) {
            let record = self.records.get(&*m.id).cloned();
            let (connected, version, updated) = status.unwrap_or((false, None, None));
            // Only a success not followed by the target needs to know since when the status stands.
            let check =
                record.as_ref().is_some_and(|r| r.last == Attempt::Succeeded) && version.as_ref() != Some(target);
            let status_at = updated.filter(|_| check);
            let (member, busy) = match held.members.get(&*m.id) {
                Some((id, state)) if run.rollouts().any(|r| r == id) => (Some(*state), None),
                Some((id, _)) => (None, Some(id.clone())),
                None => (None, None),
            };
            agents.push(AgentFacts {
                id: m.id.clone(),
                name: m.name.clone(),
                group: m.group,
                connected,
                version,
                status_at: status_at.map(|t| clock.at(t.as_millisecond())),
                record,
                pinned: self.pins.get(&*m.id).cloned(),
                member,
                busy,
            });
        }
        let index = self.membership.index.clone();
        Ok(Gathered { agents, index, rollouts: held.rollouts, strays: held.strays })
    }

    async fn load_records(&mut self, store: &Arc<dyn Store>, generation: i64) -> Result<(), StoreError> {
        if self.records_of != Some(generation) {
            let records = store.policy_records(generation).await?;
            self.records = records.into_iter().map(|r| (r.agent_id.clone(), Arc::new(r))).collect();
            self.records_of = Some(generation);
        }
        Ok(())
    }

    /// Records written by this node after a fold.
    pub fn recorded(&mut self, records: &[Record]) {
        for r in records.iter().filter(|r| Some(r.generation) == self.records_of) {
            self.records.insert(r.agent_id.clone(), Arc::new(r.clone()));
        }
    }

    async fn load_pins(&mut self, store: &Arc<dyn Store>, stored: &Stored) -> Result<(), StoreError> {
        if self.pins_since != Some(stored.set_at) {
            (self.pins, self.pins_since, self.last_result) = (HashMap::new(), Some(stored.set_at), 0);
        }
        let since = edge_agent_base::time::iso8601(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(stored.set_at.max(0) as u64),
        );
        for (id, agent, requested) in store.manual_upgrades_since(&since, self.last_result).await? {
            let target = Target::from(requested.and_then(|v| parse_version(&v).ok()));
            self.last_result = id;
            // Asking for the target itself pins nothing.
            if target.version() == Some(&stored.policy.target) {
                self.pins.remove(&agent);
            } else {
                self.pins.insert(agent, target);
            }
        }
        Ok(())
    }
}

/// A reported version, parsed once per distinct text.
fn version_of(cache: &mut HashMap<String, Option<Version>>, text: &str) -> Option<Version> {
    if let Some(v) = cache.get(text) {
        return v.clone();
    }
    let v = parse_version(text).ok();
    if cache.len() < 10_000 {
        cache.insert(text.to_string(), v.clone());
    }
    v
}

/// Reads the rollouts that hold agents (`driven`, and the groups' own): which agent each holds,
/// each group's rollout, the policy's rollouts the run does not hold.
async fn held(rollouts: &Rollouts, driven: &[String], run: &Run, stored: &Stored) -> Result<Held, FactsError> {
    let groups = &stored.policy.groups;
    let mut out = Held { members: HashMap::new(), rollouts: vec![None; groups.len()], strays: Vec::new() };
    let mut ids: Vec<&str> = driven.iter().map(String::as_str).collect();
    ids.extend(run.rollouts().filter(|r| !driven.iter().any(|d| d == r)));
    for id in ids {
        let seen = rollouts.view(id, |r, members| {
            let open: Vec<(String, MemberState)> =
                members.iter().filter(|m| !m.state.is_final()).map(|m| (m.agent_id.clone(), m.state)).collect();
            (
                group_rollout(r, members),
                untag(&r.selection).map(|(g, name)| (g, name.to_string())),
                open,
                r.state.is_open(),
            )
        });
        let (seen, tagged, open, is_open) = match seen.await {
            Ok(s) => s,
            Err(RolloutError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        for (agent, state) in open {
            out.members.insert(agent, (id.to_string(), state));
        }
        match run.groups.iter().position(|g| g.rollout.as_deref() == Some(id)) {
            Some(g) => out.rollouts[g] = Some(seen),
            None => {
                if let Some((generation, group)) = tagged {
                    out.strays.push(Stray { id: id.to_string(), generation, group, open: is_open });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rollouts_are_tagged_in_their_selection() {
        assert_eq!(untag(&tag(3, "prod-eu")), Some((3, "prod-eu")));
        assert_eq!(untag("name=clinic-"), None);
        assert_eq!(untag("update policy x: group a"), None);
    }
}
