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

/// Fires what is due at `now`: at most one run per schedule (the latest missed minute), as its
/// overlap policy allows. `fired` holds each schedule's last firing; a schedule seen for the
/// first time starts counting from now. Returns whether anything changed.
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
        let mut due = None;
        let mut after = last as i64;
        while let Some(next) = cron.next_after_unix(after) {
            if next as u64 > now {
                break;
            }
            due = Some(next as u64);
            after = next;
        }
        let Some(at) = due else { continue };
        fired.insert(s.name.clone(), at);
        changed = true;
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
        let id = flotilla_api::tasks::scheduled_task_id(node_id, &s.name, at);
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
    let before = local.len();
    local.retain(|l| {
        !(l.acknowledged
            && l.finished_at
                .is_some_and(|f| now.saturating_sub(f) > KEEP_SECS))
    });
    changed || local.len() != before
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
        assert!(local.is_empty());
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
