//! The timers' adapter: every second — or at once when an operator changed a service — the
//! node-loss check, the service round and the schedule round, and every minute the removal
//! of stopped tasks past their retention, and every scaling period the scaling round, each one
//! command for the core.

use std::time::Duration;

use crate::plane::Plane;
use orchestratord::cluster::{Command, Tick};

/// How often the rounds run without being woken.
const ROUND: Duration = Duration::from_secs(1);
/// How often stopped tasks past their retention are removed.
const PRUNE: Duration = Duration::from_secs(60);

/// Runs the rounds forever; the scaling round every `scaling_period`.
pub async fn run(plane: Plane, scaling_period: Duration) {
    let mut pruned = tokio::time::Instant::now();
    let mut scaled = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = plane.wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
        }
        let mut ticks = vec![Tick::NodeLossCheck, Tick::ServiceRound, Tick::ScheduleRound];
        if pruned.elapsed() >= PRUNE {
            pruned = tokio::time::Instant::now();
            ticks.push(Tick::PruneStopped);
        }
        if scaled.elapsed() >= scaling_period {
            scaled = tokio::time::Instant::now();
            ticks.push(Tick::ScalingRound);
        }
        for tick in ticks {
            if let Err(e) = plane.run(Command::Tick(tick)).await {
                tracing::warn!("{tick:?}: {e}");
            }
        }
    }
}
