//! What differs between operating systems, behind one small surface: replacing the installed
//! binary, free disk space, signals, the control socket, and starting, adopting, stopping and
//! re-executing processes. Everything above this module is platform-neutral; a port adds one file
//! beside [`unix`] that provides the same names.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;
