//! The air-gap path: import of OCI image layouts (a directory, or a tar as `skopeo copy …
//! oci-archive:` writes) and of `docker save` archives. Archives are hostile input like any
//! layer: their entries are staged under the store's `tmp/` by number, never by their own path,
//! and every blob is verified against its digest before use.

use std::path::Path;
use std::sync::Arc;

use flotilla_oci::layout::{archive_name, Limits};
pub(crate) use flotilla_oci::layout::{Layout, LayoutError};

use super::manifest::{self, ManifestKind};
use super::{ImageRecord, ImageRef, ImageStore, ImageStoreError, Platform, ProgressFn, Source};

impl From<LayoutError> for ImageStoreError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::Invalid { path, reason } => ImageStoreError::Import { path, reason },
            LayoutError::DigestMismatch {
                path,
                what,
                digest,
                actual,
            } => ImageStoreError::DigestMismatch {
                image: path,
                what,
                digest,
                actual,
            },
        }
    }
}

impl ImageStore {
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
            tokio::task::spawn_blocking(move || {
                Layout::open(&p, &store.root().join("tmp"), Limits::NONE)
            })
            .await
            .map_err(|e| ImageStoreError::Import {
                path: path.display().to_string(),
                reason: e.to_string(),
            })??
        };
        let layout = Arc::new(layout);
        let entries = layout.index().manifests.clone();
        if entries.is_empty() {
            return Err(layout.err("the layout's index lists no images").into());
        }
        if name.is_some() && entries.len() > 1 {
            return Err(layout
                .err(format!(
                    "--name needs an archive with one image; this one has {}",
                    entries.len()
                ))
                .into());
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
                    return Err(layout
                        .err(format!(
                            "image {} is named {image_name} in the archive, which pins another \
                             digest; pass --name REF",
                            desc.digest
                        ))
                        .into());
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
