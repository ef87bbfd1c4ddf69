//! Reading an image archive as an OCI image layout
//! (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>): a layout
//! directory, a tar of one (`skopeo copy … oci-archive:`, gzip or zstd compressed or not), or a
//! `docker save` archive, whose `manifest.json` becomes synthesized OCI manifests.
//!
//! Archives are hostile input: their entries are staged in a scratch directory by number, never
//! by their own path; an entry whose path or link leaves the archive is refused; the staged
//! bytes and entries are bounded ([`Limits`]), so a compression bomb fails instead of filling
//! the disk; JSON documents are read up to [`MAX_MANIFEST_BYTES`]. Nothing here is trusted
//! before its digest is checked: [`Layout::read_verified`] checks manifests and indexes, and
//! callers verify every other blob they copy out of [`Layout::blob_path`].
//!
//! Shared by the node's image store (`nodeagent ctr image import`) and the control plane's
//! content store (`flotilla image push`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Digest, HashingReader};
use crate::manifest::{self, Descriptor, Index, MAX_MANIFEST_BYTES};
use crate::reference::{has_registry, ImageRef};

/// Annotation containerd and Docker write with the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation with the reference (often only a tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an archive or layout cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The archive or directory is unusable: not a layout, an entry leaving it, bad JSON, a
    /// missing blob, a limit passed.
    #[error("importing '{path}': {reason}")]
    Invalid {
        /// The archive or directory.
        path: String,
        /// What is wrong, naming the entry, file or blob.
        reason: String,
    },
    /// A manifest or index does not hash to the digest that names it.
    #[error("importing '{path}': {what} {digest} is corrupt: content hashes to {actual}")]
    DigestMismatch {
        /// The archive or directory.
        path: String,
        /// `manifest` or `index`.
        what: &'static str,
        /// The digest that names it.
        digest: Digest,
        /// What it hashed to.
        actual: Digest,
    },
}

/// Bounds on what staging an archive may write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of regular files staged in all (after decompression of the archive).
    pub bytes: u64,
    /// Entries of the archive read (of any type).
    pub entries: u64,
}

impl Limits {
    /// No bound: for archives the node's own operator hands `nodeagent ctr image import`.
    pub const NONE: Limits = Limits {
        bytes: u64::MAX,
        entries: u64::MAX,
    };
}

/// The reader of a stream that may be gzip (RFC 1952, several members) or zstd (RFC 8878)
/// compressed, told by its magic bytes; plain otherwise.
///
/// # Errors
/// An I/O error from the first read.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 << 10, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buf)?))
    } else {
        Ok(Box::new(buf))
    }
}

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
/// # Errors
/// No name, or a ref name that is no image name (`:v1`, `BB`): a message that asks for
/// `--name`.
pub fn archive_name(desc: &Descriptor) -> Result<String, String> {
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

/// An OCI layout to read images from: either a directory, or blobs staged from an archive.
#[derive(Debug)]
pub struct Layout {
    origin: PathBuf,
    dir: Option<PathBuf>,
    staged: HashMap<Digest, PathBuf>,
    index: Index,
    /// Keeps the staging directory alive until the layout is dropped.
    _staging: Option<tempfile::TempDir>,
}

impl Layout {
    /// Opens the layout directory, OCI archive or docker-save archive at `path`; an archive is
    /// staged in a new directory under `scratch` (removed when the layout is dropped), within
    /// `limits`.
    ///
    /// # Errors
    /// [`LayoutError::Invalid`] naming what is wrong: neither an `index.json` nor a
    /// `manifest.json`, an entry or link that leaves the archive, JSON that does not parse,
    /// a file `manifest.json` names that is missing, a limit passed, an I/O failure.
    pub fn open(path: &Path, scratch: &Path, limits: Limits) -> Result<Self, LayoutError> {
        let err = |reason: String| LayoutError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.is_dir() {
            let index = read_json(&path.join("index.json"), "index.json").map_err(err)?;
            return Ok(Self {
                origin: path.to_path_buf(),
                dir: Some(path.to_path_buf()),
                staged: HashMap::new(),
                index,
                _staging: None,
            });
        }
        let staging = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(scratch)
            .map_err(|e| err(format!("staging in {}: {e}", scratch.display())))?;
        let files = stage_archive(path, staging.path(), limits).map_err(err)?;
        let (index, staged) = if let Some(idx) = files.get("index.json") {
            let index: Index = read_json(idx, "index.json").map_err(err)?;
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
        Ok(Self {
            origin: path.to_path_buf(),
            dir: None,
            staged,
            index,
            _staging: Some(staging),
        })
    }

    /// The archive or directory it was opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The layout's `index.json` (synthesized for a docker-save archive).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// An [`LayoutError::Invalid`] about this layout.
    pub fn err(&self, reason: impl Into<String>) -> LayoutError {
        LayoutError::Invalid {
            path: self.origin.display().to_string(),
            reason: reason.into(),
        }
    }

    /// The file holding blob `d`, not yet verified.
    ///
    /// # Errors
    /// The layout lacks it.
    pub fn blob_path(&self, d: &Digest) -> Result<PathBuf, LayoutError> {
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

    /// Reads a small blob, refusing one larger than `limit` bytes; the caller verifies the
    /// digest.
    ///
    /// # Errors
    /// Missing, unreadable or too large.
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(d)?;
        read_bounded(&p, limit).map_err(|e| self.err(format!("blob {d}: {e}")))
    }

    /// Reads a manifest or index blob and checks it against its digest.
    ///
    /// # Errors
    /// As [`Layout::read_small`] with [`MAX_MANIFEST_BYTES`], and
    /// [`LayoutError::DigestMismatch`].
    pub fn read_verified(&self, desc: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        let bytes = self.read_small(&desc.digest, MAX_MANIFEST_BYTES)?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(LayoutError::DigestMismatch {
                path: self.origin.display().to_string(),
                what: "manifest",
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// The content of the file at `path`, refusing more than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut out))
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(out)
}

/// A JSON document of the layout (`index.json`, `manifest.json`), at most
/// [`MAX_MANIFEST_BYTES`].
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, name: &str) -> Result<T, String> {
    let bytes = read_bounded(path, MAX_MANIFEST_BYTES).map_err(|e| format!("{name}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))
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

/// Copies the regular files of an archive into `staging` under numbered names, within
/// `limits`. Returns archive path → staged file (symlinks resolved within the archive).
fn stage_archive(
    archive: &Path,
    staging: &Path,
    limits: Limits,
) -> Result<HashMap<String, PathBuf>, String> {
    let f = File::open(archive).map_err(|e| e.to_string())?;
    let reader = decompress(BufReader::new(f)).map_err(|e| e.to_string())?;
    let mut tar = tar::Archive::new(reader);
    let mut files = HashMap::new();
    let mut links = Vec::new();
    let mut bytes = 0u64;
    for (n, entry) in tar.entries().map_err(|e| e.to_string())?.enumerate() {
        if n as u64 >= limits.entries {
            return Err(format!("more than {} entries", limits.entries));
        }
        let mut entry = entry.map_err(|e| format!("reading archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        if std::str::from_utf8(&raw).is_err() {
            return Err(format!(
                "entry '{}' has a name that is not UTF-8",
                String::from_utf8_lossy(&raw)
            ));
        }
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
                let room = limits.bytes.saturating_sub(bytes);
                let copied = io::copy(&mut (&mut entry).take(room.saturating_add(1)), &mut out)
                    .map_err(|e| format!("reading entry '{path}': {e}"))?;
                if copied > room {
                    return Err(format!(
                        "its files hold more than {} bytes (at entry '{path}')",
                        limits.bytes
                    ));
                }
                bytes += copied;
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
    let entries: Vec<DockerSaveEntry> = read_json(mf, "manifest.json")?;
    let mut staged = HashMap::new();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.into()),
        manifests: Vec::new(),
    };
    // Each file is hashed once, however often `manifest.json` names it (a layer repeated
    // in an image, or shared by its images).
    let mut described: HashMap<String, (Digest, u64, bool)> = HashMap::new();
    let mut describe = |path: &str,
                        staged: &mut HashMap<Digest, PathBuf>|
     -> Result<(Digest, u64, bool), String> {
        if let Some(known) = described.get(path) {
            return Ok(known.clone());
        }
        let p = files
            .get(path)
            .ok_or_else(|| format!("manifest.json names '{path}', which the archive lacks"))?;
        let mut f = BufReader::new(File::open(p).map_err(|e| e.to_string())?);
        let gz = {
            let head = f.fill_buf().map_err(|e| e.to_string())?;
            head.starts_with(&[0x1f, 0x8b])
        };
        let (d, n) = HashingReader::new(f).finish().map_err(|e| e.to_string())?;
        staged.insert(d.clone(), p.clone());
        described.insert(path.to_string(), (d.clone(), n, gz));
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
            let mut annotations = BTreeMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `append_data` refuses `..`; a hostile archive is written by hand.
            h.as_gnu_mut().expect("gnu").name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *body).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn open(bytes: &[u8], limits: Limits) -> Result<Layout, LayoutError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.tar");
        fs::write(&p, bytes).expect("write");
        let r = Layout::open(&p, dir.path(), limits);
        drop(dir);
        r
    }

    #[test]
    fn an_entry_leaving_the_archive_is_refused_by_its_path() {
        let e = open(&tar_with(&[("../evil", b"x")]), Limits::NONE).expect_err("escapes");
        assert!(e.to_string().contains("entry '../evil' escapes"), "{e}");
    }

    #[test]
    fn an_entry_whose_name_is_not_utf8_is_refused_saying_so() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_gnu_mut().expect("gnu").name[..4].copy_from_slice(b"a\xffb\xfe");
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("append");
        let e = open(&b.into_inner().expect("tar"), Limits::NONE).expect_err("not UTF-8");
        assert!(
            e.to_string()
                .ends_with("entry 'a\u{fffd}b\u{fffd}' has a name that is not UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn staging_stops_at_its_limits() {
        let big = vec![0u8; 4096];
        let e = open(
            &tar_with(&[("a", &big), ("b", &big)]),
            Limits {
                bytes: 6000,
                entries: 10,
            },
        )
        .expect_err("too big");
        assert!(e.to_string().contains("more than 6000 bytes"), "{e}");
        let e = open(
            &tar_with(&[("a", b"1"), ("b", b"2"), ("c", b"3")]),
            Limits {
                bytes: 1 << 20,
                entries: 2,
            },
        )
        .expect_err("too many");
        assert!(e.to_string().contains("more than 2 entries"), "{e}");
    }

    #[test]
    fn a_docker_save_layer_named_many_times_is_listed_each_time() {
        let layer = vec![7u8; 1 << 20];
        let names = vec!["\"l.tar\""; 300].join(",");
        let mf = format!(r#"[{{"Config":"c.json","RepoTags":["bb:v1"],"Layers":[{names}]}}]"#);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.tar");
        let archive = tar_with(&[
            ("c.json", b"{}"),
            ("l.tar", &layer),
            ("manifest.json", mf.as_bytes()),
        ]);
        fs::write(&p, archive).expect("write");
        let layout = Layout::open(&p, dir.path(), Limits::NONE).expect("a docker-save archive");
        let desc = layout.index().manifests[0].clone();
        let m: manifest::Manifest =
            serde_json::from_slice(&layout.read_verified(&desc).expect("its manifest"))
                .expect("a manifest");
        assert_eq!(m.layers.len(), 300);
        assert!(m
            .layers
            .iter()
            .all(|l| l.digest == Digest::of(&layer) && l.size == layer.len() as u64));
    }

    #[test]
    fn bad_json_and_non_layouts_are_named() {
        let e = open(&tar_with(&[("index.json", b"{nope")]), Limits::NONE).expect_err("json");
        assert!(e.to_string().contains("index.json:"), "{e}");
        let e = open(&tar_with(&[("hello", b"x")]), Limits::NONE).expect_err("not a layout");
        assert!(e.to_string().contains("neither an OCI layout"), "{e}");
        let e = open(
            &tar_with(&[(
                "manifest.json",
                br#"[{"Config":"c.json","Layers":["l.tar"]}]"#,
            )]),
            Limits::NONE,
        )
        .expect_err("missing config");
        assert!(e.to_string().contains("names 'c.json'"), "{e}");
    }
}
