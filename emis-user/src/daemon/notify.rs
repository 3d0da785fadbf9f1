//! systemd's readiness protocol (`Type=notify`); silent when not started by systemd.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}

/// The program is attached and the metrics listener bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; systemd wants the monotonic time with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "reading the monotonic clock for systemd"),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
