//! What `agent service …` can fail with, the same on every platform (Unix only ever answers
//! [`ServiceError::Unsupported`]), and the service's default name.

/// The service's name unless `--name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "edge-agent";

/// What `agent service …` could not do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("`agent service` manages a Windows service; here, use the systemd unit ({0})")]
    Unsupported(&'static str),
    #[error("cannot {action} the service {name}")]
    Manager {
        action: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the service {name} did not become {wanted} within {secs} s (it is {state})")]
    Timeout { name: String, wanted: &'static str, secs: u64, state: String },
    #[error("the service {name} stopped with exit code {code}: see {log}")]
    Failed { name: String, code: u32, log: String },
}
