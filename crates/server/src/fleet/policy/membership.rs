//! Which group each agent belongs to: the first whose selector finds it, else the implicit last
//! group (or none, when the policy leaves such agents alone). Selectors run as Agent searches in
//! the store. An agent's name, status and identifiers never change once it is created (agents
//! are added, never edited), so the answer changes only with the policy or with new agents: it
//! is kept, and only new agents are looked up again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::policy::Policy;
use crate::model::query::AgentQuery;
use crate::store::{Store, StoreError};

/// More new agents than this at once: every group is searched again in full.
const INCREMENTAL_MAX: usize = 5_000;

/// One agent: its id, its name, and its group (an index into the policy's groups). Shared, not
/// copied, by every evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub group: Option<usize>,
}

/// The agents and their groups, as of the policy revision and the agent count last seen.
#[derive(Default)]
pub struct Membership {
    revision: Option<i64>,
    count: usize,
    pub agents: Vec<Member>,
    /// Their ids, in the same order (as the hub is asked for their statuses).
    pub ids: Vec<String>,
    /// Each agent's place in `agents`.
    pub index: Arc<HashMap<Arc<str>, usize>>,
    known: HashSet<String>,
}

/// Every agent `query` finds among `among` (all agents when None).
pub async fn search_all(
    store: &Arc<dyn Store>,
    query: &AgentQuery,
    among: Option<&[String]>,
) -> Result<Vec<String>, StoreError> {
    let mut q = AgentQuery { count: i64::MAX as usize, offset: 0, skip_total: true, sort: vec![], ..query.clone() };
    if let Some(among) = among {
        q.ids = Some(match &q.ids {
            Some(chosen) => among.iter().filter(|id| chosen.contains(id)).cloned().collect(),
            None => among.to_vec(),
        });
    }
    Ok(store.search(&q).await?.0.into_iter().map(|r| r.id).collect())
}

impl Membership {
    /// Brings the groups up to date with `policy` (at `revision`) and the agents in the store.
    pub async fn refresh(&mut self, store: &Arc<dyn Store>, policy: &Policy, revision: i64) -> Result<(), StoreError> {
        let count = store.agent_count().await?;
        if self.revision == Some(revision) && count == self.count {
            return Ok(());
        }
        let all = store.agent_names().await?;
        let fresh: Vec<(String, String)> = if self.revision != Some(revision) {
            self.agents.clear();
            self.ids.clear();
            self.known.clear();
            all
        } else {
            all.into_iter().filter(|(id, _)| !self.known.contains(id)).collect()
        };
        let ids: Vec<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
        let among = (!self.agents.is_empty() && ids.len() <= INCREMENTAL_MAX).then_some(&ids[..]);
        let groups = assign(store, policy, among).await?;
        for (id, name) in fresh {
            let group = groups.get(&id).copied().or_else(|| implicit(policy));
            self.known.insert(id.clone());
            self.agents.push(Member { id: id.as_str().into(), name: name.into(), group });
            self.ids.push(id);
        }
        self.index = Arc::new(self.agents.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect());
        (self.revision, self.count) = (Some(revision), count);
        Ok(())
    }
}

/// The implicit last group, if the policy has one.
fn implicit(policy: &Policy) -> Option<usize> {
    policy.groups.iter().position(|g| g.query.is_none())
}

/// The group of every agent some selector finds (among `among`): the first that finds it.
async fn assign(
    store: &Arc<dyn Store>,
    policy: &Policy,
    among: Option<&[String]>,
) -> Result<HashMap<String, usize>, StoreError> {
    let mut out = HashMap::new();
    for (g, group) in policy.groups.iter().enumerate() {
        let Some(q) = &group.query else { continue };
        for id in search_all(store, q, among).await? {
            out.entry(id).or_insert(g);
        }
    }
    Ok(out)
}
