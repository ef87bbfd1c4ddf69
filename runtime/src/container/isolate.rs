//! Launching a shim already isolated: in the child, between fork and exec, it gets its own
//! session, a private mount namespace that receives the host's mount events but never sends
//! any, a fresh network namespace when the container has no network (or joins the one it is
//! given), and a read-only bind
//! mount of the shim binary over itself — so the exec that follows runs the shim from a
//! read-only mount. A container's init is a fork of its shim; with its `/proc/<pid>/exe` on a
//! read-only mount, it cannot be used to overwrite the shim binary (CVE-2019-5736).
//!
//! Doing this in the child before exec (instead of in the shim, then re-executing itself)
//! saves a whole exec on every container start.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// The network namespace a shim starts in.
#[derive(Debug)]
pub enum Network {
    /// Its launcher's.
    Keep,
    /// A fresh one.
    New,
    /// This one (an open namespace file).
    Join(OwnedFd),
}

/// Arranges for `cmd` (which must execute `program`) to start isolated as described above.
pub fn isolate_before_exec(cmd: &mut Command, program: &Path, network: Network) -> io::Result<()> {
    // Everything the child needs is prepared here: after fork, in a possibly multi-threaded
    // parent, the child may only make system calls (no allocation).
    let exe = CString::new(program.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let root = CString::from(c"/");
    let mut ns = CloneFlags::CLONE_NEWNS;
    let join = match network {
        Network::Keep => None,
        Network::New => {
            ns |= CloneFlags::CLONE_NEWNET;
            None
        }
        Network::Join(fd) => Some(fd),
    };
    let step = move || -> nix::Result<()> {
        nix::unistd::setsid()?;
        if let Some(fd) = &join {
            setns(fd, CloneFlags::CLONE_NEWNET)?;
        }
        unshare(ns)?;
        mount(
            None::<&std::ffi::CStr>,
            root.as_c_str(),
            None::<&std::ffi::CStr>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&std::ffi::CStr>,
        )?;
        mount(
            Some(exe.as_c_str()),
            exe.as_c_str(),
            None::<&std::ffi::CStr>,
            MsFlags::MS_BIND,
            None::<&std::ffi::CStr>,
        )?;
        mount(
            None::<&std::ffi::CStr>,
            exe.as_c_str(),
            None::<&std::ffi::CStr>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&std::ffi::CStr>,
        )?;
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec. It only issues system calls
    // (setsid, setns, unshare, mount) on data prepared above, allocates nothing, takes no lock, and
    // touches no state shared with other threads of the parent; errors are plain errno
    // values. This is what `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || step().map_err(|e| io::Error::from_raw_os_error(e as i32)));
    }
    Ok(())
}

/// True when this process was launched by [`isolate_before_exec`]: its binary is on a
/// read-only mount and its mount namespace is not its launcher's. The shim refuses to mount
/// anything otherwise.
pub fn launched_isolated() -> bool {
    let exe_read_only = rustix::fs::statvfs("/proc/self/exe")
        .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    let own = std::fs::read_link("/proc/self/ns/mnt");
    let launcher = std::fs::read_link(format!("/proc/{parent}/ns/mnt"));
    let separate = match (own, launcher) {
        (Ok(a), Ok(b)) => a != b,
        // The launcher is gone or hidden; the read-only binary is evidence enough.
        _ => true,
    };
    exe_read_only && separate
}
