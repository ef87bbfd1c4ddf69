//! Process identity that survives pid reuse: a pid is only "ours" while its start time (and the
//! boot it belongs to) match what was recorded when we started it.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};

/// A process as recorded: pid, start time in clock ticks since boot, and the boot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when recorded.
    pub boot_id: String,
}

impl ProcessIdentity {
    /// The identity of a live process.
    pub fn of(pid: i32) -> io::Result<Self> {
        let (start_time, _) = stat(pid)?;
        Ok(Self {
            pid,
            start_time,
            boot_id: boot_id()?,
        })
    }

    /// True while this very process runs (a zombie no longer counts).
    pub fn is_alive(&self) -> bool {
        if boot_id().ok().as_deref() != Some(self.boot_id.as_str()) {
            return false;
        }
        matches!(stat(self.pid), Ok((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// A pidfd for this process, checked against the identity after opening so that the fd
    /// cannot refer to a process that reused the pid. `None` when it is gone.
    pub fn pidfd(&self) -> Option<OwnedFd> {
        let pid = Pid::from_raw(self.pid)?;
        let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
        self.is_alive().then_some(fd)
    }

    /// Sends `signal`; false when the process is already gone.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(fd) = self.pidfd() else {
            return Ok(false);
        };
        match pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the process has exited; false on timeout.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        match self.pidfd() {
            None => true,
            // A pidfd turns readable when its process exits (a zombie counts as exited).
            Some(fd) => wait_readable(&fd, Some(timeout)),
        }
    }
}

/// Waits for `fd` to become readable; false on timeout.
pub fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> bool {
    wait_readable_fd(fd.as_fd(), timeout)
}

/// [`wait_readable`] for a borrowed descriptor.
pub fn wait_readable_fd(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    loop {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Start time and state letter of a pid.
fn stat(pid: i32) -> io::Result<(u64, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable /proc/{pid}/stat"),
        )
    })
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(text: &str) -> Option<(u64, char)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3; `starttime` is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// The kernel's id of the current boot. Read once per process (it cannot change while the
/// process runs); a failed read is tried again next time.
pub fn boot_id() -> io::Result<String> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line = "123 (a) b (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some((98765, 'S')));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z 1"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id() as i32).expect("identity");
        assert!(me.is_alive());
        let reused = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive());
        assert!(reused.pidfd().is_none());
        let other_boot = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me
        };
        assert!(!other_boot.is_alive());
    }
}
