//! Which release to install, and whether it is allowed: a pure function of the request, the
//! running version, the resolved release, the local policy and the local history (protocol.md
//! §3.1 steps 4–6). No I/O, no clock.

use edge_agent_wire::Target;
use semver::Version;

/// What the agent was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub target: Target,
    pub force: bool,
}

/// Local rules that the server cannot override.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub allow_downgrade: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do: answer 200 at once, download nothing.
    UpToDate,
    /// Download and install `resolved`.
    Install,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "downgrade from {running} to {target} is not allowed by this agent's configuration (allow_downgrade = false)"
    )]
    DowngradeForbidden { running: Version, target: Version },
    #[error("version {target} failed here before ({reason}); use force to try it again")]
    FailedBefore { target: Version, reason: String },
}

/// `failed_before(v)` tells whether `v` was rolled back or failed its self-check here, and why.
pub fn decide(
    ask: &Ask,
    running: &Version,
    resolved: &Version,
    policy: &Policy,
    failed_before: impl Fn(&Version) -> Option<String>,
) -> Result<Decision, Refusal> {
    if resolved == running && !ask.force {
        return Ok(Decision::UpToDate);
    }
    if resolved < running {
        if ask.target == Target::Latest {
            return Ok(Decision::UpToDate); // latest never downgrades, forced or not
        }
        if !policy.allow_downgrade {
            return Err(Refusal::DowngradeForbidden { running: running.clone(), target: resolved.clone() });
        }
    }
    if !ask.force {
        if let Some(reason) = failed_before(resolved) {
            return Err(Refusal::FailedBefore { target: resolved.clone(), reason });
        }
    }
    Ok(Decision::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn decision_table() {
        let allow = Policy { allow_downgrade: true };
        let forbid = Policy { allow_downgrade: false };
        let ask = |version: Option<&str>, force| Ask { target: Target::from(version.map(v)), force };
        let none = |_: &Version| None;
        let bad = |x: &Version| (x == &v("2.0.0")).then(|| "crashed on start".to_string());
        use Decision::*;
        type Case<'a> = (Ask, &'a str, &'a str, &'a Policy, Result<Decision, &'a str>);
        let cases: Vec<Case> = vec![
            (ask(Some("1.0.0"), false), "1.0.0", "1.0.0", &allow, Ok(UpToDate)),
            (ask(Some("1.0.0"), true), "1.0.0", "1.0.0", &allow, Ok(Install)),
            (ask(None, false), "1.0.0", "1.1.0", &allow, Ok(Install)),
            (ask(None, false), "1.2.0", "1.1.0", &allow, Ok(UpToDate)),
            (ask(None, true), "1.2.0", "1.1.0", &allow, Ok(UpToDate)),
            (ask(Some("1.1.0"), false), "1.2.0", "1.1.0", &allow, Ok(Install)),
            (ask(Some("1.1.0"), false), "1.2.0", "1.1.0", &forbid, Err("not allowed")),
            (ask(Some("1.1.0"), false), "1.1.0-rc.1", "1.1.0", &allow, Ok(Install)),
            (ask(Some("1.1.0"), false), "1.1.0+build.7", "1.1.0", &allow, Ok(Install)),
        ];
        for (a, running, resolved, policy, want) in cases {
            let got = decide(&a, &v(running), &v(resolved), policy, none);
            match want {
                Ok(d) => assert_eq!(got, Ok(d), "{a:?} {running} → {resolved}"),
                Err(text) => assert!(got.unwrap_err().to_string().contains(text)),
            }
        }
        let refused = decide(&ask(Some("2.0.0"), false), &v("1.0.0"), &v("2.0.0"), &allow, bad).unwrap_err();
        assert!(refused.to_string().contains("failed here before (crashed on start)"), "{refused}");
        assert_eq!(decide(&ask(Some("2.0.0"), true), &v("1.0.0"), &v("2.0.0"), &allow, bad), Ok(Install));
        assert!(
            decide(&ask(None, false), &v("1.0.0"), &v("2.0.0"), &allow, bad).is_err(),
            "latest never retries a rollback"
        );
    }
}
