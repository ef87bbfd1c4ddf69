//! Every file the loader (and `compose up`, for secret and config `file:` sources) reads goes
//! through [`read_bounded`]: only regular files (a FIFO would block the open, a device such as
//! `/dev/zero` never ends, a directory is no file), at most a given number of bytes, so a
//! hostile path costs neither time nor memory.

use std::io::Read;
use std::path::Path;

/// How large a Compose file or an env file may be. Far above any real one, and far below what
/// could hurt: the project the control plane accepts is at most 1 MiB of JSON.
pub const MAX_TEXT_FILE: u64 = 4 * 1024 * 1024;

/// Reads `path` when it is a regular file (symbolic links followed) of at most `max` bytes.
///
/// # Errors
/// The reason, ready to follow `PATH: `: the I/O error, "not a regular file (a directory)",
/// "larger than N bytes".
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(&meta.file_type())));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    // The path may have changed since (the files are the operator's own, so that race is
    // not guarded further): what was opened is checked again, and the read is capped anyway.
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(&meta.file_type())));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text, at most [`MAX_TEXT_FILE`] bytes.
///
/// # Errors
/// As [`read_bounded`], and text that is not UTF-8.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = read_bounded(path, MAX_TEXT_FILE)?;
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// Not a regular file: what it is.
    NotRegular(&'static str),
    /// Larger than this many bytes.
    TooLarge(u64),
    /// Not UTF-8 text.
    NotUtf8,
}

impl ReadError {
    /// Whether the file does not exist (an optional file is then skipped).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "not a regular file ({what})"),
            ReadError::TooLarge(max) => write!(f, "larger than {max} bytes"),
            ReadError::NotUtf8 => write!(f, "stream did not contain valid UTF-8"),
        }
    }
}

impl std::error::Error for ReadError {}

fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "hello").expect("write");
        assert_eq!(read_text(&file).expect("reads"), "hello");
        assert!(matches!(
            read_bounded(&file, 4),
            Err(ReadError::TooLarge(4))
        ));
        let err = read_text(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = read_text(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.to_string().contains("character device"), "{err}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        // Would block forever in open(2) if it were opened.
        let err = read_text(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::os::unix::fs::symlink("b", dir.path().join("a")).expect("symlink");
        std::os::unix::fs::symlink("a", dir.path().join("b")).expect("symlink");
        assert!(read_text(&dir.path().join("a")).is_err());
        assert!(read_text(&dir.path().join("missing"))
            .expect_err("missing")
            .is_not_found());
        std::fs::write(&file, [0xff, 0xfe]).expect("write");
        assert!(matches!(read_text(&file), Err(ReadError::NotUtf8)));
    }
}
