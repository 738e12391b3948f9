//! Requests an agent ignores: Medplum's own agent never answers `agent:stats`, so each `$stats`
//! would wait for its whole timeout. One left unanswered marks the agent's socket; further ones
//! are refused at once until the agent has another socket (it reconnected), which is asked again.

use super::Hub;
use crate::conn::bus::Bus;

impl Hub {
    /// The agent's newest socket: here (`here <conn>`), or on another node as the bus names it;
    /// None when no node holds one, or the bus cannot tell.
    pub async fn socket_of(&self, agent_id: &str) -> Option<String> {
        let here = self.conns.lock().unwrap().get(agent_id).and_then(|l| l.last()).map(|c| c.id);
        if let Some(id) = here {
            return Some(format!("here {id}"));
        }
        self.bus.where_held(&[agent_id.to_string()]).await.ok().and_then(|mut v| v.pop().flatten())
    }

    /// Whether `agent_id` left a request of type `kind` unanswered on `socket`, its socket now.
    /// A mark left on another socket is forgotten: the agent reconnected since.
    pub fn ignores(&self, agent_id: &str, kind: &'static str, socket: &str) -> bool {
        let mut ignored = self.ignored.lock().unwrap();
        let key = (agent_id.to_string(), kind);
        match ignored.get(&key) {
            Some(marked) if marked == socket => true,
            Some(_) => {
                ignored.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Notes that `agent_id` left a request of type `kind` unanswered on `socket`.
    pub fn note_ignored(&self, agent_id: &str, kind: &'static str, socket: String) {
        tracing::info!(agent_id, kind, socket, "the agent left a request unanswered: not asked again on this socket");
        self.ignored.lock().unwrap().insert((agent_id.to_string(), kind), socket);
    }
}
