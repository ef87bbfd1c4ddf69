//! The air-gap path: import of OCI image layouts (a directory, or a tar as `skopeo copy …
//! oci-archive:` writes) and of `docker save` archives. Archives are hostile input like any
//! layer: their entries are staged under the store's `tmp/` by number, never by their own path,
//! and every blob is verified against its digest before use.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::digest::{Digest, HashingReader};
use super::manifest::{self, Descriptor, Index, ManifestKind, MAX_MANIFEST_BYTES};
use super::{ImageRecord, ImageRef, ImageStore, ImageStoreError, Platform, ProgressFn, Source};

/// Annotation containerd and Docker write with the full image name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation with the reference (often only a tag).
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The name an archive gives the image of index entry `desc`, as the tool that wrote it
/// means it:
/// - `io.containerd.image.name` (containerd, Docker 25+, and `docker save`'s `RepoTags`,
///   which the import turns into it) is a Docker reference: `bb:v1` is
///   `docker.io/library/bb:v1`, as `docker load` names it;
/// - `org.opencontainers.image.ref.name` (skopeo, podman, buildah, umoci) follows podman's
///   rule: a name with a registry stays as it is; any other is local, `localhost/` before it
///   and `latest` as its tag when it has none (`skopeo copy … oci-archive:FILE:bb` loads as
///   `localhost/bb:latest`).
///
/// No name, or a ref name that is no image name (`:v1`, `BB`), asks for `--name`.
fn archive_name(desc: &Descriptor) -> Result<String, String> {
    if let Some(n) = desc.annotations.get(ANNOTATION_IMAGE_NAME) {
        return ImageRef::parse(n)
            .map(|r| r.name())
            .map_err(|e| format!("image {}: {ANNOTATION_IMAGE_NAME} {e}", desc.digest));
    }
    let Some(r) = desc.annotations.get(ANNOTATION_REF_NAME) else {
        return Err(format!(
            "image {} has no name in the archive (neither {ANNOTATION_IMAGE_NAME} nor \
             {ANNOTATION_REF_NAME}); pass --name REF",
            desc.digest
        ));
    };
    let full = if has_registry(r) {
        r.clone()
    } else {
        format!("localhost/{r}")
    };
    ImageRef::parse(&full).map(|r| r.name()).map_err(|_| {
        format!(
            "image {} has the ref name '{r}' ({ANNOTATION_REF_NAME}), which is not an image \
             name; pass --name REF",
            desc.digest
        )
    })
}

/// Whether a reference starts with a registry host, by Docker's rule: a first path component
/// with a `.` or a `:`, or `localhost`.
pub(crate) fn has_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// An OCI layout to import from: either a directory, or blobs staged from an archive.
#[derive(Debug)]
pub(crate) struct Layout {
    origin: PathBuf,
    dir: Option<PathBuf>,
    staged: HashMap<Digest, PathBuf>,
    index: Index,
    /// Keeps the staging directory alive until the import is done.
    _staging: Option<tempfile::TempDir>,
}

impl Layout {
    fn err(&self, reason: impl Into<String>) -> ImageStoreError {
        ImageStoreError::Import {
            path: self.origin.display().to_string(),
            reason: reason.into(),
        }
    }

    /// The file holding blob `d` (not yet verified).
    pub(crate) fn blob_path(&self, d: &Digest) -> Result<PathBuf, ImageStoreError> {
        if let Some(p) = self.staged.get(d) {
            return Ok(p.clone());
        }
        let p = self
            .dir
            .as_ref()
            .map(|dir| dir.join("blobs/sha256").join(d.hex()))
            .filter(|p| p.is_file())
            .ok_or_else(|| self.err(format!("blob {d} is missing")))?;
        Ok(p)
    }

    /// Reads a small blob, refusing one larger than `limit`; the caller verifies the digest.
    pub(crate) fn read_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, ImageStoreError> {
        let p = self.blob_path(d)?;
        let mut out = Vec::new();
        File::open(&p)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut out))
            .map_err(|e| self.err(format!("reading blob {d}: {e}")))?;
        if out.len() as u64 > limit {
            return Err(self.err(format!("blob {d} is larger than {limit} bytes")));
        }
        Ok(out)
    }

    /// Reads and verifies a manifest or index blob.
    fn read_verified(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageStoreError> {
        let bytes = self.read_small(&desc.digest, MAX_MANIFEST_BYTES)?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(ImageStoreError::DigestMismatch {
                image: self.origin.display().to_string(),
                what: "manifest",
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// A path inside an archive, normalized (`""` is the archive root); `None` for paths that try to
/// leave it.
fn archive_path(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!s.starts_with('/')).then(|| parts.join("/"))
}

/// Copies the regular files of an archive into `staging` under numbered names.
/// Returns archive path → staged file (symlinks resolved within the archive).
fn stage_archive(archive: &Path, staging: &Path) -> Result<HashMap<String, PathBuf>, String> {
    let f = File::open(archive).map_err(|e| e.to_string())?;
    let reader = super::unpack::decompress(io::BufReader::new(f)).map_err(|e| e.to_string())?;
    let mut tar = tar::Archive::new(reader);
    let mut files = HashMap::new();
    let mut links = Vec::new();
    for (n, entry) in tar.entries().map_err(|e| e.to_string())?.enumerate() {
        let mut entry = entry.map_err(|e| format!("reading archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let Some(path) = archive_path(&raw) else {
            return Err(format!(
                "entry '{}' escapes the archive",
                String::from_utf8_lossy(&raw)
            ));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dest = staging.join(n.to_string());
                let mut out = File::create(&dest).map_err(|e| e.to_string())?;
                io::copy(&mut entry, &mut out)
                    .map_err(|e| format!("reading entry '{path}': {e}"))?;
                files.insert(path, dest);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                    path.rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let joined = if base.is_empty() {
                    target
                } else {
                    [base.as_bytes(), b"/", &target].concat()
                };
                // `..` inside the archive is legal in docker-save's layer links: resolve it.
                let mut parts: Vec<&[u8]> = Vec::new();
                for c in joined.split(|b| *b == b'/') {
                    match c {
                        b"" | b"." => {}
                        b".." => {
                            if parts.pop().is_none() {
                                return Err(format!("link '{path}' points outside the archive"));
                            }
                        }
                        c => parts.push(c),
                    }
                }
                links.push((
                    path,
                    String::from_utf8_lossy(&parts.join(&b'/')).into_owned(),
                ));
            }
            _ => {}
        }
    }
    for (path, target) in links {
        if let Some(p) = files.get(&target).cloned() {
            files.insert(path, p);
        }
    }
    Ok(files)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Turns a staged `docker save` archive into an OCI layout: synthesized manifests that point to
/// the staged config and layer files by their digests.
fn docker_save_layout(
    files: &HashMap<String, PathBuf>,
    staging: &Path,
) -> Result<(Index, HashMap<Digest, PathBuf>), String> {
    let mf = files.get("manifest.json").ok_or("no manifest.json")?;
    let bytes = fs::read(mf).map_err(|e| e.to_string())?;
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest.json: {e}"))?;
    let mut staged = HashMap::new();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.into()),
        manifests: Vec::new(),
    };
    let describe = |path: &str,
                    staged: &mut HashMap<Digest, PathBuf>|
     -> Result<(Digest, u64, bool), String> {
        let p = files
            .get(path)
            .ok_or_else(|| format!("manifest.json names '{path}', which the archive lacks"))?;
        let mut f = io::BufReader::new(File::open(p).map_err(|e| e.to_string())?);
        let gz = {
            let head = io::BufRead::fill_buf(&mut f).map_err(|e| e.to_string())?;
            head.starts_with(&[0x1f, 0x8b])
        };
        let (d, n) = HashingReader::new(f).finish().map_err(|e| e.to_string())?;
        staged.insert(d.clone(), p.clone());
        Ok((d, n, gz))
    };
    for (i, e) in entries.iter().enumerate() {
        let (config, config_size, _) = describe(&e.config, &mut staged)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size, gz) = describe(l, &mut staged)?;
            layers.push(Descriptor {
                media_type: if gz {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip".into()
                } else {
                    manifest::OCI_LAYER_TAR.into()
                },
                digest,
                size,
                platform: None,
                annotations: Default::default(),
            });
        }
        let m = manifest::Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config,
                size: config_size,
                platform: None,
                annotations: Default::default(),
            },
            layers,
        };
        let body = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
        let digest = Digest::of(&body);
        let p = staging.join(format!("manifest-{i}.json"));
        fs::write(&p, &body).map_err(|e| e.to_string())?;
        staged.insert(digest.clone(), p);
        for tag in e.repo_tags.clone().unwrap_or_default().into_iter().chain(
            e.repo_tags
                .as_ref()
                .is_none_or(|t| t.is_empty())
                .then(String::new),
        ) {
            let mut annotations = std::collections::BTreeMap::new();
            if !tag.is_empty() {
                annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), tag);
            }
            index.manifests.push(Descriptor {
                media_type: manifest::OCI_MANIFEST.into(),
                digest: digest.clone(),
                size: body.len() as u64,
                platform: None,
                annotations,
            });
        }
    }
    Ok((index, staged))
}

impl ImageStore {
    fn open_layout(&self, path: &Path) -> Result<Layout, ImageStoreError> {
        let err = |reason: String| ImageStoreError::Import {
            path: path.display().to_string(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.is_dir() {
            let bytes =
                fs::read(path.join("index.json")).map_err(|e| err(format!("index.json: {e}")))?;
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("index.json: {e}")))?;
            return Ok(Layout {
                origin: path.to_path_buf(),
                dir: Some(path.to_path_buf()),
                staged: HashMap::new(),
                index,
                _staging: None,
            });
        }
        let staging = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.root().join("tmp"))
            .map_err(|e| err(e.to_string()))?;
        let files = stage_archive(path, staging.path()).map_err(err)?;
        let (index, staged) = if let Some(idx) = files.get("index.json") {
            let bytes = fs::read(idx).map_err(|e| err(e.to_string()))?;
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("index.json: {e}")))?;
            let mut staged = HashMap::new();
            for (p, f) in &files {
                if let Some(d) = p
                    .strip_prefix("blobs/sha256/")
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
                {
                    staged.insert(d, f.clone());
                }
            }
            // A docker-save archive from Docker 25+ carries both; take its names if the OCI
            // index has none.
            let named = index
                .manifests
                .iter()
                .any(|d| d.annotations.contains_key(ANNOTATION_IMAGE_NAME));
            if !named && files.contains_key("manifest.json") {
                docker_save_layout(&files, staging.path()).map_err(err)?
            } else {
                (index, staged)
            }
        } else if files.contains_key("manifest.json") {
            docker_save_layout(&files, staging.path()).map_err(err)?
        } else {
            return Err(err(
                "neither an OCI layout (index.json) nor a docker-save archive (manifest.json)"
                    .into(),
            ));
        };
        Ok(Layout {
            origin: path.to_path_buf(),
            dir: None,
            staged,
            index,
            _staging: Some(staging),
        })
    }

    /// Imports every image of an OCI layout (directory or tar) or `docker save` archive at
    /// `path`. `name` names the image when the archive holds one and does not name it itself.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        platform: Option<Platform>,
        progress: ProgressFn,
    ) -> Result<Vec<ImageRecord>, ImageStoreError> {
        let layout = {
            let (store, p) = (self.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || store.open_layout(&p))
                .await
                .map_err(|e| ImageStoreError::Import {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })??
        };
        let layout = Arc::new(layout);
        let entries = layout.index.manifests.clone();
        if entries.is_empty() {
            return Err(layout.err("the layout's index lists no images"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(layout.err(format!(
                "--name needs an archive with one image; this one has {}",
                entries.len()
            )));
        }
        let platforms = self.platforms(platform.as_ref());
        let mut out = Vec::new();
        for desc in &entries {
            let image_name = match name {
                Some(n) => ImageRef::parse(n)?.name(),
                None => archive_name(desc).map_err(|reason| layout.err(reason))?,
            };
            let bytes = layout.read_verified(desc)?;
            let (manifest_bytes, manifest_digest, chosen) =
                match manifest::parse_manifest(Some(&desc.media_type), &bytes)
                    .map_err(|e| layout.err(e.to_string()))?
                {
                    ManifestKind::Image(_) => (bytes, desc.digest.clone(), None),
                    ManifestKind::Index(index) => {
                        let child =
                            manifest::select_platform(&index, &platforms).map_err(|available| {
                                ImageStoreError::Platform {
                                    image: image_name.clone(),
                                    want: platforms.platform().clone(),
                                    available,
                                }
                            })?;
                        (
                            layout.read_verified(child)?,
                            child.digest.clone(),
                            child.platform.clone(),
                        )
                    }
                };
            if let Some(pinned) = image_name.split_once('@').map(|(_, d)| d) {
                if pinned != desc.digest.to_string() {
                    return Err(layout.err(format!(
                        "image {} is named {image_name} in the archive, which pins another \
                         digest; pass --name REF",
                        desc.digest
                    )));
                }
            }
            let source = Source::Layout(layout.clone());
            let rec = self
                .ingest(
                    &source,
                    &image_name,
                    &manifest_bytes,
                    manifest_digest,
                    None,
                    super::PlatformChoice {
                        platforms: &platforms,
                        from_index: chosen.as_ref(),
                        asked: platform.is_some(),
                    },
                    "import",
                    progress.clone(),
                )
                .await?;
            out.push(rec);
        }
        Ok(out)
    }
}
