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
//!   secrets. The tmpfs goes with the shim and the container;
//! - config files ([`ConfigFile`], Docker Swarm's and Compose's `configs`: not secret, but
//!   given the same way, at each start) are written to a second tmpfs the shim mounts on
//!   `<container dir>/configs` in the same namespace, one file per config named by its index
//!   (`0`, `1`, …), remounted read-only, and each bind-mounted read-only at its own target
//!   path in the container (over the image's file there, if it has one; a missing parent
//!   directory is made in the container's writable layer, as for any mount point). The
//!   container's record keeps only the targets ([`super::ContainerConfig::configs`]).
//!
//! Neither [`std::fmt::Debug`] output nor any error message here holds a value: only names,
//! config targets and byte counts.
//!
//! A command run in the container later (`flotilla exec`, health checks: see
//! [`super::exec`]) joins its mount namespace and sees the files and configs, but not the
//! environment entries: its environment is the spec's.
//!
//! Like Docker's secrets, the tmpfs's pages and the process's memory may be swapped out on a
//! node that has swap.
//!
//! Wire format on the shim's standard input (integers little-endian `u32`), read to its end
//! and at most [`MAX_WIRE`] bytes:
//!
//! ```text
//! "flotilla-secrets 2\n"
//! env count,    then per entry:  name length, name, value length, value
//! file count,   then per file:   name length, name, uid, gid, mode, data length, data
//! config count, then per config: target length, target, uid, gid, mode, data length, data
//! ```
//!
//! The shim reads only this version (the launcher and the shim are always the same build);
//! each count is at most [`MAX_ENTRIES`], and what is read must then have no
//! [`SecretMaterial::problems`].

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

/// Longest config target, bytes (the kernel's `PATH_MAX` less its NUL).
pub const MAX_TARGET: usize = 4095;

/// The directory of a container's directory that the shim mounts the configs' tmpfs on.
pub const CONFIGS_DIR: &str = "configs";

/// Paths of the container no config may be at, under, or hold (each a directory the runtime
/// mounts something of its own on).
pub const RESERVED_TARGETS: [&str; 4] = ["/proc", "/sys", "/dev", SECRETS_TARGET];

/// The first bytes of the wire format (its version included).
const MAGIC: &[u8] = b"flotilla-secrets 2\n";

/// What every version of the wire format starts with.
const MAGIC_PREFIX: &[u8] = b"flotilla-secrets ";

/// What a container gets at each start from its secrets: held only in memory.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretMaterial {
    /// Entries added to the environment of the container's process (replacing any of the
    /// same name).
    pub env: Vec<SecretEnv>,
    /// Files in `/run/secrets`.
    pub files: Vec<SecretFile>,
    /// Config files, each at its own path.
    pub configs: Vec<ConfigFile>,
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

/// A config file (Swarm's and Compose's `configs`): not secret, but delivered the same way,
/// at each start, and mounted read-only at its own path.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Absolute path in the container: normalized (no `.` or `..` component, no `//`, no
    /// trailing `/`), not `/`, at most [`MAX_TARGET`] bytes with components of at most 255,
    /// no NUL, and neither at, under, nor above any of [`RESERVED_TARGETS`].
    pub target: String,
    /// Its content: at most [`MAX_VALUE`] bytes.
    pub data: Vec<u8>,
    /// Owner (a uid of the container; its user namespace is the node's).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits, at most `0o777`.
    pub mode: u32,
}

impl ConfigFile {
    /// A config with Docker Swarm's defaults: owned by root (0:0), mode `0444`.
    pub fn new(target: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            target: target.into(),
            data: data.into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        }
    }
}

impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("target", &self.target)
            .field("data_bytes", &self.data.len())
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
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
            .field("configs", &self.configs)
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

/// Whether the normalized absolute path `path` is `dir` or lies under it.
fn within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Why `target` cannot be a config's path in the container (`None`: it can).
fn target_problem(target: &str) -> Option<String> {
    let Some(rest) = target.strip_prefix('/') else {
        return Some("is not an absolute path".into());
    };
    if target.len() > MAX_TARGET {
        return Some(format!("is {} bytes, more than {MAX_TARGET}", target.len()));
    }
    if target.contains('\0') {
        return Some("contains a NUL byte".into());
    }
    if rest.is_empty() {
        return Some("is '/'".into());
    }
    for c in rest.split('/') {
        match c {
            "" => return Some("is not normalized (it has '//' or ends in '/')".into()),
            "." | ".." => return Some(format!("has a '{c}' component")),
            _ if c.len() > 255 => return Some("has a component of more than 255 bytes".into()),
            _ => {}
        }
    }
    for r in RESERVED_TARGETS {
        if within(target, r) {
            return Some(format!("is at or under {r}, which the runtime mounts"));
        }
        if within(r, target) {
            return Some(format!("would hold {r}, which the runtime mounts"));
        }
    }
    None
}

/// Checks a list of config targets, each named `label(i)` in messages (`config[3]`,
/// `configs[3]`): each valid ([`target_problem`]), none twice, none at or under another.
fn targets_problems<'a>(
    targets: impl IntoIterator<Item = &'a str>,
    label: impl Fn(usize) -> String,
) -> Vec<String> {
    let targets: Vec<&str> = targets.into_iter().collect();
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if let Some(why) = target_problem(t) {
            out.push(format!("{}: target '{}' {why}", label(i), shown(t)));
            continue;
        }
        for earlier in &targets[..i] {
            if earlier == t {
                out.push(format!("{}: '{}' is given twice", label(i), shown(t)));
            } else if within(t, earlier) || within(earlier, t) {
                out.push(format!(
                    "{}: '{}' and '{}' are one inside the other",
                    label(i),
                    shown(t),
                    shown(earlier)
                ));
            }
        }
    }
    out
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
        self.env.is_empty() && self.files.is_empty() && self.configs.is_empty()
    }

    /// Every config target, in order, each once.
    pub fn targets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self.configs.iter().map(|c| c.target.as_str()) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// Every secret name, environment entries' first, then files' (each once; config targets
    /// are in [`SecretMaterial::targets`]).
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

    /// Bytes of names, config targets and values together (what [`MAX_TOTAL`] bounds).
    pub fn size(&self) -> usize {
        let env: usize = self.env.iter().map(|e| e.name.len() + e.value.len()).sum();
        let files: usize = self.files.iter().map(|f| f.name.len() + f.data.len()).sum();
        let configs: usize = self
            .configs
            .iter()
            .map(|c| c.target.len() + c.data.len())
            .sum();
        env + files + configs
    }

    /// Everything wrong with it, each naming the entry (by name or config target, never by
    /// value); empty when it can be given to a container. Configs: see [`ConfigFile::target`]
    /// for their targets, which are also unique and never one inside another.
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
        out.extend(targets_problems(
            self.configs.iter().map(|c| c.target.as_str()),
            |i| format!("config[{i}]"),
        ));
        for c in &self.configs {
            if c.data.len() > MAX_VALUE {
                out.push(format!(
                    "config '{}': {} bytes, more than {MAX_VALUE}",
                    shown(&c.target),
                    c.data.len()
                ));
            }
            if c.mode > 0o777 {
                out.push(format!(
                    "config '{}': mode {:#o} is more than permission bits (at most 0o777)",
                    shown(&c.target),
                    c.mode
                ));
            }
        }
        let entries = self.env.len() + self.files.len() + self.configs.len();
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
        // Three counts; two lengths an environment entry; two lengths, owner, group and mode
        // a file or config.
        let mut out = Vec::with_capacity(
            MAGIC.len()
                + 12
                + self.size()
                + 8 * self.env.len()
                + 20 * (self.files.len() + self.configs.len()),
        );
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
        put_u32(&mut out, self.configs.len());
        for c in &self.configs {
            put(&mut out, c.target.as_bytes());
            out.extend_from_slice(&c.uid.to_le_bytes());
            out.extend_from_slice(&c.gid.to_le_bytes());
            out.extend_from_slice(&c.mode.to_le_bytes());
            put(&mut out, &c.data);
        }
        out
    }

    /// Reads the wire format from `bytes`, all of it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len()) != Some(MAGIC) {
            if let Some(rest) = bytes.strip_prefix(MAGIC_PREFIX) {
                let version: String = String::from_utf8_lossy(&rest[..rest.len().min(16)])
                    .chars()
                    .take_while(|c| *c != '\n')
                    .collect();
                return Err(WireError::Version(shown(&version)));
            }
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
        let config_count = r.count("the configs' count")?;
        let mut configs = Vec::with_capacity(config_count);
        for i in 0..config_count {
            let target = r.text(|| format!("config[{i}]'s target"))?;
            let what = || format!("config[{i}]'s owner and mode");
            let uid = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let gid = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let mode = r.u32().ok_or_else(|| WireError::Truncated(what()))?;
            let data = r.bytes(|| format!("config[{i}]'s data"))?.to_vec();
            configs.push(ConfigFile {
                target,
                data,
                uid,
                gid,
                mode,
            });
        }
        if !r.0.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(Self {
            env,
            files,
            configs,
        })
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
    /// It is in another version of the wire format (the one it names): the launcher is not
    /// the shim's build.
    #[error(
        "the secret material from the launcher is in version '{0}' of its wire format, and \
         this shim reads only version 2: the agent and flotilla-shim are not the same build"
    )]
    Version(String),
    /// It ends before the part named.
    #[error("the secret material from the launcher ends early, in {0}")]
    Truncated(String),
    /// A count above [`MAX_ENTRIES`].
    #[error("the secret material from the launcher is garbled: {0} is {1}")]
    Garbled(&'static str, u32),
    /// A name or value that is not UTF-8.
    #[error("the secret material from the launcher is garbled: {0} is not UTF-8")]
    NotText(String),
    /// Bytes after the last config.
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

/// The mount among `mounts` that a config at `target` (a path in the container) would clash
/// with: one at `target`, one it lies under, or one under it.
pub fn clashing_config_mount<'m>(
    target: &str,
    mounts: &'m [ResolvedMount],
) -> Option<&'m ResolvedMount> {
    let target = Path::new(target);
    mounts
        .iter()
        .find(|m| target.starts_with(&m.target) || m.target.starts_with(target))
}

/// One file written on a tmpfs of the shim's: its name there, what messages call it, its
/// content, owner and mode.
struct TmpfsFile<'a> {
    name: String,
    called: String,
    data: &'a [u8],
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Mounts a tmpfs on `<dir>/secrets` in the caller's mount namespace (the shim's own:
/// private, never seen by the host's), writes `files` there with their owners and modes,
/// makes it read-only, and returns the container's read-only bind mount of it at
/// [`SECRETS_TARGET`]. Nothing of a file reaches the disk: the directory on disk stays
/// empty.
pub(crate) fn mount_files(dir: &Path, files: &[SecretFile]) -> io::Result<ResolvedMount> {
    let written: Vec<TmpfsFile<'_>> = files
        .iter()
        .map(|f| TmpfsFile {
            name: f.name.clone(),
            called: format!("secret file '{}'", f.name),
            data: &f.data,
            uid: f.uid,
            gid: f.gid,
            mode: f.mode,
        })
        .collect();
    let source = mount_tmpfs(
        &dir.join(SECRETS_DIR),
        &written,
        "its secret files (they are never written to disk)",
    )?;
    Ok(ResolvedMount {
        kind: MountKind::Bind,
        source,
        target: PathBuf::from(SECRETS_TARGET),
        read_only: true,
        size: None,
    })
}

/// Mounts a tmpfs on `<dir>/configs` in the caller's mount namespace (as [`mount_files`]
/// does), writes each of `configs` there as a file named by its index (`0`, `1`, …) with its
/// owner and mode, makes it read-only, and returns the container's read-only bind mount of
/// each file at its target, in `configs`' order.
pub(crate) fn mount_configs(dir: &Path, configs: &[ConfigFile]) -> io::Result<Vec<ResolvedMount>> {
    let written: Vec<TmpfsFile<'_>> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| TmpfsFile {
            name: i.to_string(),
            called: format!("config '{}'", shown(&c.target)),
            data: &c.data,
            uid: c.uid,
            gid: c.gid,
            mode: c.mode,
        })
        .collect();
    let source = mount_tmpfs(&dir.join(CONFIGS_DIR), &written, "its configs")?;
    Ok(written
        .iter()
        .zip(configs)
        .map(|(w, c)| ResolvedMount {
            kind: MountKind::Bind,
            source: source.join(&w.name),
            target: PathBuf::from(&c.target),
            read_only: true,
            size: None,
        })
        .collect())
}

/// Mounts a tmpfs (nosuid, nodev, noexec, sized to `files`) on the directory `target`,
/// making it (root's, 0700) if it is missing, writes `files` there, remounts it read-only
/// and returns `target`; on an error nothing stays mounted. `what` says in messages what it
/// is for.
fn mount_tmpfs(target: &Path, files: &[TmpfsFile<'_>], what: &str) -> io::Result<PathBuf> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() && m.uid() == 0 => {}
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is not a directory of root's; move it away and the container starts",
                target.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(target)
            .map_err(at(target))?,
        Err(e) => return Err(at(target)(e)),
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
    rustix::mount::mount("tmpfs", target, "tmpfs", flags, options.as_c_str()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mounting a tmpfs for {what} at {}: {e}", target.display()),
        )
    })?;
    let written = write_files(target, files).and_then(|()| {
        rustix::mount::mount_remount(target, flags | MountFlags::RDONLY, "").map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("making {} read-only: {e}", target.display()),
            )
        })
    });
    if let Err(e) = written {
        let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
        return Err(e);
    }
    Ok(target.to_path_buf())
}

/// Writes each file into the (fresh, empty) directory `dir` with its owner and mode.
fn write_files(dir: &Path, files: &[TmpfsFile<'_>]) -> io::Result<()> {
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
                format!("writing {}: {e}", f.called),
            )
        };
        let fd = rustix::fs::openat(
            &root,
            f.name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(named)?;
        let mut left = f.data;
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

/// Checks the config targets a container gets ([`super::ContainerConfig::configs`]): each
/// valid for a [`ConfigFile::target`], none twice, none at or under another, at most
/// [`MAX_ENTRIES`] of them.
pub(crate) fn config_target_problems(targets: &[String]) -> Vec<String> {
    let mut out = targets_problems(targets.iter().map(String::as_str), |i| {
        format!("configs[{i}]")
    });
    if targets.len() > MAX_ENTRIES {
        out.push(format!(
            "configs: {} targets, more than {MAX_ENTRIES}",
            targets.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "hunter2-s3cr3t-value";
    const CONFIG: &str = "listen 8080 # the-config-content";

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
            configs: vec![ConfigFile {
                uid: 1000,
                gid: 1000,
                mode: 0o440,
                ..ConfigFile::new("/etc/app/app.conf", CONFIG)
            }],
        }
    }

    #[test]
    fn debug_output_names_but_never_shows_a_value() {
        let m = material();
        let text = format!(
            "{m:?} {:?} {:?} {:?} {m:#?}",
            m.env[0], m.files[0], m.configs[0]
        );
        assert!(!text.contains(VALUE), "{text}");
        assert!(!text.contains(CONFIG), "{text}");
        assert!(text.contains("/etc/app/app.conf"), "{text}");
        assert!(text.contains(&CONFIG.len().to_string()), "{text}");
        assert!(text.contains("0o440"), "{text}");
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
        assert_eq!(material().targets(), ["/etc/app/app.conf"]);
        assert_eq!(
            material().size(),
            "DB_PASSWORD".len()
                + "db_password".len()
                + 2 * VALUE.len()
                + "/etc/app/app.conf".len()
                + CONFIG.len()
        );
        let only_configs = SecretMaterial {
            configs: vec![ConfigFile::new("/x", "")],
            ..Default::default()
        };
        assert!(!only_configs.is_empty());
        let big = SecretMaterial {
            files: vec![SecretFile::new("a.b_c-1", vec![0xff; MAX_VALUE])],
            configs: vec![ConfigFile::new("/etc/big", vec![0xff; MAX_VALUE])],
            ..Default::default()
        };
        assert!(big.problems().is_empty());
    }

    #[test]
    fn config_targets_are_normalized_absolute_paths_clear_of_the_runtimes() {
        let long_component = format!("/etc/{}", "c".repeat(256));
        let longest = format!("/{}", "d/".repeat(MAX_TARGET / 2 - 1) + "dd");
        assert_eq!(longest.len(), MAX_TARGET);
        let too_long = format!("{longest}d");
        for good in [
            "/etc/app/app.conf",
            "/etc/hostname",
            "/data/keep",
            "/run/secretsx",
            "/run/secrets.d/x",
            "/run/app.conf",
            "/procfs",
            "/devices/x",
            "/system.conf",
            "/x",
            longest.as_str(),
        ] {
            let m = SecretMaterial {
                configs: vec![ConfigFile::new(good, CONFIG)],
                ..Default::default()
            };
            assert_eq!(m.problems(), Vec::<String>::new(), "{good}");
        }
        for (bad, says) in [
            ("", "is not an absolute path"),
            ("etc/app.conf", "is not an absolute path"),
            ("/", "is '/'"),
            ("/etc//app.conf", "is not normalized"),
            ("/etc/app.conf/", "is not normalized"),
            ("/etc/./app.conf", "has a '.' component"),
            ("/etc/../app.conf", "has a '..' component"),
            ("/..", "has a '..' component"),
            ("/etc/a\0b", "contains a NUL byte"),
            (
                long_component.as_str(),
                "has a component of more than 255 bytes",
            ),
            (too_long.as_str(), "is 4096 bytes, more than 4095"),
            ("/proc", "is at or under /proc"),
            ("/proc/self/x", "is at or under /proc"),
            ("/sys/kernel/x", "is at or under /sys"),
            ("/dev/null", "is at or under /dev"),
            ("/run/secrets", "is at or under /run/secrets"),
            ("/run/secrets/db_password", "is at or under /run/secrets"),
            ("/run", "would hold /run/secrets"),
        ] {
            let m = SecretMaterial {
                configs: vec![ConfigFile::new(bad, CONFIG)],
                ..Default::default()
            };
            let p = m.problems();
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert!(
                p[0].starts_with("config[0]: target '") && p[0].contains(says),
                "{bad:?}: {p:?}"
            );
        }
        let set = SecretMaterial {
            configs: vec![
                ConfigFile::new("/etc/app", CONFIG),
                ConfigFile::new("/etc/app/app.conf", CONFIG),
                ConfigFile::new("/etc/b.conf", CONFIG),
                ConfigFile::new("/etc/b.conf", CONFIG),
                ConfigFile::new("/etc/ok", vec![1; MAX_VALUE + 1]),
                ConfigFile {
                    mode: 0o4755,
                    ..ConfigFile::new("/etc/setuid", CONFIG)
                },
            ],
            ..Default::default()
        };
        let p = set.problems();
        let all = p.join(
            "
",
        );
        for says in [
            "config[1]: '/etc/app/app.conf' and '/etc/app' are one inside the other",
            "config[3]: '/etc/b.conf' is given twice",
            "config '/etc/ok': 65537 bytes, more than 65536",
            "config '/etc/setuid': mode 0o4755",
        ] {
            assert!(
                all.contains(says),
                "{says} missing in:
{all}"
            );
        }
        assert_eq!(p.len(), 4, "{all}");
        assert!(!all.contains(CONFIG), "{all}");
        assert_eq!(set.targets().len(), 5);
    }

    #[test]
    fn configs_count_in_the_bounds_of_the_whole() {
        let count = SecretMaterial {
            env: (0..MAX_ENTRIES / 2)
                .map(|i| SecretEnv {
                    name: format!("E{i}"),
                    value: String::new(),
                })
                .collect(),
            configs: (0..=MAX_ENTRIES / 2)
                .map(|i| ConfigFile::new(format!("/etc/c{i}"), ""))
                .collect(),
            ..Default::default()
        };
        assert_eq!(count.problems(), ["secrets: 1025 entries, more than 1024"]);
        let size = SecretMaterial {
            files: (0..8)
                .map(|i| SecretFile::new(format!("f{i}"), vec![7; MAX_VALUE]))
                .collect(),
            configs: (0..8)
                .map(|i| ConfigFile::new(format!("/c{i}"), vec![7; MAX_VALUE]))
                .collect(),
            ..Default::default()
        };
        // 16 full values and their names and targets: just over the bound.
        let p = size.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("bytes in all, more than 1048576"), "{p:?}");
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
            configs: Vec::new(),
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
        // Whatever the mix, the encoding adds at most 20 bytes an entry (a file's or a
        // config's two lengths, owner, group and mode) and 12 of counts to MAX_TOTAL.
        assert!(MAGIC.len() + 12 + MAX_TOTAL + 20 * MAX_ENTRIES < MAX_WIRE);
        let value = "v".repeat(MAX_TOTAL / MAX_ENTRIES - 12);
        let (env, files) = (MAX_ENTRIES / 3, MAX_ENTRIES / 3);
        let most = SecretMaterial {
            env: (0..env)
                .map(|i| SecretEnv {
                    name: format!("E{i:06}"),
                    value: value.clone(),
                })
                .collect(),
            files: (0..files)
                .map(|i| SecretFile::new(format!("f{i:06}"), value.clone()))
                .collect(),
            configs: (0..MAX_ENTRIES - env - files)
                .map(|i| ConfigFile {
                    uid: u32::MAX,
                    gid: 7,
                    mode: 0o777,
                    ..ConfigFile::new(format!("/etc/c{i:06}"), value.clone())
                })
                .collect(),
        };
        assert!(most.problems().is_empty(), "{:?}", most.problems());
        assert_eq!(
            most.env.len() + most.files.len() + most.configs.len(),
            MAX_ENTRIES
        );
        assert!(most.size() > MAX_TOTAL - 16 * 1024, "{}", most.size());
        let wire = most.encode();
        assert!(wire.len() < MAX_WIRE, "{}", wire.len());
        assert_eq!(read_material(&wire[..]).expect("most"), most);
        // The largest single config, binary, round trips too.
        let one = SecretMaterial {
            configs: vec![ConfigFile::new(
                "/etc/blob",
                (0..MAX_VALUE).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
            )],
            ..Default::default()
        };
        assert!(one.problems().is_empty());
        assert_eq!(read_material(&one.encode()[..]).expect("one"), one);
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
        // The configs' part: cut in it, and a target that is not UTF-8.
        let configs_at = wire.len() - (4 + 4 + "/etc/app/app.conf".len() + 12 + 4 + CONFIG.len());
        for cut in [
            configs_at - 1,
            configs_at + 2,
            configs_at + 10,
            wire.len() - 3,
        ] {
            let e = says(&wire[..cut]);
            assert!(e.contains("ends early"), "{cut}: {e}");
        }
        assert!(says(&wire[..configs_at + 10]).contains("config[0]'s target"));
        assert!(says(&wire[..wire.len() - 3]).contains("config[0]'s data"));
        let mut bad_target = wire[..configs_at + 4].to_vec();
        bad_target.extend_from_slice(&1u32.to_le_bytes());
        bad_target.push(0xfe);
        assert!(
            says(&bad_target).contains("config[0]'s target is not UTF-8"),
            "{}",
            says(&bad_target)
        );
        let mut many_configs = wire[..configs_at].to_vec();
        many_configs.extend_from_slice(&(MAX_ENTRIES as u32 + 1).to_le_bytes());
        assert!(says(&many_configs).contains("garbled: the configs' count is 1025"));
        // The version before configs, or any other, is named.
        let mut v1 = b"flotilla-secrets 1\n".to_vec();
        v1.extend_from_slice(&wire[MAGIC.len()..]);
        let e = says(&v1);
        assert!(e.contains("version '1'") && e.contains("same build"), "{e}");
        assert!(says(b"flotilla-secrets 10\n").contains("version '10'"));
        let too_much = vec![b'x'; MAX_WIRE + 1];
        assert!(says(&too_much).contains("more than 2097152 bytes"));
        // Nothing of a value, nor of a config's content, in any message.
        for cut in 0..wire.len() {
            let e = says(&wire[..cut]);
            assert!(!e.contains(VALUE) && !e.contains(CONFIG), "{e}");
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

    #[test]
    fn a_mount_at_under_or_above_a_config_clashes() {
        let at = |t: &str| ResolvedMount {
            kind: MountKind::Bind,
            source: PathBuf::from("/srv"),
            target: PathBuf::from(t),
            read_only: false,
            size: None,
        };
        let mounts = [at("/data"), at("/etc/app.d"), at("/var/lib/x")];
        for clear in [
            "/etc/app.conf",
            "/etc/app",
            "/datax",
            "/var/lib/y",
            "/var/x",
        ] {
            assert!(clashing_config_mount(clear, &mounts).is_none(), "{clear}");
        }
        for (clash, with) in [
            ("/data", "/data"),
            ("/data/keep", "/data"),
            ("/etc/app.d/a/b.conf", "/etc/app.d"),
            ("/var/lib", "/var/lib/x"),
            ("/var", "/var/lib/x"),
        ] {
            let m = clashing_config_mount(clash, &mounts).expect(clash);
            assert_eq!(m.target, Path::new(with), "{clash}");
        }
    }

    #[test]
    fn container_side_config_targets_are_checked() {
        let ok: Vec<String> = vec!["/etc/app/app.conf".into(), "/etc/app/b.conf".into()];
        assert!(config_target_problems(&ok).is_empty());
        let bad: Vec<String> = vec![
            "etc/x".into(),
            "/proc/x".into(),
            "/a".into(),
            "/a/b".into(),
            "/c".into(),
            "/c".into(),
        ];
        let p = config_target_problems(&bad);
        let all = p.join("\n");
        for says in [
            "configs[0]: target 'etc/x' is not an absolute path",
            "configs[1]: target '/proc/x' is at or under /proc",
            "configs[3]: '/a/b' and '/a' are one inside the other",
            "configs[5]: '/c' is given twice",
        ] {
            assert!(all.contains(says), "{says} missing in:\n{all}");
        }
        assert_eq!(p.len(), 4, "{all}");
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("/c{i}")).collect();
        assert_eq!(
            config_target_problems(&many),
            ["configs: 1025 targets, more than 1024"]
        );
    }
}
