//! The timers' adapter: every second — or at once when an operator changed a service — the
//! node-loss check, the service round and the schedule round, each one command for the core.

use std::time::Duration;

use crate::plane::Plane;
use orchestratord::cluster::{Command, Tick};

/// How often the rounds run without being woken.
const ROUND: Duration = Duration::from_secs(1);

/// Runs the rounds forever.
pub async fn run(plane: Plane) {
    loop {
        tokio::select! {
            _ = plane.wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
        }
        for tick in [Tick::NodeLossCheck, Tick::ServiceRound, Tick::ScheduleRound] {
            if let Err(e) = plane.run(Command::Tick(tick)).await {
                tracing::warn!("{tick:?}: {e}");
            }
        }
    }
}
