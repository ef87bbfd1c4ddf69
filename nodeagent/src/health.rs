//! Container health checks (ECS `healthCheck`): `["CMD", …]` or `["CMD-SHELL", "…"]` run
//! inside the container (through `ContainerStore::exec_command`), or Flotilla's
//! `["HTTP", "http://localhost:PORT/PATH"]` and `["TCP", "PORT"]` probed from its network
//! namespace (`ContainerStore::probe_command`), 1 s after it starts, then every
//! `interval` seconds, each bounded by `timeout`. A success makes the container healthy; after
//! `retries` failures in a row it is unhealthy; failures within `startPeriod` of its start do
//! not count. Checks run on the node, so they go on while it is disconnected; the outcome feeds
//! `dependsOn: HEALTHY` and is reported with the container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_api::taskdef::HealthCheck;
use flotilla_runtime::container::ContainerStore;

/// Where a container's checks stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Health {
    /// As reported: `starting`, `healthy`, `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The pure verdict: `failures` in a row so far, at `since_start` after the container started.
pub fn judge(
    check: &HealthCheck,
    current: Health,
    failures: u32,
    passed: bool,
    since_start: Duration,
) -> (Health, u32) {
    if passed {
        return (Health::Healthy, 0);
    }
    if since_start < Duration::from_secs(check.start_period.into()) {
        // Grace: failures do not count yet.
        return (current, 0);
    }
    let failures = failures + 1;
    if failures >= check.retries {
        (Health::Unhealthy, failures)
    } else {
        (current, failures)
    }
}

/// The command a check runs.
pub fn command(check: &HealthCheck) -> Vec<String> {
    match check.command.split_first() {
        Some((kind, rest)) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// Health of running containers by runtime id, with one checker task each for the run it
/// started with: a container restarted in place keeps its id, and its new run starts over
/// (`Starting`, its `startPeriod` again), as Docker's health does.
#[derive(Debug, Default)]
pub struct Checks {
    /// By id: the start of the run checked, and the verdict.
    state: Mutex<HashMap<String, (Option<SystemTime>, Health)>>,
}

impl Checks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<SystemTime>, Health)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict on container `id`'s run that started at `started`, if it has a checker.
    pub fn get(&self, id: &str, started: Option<SystemTime>) -> Option<Health> {
        self.lock()
            .get(id)
            .filter(|(run, _)| *run == started)
            .map(|(_, h)| *h)
    }

    /// Starts checking container `id`'s run that started at `started`, unless that is
    /// already going on; `changed` is called whenever the verdict changes.
    pub fn ensure(
        self: &Arc<Self>,
        store: &ContainerStore,
        id: &str,
        started: Option<SystemTime>,
        check: &HealthCheck,
        changed: impl Fn() + Send + 'static,
    ) {
        {
            let mut state = self.lock();
            if state.get(id).is_some_and(|(run, _)| *run == started) {
                return;
            }
            // A new run (or the first): the checker of an earlier one sees it is superseded.
            state.insert(id.to_string(), (started, Health::Starting));
        }
        let me = self.clone();
        let store = store.clone();
        let id = id.to_string();
        let check = check.clone();
        tokio::spawn(async move {
            me.watch(store, &id, started, check, changed).await;
            let mut state = me.lock();
            if state.get(&id).is_some_and(|(run, _)| *run == started) {
                state.remove(&id);
            }
        });
    }

    /// Whether the checker of `id`'s run that started at `started` is still the current one.
    fn current(&self, id: &str, started: Option<SystemTime>) -> bool {
        self.lock().get(id).is_some_and(|(run, _)| *run == started)
    }

    /// Checks until the container stops running or a new run of it has a checker.
    async fn watch(
        &self,
        store: ContainerStore,
        id: &str,
        run: Option<SystemTime>,
        check: HealthCheck,
        changed: impl Fn(),
    ) {
        let started = Instant::now();
        let args = command(&check);
        let probe = check
            .probe()
            .and_then(Result::ok)
            .and_then(|p| flotilla_runtime::container::exec::Probe::parse(&p).ok());
        let timeout = Duration::from_secs(check.timeout.into());
        let (mut health, mut failures) = (Health::Starting, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            if !self.current(id, run) {
                return;
            }
            let made = match &probe {
                Some(p) => store.probe_command(id, p, timeout),
                None => store.exec_command(id, &args, Some(timeout), None),
            };
            let cmd = match made {
                Ok(c) => c,
                // Gone or no longer running: nothing left to check.
                Err(_) => return,
            };
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let passed = match cmd.spawn() {
                Ok(mut child) => {
                    // The helper kills the command at its timeout; this guards the helper.
                    let guard = timeout + Duration::from_secs(10);
                    matches!(
                        tokio::time::timeout(guard, child.wait()).await,
                        Ok(Ok(s)) if s.success()
                    )
                }
                Err(e) => {
                    tracing::warn!(container = id, "health check: {e}");
                    false
                }
            };
            let (next, f) = judge(&check, health, failures, passed, started.elapsed());
            failures = f;
            if next != health {
                {
                    let mut state = self.lock();
                    match state.get_mut(id) {
                        Some((r, h)) if *r == run => *h = next,
                        // A new run has its own checker.
                        _ => return,
                    }
                }
                tracing::info!(container = id, health = next.as_str(), "health changed");
                health = next;
                changed();
            }
            tokio::time::sleep(Duration::from_secs(check.interval.into())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["CMD-SHELL".into(), "test -f /ready".into()],
            interval: 5,
            timeout: 2,
            retries,
            start_period,
        }
    }

    #[test]
    fn verdicts_follow_ecs_rules() {
        let c = check(3, 10);
        let s = Duration::from_secs;
        // failures in the start period do not count
        assert_eq!(
            judge(&c, Health::Starting, 0, false, s(5)),
            (Health::Starting, 0)
        );
        // a success is healthy at once
        assert_eq!(
            judge(&c, Health::Starting, 0, true, s(5)),
            (Health::Healthy, 0)
        );
        // three failures in a row after it make it unhealthy
        assert_eq!(
            judge(&c, Health::Healthy, 0, false, s(11)),
            (Health::Healthy, 1)
        );
        assert_eq!(
            judge(&c, Health::Healthy, 1, false, s(16)),
            (Health::Healthy, 2)
        );
        assert_eq!(
            judge(&c, Health::Healthy, 2, false, s(21)),
            (Health::Unhealthy, 3)
        );
        // and a success heals it
        assert_eq!(
            judge(&c, Health::Unhealthy, 3, true, s(26)),
            (Health::Healthy, 0)
        );
        assert_eq!(command(&c), ["/bin/sh", "-c", "test -f /ready"]);
        let mut direct = c.clone();
        direct.command = vec!["CMD".into(), "pg_isready".into(), "-q".into()];
        assert_eq!(command(&direct), ["pg_isready", "-q"]);
    }
}
