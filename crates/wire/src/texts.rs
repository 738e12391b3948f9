//! The error texts of the upgrade (protocol.md §3.1, §3.4), word for word as Medplum's agent
//! writes them, so that a Medplum server and its clients read ours alike. The agent answers with
//! them; the server writes the same text when it refuses a request before asking any agent.

/// Another upgrade runs and the request is not forced.
pub const IN_PROGRESS: &str = "Pending upgrade is already in progress";

/// `text` is not a version (or names no published release).
pub fn invalid_version(text: &str) -> String {
    format!("Error during upgrading to version 'v{text}'. '{text}' is not a valid version")
}

/// The upgrade to `target` (a version, or `latest`) failed before its swap, because of `why`.
/// Medplum's agent names an upgrade to the latest release `latest`, whatever it resolved.
pub fn failed(target: &str, why: &str) -> String {
    match target {
        "latest" => format!("Error during upgrading to version 'latest': {why}"),
        v => format!("Error during upgrading to version 'v{v}': {why}"),
    }
}

/// After the swap, the running version is not `target`; `why` (possibly empty) says what happened.
pub fn not_upgraded(target: &str, running: &str, why: &str) -> String {
    format!("Failed to upgrade to version {target}. Agent still running with version {running}{why}")
}

/// The server's answer to a connect it cannot check now because its store is unavailable (ours;
/// Medplum's server has none). An agent on trial that reads it knows the server is up and its way
/// to it works, and waits for it rather than rolling back (see the agent's supervisor).
pub const STORE_UNAVAILABLE: &str = "Server storage unavailable, try again later";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_medplums() {
        assert_eq!(invalid_version("1.x"), "Error during upgrading to version 'v1.x'. '1.x' is not a valid version");
        assert_eq!(failed("1.2.0", "boom"), "Error during upgrading to version 'v1.2.0': boom");
        assert_eq!(failed("latest", "boom"), "Error during upgrading to version 'latest': boom");
        assert_eq!(
            not_upgraded("1.2.0", "1.1.0", ". Rolled back: crashed"),
            "Failed to upgrade to version 1.2.0. Agent still running with version 1.1.0. Rolled back: crashed"
        );
    }
}
