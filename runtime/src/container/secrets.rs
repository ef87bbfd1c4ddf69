//! Secret material a container gets at each start, held only in memory.
//!
//! Whoever starts a container (the node agent, from its task definition's `secrets`) hands
//! the store a [`SecretMaterial`] at every start — the first one, each restart and each
//! resume after a reboot ([`super::ContainerStore::start_with`], `restart_with`,
//! `resume_with`). Its values never touch the disk:
//!
//! - the launcher passes them to the shim over the shim's standard input (a pipe, in the wire
//!   format below), never on its command line, and the container's record keeps only their
//!   names ([`super::ContainerConfig::secrets`]);
//! - environment entries ([`SecretEnv`]) go to the container's process through the executor
//!   ([`super::workload::Workload`]), which adds them to the environment libcontainer made
//!   from the spec, so they are in the process's environment but not in the spec
//!   (`config.json`);
//! - files ([`SecretFile`]) are written to a tmpfs the shim mounts on `<container dir>/secrets`
//!   in its own private mount namespace (see [`super::isolate`]; the host's mount table never
//!   holds it, and on the host that directory stays empty), remounted read-only, and
//!   bind-mounted read-only at [`SECRETS_TARGET`] in the container, as Docker Swarm gives
//!   secrets. The tmpfs goes with the shim and the container.
//!
//! Neither [`std::fmt::Debug`] output nor any error message here holds a value: only names
//! and byte counts.
//!
//! A command run in the container later (`flotilla exec`, health checks: see
//! [`super::exec`]) joins its mount namespace and sees the files, but not the environment
//! entries: its environment is the spec's.
//!
//! Like Docker's secrets, the tmpfs's pages and the process's memory may be swapped out on a
//! node that has swap.
//!
//! Wire format on the shim's standard input (integers little-endian `u32`), read to its end
//! and at most [`MAX_WIRE`] bytes:
//!
//! ```text
//! "flotilla-secrets 1\n"
//! env count,  then per entry: name length, name, value length, value
//! file count, then per file:  name length, name, uid, gid, mode, data length, data
//! ```

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use super::spec::{MountKind, ResolvedMount};

/// Largest value of one environment entry or one file, bytes (AWS Secrets Manager's limit of
/// a secret value).
pub const MAX_VALUE: usize = 64 * 1024;

/// Largest material in all, bytes of names and values together.
pub const MAX_TOTAL: usize = 1024 * 1024;

/// Most entries (environment entries and files together) one start may get.
pub const MAX_ENTRIES: usize = 1024;

/// Longest file name, bytes.
pub const MAX_FILE_NAME: usize = 255;

/// Largest encoded material the shim reads (the most valid material encodes to less).
pub const MAX_WIRE: usize = 2 * 1024 * 1024;

/// Where the files are in the container.
pub const SECRETS_TARGET: &str = "/run/secrets";

/// The directory of a container's directory that the shim mounts the files' tmpfs on.
pub const SECRETS_DIR: &str = "secrets";

/// The first bytes of the wire format (its version included).
const MAGIC: &[u8] = b"flotilla-secrets 1\n";

/// What a container gets at each start from its secrets: held only in memory.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretMaterial {
    /// Entries added to the environment of the container's process (replacing any of the
    /// same name).
    pub env: Vec<SecretEnv>,
    /// Files in `/run/secrets`.
    pub files: Vec<SecretFile>,
}

/// One environment entry of a container's process.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretEnv {
    /// Variable name: not empty, no `=` or NUL.
    pub name: String,
    /// Its value: no NUL, at most [`MAX_VALUE`] bytes.
    pub value: String,
}

/// One file in the container's `/run/secrets`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// File name: `[A-Za-z0-9._-]`, 1 to [`MAX_FILE_NAME`] bytes, not `.` or `..`.
    pub name: String,
    /// Its content: at most [`MAX_VALUE`] bytes.
    pub data: Vec<u8>,
    /// Owner (a uid of the container; its user namespace is the node's).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits, at most `0o777`.
    pub mode: u32,
}

impl SecretFile {
    /// A file with Docker Swarm's defaults: owned by root (0:0), mode `0444`.
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            data: data.into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        }
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretEnv")
            .field("name", &self.name)
            .field("value_bytes", &self.value.len())
            .finish()
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFile")
            .field("name", &self.name)
            .field("data_bytes", &self.data.len())
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

impl fmt::Debug for SecretMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretMaterial")
            .field("env", &self.env)
            .field("files", &self.files)
            .finish()
    }
}

/// Why a name cannot name an environment variable (`None`: it can).
fn env_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') {
        Some("contains '='")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

/// Whether `name` can name a file in `/run/secrets`.
fn file_name_ok(name: &str) -> bool {
    (1..=MAX_FILE_NAME).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A name for a message: printable, at most 64 characters (a name is never a value, but it
/// may be long or hold control characters).
fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

impl SecretMaterial {
    /// True when there is nothing to give.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.files.is_empty()
    }

    /// Every name, environment entries' first, then files' (each once).
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for n in self
            .env
            .iter()
            .map(|e| e.name.as_str())
            .chain(self.files.iter().map(|f| f.name.as_str()))
        {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Bytes of names and values together (what [`MAX_TOTAL`] bounds).
    pub fn size(&self) -> usize {
        let env: usize = self.env.iter().map(|e| e.name.len() + e.value.len()).sum();
        let files: usize = self.files.iter().map(|f| f.name.len() + f.data.len()).sum();
        env + files
    }

    /// Everything wrong with it, each naming the entry (by name, never by value); empty when
    /// it can be given to a container.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.env.iter().enumerate() {
            if let Some(why) = env_name_problem(&e.name) {
                out.push(format!("secret env[{i}]: name '{}' {why}", shown(&e.name)));
            }
            if e.value.contains('\0') {
                out.push(format!(
                    "secret env '{}': its value contains a NUL byte",
                    shown(&e.name)
                ));
            }
            if e.value.len() > MAX_VALUE {
                out.push(format!(
                    "secret env '{}': its value is {} bytes, more than {MAX_VALUE}",
                    shown(&e.name),
                    e.value.len()
                ));
            }
            if self.env[..i].iter().any(|o| o.name == e.name) {
                out.push(format!("secret env '{}': given twice", shown(&e.name)));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if !file_name_ok(&f.name) {
                out.push(format!(
                    "secret file[{i}]: '{}' cannot name a file in {SECRETS_TARGET}: use \
                     letters, digits, '.', '_', '-', 1 to {MAX_FILE_NAME} of them, not '.' or '..'",
                    shown(&f.name)
                ));
            }
            if f.data.len() > MAX_VALUE {
                out.push(format!(
                    "secret file '{}': {} bytes, more than {MAX_VALUE}",
                    shown(&f.name),
                    f.data.len()
                ));
            }
            if f.mode > 0o777 {
                out.push(format!(
                    "secret file '{}': mode {:#o} is more than permission bits (at most 0o777)",
                    shown(&f.name),
                    f.mode
                ));
            }
            if self.files[..i].iter().any(|o| o.name == f.name) {
                out.push(format!("secret file '{}': given twice", shown(&f.name)));
            }
        }
        let entries = self.env.len() + self.files.len();
        if entries > MAX_ENTRIES {
            out.push(format!(
                "secrets: {entries} entries, more than {MAX_ENTRIES}"
            ));
        }
        let size = self.size();
        if size > MAX_TOTAL {
            out.push(format!(
                "secrets: {size} bytes in all, more than {MAX_TOTAL}"
            ));
        }
        out
    }

    /// The wire format (see the module's documentation).
    pub(crate) fn encode(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, bytes: &[u8]) {
            put_u32(out, bytes.len());
            out.extend_from_slice(bytes);
        }
        fn put_u32(out: &mut Vec<u8>, n: usize) {
            // Lengths are bounded by `problems` long before u32 (a caller's own business if
            // not: the shim then refuses what it reads).
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + self.size() + 24 * self.files.len());
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, self.env.len());
        for e in &self.env {
            put(&mut out, e.name.as_bytes());
            put(&mut out, e.value.as_bytes());
        }
        put_u32(&mut out, self.files.len());
        for f in &self.files {
            put(&mut out, f.name.as_bytes());
            out.extend_from_slice(&f.uid.to_le_bytes());
            out.extend_from_slice(&f.gid.to_le_bytes());
            out.extend_from_slice(&f.mode.to_le_bytes());
            put(&mut out, &f.data);
        }
        out
    }

    /// Reads the wire format from `bytes`, all of it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len()) != Some(MAGIC) {
            return Err(WireError::NotMaterial);
        }
        let env_count = r.count("the environment entries' count")?;
        let mut env = Vec::with_capacity(env_count);
        for i in 0..env_count {
            let name = r.text(|| format!("env[{i}]'s name"))?;
            let value = r.text(|| format!("env[{i}]'s value"))?;
            env.push(SecretEnv { name, value });
        }
        let file_count = r.count("the files' count")?;
        let mut files = Vec::with_capacity(file_count);
        for i in 0..file_count {
            let name = r.text(|| format!("file[{i}]'s name"))?;
            let what = || format!("file[{i}]'s owner and mode");
            let uid = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let gid = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let mode = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let data = r.bytes(|| format!("file[{i}]'s data"))?.to_vec();
            files.push(SecretFile {
                name,
                data,
                uid,
                gid,
                mode,
            });
        }
        if !r.0.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(Self { env, files })
    }
}

/// Why the shim could not read the material its launcher sent.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading standard input failed.
    #[error("reading the secret material from the launcher: {0}")]
    Read(#[source] io::Error),
    /// More than [`MAX_WIRE`] bytes came.
    #[error("the secret material from the launcher is more than {MAX_WIRE} bytes")]
    TooLarge,
    /// It does not start as the wire format does (nothing came, or something else).
    #[error(
        "no secret material from the launcher on standard input (the shim is launched by \
         nodeagent)"
    )]
    NotMaterial,
    /// It ends before the part named.
    #[error("the secret material from the launcher ends early, in {0}")]
    Truncated(String),
    /// A count above [`MAX_ENTRIES`].
    #[error("the secret material from the launcher is garbled: {0} is {1}")]
    Garbled(&'static str, u32),
    /// A name or value that is not UTF-8.
    #[error("the secret material from the launcher is garbled: {0} is not UTF-8")]
    NotText(String),
    /// Bytes after the last file.
    #[error("the secret material from the launcher has {0} bytes after its end")]
    Trailing(usize),
}

/// A cursor over the wire bytes; every length is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, WireError> {
        let n = self
            .u32()
            .ok_or_else(|| WireError::Truncated(what.to_string()))?;
        match usize::try_from(n) {
            Ok(n) if n <= MAX_ENTRIES => Ok(n),
            _ => Err(WireError::Garbled(what, n)),
        }
    }

    fn bytes(&mut self, what: impl Fn() -> String) -> Result<&'a [u8], WireError> {
        let n = self.u32().ok_or_else(|| WireError::Truncated(what()))?;
        usize::try_from(n)
            .ok()
            .and_then(|n| self.take(n))
            .ok_or_else(|| WireError::Truncated(what()))
    }

    fn text(&mut self, what: impl Fn() -> String) -> Result<String, WireError> {
        let b = self.bytes(&what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::NotText(what()))
    }
}

/// Reads the material from `input` to its end (the launcher closes it), at most [`MAX_WIRE`]
/// bytes.
pub(crate) fn read_material(input: impl Read) -> Result<SecretMaterial, WireError> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_WIRE).unwrap_or(u64::MAX) + 1;
    input
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(WireError::Read)?;
    if bytes.len() > MAX_WIRE {
        return Err(WireError::TooLarge);
    }
    SecretMaterial::decode(&bytes)
}

/// The mount among `mounts` at [`SECRETS_TARGET`] or inside it, which the secret files'
/// mount would clash with.
pub fn clashing_mount(mounts: &[ResolvedMount]) -> Option<&ResolvedMount> {
    mounts.iter().find(|m| m.target.starts_with(SECRETS_TARGET))
}

/// Mounts a tmpfs on `<dir>/secrets` in the caller's mount namespace (the shim's own:
/// private, never seen by the host's), writes `files` there with their owners and modes,
/// makes it read-only, and returns the container's read-only bind mount of it at
/// [`SECRETS_TARGET`]. Nothing of a file reaches the disk: the directory on disk stays
/// empty.
pub(crate) fn mount_files(dir: &Path, files: &[SecretFile]) -> io::Result<ResolvedMount> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let target = dir.join(SECRETS_DIR);
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() && m.uid() == 0 => {}
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is not a directory of root's; move it away and the container starts",
                target.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&target)
            .map_err(at(&target))?,
        Err(e) => return Err(at(&target)(e)),
    }
    let page = rustix::param::page_size();
    // Room for the files and a page of slack (0 would mean no bound at all).
    let pages: usize = files
        .iter()
        .map(|f| f.data.len().div_ceil(page))
        .sum::<usize>()
        + 1;
    let options = std::ffi::CString::new(format!(
        "mode=0755,size={},nr_inodes={}",
        pages.saturating_mul(page),
        files.len() + 8
    ))
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount("tmpfs", &target, "tmpfs", flags, options.as_c_str()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "mounting a tmpfs for its secret files at {} (they are never written to \
                 disk): {e}",
                target.display()
            ),
        )
    })?;
    let written = write_files(&target, files).and_then(|()| {
        rustix::mount::mount_remount(&target, flags | MountFlags::RDONLY, "").map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("making {} read-only: {e}", target.display()),
            )
        })
    });
    if let Err(e) = written {
        let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
        return Err(e);
    }
    Ok(ResolvedMount {
        kind: MountKind::Bind,
        source: target,
        target: PathBuf::from(SECRETS_TARGET),
        read_only: true,
        size: None,
    })
}

/// Writes each file into the (fresh, empty) directory `dir` with its owner and mode.
fn write_files(dir: &Path, files: &[SecretFile]) -> io::Result<()> {
    let root = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", dir.display())))?;
    for f in files {
        let named = |e: rustix::io::Errno| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("writing secret file '{}': {e}", f.name),
            )
        };
        let fd = rustix::fs::openat(
            &root,
            f.name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(named)?;
        let mut left = f.data.as_slice();
        while !left.is_empty() {
            match rustix::io::write(&fd, left) {
                Ok(0) => return Err(named(rustix::io::Errno::NOSPC)),
                Ok(n) => left = &left[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(named(e)),
            }
        }
        rustix::fs::fchown(
            fd.as_fd(),
            Some(rustix::fs::Uid::from_raw(f.uid)),
            Some(rustix::fs::Gid::from_raw(f.gid)),
        )
        .map_err(named)?;
        // After the owner: a change of owner clears set-id bits (there are none, but the
        // mode is then exactly the one asked for).
        rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(f.mode)).map_err(named)?;
    }
    Ok(())
}

/// Checks the container-side names of secrets ([`super::ContainerConfig::secrets`]): each
/// can name an environment variable (a file name always can), once.
pub(crate) fn name_problems(names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(why) = env_name_problem(n) {
            out.push(format!("secrets[{i}]: name '{}' {why}", shown(n)));
        }
        if names[..i].contains(n) {
            out.push(format!("secrets[{i}]: '{}' is named twice", shown(n)));
        }
    }
    if names.len() > MAX_ENTRIES {
        out.push(format!(
            "secrets: {} names, more than {MAX_ENTRIES}",
            names.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "hunter2-s3cr3t-value";

    fn material() -> SecretMaterial {
        SecretMaterial {
            env: vec![SecretEnv {
                name: "DB_PASSWORD".into(),
                value: VALUE.into(),
            }],
            files: vec![SecretFile {
                uid: 1000,
                gid: 1000,
                mode: 0o400,
                ..SecretFile::new("db_password", VALUE)
            }],
        }
    }

    #[test]
    fn debug_output_names_but_never_shows_a_value() {
        let m = material();
        let text = format!("{m:?} {:?} {:?} {m:#?}", m.env[0], m.files[0]);
        assert!(!text.contains(VALUE), "{text}");
        assert!(
            text.contains("DB_PASSWORD") && text.contains("db_password"),
            "{text}"
        );
        assert!(text.contains(&VALUE.len().to_string()), "{text}");
        assert!(text.contains("0o400"), "{text}");
    }

    #[test]
    fn good_material_has_no_problems() {
        assert!(material().problems().is_empty());
        assert!(SecretMaterial::default().is_empty());
        assert!(SecretMaterial::default().problems().is_empty());
        assert!(!material().is_empty());
        assert_eq!(material().names(), ["DB_PASSWORD", "db_password"]);
        let big = SecretMaterial {
            files: vec![SecretFile::new("a.b_c-1", vec![0xff; MAX_VALUE])],
            ..Default::default()
        };
        assert!(big.problems().is_empty());
    }

    #[test]
    fn every_problem_is_named_and_no_value_is_shown() {
        let bad = SecretMaterial {
            env: vec![
                SecretEnv {
                    name: "".into(),
                    value: VALUE.into(),
                },
                SecretEnv {
                    name: "A=B".into(),
                    value: VALUE.into(),
                },
                SecretEnv {
                    name: "NUL\0".into(),
                    value: VALUE.into(),
                },
                SecretEnv {
                    name: "V".into(),
                    value: format!("{VALUE}\0"),
                },
                SecretEnv {
                    name: "LONG".into(),
                    value: VALUE.repeat(MAX_VALUE / VALUE.len() + 1),
                },
                SecretEnv {
                    name: "V".into(),
                    value: VALUE.into(),
                },
            ],
            files: vec![
                SecretFile::new("../etc/passwd", VALUE),
                SecretFile::new(".", VALUE),
                SecretFile::new("..", VALUE),
                SecretFile::new("", VALUE),
                SecretFile::new("a b", VALUE),
                SecretFile::new("x".repeat(256), VALUE),
                SecretFile {
                    mode: 0o4755,
                    ..SecretFile::new("setuid", VALUE)
                },
                SecretFile::new("big", vec![1; MAX_VALUE + 1]),
                SecretFile::new("twice", VALUE),
                SecretFile::new("twice", VALUE),
            ],
        };
        let problems = bad.problems();
        let all = problems.join("\n");
        assert!(!all.contains(VALUE), "{all}");
        for says in [
            "secret env[0]: name '' is empty",
            "secret env[1]: name 'A=B' contains '='",
            "secret env[2]: name 'NUL\\0' contains a NUL byte",
            "secret env 'V': its value contains a NUL byte",
            "secret env 'LONG': its value is",
            "secret env 'V': given twice",
            "secret file[0]: '../etc/passwd' cannot name a file",
            "secret file[1]: '.' cannot",
            "secret file[2]: '..' cannot",
            "secret file[3]: '' cannot",
            "secret file[4]: 'a b' cannot",
            "secret file[5]: 'xxxx",
            "secret file 'setuid': mode 0o4755",
            "secret file 'big': 65537 bytes, more than 65536",
            "secret file 'twice': given twice",
        ] {
            assert!(all.contains(says), "{says} missing in:\n{all}");
        }
        assert_eq!(problems.len(), 15, "{all}");
    }

    #[test]
    fn the_whole_and_the_count_are_bounded() {
        let many = SecretMaterial {
            files: (0..17)
                .map(|i| SecretFile::new(format!("f{i}"), vec![7; MAX_VALUE]))
                .collect(),
            ..Default::default()
        };
        let p = many.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("bytes in all, more than 1048576"), "{p:?}");
        let count = SecretMaterial {
            env: (0..=MAX_ENTRIES)
                .map(|i| SecretEnv {
                    name: format!("E{i}"),
                    value: String::new(),
                })
                .collect(),
            ..Default::default()
        };
        let p = count.problems();
        assert_eq!(p, ["secrets: 1025 entries, more than 1024"]);
    }

    #[test]
    fn the_wire_format_round_trips_and_the_most_fits_the_shims_bound() {
        let m = material();
        assert_eq!(SecretMaterial::decode(&m.encode()).expect("decode"), m);
        let empty = SecretMaterial::default();
        assert_eq!(read_material(&empty.encode()[..]).expect("empty"), empty);
        // The largest valid material, in the most entries: well under the shim's bound.
        let value = "v".repeat(MAX_TOTAL / MAX_ENTRIES - 8);
        let most = SecretMaterial {
            env: (0..MAX_ENTRIES / 2)
                .map(|i| SecretEnv {
                    name: format!("E{i:06}"),
                    value: value.clone(),
                })
                .collect(),
            files: (0..MAX_ENTRIES / 2)
                .map(|i| SecretFile::new(format!("f{i:06}"), value.clone()))
                .collect(),
        };
        assert!(most.problems().is_empty(), "{:?}", most.problems());
        let wire = most.encode();
        assert!(wire.len() < MAX_WIRE, "{}", wire.len());
        assert_eq!(read_material(&wire[..]).expect("most"), most);
    }

    #[test]
    fn garbage_on_the_wire_is_refused_clearly() {
        let wire = material().encode();
        let says = |bytes: &[u8]| read_material(bytes).expect_err("refused").to_string();
        assert!(says(b"").contains("no secret material"));
        assert!(says(b"hello world, this is not it").contains("no secret material"));
        for cut in [MAGIC.len(), MAGIC.len() + 6, wire.len() - 1] {
            let e = says(&wire[..cut]);
            assert!(e.contains("ends early"), "{cut}: {e}");
        }
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(says(&trailing).contains("1 bytes after its end"));
        let mut huge_count = MAGIC.to_vec();
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(says(&huge_count).contains("garbled"));
        // A length past the end is refused before anything that large is made.
        let mut huge_len = MAGIC.to_vec();
        huge_len.extend_from_slice(&1u32.to_le_bytes());
        huge_len.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(says(&huge_len).contains("ends early, in env[0]'s name"));
        let mut not_text = MAGIC.to_vec();
        not_text.extend_from_slice(&1u32.to_le_bytes());
        not_text.extend_from_slice(&1u32.to_le_bytes());
        not_text.push(0xff);
        assert!(says(&not_text).contains("env[0]'s name is not UTF-8"));
        let too_much = vec![b'x'; MAX_WIRE + 1];
        assert!(says(&too_much).contains("more than 2097152 bytes"));
        // Nothing of a value in any message.
        for cut in 0..wire.len() {
            assert!(!says(&wire[..cut]).contains(VALUE));
        }
    }

    #[test]
    fn container_side_names_are_checked() {
        let ok: Vec<String> = vec!["DB_PASSWORD".into(), "db_password".into()];
        assert!(name_problems(&ok).is_empty());
        let bad: Vec<String> = vec!["".into(), "A=B".into(), "x".into(), "x".into()];
        let p = name_problems(&bad).join("\n");
        for says in ["secrets[0]", "secrets[1]", "secrets[3]: 'x' is named twice"] {
            assert!(p.contains(says), "{says} missing in:\n{p}");
        }
    }

    #[test]
    fn a_mount_at_or_inside_run_secrets_clashes() {
        let at = |t: &str| ResolvedMount {
            kind: MountKind::Tmpfs,
            source: PathBuf::from("tmpfs"),
            target: PathBuf::from(t),
            read_only: false,
            size: None,
        };
        assert!(clashing_mount(&[at("/run"), at("/run/secretsx"), at("/data")]).is_none());
        assert!(clashing_mount(&[at("/run/secrets")]).is_some());
        assert!(clashing_mount(&[at("/run/secrets/x")]).is_some());
    }
}
