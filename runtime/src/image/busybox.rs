//! A small image made from the host's static busybox (Debian's `busybox-static`): one layer
//! with `/bin/busybox`, a link for each of its applets, `/etc/passwd`, `/etc/group` and `/tmp`,
//! written as an OCI image layout that the store imports like any other. It needs no registry,
//! which is what a first try (`flotilla dev`) and an air-gapped site want.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::Platform;

/// Where Debian's busybox-static puts its binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn blob(layout: &Path, bytes: &[u8]) -> io::Result<String> {
    let digest = sha256(bytes);
    let dir = layout.join("blobs").join("sha256");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(&digest["sha256:".len()..]), bytes)?;
    Ok(digest)
}

fn entry(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// Writes the image to the OCI layout `layout` under the name `ref_name`; `busybox` must be a
/// static busybox for this machine (it is asked for its applets).
pub fn write_layout(busybox: &Path, layout: &Path, ref_name: &str) -> io::Result<()> {
    let binary = fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (install Debian's busybox-static)",
                busybox.display()
            ),
        )
    })?;
    let out = Command::new(busybox).arg("--list").output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} --list failed: is it busybox?",
            busybox.display()
        )));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .filter(|a| *a != "busybox")
        .map(str::to_string)
        .collect();

    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        let mut h = entry(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, io::empty())?;
    }
    let mut h = entry(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())?;
    for a in &applets {
        let mut h = entry(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let files: [(&str, &[u8]); 2] = [
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (path, content) in files {
        let mut h = entry(tar::EntryType::Regular, 0o644, content.len() as u64);
        tar.append_data(&mut h, path, content)?;
    }
    let layer = tar.into_inner()?;
    let diff_id = sha256(&layer);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer)?;
    let compressed = gz.finish()?;

    let _ = fs::remove_dir_all(layout);
    fs::create_dir_all(layout)?;
    let layer_digest = blob(layout, &compressed)?;
    // Debian's busybox is built for the architecture's baseline, whatever this CPU's level.
    let host = Platform::host();
    let platform = Platform {
        variant: host.variant.filter(|_| host.architecture == "arm"),
        ..host
    };
    let mut config = json!({
        "architecture": platform.architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = blob(layout, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest, "size": compressed.len(),
        }],
    }))?;
    let manifest_digest = blob(layout, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(())
}
