//! systemd readiness and watchdog (`sd_notify`): one datagram to `$NOTIFY_SOCKET` per state change.
//! A no-op outside systemd. The unit uses `NotifyAccess=all`, so the worker, a child of the main
//! process, speaks for the service.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`, `STATUS=connected`) when running under systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

/// Half the watchdog interval systemd asks for (`WATCHDOG_USEC`), if it asks.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog for as long as the runtime that polls this future is alive.
pub async fn watchdog() {
    let Some(period) = watchdog_period() else { return };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}
