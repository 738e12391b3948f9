//! The rollouts' share of agents' answers: a reply no HTTP request waits for is a member's answer
//! when its callback is one, filed through the member transition, in memory where the rollout is
//! driven, else in the store.

use std::collections::HashMap;
use std::sync::Arc;

use edge_agent_wire::{Callback, Envelope, Message};

use super::engine::{now_ms, Live, Rollouts};
use crate::conn::hub::ReplySink;
use crate::conn::outages::Infra;
use crate::model::member::{transition, Member, MemberEvent, MemberState};

impl ReplySink for Rollouts {
    /// Files the answer before it returns when its rollout is driven here: the hub lets the request
    /// go only then, so the planner never sees a member in flight whose request nobody holds
    /// (which it would send again, as if another node had asked it).
    fn deliver(self: Arc<Self>, agent: String, env: Envelope) {
        let Some((cb, answer)) = answer_of(&env) else { return self.dropped(&agent, &env) };
        match self.file_here(&agent, &cb, answer.clone()) {
            Here::Filed => {}
            Here::OtherAgent => self.dropped(&agent, &env),
            Here::NotDriven => {
                tokio::spawn(async move {
                    if !self.file_in_store(&agent, &cb, answer).await {
                        self.dropped(&agent, &env);
                    }
                });
            }
        }
    }
}

impl Rollouts {
    /// A reply nobody waits for: a line for each agent at most once a minute (an agent may send
    /// replies to callbacks nobody holds as fast as its socket is read).
    fn dropped(&self, agent_id: &str, env: &Envelope) {
        if !self.quiet.due(&format!("{agent_id} late reply")) {
            return;
        }
        // The agent chose the callback: logged cut short.
        let callback = env.callback.as_ref().map(|c| crate::limits::throttle::shown(c.as_str()));
        tracing::info!(agent_id, callback, "late reply dropped: nobody waits for it any more");
    }
}

/// The callback and the member event of an agent's answer to an upgrade request.
fn answer_of(env: &Envelope) -> Option<(Callback, MemberEvent)> {
    let cb = env.callback.clone()?;
    let result = match &env.msg {
        Message::UpgradeResponse { status_code: 200 } => Ok(()),
        Message::UpgradeResponse { status_code } => Err(crate::model::failure::upgrade_not_ok(*status_code)),
        Message::Error { body } => Err(body.clone()),
        _ => return None,
    };
    Some((cb, MemberEvent::Answer { result, at: now_ms() }))
}

/// Where an answer's member is.
enum Here {
    /// Driven here: filed in memory.
    Filed,
    /// The callback is another agent's.
    OtherAgent,
    /// Not driven here (or no longer in memory): the store is the record.
    NotDriven,
}

impl Rollouts {
    /// Files `agent_id`'s answer with its member, if the rollout is driven here.
    fn file_here(&self, agent_id: &str, cb: &Callback, answer: MemberEvent) -> Here {
        let mut live = self.live.lock().unwrap();
        let found = live.values_mut().find_map(|l| l.by_callback.get(cb).copied().map(|i| (l, i)));
        match found {
            Some((l, i)) if l.members[i].agent_id == agent_id => {
                let filed = self.file(l, i, answer);
                // Written by the tick it wakes, with the others that came meanwhile, before the
                // step that may end the rollout (noted under the lock the planner takes).
                self.answered.lock().unwrap().extend(filed);
                drop(live);
                self.wake.notify_one();
                Here::Filed
            }
            Some(_) => Here::OtherAgent,
            None => Here::NotDriven,
        }
    }

    /// Files an answer in the store, for a member of a rollout not driven here. True when the
    /// callback is one of `agent_id`'s members'.
    async fn file_in_store(&self, agent_id: &str, cb: &Callback, answer: MemberEvent) -> bool {
        match self.store.member_by_callback(cb).await {
            Ok(Some((rollout_id, m))) if m.agent_id == agent_id => {
                if let Ok(next) = transition(&m, answer) {
                    tracing::info!(rollout = %rollout_id, agent_id, "answer filed in the store: {}", next.state.name());
                    if let Err(e) = self.store.save_members(&rollout_id, &[next]).await {
                        tracing::error!(agent_id, "cannot save a rollout result: {e}");
                    }
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(agent_id, "cannot look up a rollout callback: {e}");
                false
            }
        }
    }

    /// Writes the answers filed in memory since the last write.
    pub(super) async fn write_answers(&self) {
        let answered = self.take_answers();
        self.write(answered).await
    }

    /// The answers filed in memory and not written yet (taken under the lock of the live
    /// rollouts, they are every answer the planner saw).
    pub(super) fn take_answers(&self) -> Vec<(String, Member)> {
        std::mem::take(&mut *self.answered.lock().unwrap())
    }

    /// Writes answers filed in memory, one transaction per rollout; kept for the next write if
    /// the store refuses them.
    pub(super) async fn write(&self, answered: Vec<(String, Member)>) {
        let mut by_rollout: HashMap<String, Vec<Member>> = HashMap::new();
        for (rollout, member) in answered {
            by_rollout.entry(rollout).or_default().push(member);
        }
        for (rollout, members) in by_rollout {
            if let Err(e) = self.store.save_members(&rollout, &members).await {
                tracing::error!(rollout, answers = members.len(), "cannot save rollout results (retried): {e}");
                self.hub.outages().failed(Infra::Store, now_ms());
                self.answered.lock().unwrap().extend(members.into_iter().map(|m| (rollout.clone(), m)));
            }
        }
    }

    /// Files the answer of member `i` (in flight, or timed out and answering late) in memory; the
    /// member to write, if it changed (a repeated answer changes nothing).
    fn file(&self, l: &mut Live, i: usize, answer: MemberEvent) -> Option<(String, Member)> {
        let late = l.members[i].state == MemberState::TimedOut;
        let next = transition(&l.members[i], answer).ok()?;
        l.members[i] = next;
        l.idle = None;
        self.remember(&l.rollout, &[&l.members[i]]);
        if late {
            let (name, state) = (l.members[i].name.clone(), l.members[i].state);
            l.event(format!("late answer from {name}: {}", state.name()));
        }
        Some((l.rollout.id.clone(), l.members[i].clone()))
    }
}
