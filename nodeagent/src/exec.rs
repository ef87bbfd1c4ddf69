//! `flotilla exec` on the node: a command run in a task's container for an operator, its
//! standard streams carried as [`ExecFrame`]s on the stream the control plane opened on the
//! node's own session (the node needs no inbound port).
//!
//! The command runs through the exec helper (`ContainerStore::exec_command`), as `nodeagent
//! ctr exec` runs it. With a terminal, the helper's console socket hands the agent the
//! pseudoterminal master made in the container, which the agent reads, writes and resizes.
//! When the operator goes away (the stream ends or fails) the command gets `SIGHUP`, as a
//! closed terminal gives it, and is killed [`HANGUP_GRACE`] later if it is still running.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_api::exec::{self as wire, ExecFrame, ExecRequest, WindowSize, MAX_CHUNK};
use flotilla_runtime::container::console::{self, ConsoleSocket, Terminal};
use flotilla_runtime::container::exec::HANGUP_GRACE;
use flotilla_runtime::container::{ContainerStore, Status};
use rustix::process::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::runner::Runner;

/// Most commands run for operators at once on a node.
pub const MAX_RUNNING: usize = 32;
/// How long the command may take to get its terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output still in pipes or the terminal is collected after the command exited
/// (a background process it left may hold them open).
const DRAIN: Duration = Duration::from_secs(1);

/// The agent's slots for running execs.
static SLOTS: Semaphore = Semaphore::const_new(MAX_RUNNING);

/// Runs one exec on the streams of the control plane's request: `Started`, output, then
/// `Exit` — or `Error` when it cannot run.
pub async fn serve(
    store: ContainerStore,
    runner: Arc<Runner>,
    req: ExecRequest,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let last = match SLOTS.try_acquire() {
        Err(_) => ExecFrame::Error(format!(
            "this node runs {MAX_RUNNING} execs already; try again when one has ended"
        )),
        Ok(_permit) => match run(&store, &runner, &req, &mut send, recv).await {
            Ok(code) => {
                tracing::info!(task = %req.task, admin = %req.admin, code, "exec ended");
                ExecFrame::Exit(code)
            }
            Err(e) => {
                let why = flotilla_api::errors::chain(e.as_ref());
                tracing::info!(task = %req.task, admin = %req.admin, "exec failed: {why}");
                ExecFrame::Error(why)
            }
        },
    };
    let _ = wire::write(&mut send, &last).await;
    let _ = send.finish();
}

/// The container `req` names, as `(name in the task definition, container id)`: the one
/// asked for, or the task's first; it must be running.
fn target(runner: &Runner, req: &ExecRequest) -> Result<(String, String)> {
    let (names, found) = runner.task_containers(&req.task)?;
    let Some(names) =
        names.or_else(|| (!found.is_empty()).then(|| found.iter().map(|f| f.1.clone()).collect()))
    else {
        bail!("no task {} on this node", req.task);
    };
    let want = match &req.container {
        Some(w) if !names.contains(w) => bail!(
            "task {} has no container '{w}' (it has {})",
            req.task,
            names.join(", ")
        ),
        Some(w) => w.clone(),
        None => names
            .first()
            .cloned()
            .with_context(|| format!("task {} has no containers", req.task))?,
    };
    match found.into_iter().find(|f| f.1 == want) {
        Some((_, name, c)) if c.status == Status::Running => Ok((name, c.record.id)),
        Some((_, name, c)) => bail!(
            "container {name} of task {} is {}: exec needs a running container",
            req.task,
            match c.status {
                Status::Created => "created but not started",
                _ => "exited",
            }
        ),
        None => bail!(
            "container {want} of task {} has not been created yet (its image may still be \
             pulling)",
            req.task
        ),
    }
}

/// What the operator's side of the stream says, besides standard input.
#[derive(Debug)]
enum Control {
    Resize(WindowSize),
    /// It sent what only a node sends: the exec ends with this error.
    Refused(String),
    /// The stream ended or failed: the operator went away.
    Gone,
}

async fn run(
    store: &ContainerStore,
    runner: &Arc<Runner>,
    req: &ExecRequest,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<i32> {
    let problems = req.problems();
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let (r, q) = (runner.clone(), req.clone());
    let (name, id) = tokio::task::spawn_blocking(move || target(&r, &q)).await??;
    let console = if req.tty {
        Some(ConsoleSocket::bind(&store.paths(&id).dir).context("the terminal's socket")?)
    } else {
        None
    };
    let mut cmd = store.exec_command(
        &id,
        &req.command,
        None,
        console.as_ref().map(ConsoleSocket::path),
    )?;
    // The helper's own quiet logging (one line when it fails), whatever the agent's is.
    cmd.env_remove("NODEAGENT_LOG");
    let piped = std::process::Stdio::piped;
    let null = std::process::Stdio::null;
    cmd.stdin(if req.stdin && !req.tty {
        piped()
    } else {
        null()
    })
    .stdout(if req.tty { null() } else { piped() })
    .stderr(piped());
    // Not killed when dropped (the agent ending): the helper outlives the agent just long
    // enough to hang its command up, which a killed helper could not.
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .context("starting the exec helper")?;
    tracing::info!(
        task = %req.task, container = %name, admin = %req.admin, tty = req.tty,
        command = %req.shown(), "exec"
    );
    let outcome = drive(&mut child, name, console.as_ref(), req, send, recv).await;
    if outcome.is_err() {
        // Whatever failed, the command does not outlive its exec: the helper kills it on
        // SIGTERM (also one that came while it was still making it) and exits.
        signal(&mut child, Signal::TERM);
        if tokio::time::timeout(HANGUP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    outcome
}

/// Carries an exec whose helper runs as `child`: `Started`, then input, output and the
/// operator's hang-up until the helper exits; its exit code.
async fn drive(
    child: &mut tokio::process::Child,
    name: String,
    console: Option<&ConsoleSocket>,
    req: &ExecRequest,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<i32> {
    wire::write(send, &ExecFrame::Started(name)).await?;

    let (out_tx, mut out_rx) = mpsc::channel::<ExecFrame>(16);
    if let Some(o) = child.stdout.take() {
        tokio::spawn(pump(o, ExecFrame::Stdout, out_tx.clone()));
    }
    if let Some(e) = child.stderr.take() {
        tokio::spawn(pump(e, ExecFrame::Stderr, out_tx.clone()));
    }
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(4);
    tokio::spawn(operator(recv, req.stdin.then_some(stdin_tx), control_tx));
    let mut stdin_rx = Some(stdin_rx);
    if let Some(pipe) = child.stdin.take() {
        if let Some(rx) = stdin_rx.take() {
            tokio::spawn(feed_pipe(rx, pipe));
        }
    }

    // The terminal, once the command's init sends its master.
    let listener = match console {
        Some(c) => Some(tokio::net::UnixListener::from_std(
            c.listener().try_clone()?,
        )?),
        None => None,
    };
    let console_by = Instant::now() + CONSOLE_TIMEOUT;
    let mut master: Option<Arc<Terminal>> = None;
    let mut size = req.size;
    let mut out_tx = Some(out_tx);

    let mut code: Option<i32> = None;
    let mut drained_by = None;
    let mut kill_at: Option<Instant> = None;
    let mut gone = false;
    loop {
        let awaiting_console = listener.is_some() && master.is_none() && code.is_none();
        tokio::select! {
            frame = out_rx.recv() => match frame {
                Some(f) => {
                    // Once the operator is gone, output is dropped.
                    let lost = !gone && wire::write(send, &f).await.is_err();
                    if lost {
                        gone = true;
                        kill_at = hang_up(child);
                    }
                }
                // Every output has ended.
                None if code.is_some() => break,
                None => {}
            },
            status = child.wait(), if code.is_none() => {
                let status = status.context("waiting for the exec helper")?;
                code = Some(status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(0)
                }));
                if gone {
                    break;
                }
                // A command that ended at once may have done so before its terminal was
                // taken: its init connected before running it, so the master is waiting.
                if let (Some(l), None) = (&listener, &master) {
                    if let Ok(Ok((conn, _))) = tokio::time::timeout(DRAIN, l.accept()).await {
                        master = Some(terminal(&conn, size, &out_tx, &mut stdin_rx).await?);
                    }
                }
                // Only the readers hold senders now: the channel closes when they end.
                out_tx = None;
                drained_by = Some(Instant::now() + DRAIN);
            }
            conn = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            }, if awaiting_console =>
            {
                let (conn, _) = conn.context("the terminal's socket")?;
                master = Some(terminal(&conn, size, &out_tx, &mut stdin_rx).await?);
            }
            () = tokio::time::sleep_until(console_by), if awaiting_console => {
                let _ = child.start_kill();
                bail!("the command got no terminal within {CONSOLE_TIMEOUT:?}");
            }
            control = control_rx.recv(), if !gone => match control {
                Some(Control::Resize(s)) => {
                    size = Some(s);
                    if let Some(m) = &master {
                        let _ = m.resize(s.rows, s.cols);
                    }
                }
                Some(Control::Refused(why)) => bail!("{why}"),
                Some(Control::Gone) | None => {
                    gone = true;
                    if code.is_some() {
                        break;
                    }
                    tracing::info!(task = %req.task, admin = %req.admin, "exec: the operator went away; hanging up");
                    kill_at = hang_up(child);
                }
            },
            () = until(kill_at), if code.is_none() =>
            {
                // The helper kills the command on SIGTERM.
                signal(child, Signal::TERM);
                kill_at = None;
            }
            () = until(drained_by) => break,
        }
    }
    drop(master);
    match code {
        Some(c) if !gone => Ok(c),
        _ => bail!("the operator went away"),
    }
}

/// Takes the command's terminal from `conn`, sized `size`, its output to `out` and the
/// operator's input from `stdin`.
async fn terminal(
    conn: &tokio::net::UnixStream,
    size: Option<WindowSize>,
    out: &Option<mpsc::Sender<ExecFrame>>,
    stdin: &mut Option<mpsc::Receiver<Vec<u8>>>,
) -> Result<Arc<Terminal>> {
    let fd = receive(conn)
        .await
        .context("receiving the command's terminal")?;
    let fd = Arc::new(Terminal::new(fd).context("the command's terminal")?);
    if let Some(s) = size {
        let _ = fd.resize(s.rows, s.cols);
    }
    if let Some(tx) = out {
        tokio::spawn(pump_terminal(fd.clone(), tx.clone()));
    }
    if let Some(rx) = stdin.take() {
        tokio::spawn(feed_terminal(rx, fd.clone()));
    }
    Ok(fd)
}

/// Sleeps until `deadline`; forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends `SIGHUP` to the helper (it passes it on to the command) and returns when to kill.
fn hang_up(child: &mut tokio::process::Child) -> Option<Instant> {
    signal(child, Signal::HUP);
    Some(Instant::now() + HANGUP_GRACE)
}

/// Signals the helper, if it has not been reaped (so its pid is still its own).
fn signal(child: &mut tokio::process::Child, sig: Signal) {
    if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

/// The master the command's init sends on `conn`.
async fn receive(conn: &tokio::net::UnixStream) -> std::io::Result<OwnedFd> {
    loop {
        conn.readable().await?;
        match conn.try_io(tokio::io::Interest::READABLE, || {
            console::receive_master(std::os::fd::AsFd::as_fd(conn))
        }) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Reads the operator's frames: standard input to `stdin`, the rest to `control`.
async fn operator(
    mut recv: quinn::RecvStream,
    mut stdin: Option<mpsc::Sender<Vec<u8>>>,
    control: mpsc::Sender<Control>,
) {
    loop {
        match wire::read(&mut recv).await {
            Ok(Some(ExecFrame::Stdin(bytes))) => {
                if let Some(tx) = &stdin {
                    if tx.send(bytes).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(Some(ExecFrame::StdinEnd)) => stdin = None,
            Ok(Some(ExecFrame::Resize(s))) => {
                if control.send(Control::Resize(s)).await.is_err() {
                    return;
                }
            }
            Ok(Some(other)) => {
                let why = format!(
                    "the operator's side sent a {} frame, which only a node sends",
                    other.kind_name()
                );
                tracing::warn!("exec: {why}");
                let _ = control.send(Control::Refused(why)).await;
                return;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("exec: the operator's stream: {e}");
                break;
            }
        }
    }
    let _ = control.send(Control::Gone).await;
}

/// Forwards what `from` yields as frames of `kind` until it ends.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    kind: fn(Vec<u8>) -> ExecFrame,
    out: mpsc::Sender<ExecFrame>,
) {
    let mut buf = vec![0u8; MAX_CHUNK / 2];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || out.send(kind(buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// Writes the operator's input to the command's standard input; closes it when the
/// operator's input ends.
async fn feed_pipe(mut rx: mpsc::Receiver<Vec<u8>>, mut pipe: tokio::process::ChildStdin) {
    while let Some(bytes) = rx.recv().await {
        if pipe.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Forwards what the command writes to its terminal, until every process holding the
/// terminal has closed it.
async fn pump_terminal(master: Arc<Terminal>, out: mpsc::Sender<ExecFrame>) {
    let mut buf = vec![0u8; MAX_CHUNK / 2];
    while let Ok(n) = master.read(&mut buf).await {
        if n == 0
            || out
                .send(ExecFrame::Stdout(buf[..n].to_vec()))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Writes the operator's input to the command's terminal (its line discipline turns `^C`
/// into `SIGINT` for the foreground process group, as on any terminal).
async fn feed_terminal(mut rx: mpsc::Receiver<Vec<u8>>, master: Arc<Terminal>) {
    while let Some(bytes) = rx.recv().await {
        if master.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
