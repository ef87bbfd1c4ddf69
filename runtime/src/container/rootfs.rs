//! A container's root filesystem: overlayfs over the image's unpacked layers with a private
//! upper directory, plus lookups inside it that never leave it (the image is hostile: its
//! `/etc/passwd` or working directory may be symlinks pointing at the host).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{mkdirat, openat2, Mode, OFlags, ResolveFlags};
use rustix::mount::{mount, MountFlags};

use super::accounts::{self, ResolvedUser};
pub use super::accounts::{UserError, MAX_ID};
use crate::image::MAX_LAYERS;

/// Passwd and group files larger than this are refused.
const MAX_ACCOUNT_FILE: u64 = 4 * 1024 * 1024;

/// Name of the directory of short layer links inside an overlay's directory.
const LINKS_DIR: &str = "layers";

/// The lower directories of an overlay, topmost first, each once: a layer that appears
/// several times in an image (BuildKit repeats the empty layer) is kept only at its highest
/// place. That is what stacking every copy would show: everything the lower copy names, the
/// higher copy names again above it, so the lower copy is never visible — and overlayfs
/// refuses the same directory twice.
pub fn lower_stack(layers: &[PathBuf]) -> Vec<&Path> {
    let mut seen = HashSet::new();
    layers
        .iter()
        .rev()
        .filter(|l| seen.insert(l.as_path()))
        .map(PathBuf::as_path)
        .collect()
}

/// Mounts overlayfs at `target`: `layers` (lowest first) read-only below `dir/upper`, with
/// `dir/work` as its work directory.
///
/// The kernel takes mount options of one page at most, so the options name no layer by its
/// own path: `dir/layers/` gets one link per layer named by its place (`0` is the topmost, in a
/// tmpfs of the caller's mount namespace, unmounted again once the overlay holds the layers),
/// and the mount is made from inside that directory with relative names (`lowerdir=0:1:…,
/// upperdir=../upper`). The options then stay under 2 KiB for the most layers overlayfs
/// stacks ([`MAX_LAYERS`]), whatever the length of the data directory's path. The process's
/// working directory moves for the call: callers are single-threaded or own their working
/// directory (`CLONE_FS`).
pub fn mount_overlay(layers: &[PathBuf], dir: &Path, target: &Path) -> io::Result<()> {
    let stack = lower_stack(layers);
    if stack.len() > MAX_LAYERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the image has {} distinct layers; overlayfs stacks at most {MAX_LAYERS}",
                stack.len()
            ),
        ));
    }
    let links = dir.join(LINKS_DIR);
    match fs::remove_dir_all(&links) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&links)(e)),
        _ => {}
    }
    fs::create_dir(&links).map_err(at(&links))?;
    // The links live in a tmpfs of this mount namespace: making 500 of them on the data
    // directory's disk takes about a millisecond each, in memory microseconds. The overlay
    // holds the layers themselves once mounted, so the tmpfs goes right after; without one
    // (no tmpfs in the kernel) the links are made on disk.
    let in_memory = mount(
        "tmpfs",
        &links,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
        c"mode=0700",
    )
    .is_ok();
    for (i, layer) in stack.iter().enumerate() {
        let link = links.join(i.to_string());
        std::os::unix::fs::symlink(layer, &link).map_err(at(&link))?;
    }
    let names: Vec<String> = (0..stack.len()).map(|i| i.to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir=../upper,workdir=../work,index=off,xino=off",
        names.join(":")
    );
    let data = CString::new(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let back = rustix::fs::open(
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| at(Path::new("."))(e.into()))?;
    rustix::process::chdir(&links).map_err(|e| at(&links)(e.into()))?;
    let res = mount(
        "overlay",
        target,
        "overlay",
        MountFlags::NODEV,
        data.as_c_str(),
    );
    rustix::process::fchdir(&back)
        .map_err(|e| at(Path::new("the previous working directory"))(e.into()))?;
    if in_memory {
        let _ = rustix::mount::unmount(&links, rustix::mount::UnmountFlags::DETACH);
    }
    res.map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "mounting overlayfs of {} layers at {}: {e}",
                stack.len(),
                target.display()
            ),
        )
    })
}

fn open_in_root(root: &OwnedFd, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(openat2(
        root,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )?)
}

fn read_in_root(root: &OwnedFd, path: &str) -> io::Result<Option<String>> {
    let fd = match open_in_root(root, path, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut text = String::new();
    file.by_ref()
        .take(MAX_ACCOUNT_FILE)
        .read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Resolves `user[:group]` (names or numbers) against the root filesystem at `rootfs`: its
/// `/etc/passwd` and `/etc/group`, read without leaving it (see [`accounts::resolve`]).
pub fn resolve_user(rootfs: &OwnedFd, spec: Option<&str>) -> Result<ResolvedUser, UserError> {
    let passwd = read_in_root(rootfs, "/etc/passwd")?.unwrap_or_default();
    let groups = read_in_root(rootfs, "/etc/group")?.unwrap_or_default();
    accounts::resolve(&passwd, &groups, spec)
}

/// Makes sure the working directory exists inside the root filesystem, creating missing
/// directories without ever following a link out of it.
pub fn ensure_dir(rootfs: &OwnedFd, path: &Path) -> io::Result<()> {
    let mut current = String::from("/");
    for c in path.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        let parent = open_in_root(rootfs, &current, OFlags::PATH | OFlags::DIRECTORY)?;
        let name = name.to_string_lossy();
        match mkdirat(parent.as_fd(), name.as_ref(), Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        current = format!("{}/{}", current.trim_end_matches('/'), name);
        // Must now resolve (inside the root) to a directory.
        open_in_root(rootfs, &current, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| io::Error::new(e.kind(), format!("{current} in the image: {e}")))?;
    }
    Ok(())
}

/// Whether `path` is a directory inside the root filesystem `rootfs` (resolved inside it, a
/// link at its end followed, as a mount over it is made): `false` when it is something else
/// or missing. An error when it cannot be looked up (a component that is a file, say).
pub fn is_dir_in_root(rootfs: &OwnedFd, path: &Path) -> io::Result<bool> {
    match open_in_root(rootfs, &path.to_string_lossy(), OFlags::PATH) {
        Ok(fd) => Ok(
            rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
                == rustix::fs::FileType::Directory,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Directories deeper than this below an image volume's path are refused by [`copy_up`].
const MAX_COPY_DEPTH: usize = 128;

/// Fills the empty directory `dest` (a new anonymous volume) with what the image has at `path`
/// inside the root `root`, as Docker fills a new volume: directories, files and symlinks with
/// their owners and modes; other entries (devices, fifos, sockets) are skipped. The path is
/// resolved inside the root and no link is ever followed, so nothing outside the image is
/// read and nothing outside `dest` written. A `dest` that holds anything already (a restart)
/// and an image without the path are left as they are.
pub fn copy_up(root: &OwnedFd, path: &Path, dest: &Path) -> io::Result<()> {
    if fs::read_dir(dest).map_err(at(dest))?.next().is_some() {
        return Ok(());
    }
    let dest_fd = rustix::fs::open(dest, DIR | OFlags::RDONLY, Mode::empty())
        .map_err(|e| at(dest)(e.into()))?;
    // A link at the path itself is followed, inside the root (as the bind mount over it is).
    let src = match open_in_root(
        root,
        &path.to_string_lossy(),
        OFlags::DIRECTORY | OFlags::RDONLY,
    ) {
        Ok(fd) => fd,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(())
        }
        Err(e) => return Err(at(path)(e)),
    };
    let top = rustix::fs::fstat(&src)?;
    copy_tree(&src, &dest_fd, path, 0)?;
    set_owner_mode(&dest_fd, &top).map_err(at(dest))
}

/// Flags of a directory opened for [`copy_up`].
const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn copy_tree(src: &OwnedFd, dest: &OwnedFd, path: &Path, depth: usize) -> io::Result<()> {
    use rustix::fs::{openat, readlinkat, statat, symlinkat, AtFlags, Dir, FileType};
    if depth > MAX_COPY_DEPTH {
        return Err(io::Error::other(format!(
            "{}: more than {MAX_COPY_DEPTH} directories deep",
            path.display()
        )));
    }
    let mut dir = Dir::read_from(src).map_err(|e| at(path)(e.into()))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| at(path)(e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let here = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let fail = |e: rustix::io::Errno| at(&here)(e.into());
        let st = statat(src, name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                mkdirat(dest, name, Mode::from_raw_mode(0o700)).map_err(fail)?;
                let s = openat(src, name, DIR | OFlags::RDONLY, Mode::empty()).map_err(fail)?;
                let d = openat(dest, name, DIR | OFlags::RDONLY, Mode::empty()).map_err(fail)?;
                copy_tree(&s, &d, &here, depth + 1)?;
                set_owner_mode(&d, &st).map_err(at(&here))?;
            }
            FileType::RegularFile => {
                let s = openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fail)?;
                let d = openat(
                    dest,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(fail)?;
                let mut d = fs::File::from(d);
                io::copy(&mut fs::File::from(s), &mut d).map_err(at(&here))?;
                set_owner_mode(&d, &st).map_err(at(&here))?;
            }
            FileType::Symlink => {
                let target = readlinkat(src, name, Vec::new()).map_err(fail)?;
                symlinkat(target.as_c_str(), dest, name).map_err(fail)?;
                rustix::fs::chownat(
                    dest,
                    name,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(fail)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Gives `fd` the owner and mode of `st` (owner first: chown clears set-id bits).
fn set_owner_mode(fd: impl AsFd, st: &rustix::fs::Stat) -> io::Result<()> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    Ok(())
}

/// An error about `path`, keeping its kind.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Opens a directory to serve as the root of the lookups above.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(d.path().join("etc")).expect("mkdir");
        for (p, c) in files {
            fs::write(d.path().join(p), c).expect("write");
        }
        d
    }

    #[test]
    fn repeated_layers_are_stacked_once_at_their_highest_place() {
        let p = |s: &str| PathBuf::from(format!("/l/{s}"));
        let image = [p("base"), p("empty"), p("x"), p("empty"), p("a"), p("x")];
        let stack: Vec<_> = lower_stack(&image)
            .iter()
            .map(|l| l.display().to_string())
            .collect();
        assert_eq!(stack, ["/l/x", "/l/a", "/l/empty", "/l/base"]);
        assert!(lower_stack(&[]).is_empty());
    }

    #[test]
    fn image_content_fills_a_new_volume_without_leaving_the_image() {
        let d = root_with(&[]);
        let outside = tempfile::tempdir().expect("tmp");
        fs::write(outside.path().join("secret"), "host").expect("secret");
        fs::create_dir_all(d.path().join("data/sub")).expect("mkdir");
        fs::write(d.path().join("data/sub/f"), "f").expect("write");
        std::os::unix::fs::symlink(outside.path(), d.path().join("data/out")).expect("link");
        std::os::unix::fs::symlink("/data", d.path().join("alias")).expect("link");
        let root = open_root(d.path()).expect("open");
        let vol = tempfile::tempdir().expect("vol");
        // Through a link at the path itself, resolved inside the root.
        copy_up(&root, Path::new("/alias"), vol.path()).expect("copy");
        assert_eq!(
            fs::read_to_string(vol.path().join("sub/f")).expect("f"),
            "f"
        );
        // The link is copied as a link, never followed.
        assert_eq!(
            fs::read_link(vol.path().join("out")).expect("link"),
            outside.path()
        );
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 1);
        // A volume holding something already (a restart) is left alone.
        fs::remove_file(vol.path().join("sub/f")).expect("rm");
        copy_up(&root, Path::new("/data"), vol.path()).expect("again");
        assert!(!vol.path().join("sub/f").exists());
        // No such path in the image: nothing to copy.
        let empty = tempfile::tempdir().expect("vol");
        copy_up(&root, Path::new("/nowhere"), empty.path()).expect("missing");
        assert_eq!(fs::read_dir(empty.path()).expect("ls").count(), 0);
    }

    #[test]
    fn users_by_name_number_and_group() {
        let d = root_with(&[
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            ),
            (
                "etc/group",
                "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\n",
            ),
        ]);
        let root = open_root(d.path()).expect("open");
        let u = resolve_user(&root, Some("app")).expect("app");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![10, 29])
        );
        assert_eq!(u.home.as_deref(), Some("/home/app"));
        let u = resolve_user(&root, Some("1000:wheel")).expect("numeric");
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve_user(&root, Some("4242")).expect("unknown uid is fine");
        assert_eq!((u.uid, u.gid, u.home), (4242, 0, None));
        assert!(matches!(
            resolve_user(&root, Some("nobody")),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve_user(&root, Some("app:nogroup")),
            Err(UserError::UnknownGroup(_))
        ));
        let u = resolve_user(&root, None).expect("default root");
        assert_eq!((u.uid, u.gid), (0, 0));
    }

    #[test]
    fn ids_that_setresuid_would_not_apply_are_refused() {
        // An image can name a huge id too, not only the request.
        let d = root_with(&[
            (
                "etc/passwd",
                "big:x:4294967295:0::/:/bin/sh
",
            ),
            (
                "etc/group",
                "huge:x:2147483648:
",
            ),
        ]);
        let root = open_root(d.path()).expect("open");
        for (spec, what, id) in [
            ("4294967295", "user", u32::MAX),
            ("2147483648", "user", 1 << 31),
            ("big", "user", u32::MAX),
            ("0:4294967295", "group", u32::MAX),
            ("0:huge", "group", 1 << 31),
        ] {
            match resolve_user(&root, Some(spec)) {
                Err(UserError::IdOutOfRange { what: w, id: i }) => {
                    assert_eq!((w, i), (what, id), "{spec}")
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
        let u = resolve_user(&root, Some("2147483647:2147483647")).expect("the largest id");
        assert_eq!((u.uid, u.gid), (MAX_ID, MAX_ID));
    }

    #[test]
    fn passwd_symlinked_to_the_host_is_read_inside_the_root() {
        let d = root_with(&[]);
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).expect("link");
        let root = open_root(d.path()).expect("open");
        // resolves to <root>/etc/passwd (itself), a loop or nothing; never the host file
        assert!(resolve_user(&root, Some("root")).is_err());
    }

    #[test]
    fn workdir_creation_stays_inside_the_root() {
        let d = root_with(&[]);
        let outside = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(outside.path(), d.path().join("escape")).expect("link");
        let root = open_root(d.path()).expect("open");
        ensure_dir(&root, Path::new("/srv/app")).expect("mkdir");
        assert!(d.path().join("srv/app").is_dir());
        // the link is resolved inside the root: `/escape` points at a path that does not
        // exist there, so nothing is created outside
        let _ = ensure_dir(&root, Path::new("/escape/x"));
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn directories_are_told_inside_the_root() {
        let d = root_with(&[("etc/hostname", "h\n")]);
        std::os::unix::fs::symlink("/etc", d.path().join("etc-link")).expect("link");
        // Absolute, so inside the root it is the root's /etc; on the host, /tmp.
        std::os::unix::fs::symlink("/tmp", d.path().join("etc/tmp-link")).expect("link");
        let root = open_root(d.path()).expect("open");
        let is_dir = |p: &str| is_dir_in_root(&root, Path::new(p));
        assert!(is_dir("/etc").expect("etc"));
        assert!(is_dir("/etc-link").expect("a link to a directory"));
        assert!(!is_dir("/etc/hostname").expect("a file"));
        assert!(!is_dir("/etc/app/app.conf").expect("missing"));
        assert!(!is_dir("/etc/tmp-link").expect("the root has no /tmp"));
        assert!(is_dir("/etc/hostname/x").is_err());
    }
}
