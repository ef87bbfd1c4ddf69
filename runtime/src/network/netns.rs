//! Named network namespaces: each is kept alive by a bind mount of its nsfs file at
//! `<dir>/<name>` (as `ip netns` does under `/run/netns`), so it outlives the processes in it
//! and a container can join it by path.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Magic number of nsfs (`NSFS_MAGIC`): what a mounted namespace file reports in `statfs`.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Creates the namespace `name` in `dir` (nothing happens when it already exists) and returns
/// its path.
pub fn create(dir: &Path, name: &str) -> io::Result<PathBuf> {
    shared_dir(dir)?;
    let path = dir.join(name);
    if is_namespace(&path) {
        return Ok(path);
    }
    File::create(&path)?;
    let target = path.clone();
    // unshare(CLONE_NEWNET) changes only the calling thread: a short-lived thread of its own
    // makes the namespace and mounts it; nothing else of this process moves.
    let made = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(io::Error::from(e));
    }
    Ok(path)
}

/// Removes a namespace made by [`create`]: its mount and file (a missing one is no error).
/// The namespace itself ends when no process and no other mount holds it.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Undoes what [`create`] did to `dir` once it holds no namespace: its own mount goes (the
/// directory stays). A missing directory is no error.
pub fn release_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() || !is_mount_point(dir) {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        if is_namespace(&entry?.path()) {
            return Ok(());
        }
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Opens a namespace made by [`create`] (refusing a plain file left by an unclean stop).
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    if !is_namespace(path) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a network namespace", path.display()),
        ));
    }
    Ok(File::open(path)?.into())
}

/// True when `path` is a mounted namespace file.
pub fn is_namespace(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as u64 == NSFS_MAGIC)
}

/// Runs `f` on a thread of its own inside the namespace at `path` (or in this process's
/// namespace when `None`): netlink sockets made there belong to that namespace.
pub fn run_in<T, F>(path: Option<&Path>, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let fd = path.map(open).transpose()?;
    std::thread::spawn(move || {
        if let Some(fd) = fd {
            setns(&fd, CloneFlags::CLONE_NEWNET)?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("network thread panicked"))?
}

/// Makes `dir` a shared mount point (bound onto itself if it is none yet), as `ip netns`
/// does: the namespace mounts made below it then reach, and leave, the mount namespaces of
/// running containers' shims too, so a removed namespace is not kept alive by their copies.
fn shared_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if is_mount_point(dir) {
        return shared().map_err(io::Error::from);
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    shared().map_err(io::Error::from)
}

/// True when `dir` is the root of a mount (per this process's mount table).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(canonical) = fs::canonicalize(dir) else {
        return false;
    };
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|p| Path::new(&unescape(p)) == canonical)
    })
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match octal {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\"), r"/odd\");
    }
}
