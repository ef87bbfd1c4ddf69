//! Small filesystems for tests of what a daemon does when its disk fills: a tmpfs, or an ext4
//! on a loop device (what a node's SD card or disk really is: journal, block allocation), of a
//! given size, filled to the last byte and given back on demand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// A tmpfs of `size` (or an ext4, [`Tmpfs::ext4_at`]) mounted on a directory, unmounted
/// (lazily, so a process still in it does not keep it; a loop device goes with it) when
/// dropped — after a failed assertion too. Declare it after whatever owns the
/// directory it is mounted on (a `TempDir`, a [`crate::node::Node`]), so that it is dropped
/// first.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
    /// The directory made for it, when it made one.
    _own: Option<tempfile::TempDir>,
    /// The directory holding an ext4's image file.
    _image: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// A tmpfs of `size` (as mount(8) reads it: `64m`) on a directory of its own.
    pub fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut fs = Self::mount_at(dir.path(), size)?;
        fs._own = Some(dir);
        Ok(fs)
    }

    /// An ext4 of `mib` MiB on a directory of its own (see [`Tmpfs::ext4_at`]).
    pub fn ext4(mib: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut fs = Self::ext4_at(dir.path(), mib)?;
        fs._own = Some(dir);
        Ok(fs)
    }

    /// A tmpfs of `size` on `path` (made if missing), mode 0700.
    pub fn mount_at(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed",
            path.display()
        );
        Ok(Self {
            path: path.to_path_buf(),
            _own: None,
            _image: None,
        })
    }

    /// An ext4 of `mib` MiB on a loop device, mounted on `path` (made if missing), its root
    /// 0700; the image file lives in a directory of its own under the system's temporary one.
    pub fn ext4_at(path: &Path, mib: u64) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)?.set_len(mib << 20)?;
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output()
            .context("running mkfs.ext4 (Debian's e2fsprogs)")?;
        ensure!(
            out.status.success(),
            "mkfs.ext4 {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(path)
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "mount -o loop {} on {}: {}",
            image.display(),
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // Nothing of mkfs's own in the way of what the test expects to find there.
        let _ = std::fs::remove_dir(path.join("lost+found"));
        Ok(Self {
            path: path.to_path_buf(),
            _own: None,
            _image: Some(dir),
        })
    }

    /// Moves what the directory `path` holds onto a filesystem of its own that `mount` mounts
    /// there (`|p| Tmpfs::ext4_at(p, 32)`, `|p| Tmpfs::mount_at(p, "16m")`): copied aside
    /// (`cp -a`, owners and modes kept) next to it as `NAME.aside`, emptied, mounted, copied
    /// back. For a daemon's data directory while the daemon is stopped.
    pub fn move_onto(path: &Path, mount: impl FnOnce(&Path) -> Result<Self>) -> Result<Self> {
        let aside = path.with_extension("aside");
        copy(path, &aside)?;
        std::fs::remove_dir_all(path).with_context(|| format!("emptying {}", path.display()))?;
        let fs = mount(path)?;
        copy(&aside.join("."), path)?;
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills it to the last byte with one file, `.filler` at its root (in 1 MiB writes, then
    /// 4 KiB, then single bytes, until the kernel says `ENOSPC`); its size.
    pub fn fill(&self) -> Result<u64> {
        let path = self.filler();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0xa5u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                    Err(e) => return Err(e).context("filling"),
                }
            }
        }
        Ok(written)
    }

    /// Gives the space [`Tmpfs::fill`] took back, and commits that (`syncfs`: ext4 hands freed
    /// blocks out again only once its journal has committed their release).
    pub fn release(&self) -> Result<()> {
        std::fs::remove_file(self.filler()).context("removing the filler")?;
        let root = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        rustix::fs::syncfs(&root).with_context(|| format!("syncfs {}", self.path.display()))
    }

    fn filler(&self) -> PathBuf {
        self.path.join(".filler")
    }
}

/// `cp -a FROM TO`.
fn copy(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    ensure!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `ENOSPC` (28 on Linux).
fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // `-d`: the loop device of an ext4 goes too (once the lazy unmount completes).
        let _ = Command::new("umount")
            .args(["-l", "-d"])
            .arg(&self.path)
            .status();
    }
}
