//! OCI image fixtures: layers built entry by entry (including hostile ones), OCI layouts,
//! oci-archive tars and docker-save archives, and a canonical listing of unpacked trees.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `b`.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer tar built entry by entry. Names are written raw into the header, so hostile paths
/// (`..`, absolute) can be expressed.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layer")
    }
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let name = path.as_bytes();
        assert!(name.len() < 100, "fixture paths stay short");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h
    }

    fn add(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).expect("append to in-memory tar");
        self
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(Self::header(path, tar::EntryType::Directory, mode, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.add(
            Self::header(path, tar::EntryType::Regular, mode, data.len() as u64),
            data,
        )
    }

    /// A regular file owned by uid/gid.
    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.add(h, data)
    }

    /// A file with a `user.*` extended attribute (PAX SCHILY.xattr record).
    pub fn file_with_xattr(
        &mut self,
        path: &str,
        data: &[u8],
        key: &str,
        value: &str,
    ) -> &mut Self {
        let rec = format!("SCHILY.xattr.{key}={value}\n");
        let mut len = rec.len() + 2;
        while len != len.to_string().len() + 1 + rec.len() {
            len += 1;
        }
        let pax = format!("{len} {rec}");
        self.add(
            Self::header(
                "PaxHeader",
                tar::EntryType::XHeader,
                0o644,
                pax.len() as u64,
            ),
            pax.as_bytes(),
        );
        self.file(path, data, 0o644)
    }

    /// A symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Symlink, 0o777, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.add(h, &[])
    }

    /// A hardlink to an earlier entry.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Link, 0o644, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.add(h, &[])
    }

    /// A character device node (which the store must skip).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("ustar");
        h.set_device_minor(minor).expect("ustar");
        self.add(h, &[])
    }

    /// The uncompressed tar.
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish in-memory tar")
    }
}

/// Compresses a layer tar.
pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// One single-platform image of a fixture.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layer tars (uncompressed) with the compression to ship them in.
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Default command.
    pub cmd: Vec<String>,
}

/// A written image: digests a test checks against.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest digest.
    pub manifest: String,
    /// Manifest size.
    pub manifest_size: usize,
    /// Layer blob digests.
    pub layers: Vec<String>,
    /// Layer diffIDs.
    pub diff_ids: Vec<String>,
    /// Config digest.
    pub config: String,
    /// Config bytes.
    pub config_bytes: Vec<u8>,
    /// Architecture.
    pub arch: String,
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Result<String> {
    let d = digest(bytes);
    let p = layout.join("blobs/sha256").join(&d[7..]);
    fs::create_dir_all(p.parent().expect("parent"))?;
    fs::write(&p, bytes).with_context(|| p.display().to_string())?;
    Ok(d)
}

/// Writes one image's blobs (layers, config, manifest) into `layout`.
pub fn write_image(layout: &Path, spec: &ImageSpec) -> Result<BuiltImage> {
    write_image_with(layout, spec, &json!({}))
}

/// Writes one image's blobs like [`write_image`], with the fields of `extra` (e.g.
/// `{"Volumes": {"/data": {}}}`) added to its configuration's `config`.
pub fn write_image_with(
    layout: &Path,
    spec: &ImageSpec,
    extra: &serde_json::Value,
) -> Result<BuiltImage> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (tar, c) in &spec.layers {
        diff_ids.push(digest(tar));
        let blob = compress(tar, *c);
        let d = put_blob(layout, &blob)?;
        let media = match c {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        descs.push(json!({"mediaType": media, "digest": d, "size": blob.len()}));
        layers.push(d);
    }
    let mut config = json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": spec.arch,
        "os": "linux",
        "config": {"Cmd": spec.cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(fields) = extra.as_object() {
        for (k, v) in fields {
            config["config"][k] = v.clone();
        }
    }
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = put_blob(layout, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    });
    let mbytes = serde_json::to_vec(&manifest)?;
    let m = put_blob(layout, &mbytes)?;
    Ok(BuiltImage {
        manifest: m,
        manifest_size: mbytes.len(),
        layers,
        diff_ids,
        config: config_digest,
        config_bytes,
        arch: spec.arch.clone(),
    })
}

/// Writes an OCI layout with one image under `ref_name` (the `org.opencontainers.image.ref.name`
/// annotation, as skopeo and umoci write it; none when empty).
pub fn write_layout(layout: &Path, ref_name: &str, spec: &ImageSpec) -> Result<BuiltImage> {
    write_layout_with(layout, ref_name, spec, &json!({}))
}

/// Writes an OCI layout like [`write_layout`] whose image configuration also has `extra`.
pub fn write_layout_with(
    layout: &Path,
    ref_name: &str,
    spec: &ImageSpec,
    extra: &serde_json::Value,
) -> Result<BuiltImage> {
    let img = write_image_with(layout, spec, extra)?;
    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": img.manifest, "size": img.manifest_size,
    });
    if !ref_name.is_empty() {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
    }
    let index = json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(img)
}

/// Writes an OCI layout whose `ref_name` points to a multi-platform index of `specs`.
pub fn write_multiarch_layout(
    layout: &Path,
    ref_name: &str,
    specs: &[ImageSpec],
) -> Result<Vec<BuiltImage>> {
    let imgs: Vec<BuiltImage> = specs
        .iter()
        .map(|s| write_image(layout, s))
        .collect::<Result<_>>()?;
    let entries: Vec<_> = imgs
        .iter()
        .map(|i| {
            let mut platform = json!({"os": "linux", "architecture": i.arch});
            if i.arch == "arm64" {
                platform["variant"] = json!("v8");
            }
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": i.manifest, "size": i.manifest_size, "platform": platform})
        })
        .collect();
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries,
    }))?;
    let d = put_blob(layout, &inner)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": inner.len(),
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(imgs)
}

/// Writes an OCI layout whose `ref_name` points to an index with one entry per `(spec,
/// platform)`, the platform as the index states it (e.g. `linux/amd64/v3`); the images' configs
/// name no variant, as most builders leave it.
pub fn write_platform_layout(
    layout: &Path,
    ref_name: &str,
    entries: &[(ImageSpec, &str)],
) -> Result<Vec<BuiltImage>> {
    let mut imgs = Vec::new();
    let mut descs = Vec::new();
    for (spec, platform) in entries {
        let img = write_image(layout, spec)?;
        let parts: Vec<&str> = platform.split('/').collect();
        let mut p = json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            p["variant"] = json!(v);
        }
        descs.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.manifest, "size": img.manifest_size, "platform": p}));
        imgs.push(img);
    }
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs,
    }))?;
    let d = put_blob(layout, &inner)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": inner.len(),
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(imgs)
}

/// Tars a layout directory into an oci-archive.
pub fn tar_dir(dir: &Path, out: &Path) -> Result<()> {
    let mut b = tar::Builder::new(fs::File::create(out)?);
    b.append_dir_all(".", dir)?;
    b.finish()?;
    Ok(())
}

/// Writes a `docker save` archive (legacy format: `<n>/layer.tar`, `manifest.json`).
pub fn write_docker_save(
    out: &Path,
    repo_tag: &str,
    spec: &ImageSpec,
    img: &BuiltImage,
) -> Result<()> {
    let mut b = tar::Builder::new(fs::File::create(out)?);
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data)?;
        Ok(())
    };
    let config_name = format!("{}.json", &img.config[7..]);
    add(&config_name, &img.config_bytes)?;
    let mut layer_paths = Vec::new();
    for (i, (tar, _)) in spec.layers.iter().enumerate() {
        let p = format!("{i}/layer.tar");
        add(&p, tar)?;
        layer_paths.push(p);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]);
    add("manifest.json", &serde_json::to_vec(&manifest)?)?;
    b.finish()?;
    Ok(())
}

/// The busybox binary from Debian's busybox-static.
pub fn busybox() -> Vec<u8> {
    fs::read("/bin/busybox").expect("/bin/busybox missing: install Debian's busybox-static")
}

/// The standard test image: busybox with applet links, then a layer that deletes a file
/// (whiteout) and replaces a directory's contents (opaque), then a zstd layer with an xattr.
pub fn busybox_image(arch: &str) -> ImageSpec {
    let mut base = Layer::new();
    base.dir("bin", 0o755)
        .file("bin/busybox", &busybox(), 0o755);
    for applet in [
        "sh", "echo", "cat", "ls", "true", "sleep", "httpd", "wget", "nc", "ip", "hostname",
        "mkdir", "timeout", "nslookup", "false", "wc", "stty",
    ] {
        base.symlink(&format!("bin/{applet}"), "busybox");
    }
    base.hardlink("bin/busybox-hardlink", "bin/busybox")
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
            0o644,
        )
        .dir("data", 0o755)
        .file("data/keep", b"keep\n", 0o644)
        .file("data/old", b"old\n", 0o600)
        .dir("data/dir", 0o750)
        .file("data/dir/lower", b"lower\n", 0o644)
        .file_owned("data/owned", b"owned by 1000\n", 0o4755, 1000, 1000)
        .dir("tmp", 0o1777)
        .file("arch", arch.as_bytes(), 0o644);
    let mut upper = Layer::new();
    upper
        .file("data/.wh.old", b"", 0o644)
        .file("data/dir/.wh..wh..opq", b"", 0o644)
        .file("data/dir/new", b"new\n", 0o644)
        .char_device("dev-null-from-image", 1, 3);
    let mut top = Layer::new();
    top.dir("etc", 0o755).file_with_xattr(
        "etc/motd",
        b"hello from flotilla\n",
        "user.flotilla",
        "yes",
    );
    ImageSpec {
        layers: vec![
            (base.finish(), Compression::Gzip),
            (upper.finish(), Compression::None),
            (top.finish(), Compression::Zstd),
        ],
        arch: arch.to_string(),
        cmd: vec!["/bin/sh".into()],
    }
}

/// A canonical description of every entry under `root`: type, mode, owner, content digest,
/// link target, device numbers, and the xattrs that matter (`user.*`, overlay opaque).
pub fn tree_listing(root: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::result::Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root)?.display().to_string();
        let m = fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink->{}", fs::read_link(&p)?.display())
        } else if ft.is_char_device() {
            format!(
                "chardev {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else if ft.is_file() {
            format!("file {} nlink={}", digest(&fs::read(&p)?), m.nlink())
        } else {
            "other".to_string()
        };
        let mut xattrs = Vec::new();
        if !ft.is_symlink() {
            for name in ["user.flotilla", "trusted.overlay.opaque"] {
                let mut buf = [0u8; 64];
                if let Ok(n) = rustix::fs::lgetxattr(&p, name, &mut buf) {
                    xattrs.push(format!("{name}={}", String::from_utf8_lossy(&buf[..n])));
                }
            }
        }
        out.insert(
            rel,
            format!(
                "{what} mode={:o} uid={} gid={} {}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xattrs.join(",")
            ),
        );
        if ft.is_dir() {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

/// A layer holding `binary` at `/probe` plus the shared libraries `ldd` says it needs, at the
/// paths the dynamic linker looks for them.
pub fn host_binary_layer(binary: &Path) -> Result<Vec<u8>> {
    host_binaries_layer(&[(binary, "probe")])
}

/// A layer holding each host `binary` at its path in the image (relative, e.g. `bin/getent`;
/// its directories are made) plus the shared libraries `ldd` says they need, at the paths the
/// dynamic linker looks for them. Static binaries need none.
pub fn host_binaries_layer(binaries: &[(&Path, &str)]) -> Result<Vec<u8>> {
    let mut layer = Layer::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = std::collections::BTreeMap::new();
    let add_dirs = |rel: &str, dirs: &mut std::collections::BTreeSet<String>| {
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    };
    for (binary, at) in binaries {
        let out = std::process::Command::new("ldd").arg(binary).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let rel = path.trim_start_matches('/').to_string();
            add_dirs(&rel, &mut dirs);
            if let std::collections::btree_map::Entry::Vacant(e) = files.entry(rel) {
                e.insert(fs::read(path).with_context(|| path.to_string())?);
            }
        }
        add_dirs(at, &mut dirs);
        files.insert(
            at.to_string(),
            fs::read(binary).with_context(|| binary.display().to_string())?,
        );
    }
    for d in &dirs {
        layer.dir(d, 0o755);
    }
    for (rel, bytes) in &files {
        layer.file(rel, bytes, 0o755);
    }
    Ok(layer.finish())
}
