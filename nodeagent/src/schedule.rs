//! Schedules pinned to this node: fired here, from the persisted desired state, whether or not
//! the control plane can be reached. A run is a local task (id derived from the node, schedule
//! and minute, so the control plane can check it) that the runner converges like any other and
//! reports with its schedule; once the control plane has recorded it stopped, its containers
//! are removed.

use std::collections::BTreeMap;

use flotilla_api::schedule::Overlap;
use flotilla_api::tasks::{DesiredStatus, DesiredTask, NodeSchedule, ScheduledRun, StopCode};
use serde::{Deserialize, Serialize};

/// A task this node started by a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTask {
    /// The task, as the runner converges it.
    pub task: DesiredTask,
    /// Which run it is.
    pub run: ScheduledRun,
    /// It stopped (when, seconds since the epoch).
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// The control plane recorded it stopped: its containers may go.
    #[serde(default)]
    pub acknowledged: bool,
}

/// This node's runs of its schedules and each schedule's last firing (schedule name → seconds
/// since the epoch): what the node persists of them (as two values, `local` and `fired`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalRuns {
    /// The runs, oldest first.
    pub tasks: Vec<LocalTask>,
    /// Each schedule's last firing.
    pub fired: BTreeMap<String, u64>,
}

/// How long a finished, acknowledged run is remembered.
const KEEP_SECS: u64 = 86_400;
/// Finished runs of one schedule kept (with their containers) until the control plane hears of
/// them; older ones go, so a frequent schedule on a node offline for long cannot fill its disk.
const KEEP_UNREPORTED: usize = 20;

/// A clock behind a schedule's last firing by more than this (3 h) was corrected, not stepped
/// back a little: counting starts over from it (cron's rule for clock changes: "clock changes
/// of more than 3 hours are considered to be corrections to the clock, and the new time is
/// used immediately"). A smaller step back (an NTP correction, a summer-time mistake) fires
/// nothing until the clock is past the last firing again: the minutes it repeats already ran.
pub const CLOCK_CORRECTION_SECS: u64 = 3 * 3600;

/// Fires what is due at `now`: at most one run per schedule (the latest missed minute, however
/// far the clock jumped forward), as its overlap policy allows. `fired` holds each schedule's
/// last firing; a schedule seen for the first time starts counting from now, and so does one
/// whose last firing is more than [`CLOCK_CORRECTION_SECS`] ahead of the clock (the clock was
/// set back: a year, say, after it ran a year ahead). A minute whose run is still remembered
/// (in `local`) is never fired again. Returns whether anything changed.
pub fn fire_due(
    schedules: &[NodeSchedule],
    fired: &mut BTreeMap<String, u64>,
    local: &mut Vec<LocalTask>,
    node_id: &str,
    now: u64,
) -> bool {
    let mut changed = false;
    fired.retain(|name, _| schedules.iter().any(|s| &s.name == name));
    for s in schedules {
        let Ok(cron) = flotilla_scheduler::cron::parse(&s.cron, &s.timezone) else {
            continue;
        };
        let Some(last) = fired.get(&s.name).copied() else {
            fired.insert(s.name.clone(), now);
            changed = true;
            continue;
        };
        if last > now.saturating_add(CLOCK_CORRECTION_SECS) {
            tracing::warn!(
                schedule = %s.name,
                "the clock is {} s behind this schedule's last firing: taken as a correction of \
                 the clock, its minutes count from now",
                last - now
            );
            fired.insert(s.name.clone(), now);
            changed = true;
            continue;
        }
        let Some(at) = latest_due(&cron, last, now) else {
            continue;
        };
        fired.insert(s.name.clone(), at);
        changed = true;
        let id = flotilla_api::tasks::scheduled_task_id(node_id, &s.name, at);
        if local.iter().any(|l| l.task.id == id) {
            // The clock came back to a minute that already ran (set back less than a
            // correction, then forward again): its run is not started twice.
            continue;
        }
        let running: Vec<usize> = local
            .iter()
            .enumerate()
            .filter(|(_, l)| l.run.schedule == s.name && l.finished_at.is_none())
            .map(|(i, _)| i)
            .collect();
        match s.overlap {
            Overlap::Forbid if !running.is_empty() => {
                tracing::info!(schedule = %s.name, "previous run still runs: this one is skipped");
                continue;
            }
            Overlap::Replace => {
                for i in running {
                    local[i].task.desired = DesiredStatus::Stopped;
                    local[i].task.stop_code = Some(StopCode::ScheduleReplaced);
                    local[i].task.stop_reason = Some(StopCode::ScheduleReplaced.reason().into());
                }
            }
            Overlap::Forbid | Overlap::Allow => {}
        }
        tracing::info!(schedule = %s.name, task = %id, "schedule fired");
        let mut finished: Vec<usize> = local
            .iter()
            .enumerate()
            .filter(|(_, l)| l.run.schedule == s.name && l.finished_at.is_some() && !l.acknowledged)
            .map(|(i, _)| i)
            .collect();
        finished.sort_by_key(|i| local[*i].run.fired_at);
        while finished.len() >= KEEP_UNREPORTED {
            let i = finished.remove(0);
            local[i].acknowledged = true;
            local[i].task.desired = DesiredStatus::Stopped;
        }
        local.push(LocalTask {
            task: DesiredTask {
                id,
                task_definition: s.task_definition.clone(),
                definition: s.definition.clone(),
                env: s.env.clone(),
                desired: DesiredStatus::Running,
                stop_reason: None,
                stop_code: None,
                stop_on_client_after: None,
                address: None,
                namespace: None,
                service: None,
                secret_versions: Default::default(),
                config_versions: Default::default(),
            },
            run: ScheduledRun {
                schedule: s.name.clone(),
                fired_at: at,
            },
            finished_at: None,
            acknowledged: false,
        });
    }
    changed
}

/// Forgets the runs finished and acknowledged more than a day ago ([`KEEP_SECS`]) both by the
/// wall clock (`now`) and by how long this agent has held them acknowledged (`held`, on the
/// monotonic clock): a clock set a year ahead would forget them all at once, and, set back,
/// their minutes would run again. Returns whether any was forgotten.
pub fn forget_old(local: &mut Vec<LocalTask>, now: u64, held: impl Fn(&str) -> u64) -> bool {
    let before = local.len();
    local.retain(|l| {
        !(l.acknowledged
            && l.finished_at
                .is_some_and(|f| now.saturating_sub(f) > KEEP_SECS)
            && held(&l.task.id) > KEEP_SECS)
    });
    local.len() != before
}

/// The latest firing of `cron` after `last` and at or before `now`. After a clock set a year
/// ahead, walking from `last` would visit a year of minutes (half a million of an
/// every-minute schedule) in one round: the last day is searched first, and before it only
/// when it holds none (a schedule that fires rarely, so few steps).
fn latest_due(cron: &flotilla_scheduler::cron::Cron, last: u64, now: u64) -> Option<u64> {
    let scan = |from: u64, until: u64| {
        let mut due = None;
        let mut after = i64::try_from(from).ok()?;
        while let Some(next) = cron.next_after_unix(after) {
            if u64::try_from(next).map_or(true, |n| n > until) {
                break;
            }
            due = u64::try_from(next).ok();
            after = next;
        }
        due
    };
    const RECENT_SECS: u64 = 86_400;
    let recent = now.saturating_sub(RECENT_SECS).max(last);
    scan(recent, now).or_else(|| (recent > last).then(|| scan(last, recent)).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(overlap: &str) -> NodeSchedule {
        NodeSchedule {
            name: "report".into(),
            cron: "0 2 * * *".into(),
            timezone: "UTC".into(),
            overlap: overlap.parse().expect("overlap"),
            task_definition: "report:1".into(),
            definition: flotilla_api::taskdef::parse(
                r#"{"family":"report","containerDefinitions":[{"name":"a","image":"x","memory":8}]}"#,
            )
            .expect("valid")
            .definition,
            env: Vec::new(),
        }
    }

    const DAY: u64 = 86_400;
    // 2026-11-26T00:00:00Z
    const MIDNIGHT: u64 = 1_795_651_200;

    #[test]
    fn fires_at_its_minute_once_and_by_the_overlap_policy() {
        let s = [schedule("forbid")];
        let (mut fired, mut local) = (BTreeMap::new(), Vec::new());
        // first sight: counting starts, nothing fires
        assert!(fire_due(&s, &mut fired, &mut local, "n-1", MIDNIGHT + 60));
        assert!(local.is_empty());
        // before 02:00 nothing; at 02:00:30 one run, fired at 02:00
        assert!(!fire_due(
            &s,
            &mut fired,
            &mut local,
            "n-1",
            MIDNIGHT + 7_000
        ));
        fire_due(&s, &mut fired, &mut local, "n-1", MIDNIGHT + 7_230);
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].run.fired_at, MIDNIGHT + 7_200);
        assert_eq!(
            local[0].task.id,
            flotilla_api::tasks::scheduled_task_id("n-1", "report", MIDNIGHT + 7_200)
        );
        // three days offline: one catch-up run (the latest), skipped while the first runs
        fire_due(
            &s,
            &mut fired,
            &mut local,
            "n-1",
            MIDNIGHT + 3 * DAY + 7_300,
        );
        assert_eq!(local.len(), 1, "forbid: the first one still runs");
        local[0].finished_at = Some(MIDNIGHT + 8_000);
        fire_due(
            &s,
            &mut fired,
            &mut local,
            "n-1",
            MIDNIGHT + 4 * DAY + 7_300,
        );
        assert_eq!(local.len(), 2);
        assert_eq!(local[1].run.fired_at, MIDNIGHT + 4 * DAY + 7_200);
        // replace: the running one is told to stop
        let r = [schedule("replace")];
        fire_due(
            &r,
            &mut fired,
            &mut local,
            "n-1",
            MIDNIGHT + 5 * DAY + 7_300,
        );
        assert_eq!(local[1].task.desired, DesiredStatus::Stopped);
        assert_eq!(local.len(), 3);
        // acknowledged runs are forgotten after a day
        for l in &mut local {
            l.finished_at = Some(MIDNIGHT + 5 * DAY);
            l.acknowledged = true;
        }
        fire_due(&r, &mut fired, &mut local, "n-1", MIDNIGHT + 6 * DAY + 100);
        // held a day by this agent too
        assert!(!forget_old(&mut local, MIDNIGHT + 6 * DAY + 100, |_| 600));
        assert!(forget_old(&mut local, MIDNIGHT + 6 * DAY + 100, |_| DAY + 1));
        assert!(local.is_empty());
    }

    #[test]
    fn a_clock_a_year_ahead_and_back_fires_one_catch_up_then_every_minute_again() {
        const YEAR: u64 = 365 * DAY;
        let mut s = schedule("allow");
        s.cron = "* * * * *".into();
        let s = [s];
        let (mut fired, mut local) = (BTreeMap::new(), Vec::new());
        let fire = |fired: &mut BTreeMap<String, u64>, local: &mut Vec<LocalTask>, at: u64| {
            fire_due(&s, fired, local, "n-1", at);
            local.len()
        };
        fire(&mut fired, &mut local, MIDNIGHT + 10);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 61), 1);
        // a year ahead: one run, the latest missed minute, not a year of them
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + YEAR + 70), 2);
        assert_eq!(local[1].run.fired_at, MIDNIGHT + YEAR + 60);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + YEAR + 75), 2);
        // back a year: a correction; nothing at once, then every minute from the clock's
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 90), 2);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 119), 2);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 121), 3);
        assert_eq!(local[2].run.fired_at, MIDNIGHT + 120);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 181), 4);
        // back ten minutes (less than a correction): the minutes that ran do not run again
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 121 - 600), 4);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 150), 4);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 241), 5);
        // acknowledged, they are not forgotten a year ahead (this agent held them a minute)
        for l in &mut local {
            l.finished_at = Some(MIDNIGHT + 242);
            l.acknowledged = true;
        }
        assert!(!forget_old(&mut local, MIDNIGHT + YEAR, |_| 60));
        // four hours ahead (its catch-up), then back before a minute that ran: counting
        // starts over, and that minute is not run again
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 4 * 3600 + 250), 6);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 200), 6);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 245), 6);
        assert_eq!(fire(&mut fired, &mut local, MIDNIGHT + 301), 7);
        let ids: std::collections::BTreeSet<&str> =
            local.iter().map(|l| l.task.id.as_str()).collect();
        assert_eq!(ids.len(), local.len(), "a run started twice");
    }

    #[test]
    fn a_node_offline_for_long_keeps_only_the_latest_unreported_runs() {
        let mut s = schedule("allow");
        s.cron = "* * * * *".into();
        let s = [s];
        let (mut fired, mut local) = (BTreeMap::new(), Vec::new());
        fire_due(&s, &mut fired, &mut local, "n-1", MIDNIGHT);
        for minute in 1..=30 {
            fire_due(
                &s,
                &mut fired,
                &mut local,
                "n-1",
                MIDNIGHT + minute * 60 + 1,
            );
            for l in &mut local {
                l.finished_at.get_or_insert(MIDNIGHT + minute * 60 + 30);
            }
        }
        let kept = local.iter().filter(|l| !l.acknowledged).count();
        assert_eq!(kept, KEEP_UNREPORTED, "{}", local.len());
        // the oldest were let go, the latest kept
        assert!(local
            .iter()
            .filter(|l| l.acknowledged)
            .all(|l| l.run.fired_at <= MIDNIGHT + 10 * 60));
    }
}
