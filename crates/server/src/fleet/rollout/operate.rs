//! What operators do to rollouts: start one, pause, resume or cancel it, and read it. Any node
//! may be asked; what it changes is written to the store, where the driving node picks it up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_agent_base::id::uuid;
use edge_agent_base::time::now_iso;
use semver::Version;

use super::engine::{now_ms, Live, RolloutError, Rollouts};
use crate::fleet::lease::Lease;
use crate::model::agent::AgentRow;
use crate::model::member::{counts, transition as member_transition, Counts, Member, MemberEvent, MemberState};
use crate::model::rollout::{transition, Action, Rollout, RolloutState, Summary};
use crate::model::strategy::Strategy;
use crate::store::db::Stmt;
use crate::store::rollouts::AMONG;
use crate::store::StoreError;

/// The store's lease held while a rollout is checked for overlaps and written, on any node.
const CREATION: &str = "rollout-creation";
/// Long enough for the check and the write; a node that dies holding it frees it after this.
const CREATION_TTL: Duration = Duration::from_secs(10);
/// How long a creation waits for another node's to end before answering "busy".
const CREATION_WAIT: Duration = Duration::from_secs(5);

/// A rollout an operator asks for.
pub struct NewRollout<'a> {
    /// The version every member is to run.
    pub version: &'a Version,
    pub strategy: Strategy,
    /// The search that chose the members, as given.
    pub selection: &'a str,
    pub agents: &'a [AgentRow],
}

impl Rollouts {
    /// The first of `agents` that is a member of an open rollout (any node may be asked to start
    /// one), with that rollout. Open or not is the store's word (another node may have just
    /// cancelled it); who the members are never changes, so the driving node takes them from
    /// memory, and another looks the new members up in the store.
    async fn overlap<'a>(&self, agents: &'a [AgentRow]) -> Result<Option<(Rollout, &'a AgentRow)>, StoreError> {
        for id in self.store.live_rollout_ids().await? {
            let Some(other) = self.store.rollout_head(&id).await? else { continue };
            if !other.state.is_open() {
                continue;
            }
            let held =
                self.live.lock().unwrap().get(&id).map(|l| agents.iter().find(|a| l.by_agent.contains_key(&a.id)));
            let found = match held {
                Some(found) => found,
                None => self.member_among(&id, agents).await?,
            };
            if let Some(a) = found {
                return Ok(Some((other, a)));
            }
        }
        Ok(None)
    }

    /// The first of `agents` that is a member of rollout `id`, as stored: looked up a few
    /// hundred at a time, not by reading every member.
    async fn member_among<'a>(&self, id: &str, agents: &'a [AgentRow]) -> Result<Option<&'a AgentRow>, StoreError> {
        for chunk in agents.chunks(AMONG) {
            let ids: Vec<&str> = chunk.iter().map(|a| a.id.as_str()).collect();
            let members = self.store.members_among(id, &ids).await?;
            if let Some(a) = chunk.iter().find(|a| members.contains(&a.id)) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Starts a rollout: members already on its version count as `already`. `also` gives the
    /// statements that record its creation (its audit event), written in the transaction that
    /// stores it: a crash leaves neither without the other.
    pub async fn create(
        &self,
        new: NewRollout<'_>,
        also: impl FnOnce(&Rollout) -> Vec<Stmt> + Send,
    ) -> Result<Rollout, RolloutError> {
        if new.agents.is_empty() {
            return Err(RolloutError::Empty);
        }
        // One creation at a time on every node sharing the store, so that two overlapping requests
        // cannot both pass the check.
        let _one = self.creating.lock().await;
        let lease = self.creation_lease().await?;
        let made = self.check_and_insert(new, also).await;
        lease.release().await;
        made
    }

    /// The store's lease on creating rollouts, waited for as long as [`CREATION_WAIT`].
    async fn creation_lease(&self) -> Result<Lease, RolloutError> {
        let holder = format!("{} {}", self.node, uuid());
        let lease = Lease::wait_for(self.store.clone(), CREATION, &holder, CREATION_TTL, CREATION_WAIT).await?;
        Ok(lease.ok_or(RolloutError::Busy)?.released_when_dropped())
    }

    async fn check_and_insert(
        &self,
        new: NewRollout<'_>,
        also: impl FnOnce(&Rollout) -> Vec<Stmt> + Send,
    ) -> Result<Rollout, RolloutError> {
        let NewRollout { version, strategy, selection, agents } = new;
        if let Some((other, a)) = self.overlap(agents).await? {
            return Err(RolloutError::Overlap {
                version: version.clone(),
                other: other.id,
                other_version: other.version,
                other_state: other.state.name(),
                agent: format!("{} ({})", a.name, a.id),
            });
        }
        let now = now_ms();
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let statuses = self.hub.statuses(&ids).await.unwrap_or_else(|_| vec![None; ids.len()]);
        let on_target = |s: Option<crate::model::agent::StatusRow>| {
            s.is_some_and(|s| edge_agent_wire::parse_version(&s.version).ok().as_ref() == Some(version))
        };
        let members: Vec<Member> =
            agents.iter().zip(statuses).map(|(a, s)| Member::new(&a.id, &a.name, on_target(s), now)).collect();
        let already = members.iter().filter(|m| m.state == MemberState::Already).count();
        let mut l = Live::new(
            Rollout {
                id: uuid(),
                version: version.clone(),
                state: RolloutState::Active,
                reason: None,
                strategy,
                selection: selection.to_string(),
                created_at: now,
                wave: 0,
                events: vec![],
            },
            members,
        );
        l.event(format!("created: {} agents, {already} already on {version}", l.members.len()));
        let also = also(&l.rollout);
        self.store.insert_rollout(&l.rollout, &l.members, also).await?;
        let finals: Vec<&Member> = l.members.iter().filter(|m| m.state.is_final()).collect();
        self.remember(&l.rollout, &finals);
        let rollout = l.rollout.clone();
        if self.driving.load(Ordering::Relaxed) {
            self.live.lock().unwrap().entry(rollout.id.clone()).or_insert(l);
            self.wake.notify_one();
        }
        Ok(rollout)
    }

    /// Pauses, resumes or cancels a rollout, with `also` (the audit event that records it) in the
    /// transaction of its new state. Cancelling skips the members not yet asked; those in flight
    /// finish.
    pub async fn act(&self, id: &str, action: Action, also: Vec<Stmt>) -> Result<Rollout, RolloutError> {
        self.act_by(id, action, "the operator", also).await
    }

    /// [`Rollouts::act`], by `who` (as the rollout's events tell it: `paused by …`).
    pub async fn act_by(&self, id: &str, action: Action, who: &str, also: Vec<Stmt>) -> Result<Rollout, RolloutError> {
        let (mut rollout, members) = self.get(id).await?;
        let before = rollout.state;
        let next =
            transition(before, action).map_err(|refusal| RolloutError::NotAllowed { id: id.to_string(), refusal })?;
        rollout.state = next;
        rollout.record(now_iso(), format!("{} by {who}", next.name()));
        // Once the state is written, no node can claim a member of this rollout any more.
        if !self.store.save_rollout(&rollout, before, also).await? {
            return Err(RolloutError::Changed(id.to_string()));
        }
        if next == RolloutState::Cancelled {
            let (why, at) = ("the rollout was cancelled first", now_ms());
            self.store.skip_pending(id, why, at).await?;
            let skip = || MemberEvent::Skip { why: why.into(), at };
            let skipped: Vec<Member> = members.iter().filter_map(|m| member_transition(m, skip()).ok()).collect();
            self.remember(&rollout, &skipped.iter().collect::<Vec<_>>());
        }
        // The driver (this node or another) picks the change up from the store.
        self.stale(id);
        self.wake.notify_one();
        Ok(rollout)
    }

    /// `f` of a rollout and its members, without copying them while it is driven here.
    pub async fn view<T>(&self, id: &str, f: impl FnOnce(&Rollout, &[Member]) -> T) -> Result<T, RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok(f(&l.rollout, &l.members));
        }
        let (r, members) = self.store.rollout(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
        Ok(f(&r, &members))
    }

    /// A rollout and its members: from memory while driven here, else from the store.
    pub async fn get(&self, id: &str) -> Result<(Rollout, Vec<Member>), RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok((l.rollout.clone(), l.members.clone()));
        }
        self.store.rollout(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))
    }

    /// A rollout's status: from memory while driven here, else counted by the store (a rollout's
    /// members are not read for it: an ended rollout of 10,000 is a few small queries).
    pub async fn summary(&self, id: &str) -> Result<Summary, RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok(Summary::of(&l.rollout, &l.members));
        }
        self.store.rollout_summary(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))
    }

    /// A page of the rollouts, newest first (`count` from `offset`), each with its members' counts
    /// by state (from memory for those driven here, counted by the store in one read for the
    /// others), and how many rollouts there are in all.
    pub async fn list(&self, offset: usize, count: usize) -> Result<(Vec<(Rollout, Counts)>, usize), RolloutError> {
        let (page, total) = self.store.rollouts_page(offset, count).await?;
        let mut out = Vec::with_capacity(page.len());
        let mut stored = Vec::new();
        {
            let live = self.live.lock().unwrap();
            for r in page {
                match live.get(&r.id) {
                    Some(l) => out.push((l.rollout.clone(), counts(&l.members))),
                    None => {
                        stored.push(r.id.clone());
                        out.push((r, counts(&[])));
                    }
                }
            }
        }
        let mut counted = self.store.rollouts_counts(&stored).await?;
        for (r, c) in out.iter_mut() {
            if let Some(n) = counted.remove(&r.id) {
                *c = n;
            }
        }
        Ok((out, total))
    }
}

#[cfg(test)]
#[path = "operate_tests.rs"]
mod tests;
