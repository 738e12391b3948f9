//! What differs between operating systems, behind one small surface: replacing the installed
//! binary, free disk space, signals, the control channel, starting, supervising, stopping and
//! re-executing processes, service readiness, the service manager, and default paths. Everything
//! above this module is platform-neutral; each port provides the same names: [`unix`] (a Unix
//! socket, signals, systemd) or `windows` (a named pipe, console controls, a job object, the
//! service control manager).

mod service_error;
pub use service_error::{ServiceError, DEFAULT_SERVICE_NAME};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
