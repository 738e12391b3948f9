//! Each agent's status as this node answers it: live on this node (kept in memory, written to the
//! store and the bus only when it changes), live on another node (the bus), or as last stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::broadcast;

use edge_agent_wire::{AgentStatus, ReportedVersion};

use super::{Hub, StatusError};
use crate::conn::bus::{Bus, BusError, Held};
use crate::conn::outages::Infra;
use crate::model::agent::StatusRow;

/// An agent's live status on this node, and when the agent was last heard from since it was
/// set: a heartbeat of the agent's own costs its socket a clock read and a store into [`Heard`],
/// shared with the socket (no lock, no lookup), and the time is written out as text only when
/// someone reads the status.
pub(super) struct Live {
    row: StatusRow,
    heard: Heard,
}

/// Where an agent's socket records when the agent was last heard from, kept by the hub
/// ([`Hub::heard`]).
pub type Heard = Arc<HeardAt>;

#[derive(Default)]
pub struct HeardAt {
    /// Milliseconds since the epoch; 0: not since the agent's status was set.
    at: AtomicI64,
    /// The hub let this place go (the agent's live status here ended): a socket still recording
    /// takes the new one.
    gone: AtomicBool,
}

impl HeardAt {
    /// The agent was heard from at `ms` (since the epoch).
    pub fn record(&self, ms: i64) {
        self.at.store(ms, Ordering::Relaxed);
    }

    /// Whether the hub let this place go.
    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

/// The record of `agent` on the bus as this node holds it: its newest socket here (of `list`)
/// and its live status (of `live`); none when it has neither.
pub(super) fn held(agent: &str, list: &[super::Conn], live: &mut HashMap<String, Live>) -> Option<Held> {
    let (conn, status) = (list.last()?.id, live.get_mut(agent)?.current().clone());
    Some(Held { agent: agent.to_string(), conn, status })
}

impl Live {
    /// The version the agent reports.
    pub(super) fn version(&self) -> &str {
        &self.row.version
    }

    /// The agent's live status here ended: its socket's record goes elsewhere from now on.
    pub(super) fn end(&self) {
        self.heard.gone.store(true, Ordering::Relaxed);
    }

    /// The status as of the agent's last heartbeat.
    pub(super) fn current(&mut self) -> &StatusRow {
        let at = self.heard.at.swap(0, Ordering::Relaxed);
        if at > 0 {
            self.row.updated = edge_agent_base::time::iso8601(UNIX_EPOCH + Duration::from_millis(at as u64));
        }
        &self.row
    }
}

impl Hub {
    /// A heartbeat response: the agent's version, as of now (`invalid` when it is no short
    /// semver: the agent's text goes no further than here).
    /// Logged when the version it had was another, not at each heartbeat.
    pub async fn heartbeat(&self, agent_id: &str, conn_id: u64, version: &str) {
        let reported = ReportedVersion::parse(version);
        let changed = self.set_status(agent_id, conn_id, AgentStatus::Connected, reported.label(), false).await;
        if changed && reported == ReportedVersion::Invalid {
            tracing::warn!(
                agent_id,
                bytes = version.len(),
                "agent reported a version that is not one: kept as invalid"
            );
        }
    }

    /// Where the socket of `agent_id` records the agent's own heartbeats ([`Heard`]): its live
    /// status is then as fresh as an answer to the server's would make it (the server does not
    /// ask an agent it has just heard from, so this is what keeps `lastUpdated` moving for an
    /// agent that sends its own). None until the agent has a live status here.
    pub fn heard(&self, agent_id: &str) -> Option<Heard> {
        self.live.lock().unwrap().get(agent_id).map(|l| l.heard.clone())
    }

    /// Records a live status in memory; the store and the bus are written when it is new or its
    /// version changed, so a heartbeat every 10 s from each of thousands of agents costs neither.
    /// A new socket's status goes to the store with the version the agent reports next. Whether
    /// it was new or its version changed.
    pub(super) async fn set_status(
        &self,
        agent_id: &str,
        conn: u64,
        status: AgentStatus,
        version: String,
        new_socket: bool,
    ) -> bool {
        let row = StatusRow { status, version, updated: edge_agent_base::time::now_iso() };
        let changed = {
            let mut live = self.live.lock().unwrap();
            match live.get_mut(agent_id) {
                Some(l) => {
                    let changed = l.version() != row.version;
                    l.row = row.clone();
                    l.heard.at.store(0, Ordering::Relaxed);
                    changed
                }
                None => {
                    live.insert(agent_id.to_string(), Live { row: row.clone(), heard: Heard::default() });
                    true
                }
            }
        };
        if changed || new_socket {
            let _ = self.changes.send((agent_id.to_string(), row.clone()));
            let held = Held { agent: agent_id.to_string(), conn, status: row.clone() };
            if let Err(e) = self.bus.hold(&held).await {
                tracing::warn!(agent_id, "cannot record the agent on the bus (retried on the next refresh): {e}");
            }
            if new_socket {
                // The version the agent reports at once is what the store gets, in one write.
                self.writes.put_until_versioned(agent_id, row);
            } else {
                self.save(agent_id, row);
            }
        } else {
            self.writes.versioned(agent_id);
        }
        changed
    }

    /// Writes the agent's status to the store, with others (within [`super::writes::LINGER`]).
    pub(super) fn save(&self, agent_id: &str, row: StatusRow) {
        self.writes.put(agent_id, row);
    }

    /// Writes the statuses that wait (at shutdown), within `limit`; from then on an agent's
    /// disconnection does not wait for its return.
    pub async fn flush_statuses(&self, limit: std::time::Duration) -> Result<(), String> {
        self.writes.closing();
        self.writes.flush_within(limit).await
    }

    /// Before a read of statuses from the store (the fleet's table, counts and metrics): this
    /// node's changes written, so that the store shows what `$status` shows for its agents. A
    /// store that does not take them within a second is the read's to meet (it says so).
    pub async fn statuses_written(&self) {
        if self.writes.any_waiting() {
            let _ = self.writes.flush_within(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Every later change of the status or version of an agent on this node.
    pub fn subscribe(&self) -> broadcast::Receiver<(String, StatusRow)> {
        self.changes.subscribe()
    }

    /// Renews this node's records on the bus and retries the status writes the store refused;
    /// the bus's error, if it did not take the records.
    pub async fn refresh(&self) -> Result<(), BusError> {
        let Some(ttl) = self.bus.record_ttl() else {
            self.writes.retry();
            return Ok(());
        };
        let held: Vec<Held> = {
            let conns = self.conns.lock().unwrap();
            let mut live = self.live.lock().unwrap();
            conns.iter().filter_map(|(agent, list)| held(agent, list, &mut live)).collect()
        };
        let started = edge_agent_base::time::now_ms();
        let renewed = self.bus.refresh(&held).await;
        self.writes.retry();
        if renewed.is_ok() {
            // A call on the bus failed since the last renewal, or the node stalled for long
            // enough: a record may have lapsed.
            let before = self.renewed_at.swap(started, std::sync::atomic::Ordering::Relaxed);
            let stalled = started - before > (ttl * 2 / 3).as_millis() as i64;
            if stalled || self.outages.since(before) == Some(Infra::Bus) {
                self.save_live_again();
            }
        }
        renewed
    }

    /// Whether the bus keeps the nodes' records of their agents (Redis), which [`Hub::held`] reads.
    pub fn keeps_records(&self) -> bool {
        self.bus.record_ttl().is_some()
    }

    /// Whether a live node holds each agent's socket: this one, or another as the bus says.
    pub async fn held(&self, ids: &[String]) -> Result<Vec<bool>, BusError> {
        let mut held: Vec<bool> = {
            let conns = self.conns.lock().unwrap();
            ids.iter().map(|id| conns.contains_key(id)).collect()
        };
        let others: Vec<usize> = (0..ids.len()).filter(|&i| !held[i]).collect();
        if others.is_empty() || !self.keeps_records() {
            return Ok(held);
        }
        let asked: Vec<String> = others.iter().map(|&i| ids[i].clone()).collect();
        for (i, found) in others.into_iter().zip(self.bus.presence(&asked).await?) {
            held[i] = found.is_some();
        }
        Ok(held)
    }

    /// Writes the live status of every agent on this node to the store again, as of now: when a
    /// call on the bus failed since the records were last renewed, or the node stalled, one may
    /// have lapsed, and another node's sweep ([`crate::conn::sweep`]) stored its agent as
    /// disconnected meanwhile (the time, later than the one stored, makes the write win over it).
    /// A row of the agent's waiting to be written is newer and stays; and a change of status
    /// comes after these rows, not between the look and the write (the live statuses stay locked).
    fn save_live_again(&self) {
        let now = edge_agent_base::time::now_iso();
        let conns = self.conns.lock().unwrap();
        let mut live = self.live.lock().unwrap();
        for agent in conns.keys() {
            if let Some(l) = live.get_mut(agent) {
                self.writes.put_unless_waiting(agent, StatusRow { updated: now.clone(), ..l.current().clone() });
            }
        }
    }

    /// The status of each agent: live on this node, else live on another node, else as last
    /// stored (and then disconnected, whatever was stored: no live node holds its socket).
    pub async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StatusError> {
        self.statuses_with(ids, StatusRow::clone).await
    }

    /// Each agent's status on the node that holds its socket, as the bus tells (None: held by no
    /// live node, or by this one): where an agent is, without its last stored status.
    pub async fn live_elsewhere(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StatusError> {
        let found = self.bus.presence(ids).await?;
        Ok(found
            .into_iter()
            .map(|s| s.map(|s| StatusRow { version: ReportedVersion::shown(&s.version), ..s }))
            .collect())
    }

    /// As [`Hub::statuses`], each status read through `f` where it is kept: a look at thousands
    /// copies only what `f` takes.
    pub async fn statuses_with<T>(
        &self,
        ids: &[String],
        mut f: impl FnMut(&StatusRow) -> T,
    ) -> Result<Vec<Option<T>>, StatusError> {
        let mut out: Vec<Option<T>> = {
            let mut live = self.live.lock().unwrap();
            ids.iter().map(|id| live.get_mut(id).map(|l| f(l.current()))).collect()
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let asked: Vec<String> = missing.iter().map(|&i| ids[i].clone()).collect();
        let mut unheld = Vec::new();
        for (&i, live) in missing.iter().zip(self.bus.presence(&asked).await?) {
            match live {
                Some(s) => out[i] = Some(f(&StatusRow { version: ReportedVersion::shown(&s.version), ..s })),
                None => unheld.push(i),
            }
        }
        if unheld.is_empty() {
            return Ok(out);
        }
        // Held nowhere: its last status, as waiting to be written, else as written.
        let mut stored = Vec::new();
        for i in unheld {
            match self.writes.waiting(&ids[i]) {
                Some(s) => out[i] = Some(f(&StatusRow { status: AgentStatus::Disconnected, ..s })),
                None => stored.push(i),
            }
        }
        let unheld = stored;
        if unheld.is_empty() {
            return Ok(out);
        }
        let asked: Vec<String> = unheld.iter().map(|&i| ids[i].clone()).collect();
        for (&i, stored) in unheld.iter().zip(self.store.statuses(&asked).await?) {
            out[i] = stored.map(|s| f(&StatusRow { status: AgentStatus::Disconnected, ..s }));
        }
        Ok(out)
    }
}
