//! The requests waiting for their replies, by callback, with each agent's callbacks beside them:
//! a socket that opens or closes finds its agent's requests without a walk of every request
//! waiting on the node (thousands while a rollout runs, for each of its members' reconnections).

use std::collections::HashMap;

use edge_agent_wire::Callback;

use super::Waiter;

#[derive(Default)]
pub(super) struct Waiters {
    by_callback: HashMap<Callback, Waiter>,
    by_agent: HashMap<String, Vec<Callback>>,
}

impl Waiters {
    pub fn get(&self, callback: &Callback) -> Option<&Waiter> {
        self.by_callback.get(callback)
    }

    pub fn get_mut(&mut self, callback: &Callback) -> Option<&mut Waiter> {
        self.by_callback.get_mut(callback)
    }

    pub fn insert(&mut self, callback: Callback, waiter: Waiter) {
        let agent = waiter.agent_id.clone();
        if let Some(old) = self.by_callback.insert(callback.clone(), waiter) {
            self.unindex(&old.agent_id, &callback);
        }
        self.by_agent.entry(agent).or_default().push(callback);
    }

    pub fn remove(&mut self, callback: &Callback) -> Option<Waiter> {
        let waiter = self.by_callback.remove(callback)?;
        self.unindex(&waiter.agent_id, callback);
        Some(waiter)
    }

    fn unindex(&mut self, agent_id: &str, callback: &Callback) {
        if let Some(callbacks) = self.by_agent.get_mut(agent_id) {
            callbacks.retain(|c| c != callback);
            if callbacks.is_empty() {
                self.by_agent.remove(agent_id);
            }
        }
    }

    /// Keeps the waiters for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&Waiter) -> bool) {
        let gone: Vec<Callback> = self.by_callback.iter().filter(|(_, w)| !keep(w)).map(|(c, _)| c.clone()).collect();
        for callback in gone {
            self.remove(&callback);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Callback, &Waiter)> {
        self.by_callback.iter()
    }

    /// Moves the wanted requests of `agent_id` carried by socket `from` to socket `to`; the
    /// ones to send on `to`, in the order they were made.
    pub fn move_agent(&mut self, agent_id: &str, from: Option<u64>, to: Option<u64>) -> Vec<String> {
        let Some(callbacks) = self.by_agent.get(agent_id) else { return Vec::new() };
        let mut again = Vec::new();
        for callback in callbacks {
            let Some(w) = self.by_callback.get_mut(callback) else { continue };
            if w.conn == from && w.wanted() {
                w.conn = to;
                w.remote = None;
                if to.is_some() {
                    again.push(w.json.clone());
                }
            }
        }
        again
    }

    #[cfg(test)]
    pub fn agents_indexed(&self) -> usize {
        self.by_agent.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::Taker;
    use super::*;

    fn waiter(agent: &str, json: &str, conn: Option<u64>, wait: Duration) -> Waiter {
        let until = Instant::now() + wait;
        Waiter { taker: Taker::Sink, until, agent_id: agent.into(), json: json.into(), conn, remote: None }
    }

    #[test]
    fn an_agents_requests_move_with_its_socket_and_the_index_follows_every_change() {
        let hour = Duration::from_secs(3600);
        let mut w = Waiters::default();
        let (a1, a2, b1) = (Callback::issue("a"), Callback::issue("a"), Callback::issue("b"));
        w.insert(a1.clone(), waiter("a", "first", Some(1), hour));
        w.insert(a2.clone(), waiter("a", "second", Some(1), hour));
        w.insert(b1.clone(), waiter("b", "other", Some(1), hour));
        let expired = Callback::issue("a");
        w.insert(expired.clone(), waiter("a", "expired", Some(1), Duration::ZERO));

        // Socket 1 of agent a closes and socket 2 opens: a's wanted requests go again, in order.
        assert_eq!(w.move_agent("a", Some(1), Some(2)), vec!["first", "second"]);
        assert_eq!(w.get(&a1).unwrap().conn, Some(2));
        assert_eq!(w.get(&b1).unwrap().conn, Some(1), "another agent's request stays");
        assert_eq!(w.get(&expired).unwrap().conn, Some(1), "a request past its wait is not sent again");
        // Its socket closes with no other: they wait without one, and nothing is sent.
        assert_eq!(w.move_agent("a", Some(2), None), Vec::<String>::new());
        assert_eq!(w.get(&a2).unwrap().conn, None);
        assert_eq!(w.move_agent("a", None, Some(3)), vec!["first", "second"]);

        w.remove(&a1);
        w.retain(|w| w.wanted());
        assert!(w.get(&expired).is_none());
        assert_eq!(w.move_agent("a", Some(3), Some(4)), vec!["second"]);
        w.remove(&a2);
        w.remove(&b1);
        assert_eq!(w.agents_indexed(), 0, "no agent is left indexed without a request");
        assert_eq!(w.move_agent("a", Some(4), Some(5)), Vec::<String>::new());
    }
}
