//! Where one agent stands with the policy, from what is known of it alone ([`AgentFacts`]): on
//! the target, newer than it, pinned by an operator, asked, busy in another rollout, failed,
//! waiting for a retry, offline, or ready to be asked ([`Standing::Ready`]) when its group's time
//! comes. Pure; the planner ([`super::plan`]) adds what depends on its group.

use std::sync::Arc;

use edge_agent_wire::Target;
use semver::Version;

use crate::model::failure::FailureKind;
use crate::model::member::MemberState;
use crate::model::policy_run::{Attempt, Record};

/// One agent as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFacts {
    pub id: Arc<str>,
    pub name: Arc<str>,
    /// Its group (an index into the policy's groups: the first whose selector finds it, else the
    /// implicit last group); None: no group, the policy leaves it alone.
    pub group: Option<usize>,
    pub connected: bool,
    /// The version it last reported; None: never seen.
    pub version: Option<Version>,
    /// When its status or version last changed (the policy's clock).
    pub status_at: Option<i64>,
    /// Its attempts at the current target.
    pub record: Option<Arc<Record>>,
    /// An operator's `$upgrade` since the target was set asked for this.
    pub pinned: Option<Target>,
    /// Where it stands in its group's current rollout, while it is not finished there.
    pub member: Option<MemberState>,
    /// Another rollout that holds it and has not finished with it: an operator's, or the policy's
    /// for an earlier target.
    pub busy: Option<String>,
}

/// Where an agent stands, before its group's progress is taken into account.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// No group: the policy leaves it alone.
    Unmanaged,
    OnTarget,
    /// It runs a newer version than the target, and the policy does not downgrade.
    Ahead,
    /// An operator's `$upgrade` asked for another version since the target was set.
    Pinned(Target),
    /// Queued in its group's rollout, not asked yet.
    Queued,
    /// Asked in its group's rollout; its answer has not come.
    Asked,
    /// In another rollout (which one).
    Busy(String),
    /// Its upgrade to the target failed definitively: not asked again for this target.
    Failed,
    /// Its last attempt failed for a transient reason; asked again from this time on.
    Retrying(i64),
    /// It reported success, but has not reported the target version yet; its success was recorded
    /// at this time.
    Reported(i64),
    /// Not connected: asked once it connects (within its group's window).
    Offline,
    /// Connected and not on the target: asked when its group's time comes.
    Ready,
}

/// Where `a` stands at `now`, for `target`.
pub fn standing(a: &AgentFacts, target: &Version, allow_downgrade: bool, now: i64) -> Standing {
    if a.group.is_none() {
        return Standing::Unmanaged;
    }
    if a.version.as_ref() == Some(target) {
        return Standing::OnTarget;
    }
    if let Some(p) = &a.pinned {
        return Standing::Pinned(p.clone());
    }
    match a.member {
        Some(MemberState::Pending) => return Standing::Queued,
        Some(_) => return Standing::Asked,
        None => {}
    }
    if let Some(r) = &a.busy {
        return Standing::Busy(r.clone());
    }
    if a.version.as_ref().is_some_and(|v| v > target) && !allow_downgrade {
        return Standing::Ahead;
    }
    if let Some(r) = &a.record {
        match r.last {
            Attempt::Failed(FailureKind::Definite) => return Standing::Failed,
            Attempt::Failed(FailureKind::Transient) if r.retry_at.is_some_and(|at| at > now) => {
                return Standing::Retrying(r.retry_at.unwrap_or(now))
            }
            // A success not yet followed by the new version; once its status changed since
            // (it restarted on another version), it is asked again.
            Attempt::Succeeded if a.status_at.is_none_or(|at| at <= r.at) => return Standing::Reported(r.at),
            _ => {}
        }
    }
    if !a.connected {
        return Standing::Offline;
    }
    Standing::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentFacts {
        AgentFacts {
            id: "a".into(),
            name: "a".into(),
            group: Some(0),
            connected: true,
            version: Some(Version::new(1, 0, 0)),
            status_at: Some(0),
            record: None,
            pinned: None,
            member: None,
            busy: None,
        }
    }

    fn record(last: Attempt, retry_at: Option<i64>) -> Option<Arc<Record>> {
        let rollout = "r".to_string();
        let r =
            Record { agent_id: "a".into(), generation: 1, failures: 1, last, reason: None, at: 10, retry_at, rollout };
        Some(Arc::new(r))
    }

    #[test]
    fn each_standing_from_the_facts() {
        let target = Version::new(2, 0, 0);
        let table: Vec<(AgentFacts, Standing)> = vec![
            (agent(), Standing::Ready),
            (AgentFacts { group: None, ..agent() }, Standing::Unmanaged),
            (AgentFacts { version: Some(target.clone()), pinned: Some(Target::Latest), ..agent() }, Standing::OnTarget),
            (
                AgentFacts { pinned: Some(Target::Exact(Version::new(1, 5, 0))), ..agent() },
                Standing::Pinned(Target::Exact(Version::new(1, 5, 0))),
            ),
            (AgentFacts { member: Some(MemberState::Pending), ..agent() }, Standing::Queued),
            (AgentFacts { member: Some(MemberState::InProgress), connected: false, ..agent() }, Standing::Asked),
            (AgentFacts { busy: Some("r9".into()), ..agent() }, Standing::Busy("r9".into())),
            (AgentFacts { version: Some(Version::new(3, 0, 0)), ..agent() }, Standing::Ahead),
            (AgentFacts { record: record(Attempt::Failed(FailureKind::Definite), None), ..agent() }, Standing::Failed),
            (
                AgentFacts { record: record(Attempt::Failed(FailureKind::Transient), Some(100)), ..agent() },
                Standing::Retrying(100),
            ),
            (
                AgentFacts { record: record(Attempt::Failed(FailureKind::Transient), Some(50)), ..agent() },
                Standing::Ready,
            ),
            (AgentFacts { record: record(Attempt::Succeeded, None), ..agent() }, Standing::Reported(10)),
            (AgentFacts { record: record(Attempt::Succeeded, None), status_at: Some(11), ..agent() }, Standing::Ready),
            (AgentFacts { connected: false, ..agent() }, Standing::Offline),
            (AgentFacts { connected: false, version: None, ..agent() }, Standing::Offline),
        ];
        for (facts, want) in table {
            assert_eq!(standing(&facts, &target, false, 60), want, "{facts:?}");
        }
        let newer = AgentFacts { version: Some(Version::new(3, 0, 0)), ..agent() };
        assert_eq!(standing(&newer, &target, true, 60), Standing::Ready, "allowDowngrade: a newer agent is asked");
    }
}
