//! The node's content-addressed image store.
//!
//! Layout under `<data dir>/images/`:
//! - `blobs/sha256/<hex>`: verified manifests and configs;
//! - `layers/<diffID hex>/`: each layer unpacked once, in overlayfs lower-layer form, shared by
//!   every image that has it; `layers/<hex>.json` records its size;
//! - `ingest/<hex>[.<source>].partial`: downloads in progress (from a registry, a mirror, or
//!   the control plane: [`remote`]), kept across failures so a pull resumes;
//! - `tmp/`: unpacks and archive imports in progress (emptied by garbage collection);
//! - `images.json`: names → image records, replaced atomically under `images.lock`;
//! - `gc.lock`: pulls hold it shared, garbage collection exclusive.
//!
//! Compressed layer blobs are discarded once their layer is unpacked and verified (as
//! containerd's `discard_unpacked_layers` does): edge disks are small.

pub mod busybox;
pub mod gc;
mod import;
pub mod remote;
pub mod unpack;

pub use flotilla_oci::reference::{ImageRef, ReferenceError};
pub use flotilla_oci::{digest, manifest, registry};

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::causes;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

pub use digest::Digest;
pub use manifest::{Platform, PlatformMatcher};
pub use registry::{Credentials, Mirror, RegistryMirrors, RegistryOptions};

use manifest::{Descriptor, ImageConfig, ManifestKind, MAX_CONFIG_BYTES};
use registry::{PullSource, RegistryClient, RegistryError};

/// Most distinct layers an image may have: what one overlayfs mount stacks (the kernel's
/// `OVL_MAX_STACK`), as a container's root filesystem is one mount.
pub const MAX_LAYERS: usize = 500;

/// Layers downloaded and unpacked at once by one pull.
const LAYER_CONCURRENCY: usize = 3;
/// Attempts per blob download before a pull gives up (each resumes where the last stopped).
const DOWNLOAD_ATTEMPTS: u32 = 4;

/// One stored image: a name bound to a platform-specific manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Normalized reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Media type of the manifest (OCI or Docker v2 schema 2).
    pub media_type: String,
    /// Platform of the image.
    pub platform: Platform,
    /// Digest of the image configuration blob.
    pub config: Digest,
    /// Layers, lowest first.
    pub layers: Vec<LayerRecord>,
    /// Creation time written by the image's builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When this name was stored (seconds since the epoch).
    pub stored_at: u64,
    /// Where it came from: `registry` or `import`.
    pub source: String,
    /// The mirror that served it (`https://host[:port]`, `http://…`), when a mirror of its
    /// registry did rather than the registry itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl ImageRecord {
    /// Compressed size: what a pull transfers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Bytes of file content in the unpacked layers.
    pub fn unpacked_size(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_bytes).sum()
    }
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the layer blob as distributed (usually compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar; names the unpacked directory.
    pub diff_id: Digest,
    /// Size of the distributed blob.
    pub size: u64,
    /// Media type of the distributed blob.
    pub media_type: String,
    /// Bytes of file content once unpacked.
    #[serde(default)]
    pub unpacked_bytes: u64,
}

/// An image record with its configuration, for `inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDetails {
    /// The record.
    #[serde(flatten)]
    pub record: ImageRecord,
    /// The image configuration document as stored.
    pub image_config: serde_json::Value,
    /// The unpacked layer directories, lowest first.
    pub layer_dirs: Vec<PathBuf>,
}

/// Content a holder keeps alive (see [`ImageStore::lease`]).
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

/// What garbage collection freed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Unpacked layers removed.
    pub layers: u64,
    /// Partial downloads and leftover temporary directories removed.
    pub partials: u64,
    /// Bytes freed (file content).
    pub bytes: u64,
}

/// What a collection by disk pressure found and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PressureReport {
    /// The filesystem before.
    pub before: Option<gc::FsUsage>,
    /// The filesystem after (when something was removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<gc::FsUsage>,
    /// Names removed, least recently used first.
    pub removed: Vec<String>,
    /// Bytes wanted freed to be down to the low watermark (0: below the high one).
    pub wanted_bytes: u64,
    /// What the removal freed.
    pub freed: PruneReport,
    /// Whether a pull held the store, so nothing was looked at (the next round does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

/// Progress of one layer during a pull or import.
#[derive(Debug, Clone)]
pub struct ProgressEvent {
    /// The layer blob's digest.
    pub layer: Digest,
    /// The blob's size.
    pub size: u64,
    /// Where it is.
    pub phase: Phase,
}

/// Where a layer is in a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Already unpacked in the store; nothing to do.
    Cached,
    /// Downloading; the bytes held so far.
    Downloading(u64),
    /// Unpacking and verifying.
    Unpacking,
    /// Stored.
    Done,
}

/// Receives progress events; called from several tasks at once.
pub type ProgressFn = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

/// Options of a pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// How to reach the registry.
    pub registry: RegistryOptions,
    /// The platform to pick from an index (default: this node's).
    pub platform: Option<Platform>,
    /// Mirrors tried, in order, before the image's registry (see [`registry::pull_sources`]).
    pub mirrors: RegistryMirrors,
}

/// Why an image operation failed. Each variant names the image and, where it applies, the layer.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// No image of that name in the store.
    #[error("image '{0}' not found in the store")]
    NotFound(String),
    /// A registry request failed.
    #[error("pulling image '{image}': {source}")]
    Registry {
        /// The image.
        image: String,
        /// What went wrong.
        source: RegistryError,
    },
    /// Every mirror of the image's registry failed, then the registry itself: each is named
    /// with what it answered, the registry last.
    #[error("pulling image '{image}': {}then {source}", mirrors_said(tried))]
    Mirrors {
        /// The image.
        image: String,
        /// Each mirror tried, with why it failed.
        tried: Vec<MirrorFailure>,
        /// What the registry itself answered.
        source: RegistryError,
    },
    /// A fetch from a [`remote::BlobSource`] (the control plane) failed.
    #[error("pulling image '{image}' from {from}: {source}")]
    Fetch {
        /// The image.
        image: String,
        /// Who served ("the control plane").
        from: String,
        /// What went wrong.
        source: remote::FetchError,
    },
    /// A manifest, index or config is unusable.
    #[error("image '{image}': {reason}")]
    Invalid {
        /// The image.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A single image (no index) for another platform than the node's, not asked for by
    /// platform.
    #[error("image '{image}' is for {platform}, this node is {node}")]
    OtherPlatform {
        /// The image.
        image: String,
        /// The image's platform (its configuration's), `os/architecture[/variant]`.
        platform: String,
        /// The node's.
        node: String,
    },
    /// The index has no entry for the wanted platform.
    #[error("image '{image}' has no variant for platform {want}; it has: {available}")]
    Platform {
        /// The image.
        image: String,
        /// The platform asked for.
        want: Platform,
        /// What the index offers.
        available: String,
    },
    /// Content does not match its digest.
    #[error("image '{image}': {what} {digest} is corrupt: content hashes to {actual}")]
    DigestMismatch {
        /// The image.
        image: String,
        /// Which kind of content (manifest, config, layer, uncompressed layer).
        what: &'static str,
        /// The expected digest.
        digest: Digest,
        /// What the content hashed to.
        actual: Digest,
    },
    /// A layer could not be unpacked (e.g. an entry tried to escape the layer directory).
    #[error("image '{image}', layer {layer}: {source}")]
    Unpack {
        /// The image.
        image: String,
        /// The layer blob digest.
        layer: Digest,
        /// The unpack error, naming the entry.
        source: unpack::UnpackError,
    },
    /// An import archive or layout is unusable.
    #[error("importing '{path}': {reason}")]
    Import {
        /// The archive or directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A store file could not be read or written.
    #[error("image store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl ImageStoreError {
    /// What a failed pull comes down to, when a registry's answer (or its silence) says it:
    /// what the person who asked for the image can do differs (see [`registry::Failure`]).
    /// With mirrors, what the registry itself answered.
    pub fn pull_failure(&self) -> Option<registry::Failure> {
        match self {
            Self::Registry { source, .. } | Self::Mirrors { source, .. } => source.failure(),
            _ => None,
        }
    }

    /// Whether a pull from a mirror that failed so should go on with the next source: the
    /// mirror did not answer, answered an error, or served content that does not match its
    /// digest. Anything else (the image's own platforms, a hostile layer, the node's disk) is
    /// the same from every source.
    fn next_source_may_help(&self) -> bool {
        matches!(
            self,
            Self::Registry { .. } | Self::DigestMismatch { .. } | Self::Mirrors { .. }
        )
    }
}

/// A mirror a pull tried, and why it did not serve the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFailure {
    /// The mirror, `https://host[:port]` or `http://…`.
    pub mirror: String,
    /// What it answered, with its causes.
    pub reason: String,
}

/// `mirror URL: reason; ` for each mirror, as a failed pull's message lists them.
fn mirrors_said(tried: &[MirrorFailure]) -> String {
    tried
        .iter()
        .map(|m| format!("mirror {} failed ({}); ", m.mirror, m.reason))
        .collect()
}

/// A manifest or config from `source`: at most `desc.size` bytes, checked against its digest;
/// a transient failure is tried again from the start, up to [`DOWNLOAD_ATTEMPTS`] times.
async fn fetch_small(
    source: &dyn remote::BlobSource,
    image: &str,
    what: &'static str,
    desc: &Descriptor,
) -> Result<Vec<u8>, ImageStoreError> {
    let mut attempt = 0;
    let bytes = loop {
        attempt += 1;
        let mut sink = remote::Bounded::new(desc.size);
        match source
            .fetch(&desc.digest, 0, desc.size, &mut sink, &|_| {})
            .await
        {
            Ok(_) => break sink.bytes,
            Err(e) if e.transient && attempt < DOWNLOAD_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(source_error) => {
                return Err(ImageStoreError::Fetch {
                    image: image.to_string(),
                    from: source.name().to_string(),
                    source: source_error,
                })
            }
        }
    };
    let actual = Digest::of(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(ImageStoreError::DigestMismatch {
            image: image.to_string(),
            what,
            digest: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Brings `partial` up to blob `desc`'s whole length with bytes from `source`, asking from
/// the length it has (a partial file longer than the blob is started over). The content is
/// verified by the unpack that reads it.
async fn fetch_into(
    source: &dyn remote::BlobSource,
    desc: &Descriptor,
    partial: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), remote::FetchError> {
    use tokio::io::AsyncWriteExt;
    let write_error =
        |e: io::Error| remote::FetchError::permanent(format!("{}: {e}", partial.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .await
        .map_err(write_error)?;
    let mut have = file.metadata().await.map_err(write_error)?.len();
    if have > desc.size {
        file.set_len(0).await.map_err(write_error)?;
        have = 0;
    }
    if have < desc.size {
        let start = have;
        let cb = |n: u64| progress(start + n);
        progress(start);
        let written = source
            .fetch(&desc.digest, start, desc.size, &mut file, &cb)
            .await;
        // What arrived stays for the next attempt, also when the transfer was cut.
        file.flush().await.map_err(write_error)?;
        written?;
        file.sync_data().await.map_err(write_error)?;
        have = file.metadata().await.map_err(write_error)?.len();
    }
    if have != desc.size {
        return Err(remote::FetchError::transient(format!(
            "blob {} ended after {have} of its {} bytes",
            desc.digest, desc.size
        )));
    }
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageStoreError + '_ {
    move |source| ImageStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image store of one node. Cheap to clone; clones share in-flight work.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// What this node runs (read from the CPU once, at the first pull or import: running a
    /// container never needs it).
    platforms: std::sync::OnceLock<PlatformMatcher>,
    http: Mutex<Option<reqwest::Client>>,
    /// Layers being fetched by this process, so concurrent pulls do the work once.
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// An open advisory lock on a store file; released on drop.
struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn take(path: &Path, op: FlockOperation) -> Result<Self, ImageStoreError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_at(path))?;
        rustix::fs::flock(&f, op).map_err(|e| ImageStoreError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self(f))
    }
}

/// How the platform of an image being stored was chosen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlatformChoice<'a> {
    /// What the node (or the platform asked for) runs.
    pub platforms: &'a PlatformMatcher,
    /// The platform of the index entry the image was picked by, if it came from an index.
    pub from_index: Option<&'a Platform>,
    /// Whether the operator named a platform (an image for another one is then stored).
    pub asked: bool,
}

/// Where an image's content comes from.
#[derive(Clone)]
pub(crate) enum Source {
    Registry(RegistryClient),
    Layout(Arc<import::Layout>),
    Remote(Arc<dyn remote::BlobSource>),
}

impl ImageStore {
    /// Opens (creating if needed) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<Self, ImageStoreError> {
        let root = data_dir.join("images");
        for sub in ["blobs/sha256", "layers", "ingest", "tmp", "leases"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        for p in [data_dir, root.as_path()] {
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io_at(p))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                platforms: std::sync::OnceLock::new(),
                http: Mutex::new(None),
                inflight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The platform pulls pick by default (this node's, with its CPU's variant).
    pub fn platform(&self) -> &Platform {
        self.node_platforms().platform()
    }

    fn node_platforms(&self) -> &PlatformMatcher {
        self.inner.platforms.get_or_init(PlatformMatcher::host)
    }

    /// What a pull or import asking for `want` takes: this node's platforms by default; for
    /// a platform asked for, that one and those it runs (an arm64 node's 32-bit ARM only when
    /// this node runs it).
    pub(crate) fn platforms(&self, want: Option<&Platform>) -> PlatformMatcher {
        match want {
            None => self.node_platforms().clone(),
            Some(p) => {
                let arm32 = p.normalized().architecture == "arm64"
                    && self
                        .node_platforms()
                        .rank(&Platform {
                            os: p.os.clone(),
                            architecture: "arm".into(),
                            variant: Some("v7".into()),
                        })
                        .is_some();
                PlatformMatcher::new(p, arm32)
            }
        }
    }

    fn http(&self) -> Result<reqwest::Client, ImageStoreError> {
        let mut g = self.inner.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = registry::http_client().map_err(|e| ImageStoreError::Io {
            path: self.inner.root.clone(),
            source: io::Error::other(format!("building the HTTP client: {e}")),
        })?;
        *g = Some(c.clone());
        Ok(c)
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(d.hex())
    }

    /// The unpacked directory of the layer with this diffID.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers").join(diff_id.hex())
    }

    /// The unpacked layer directories of an image, lowest first (overlayfs lowerdir order is the
    /// reverse).
    pub fn layer_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect()
    }

    /// Pulls `reference` from its registry — trying the registry's mirrors first, in order, when
    /// `opts` has some —, unpacks every layer, and files it under its name. The manifest and
    /// the blobs come from the one source that served the manifest; a mirror that does not
    /// answer, answers an error or serves content that does not match its digest is logged
    /// with the registry it stands for, and the next source is tried.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: ProgressFn,
    ) -> Result<ImageRecord, ImageStoreError> {
        let r = ImageRef::parse(reference)?;
        let name = r.name();
        let mut tried: Vec<MirrorFailure> = Vec::new();
        for source in registry::pull_sources(&opts.mirrors, &r.registry) {
            let client = match &source {
                PullSource::Mirror(m) => RegistryClient::for_mirror(self.http()?, m, &r.repository),
                PullSource::Origin => RegistryClient::new(
                    self.http()?,
                    &r.registry,
                    &r.repository,
                    opts.registry.clone(),
                ),
            };
            let result = self
                .pull_from(client, &r, &name, opts, progress.clone())
                .await;
            match (source, result) {
                (PullSource::Mirror(m), Ok(rec)) => {
                    tracing::info!(image = %name, mirror = %m, registry = %r.registry, "pulled from a mirror");
                    return Ok(rec);
                }
                (PullSource::Mirror(m), Err(e)) if e.next_source_may_help() => {
                    let reason = match &e {
                        // The image is named once, above.
                        ImageStoreError::Registry { source, .. } => causes(source),
                        ImageStoreError::DigestMismatch {
                            what,
                            digest,
                            actual,
                            ..
                        } => format!("{what} {digest} is corrupt: content hashes to {actual}"),
                        other => causes(other),
                    };
                    tracing::warn!(image = %name, mirror = %m, registry = %r.registry,
                        "mirror failed, trying the next source: {reason}");
                    tried.push(MirrorFailure {
                        mirror: m.to_string(),
                        reason,
                    });
                }
                (PullSource::Mirror(_), Err(e)) => return Err(e),
                (PullSource::Origin, Ok(rec)) => {
                    if !tried.is_empty() {
                        tracing::info!(image = %name, registry = %r.registry,
                            "pulled from the registry after its mirrors failed");
                    }
                    return Ok(rec);
                }
                (PullSource::Origin, Err(ImageStoreError::Registry { source, .. }))
                    if !tried.is_empty() =>
                {
                    return Err(ImageStoreError::Mirrors {
                        image: name,
                        tried,
                        source,
                    })
                }
                (PullSource::Origin, Err(e)) => return Err(e),
            }
        }
        // `pull_sources` always ends with the registry itself.
        Err(ImageStoreError::Invalid {
            image: name,
            reason: "no source to pull from".into(),
        })
    }

    /// Fetches image `reference`, whose manifest `manifest` describes, from `source` (the
    /// control plane's content store) — manifest, config, then each layer not already
    /// unpacked here, resuming a layer's partial download from `source` — verifies each blob
    /// against its digest and size, unpacks the layers, and files the image under
    /// `reference`'s name with `source`'s tag as its origin. An image manifest only: the
    /// source chose the platform.
    ///
    /// # Errors
    /// [`ImageStoreError::Fetch`] when the source fails (after [`DOWNLOAD_ATTEMPTS`] tries of
    /// a layer when it fails transiently) or serves content that is not what its descriptor
    /// says (deleted, and named as corrupt), and the errors of a registry pull for everything
    /// after.
    pub async fn pull_from_source(
        &self,
        reference: &str,
        manifest: &Descriptor,
        source: Arc<dyn remote::BlobSource>,
        progress: ProgressFn,
    ) -> Result<ImageRecord, ImageStoreError> {
        let name = ImageRef::parse(reference)?.name();
        if manifest.size > manifest::MAX_MANIFEST_BYTES {
            return Err(ImageStoreError::Invalid {
                image: name,
                reason: format!(
                    "manifest of {} bytes is larger than allowed ({} bytes)",
                    manifest.size,
                    manifest::MAX_MANIFEST_BYTES
                ),
            });
        }
        let from = source.name().to_string();
        // Content that is not what its digest says is the source's fault: named so.
        let named = |e| match e {
            ImageStoreError::DigestMismatch {
                image,
                what,
                digest,
                actual,
            } => ImageStoreError::Fetch {
                image,
                from: from.clone(),
                source: remote::FetchError::permanent(format!(
                    "{what} {digest} is corrupt: content hashes to {actual}"
                )),
            },
            other => other,
        };
        let bytes = fetch_small(source.as_ref(), &name, "manifest", manifest)
            .await
            .map_err(named)?;
        let platforms = self.platforms(None);
        let tag = source.tag().to_string();
        self.ingest(
            &Source::Remote(source),
            &name,
            &bytes,
            manifest.digest.clone(),
            Some(&manifest.media_type),
            PlatformChoice {
                platforms: &platforms,
                from_index: None,
                asked: false,
            },
            &tag,
            progress,
        )
        .await
        .map_err(named)
    }

    /// One pull of `r` from the source `client` talks to.
    async fn pull_from(
        &self,
        client: RegistryClient,
        r: &ImageRef,
        name: &str,
        opts: &PullOptions,
        progress: ProgressFn,
    ) -> Result<ImageRecord, ImageStoreError> {
        let name = name.to_string();
        let reg_err = |source| ImageStoreError::Registry {
            image: name.clone(),
            source,
        };
        let tag_or_digest = r
            .digest
            .as_ref()
            .map(ToString::to_string)
            .or(r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let fetched = client.manifest(&tag_or_digest).await.map_err(reg_err)?;
        let top_digest = Digest::of(&fetched.body);
        if let Some(want) = &r.digest {
            if *want != top_digest {
                return Err(ImageStoreError::DigestMismatch {
                    image: name,
                    what: "manifest",
                    digest: want.clone(),
                    actual: top_digest,
                });
            }
        }
        let platforms = self.platforms(opts.platform.as_ref());
        let invalid = |reason: String| ImageStoreError::Invalid {
            image: name.clone(),
            reason,
        };
        let (manifest_bytes, manifest_digest, content_type, chosen) =
            match manifest::parse_manifest(fetched.content_type.as_deref(), &fetched.body)
                .map_err(|e| invalid(e.to_string()))?
            {
                ManifestKind::Image(_) => (fetched.body, top_digest, fetched.content_type, None),
                ManifestKind::Index(index) => {
                    let desc =
                        manifest::select_platform(&index, &platforms).map_err(|available| {
                            ImageStoreError::Platform {
                                image: name.clone(),
                                want: platforms.platform().clone(),
                                available,
                            }
                        })?;
                    let child = client
                        .manifest(&desc.digest.to_string())
                        .await
                        .map_err(reg_err)?;
                    let d = Digest::of(&child.body);
                    if d != desc.digest {
                        return Err(ImageStoreError::DigestMismatch {
                            image: name,
                            what: "manifest",
                            digest: desc.digest.clone(),
                            actual: d,
                        });
                    }
                    (child.body, d, child.content_type, desc.platform.clone())
                }
            };
        let source = Source::Registry(client);
        self.ingest(
            &source,
            &name,
            &manifest_bytes,
            manifest_digest,
            content_type.as_deref(),
            PlatformChoice {
                platforms: &platforms,
                from_index: chosen.as_ref(),
                asked: opts.platform.is_some(),
            },
            "registry",
            progress,
        )
        .await
    }

    /// Stores one image whose manifest is known and verified: config, layers, record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ingest(
        &self,
        source: &Source,
        name: &str,
        manifest_bytes: &[u8],
        manifest_digest: Digest,
        content_type: Option<&str>,
        platform: PlatformChoice<'_>,
        origin: &str,
        progress: ProgressFn,
    ) -> Result<ImageRecord, ImageStoreError> {
        let invalid = |reason: String| ImageStoreError::Invalid {
            image: name.to_string(),
            reason,
        };
        let m = match manifest::parse_manifest(content_type, manifest_bytes)
            .map_err(|e| invalid(e.to_string()))?
        {
            ManifestKind::Image(m) => m,
            ManifestKind::Index(_) => {
                return Err(invalid("index entry points to another index".into()))
            }
        };
        let media_type = m
            .media_type
            .clone()
            .or(content_type.map(str::to_string))
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
        if m.config.size > MAX_CONFIG_BYTES {
            return Err(invalid(format!(
                "config of {} bytes is larger than allowed",
                m.config.size
            )));
        }
        let config_bytes = match source {
            Source::Registry(c) => c
                .small_blob(&m.config.digest, MAX_CONFIG_BYTES)
                .await
                .map_err(|source| ImageStoreError::Registry {
                    image: name.to_string(),
                    source,
                })?,
            Source::Layout(l) => l.read_small(&m.config.digest, MAX_CONFIG_BYTES)?,
            Source::Remote(r) => fetch_small(r.as_ref(), name, "config", &m.config).await?,
        };
        let actual = Digest::of(&config_bytes);
        if actual != m.config.digest {
            return Err(ImageStoreError::DigestMismatch {
                image: name.to_string(),
                what: "config",
                digest: m.config.digest.clone(),
                actual,
            });
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("image config: {e}")))?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(invalid(format!(
                "manifest has {} layers but config lists {} diff_ids",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let distinct: HashSet<&Digest> = config.rootfs.diff_ids.iter().collect();
        if distinct.len() > MAX_LAYERS {
            return Err(invalid(format!(
                "{} distinct layers; a container's root filesystem stacks at most {} \
                 (overlayfs' limit): squash the image",
                distinct.len(),
                MAX_LAYERS
            )));
        }
        let config_platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        // The index entry names the variant an image was chosen for; builders often leave it
        // out of the config.
        let image_platform = match platform.from_index {
            Some(p) => p.clone(),
            None => config_platform,
        };
        if platform.from_index.is_none()
            && !platform.asked
            && platform.platforms.rank(&image_platform).is_none()
        {
            return Err(ImageStoreError::OtherPlatform {
                image: name.to_string(),
                platform: image_platform.to_string(),
                node: platform.platforms.platform().to_string(),
            });
        }

        let gc_guard = {
            let p = self.inner.root.join("gc.lock");
            tokio::task::spawn_blocking(move || FileLock::take(&p, FlockOperation::LockShared))
                .await
                .map_err(|e| ImageStoreError::Io {
                    path: self.inner.root.join("gc.lock"),
                    source: io::Error::other(e),
                })??
        };
        let result = self
            .ensure_layers(source, name, &m.layers, &config.rootfs.diff_ids, progress)
            .await;
        let layers = match result {
            Ok(l) => l,
            Err(e) => {
                drop(gc_guard);
                // Leave nothing half-stored: collect what this pull left unreferenced, unless
                // another pull is running (it may be about to reference it).
                let store = self.clone();
                let _ = tokio::task::spawn_blocking(move || store.collect(false, true)).await;
                return Err(e);
            }
        };
        write_atomic(&self.blob_path(&m.config.digest), &config_bytes)?;
        write_atomic(&self.blob_path(&manifest_digest), manifest_bytes)?;
        let record = ImageRecord {
            name: name.to_string(),
            digest: manifest_digest,
            media_type,
            platform: image_platform,
            config: m.config.digest.clone(),
            layers,
            created: config.created.clone(),
            stored_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            source: origin.to_string(),
            mirror: match source {
                Source::Registry(c) => c.mirror().map(ToString::to_string),
                Source::Layout(_) | Source::Remote(_) => None,
            },
        };
        let rec = record.clone();
        self.update_records(move |records| {
            records.retain(|r| r.name != rec.name);
            records.push(rec);
            Ok(())
        })?;
        drop(gc_guard);
        Ok(record)
    }

    async fn ensure_layers(
        &self,
        source: &Source,
        image: &str,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        progress: ProgressFn,
    ) -> Result<Vec<LayerRecord>, ImageStoreError> {
        let sem = Arc::new(tokio::sync::Semaphore::new(LAYER_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for (i, (desc, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
            let (store, source, image, desc, diff_id, progress, sem) = (
                self.clone(),
                source.clone(),
                image.to_string(),
                desc.clone(),
                diff_id.clone(),
                progress.clone(),
                sem.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = store
                    .ensure_layer(&source, &image, &desc, &diff_id, progress)
                    .await;
                (i, r)
            });
        }
        let mut out: Vec<Option<LayerRecord>> = vec![None; layers.len()];
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(rec))) => out[i] = Some(rec),
                Ok((_, Err(e))) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                        set.abort_all();
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    first_err.get_or_insert(ImageStoreError::Io {
                        path: self.inner.root.clone(),
                        source: io::Error::other(e),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Makes sure the layer with `diff_id` is unpacked in the store, fetching it if needed.
    async fn ensure_layer(
        &self,
        source: &Source,
        image: &str,
        desc: &Descriptor,
        diff_id: &Digest,
        progress: ProgressFn,
    ) -> Result<LayerRecord, ImageStoreError> {
        let event = |phase| {
            progress(ProgressEvent {
                layer: desc.digest.clone(),
                size: desc.size,
                phase,
            })
        };
        let gate = {
            let mut m = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            m.entry(diff_id.clone()).or_default().clone()
        };
        let _in_process = gate.lock().await;
        let lock_path = self
            .inner
            .root
            .join("layers")
            .join(format!("{}.lock", diff_id.hex()));
        let _cross_process = tokio::task::spawn_blocking(move || {
            FileLock::take(&lock_path, FlockOperation::LockExclusive)
        })
        .await
        .map_err(|e| ImageStoreError::Io {
            path: self.inner.root.clone(),
            source: io::Error::other(e),
        })??;

        let dir = self.layer_dir(diff_id);
        let record = |unpacked_bytes| LayerRecord {
            digest: desc.digest.clone(),
            diff_id: diff_id.clone(),
            size: desc.size,
            media_type: desc.media_type.clone(),
            unpacked_bytes,
        };
        if dir.is_dir() {
            event(Phase::Cached);
            return Ok(record(self.layer_unpacked_bytes(diff_id)));
        }

        let blob_file = match source {
            Source::Registry(client) => {
                let partial = self
                    .inner
                    .root
                    .join("ingest")
                    .join(client.partial_name(&desc.digest));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let cb = |held| event(Phase::Downloading(held));
                    match client
                        .download_blob(&desc.digest, desc.size, &partial, &cb)
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if e.is_transient() && attempt < DOWNLOAD_ATTEMPTS => {
                            tracing::warn!(image, layer = %desc.digest, attempt, error = %e, "layer download interrupted; resuming");
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                        Err(source) => {
                            return Err(ImageStoreError::Registry {
                                image: image.to_string(),
                                source,
                            })
                        }
                    }
                }
                partial
            }
            Source::Layout(l) => l.blob_path(&desc.digest)?,
            Source::Remote(r) => {
                let partial = self.inner.root.join("ingest").join(format!(
                    "{}.{}.partial",
                    desc.digest.hex(),
                    r.tag()
                ));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let cb = |held| event(Phase::Downloading(held));
                    match fetch_into(r.as_ref(), desc, &partial, &cb).await {
                        Ok(()) => break,
                        Err(e) if e.transient && attempt < DOWNLOAD_ATTEMPTS => {
                            tracing::warn!(image, layer = %desc.digest, attempt, from = r.name(),
                                error = %e, "layer transfer interrupted; resuming");
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                        Err(source) => {
                            return Err(ImageStoreError::Fetch {
                                image: image.to_string(),
                                from: r.name().to_string(),
                                source,
                            })
                        }
                    }
                }
                partial
            }
        };

        event(Phase::Unpacking);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-", diff_id.short()))
            .tempdir_in(self.inner.root.join("tmp"))
            .map_err(io_at(&self.inner.root.join("tmp")))?;
        let target = tmp.path().join("layer");
        fs::create_dir(&target).map_err(io_at(&target))?;
        // A layer's root is 0755 whatever the umask of the process storing it.
        fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_at(&target))?;
        let (t, blob) = (target.clone(), blob_file.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            let f = File::open(&blob).map_err(io_at(&blob))?;
            let mut compressed = digest::HashingReader::new(f);
            let stats = unpack::unpack_layer(&mut compressed, &t);
            let whole = compressed.finish().map_err(io_at(&blob))?;
            Ok::<_, ImageStoreError>((stats, whole))
        })
        .await
        .map_err(|e| ImageStoreError::Io {
            path: target.clone(),
            source: io::Error::other(e),
        })??;
        let (stats, (blob_digest, blob_len)) = unpacked;
        let corrupt_blob = blob_digest != desc.digest || blob_len != desc.size;
        if corrupt_blob {
            if !matches!(source, Source::Layout(_)) {
                let _ = fs::remove_file(&blob_file);
            }
            return Err(ImageStoreError::DigestMismatch {
                image: image.to_string(),
                what: "layer",
                digest: desc.digest.clone(),
                actual: blob_digest,
            });
        }
        let stats = stats.map_err(|source| ImageStoreError::Unpack {
            image: image.to_string(),
            layer: desc.digest.clone(),
            source,
        })?;
        if stats.diff_id != *diff_id {
            return Err(ImageStoreError::DigestMismatch {
                image: image.to_string(),
                what: "uncompressed layer",
                digest: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        let meta = serde_json::json!({ "diff_id": diff_id, "unpacked_bytes": stats.content_bytes, "entries": stats.entries });
        write_atomic(&dir.with_extension("json"), meta.to_string().as_bytes())?;
        fs::rename(&target, &dir).map_err(io_at(&dir))?;
        if !matches!(source, Source::Layout(_)) {
            let _ = fs::remove_file(&blob_file);
        }
        event(Phase::Done);
        Ok(record(stats.content_bytes))
    }

    fn layer_unpacked_bytes(&self, diff_id: &Digest) -> u64 {
        fs::read(self.layer_dir(diff_id).with_extension("json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["unpacked_bytes"].as_u64())
            .unwrap_or(0)
    }

    /// All stored images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageStoreError> {
        let path = self.inner.root.join("images.json");
        let mut records: Vec<ImageRecord> = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageStoreError::Io {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_at(&path)(e)),
        };
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    fn update_records(
        &self,
        f: impl FnOnce(&mut Vec<ImageRecord>) -> Result<(), ImageStoreError>,
    ) -> Result<(), ImageStoreError> {
        let _g = FileLock::take(
            &self.inner.root.join("images.lock"),
            FlockOperation::LockExclusive,
        )?;
        let mut records = self.list()?;
        f(&mut records)?;
        let bytes = serde_json::to_vec_pretty(&records).map_err(|e| ImageStoreError::Io {
            path: self.inner.root.join("images.json"),
            source: io::Error::other(e),
        })?;
        write_atomic(&self.inner.root.join("images.json"), &bytes)
    }

    /// Finds an image by name (normalized) or by manifest digest.
    pub fn get(&self, reference: &str) -> Result<ImageRecord, ImageStoreError> {
        let records = self.list()?;
        if let Ok(d) = reference.parse::<Digest>() {
            if let Some(r) = records.iter().find(|r| r.digest == d) {
                return Ok(r.clone());
            }
        }
        if let Some(quick) = ImageRef::quick_name(reference) {
            if let Some(r) = records.iter().find(|r| r.name == quick) {
                return Ok(r.clone());
            }
        }
        // By ImageRef::lookup_names' rule: `bb` is `localhost/bb:latest` when no
        // `docker.io/library/bb:latest` is stored, as podman finds local images.
        for name in ImageRef::lookup_names(reference)? {
            if let Some(r) = records.iter().find(|r| r.name == name) {
                return Ok(r.clone());
            }
        }
        Err(ImageStoreError::NotFound(reference.to_string()))
    }

    /// An image with its configuration and layer directories.
    pub fn inspect(&self, reference: &str) -> Result<ImageDetails, ImageStoreError> {
        let record = self.get(reference)?;
        let path = self.blob_path(&record.config);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let image_config = serde_json::from_slice(&bytes).map_err(|e| ImageStoreError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        let layer_dirs = self.layer_dirs(&record);
        Ok(ImageDetails {
            record,
            image_config,
            layer_dirs,
        })
    }

    /// Files the image `source` also under the name `target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageRecord, ImageStoreError> {
        let mut rec = self.get(source)?;
        rec.name = ImageRef::parse(target)?.name();
        let r = rec.clone();
        self.update_records(move |records| {
            records.retain(|x| x.name != r.name);
            records.push(r);
            Ok(())
        })?;
        Ok(rec)
    }

    /// Removes the name `reference` and frees the content no other image uses.
    pub fn remove(&self, reference: &str) -> Result<PruneReport, ImageStoreError> {
        let rec = self.get(reference)?;
        self.update_records(|records| {
            records.retain(|x| x.name != rec.name);
            Ok(())
        })?;
        self.collect(false, false)
    }

    /// Keeps an image's content (manifest, config, layers) from garbage collection while
    /// `holder` (e.g. a container id) uses it, even if the image's name is removed or moves.
    pub fn lease(&self, holder: &str, record: &ImageRecord) -> Result<(), ImageStoreError> {
        if holder.is_empty()
            || !holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ImageStoreError::Invalid {
                image: record.name.clone(),
                reason: format!("invalid lease holder '{holder}'"),
            });
        }
        // Shared gc.lock: a collection cannot run between reading the record and the lease
        // landing on disk.
        let _g = FileLock::take(&self.inner.root.join("gc.lock"), FlockOperation::LockShared)?;
        let lease = Lease {
            manifest: record.digest.clone(),
            config: record.config.clone(),
            layers: record.layers.iter().map(|l| l.diff_id.clone()).collect(),
        };
        // A collection may have removed the image since the record was read.
        let manifest = self.blob_path(&record.digest);
        if !manifest.is_file()
            || record
                .layers
                .iter()
                .any(|l| !self.layer_dir(&l.diff_id).is_dir())
        {
            return Err(ImageStoreError::NotFound(record.name.clone()));
        }
        let path = self.inner.root.join("leases").join(holder);
        let bytes = serde_json::to_vec(&lease).map_err(|e| ImageStoreError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        write_atomic(&path, &bytes)?;
        self.touch(&record.digest);
        Ok(())
    }

    /// Marks the image with manifest `digest` used now: the modification time of its manifest
    /// blob (content-addressed, never rewritten) is its last use, so recording a use writes no
    /// data, only the inode's time.
    fn touch(&self, digest: &Digest) {
        let path = self.blob_path(digest);
        let touched = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!(path = %path.display(), "recording an image's use: {e}");
        }
    }

    /// When the image of `record` was last stored or used (its manifest blob's modification
    /// time, or its record's `stored_at`, whichever is later).
    fn last_used(&self, record: &ImageRecord) -> SystemTime {
        let stored = UNIX_EPOCH + Duration::from_secs(record.stored_at);
        fs::metadata(self.blob_path(&record.digest))
            .and_then(|m| m.modified())
            .map_or(stored, |m| m.max(stored))
    }

    /// Ends a lease taken with [`ImageStore::lease`]; content becomes collectable again (the
    /// image counts as used until now).
    pub fn release(&self, holder: &str) -> Result<(), ImageStoreError> {
        let path = self.inner.root.join("leases").join(holder);
        if let Some(l) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
        {
            self.touch(&l.manifest);
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&path)(e)),
            _ => Ok(()),
        }
    }

    fn leases(&self) -> Result<Vec<Lease>, ImageStoreError> {
        let mut out = Vec::new();
        for (p, _) in read_dir_names(&self.inner.root.join("leases"))? {
            let bytes = fs::read(&p).map_err(io_at(&p))?;
            // A lease we cannot read keeps nothing alive but must not stop the collection
            // from protecting the others; it is reported once here.
            match serde_json::from_slice::<Lease>(&bytes) {
                Ok(l) => out.push(l),
                Err(e) => tracing::warn!(path = %p.display(), "unreadable image lease: {e}"),
            }
        }
        Ok(out)
    }

    /// Garbage collection: removes blobs and layers no image references, partial downloads,
    /// and leftover temporary directories.
    pub fn prune(&self) -> Result<PruneReport, ImageStoreError> {
        self.collect(true, false)
    }

    /// The filesystem the store is on, as `statvfs` tells it.
    pub fn filesystem(&self) -> Result<gc::FsUsage, ImageStoreError> {
        let root = &self.inner.root;
        let s = rustix::fs::statvfs(root).map_err(|e| ImageStoreError::Io {
            path: root.clone(),
            source: e.into(),
        })?;
        Ok(gc::FsUsage {
            capacity: s.f_blocks.saturating_mul(s.f_frsize),
            available: s.f_bavail.saturating_mul(s.f_frsize),
        })
    }

    /// Garbage collection by disk pressure ([`gc::plan`]): at or above the policy's high
    /// watermark, deletes the partial downloads first, then — still at or above it — removes
    /// the least recently used images no container uses, every name of each, until the store's
    /// filesystem is down to the low watermark, then the content they alone held. When a pull
    /// holds the store, looks at nothing and says so (`busy`).
    pub fn collect_by_pressure(
        &self,
        policy: &gc::GcPolicy,
        now: SystemTime,
    ) -> Result<PressureReport, ImageStoreError> {
        let before = self.filesystem()?;
        let mut report = PressureReport {
            before: Some(before),
            ..PressureReport::default()
        };
        if policy.is_off() || before.used_percent() < policy.high_percent {
            return Ok(report);
        }
        let _g = match FileLock::take(
            &self.inner.root.join("gc.lock"),
            FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(g) => g,
            Err(_) => {
                report.busy = true;
                return Ok(report);
            }
        };
        // Partial downloads go first: no pull runs now (the lock is exclusive), whatever
        // left them (a cut transfer, a source that failed for good) may never come back for
        // them, and a layer can be fetched again.
        let mut partials = PruneReport::default();
        self.remove_partials(&mut partials)?;
        let before = if partials.partials > 0 {
            let now_used = self.filesystem()?;
            if now_used.used_percent() < policy.high_percent {
                report.freed = partials;
                report.after = Some(now_used);
                return Ok(report);
            }
            now_used
        } else {
            before
        };
        let records = self.list()?;
        let mut images: Vec<gc::GcImage> = Vec::new();
        for r in &records {
            match images.iter_mut().find(|i| i.digest == r.digest) {
                Some(i) => i.names.push(r.name.clone()),
                None => images.push(gc::GcImage {
                    digest: r.digest.clone(),
                    names: vec![r.name.clone()],
                    last_used: self.last_used(r),
                    layers: r
                        .layers
                        .iter()
                        .map(|l| (l.diff_id.clone(), l.unpacked_bytes))
                        .collect(),
                }),
            }
        }
        let leases = self.leases()?;
        let leased_images: HashSet<Digest> = leases.iter().map(|l| l.manifest.clone()).collect();
        let leased_layers: HashSet<Digest> = leases
            .iter()
            .flat_map(|l| l.layers.iter().cloned())
            .collect();
        let plan = gc::plan(policy, before, &images, &leased_images, &leased_layers, now);
        report.wanted_bytes = plan.wanted_bytes;
        if plan.remove.is_empty() {
            report.freed = partials;
            return Ok(report);
        }
        let gone: HashSet<String> = plan.remove.iter().flat_map(|i| i.names.clone()).collect();
        self.update_records(|records| {
            records.retain(|r| !gone.contains(&r.name));
            Ok(())
        })?;
        report.removed = plan.remove.iter().flat_map(|i| i.names.clone()).collect();
        let collected = self.collect_locked(false)?;
        report.freed = PruneReport {
            blobs: collected.blobs,
            layers: collected.layers,
            partials: collected.partials + partials.partials,
            bytes: collected.bytes + partials.bytes,
        };
        report.after = Some(self.filesystem()?);
        Ok(report)
    }

    /// Removes unreferenced content under the exclusive GC lock. `partials` also drops resumable
    /// downloads. With `try_only`, gives up at once when a pull holds the lock.
    fn collect(&self, partials: bool, try_only: bool) -> Result<PruneReport, ImageStoreError> {
        let op = if try_only {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::LockExclusive
        };
        let _g = match FileLock::take(&self.inner.root.join("gc.lock"), op) {
            Ok(g) => g,
            Err(_) if try_only => return Ok(PruneReport::default()),
            Err(e) => return Err(e),
        };
        self.collect_locked(partials)
    }

    /// [`ImageStore::collect`] with `gc.lock` held exclusively by the caller.
    /// Deletes every partial download (`ingest/`), counted in `report`. Only under the GC
    /// lock held exclusively: no pull is writing one.
    fn remove_partials(&self, report: &mut PruneReport) -> Result<(), ImageStoreError> {
        for (p, _) in read_dir_names(&self.inner.root.join("ingest"))? {
            report.bytes += fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&p).map_err(io_at(&p))?;
            report.partials += 1;
        }
        Ok(())
    }

    fn collect_locked(&self, partials: bool) -> Result<PruneReport, ImageStoreError> {
        let records = self.list()?;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        for l in self.leases()? {
            blobs.insert(l.manifest.hex().to_string());
            blobs.insert(l.config.hex().to_string());
            layers.extend(l.layers.iter().map(|d| d.hex().to_string()));
        }
        for r in &records {
            blobs.insert(r.digest.hex().to_string());
            blobs.insert(r.config.hex().to_string());
            for l in &r.layers {
                layers.insert(l.diff_id.hex().to_string());
            }
        }
        let mut report = PruneReport::default();
        for (p, name) in read_dir_names(&self.inner.root.join("blobs/sha256"))? {
            if !blobs.contains(&name) {
                report.bytes += fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).map_err(io_at(&p))?;
                report.blobs += 1;
            }
        }
        for (p, name) in read_dir_names(&self.inner.root.join("layers"))? {
            let stem = name.split('.').next().unwrap_or_default();
            if layers.contains(stem) {
                continue;
            }
            if p.is_dir() {
                if let Ok(d) = format!("sha256:{stem}").parse::<Digest>() {
                    report.bytes += self.layer_unpacked_bytes(&d);
                }
                fs::remove_dir_all(&p).map_err(io_at(&p))?;
                report.layers += 1;
            } else {
                // Metadata and lock files of unreferenced layers; no pull holds a lock now.
                fs::remove_file(&p).map_err(io_at(&p))?;
            }
        }
        for (p, _) in read_dir_names(&self.inner.root.join("tmp"))? {
            fs::remove_dir_all(&p)
                .or_else(|_| fs::remove_file(&p))
                .map_err(io_at(&p))?;
            report.partials += 1;
        }
        if partials {
            self.remove_partials(&mut report)?;
        }
        Ok(report)
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<(PathBuf, String)>, ImageStoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push((e.path(), n.to_string()));
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_at(dir))?;
    tmp.write_all(bytes).map_err(io_at(path))?;
    tmp.as_file().sync_all().map_err(io_at(path))?;
    tmp.persist(path).map_err(|e| io_at(path)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let n = |s: &str| ImageRef::parse(s).map(|r| r.name());
        assert_eq!(
            n("busybox").ok().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            n("localhost:5000/team/app:1.2").ok().as_deref(),
            Some("localhost:5000/team/app:1.2")
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            n(&format!("example.org/app@{d}")).ok(),
            Some(format!("example.org/app@{d}"))
        );
        assert!(n("docker.io/library/UPPER").is_err());
        for (canonical, familiar) in [
            ("docker.io/library/busybox:latest", "busybox:latest"),
            ("docker.io/demo/busybox:latest", "demo/busybox:latest"),
            ("docker.io/library/a/b:1", "library/a/b:1"),
            ("localhost/bb:latest", "localhost/bb:latest"),
            ("registry.example:5000/x/y:2", "registry.example:5000/x/y:2"),
        ] {
            assert_eq!(ImageRef::familiar(canonical), familiar);
            // Read back, the familiar form names the same image.
            assert_eq!(n(familiar).expect("parses"), canonical);
        }
        assert!(n("a b").is_err());
        assert!(n("").is_err());
    }

    #[test]
    fn a_pull_whose_mirror_and_registry_both_fail_names_each() {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let (origin, mirror) = (free(), free());
        let registry = format!("127.0.0.1:{origin}");
        let urls = [format!("http://127.0.0.1:{mirror}")];
        let mirrors =
            RegistryMirrors::new([(registry.as_str(), &urls[..])]).expect("mirror config");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let opts = PullOptions {
            registry: RegistryOptions {
                credentials: Credentials::Anonymous,
                insecure: true,
            },
            mirrors,
            ..Default::default()
        };
        let e = rt
            .block_on(store.pull(&format!("{registry}/team/app:1"), &opts, Arc::new(|_| {})))
            .expect_err("nothing listens");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "pulling image '{registry}/team/app:1': mirror http://127.0.0.1:{mirror} failed \
                 (registry 127.0.0.1:{mirror}: "
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("); then registry {registry}: ")),
            "{text}"
        );
        assert_eq!(text.matches("team/app").count(), 1, "{text}");
        // What the registry itself answered decides the advice.
        assert_eq!(e.pull_failure(), Some(registry::Failure::Unreachable));
    }

    #[test]
    fn under_disk_pressure_partial_downloads_go_first() {
        // On the filesystem of the build, which its build output fills past 1 %.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let partial = dir
            .path()
            .join("images/ingest")
            .join(format!("{}.control-plane.partial", "c".repeat(64)));
        fs::write(&partial, vec![7u8; 4096]).expect("partial");
        // Below the high watermark: kept, to resume from.
        let off = gc::GcPolicy::new(100, 99, Duration::ZERO).expect("policy");
        store
            .collect_by_pressure(&off, SystemTime::now())
            .expect("collect");
        assert!(partial.exists());
        // At or above it: deleted, and counted.
        let pressed = gc::GcPolicy::new(1, 0, Duration::ZERO).expect("policy");
        let report = store
            .collect_by_pressure(&pressed, SystemTime::now())
            .expect("collect");
        assert!(!partial.exists());
        assert_eq!(report.freed.partials, 1, "{report:?}");
        assert!(report.freed.bytes >= 4096, "{report:?}");
    }

    #[test]
    fn mirror_urls_are_https_unless_http_is_written() {
        let m = |s: &str| Mirror::parse(s).map(|m| m.to_string());
        assert_eq!(m("mirror.example").as_deref(), Ok("https://mirror.example"));
        assert_eq!(
            m("https://mirror.example:443/").as_deref(),
            Ok("https://mirror.example")
        );
        assert_eq!(
            m("http://10.0.0.5:5000").as_deref(),
            Ok("http://10.0.0.5:5000")
        );
        assert_eq!(m("[::1]:5000").as_deref(), Ok("https://[::1]:5000"));
        assert!(m("").is_err());
        assert!(m("https://").is_err());
        assert!(m("https://m.example?x=1").is_err());
    }

    #[test]
    fn quick_names_agree_with_the_full_parser() {
        for r in [
            "busybox",
            "busybox:1.36",
            "demo/busybox",
            "library/busybox:latest",
            "localhost/app",
            "localhost:5000/team/app:1.2",
            "registry.example.org/a/b/c",
            "127.0.0.1:5000/x:y",
            "docker.io/library/busybox",
        ] {
            let full = ImageRef::parse(r).map(|x| x.name()).expect("valid");
            assert_eq!(ImageRef::quick_name(r), Some(full), "{r}");
        }
        assert_eq!(ImageRef::quick_name("a@sha256:00"), None);
        assert_eq!(ImageRef::quick_name("UPPER/x"), None);
    }
}
