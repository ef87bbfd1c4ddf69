//! Images fetched from a content store that is not a registry: the control plane's, over the
//! node's own session (the agent implements [`BlobSource`] on it). The source names an image
//! by its manifest's descriptor; the store fetches the manifest, the config and each layer
//! blob through it, and verifies each against its digest and size as it does a registry's.
//!
//! A layer's bytes go to `ingest/<hex>.<source>.partial` and stay there when a transfer is
//! cut, so the next attempt — in the same pull, or a later one after the agent restarted —
//! asks only for what is missing (from the partial file's length). A blob whose whole content
//! does not hash to its digest is deleted and the pull fails naming it: nothing a source sends
//! is trusted.

use std::future::Future;
use std::pin::Pin;

use tokio::io::AsyncWrite;

use super::digest::Digest;

/// Where the bytes of a fetch go: a partial file, or memory for manifests and configs.
pub type BlobSink<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

/// A fetch in flight: answers the bytes written to the sink.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, FetchError>> + Send + 'a>>;

/// A content store that serves blobs by digest from a byte offset.
pub trait BlobSource: Send + Sync {
    /// Who serves, as logs and errors name it ("the control plane").
    fn name(&self) -> &str;

    /// A short token for partial files' names (`[a-z0-9-]`): bytes from one source are never
    /// completed by another.
    fn tag(&self) -> &str;

    /// Writes the bytes of blob `digest` (of `size` bytes in all) from byte `offset` to its
    /// end into `out`, calling `progress` with the bytes written so far by this call; answers
    /// how many it wrote. A source must not write past `size - offset` bytes, and must fail
    /// (not write) when the blob it holds is not `size` bytes long.
    ///
    /// # Errors
    /// [`FetchError`]: transient when the same request may succeed later (the session was
    /// lost); not when the source refused (it does not hold the blob).
    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        size: u64,
        out: BlobSink<'a>,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> FetchFuture<'a>;
}

/// Why a [`BlobSource`] fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct FetchError {
    /// What happened, naming the blob.
    pub reason: String,
    /// Whether trying again (resuming) may help.
    pub transient: bool,
}

impl FetchError {
    /// A failure that trying again may cure (the session went away).
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            transient: true,
        }
    }

    /// A failure that trying again will not cure (refused, malformed, too long).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            transient: false,
        }
    }
}

/// A bounded in-memory sink for manifests and configs: refuses to grow past `limit`.
pub(crate) struct Bounded {
    pub bytes: Vec<u8>,
    limit: usize,
}

impl Bounded {
    pub fn new(limit: u64) -> Self {
        Self {
            bytes: Vec::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "more than {} bytes",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::image::manifest::{Descriptor, Platform, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
    use crate::image::{ImageStore, ImageStoreError};

    /// A content store in memory: each fetch is recorded as (digest, offset); the first fetch
    /// of `cut` stops after `cut_after` bytes, as a lost session would.
    #[derive(Default)]
    struct Memory {
        blobs: HashMap<Digest, Vec<u8>>,
        asked: Mutex<Vec<(Digest, u64)>>,
        cut: Option<(Digest, u64)>,
        /// Bytes written past the blob's end (a hostile source).
        extra: usize,
    }

    impl BlobSource for Memory {
        fn name(&self) -> &str {
            "the test store"
        }

        fn tag(&self) -> &str {
            "test"
        }

        fn fetch<'a>(
            &'a self,
            digest: &'a Digest,
            offset: u64,
            _size: u64,
            out: BlobSink<'a>,
            progress: &'a (dyn Fn(u64) + Send + Sync),
        ) -> FetchFuture<'a> {
            Box::pin(async move {
                let first = {
                    let mut asked = self.asked.lock().expect("asked");
                    asked.push((digest.clone(), offset));
                    asked.iter().filter(|(d, _)| d == digest).count() == 1
                };
                let blob = self
                    .blobs
                    .get(digest)
                    .ok_or_else(|| FetchError::permanent(format!("{digest} not held")))?;
                let start = usize::try_from(offset).expect("offset");
                let mut bytes = blob[start..].to_vec();
                bytes.extend(std::iter::repeat_n(0u8, self.extra));
                let cut = match &self.cut {
                    Some((d, at)) if d == digest && first => Some(*at as usize - start),
                    _ => None,
                };
                let send = cut.map_or(bytes.len(), |c| c.min(bytes.len()));
                out.write_all(&bytes[..send])
                    .await
                    .map_err(|e| FetchError::permanent(e.to_string()))?;
                progress(send as u64);
                match cut {
                    Some(_) => Err(FetchError::transient("the session was lost")),
                    None => Ok(send as u64),
                }
            })
        }
    }

    /// One image of one layer (a 64 KiB file, uncompressed tar): the source holding its
    /// blobs, the manifest's descriptor, the layer's digest.
    fn image() -> (Memory, Descriptor, Digest) {
        let mut tar = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "data", data.as_slice())
            .expect("entry");
        let layer = tar.into_inner().expect("tar");
        let layer_digest = Digest::of(&layer);
        let host = Platform::host();
        let config = serde_json::to_vec(&serde_json::json!({
            "os": host.os, "architecture": host.architecture, "variant": host.variant,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
            "config": {}
        }))
        .expect("config");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer_digest.to_string(), "size": layer.len()}]
        }))
        .expect("manifest");
        let desc = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&manifest),
            size: manifest.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        let mut source = Memory::default();
        for b in [manifest, config, layer] {
            source.blobs.insert(Digest::of(&b), b);
        }
        (source, desc, layer_digest)
    }

    fn pull(
        dir: &std::path::Path,
        source: Arc<Memory>,
        desc: &Descriptor,
    ) -> Result<crate::image::ImageRecord, ImageStoreError> {
        let store = ImageStore::open(dir).expect("store");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(store.pull_from_source("shop/app:1", desc, source, Arc::new(|_| {})))
    }

    #[test]
    fn a_cut_layer_transfer_goes_on_from_the_bytes_held() {
        let (mut source, desc, layer) = image();
        source.cut = Some((layer.clone(), 40_000));
        let source = Arc::new(source);
        let dir = tempfile::tempdir().expect("dir");
        let rec = pull(dir.path(), source.clone(), &desc).expect("pulled");
        assert_eq!(rec.name, "docker.io/shop/app:1");
        assert_eq!(rec.digest, desc.digest);
        assert_eq!(rec.source, "test");
        let asked: Vec<u64> = source
            .asked
            .lock()
            .expect("asked")
            .iter()
            .filter(|(d, _)| *d == layer)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            asked,
            [0, 40_000],
            "the second try asks from the bytes held"
        );
        let ingest = dir.path().join("images/ingest");
        assert_eq!(
            std::fs::read_dir(&ingest).expect("ingest").count(),
            0,
            "the partial file is gone once the layer is unpacked"
        );
    }

    #[test]
    fn content_that_is_not_its_digest_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut source, desc, layer) = image();
        let blob = source.blobs.get_mut(&layer).expect("layer");
        let middle = blob.len() / 2;
        blob[middle] ^= 0xff;
        let e = pull(dir.path(), Arc::new(source), &desc).expect_err("corrupt layer");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "pulling image 'docker.io/shop/app:1' from the test store: layer {layer} is \
                 corrupt: content hashes to sha256:"
            )),
            "{text}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("images/ingest"))
                .expect("ingest")
                .count(),
            0,
            "the corrupt bytes are not kept to resume from"
        );

        // A manifest that is not its digest, and a source that sends more than a blob's size.
        let (source, mut desc, _) = image();
        desc.digest = Digest::of(b"another");
        let e = pull(dir.path(), Arc::new(source), &desc).expect_err("corrupt manifest");
        assert!(
            e.to_string().contains("from the test store: sha256:"),
            "{e}"
        );
        let (mut source, desc, _) = image();
        source.extra = 1;
        let e = pull(dir.path(), Arc::new(source), &desc).expect_err("too long");
        assert!(e.to_string().contains("more than"), "{e}");
    }
}
