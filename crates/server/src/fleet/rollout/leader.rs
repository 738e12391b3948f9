//! Who drives the rollouts: the node that holds the store's lease `rollouts` ([`Lease`], renewed
//! every third of its TTL on its own). While it holds it, this node loads the live rollouts, adopts what operators changed on
//! other nodes, and ticks the engine ([`Rollouts::tick`]); when it stops, another node takes the
//! lease within [`LEASE_TTL`] and loads the rollouts from the store.
//!
//! Which members are connected to other nodes is read from the bus every check, and follows the
//! bus: when it is lost, members on other nodes wait (nobody is asked through a bus that is down),
//! and they are looked up again as soon as it is back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use edge_agent_wire::AgentStatus;

use edge_agent_wire::Callback;

use super::engine::{now_ms, Live, Rollouts};
use crate::conn::outages::Infra;
use crate::fleet::lease::Lease;
use crate::model::member::{Member, MemberState};
use crate::model::rollout::{Rollout, RolloutState};
use crate::store::StoreError;

/// How often the engine looks at its rollouts when nothing wakes it earlier.
const TICK: Duration = Duration::from_millis(100);
/// The least time between two ticks: answers that come together are planned together. A slot
/// an answer frees waits up to this long for its next member (a rollout of 10,000 took 1.12 to
/// 1.17x its ideal schedule at 5 ms, 1.16 to 1.21x at 10 ms with the planner before it stopped
/// copying the members' finish times; README, *Rollouts*).
const MIN_GAP: Duration = Duration::from_millis(5);
/// How often the engine renews its lease and looks for rollouts made or steered elsewhere.
const CHECK: Duration = Duration::from_secs(1);
/// The driver's lease: another node takes over at most this long after the driver stopped.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
pub(super) const LEASE: &str = "rollouts";
/// How far before its last read of the agents' last results the leader reads again: a member's
/// finish may be written a little after it happened, or stamped by another node's clock (the full
/// read every [`FULL_READ_EVERY`] checks takes whatever came later still).
const LATE_MS: i64 = 10_000;
/// Every this many reads of the agents' last results, all of them are read again.
const FULL_READ_EVERY: u32 = 300;
/// Every this many checks, every member of each live rollout is read again (in between, only those
/// finished since the last read, which is what other nodes write).
const FULL_MEMBERS_EVERY: u32 = 30;

impl Rollouts {
    /// Runs the engine until `shutdown`: tries for the lease every [`CHECK`], and drives the
    /// rollouts while it holds it. The lease is renewed on its own ([`Lease`]), never behind a
    /// slow tick: when it cannot be renewed within two thirds of its TTL, or another node has it,
    /// driving stops before another node may take over: no step starts and no member is asked
    /// after that (a step under way finishes its writes, which the store's guards and the lease
    /// fence on taking requests back keep right).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut bus = self.hub.outages().watch_bus();
        loop {
            let lease = tokio::select! {
                _ = shutdown.cancelled() => return,
                lease = self.wait_for_lease() => lease,
            };
            self.driving.store(true, Ordering::Relaxed);
            tracing::info!(node = %self.node, "driving rollouts");
            let lost = lease.lost();
            // The moment the lease is lost, no further step starts and no further member is
            // asked; the work under way is not cut between its writes (a rollout stored as
            // completed with its last members' ends unwritten would stay so).
            let me = self.clone();
            let watch = tokio::spawn({
                let lost = lost.clone();
                async move {
                    lost.cancelled().await;
                    me.driving.store(false, Ordering::Relaxed);
                }
            });
            tokio::select! {
                _ = shutdown.cancelled() => {
                    watch.abort();
                    self.stop_driving().await;
                    return lease.release().await;
                }
                _ = self.drive(&mut bus, &lost) => {}
            }
            watch.abort();
            self.stop_driving().await;
            tracing::warn!(node = %self.node, "no longer driving rollouts: the lease could not be kept");
        }
    }

    /// Takes the lease once it is free; meanwhile reads the agents' last results now and then.
    async fn wait_for_lease(&self) -> Lease {
        loop {
            match Lease::try_acquire(self.store.clone(), LEASE, &self.node, LEASE_TTL).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("cannot take the rollout lease: {e}");
                    self.hub.outages().failed(Infra::Store, now_ms());
                }
            }
            if let Err(e) = self.sync(false).await {
                tracing::warn!("cannot read rollouts from the store: {e}");
            }
            tokio::time::sleep(CHECK).await;
        }
    }

    /// Forgets what it drove: the next holder (maybe this node again) loads it from the store.
    async fn stop_driving(&self) {
        self.driving.store(false, Ordering::Relaxed);
        self.live.lock().unwrap().clear();
        // Answers filed before the clear are facts, whoever drives next: written now.
        self.write_answers().await;
    }

    /// Drives the rollouts until the lease is `lost`: every [`CHECK`] picks up rollouts made or
    /// steered on other nodes, and ticks the engine in between.
    async fn drive(&self, bus: &mut tokio::sync::watch::Receiver<bool>, lost: &CancellationToken) {
        let mut next_check = Instant::now();
        while !lost.is_cancelled() {
            if Instant::now() >= next_check {
                if let Err(e) = self.sync(true).await {
                    tracing::warn!("cannot read rollouts from the store: {e}");
                }
                self.look_elsewhere().await;
                next_check = Instant::now() + CHECK;
            }
            self.tick().await;
            tokio::time::sleep(MIN_GAP).await;
            tokio::select! {
                _ = lost.cancelled() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
                Ok(()) = bus.changed() => {
                    let down = *bus.borrow_and_update();
                    self.follow_bus(down).await;
                }
            }
        }
    }

    /// Loads the rollouts this node should drive, adopts state changes made elsewhere, and reads
    /// the agents' last results.
    async fn sync(&self, driving: bool) -> Result<(), StoreError> {
        // What is read back below includes the answers filed here.
        self.write_answers().await;
        if driving {
            let ids = self.store.live_rollout_ids().await?;
            let held: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
            // Every member is read when a rollout is loaded and every FULL_MEMBERS_EVERY checks;
            // in between only the rollout's row and the members finished since the last read.
            let full = self.checks.load(Ordering::Relaxed).is_multiple_of(FULL_MEMBERS_EVERY);
            // The members finished since the oldest of the held rollouts' last reads, every
            // rollout's in one read; each rollout then takes its own since its own last read.
            let batch_at = now_ms();
            let oldest = self.live.lock().unwrap().values().map(|l| l.read_at).min().filter(|_| !full);
            let mut finished_since: HashMap<String, Vec<Member>> = HashMap::new();
            if let Some(oldest) = oldest {
                for (rollout, m) in self.store.members_finished_since(oldest - LATE_MS).await? {
                    finished_since.entry(rollout).or_default().push(m);
                }
            }
            for id in ids.iter().chain(held.iter().filter(|h| !ids.contains(h))) {
                let since = self.live.lock().unwrap().get(id).map(|l| l.read_at - LATE_MS).filter(|_| !full);
                let finished = match since {
                    None => {
                        let read_at = now_ms();
                        let Some((stored, members)) = self.store.rollout(id).await? else { continue };
                        let mut live = self.live.lock().unwrap();
                        match live.get_mut(id) {
                            Some(l) => adopt(l, stored, members.into_iter().enumerate(), read_at),
                            None => {
                                let mut l = Live::new(stored, members);
                                l.read_at = read_at;
                                live.insert(id.clone(), l);
                                vec![]
                            }
                        }
                    }
                    Some(since) => {
                        let Some(stored) = self.store.rollout_head(id).await? else { continue };
                        let changed = finished_since.remove(id).unwrap_or_default();
                        let changed = changed.into_iter().filter(|m| m.finished_at.is_some_and(|at| at >= since));
                        let mut live = self.live.lock().unwrap();
                        let Some(l) = live.get_mut(id) else { continue };
                        let at: Vec<(usize, Member)> =
                            changed.filter_map(|m| Some((*l.by_agent.get(&m.agent_id)?, m))).collect();
                        // Read back to the batch's start: the head, read since, adds nothing older.
                        adopt(l, stored, at.into_iter(), batch_at)
                    }
                };
                // Answered through another node: nothing to send again.
                for callback in &finished {
                    self.hub.forget(callback);
                }
            }
        }
        // Every check while driving (answers filed here are remembered as they come), else every
        // tenth; only what finished since the last read (less a margin, for writes that land late
        // or come from other nodes' clocks), and everything now and then.
        let check = self.checks.fetch_add(1, Ordering::Relaxed);
        if !driving && !check.is_multiple_of(10) {
            return Ok(());
        }
        let read_at = now_ms();
        let last_read = *self.last_read.lock().unwrap();
        let since = last_read.filter(|_| !check.is_multiple_of(FULL_READ_EVERY)).map(|at| at - LATE_MS);
        let read = self.store.last_results(since).await?;
        let mut mine = self.last.lock().unwrap();
        for (agent, at, result) in read {
            if mine.get(&agent).is_none_or(|(had, _)| *had <= at) {
                mine.insert(agent, (at, result));
            }
        }
        *self.last_read.lock().unwrap() = Some(read_at);
        Ok(())
    }

    /// The bus was lost (`down`) or is back: members on other nodes wait for it, with an event
    /// on each active rollout that says why, or are looked up again at once.
    async fn follow_bus(&self, down: bool) {
        if !self.driving.load(Ordering::Relaxed) {
            return;
        }
        let text = match down {
            true => format!("{}: members connected to other nodes wait for it", Infra::Bus.why()),
            false => "cluster bus back".to_string(),
        };
        tracing::warn!("{text}");
        {
            let mut live = self.live.lock().unwrap();
            for l in live.values_mut() {
                // Who counts as connected changes: the planner looks again.
                l.idle = None;
                if l.rollout.state == RolloutState::Active {
                    l.event(text.clone());
                }
            }
        }
        match down {
            true => self.elsewhere.lock().unwrap().clear(),
            false => self.look_elsewhere().await,
        }
    }

    /// Asks where the members waited on that are not connected here are: the members in flight
    /// with their last known version (a silent one already on the target did upgrade), the
    /// others only whether another node holds them (one bulk lookup each; the waiting members
    /// of a large rollout are not looked up in the store every second).
    async fn look_elsewhere(&self) {
        let (in_flight, waiting) = {
            let live = self.live.lock().unwrap();
            let (mut in_flight, mut waiting) = (Vec::new(), Vec::new());
            let open = live.values().flat_map(|l| l.members.iter().filter(|m| !m.state.is_final()));
            for m in open.filter(|m| !self.hub.is_connected(&m.agent_id)) {
                match m.state {
                    MemberState::InProgress => in_flight.push(m.agent_id.clone()),
                    _ => waiting.push(m.agent_id.clone()),
                }
            }
            for ids in [&mut in_flight, &mut waiting] {
                ids.sort();
                ids.dedup();
            }
            (in_flight, waiting)
        };
        if self.hub.outages().bus_down() {
            // Nobody is asked through a bus that is down; they are looked up when it is back.
            return self.elsewhere.lock().unwrap().clear();
        }
        let mut found = HashMap::new();
        let (waiting_found, in_flight_found) =
            tokio::join!(self.hub.live_elsewhere(&waiting), self.hub.statuses(&in_flight));
        for (ids, statuses) in [(waiting, waiting_found), (in_flight, in_flight_found)] {
            match statuses {
                Ok(statuses) => {
                    for (id, s) in ids.into_iter().zip(statuses) {
                        if let Some(s) = s {
                            let version = edge_agent_wire::parse_version(&s.version).ok();
                            found.insert(id, (s.status == AgentStatus::Connected, version));
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot tell where agents are connected: {e}"),
            }
        }
        let changed = {
            let mut elsewhere = self.elsewhere.lock().unwrap();
            let changed = *elsewhere != found;
            *elsewhere = found;
            changed
        };
        if changed {
            // Agents came or went on other nodes: the planner looks again.
            for l in self.live.lock().unwrap().values_mut() {
                l.idle = None;
            }
        }
    }
}

/// Takes what the store knows better than memory: the rollout's state, as an operator changed it
/// on any node, and the final states of members that answered through another node (`stored`, each
/// with its index among the rollout's members); the callbacks of the members it finished. `read_at`
/// is when the read began.
fn adopt(l: &mut Live, stored: Rollout, members: impl Iterator<Item = (usize, Member)>, read_at: i64) -> Vec<Callback> {
    let mut finished = Vec::new();
    // What the planner reads may have changed: it looks again.
    l.idle = None;
    if stored.state != l.stored_state {
        (l.rollout.state, l.rollout.reason, l.rollout.events) = (stored.state, stored.reason, stored.events);
        l.stored_state = stored.state;
    }
    for (i, s) in members {
        let Some(m) = l.members.get_mut(i) else { continue };
        let open = matches!(m.state, MemberState::Pending | MemberState::InProgress | MemberState::TimedOut);
        if open
            && s.agent_id == m.agent_id
            && s.state != m.state
            && (s.state.is_final() || s.state == MemberState::InProgress)
        {
            if s.state.is_final() {
                finished.extend(m.callback.clone());
            }
            *m = s;
        }
    }
    l.read_at = read_at;
    finished
}
