//! The daemons under systemd (`Type=notify`, `WatchdogSec=`): readiness once they really
//! serve, and watchdog pings only while their main loop is healthy. Outside systemd (no
//! `NOTIFY_SOCKET`) all of this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is up (and what it is doing, for `systemctl status`).
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// How often to ping the watchdog (half its timeout), when systemd asked for one: as
/// sd_watchdog_enabled(3), `WATCHDOG_USEC` set and `WATCHDOG_PID`, if set, this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC")
        .ok()?
        .parse()
        .ok()
        .filter(|u| *u > 0)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// One watchdog ping.
pub fn ping() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}
