//! The control plane pulls an image from a registry into its content store: for an operator
//! (`flotilla image push REF`, `POST /v1/images/pull`) and for a node that cannot reach the
//! registry itself (pull-through: `AgentRequest::Image { pull: true }` after the node's own pull
//! failed as unreachable; see `agents.rs`).
//!
//! A pull tries each of the control plane's `registry_mirrors` of the image's registry in order,
//! then the registry (containerd's `hosts.toml` order, as a node's pull). It writes the one image
//! it picks (the asked platform, else the control plane's own, from an index) as an OCI layout
//! directory under the store's `tmp/` — manifest, config and layers fetched with
//! `flotilla_oci::registry`, a layer the store already holds whole linked rather than fetched —
//! then stores it as a push stores an archive ([`ContentStore::ingest_pulled`]: every blob
//! verified by digest and size) and commits the name with the core. Nothing a registry sends is
//! trusted before its digest is checked. One pull of a name runs at a time; a second waits for
//! it.

use std::path::Path;
use std::sync::Arc;

use flotilla_api::images::StoredImage;
use flotilla_oci::manifest::{self, Descriptor, ManifestKind, Platform, MAX_CONFIG_BYTES};
use flotilla_oci::registry::{
    self, Failure, PullSource, RegistryClient, RegistryError, RegistryOptions,
};
use flotilla_oci::{Digest, ImageRef, ReferenceError};
use orchestratord::cluster::{Command, Operator, Reply as CoreReply};

use crate::content::{ContentStore, PushError};
use crate::plane::Plane;

/// Tries of one layer's download before the pull gives up on a source: a transfer cut part way
/// goes on from the bytes that arrived (an HTTP range).
const LAYER_TRIES: usize = 4;

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullAsk {
    /// The image reference, as a task definition has it.
    pub reference: String,
    /// The platform to pick from an index; the control plane's own when `None`.
    pub platform: Option<Platform>,
    /// The registry is reached over plain HTTP (an operator's `--insecure`; never a node's).
    pub insecure: bool,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Every source failed: each mirror named with what it answered, the registry last.
    #[error("pulling image '{image}': {detail}")]
    Registry {
        /// The image.
        image: String,
        /// What each source answered.
        detail: String,
        /// What the registry's own answer comes down to, when it is one.
        failure: Option<Failure>,
    },
    /// What the registry sent is not a usable image, or the store's disk failed.
    #[error("pulling image '{image}': {source}")]
    Store {
        /// The image.
        image: String,
        /// What is wrong.
        source: PushError,
    },
    /// The core did not record the image.
    #[error("pulling image '{image}': recording it: {reason}")]
    Record {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
}

/// Pulls `ask` into the content store and records it with the core; answers the image
/// recorded. With `unless_held`, an image the store already holds under the name for the
/// asked platform is answered as it is (a node's pull-through: a second node asking while the
/// first pull runs waits for it and gets its result). The store keeps one platform per name:
/// a pull for another platform replaces it.
///
/// # Errors
/// [`PullError`] naming the image and, for a registry's fault, each source tried.
pub async fn pull(
    plane: &Plane,
    ask: &PullAsk,
    unless_held: bool,
) -> Result<StoredImage, PullError> {
    let r = ImageRef::parse(&ask.reference)?;
    let name = r.name();
    let puller = &plane.puller;
    let lock = puller.lock_of(&name);
    let _turn = lock.lock().await;
    if unless_held {
        if let Ok(CoreReply::Image(i)) = plane
            .run(Command::Operator(Operator::GetImage(name.clone())))
            .await
        {
            let matcher = match &ask.platform {
                Some(p) => manifest::PlatformMatcher::new(p, false),
                None => manifest::PlatformMatcher::host(),
            };
            if i.platform
                .parse::<Platform>()
                .is_ok_and(|p| matcher.rank(&p).is_some())
            {
                return Ok(i);
            }
        }
    }
    let content = plane.content.clone();
    let store_err = |source| PullError::Store {
        image: name.clone(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(content.tmp())
        .map_err(|e| {
            store_err(PushError::Io {
                path: content.tmp(),
                source: e,
            })
        })?;
    let http = puller.http().map_err(|e| PullError::Registry {
        image: name.clone(),
        detail: format!("the HTTP client: {e}"),
        failure: None,
    })?;
    let mut said = Vec::new();
    let mut fetched = None;
    for source in registry::pull_sources(&puller.mirrors, &r.registry) {
        let (client, who) = match &source {
            PullSource::Mirror(m) => (
                RegistryClient::for_mirror(http.clone(), m, &r.repository),
                format!("mirror {m}"),
            ),
            PullSource::Origin => (
                RegistryClient::new(
                    http.clone(),
                    &r.registry,
                    &r.repository,
                    RegistryOptions {
                        insecure: ask.insecure,
                        ..Default::default()
                    },
                ),
                String::new(),
            ),
        };
        // Each source writes its own layout: bytes one sent are never completed by another.
        let _ = std::fs::remove_dir_all(dir.path().join("blobs"));
        match write_layout(&client, &r, &content, dir.path(), ask.platform.as_ref()).await {
            Ok(()) => {
                fetched = Some(who);
                break;
            }
            Err(e) => {
                let failure = match &e {
                    Fault::Registry(e) => e.failure(),
                    Fault::Image(_) => None,
                };
                let text = e.to_string();
                tracing::info!(image = %name, source = %if who.is_empty() { r.registry.as_str() } else { who.as_str() }, "pull: {text}");
                said.push((who, text, failure));
            }
        }
    }
    let Some(from) = fetched else {
        let failure = said.last().and_then(|(_, _, f)| *f);
        let detail = said
            .iter()
            .map(|(who, text, _)| {
                if who.is_empty() {
                    text.clone()
                } else {
                    format!("{who}: {text}")
                }
            })
            .collect::<Vec<_>>()
            .join("; then ");
        return Err(PullError::Registry {
            image: name,
            detail,
            failure,
        });
    };
    // Held until the name is committed: no removal deletes a blob this pull references.
    let gate = content.gate.read().await;
    let stored = {
        let (store, name, platform) = (content.clone(), name.clone(), ask.platform.clone());
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || store.ingest_pulled(&dir, &name, platform.as_ref()))
            .await
    };
    drop(dir);
    let image = match stored {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            drop(gate);
            plane.sweep_content().await;
            return Err(store_err(e));
        }
        Err(e) => {
            return Err(PullError::Record {
                image: name,
                reason: e.to_string(),
            })
        }
    };
    let recorded = plane
        .run(Command::Operator(Operator::PutImages(vec![image])))
        .await;
    drop(gate);
    let image = match recorded {
        Ok(CoreReply::ImagesPushed(mut images)) if images.len() == 1 => images.remove(0),
        Ok(other) => {
            return Err(PullError::Record {
                image: name,
                reason: format!("unexpected answer {other:?}"),
            })
        }
        Err(e) => {
            return Err(PullError::Record {
                image: name,
                reason: e.to_string(),
            })
        }
    };
    if from.is_empty() {
        tracing::info!(image = %image.name, digest = %image.manifest.digest, registry = %r.registry, "image pulled");
    } else {
        tracing::info!(image = %image.name, digest = %image.manifest.digest, source = %from, "image pulled");
    }
    // An image the pull replaced may leave blobs no image references.
    let plane = plane.clone();
    tokio::spawn(async move { plane.sweep_content().await });
    Ok(image)
}

/// Why one source did not give the image.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Image(String),
}

/// Fetches the image `r` names from `client` into the OCI layout directory `dir`: its image
/// manifest (picked from an index by `platform`), config and layers, and an `index.json`
/// listing the manifest. A layer `store` holds whole is linked, not fetched.
async fn write_layout(
    client: &RegistryClient,
    r: &ImageRef,
    store: &Arc<ContentStore>,
    dir: &Path,
    platform: Option<&Platform>,
) -> Result<(), Fault> {
    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(|e| Fault::Image(format!("{}: {e}", blobs.display())))?;
    let write = |d: &Digest, bytes: Vec<u8>| {
        let path = blobs.join(d.hex());
        async move {
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| Fault::Image(format!("{}: {e}", path.display())))
        }
    };
    let wanted = r
        .digest
        .as_ref()
        .map(ToString::to_string)
        .or(r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let top = client.manifest(&wanted).await?;
    let top_digest = Digest::of(&top.body);
    if let Some(pinned) = &r.digest {
        if *pinned != top_digest {
            return Err(Fault::Image(format!(
                "manifest {pinned} is corrupt: content hashes to {top_digest}"
            )));
        }
    }
    let kind = manifest::parse_manifest(top.content_type.as_deref(), &top.body)
        .map_err(|e| Fault::Image(e.to_string()))?;
    let (body, desc, m) = match kind {
        ManifestKind::Image(m) => {
            let media_type = m
                .media_type
                .clone()
                .filter(|t| !t.is_empty())
                .or(top.content_type.clone())
                .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
            let desc = descriptor(media_type, top_digest, top.body.len());
            (top.body, desc, m)
        }
        ManifestKind::Index(index) => {
            let matcher = match platform {
                Some(p) => manifest::PlatformMatcher::new(p, false),
                None => manifest::PlatformMatcher::host(),
            };
            let child = manifest::select_platform(&index, &matcher).map_err(|have| {
                Fault::Image(format!(
                    "its index has no manifest for {} (it has {have})",
                    matcher.platform()
                ))
            })?;
            let fetched = client.manifest(&child.digest.to_string()).await?;
            let actual = Digest::of(&fetched.body);
            if actual != child.digest {
                return Err(Fault::Image(format!(
                    "manifest {} is corrupt: content hashes to {actual}",
                    child.digest
                )));
            }
            match manifest::parse_manifest(Some(&child.media_type), &fetched.body)
                .map_err(|e| Fault::Image(e.to_string()))?
            {
                ManifestKind::Image(m) => {
                    let desc = descriptor(child.media_type.clone(), actual, fetched.body.len());
                    (fetched.body, desc, m)
                }
                ManifestKind::Index(_) => {
                    return Err(Fault::Image(format!(
                        "index entry {} is an index again (one level is read)",
                        child.digest
                    )))
                }
            }
        }
    };
    if m.layers.len() > crate::content::MAX_LAYERS {
        return Err(Fault::Image(format!(
            "{} layers (at most {}, what one overlayfs mount stacks)",
            m.layers.len(),
            crate::content::MAX_LAYERS
        )));
    }
    write(&desc.digest, body).await?;
    let config = client
        .small_blob(&m.config.digest, MAX_CONFIG_BYTES)
        .await?;
    write(&m.config.digest, config).await?;
    for layer in &m.layers {
        let path = blobs.join(layer.digest.hex());
        if path.exists() {
            continue;
        }
        if held_whole(store, &layer.digest).await
            && std::fs::hard_link(store.blob_path(&layer.digest), &path).is_ok()
        {
            continue;
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match client
                .download_blob(&layer.digest, layer.size, &path, &|_| {})
                .await
            {
                Ok(()) => break,
                Err(e) if e.is_transient() && tries < LAYER_TRIES => {
                    tracing::info!(blob = %layer.digest, tries, "pull: {e}: going on from what arrived");
                    tokio::time::sleep(std::time::Duration::from_secs(tries as u64)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [desc],
    });
    tokio::fs::write(dir.join("index.json"), index.to_string())
        .await
        .map_err(|e| Fault::Image(format!("index.json: {e}")))?;
    Ok(())
}

/// Whether the store holds `digest` whole (re-hashed, off the async threads).
async fn held_whole(store: &Arc<ContentStore>, digest: &Digest) -> bool {
    let (store, digest) = (store.clone(), digest.clone());
    tokio::task::spawn_blocking(move || store.holds_intact(&digest))
        .await
        .unwrap_or(false)
}

fn descriptor(media_type: String, digest: Digest, size: usize) -> Descriptor {
    Descriptor {
        media_type,
        digest,
        size: size as u64,
        platform: None,
        annotations: Default::default(),
    }
}
