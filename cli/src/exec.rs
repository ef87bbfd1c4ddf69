//! `flotilla exec TASK [-c CONTAINER] [-i] [-t] -- CMD…`: a command in a task's container,
//! through the control plane and the node's own session, as `docker exec` and `kubectl exec`
//! run one.
//!
//! With `-it` the local terminal is put in raw mode for the command's own terminal: every key,
//! Ctrl-C and Ctrl-Z included, goes to the command (its terminal makes the signal), and a
//! window resize is passed on. The local terminal is restored however `flotilla exec` ends,
//! and while a `SIGTSTP` from elsewhere stops it. A hang-up (the terminal closed), `SIGTERM`,
//! or — without `-it` — Ctrl-C ends `flotilla exec` with 128 + the signal, and the node hangs
//! the command up.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use flotilla_api::exec::{self as wire, ExecFrame, ExecRequest, WindowSize, CANNOT_RUN};
use flotilla_client::Client;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Exit code when the connection to the control plane broke before the command's exit code
/// came (as `ssh` exits for its own failures).
pub const LOST: u8 = 255;

/// `flotilla exec`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Task id.
    task: String,
    /// The container, by its name in the task definition (default: the task's first).
    #[arg(long, short = 'c')]
    container: Option<String>,
    /// Pass this terminal's standard input to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Run the command on a terminal (for a shell: `-it`, which also puts this terminal in raw
    /// mode: every key goes to the command).
    #[arg(long, short = 't')]
    tty: bool,
    /// The command and its arguments (no shell is added); everything from the first of them
    /// on is the command's, flags too. `--` before it, as `kubectl exec` wants, is taken too.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

impl ExecArgs {
    /// An exec of `command` in `task` (its first container unless `container`).
    pub fn new(
        task: String,
        container: Option<String>,
        interactive: bool,
        tty: bool,
        command: Vec<String>,
    ) -> Self {
        Self {
            task,
            container,
            interactive,
            tty,
            command,
        }
    }
}

/// How `flotilla exec` ends: the process exits with this code, having said why (if at all).
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// The local terminal in raw mode (cfmakeraw(3)) until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved =
            rustix::termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .context("setting the terminal to raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// This terminal's size (that of standard output, else of standard input).
fn window_size() -> Option<WindowSize> {
    let of = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_row > 0 && w.ws_col > 0)
            .map(|w| WindowSize {
                rows: w.ws_row,
                cols: w.ws_col,
            })
    };
    of(std::io::stdout().as_fd()).or_else(|| of(std::io::stdin().as_fd()))
}

/// Runs `flotilla exec`; `Err(ExitWith(code))` carries the command's exit code.
pub async fn run(api: &Client, args: ExecArgs) -> Result<()> {
    // As `docker exec`: this terminal goes raw only when it is the command's input too.
    let raw_mode = args.tty && args.interactive;
    if raw_mode && !rustix::termios::isatty(std::io::stdin()) {
        bail!("-it needs a terminal on standard input (leave -t out to pipe input with -i)");
    }
    let req = ExecRequest {
        task: args.task.clone(),
        container: args.container,
        command: args.command,
        tty: args.tty,
        stdin: args.interactive,
        size: if args.tty { window_size() } else { None },
        admin: String::new(),
    };
    let problems = req.problems();
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let stream = api.exec(&args.task, &req).await?;
    let mut raw = if raw_mode {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let code = relay(stream.io, &args.task, args.interactive, args.tty, &mut raw).await;
    drop(raw);
    match code {
        Ok(0) => Ok(()),
        Ok(code) => Err(ExitWith(code).into()),
        Err(e) => Err(e),
    }
}

/// Carries the streams until the command's exit code comes; returns it.
async fn relay(
    io: flotilla_client::Upgraded,
    task: &str,
    interactive: bool,
    tty: bool,
    raw: &mut Option<RawMode>,
) -> Result<u8> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (frames_tx, mut frames) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let frame = wire::read(&mut rd).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    // Standard input is read on a thread of its own: a blocking read would hold up the
    // runtime's end (the process exits without waiting for it).
    let (input_tx, mut input) = mpsc::channel::<Option<Vec<u8>>>(4);
    if interactive {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let chunk = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                };
                let end = chunk.is_none();
                if input_tx.blocking_send(chunk).is_err() || end {
                    return;
                }
            }
        });
    } else {
        drop(input_tx);
    }
    let mut input_open = interactive;
    let mut winch = signal(SignalKind::window_change())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    // In raw mode Ctrl-C is a key for the command; a SIGINT from elsewhere still ends us.
    let mut interrupt = signal(SignalKind::interrupt())?;
    // In raw mode Ctrl-Z is the command's too; a SIGTSTP from elsewhere (`kill -TSTP`) stops
    // us, with this terminal as it was, until the shell continues us.
    let mut stop = signal(SignalKind::from_raw(rustix::process::Signal::TSTP.as_raw()))?;
    let lost = |why: String| -> anyhow::Error {
        ExitWithMessage(LOST, format!("exec in task {task}: {why}")).into()
    };
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(Some(ExecFrame::Stdout(bytes)))) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes).and_then(|()| out.flush()).context("standard output")?;
                }
                Some(Ok(Some(ExecFrame::Stderr(bytes)))) => {
                    // With a terminal, what comes on stderr is the node's own word (the
                    // command's output is all on its terminal); a raw terminal needs its
                    // carriage returns.
                    let bytes = if raw.is_some() { with_returns(&bytes) } else { bytes };
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&bytes).and_then(|()| err.flush());
                }
                Some(Ok(Some(ExecFrame::Exit(code)))) => {
                    return Ok(u8::try_from(code).unwrap_or(LOST));
                }
                Some(Ok(Some(ExecFrame::Error(why)))) => {
                    return Err(ExitWithMessage(
                        CANNOT_RUN as u8,
                        format!("exec in task {task}: {why}"),
                    )
                    .into());
                }
                Some(Ok(Some(other))) => return Err(lost(format!("unexpected frame {other:?}"))),
                Some(Ok(None)) | None => {
                    return Err(lost(
                        "the connection ended before the command's exit code came (the node or \
                         the control plane went away)"
                            .into(),
                    ))
                }
                Some(Err(e)) => {
                    return Err(lost(format!(
                        "the connection broke before the command's exit code came (the node or \
                         the control plane went away): {e}"
                    )))
                }
            },
            chunk = input.recv(), if input_open => {
                let frame = match chunk {
                    Some(Some(bytes)) => ExecFrame::Stdin(bytes),
                    _ => {
                        input_open = false;
                        ExecFrame::StdinEnd
                    }
                };
                if let Err(e) = wire::write(&mut wr, &frame).await {
                    return Err(lost(format!("the connection broke: {e}")));
                }
            }
            _ = winch.recv(), if tty => {
                if let Some(size) = window_size() {
                    if let Err(e) = wire::write(&mut wr, &ExecFrame::Resize(size)).await {
                        return Err(lost(format!("the connection broke: {e}")));
                    }
                }
            }
            _ = stop.recv() => {
                let was_raw = raw.take().is_some();
                if let Some(me) = rustix::process::Pid::from_raw(std::process::id() as i32) {
                    let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
                }
                // Continued.
                if was_raw {
                    *raw = Some(RawMode::enter()?);
                }
                if let (true, Some(size)) = (tty, window_size()) {
                    if let Err(e) = wire::write(&mut wr, &ExecFrame::Resize(size)).await {
                        return Err(lost(format!("the connection broke: {e}")));
                    }
                }
            }
            _ = hangup.recv() => return Ok(128 + 1),
            _ = interrupt.recv() => return Ok(128 + 2),
            _ = term.recv() => return Ok(128 + 15),
        }
    }
}

/// `bytes` with a carriage return before each line feed that has none.
fn with_returns(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// An end with an exit code and a message for standard error.
#[derive(Debug)]
pub struct ExitWithMessage(pub u8, pub String);

impl std::fmt::Display for ExitWithMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitWithMessage {}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Exec {
        #[command(flatten)]
        args: super::ExecArgs,
    }

    fn parsed(line: &[&str]) -> super::ExecArgs {
        Exec::try_parse_from(std::iter::once("exec").chain(line.iter().copied()))
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .args
    }

    #[test]
    fn the_command_is_everything_from_its_first_word_with_or_without_dashes() {
        for (line, task, command) in [
            (&["t-1", "--", "false"][..], "t-1", &["false"][..]),
            (&["t-1", "ls", "-l"], "t-1", &["ls", "-l"]),
            (
                &["-it", "t-1", "--", "sh", "-c", "echo -i"],
                "t-1",
                &["sh", "-c", "echo -i"],
            ),
            (&["-c", "web", "t-1", "--", "-x"], "t-1", &["-x"]),
            (
                &["t-1", "sh", "-c", "--", "x"],
                "t-1",
                &["sh", "-c", "--", "x"],
            ),
        ] {
            let a = parsed(line);
            let got: Vec<&str> = a.command.iter().map(String::as_str).collect();
            assert_eq!(
                (a.task.as_str(), got.as_slice()),
                (task, command),
                "{line:?}"
            );
        }
        let a = parsed(&["-it", "-c", "web", "t-1", "sh"]);
        assert!(a.tty && a.interactive && a.container.as_deref() == Some("web"));
        assert!(
            Exec::try_parse_from(["exec", "t-1"]).is_err(),
            "a command is required"
        );
    }

    #[test]
    fn a_raw_terminal_gets_carriage_returns_once() {
        assert_eq!(super::with_returns(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(super::with_returns(b"\n"), b"\r\n");
    }
}
