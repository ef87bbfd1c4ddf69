//! The timers' adapter: every second — or at once when an operator changed a service — the
//! node-loss check, the service round and the schedule round, and every minute the removal
//! of stopped tasks past their retention, and every scaling period the scaling round, each one
//! command for the core.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::plane::Plane;
use orchestratord::cluster::{Command, Tick, STOPPED_RETENTION_SECS};

/// How often the rounds run without being woken.
const ROUND: Duration = Duration::from_secs(1);
/// How often stopped tasks past their retention are removed.
const PRUNE: Duration = Duration::from_secs(60);

/// A step of the wall clock against the monotonic one larger than this is a clock set ahead
/// or back (NTP slews far less; a busy machine's late rounds move both clocks alike).
const STEP: Duration = Duration::from_secs(60);

/// Watches the wall clock for steps. Stopped tasks are removed by their age on the wall clock
/// (`stopped_at`): a clock set a year ahead would read every one of them as past its
/// retention and remove them at the next minute — the records of finished tasks lost hours
/// early. So after a step, removal waits one retention (3 h, on the monotonic clock), by
/// which time every task it would remove has been stopped that long for real.
#[derive(Debug)]
struct StepWatch {
    /// The monotonic clock's origin here.
    base: Instant,
    /// The wall clock minus the monotonic one (milliseconds) when last looked at.
    offset_ms: i128,
    /// Removal waits until then (a step was seen).
    paused_until: Option<Instant>,
}

impl StepWatch {
    fn new(wall: SystemTime, mono: Instant) -> Self {
        let mut w = Self {
            base: mono,
            offset_ms: 0,
            paused_until: None,
        };
        w.offset_ms = w.offset(wall, mono);
        w
    }

    fn offset(&self, wall: SystemTime, mono: Instant) -> i128 {
        let wall_ms = match wall.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i128,
            Err(e) => -(e.duration().as_millis() as i128),
        };
        wall_ms - mono.saturating_duration_since(self.base).as_millis() as i128
    }

    /// Whether stopped tasks may be removed at `wall` and `mono`: not within a retention of a
    /// step of the wall clock.
    fn removal_allowed(&mut self, wall: SystemTime, mono: Instant) -> bool {
        let offset = self.offset(wall, mono);
        let step = offset - self.offset_ms;
        self.offset_ms = offset;
        if step.unsigned_abs() > STEP.as_millis() {
            let retention = Duration::from_secs(STOPPED_RETENTION_SECS);
            tracing::warn!(
                "the wall clock was set {} by {} s: stopped tasks are kept {} s more before \
                 their retention counts again",
                if step > 0 { "ahead" } else { "back" },
                step.unsigned_abs() / 1000,
                retention.as_secs()
            );
            self.paused_until = Some(mono + retention);
        }
        self.paused_until.is_none_or(|until| mono >= until)
    }
}

/// Runs the rounds forever; the scaling round every `scaling_period`.
pub async fn run(plane: Plane, scaling_period: Duration) {
    let mut pruned = tokio::time::Instant::now();
    let mut scaled = tokio::time::Instant::now();
    let mut steps = StepWatch::new(SystemTime::now(), Instant::now());
    loop {
        tokio::select! {
            _ = plane.wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
        }
        let mut ticks = vec![Tick::NodeLossCheck, Tick::ServiceRound, Tick::ScheduleRound];
        // Looked at every round, so a step is seen whenever it happens.
        let removal = steps.removal_allowed(SystemTime::now(), Instant::now());
        if pruned.elapsed() >= PRUNE && removal {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_pauses_the_removal_of_stopped_tasks_for_a_retention() {
        let (wall0, mono0) = (
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Instant::now(),
        );
        let at = |secs: u64, ahead: u64| {
            (
                wall0 + Duration::from_secs(secs + ahead),
                mono0 + Duration::from_secs(secs),
            )
        };
        let mut w = StepWatch::new(wall0, mono0);
        let (wall, mono) = at(30, 0);
        assert!(w.removal_allowed(wall, mono));
        // a year ahead: paused for 3 h, whatever the wall clock then reads
        const YEAR: u64 = 365 * 86_400;
        let (wall, mono) = at(60, YEAR);
        assert!(!w.removal_allowed(wall, mono));
        let (wall, mono) = at(60 + 3 * 3600 - 1, YEAR);
        assert!(!w.removal_allowed(wall, mono));
        let (wall, mono) = at(60 + 3 * 3600, YEAR);
        assert!(w.removal_allowed(wall, mono));
        // back: paused again; a second's drift is no step
        let (wall, mono) = at(20_000, 0);
        assert!(!w.removal_allowed(wall, mono));
        let (wall, mono) = at(20_000 + 3 * 3600, 1);
        assert!(w.removal_allowed(wall, mono));
    }
}
