//! The rollouts' share of agents' answers: a reply no HTTP request waits for is a member's
//! answer when its callback is one, filed in memory where the rollout is driven, else in the store.

use std::sync::Arc;

use super::driver::{now_ms, Live, Rollouts};
use super::model::{Member, MemberState};
use crate::hub::ReplySink;
use edge_agent_wire::{Callback, Envelope, Message};

impl ReplySink for Rollouts {
    fn deliver(self: Arc<Self>, env: Envelope) {
        let agent = env.callback.as_ref().and_then(Callback::agent_id).map(str::to_owned);
        if let Some(agent) = agent {
            tokio::spawn(async move { self.on_reply(&agent, &env).await });
        }
    }
}

impl Rollouts {
    /// An agent's answer that no HTTP request waits for: a rollout member's, if its callback is one.
    /// True when it was.
    pub async fn on_reply(&self, agent_id: &str, env: &Envelope) -> bool {
        let Some(cb) = env.callback.as_ref() else { return false };
        let (state, reason) = match &env.msg {
            Message::UpgradeResponse { .. } => (MemberState::Succeeded, None),
            Message::Error { body } => (MemberState::Failed, Some(body.clone())),
            _ => return false,
        };
        // Some(filed) when the member is driven here; Err(()) when the callback is another agent's.
        let here: Result<Option<Option<(String, Member)>>, ()> = {
            let mut live = self.live.lock().unwrap();
            let found = live.values_mut().find_map(|l| l.by_callback.get(cb).copied().map(|i| (l, i)));
            match found {
                Some((l, i)) if l.members[i].agent_id == agent_id => Ok(Some(self.file(l, i, state, reason.clone()))),
                Some(_) => Err(()),
                None => Ok(None),
            }
        };
        match here {
            Err(()) => return false,
            Ok(Some(filed)) => {
                if let Some((rollout, member)) = filed {
                    if let Err(e) = self.store.save_members(&rollout, &[member]).await {
                        tracing::error!(agent_id, "cannot save a rollout result: {e}");
                    }
                }
                self.wake.notify_one();
                return true;
            }
            Ok(None) => {}
        }
        // Not driven here (or no longer in memory): the store is the record.
        match self.store.member_by_callback(cb).await {
            Ok(Some((rollout_id, mut m))) if m.agent_id == agent_id => {
                if matches!(m.state, MemberState::InProgress | MemberState::TimedOut) {
                    tracing::info!(rollout = %rollout_id, agent_id, "answer filed in the store: {}", state.name());
                    (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
                    if let Err(e) = self.store.save_members(&rollout_id, std::slice::from_ref(&m)).await {
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

    /// Files the answer of member `i` (in flight, or timed out and answering late) in memory; the
    /// member to write, if it changed.
    fn file(&self, l: &mut Live, i: usize, state: MemberState, reason: Option<String>) -> Option<(String, Member)> {
        let m = &mut l.members[i];
        let late = match m.state {
            MemberState::InProgress => false,
            MemberState::TimedOut => true,
            // Answered already: a repeated answer changes nothing.
            _ => return None,
        };
        let name = m.name.clone();
        (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
        self.remember(&l.rollout, &[&l.members[i]]);
        if late {
            l.event(format!("late answer from {name}: {}", state.name()));
        }
        Some((l.rollout.id.clone(), l.members[i].clone()))
    }
}
