//! The logs of removed tasks. A stopped task's containers are removed once the control plane
//! has recorded the stop, but their logs are kept: moved to `<data-dir>/task-logs/<task>/<index>/`
//! first (with the containers' names), for [`KEEP`] after the removal and for the
//! [`KEEP_TASKS`] most recently removed tasks — what ECS keeps a stopped task's containers for
//! (its agent's `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`, 3 h by default: "Automatic Amazon ECS
//! task and image cleanup"), bounded here by count too, as an edge node's disk is small. The
//! runner keeps them ([`keep`]); `logs` reads them ([`kept`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::runtime::{ContainerName, ContainerRuntime, RunState};

/// The directory under the data directory where removed tasks' logs are kept.
pub const KEPT_DIR: &str = "task-logs";
/// How long a removed task's logs are kept.
pub const KEEP: Duration = Duration::from_secs(3 * 3600);
/// How many removed tasks' logs are kept at most (the most recently removed).
pub const KEEP_TASKS: usize = 50;
/// The names of a kept task's containers, in definition order.
const NAMES: &str = "containers.json";

/// Whether `task` can name a directory of its own (task ids are `t-` and hex).
fn plain(task: &str) -> bool {
    !task.is_empty()
        && task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keeps the logs of task `task`'s ended containers under `root` before the task is removed,
/// with its containers' `names` (definition order; empty when unknown), then forgets the logs
/// kept longest beyond [`KEEP`] and [`KEEP_TASKS`].
pub fn keep(rt: &dyn ContainerRuntime, root: &Path, task: &str, names: &[String]) -> Result<()> {
    if !plain(task) {
        bail!("task id '{task}' cannot name a directory");
    }
    let ended: Vec<ContainerName> = rt
        .list()?
        .into_iter()
        .filter(|c| c.name.task == task)
        .filter(|c| matches!(c.state, RunState::Exited(_) | RunState::Lost))
        .map(|c| c.name)
        .collect();
    if ended.is_empty() {
        return Ok(());
    }
    let dir = root.join(task);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(NAMES), serde_json::to_vec(names)?)
        .with_context(|| format!("writing {}", dir.join(NAMES).display()))?;
    for name in ended {
        if let Err(e) = rt.take_logs(&name, &dir.join(name.index.to_string())) {
            tracing::warn!(container = %name, "its logs are not kept: {e}");
        }
    }
    prune(root, SystemTime::now())
}

/// Removes the kept logs [`expired`] says are due.
fn prune(root: &Path, now: SystemTime) -> Result<()> {
    let mut kept = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let e = e?;
        let at = e.metadata()?.modified()?;
        kept.push((e.file_name().to_string_lossy().into_owned(), at));
    }
    for task in expired(kept, now) {
        let dir = root.join(&task);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), "removing kept logs: {e}");
        }
    }
    Ok(())
}

/// Of the tasks whose logs are kept, with when each was kept, those to forget at `now`: kept
/// [`KEEP`] or longer, or beyond the [`KEEP_TASKS`] kept most recently.
pub fn expired(mut kept: Vec<(String, SystemTime)>, now: SystemTime) -> Vec<String> {
    kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    kept.into_iter()
        .enumerate()
        .filter(|(i, (_, at))| {
            *i >= KEEP_TASKS || now.duration_since(*at).is_ok_and(|age| age >= KEEP)
        })
        .map(|(_, (task, _))| task)
        .collect()
}

/// The kept logs of removed task `task`: for each container (by index), its name and its log
/// directory.
pub fn kept(root: &Path, task: &str) -> Vec<(usize, String, std::path::PathBuf)> {
    if !plain(task) {
        return Vec::new();
    }
    let dir = root.join(task);
    let names: Vec<String> = std::fs::read(dir.join(NAMES))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Some(index) = e.file_name().to_str().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let name = names
            .get(index)
            .cloned()
            .unwrap_or_else(|| ContainerName::new(task, index).placeholder());
        out.push((index, name, e.path()));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_logs_go_after_their_time_or_beyond_the_newest_ones() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs_ago: u64| t0 - Duration::from_secs(secs_ago);
        // Two within the time, one past it.
        let kept = vec![
            ("t-a".to_string(), at(10)),
            ("t-b".to_string(), at(KEEP.as_secs() - 1)),
            ("t-c".to_string(), at(KEEP.as_secs())),
        ];
        assert_eq!(expired(kept, t0), ["t-c"]);
        // More than KEEP_TASKS within the time: the oldest beyond the count go.
        let many: Vec<(String, SystemTime)> = (0..KEEP_TASKS as u64 + 3)
            .map(|i| (format!("t-{i:03}"), at(i)))
            .collect();
        let mut gone = expired(many, t0);
        gone.sort();
        let want: Vec<String> = (KEEP_TASKS as u64..KEEP_TASKS as u64 + 3)
            .map(|i| format!("t-{i:03}"))
            .collect();
        assert_eq!(gone, want);
        // A clock set back (kept "in the future") keeps them.
        assert!(expired(vec![("t-x".into(), t0 + KEEP)], t0).is_empty());
    }

    #[test]
    fn only_plain_task_ids_name_a_directory() {
        assert!(plain("t-0a1b2c"));
        for bad in ["", "..", "../x", "t/1", "t-1/../..", "t 1"] {
            assert!(!plain(bad), "{bad}");
        }
    }
}
