//! The systemd notify protocol (`Type=notify`): `READY=1` once listening and recovered,
//! `STOPPING=1` when the drain starts, and `WATCHDOG=1` pings while the store takes writes,
//! when the unit sets `WatchdogSec`. Without `NOTIFY_SOCKET` every call does nothing.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::Store;

/// Tells systemd the sidecar is ready.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("accepting jobs")]);
}

/// Tells systemd the sidecar is stopping (draining).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings the watchdog at half its interval, each time after proving the store takes a write,
/// so a wedged sidecar is restarted by systemd; returns at once when no watchdog is set.
pub async fn watchdog(store: Arc<dyn Store>, cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|i| !i.is_zero()) else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        match store.check_writable().await {
            Ok(()) => send(&[NotifyState::Watchdog]),
            Err(e) => warn!(error = %e, "store does not take writes; watchdog not pinged"),
        }
    }
}
