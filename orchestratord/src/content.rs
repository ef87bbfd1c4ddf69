//! The control plane's content store: the blobs of the images pushed to it, by digest, under
//! `<data-dir>/images/blobs/sha256/<hex>` (files 0600, directories 0700), each shared by every
//! image that has it. Which names it holds, and the blobs of each, are records of the core
//! (`cluster/images.rs`); this module only writes and removes content.
//!
//! - A push streams the request body into a temporary file under `images/tmp/` (never the
//!   whole archive in memory; at most [`MAX_PUSH_BYTES`]), reads it as an OCI layout with
//!   `flotilla_oci::layout` (entries staged by number, paths and links leaving the archive
//!   refused, at most [`MAX_STAGED_BYTES`] and [`MAX_ENTRIES`]), and copies each blob into the
//!   store through a temporary file that is renamed into place only when its content hashed to
//!   its digest and has its descriptor's size (OCI image-spec, `descriptor.md`: content is
//!   verified against both). Only then does the core record the names.
//! - A node fetches a blob over its own session (`AgentRequest::Blob`, [`ContentStore::serve_blob`])
//!   — only one of an image it may have, which the core checks first (`Agent::Blob`) —
//!   from any byte offset, so a cut transfer resumes from what it has; the bytes are paced by
//!   `image_rate_limit`, per node across all its transfers ([`Pacer`]).
//! - Content and references are kept in step by [`ContentStore::gate`]: a push holds it shared
//!   from its first blob (after its upload) until its names are committed, a removal
//!   exclusively from its commit until the blobs no image references are deleted — so a
//!   removal never deletes a blob a push is about to reference. Blobs a failed push stored, an
//!   image replaced by a push left, or a crash left without a reference are removed after the
//!   push and when the control plane starts ([`ContentStore::sweep`], under the gate held
//!   exclusively).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flotilla_api::images::{StoredBlob, StoredImage};
use flotilla_oci::digest::{Digest, HashingReader};
use flotilla_oci::layout::{archive_name, Layout, LayoutError, Limits};
use flotilla_oci::manifest::{
    self, Descriptor, ImageConfig, ManifestKind, Platform, PlatformMatcher, MAX_CONFIG_BYTES,
};
use flotilla_oci::ImageRef;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

/// Largest archive `POST /v1/images` takes, bytes (4 GiB).
pub const MAX_PUSH_BYTES: u64 = 4 << 30;
/// Most bytes the archive's files may hold once it is decompressed (a gzipped OCI archive of
/// uncompressed layers grows a few times; a compression bomb stops here).
pub const MAX_STAGED_BYTES: u64 = 4 * MAX_PUSH_BYTES;
/// Most entries of an archive.
pub const MAX_ENTRIES: u64 = 100_000;
/// Most layers of an image: what one overlayfs mount stacks on a node (the kernel's
/// `OVL_MAX_STACK`), as the node's store refuses more too.
pub const MAX_LAYERS: usize = 500;

/// Why a push failed; each names the image, blob or limit at fault.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The body passed [`MAX_PUSH_BYTES`].
    #[error("the archive is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// The body could not be read.
    #[error("reading the archive: {0}")]
    Upload(String),
    /// The archive is not a usable layout: what is wrong, naming the entry, document or blob
    /// (never the control plane's temporary file).
    #[error("the archive: {0}")]
    Archive(String),
    /// An image of it is refused.
    #[error("image {image}: {reason}")]
    Image {
        /// The image, by name or index entry.
        image: String,
        /// Why.
        reason: String,
    },
    /// A blob's content is not what its descriptor says.
    #[error("image {image}: blob {digest}: {reason}")]
    Blob {
        /// The image.
        image: String,
        /// The descriptor's digest.
        digest: Digest,
        /// What is wrong (content hashes to another digest, another size).
        reason: String,
    },
    /// The store's disk failed.
    #[error("content store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl PushError {
    /// Whether the fault is the control plane's (the rest is the archive's or the request's).
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}

/// A layout error about the pushed archive, without the temporary file's path.
fn of_archive(e: LayoutError) -> PushError {
    match e {
        LayoutError::Invalid { reason, .. } => PushError::Archive(reason),
        LayoutError::DigestMismatch {
            what,
            digest,
            actual,
            ..
        } => PushError::Archive(format!(
            "{what} {digest} is corrupt: content hashes to {actual}"
        )),
    }
}

/// What picks an image from an index: `platform`, else the control plane's own.
fn matcher(platform: Option<&Platform>) -> PlatformMatcher {
    match platform {
        Some(p) => PlatformMatcher::new(p, false),
        None => PlatformMatcher::host(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PushError + '_ {
    move |source| PushError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes of a blob sent per write to a node's stream.
const CHUNK: usize = 64 << 10;

/// How long a node may take nothing of a blob sent to it before the transfer is given up (its
/// stream reset): a stalled node does not hold a task and an open file for ever.
pub const SEND_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Blob transfers one node has at once; more wait for one of them to end (a node's own pulls
/// take at most three layers at a time each).
pub const NODE_TRANSFERS: usize = 8;

/// How long a push's upload may send nothing before it is given up (its temporary file
/// deleted): a stalled client does not hold a connection and a file for ever.
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Paces the bytes sent to one node, all its transfers together, at a rate in bytes per second
/// (a virtual clock of when the link is next free: each chunk waits for it, then moves it on by
/// its own length at the rate).
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes may go.
    async fn take(&self, n: usize) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + std::time::Duration::from_secs_f64(n as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// What the control plane's pulls from registries share (`pull.rs`): its mirrors, its HTTP
/// client, and a lock per name being pulled.
#[derive(Debug)]
pub struct Puller {
    pub(crate) mirrors: flotilla_oci::registry::RegistryMirrors,
    http: std::sync::Mutex<Option<flotilla_oci::registry::HttpClient>>,
    busy: std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>,
    >,
}

impl Puller {
    /// Pulls that try `mirrors` before each registry.
    pub fn new(mirrors: flotilla_oci::registry::RegistryMirrors) -> Self {
        Self {
            mirrors,
            http: std::sync::Mutex::new(None),
            busy: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub(crate) fn http(&self) -> Result<flotilla_oci::registry::HttpClient, String> {
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = http.as_ref() {
            return Ok(c.clone());
        }
        let c = flotilla_oci::registry::http_client()?;
        *http = Some(c.clone());
        Ok(c)
    }

    /// The lock of pulls of `name`.
    pub(crate) fn lock_of(&self, name: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|_, l| l.strong_count() > 0);
        if let Some(l) = busy.get(name).and_then(std::sync::Weak::upgrade) {
            return l;
        }
        let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        busy.insert(name.to_string(), std::sync::Arc::downgrade(&l));
        l
    }
}

/// The blobs on disk, and the gate that keeps them in step with the core's references.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    /// `image_rate_limit`: bytes per second per node, 0 for none.
    rate: u64,
    /// Each node's pacer while it has a transfer.
    pacers: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Pacer>>>,
    /// Each node's transfer slots while it has a transfer ([`NODE_TRANSFERS`]).
    slots: std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Weak<tokio::sync::Semaphore>>,
    >,
    /// Shared by a push until its names are committed, exclusive for a removal until its
    /// blobs are deleted (see the module's docs).
    pub gate: tokio::sync::RwLock<()>,
}

impl ContentStore {
    /// Opens (creating, 0700) `<data_dir>/images`, emptying its `tmp/` of what an earlier run
    /// left; blobs go to each node at most `rate` bytes per second (0: no limit).
    ///
    /// # Errors
    /// A directory that cannot be made or secured.
    pub fn open(data_dir: &Path, rate: u64) -> io::Result<Self> {
        let root = data_dir.join("images");
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        for d in [
            root.clone(),
            root.join("blobs"),
            root.join("blobs/sha256"),
            tmp,
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            root,
            rate,
            pacers: Default::default(),
            slots: Default::default(),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// The pacer of `node`'s transfers (`None` without a limit), shared by its concurrent ones.
    pub fn pacer(&self, node: &str) -> Option<std::sync::Arc<Pacer>> {
        if self.rate == 0 {
            return None;
        }
        let mut pacers = self.pacers.lock().unwrap_or_else(|p| p.into_inner());
        pacers.retain(|_, p| p.strong_count() > 0);
        if let Some(p) = pacers.get(node).and_then(std::sync::Weak::upgrade) {
            return Some(p);
        }
        let p = std::sync::Arc::new(Pacer::new(self.rate));
        pacers.insert(node.to_string(), std::sync::Arc::downgrade(&p));
        Some(p)
    }

    /// A slot for one of `node`'s blob transfers, waited for while it has [`NODE_TRANSFERS`]
    /// already (quinn's limit on a connection's streams bounds how many wait). `None` only if
    /// the slots were closed, which nothing does.
    pub async fn transfer_slot(&self, node: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = {
            let mut all = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|_, s| s.strong_count() > 0);
            match all.get(node).and_then(std::sync::Weak::upgrade) {
                Some(s) => s,
                None => {
                    let s = std::sync::Arc::new(tokio::sync::Semaphore::new(NODE_TRANSFERS));
                    all.insert(node.to_string(), std::sync::Arc::downgrade(&s));
                    s
                }
            }
        };
        slots.acquire_owned().await.ok()
    }

    /// Answers a node's `AgentRequest::Blob` on `out`: `AgentReply::Blob { size }` and the
    /// blob's bytes from `offset` to its end, paced by `pacer`; or `AgentReply::Refused` for a
    /// digest that is malformed or not held, or an offset past the end. Answers the bytes of
    /// content sent, and tells `sent_bytes` of each chunk as it is written.
    ///
    /// # Errors
    /// The blob could not be read (`reading PATH: …`, the control plane's fault), or the stream
    /// failed (the node went away, or took nothing for [`SEND_IDLE`]).
    pub async fn serve_blob<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        digest: &str,
        offset: u64,
        pacer: Option<&Pacer>,
        out: &mut W,
        sent_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, String> {
        use flotilla_api::{write_frame, AgentReply};
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let refuse = |reason: String| AgentReply::Refused { reason };
        // Never echoed whole: a refusal quoting a digest of a megabyte would not fit a frame.
        let opened = match digest.parse::<Digest>() {
            Err(_) if digest.len() > 80 => Err(refuse(format!(
                "malformed digest of {} bytes (sha256:<64 hex> has 71)",
                digest.len()
            ))),
            Err(e) => Err(refuse(e.to_string())),
            Ok(d) => {
                let path = self.blob_path(&d);
                match tokio::fs::File::open(&path).await {
                    Ok(f) => Ok((f, path)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(refuse(format!(
                        "blob {digest} is not in the control plane's content store"
                    ))),
                    Err(e) => return Err(format!("reading {}: {e}", path.display())),
                }
            }
        };
        let (mut file, path) = match opened {
            Ok(x) => x,
            Err(refusal) => {
                write_frame(out, &refusal)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(0);
            }
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if offset > size {
            let r = refuse(format!(
                "offset {offset} is past the end of blob {digest} ({size} bytes)"
            ));
            write_frame(out, &r).await.map_err(|e| e.to_string())?;
            return Ok(0);
        }
        write_frame(out, &AgentReply::Blob { size })
            .await
            .map_err(|e| e.to_string())?;
        file.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            if let Some(p) = pacer {
                p.take(n).await;
            }
            tokio::time::timeout(SEND_IDLE, out.write_all(&buf[..n]))
                .await
                .map_err(|_| {
                    format!(
                        "sending blob {digest}: the node took nothing for {} s",
                        SEND_IDLE.as_secs()
                    )
                })?
                .map_err(|e| format!("sending blob {digest}: {e}"))?;
            sent_bytes(n as u64);
            sent += n as u64;
        }
        out.flush()
            .await
            .map_err(|e| format!("sending blob {digest}: {e}"))?;
        Ok(sent)
    }

    /// The file of blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The store's scratch directory (emptied when the control plane starts).
    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Streams `body` into a temporary file (0600, removed when dropped), refusing more than
    /// `limit` bytes, and giving up an upload that sends nothing for [`UPLOAD_IDLE`].
    ///
    /// # Errors
    /// [`PushError::TooLarge`], [`PushError::Upload`], or the disk's.
    pub async fn receive<B>(&self, mut body: B, limit: u64) -> Result<tempfile::TempPath, PushError>
    where
        B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let tmp = self.tmp();
        let file = tempfile::Builder::new()
            .prefix("push-")
            .tempfile_in(&tmp)
            .map_err(io_at(&tmp))?;
        let (std_file, path) = file.into_parts();
        let mut out = tokio::fs::File::from_std(std_file);
        let mut n = 0u64;
        loop {
            let frame = match tokio::time::timeout(UPLOAD_IDLE, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    return Err(PushError::Upload(format!(
                        "nothing arrived for {} s after {n} bytes: given up",
                        UPLOAD_IDLE.as_secs()
                    )))
                }
            };
            let frame = frame.map_err(|e| PushError::Upload(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                n += data.len() as u64;
                if n > limit {
                    return Err(PushError::TooLarge { limit });
                }
                out.write_all(&data).await.map_err(io_at(&path))?;
            }
        }
        out.flush().await.map_err(io_at(&path))?;
        Ok(path)
    }

    /// Reads the archive at `archive` and stores the blobs of each of its images; answers the
    /// images for the core to record. `name` names the image of an archive that holds one;
    /// `platform` picks from an image index (the control plane's own by default). Blocking.
    ///
    /// # Errors
    /// [`PushError`] naming the archive's fault — the entry, document, image or blob — or the
    /// disk's.
    pub fn ingest(
        &self,
        archive: &Path,
        name: Option<&str>,
        platform: Option<&Platform>,
    ) -> Result<Vec<StoredImage>, PushError> {
        let layout = Layout::open(
            archive,
            &self.tmp(),
            Limits {
                bytes: MAX_STAGED_BYTES,
                entries: MAX_ENTRIES,
            },
        )
        .map_err(of_archive)?;
        let entries = layout.index().manifests.clone();
        if entries.is_empty() {
            return Err(of_archive(layout.err("the layout's index lists no images")));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(of_archive(layout.err(format!(
                "a name needs an archive with one image; this one has {}",
                entries.len()
            ))));
        }
        let matcher = matcher(platform);
        let mut out = Vec::new();
        // Blobs stored by this push, with their sizes: an index of many images sharing a
        // large layer hashes it once, not once per image.
        let mut stored = std::collections::HashMap::new();
        for desc in &entries {
            let image = match name {
                Some(n) => ImageRef::parse(n)
                    .map_err(|e| PushError::Image {
                        image: n.to_string(),
                        reason: e.to_string(),
                    })?
                    .name(),
                None => archive_name(desc).map_err(PushError::Archive)?,
            };
            if image.contains('@') {
                return Err(PushError::Image {
                    image,
                    reason: "a name that pins a digest names no image to keep; name it by a tag"
                        .into(),
                });
            }
            out.push(self.ingest_one(
                &layout,
                desc,
                image,
                (&matcher, platform.is_some()),
                (Blobs::Copy, &mut stored),
            )?);
        }
        Ok(out)
    }

    /// Stores the one image of the layout directory `dir` that a pull from a registry wrote
    /// (`pull.rs`), as `name` — which may pin a digest, as the reference pulled did. Blocking.
    /// The layout is the store's own (under its `tmp/`, on its filesystem): each blob the store
    /// does not hold yet is moved in, hashed again but not copied, so a pull writes each
    /// layer once. With `required`, an image for another `platform` is refused.
    ///
    /// # Errors
    /// As [`ContentStore::ingest`].
    pub fn ingest_pulled(
        &self,
        dir: &Path,
        name: &str,
        platform: Option<&Platform>,
        required: bool,
    ) -> Result<StoredImage, PushError> {
        let limits = Limits {
            bytes: MAX_STAGED_BYTES,
            entries: MAX_ENTRIES,
        };
        let layout = Layout::open(dir, &self.tmp(), limits).map_err(of_archive)?;
        let Some(desc) = layout.index().manifests.first().cloned() else {
            return Err(of_archive(layout.err("the pull wrote no manifest")));
        };
        self.ingest_one(
            &layout,
            &desc,
            name.to_string(),
            (&matcher(platform), required && platform.is_some()),
            (Blobs::Move, &mut Default::default()),
        )
    }

    fn ingest_one(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        image: String,
        (matcher, explicit): (&PlatformMatcher, bool),
        (blobs, stored): (Blobs, &mut std::collections::HashMap<Digest, u64>),
    ) -> Result<StoredImage, PushError> {
        let refuse = |reason: String| PushError::Image {
            image: image.clone(),
            reason,
        };
        let bytes = layout.read_verified(desc).map_err(of_archive)?;
        let (bytes, mdesc, m) = match manifest::parse_manifest(Some(&desc.media_type), &bytes)
            .map_err(|e| refuse(e.to_string()))?
        {
            ManifestKind::Image(m) => (bytes, desc.clone(), m),
            ManifestKind::Index(index) => {
                let child = manifest::select_platform(&index, matcher).map_err(|have| {
                    refuse(format!(
                        "its index has no manifest for {} (it has {have})",
                        matcher.platform()
                    ))
                })?;
                let b = layout.read_verified(child).map_err(of_archive)?;
                match manifest::parse_manifest(Some(&child.media_type), &b)
                    .map_err(|e| refuse(e.to_string()))?
                {
                    ManifestKind::Image(m) => (b, child.clone(), m),
                    ManifestKind::Index(_) => {
                        return Err(refuse(format!(
                            "index entry {} is an index again (one level is read)",
                            child.digest
                        )))
                    }
                }
            }
        };
        if m.layers.len() > MAX_LAYERS {
            return Err(refuse(format!(
                "{} layers (at most {MAX_LAYERS}, what one overlayfs mount stacks)",
                m.layers.len()
            )));
        }
        let config_bytes = layout
            .read_small(&m.config.digest, MAX_CONFIG_BYTES)
            .map_err(of_archive)?;
        let actual = Digest::of(&config_bytes);
        if actual != m.config.digest {
            return Err(PushError::Blob {
                image,
                digest: m.config.digest.clone(),
                reason: format!("config content hashes to {actual}"),
            });
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| refuse(format!("config {}: {e}", m.config.digest)))?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(refuse(format!(
                "its config lists {} diffIDs for {} layers",
                config.rootfs.diff_ids.len(),
                m.layers.len()
            )));
        }
        let platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        // Asked for by name (`--platform`), a platform is a requirement, of a single image as
        // of an index; the default (the control plane's own) only picks from an index, as a
        // control plane may well keep images for nodes of another architecture.
        if explicit && matcher.rank(&platform).is_none() {
            return Err(refuse(format!(
                "it is an image for {platform}, not for {} (--platform)",
                matcher.platform()
            )));
        }
        // A manifest may list a layer more than once (old Docker images repeat their empty
        // layer), and an archive's images share layers: each blob is verified and stored once
        // per push, so a listing repeated up to [`MAX_LAYERS`] times (or an index of thousands
        // of images of one layer) neither fails for the file it moved already nor hashes a
        // large layer over and over with the gate held.
        let mut distinct: Vec<&Descriptor> = Vec::new();
        for d in std::iter::once(&m.config).chain(&m.layers) {
            match distinct.iter().find(|o| o.digest == d.digest) {
                Some(o) if o.size != d.size => {
                    return Err(PushError::Blob {
                        image,
                        digest: d.digest.clone(),
                        reason: format!(
                            "its manifest lists it with {} bytes and with {} bytes",
                            o.size, d.size
                        ),
                    })
                }
                Some(_) => {}
                None => distinct.push(d),
            }
        }
        for d in distinct {
            match stored.get(&d.digest) {
                Some(&n) if n != d.size => {
                    return Err(PushError::Blob {
                        image,
                        digest: d.digest.clone(),
                        reason: format!(
                        "another image of the archive lists it with {n} bytes, this one with {}",
                        d.size
                    ),
                    })
                }
                Some(_) => continue,
                None => {}
            }
            let from = layout.blob_path(&d.digest).map_err(of_archive)?;
            match blobs {
                Blobs::Copy => self.put_file(&from, d, &image)?,
                Blobs::Move => self.move_file(&from, d, &image)?,
            }
            stored.insert(d.digest.clone(), d.size);
        }
        self.put_bytes(&bytes, &mdesc.digest)?;
        let blob = |d: &Descriptor| StoredBlob {
            media_type: d.media_type.clone(),
            digest: d.digest.to_string(),
            size: d.size,
        };
        Ok(StoredImage {
            manifest: StoredBlob {
                media_type: m
                    .media_type
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| mdesc.media_type.clone()),
                digest: mdesc.digest.to_string(),
                size: bytes.len() as u64,
            },
            config: blob(&m.config),
            layers: m.layers.iter().map(blob).collect(),
            platform: platform.to_string(),
            pushed_at: 0,
            source: None,
            name: image,
        })
    }

    /// Whether the store holds blob `digest` whole: its file is there and hashes to it. One
    /// that does not (the disk's rot, a bad restore) is logged, to be replaced by the push that
    /// brings it again (a node that fetched it refused it, naming it).
    pub(crate) fn holds_intact(&self, digest: &Digest) -> bool {
        let path = self.blob_path(digest);
        let Ok(f) = File::open(&path) else {
            return false;
        };
        let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, f));
        match io::copy(&mut reader, &mut io::sink()).and_then(|_| reader.finish()) {
            Ok((actual, _)) if actual == *digest => true,
            Ok((actual, _)) => {
                tracing::warn!(blob = %digest, "the content store's copy hashes to {actual}: replaced by this push");
                false
            }
            Err(e) => {
                tracing::warn!(blob = %digest, "reading the content store's copy: {e}: replaced by this push");
                false
            }
        }
    }

    /// Copies `from` into the store as blob `d`, verified against its digest and size; a blob
    /// the store holds whole already is kept as it is (`from` is still verified: an archive
    /// with a corrupt copy is refused all the same), one that is not is replaced.
    fn put_file(&self, from: &Path, d: &Descriptor, image: &str) -> Result<(), PushError> {
        let dest = self.blob_path(&d.digest);
        if self.holds_intact(&d.digest) {
            return verify_file(from, d, image);
        }
        let tmp = self.tmp();
        let mut out = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_at(&tmp))?;
        let src = File::open(from).map_err(io_at(from))?;
        let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, src));
        io::copy(&mut reader, out.as_file_mut()).map_err(io_at(from))?;
        verified(reader.finish().map_err(io_at(from))?, d, image)?;
        self.persist(out, &dest)
    }

    /// Moves the file `from`, on the store's filesystem, into the store as blob `d`: hashed
    /// against its digest and size, made 0600 and synced, then renamed; a blob the store holds
    /// whole already is kept as it is (and `from`, verified all the same, left where it is).
    fn move_file(&self, from: &Path, d: &Descriptor, image: &str) -> Result<(), PushError> {
        let dest = self.blob_path(&d.digest);
        if self.holds_intact(&d.digest) {
            return verify_file(from, d, image);
        }
        verify_file(from, d, image)?;
        let src = File::open(from).map_err(io_at(from))?;
        src.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_at(from))?;
        src.sync_all().map_err(io_at(from))?;
        fs::rename(from, &dest).map_err(io_at(&dest))
    }

    /// Writes a verified document (a manifest) as blob `digest`.
    fn put_bytes(&self, bytes: &[u8], digest: &Digest) -> Result<(), PushError> {
        let dest = self.blob_path(digest);
        if self.holds_intact(digest) {
            return Ok(());
        }
        let tmp = self.tmp();
        let mut out = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_at(&tmp))?;
        out.write_all(bytes).map_err(io_at(&dest))?;
        self.persist(out, &dest)
    }

    /// Syncs a temporary file (0600, as `tempfile` makes them) and renames it to `dest`.
    fn persist(&self, out: tempfile::NamedTempFile, dest: &Path) -> Result<(), PushError> {
        out.as_file().sync_all().map_err(io_at(dest))?;
        out.persist(dest).map_err(|e| PushError::Io {
            path: dest.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Deletes the blobs `digests` (after the core committed that no image references them);
    /// answers the failures, each naming its file.
    pub fn remove(&self, digests: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for d in digests {
            let Ok(d) = d.parse::<Digest>() else {
                failed.push(format!("{d}: not a digest"));
                continue;
            };
            let p = self.blob_path(&d);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}: {e}", p.display())),
            }
        }
        failed
    }

    /// Removes every blob not in `keep` (digests): what a crash between a push's blobs and
    /// its commit left. Answers how many went.
    pub fn sweep(&self, keep: &BTreeSet<String>) -> io::Result<usize> {
        let dir = self.root.join("blobs/sha256");
        let mut removed = 0;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// How [`ContentStore::ingest_one`] takes a layout's blobs: copied (an operator's archive,
/// unpacked in staging) or moved (a pull's layout, already on the store's filesystem).
#[derive(Debug, Clone, Copy)]
enum Blobs {
    Copy,
    Move,
}

/// Hashes the file `from` as blob `d` of `image` (reading it only).
fn verify_file(from: &Path, d: &Descriptor, image: &str) -> Result<(), PushError> {
    let src = File::open(from).map_err(io_at(from))?;
    let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, src));
    io::copy(&mut reader, &mut io::sink()).map_err(io_at(from))?;
    verified(reader.finish().map_err(io_at(from))?, d, image)
}

/// `got` (digest and size read) if it is blob `d` of `image`; otherwise the refusal naming the
/// difference.
fn verified(got: (Digest, u64), d: &Descriptor, image: &str) -> Result<(), PushError> {
    let (actual, size) = got;
    if actual != d.digest {
        return Err(PushError::Blob {
            image: image.to_string(),
            digest: d.digest.clone(),
            reason: format!("content hashes to {actual}"),
        });
    }
    if size != d.size {
        return Err(PushError::Blob {
            image: image.to_string(),
            digest: d.digest.clone(),
            reason: format!("{size} bytes where its descriptor says {}", d.size),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// An OCI archive's entries: `index.json` naming one image `name` whose layers are
    /// `layers`, and its blobs; `tamper` changes the entries before they are written.
    fn archive(name: &str, layers: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut blob = |bytes: Vec<u8>| {
            let d = Digest::of(&bytes);
            entries.push((format!("blobs/sha256/{}", d.hex()), bytes.clone()));
            (d, bytes.len())
        };
        let layer_descs: Vec<String> = layers
            .iter()
            .map(|l| {
                let (d, n) = blob(l.to_vec());
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#
                )
            })
            .collect();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| format!("\"{}\"", Digest::of(l)))
            .collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        );
        let (cd, cn) = blob(config.into_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cn}}},"layers":[{}]}}"#,
            layer_descs.join(",")
        );
        let (md, mn) = blob(manifest.into_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{mn},"annotations":{{"io.containerd.image.name":"{name}"}}}}]}}"#
        );
        entries.push(("index.json".into(), index.into_bytes()));
        entries
    }

    fn write_tar(dir: &Path, entries: &[(String, Vec<u8>)]) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.as_gnu_mut().expect("gnu").name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, body.as_slice()).expect("append");
        }
        let p = dir.join(format!("a-{}.tar", entries.len()));
        fs::write(&p, b.into_inner().expect("tar")).expect("write");
        p
    }

    fn blobs(store: &ContentStore) -> usize {
        fs::read_dir(store.root.join("blobs/sha256"))
            .expect("blobs")
            .count()
    }

    #[test]
    fn blobs_are_stored_private_and_shared_between_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(&dir.path().join("cp"), 0).expect("open");
        let a = write_tar(dir.path(), &archive("demo/a:1", &[b"shared", b"only-a"]));
        let images = store.ingest(&a, None, None).expect("push a");
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "docker.io/demo/a:1");
        assert_eq!(images[0].platform, "linux/amd64");
        assert_eq!(blobs(&store), 4);
        let b = write_tar(dir.path(), &archive("demo/b:1", &[b"shared"]));
        let named = store
            .ingest(&b, Some("localhost/b:2"), None)
            .expect("push b");
        assert_eq!(named[0].name, "localhost/b:2");
        // Its manifest and config are new; its one layer is a's.
        assert_eq!(blobs(&store), 6);
        let layer = Digest::of(b"shared");
        let meta = fs::metadata(store.blob_path(&layer)).expect("layer");
        assert_eq!(meta.mode() & 0o777, 0o600);
        for d in [
            "images",
            "images/blobs",
            "images/blobs/sha256",
            "images/tmp",
        ] {
            let m = fs::metadata(dir.path().join("cp").join(d)).expect("dir");
            assert_eq!(m.mode() & 0o777, 0o700, "{d}");
        }
        // Nothing staged is left behind.
        assert_eq!(fs::read_dir(store.tmp()).expect("tmp").count(), 0);
        assert!(store.remove(&[layer.to_string()]).is_empty());
        let keep: BTreeSet<String> = images[0].digests().map(str::to_string).collect();
        assert_eq!(store.sweep(&keep).expect("sweep"), 2);
        assert_eq!(blobs(&store), 3);
    }

    #[test]
    fn a_blob_whose_content_is_not_its_digest_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let mut entries = archive("demo/a:1", &[b"layer"]);
        let layer = Digest::of(b"layer");
        for (p, body) in &mut entries {
            if p.ends_with(layer.hex()) {
                *body = b"lazer".to_vec();
            }
        }
        let e = store
            .ingest(&write_tar(dir.path(), &entries), None, None)
            .expect_err("corrupt");
        assert!(matches!(e, PushError::Blob { .. }), "{e}");
        assert!(e.to_string().contains(&layer.to_string()), "{e}");
        assert!(e.to_string().contains("content hashes to"), "{e}");
        assert!(!store.blob_path(&layer).exists());
        // The same archive once the store holds that layer whole (from another image): still
        // refused, and the store's copy kept.
        store
            .ingest(
                &write_tar(dir.path(), &archive("demo/b:1", &[b"layer", b"b"])),
                None,
                None,
            )
            .expect("a whole archive");
        let e = store
            .ingest(&write_tar(dir.path(), &entries), None, None)
            .expect_err("corrupt, though the layer is held");
        assert!(e.to_string().contains(&layer.to_string()), "{e}");
        assert!(e.to_string().contains("content hashes to"), "{e}");
        assert!(store.holds_intact(&layer));
    }

    #[test]
    fn a_platform_asked_for_is_required_of_a_single_image_and_the_default_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let a = write_tar(dir.path(), &archive("demo/a:1", &[b"l"]));
        let arm: Platform = "linux/arm64".parse().expect("a platform");
        let e = store
            .ingest(&a, None, Some(&arm))
            .expect_err("amd64, not arm64");
        assert!(
            e.to_string()
                .ends_with("it is an image for linux/amd64, not for linux/arm64 (--platform)"),
            "{e}"
        );
        assert_eq!(blobs(&store), 0);
        // Without --platform an image for any platform is kept (for nodes of that one).
        let images = store.ingest(&a, None, None).expect("kept");
        assert_eq!(images[0].platform, "linux/amd64");
    }

    #[test]
    fn hostile_archives_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let mut escaping = archive("demo/a:1", &[b"l"]);
        escaping.push(("../../etc/evil".into(), b"x".to_vec()));
        let e = store
            .ingest(&write_tar(dir.path(), &escaping), None, None)
            .expect_err("escapes");
        assert!(e.to_string().contains("'../../etc/evil' escapes"), "{e}");
        let mut bad_json = archive("demo/a:1", &[b"l"]);
        bad_json.retain(|(p, _)| p != "index.json");
        bad_json.push(("index.json".into(), b"{\"manifests\": [".to_vec()));
        let e = store
            .ingest(&write_tar(dir.path(), &bad_json), None, None)
            .expect_err("json");
        assert!(e.to_string().contains("index.json:"), "{e}");
        let mut bad_name = archive("Not A Name", &[b"l"]);
        bad_name.push(("pad".into(), Vec::new()));
        let e = store
            .ingest(&write_tar(dir.path(), &bad_name), None, None)
            .expect_err("name");
        assert!(e.to_string().contains("io.containerd.image.name"), "{e}");
        assert_eq!(blobs(&store), 0);
    }

    #[test]
    fn images_of_an_archive_that_list_a_shared_layer_with_two_sizes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let mut entries = archive("demo/a:1", &[b"shared"]);
        let layer = Digest::of(b"shared");
        let manifest_of = |entries: &[(String, Vec<u8>)]| {
            let index = &entries
                .iter()
                .find(|(p, _)| p == "index.json")
                .expect("index")
                .1;
            let index: serde_json::Value = serde_json::from_slice(index).expect("json");
            index["manifests"][0].clone()
        };
        let first = manifest_of(&entries);
        let hex = |d: &serde_json::Value| d["digest"].as_str().expect("a digest")[7..].to_string();
        let body = entries
            .iter()
            .find(|(p, _)| p.ends_with(&hex(&first)))
            .expect("the manifest")
            .1
            .clone();
        // A second image: the same manifest but for the layer's size.
        let lying = String::from_utf8(body)
            .expect("utf-8")
            .replace(r#""size":6}"#, r#""size":7}"#)
            .into_bytes();
        let ld = Digest::of(&lying);
        entries.push((format!("blobs/sha256/{}", ld.hex()), lying.clone()));
        let mut second = first.clone();
        second["digest"] = ld.to_string().into();
        second["size"] = lying.len().into();
        second["annotations"]["io.containerd.image.name"] = "demo/b:1".into();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [first, second]});
        for (p, b) in &mut entries {
            if p == "index.json" {
                *b = index.to_string().into_bytes();
            }
        }
        let e = store
            .ingest(&write_tar(dir.path(), &entries), None, None)
            .expect_err("one blob, two sizes");
        assert_eq!(
            e.to_string(),
            format!(
                "image docker.io/demo/b:1: blob {layer}: another image of the archive lists it \
                 with 6 bytes, this one with 7"
            )
        );
    }

    /// A store holding one blob of `len` bytes; its digest.
    fn with_blob(dir: &Path, len: usize, rate: u64) -> (ContentStore, Digest, Vec<u8>) {
        let store = ContentStore::open(dir, rate).expect("open");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&bytes);
        store.put_bytes(&bytes, &d).expect("blob");
        (store, d, bytes)
    }

    #[tokio::test]
    async fn a_blob_is_served_from_any_offset_after_its_size() {
        use flotilla_api::{read_frame, AgentReply};
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, d, bytes) = with_blob(dir.path(), 300_000, 0);
        let mut out = Vec::new();
        let counted = std::sync::atomic::AtomicU64::new(0);
        let sent = store
            .serve_blob(&d.to_string(), 100_000, None, &mut out, &|n| {
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
            .await
            .expect("served");
        assert_eq!(sent, 200_000);
        assert_eq!(
            counted.into_inner(),
            200_000,
            "every byte written is counted"
        );
        let mut r = out.as_slice();
        let head: AgentReply = read_frame(&mut r).await.expect("head");
        assert_eq!(head, AgentReply::Blob { size: 300_000 });
        assert_eq!(r, &bytes[100_000..]);
        // Past the end, not held, not a digest: refused, nothing sent.
        for (digest, offset, why) in [
            (d.to_string(), 300_001, "past the end"),
            (
                Digest::of(b"x").to_string(),
                0,
                "is not in the control plane's",
            ),
            ("sha256:../../etc/passwd".to_string(), 0, "malformed digest"),
            // Not echoed: the refusal must fit a frame.
            ("x".repeat(1 << 20), 0, "malformed digest of 1048576 bytes"),
        ] {
            let mut out = Vec::new();
            let sent = store
                .serve_blob(&digest, offset, None, &mut out, &|_| {})
                .await
                .expect("answered");
            assert_eq!(sent, 0);
            let reply: AgentReply = read_frame(&mut out.as_slice()).await.expect("reply");
            assert!(
                matches!(&reply, AgentReply::Refused { reason } if reason.contains(why)),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn a_stored_blob_that_rotted_is_replaced_by_the_next_push_and_a_whole_one_kept() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, d, bytes) = with_blob(dir.path(), 4096, 0);
        let path = store.blob_path(&d);
        let inode = |p: &Path| std::fs::metadata(p).expect("blob").ino();
        let whole = inode(&path);
        store.put_bytes(&bytes, &d).expect("again");
        assert_eq!(inode(&path), whole, "a whole blob is kept as it is");
        let mut rotten = bytes.clone();
        rotten[100] ^= 0x01;
        std::fs::write(&path, &rotten).expect("rot");
        assert!(!store.holds_intact(&d));
        store.put_bytes(&bytes, &d).expect("replaced");
        assert_eq!(std::fs::read(&path).expect("blob"), bytes);
        assert!(store.holds_intact(&d));
    }

    /// A body that sends one frame, then nothing, and never ends.
    struct Stalled(bool);

    impl hyper::body::Body for Stalled {
        type Data = hyper::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
                hyper::body::Bytes::from_static(b"0123456789"),
            ))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_that_stalls_is_given_up_and_its_file_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let started = tokio::time::Instant::now();
        let e = store
            .receive(Stalled(false), MAX_PUSH_BYTES)
            .await
            .expect_err("stalled");
        assert_eq!(
            e.to_string(),
            "reading the archive: nothing arrived for 60 s after 10 bytes: given up"
        );
        assert!(started.elapsed() >= UPLOAD_IDLE);
        let left = std::fs::read_dir(dir.path().join("images/tmp"))
            .expect("tmp")
            .count();
        assert_eq!(left, 0, "the partial upload is deleted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_transfers_together_keep_to_its_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, d, _) = with_blob(dir.path(), 512 << 10, 1 << 20);
        let pacer = store.pacer("n-1").expect("a limit");
        // The same node's second transfer shares the pacer; another node's does not.
        assert!(std::sync::Arc::ptr_eq(
            &pacer,
            &store.pacer("n-1").expect("limit")
        ));
        assert!(!std::sync::Arc::ptr_eq(
            &pacer,
            &store.pacer("n-2").expect("limit")
        ));
        let started = tokio::time::Instant::now();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let digest = d.to_string();
        let (x, y) = tokio::join!(
            store.serve_blob(&digest, 0, Some(&pacer), &mut a, &|_| {}),
            store.serve_blob(&digest, 0, Some(&pacer), &mut b, &|_| {})
        );
        assert_eq!((x, y), (Ok(512 << 10), Ok(512 << 10)));
        // 1 MiB at 1 MiB/s: the last chunk leaves a chunk's time before the second is up.
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(900)
                && took <= std::time::Duration::from_millis(1100),
            "{took:?}"
        );
        assert!(ContentStore::open(dir.path(), 0)
            .expect("open")
            .pacer("n-1")
            .is_none());
    }

    #[tokio::test]
    async fn an_upload_past_its_limit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 0).expect("open");
        let body = http_body_util::Full::new(hyper::body::Bytes::from_static(b"0123456789"));
        let e = store.receive(body, 5).await.expect_err("too large");
        assert!(matches!(e, PushError::TooLarge { limit: 5 }), "{e}");
        let body = http_body_util::Full::new(hyper::body::Bytes::from_static(b"0123456789"));
        let kept = store.receive(body, 10).await.expect("fits");
        assert_eq!(fs::read(&kept).expect("read"), b"0123456789");
        drop(kept);
        assert_eq!(fs::read_dir(store.tmp()).expect("tmp").count(), 0);
    }
}
