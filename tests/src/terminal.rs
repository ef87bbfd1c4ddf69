//! A person's terminal for tests: a tmux pane (a real pty) running an interactive bash, where
//! typed keys reach the foreground job as on a desktop terminal — Ctrl-C becomes SIGINT for
//! the whole job, a resize becomes SIGWINCH, closing the terminal hangs up the session.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A terminal: a tmux server of its own (private socket) with one 200×50 pane running an
/// interactive bash, as a person's terminal emulator runs their shell.
#[derive(Debug)]
pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Opens it; a missing tmux fails the test, naming the script that installs it.
    pub fn open() -> Self {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            matches!(&version, Ok(o) if o.status.success()),
            "tmux is missing (scripts/install-deps.sh installs it): {version:?}"
        );
        let t = Self {
            socket: format!("flotilla-test-{}-{}", std::process::id(), crate::unique()),
        };
        t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "dev",
            "-x",
            "200",
            "-y",
            "50",
            "PS1='term$ ' exec bash --norc --noprofile -i",
        ]);
        t.wait_for("term$ ", Duration::from_secs(10));
        t
    }

    /// Runs `tmux ARGS` on this terminal's server; a failure fails the test.
    pub fn tmux(&self, args: &[&str]) -> Output {
        let o = Command::new("tmux")
            // Also when the tests themselves run inside tmux.
            .env_remove("TMUX")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Types a command line and Enter.
    pub fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "dev", "-l", line]);
        self.tmux(&["send-keys", "-t", "dev", "Enter"]);
    }

    /// Types Ctrl-C.
    pub fn ctrl_c(&self) {
        self.tmux(&["send-keys", "-t", "dev", "C-c"]);
    }

    /// The whole pane, history included, wrapped lines joined.
    pub fn screen(&self) -> String {
        let o = self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "dev"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the pane shows `what`; returns the pane.
    pub fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "the terminal never showed {what:?} within {timeout:?}; it shows:\n{}",
                s.trim_end()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resizes the window to `cols` × `rows` (the pane's programs get `SIGWINCH`).
    pub fn resize(&self, cols: u16, rows: u16) {
        let (x, y) = (cols.to_string(), rows.to_string());
        self.tmux(&["resize-window", "-t", "dev", "-x", &x, "-y", &y]);
    }

    /// Closes the terminal: tmux closes the pty, the kernel hangs up the session.
    pub fn close(&self) {
        self.tmux(&["kill-session", "-t", "dev"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}
