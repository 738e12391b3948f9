//! Service readiness and watchdog: systemd's `sd_notify` on Unix (one datagram per state change;
//! the unit uses `NotifyAccess=all`, so the worker, a child of the main process, speaks for the
//! service). A no-op outside systemd, and on Windows, where the service's state is reported to the
//! service control manager by the supervising process (`platform::service`).

use std::time::Duration;

/// Sends `state` (e.g. `READY=1`, `STATUS=connected`) when running under systemd.
pub fn notify(state: &str) {
    crate::platform::sd_notify(state)
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
