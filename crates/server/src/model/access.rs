//! Who may do what: the roles a client has, and what an endpoint needs. The table of every
//! endpoint's need is `api::rules`; this is the vocabulary, with no I/O.

/// What a client is: an agent's own credentials, or an operator's client with one of three roles,
/// each allowed what the one before it is, and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An agent's own credentials: its socket, and its own `Agent` resource.
    Agent,
    /// Sees the fleet: search, read, `$status`, `$bulk-status`, rollouts, the page, `/metrics`.
    Viewer,
    /// Acts on the fleet: upgrades, rollouts, `$reload-config`, `$fetch-logs`, `$stats`, `$push`.
    Operator,
    /// Manages clients and agents, and reads the audit trail.
    Admin,
}

/// A role name that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected viewer, operator or admin")]
pub struct UnknownRole(pub String);

impl Role {
    /// The roles an operator's client may have, lowest first.
    pub const OPERATOR_ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// What a client of this role is called when it has no name of its own.
    pub fn title(self) -> &'static str {
        match self {
            Role::Agent => "Agent",
            Role::Viewer => "Viewer",
            Role::Operator => "Operator",
            Role::Admin => "Administrator",
        }
    }

    /// An operator client's role from its name (`agent` is not one: agents are made with
    /// `agent add`).
    pub fn parse(text: &str) -> Result<Role, UnknownRole> {
        Role::OPERATOR_ROLES
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| UnknownRole(crate::params::quoted(text)))
    }
}

/// What an endpoint needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: anyone may call it (it checks what it is given itself: the token endpoint).
    Public,
    /// Any valid credentials; the handler narrows it (an agent reads only its own `Agent`).
    Client,
    /// A client with at least this role.
    Role(Role),
}

impl Need {
    /// Whether a caller with `role` is allowed; None when it needs more, with the role it needs.
    pub fn check(self, role: Role) -> Result<(), Role> {
        match self {
            Need::Role(needed) if role < needed => Err(needed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert_eq!(Role::parse("operator"), Ok(Role::Operator));
        assert_eq!(
            Role::parse("root").unwrap_err().to_string(),
            "unknown role \"root\": expected viewer, operator or admin"
        );
        assert!(Role::parse("agent").is_err(), "agents are made with agent add");
        assert_eq!(Need::Role(Role::Operator).check(Role::Viewer), Err(Role::Operator));
        assert_eq!(Need::Role(Role::Operator).check(Role::Admin), Ok(()));
        assert_eq!(Need::Role(Role::Viewer).check(Role::Agent), Err(Role::Viewer));
        assert_eq!(Need::Client.check(Role::Agent), Ok(()));
    }
}
