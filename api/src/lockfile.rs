//! Lock files that name their holder: an exclusive `flock(2)`, taken without waiting, on a file
//! whose first line says who holds it, so that a refusal can name the holder. The kernel drops
//! the lock with the holder's process (flock(2): the lock goes with the last descriptor of the
//! open file), so a killed holder leaves nothing to clean up; the file itself stays.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What [`try_lock`] found.
#[derive(Debug)]
pub enum Lock {
    /// Taken by this process: held until the file is closed.
    Taken(File),
    /// Another process holds it.
    Busy {
        /// The first line the holder wrote, or `None` when it wrote none or one that is not
        /// printable (the file may be on a shared directory: what it says is not trusted to
        /// reach a terminal).
        holder: Option<String>,
    },
}

/// A lock file that could not be used: what was being done, on which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct LockError {
    /// `creating the directory of`, `opening`, `locking` or `writing`.
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Takes the lock on `path` without waiting: the file (and its directory) is made if missing,
/// and `me` (one line, without its newline) is written in it once taken. While another process
/// holds it, answers [`Lock::Busy`] with the holder's line.
///
/// Errors: the directory, the file or the lock could not be made, opened or written.
pub fn try_lock(path: &Path, me: &str) -> Result<Lock, LockError> {
    let fail = |what| {
        move |source| LockError {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail("creating the directory of"))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(fail("opening"))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            // At most a line's worth, whatever the file holds.
            let _ = (&mut file).take(4096).read_to_string(&mut text);
            return Ok(Lock::Busy {
                holder: holder(&text),
            });
        }
        Err(e) => return Err(fail("locking")(e.into())),
    }
    let write = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{me}")
    };
    write(&mut file).map_err(fail("writing"))?;
    Ok(Lock::Taken(file))
}

/// The holder's line: the first of `text`, trimmed, unless empty or not printable.
fn holder(text: &str) -> Option<String> {
    let line = text.lines().next().unwrap_or("").trim();
    (!line.is_empty() && !line.chars().any(char::is_control)).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_told_the_holders_line_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/x.lock");
        let Lock::Taken(first) = try_lock(&path, "pid 1, data dir /a").expect("first") else {
            panic!("the first taker is refused");
        };
        match try_lock(&path, "pid 2, data dir /b").expect("second") {
            Lock::Busy { holder } => assert_eq!(holder.as_deref(), Some("pid 1, data dir /a")),
            Lock::Taken(_) => panic!("taken twice"),
        }
        drop(first);
        assert!(matches!(
            try_lock(&path, "pid 2, data dir /b").expect("third"),
            Lock::Taken(_)
        ));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "pid 2, data dir /b\n"
        );
    }

    #[test]
    fn a_holder_line_that_is_not_one_is_not_repeated() {
        assert_eq!(holder(""), None);
        assert_eq!(holder("  \n"), None);
        assert_eq!(holder("\u{1b}[2J"), None);
        assert_eq!(holder("pid 7\u{7}"), None);
        assert_eq!(
            holder("pid 7, data dir /d\nmore").as_deref(),
            Some("pid 7, data dir /d")
        );
    }

    #[test]
    fn an_unusable_path_is_named_with_what_was_being_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        let err = try_lock(&file.join("x.lock"), "me").expect_err("under a file");
        let said = crate::errors::chain(&err);
        assert!(
            said.starts_with(&format!(
                "creating the directory of {}: ",
                file.join("x.lock").display()
            )),
            "{said}"
        );
    }
}
