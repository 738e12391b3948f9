//! What operators do to the policy, on any node: set it (checked against the fleet: a group must
//! find agents, a downgrade must be allowed, and selectors that overlap are told with how the
//! overlap resolves), suspend or resume it, clear its halts, and read it. Every change is written
//! over the revision it read; the node that drives the policy picks it up from the store.

use std::collections::{HashMap, HashSet};

use semver::Version;
use serde_json::{json, Value};

use super::engine::{stored_of, Policies, PolicyError};
use super::membership::search_all;
use crate::model::policy::{self, FieldError, Mode, Policy, Readers};
use crate::model::policy_run::{Run, Stored};
use crate::store::policy::PolicyRow;

/// The policy as set, and what the operator should know about it.
pub struct Set {
    pub stored: Stored,
    /// Agents found by more than one group, and where they belong.
    pub warnings: Vec<String>,
}

fn field(field: &str, why: String) -> PolicyError {
    PolicyError::Invalid(FieldError { field: field.into(), why })
}

/// `a-1, a-2, a-3 and 4 more`.
fn some_names(names: &[&str]) -> String {
    let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 3 => format!("{shown} and {} more", n - 3),
        _ => shown,
    }
}

impl Policies {
    /// The policy as stored, if one is set.
    pub async fn get(&self) -> Result<Option<Stored>, PolicyError> {
        self.store.policy().await?.map(|row| stored_of(&row, self.selectors.stored)).transpose()
    }

    /// Sets the policy from its JSON; `latest` resolves a `latest` target.
    pub async fn set(
        &self,
        spec: &Value,
        latest: &(dyn Fn() -> Result<Version, String> + Sync),
    ) -> Result<Set, PolicyError> {
        let selector = self.selectors.new;
        let policy = policy::parse(spec, &Readers { selector: &selector, latest })?;
        let from_latest = spec["target"].as_str().is_some_and(|t| t.trim() == "latest");
        let old = self.store.policy().await?;
        let old_stored = old.as_ref().map(|row| stored_of(row, self.selectors.stored)).transpose().ok().flatten();
        let warnings = self.check(&policy, old_stored.as_ref()).await?;
        let now = edge_agent_base::time::now_ms();
        let new_target = old_stored.as_ref().is_none_or(|o| o.policy.target != policy.target);
        let row = PolicyRow {
            spec: policy::to_json(&policy),
            generation: old.as_ref().map_or(1, |o| o.generation + i64::from(new_target)),
            set_at: if new_target { now } else { old.as_ref().map_or(now, |o| o.set_at) },
            clears: old.as_ref().map_or(0, |o| o.clears),
            from_latest: if new_target { from_latest } else { old.as_ref().is_some_and(|o| o.from_latest) },
            revision: old.as_ref().map_or(1, |o| o.revision + 1),
            run: old.as_ref().map(|o| o.run.clone()).unwrap_or_default(),
        };
        if !self.store.put_policy(&row, old.as_ref().map(|o| o.revision)).await? {
            return Err(PolicyError::Changed);
        }
        tracing::info!(target = %policy.target, generation = row.generation, "update policy set");
        self.poke();
        Ok(Set { stored: stored_of(&row, self.selectors.stored)?, warnings })
    }

    /// Checks the policy against the fleet: each group finds agents; no downgrade unless allowed;
    /// the overlaps between groups, in words.
    async fn check(&self, p: &Policy, old: Option<&Stored>) -> Result<Vec<String>, PolicyError> {
        let names: HashMap<String, String> = self.store.agent_names().await?.into_iter().collect();
        let mut found: Vec<(usize, Vec<String>)> = Vec::new();
        for (i, g) in p.groups.iter().enumerate() {
            let Some(q) = &g.query else { continue };
            let ids = search_all(&self.store, q, None).await?;
            if ids.is_empty() {
                let why = format!(
                    "'{}' finds no agent: a group needs members (check the search, or add the agents first)",
                    g.selector
                );
                return Err(field(&format!("groups[{i}].selector"), why));
            }
            found.push((i, ids));
        }
        if !p.allow_downgrade {
            self.check_downgrade(p, old, &found, &names).await?;
        }
        let mut warnings = Vec::new();
        let mut claimed: HashSet<&String> = HashSet::new();
        for (i, ids) in &found {
            if ids.iter().all(|id| claimed.contains(id)) {
                let g = &p.groups[*i].name;
                warnings.push(format!("group {g} gets no agent: every agent it finds belongs to an earlier group"));
            }
            claimed.extend(ids.iter());
        }
        for (a, (i, first)) in found.iter().enumerate() {
            let first: HashSet<&String> = first.iter().collect();
            for (j, later) in &found[a + 1..] {
                let both: Vec<&str> = later
                    .iter()
                    .filter(|id| first.contains(id))
                    .map(|id| names.get(id).map_or(id.as_str(), |n| n))
                    .collect();
                if !both.is_empty() {
                    let (gi, gj) = (&p.groups[*i].name, &p.groups[*j].name);
                    warnings.push(format!(
                        "groups {gi} and {gj} both find {} ({}): they belong to {gi}, the first",
                        crate::fleet::policy::plan::agents(both.len()),
                        some_names(&both)
                    ));
                }
            }
        }
        Ok(warnings)
    }

    /// A target older than the current one, or than what an agent it manages runs, is a
    /// downgrade: refused unless allowed.
    async fn check_downgrade(
        &self,
        p: &Policy,
        old: Option<&Stored>,
        found: &[(usize, Vec<String>)],
        names: &HashMap<String, String>,
    ) -> Result<(), PolicyError> {
        let allow = "the policy never downgrades: set allowDowngrade to true to downgrade";
        if let Some(o) = old.filter(|o| o.policy.target > p.target) {
            return Err(field(
                "target",
                format!("{} is older than the current target {}; {allow}", p.target, o.policy.target),
            ));
        }
        let managed: Vec<String> = if p.groups.iter().any(|g| g.query.is_none()) {
            names.keys().cloned().collect()
        } else {
            found.iter().flat_map(|(_, ids)| ids.iter().cloned()).collect::<HashSet<_>>().into_iter().collect()
        };
        let statuses = self.hub.statuses(&managed).await.map_err(|e| PolicyError::Facts(e.into()))?;
        let newer: Vec<Version> = statuses
            .into_iter()
            .flatten()
            .filter_map(|s| edge_agent_wire::parse_version(&s.version).ok())
            .filter(|v| *v > p.target)
            .collect();
        if let Some(newest) = newer.iter().max() {
            let n = crate::fleet::policy::plan::agents(newer.len());
            return Err(field(
                "target",
                format!("{} is older than the version {n} it manages run (up to {newest}); {allow}", p.target),
            ));
        }
        Ok(())
    }

    /// Enables, suspends or disables the policy.
    pub async fn set_mode(&self, mode: Mode) -> Result<Stored, PolicyError> {
        self.change(|row| {
            row.spec["mode"] = json!(mode.name());
            Ok(())
        })
        .await
    }

    /// Clears the halts: the halted groups go on with the agents not failed for good.
    pub async fn clear_halts(&self) -> Result<Stored, PolicyError> {
        self.change(|row| {
            if row.run.groups.iter().all(|g| g.halt.is_none()) {
                return Err(PolicyError::NotHalted);
            }
            row.clears += 1;
            Ok(())
        })
        .await
    }

    /// Changes the stored policy with `f`, over the revision read.
    async fn change(&self, f: impl FnOnce(&mut PolicyRow) -> Result<(), PolicyError>) -> Result<Stored, PolicyError> {
        let old = self.store.policy().await?.ok_or(PolicyError::NotSet)?;
        let mut row = old.clone();
        f(&mut row)?;
        row.revision += 1;
        if !self.store.put_policy(&row, Some(old.revision)).await? {
            return Err(PolicyError::Changed);
        }
        self.poke();
        stored_of(&row, self.selectors.stored)
    }

    /// The policy's run as stored (its halts and their failures).
    pub async fn run_stored(&self) -> Result<Option<Run>, PolicyError> {
        Ok(self.store.policy().await?.map(|r| r.run))
    }
}
