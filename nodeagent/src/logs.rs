//! Task logs for the control plane: read from the node's containers — or, for a removed task,
//! from its kept logs (see [`crate::kept_logs`]) — and streamed back on the stream the control
//! plane opened: the node needs no inbound port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_api::{write_frame, LogFrame, LogLine, LogRequest};
use flotilla_runtime::container::logs::{self, LogEntry, LogFollower, Stream};
use flotilla_runtime::container::{ContainerStore, Status};

use crate::kept_logs;
use crate::runner::Runner;

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
            reason: flotilla_api::errors::chain(e.as_ref()),
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
    let (names, containers) = runner.task_containers(&req.task)?;
    let mut found = Vec::new();
    for (idx, name, c) in containers {
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
        let kept = kept_logs::kept(runner.task_logs(), &req.task);
        if kept.is_empty() {
            bail!(
                "no task {} on this node, nor its logs (a removed task's logs are kept {} h, \
                 for the {} tasks removed last)",
                req.task,
                kept_logs::KEEP.as_secs() / 3600,
                kept_logs::KEEP_TASKS
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
