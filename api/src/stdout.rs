//! Standard output of the command-line tools (`flotilla`, `nodeagent`, `orchestratord`) when
//! its reader goes away (`flotilla task ls | head -1`): the command ends quietly with
//! [`EXIT_CLOSED_PIPE`], as a Unix tool that SIGPIPE ended, instead of panicking in `println!`
//! ("failed printing to stdout: Broken pipe") or printing an error. Rust ignores SIGPIPE, so
//! every write to standard output goes through [`outln!`](crate::outln) / [`out!`](crate::out)
//! (or [`write_out`]); the commands that wait for something to print (`-w`, `--follow`) also
//! watch for the reader leaving with [`closed`], since with nothing to write they would never
//! notice it.

use std::io::{self, Write as _};
use std::os::fd::AsFd as _;
use std::time::Duration;

/// Exit status when standard output closes early: what a shell shows for a Unix tool that
/// SIGPIPE ended (128 + 13).
pub const EXIT_CLOSED_PIPE: u8 = 141;

/// `println!` for standard output that ends the program quietly with [`EXIT_CLOSED_PIPE`] when
/// its reader has gone, as a Unix tool does, instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for standard output, as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write_out(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: with standard error gone there is no one left to tell.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes to standard output and flushes; a reader that has gone ends the program quietly with
/// [`EXIT_CLOSED_PIPE`], another error (a full disk) with a message and exit status 1.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_CLOSED_PIPE.into());
        }
        crate::errln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// Whether `e`, or an error under it, comes from writing to a reader that has gone: a command
/// that wrote with `?` ends with [`EXIT_CLOSED_PIPE`] and no message when this holds.
pub fn closed_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// How often [`closed`] looks at standard output.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Completes when standard output's reader has gone (a pipe whose reader closed: `POLLERR`; a
/// socket shut down or a terminal hung up: `POLLHUP`), and never for an output that cannot
/// tell (a file, `/dev/null`). A command that waits with nothing to print (`-w`, `--follow`)
/// races its wait against this, so `flotilla service ls -w | head -1` ends once `head` has,
/// even when nothing changes.
pub async fn closed() {
    loop {
        if reader_gone() {
            return;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// The error [`closed`] stands for, for a command to return (its `main` maps it to
/// [`EXIT_CLOSED_PIPE`] with [`closed_pipe`]).
pub fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "standard output closed")
}

/// One look, without waiting: whether polling standard output reports an error or a hang-up.
/// Asks for no event, so only those two (which poll always reports) can wake it.
pub fn reader_gone() -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let out = io::stdout();
    let fd = out.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::closed_pipe;
    use std::io;

    #[derive(Debug)]
    struct Wrapped(io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("printing the list")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_closed_pipe_is_found_under_context() {
        let direct = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(closed_pipe(&direct));
        assert!(closed_pipe(&Wrapped(io::Error::from(
            io::ErrorKind::BrokenPipe
        ))));
        assert!(!closed_pipe(&Wrapped(io::Error::from(
            io::ErrorKind::StorageFull
        ))));
    }
}
