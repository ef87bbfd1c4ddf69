//! Task logs for the control plane: read from the node's containers and streamed back on the
//! stream the control plane opened — the node needs no inbound port.
//!
//! A stopped task's containers are removed once the control plane has recorded the stop, but
//! their logs are kept: moved to `<data-dir>/task-logs/<task>/<index>/` first (with the
//! containers' names), for [`KEEP`] after the removal and for the [`KEEP_TASKS`] most recently
//! removed tasks — what ECS keeps a stopped task's containers for (its agent's
//! `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`, 3 h by default: "Automatic Amazon ECS task and
//! image cleanup"), bounded here by count too, as an edge node's disk is small.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use flotilla_api::{write_frame, LogFrame, LogLine, LogRequest};
use flotilla_runtime::container::logs::{self, LogEntry, LogFollower, Stream};
use flotilla_runtime::container::{ContainerStore, Status};

use crate::runner::Runner;
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
fn kept(root: &Path, task: &str) -> Vec<(usize, String, std::path::PathBuf)> {
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

/// Serialized size of the lines sent in one frame (well under the frame limit).
const BATCH_BYTES: usize = 256 * 1024;
/// How often a follower looks for new lines.
const POLL: Duration = Duration::from_millis(200);

/// Answers one log request on `send`: lines, then `End` (or `Error`).
pub async fn serve(
    store: ContainerStore,
    runner: Arc<Runner>,
    req: LogRequest,
    mut send: quinn::SendStream,
) {
    let last = match stream(&store, &runner, &req, &mut send).await {
        Ok(()) => LogFrame::End,
        Err(e) => LogFrame::Error {
            reason: format!("{e:#}"),
        },
    };
    let _ = write_frame(&mut send, &last).await;
    let _ = send.finish();
}

/// One container being read.
struct Source {
    name: String,
    id: String,
    follower: LogFollower,
}

fn line(container: &str, e: LogEntry) -> LogLine {
    LogLine {
        container: container.to_string(),
        time: e.time,
        stream: match e.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
        .to_string(),
        partial: e.partial,
        text: String::from_utf8_lossy(&e.content).into_owned(),
    }
}

/// Sends `lines` (sorted by time) in frames of at most [`BATCH_BYTES`]; with `answer`, one
/// frame even when there are none (see [`stream`]).
async fn send_lines(
    send: &mut quinn::SendStream,
    mut lines: Vec<LogLine>,
    answer: bool,
) -> Result<()> {
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    let mut batch = Vec::new();
    let mut size = 0;
    let mut sent = false;
    for l in lines {
        size += l.text.len() + l.time.len() + l.container.len() + 64;
        batch.push(l);
        if size >= BATCH_BYTES {
            let lines = std::mem::take(&mut batch);
            write_frame(send, &LogFrame::Lines { lines }).await?;
            size = 0;
            sent = true;
        }
    }
    if !batch.is_empty() || (answer && !sent) {
        write_frame(send, &LogFrame::Lines { lines: batch }).await?;
    }
    Ok(())
}

/// The task's containers on this node and the lines they hold so far.
fn containers(
    store: &ContainerStore,
    runner: &Runner,
    req: &LogRequest,
) -> Result<(Vec<Source>, Vec<LogLine>)> {
    let names = runner.container_names(&req.task);
    let mut found = Vec::new();
    for c in store.list()? {
        let Some(cn) = c
            .record
            .config
            .name
            .as_deref()
            .and_then(|n| n.parse::<ContainerName>().ok())
        else {
            continue;
        };
        if cn.task != req.task {
            continue;
        }
        let idx = cn.index;
        let name = names
            .as_ref()
            .and_then(|n| n.get(idx).cloned())
            .unwrap_or_else(|| cn.placeholder());
        if req.container.as_ref().is_some_and(|w| *w != name) {
            continue;
        }
        let dir = store.paths(&c.record.id).logs();
        let (entries, follower) = logs::read(&dir, req.tail.map(|t| t as usize))?;
        found.push((
            idx,
            entries,
            Source {
                name,
                id: c.record.id.clone(),
                follower,
            },
        ));
    }
    let mut names = names;
    if found.is_empty() && names.is_none() {
        // Removed: its kept logs, if they are still kept.
        let kept = kept(runner.task_logs(), &req.task);
        if kept.is_empty() {
            bail!(
                "no task {} on this node, nor its logs (a removed task's logs are kept {} h, \
                 for the {KEEP_TASKS} tasks removed last)",
                req.task,
                KEEP.as_secs() / 3600
            );
        }
        names = Some(kept.iter().map(|(_, n, _)| n.clone()).collect());
        for (index, name, dir) in kept {
            if req.container.as_ref().is_some_and(|w| *w != name) {
                continue;
            }
            let (entries, follower) = logs::read(&dir, req.tail.map(|t| t as usize))?;
            found.push((
                index,
                entries,
                Source {
                    name,
                    // No container has this id: a follower sees it ended.
                    id: String::new(),
                    follower,
                },
            ));
        }
    }
    if let (Some(want), Some(names)) = (&req.container, &names) {
        if !names.contains(want) {
            bail!(
                "task {} has no container '{want}' (it has {})",
                req.task,
                names.join(", ")
            );
        }
    }
    found.sort_by_key(|(idx, _, _)| *idx);
    let mut lines = Vec::new();
    let mut sources = Vec::new();
    for (_, entries, s) in found {
        lines.extend(entries.into_iter().map(|e| line(&s.name, e)));
        sources.push(s);
    }
    Ok((sources, lines))
}

async fn stream(
    store: &ContainerStore,
    runner: &Arc<Runner>,
    req: &LogRequest,
    send: &mut quinn::SendStream,
) -> Result<()> {
    let (s, r, q) = (store.clone(), runner.clone(), req.clone());
    let (mut sources, held) = tokio::task::spawn_blocking(move || containers(&s, &r, &q)).await??;
    // The control plane waits a bounded time for the node's answer: a task that has printed
    // nothing yet is answered at once with no lines, so a follower of a quiet task waits on.
    send_lines(send, held, true).await?;
    if !req.follow {
        return Ok(());
    }
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let mut lines = Vec::new();
        let mut live = false;
        for s in &mut sources {
            // Whether it still runs is read before its last lines, so none are missed.
            live |= !s.id.is_empty() && store.get(&s.id).is_ok_and(|i| i.status != Status::Exited);
            lines.extend(s.follower.poll()?.into_iter().map(|e| line(&s.name, e)));
        }
        send_lines(send, lines, false).await?;
        if !live {
            return Ok(());
        }
        tokio::select! {
            // The reader went away.
            _ = &mut stopped => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
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
