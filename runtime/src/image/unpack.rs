//! Safe layer unpack: one layer tar (gzip, zstd or plain) into one fresh directory, in the form
//! overlayfs reads as a lower layer (whiteouts become 0:0 character devices, opaque directories
//! get `trusted.overlay.opaque=y`).
//!
//! Every entry is written through directory file descriptors opened component by component with
//! `O_NOFOLLOW`, starting at the layer root: a path with `..`, an absolute path, a path that
//! passes through a symlink (or a non-directory), or a hardlink whose target does so is refused.
//! So nothing is ever created, written or linked outside the target directory, whatever the
//! archive holds. Device nodes are skipped.
//!
//! The fuzz harness (`fuzz/harness`) compiles this file in by its path, without the rest of the
//! crate: it may use only `super::digest`, `flotilla_oci` and crates the harness has.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::digest::{Digest, HashingReader};

/// Paths deeper than this are refused (a guard against archives built to exhaust the stack or
/// file descriptors).
const MAX_DEPTH: usize = 128;
/// Whiteout prefix (OCI image spec, layer changesets).
const WHITEOUT: &[u8] = b".wh.";
/// Opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Extended attribute overlayfs reads to hide lower directory contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What one unpacked layer amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Digest of the uncompressed tar stream (the layer's diffID).
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Bytes of regular-file content written.
    pub content_bytes: u64,
    /// Entries in the archive.
    pub entries: u64,
    /// Entries skipped (device nodes, unsupported types).
    pub skipped: u64,
}

/// Why a layer could not be unpacked. `entry` names the archive entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry's path is absolute.
    #[error("entry '{entry}': absolute path refused")]
    AbsolutePath {
        /// The entry.
        entry: String,
    },
    /// The entry's path has a `..` component.
    #[error("entry '{entry}': path with '..' refused")]
    DotDot {
        /// The entry.
        entry: String,
    },
    /// The entry's path is deeper than the store allows.
    #[error("entry '{entry}': path deeper than {MAX_DEPTH} components refused")]
    TooDeep {
        /// The entry.
        entry: String,
    },
    /// A parent component of the entry is a symlink.
    #[error("entry '{entry}': parent '{component}' is a symlink; writing through it refused")]
    ThroughSymlink {
        /// The entry.
        entry: String,
        /// The symlinked parent, relative to the layer root.
        component: String,
    },
    /// A parent component of the entry exists and is not a directory.
    #[error("entry '{entry}': parent '{component}' is not a directory")]
    NotADirectory {
        /// The entry.
        entry: String,
        /// The offending parent.
        component: String,
    },
    /// A hardlink's target is outside the layer or not in it.
    #[error("entry '{entry}': hardlink to '{target}' refused: {reason}")]
    Hardlink {
        /// The entry.
        entry: String,
        /// The link target as written in the archive.
        target: String,
        /// Why.
        reason: String,
    },
    /// A whiteout names nothing usable (`.wh.`, `.wh..`).
    #[error("entry '{entry}': malformed whiteout")]
    BadWhiteout {
        /// The entry.
        entry: String,
    },
    /// The archive stream itself is broken (truncated, bad header, bad compression).
    #[error("reading layer archive: {0}")]
    Archive(#[source] io::Error),
    /// A filesystem operation failed.
    #[error("entry '{entry}': {op}: {source}")]
    Io {
        /// The entry.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

pub use flotilla_oci::layout::decompress;

/// Unpacks the (possibly compressed) layer tar `reader` into `dest`, which must be an existing,
/// empty directory. Returns the diffID computed over the uncompressed stream; the caller checks
/// it against the image config before trusting the result.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let root = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("", "open layer directory"))?;
    let hashing = HashingReader::new(decompress(reader).map_err(UnpackError::Archive)?);
    let mut archive = tar::Archive::new(hashing);
    let mut un = Unpacker {
        root,
        cached: None,
        dir_times: Vec::new(),
        content_bytes: 0,
        entries: 0,
        skipped: 0,
    };
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        un.entries += 1;
        un.entry(&mut entry)?;
    }
    un.apply_dir_times();
    let (diff_id, tar_bytes) = archive
        .into_inner()
        .finish()
        .map_err(UnpackError::Archive)?;
    Ok(UnpackStats {
        diff_id,
        tar_bytes,
        content_bytes: un.content_bytes,
        entries: un.entries,
        skipped: un.skipped,
    })
}

/// Splits an archive path into checked components.
fn components(raw: &[u8], entry: &str) -> Result<Vec<Vec<u8>>, UnpackError> {
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::AbsolutePath {
            entry: entry.to_string(),
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::DotDot {
                    entry: entry.to_string(),
                })
            }
            c => out.push(c.to_vec()),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(UnpackError::TooDeep {
            entry: entry.to_string(),
        });
    }
    Ok(out)
}

fn lossy(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

struct Unpacker {
    root: OwnedFd,
    /// The last parent directory opened, to avoid re-walking for siblings.
    cached: Option<(Vec<Vec<u8>>, OwnedFd)>,
    dir_times: Vec<(Vec<Vec<u8>>, u64)>,
    content_bytes: u64,
    entries: u64,
    skipped: u64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Unpacker {
    /// Opens the directory at `comps` below the root without following any symlink, creating
    /// missing directories (mode 0755) when `create` is set.
    fn open_dir(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        entry: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let mut cur = self.root.try_clone().map_err(|e| UnpackError::Io {
            entry: entry.to_string(),
            op: "dup layer root",
            source: e,
        })?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let next = match rfs::openat(&cur, name, DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    let made = match rfs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => true,
                        Err(Errno::EXIST) => false,
                        Err(e) => return Err(io_err(entry, "create parent directory")(e)),
                    };
                    let fd = rfs::openat(&cur, name, DIR_FLAGS, Mode::empty());
                    if let (true, Ok(fd)) = (made, &fd) {
                        // 0755 whatever the umask of the process unpacking.
                        rfs::fchmod(fd, Mode::from_raw_mode(0o755))
                            .map_err(io_err(entry, "create parent directory"))?;
                    }
                    fd
                }
                other => other,
            };
            cur = match next {
                Ok(fd) => fd,
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let component = lossy(&comps[..=i]);
                    let is_link = rfs::statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
                        .unwrap_or(false);
                    return Err(if is_link {
                        UnpackError::ThroughSymlink {
                            entry: entry.to_string(),
                            component,
                        }
                    } else {
                        UnpackError::NotADirectory {
                            entry: entry.to_string(),
                            component,
                        }
                    });
                }
                Err(e) => return Err(io_err(entry, "open parent directory")(e)),
            };
        }
        Ok(cur)
    }

    /// The parent directory of `comps`, from the cache when it is the previous entry's parent.
    fn parent(&mut self, parent: &[Vec<u8>], entry: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((p, fd)) = &self.cached {
            if p.as_slice() == parent {
                return fd.try_clone().map_err(|e| UnpackError::Io {
                    entry: entry.to_string(),
                    op: "dup parent directory",
                    source: e,
                });
            }
        }
        let fd = self.open_dir(parent, true, entry)?;
        let keep = fd.try_clone().map_err(|e| UnpackError::Io {
            entry: entry.to_string(),
            op: "dup parent directory",
            source: e,
        })?;
        self.cached = Some((parent.to_vec(), keep));
        Ok(fd)
    }

    /// Removes whatever is at `name` in `dir` (recursively for directories), unless it is a
    /// directory and `keep_dir` is set. Returns whether a directory was kept.
    fn clear(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        entry: &str,
    ) -> Result<bool, UnpackError> {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err(entry, "stat existing entry")(e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                // Removing a directory invalidates any cached descendant.
                self.cached = None;
                remove_tree(dir, name, 0).map_err(io_err(entry, "remove existing directory"))?;
                Ok(false)
            }
            Ok(_) => {
                rfs::unlinkat(dir, name, AtFlags::empty())
                    .map_err(io_err(entry, "remove existing entry"))?;
                Ok(false)
            }
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let entry = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw, &entry)?;
        let header = e.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(UnpackError::Archive)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Archive)?;
        let gid = header.gid().map_err(UnpackError::Archive)?;
        let mtime = header.mtime().unwrap_or(0);

        let Some((name, parent)) = comps.split_last() else {
            // The layer root itself ("./"): take its owner and mode.
            if kind.is_dir() {
                set_owner_mode(&self.root, uid, gid, mode)
                    .map_err(io_err(&entry, "set root attributes"))?;
            }
            return Ok(());
        };

        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let dir = self.parent(parent, &entry)?;
            if name.as_slice() == OPAQUE {
                rfs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(io_err(&entry, "mark directory opaque"))?;
            } else if hidden.starts_with(WHITEOUT) {
                // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content, skip it.
                self.skipped += 1;
            } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::BadWhiteout { entry });
            } else {
                let hidden = OsStr::from_bytes(hidden);
                self.clear(&dir, hidden, false, &entry)?;
                rfs::mknodat(
                    &dir,
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .map_err(io_err(&entry, "create whiteout"))?;
            }
            return Ok(());
        }

        let name_os = OsStr::from_bytes(name);
        match kind {
            tar::EntryType::Directory => {
                let dir = self.parent(parent, &entry)?;
                if !self.clear(&dir, name_os, true, &entry)? {
                    rfs::mkdirat(&dir, name_os, Mode::from_raw_mode(0o700))
                        .map_err(io_err(&entry, "create directory"))?;
                }
                let fd = rfs::openat(&dir, name_os, DIR_FLAGS, Mode::empty())
                    .map_err(io_err(&entry, "open directory"))?;
                set_owner_mode(&fd, uid, gid, mode)
                    .map_err(io_err(&entry, "set directory attributes"))?;
                apply_xattrs(e, &fd);
                self.dir_times.push((comps.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dir = self.parent(parent, &entry)?;
                self.clear(&dir, name_os, false, &entry)?;
                let fd = rfs::openat(
                    &dir,
                    name_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err(&entry, "create file"))?;
                let mut file = File::from(fd);
                let n = io::copy(e, &mut file).map_err(|source| UnpackError::Io {
                    entry: entry.clone(),
                    op: "write file",
                    source,
                })?;
                file.flush().map_err(|source| UnpackError::Io {
                    entry: entry.clone(),
                    op: "write file",
                    source,
                })?;
                self.content_bytes += n;
                set_owner_mode(&file, uid, gid, mode)
                    .map_err(io_err(&entry, "set file attributes"))?;
                apply_xattrs(e, &file);
                set_times(&file, mtime).map_err(io_err(&entry, "set file times"))?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name_bytes().unwrap_or_default().into_owned();
                let dir = self.parent(parent, &entry)?;
                self.clear(&dir, name_os, false, &entry)?;
                // The target is stored, never followed by the unpacker.
                rfs::symlinkat(OsStr::from_bytes(&target), &dir, name_os)
                    .map_err(io_err(&entry, "create symlink"))?;
                chown_at(&dir, name_os, uid, gid).map_err(io_err(&entry, "set symlink owner"))?;
                let ts = timestamps(mtime);
                rfs::utimensat(&dir, name_os, &ts, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err(&entry, "set symlink times"))?;
            }
            tar::EntryType::Link => {
                let target_raw = e.link_name_bytes().unwrap_or_default().into_owned();
                let target = String::from_utf8_lossy(&target_raw).into_owned();
                let refuse = |reason: String| UnpackError::Hardlink {
                    entry: entry.clone(),
                    target: target.clone(),
                    reason,
                };
                let tcomps = match components(&target_raw, &entry) {
                    Ok(c) => c,
                    Err(UnpackError::AbsolutePath { .. }) => {
                        return Err(refuse("absolute target".into()))
                    }
                    Err(UnpackError::DotDot { .. }) => {
                        return Err(refuse("target has '..'".into()))
                    }
                    Err(e) => return Err(e),
                };
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(refuse("target is the layer root".into()));
                };
                let tdir = match self.open_dir(tparent, false, &entry) {
                    Ok(fd) => fd,
                    Err(UnpackError::ThroughSymlink { component, .. }) => {
                        return Err(refuse(format!("target parent '{component}' is a symlink")))
                    }
                    Err(UnpackError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Err(refuse("target is not in this layer".into()))
                    }
                    Err(e) => return Err(e),
                };
                let tname = OsStr::from_bytes(tname);
                match rfs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(refuse("target is a directory".into()))
                    }
                    Ok(_) => {}
                    Err(_) => return Err(refuse("target is not in this layer".into())),
                }
                let dir = self.parent(parent, &entry)?;
                if (tparent, tname) != (parent, name_os) {
                    self.clear(&dir, name_os, false, &entry)?;
                    rfs::linkat(&tdir, tname, &dir, name_os, AtFlags::empty())
                        .map_err(io_err(&entry, "create hardlink"))?;
                }
            }
            tar::EntryType::Fifo => {
                let dir = self.parent(parent, &entry)?;
                self.clear(&dir, name_os, false, &entry)?;
                rfs::mknodat(&dir, name_os, FileType::Fifo, Mode::from_raw_mode(mode), 0)
                    .map_err(io_err(&entry, "create fifo"))?;
                chown_at(&dir, name_os, uid, gid).map_err(io_err(&entry, "set fifo owner"))?;
                // mknod's mode passed through the umask; the entry's is wanted. A fifo
                // just made here (never a link: `clear` removed what was there).
                rfs::chmodat(&dir, name_os, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(io_err(&entry, "set fifo mode"))?;
            }
            // Device nodes are the runtime's to provide, never the image's.
            _ => {
                tracing::debug!(entry, kind = ?kind, "skipping unsupported layer entry");
                self.skipped += 1;
            }
        }
        Ok(())
    }

    /// Directory times last: creating children changed them.
    fn apply_dir_times(&mut self) {
        self.cached = None;
        let mut seen = HashSet::new();
        for (comps, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if !seen.insert(comps.clone()) {
                continue;
            }
            if let Ok(fd) = self.open_dir(&comps, false, "") {
                let _ = set_times(&fd, mtime);
            }
        }
    }
}

fn set_owner_mode(fd: impl AsFd, uid: u64, gid: u64, mode: u32) -> Result<(), Errno> {
    // Owner before mode: chown clears set-id bits.
    rfs::fchown(
        &fd,
        Some(rfs::Uid::from_raw(uid as u32)),
        Some(rfs::Gid::from_raw(gid as u32)),
    )?;
    rfs::fchmod(&fd, Mode::from_raw_mode(mode))
}

/// Sets the owner of `name` in `dir` without following it if it is a symlink.
fn chown_at(dir: &OwnedFd, name: &OsStr, uid: u64, gid: u64) -> Result<(), Errno> {
    rfs::chownat(
        dir,
        name,
        Some(rfs::Uid::from_raw(uid as u32)),
        Some(rfs::Gid::from_raw(gid as u32)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

fn timestamps(mtime: u64) -> rfs::Timestamps {
    let t = rfs::Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    rfs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_times(fd: impl AsFd, mtime: u64) -> Result<(), Errno> {
    rfs::futimens(&fd, &timestamps(mtime))
}

/// Extended attributes from PAX `SCHILY.xattr.*` records. Only `user.*` and file capabilities
/// are honoured: `trusted.*` (overlayfs control) and other `security.*` names from an image are
/// ignored. Failures (filesystem without xattr support) are logged and skipped.
fn apply_xattrs<R: Read>(e: &mut tar::Entry<'_, R>, fd: impl AsFd) {
    let Ok(Some(exts)) = e.pax_extensions() else {
        return;
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if !(name.starts_with("user.") || name == "security.capability") {
            tracing::debug!(xattr = name, "ignoring layer xattr");
            continue;
        }
        if let Err(err) = rfs::fsetxattr(&fd, name, ext.value_bytes(), XattrFlags::empty()) {
            tracing::debug!(xattr = name, %err, "cannot set layer xattr");
        }
    }
}

/// Removes `name` in `dir` and everything below it, never following symlinks.
fn remove_tree(dir: &OwnedFd, name: &OsStr, depth: usize) -> Result<(), Errno> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rfs::unlinkat(dir, name, AtFlags::empty());
    }
    if depth > MAX_DEPTH * 2 {
        return Err(Errno::LOOP);
    }
    let sub = rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for ent in rfs::Dir::read_from(&sub)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_tree(&sub, OsStr::from_bytes(&n), depth + 1)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
