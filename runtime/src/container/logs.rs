//! Container logs: what a container prints, one line per record, in size-bounded rotating
//! files. The line format is the CRI one (`<RFC 3339 time> <stream> <F|P> <content>`), so the
//! files read like Kubernetes node logs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Name of the current log file in a container's log directory.
pub const LOG_FILE: &str = "container.log";

/// A line longer than this is cut into partial (`P`) records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Size bounds of a container's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    /// Bytes per file before it rotates.
    pub max_size: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

/// Appends records to a container's log directory, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
}

impl LogWriter {
    /// Opens (appending to) the current log file in `dir`.
    pub fn open(dir: &Path, limits: LogLimits) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = open_append(&dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            limits: LogLimits {
                max_size: limits.max_size.max(1024),
                max_files: limits.max_files.max(1),
            },
            file,
            size,
        })
    }

    /// Writes one record stamped with the current time.
    pub fn write(&mut self, stream: Stream, partial: bool, content: &[u8]) -> io::Result<()> {
        let time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let mut line = Vec::with_capacity(time.len() + content.len() + 12);
        line.extend_from_slice(time.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.tag().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let max = self.limits.max_files;
        if max > 1 {
            let _ = fs::remove_file(rotated(&self.dir, max - 1));
            for n in (1..max - 1).rev() {
                let from = rotated(&self.dir, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.dir, n + 1))?;
                }
            }
            fs::rename(self.dir.join(LOG_FILE), rotated(&self.dir, 1))?;
        } else {
            fs::remove_file(self.dir.join(LOG_FILE))?;
        }
        self.file = open_append(&self.dir.join(LOG_FILE))?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// Cuts a byte stream into lines for the log: complete lines as `F` records, over-long ones
/// as `P` pieces. Every line ends with an `F` record, the stream's last one too.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// A `P` piece was emitted and its line has not ended yet.
    in_line: bool,
}

impl LineSplitter {
    /// Feeds bytes; `emit(partial, content)` receives each record.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        emit: &mut impl FnMut(bool, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                emit(false, &bytes[..i])?;
            } else {
                self.pending.extend_from_slice(&bytes[..i]);
                emit(false, &self.pending)?;
                self.pending.clear();
            }
            self.in_line = false;
            bytes = &bytes[i + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            emit(true, &self.pending)?;
            self.in_line = true;
            self.pending = rest;
        }
        Ok(())
    }

    /// Ends the stream's last line when the stream ends without a newline: what is left, or an
    /// empty `F` record after a last `P` piece (a line of a multiple of [`MAX_LINE`] bytes),
    /// so the next run of the container, which appends to the same log, starts a line of
    /// its own.
    pub fn finish(
        &mut self,
        emit: &mut impl FnMut(bool, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.pending.is_empty() || self.in_line {
            emit(false, &self.pending)?;
            self.pending.clear();
            self.in_line = false;
        }
        Ok(())
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// RFC 3339 time the line was read.
    pub time: String,
    /// Where it came from.
    pub stream: Stream,
    /// A piece of a longer line (the line continues in the next record).
    pub partial: bool,
    /// The bytes, without the newline.
    #[serde(serialize_with = "lossy")]
    pub content: Vec<u8>,
}

fn lossy<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

/// Parses one record (without its newline); `None` for a line that is not one.
pub fn parse_line(line: &[u8]) -> Option<LogEntry> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    Some(LogEntry {
        time,
        stream,
        partial,
        content: parts.next().unwrap_or_default().to_vec(),
    })
}

/// Reads a container's logs, oldest first; `tail` keeps only the last N lines. Also returns
/// a [`LogFollower`] positioned right after what was read.
pub fn read(dir: &Path, tail: Option<usize>) -> io::Result<(Vec<LogEntry>, LogFollower)> {
    let mut entries = Vec::new();
    let mut n = 1;
    let mut older = Vec::new();
    while rotated(dir, n).exists() {
        older.push(rotated(dir, n));
        n += 1;
    }
    for path in older.iter().rev() {
        match fs::read(path) {
            Ok(bytes) => entries.extend(parse_all(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // rotated away meanwhile
            Err(e) => return Err(e),
        }
    }
    let mut follower = LogFollower::new(dir.join(LOG_FILE));
    entries.extend(follower.poll()?);
    if let Some(t) = tail {
        // Count whole lines: a line is its `P` pieces plus the closing `F` record.
        let mut lines = 0;
        let mut cut = entries.len();
        for (i, e) in entries.iter().enumerate().rev() {
            if !e.partial {
                if lines == t {
                    break;
                }
                lines += 1;
            }
            cut = i;
        }
        entries.drain(..cut);
    }
    Ok((entries, follower))
}

fn parse_all(bytes: &[u8]) -> impl Iterator<Item = LogEntry> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
}

/// Reads records as they are appended to the current log file, across rotations.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<(File, u64)>,
    pending: Vec<u8>,
}

impl LogFollower {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            pending: Vec::new(),
        }
    }

    /// New complete records since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let current_ino = fs::metadata(&self.path).ok().map(|m| m.ino());
        if let Some((file, ino)) = &mut self.file {
            // Finish the file we hold first: after a rotation it holds the last lines
            // written before the switch.
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            self.pending.extend_from_slice(&buf);
            if current_ino != Some(*ino) {
                self.file = None;
            }
        }
        if self.file.is_none() {
            if let Some(ino) = current_ino {
                match File::open(&self.path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(0))?;
                        let mut buf = Vec::new();
                        f.read_to_end(&mut buf)?;
                        self.pending.extend_from_slice(&buf);
                        self.file = Some((f, ino));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(end + 1);
            out.extend(parse_all(&self.pending));
            self.pending = rest;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path) -> Vec<(Stream, bool, String)> {
        read(dir, None)
            .expect("read")
            .0
            .into_iter()
            .map(|e| {
                (
                    e.stream,
                    e.partial,
                    String::from_utf8(e.content).expect("utf8"),
                )
            })
            .collect()
    }

    #[test]
    fn lines_split_and_long_lines_become_partial_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = LogWriter::open(dir.path(), LogLimits::default()).expect("open");
        let mut split = LineSplitter::default();
        let mut emit = |p: bool, c: &[u8]| w.write(Stream::Stdout, p, c);
        split.feed(b"hello\nwor", &mut emit).expect("feed");
        split.feed(b"ld\n", &mut emit).expect("feed");
        let long = vec![b'x'; MAX_LINE + 10];
        split.feed(&long, &mut emit).expect("feed");
        split.feed(b"\nno newline at end", &mut emit).expect("feed");
        split.finish(&mut emit).expect("finish");
        let got = collect(dir.path());
        assert_eq!(got[0], (Stream::Stdout, false, "hello".into()));
        assert_eq!(got[1], (Stream::Stdout, false, "world".into()));
        assert_eq!((got[2].1, got[2].2.len()), (true, MAX_LINE));
        assert_eq!((got[3].1, got[3].2.len()), (false, 10));
        assert_eq!(got[4], (Stream::Stdout, false, "no newline at end".into()));
        // tail counts whole lines, not records
        let (t, _) = read(dir.path(), Some(2)).expect("tail");
        assert_eq!(t.len(), 3);
        assert!(t[0].partial);
    }

    #[test]
    fn output_that_ends_after_a_whole_piece_still_ends_its_line() {
        // A last line of exactly MAX_LINE bytes and no newline: one `P` piece, then nothing
        // left. Unclosed, the container's next run (same log) would continue that line.
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = LogWriter::open(dir.path(), LogLimits::default()).expect("open");
        let mut split = LineSplitter::default();
        let mut emit = |p: bool, c: &[u8]| w.write(Stream::Stdout, p, c);
        split.feed(&[b'y'; MAX_LINE], &mut emit).expect("feed");
        split.finish(&mut emit).expect("finish");
        let mut next_run = LineSplitter::default();
        next_run.feed(b"started again\n", &mut emit).expect("feed");
        let got = collect(dir.path());
        assert_eq!((got[0].1, got[0].2.len()), (true, MAX_LINE));
        assert_eq!(got[1], (Stream::Stdout, false, String::new()));
        assert_eq!(got[2], (Stream::Stdout, false, "started again".into()));
        // Each run's last line is a line of its own.
        let (t, _) = read(dir.path(), Some(1)).expect("tail");
        assert_eq!(t.len(), 1);
        // A stream that ended on a newline, or before anything, adds nothing.
        let mut emitted = 0;
        let mut count = |_: bool, _: &[u8]| {
            emitted += 1;
            Ok(())
        };
        let mut split = LineSplitter::default();
        split.finish(&mut count).expect("finish");
        split.feed(&[b'y'; MAX_LINE], &mut count).expect("feed");
        split.feed(b"\n", &mut count).expect("feed");
        split.finish(&mut count).expect("finish");
        assert_eq!(emitted, 2);
    }

    #[test]
    fn rotation_keeps_the_newest_lines_within_bounds() {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = LogLimits {
            max_size: 1024,
            max_files: 3,
        };
        let mut w = LogWriter::open(dir.path(), limits).expect("open");
        for i in 0..200 {
            w.write(Stream::Stderr, false, format!("line {i:04}").as_bytes())
                .expect("write");
        }
        let got = collect(dir.path());
        let total: u64 = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum();
        assert!(total <= 3 * 1024, "{total} bytes kept");
        assert!(!dir.path().join("container.log.3").exists());
        assert_eq!(got.last().map(|e| e.2.as_str()), Some("line 0199"));
        // what is kept is contiguous and ordered
        let nums: Vec<u32> = got.iter().map(|e| e.2[5..].parse().expect("num")).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn follower_sees_appends_across_a_rotation() {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = LogLimits {
            max_size: 1024,
            max_files: 2,
        };
        let mut w = LogWriter::open(dir.path(), limits).expect("open");
        w.write(Stream::Stdout, false, b"first").expect("write");
        let (seen, mut f) = read(dir.path(), None).expect("read");
        assert_eq!(seen.len(), 1);
        let mut all = Vec::new();
        for i in 0..100 {
            w.write(Stream::Stdout, false, format!("n{i}").as_bytes())
                .expect("write");
            if i % 7 == 0 {
                all.extend(f.poll().expect("poll"));
            }
        }
        all.extend(f.poll().expect("poll"));
        let names: Vec<String> = all
            .iter()
            .map(|e| String::from_utf8_lossy(&e.content).into_owned())
            .collect();
        let want: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_line(b"nonsense").is_none());
        assert!(parse_line(b"t stdin F x").is_none());
        let e = parse_line(b"2026-01-01T00:00:00Z stderr F a b  c").expect("parse");
        assert_eq!(e.content, b"a b  c");
    }
}
