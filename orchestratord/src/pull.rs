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
//! verified by digest and size, and moved into the store rather than copied, so each layer is
//! written once) and commits the name with the core. Nothing a registry sends is
//! trusted before its digest is checked. One pull of a name runs at a time; a second waits for
//! it.

use std::path::Path;
use std::sync::Arc;

use flotilla_api::images::{ImageSource, StoredImage};
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

/// Most bytes an image's config and layers may add up to, as its manifest gives their sizes
/// (16 GiB, what a pushed archive may hold once staged: [`crate::content::MAX_STAGED_BYTES`]).
/// Checked before any layer is fetched: a manifest cannot make the control plane fill its disk.
pub const MAX_PULL_BYTES: u64 = crate::content::MAX_STAGED_BYTES;

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullAsk {
    /// The image reference, as a task definition has it.
    pub reference: String,
    /// The platform to pick from an index; the control plane's own when `None`.
    pub platform: Option<Platform>,
    /// The registry is reached over plain HTTP (an operator's `--insecure`; never a node's).
    pub insecure: bool,
    /// `platform` is a requirement (an operator's `--platform`): an image for another is
    /// refused, a single one as one picked from an index. Otherwise it only picks from an
    /// index (a node's pull-through: the node checks what it can run, 32-bit ARM on arm64
    /// among it).
    pub require_platform: bool,
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
    /// A pull-through for a platform other than the one the store holds the name for: the
    /// held image is kept (see [`pull`]).
    #[error(
        "image '{image}': the control plane holds it for {held}, not for {asked}; push it under a \
         name per platform for a fleet of both"
    )]
    OtherPlatform {
        /// The image.
        image: String,
        /// The platform the store holds it for.
        held: String,
        /// The platform asked for.
        asked: String,
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

/// Pulls `ask` into the content store and records it with the core, its source named
/// (`ImageSource::Pull`, with `for_node`); answers the image recorded. For a node's
/// pull-through (`for_node`), an image the store already holds
/// under the name is never replaced: answered as it is when it is of the asked platform (a
/// second node asking while the first pull runs waits for it and gets its result), refused
/// when it is of another — the store keeps one platform per name, and a node must not replace
/// what an operator pushed or other nodes fetch. An operator's pull replaces it.
///
/// # Errors
/// [`PullError`] naming the image and, for a registry's fault, each source tried.
pub async fn pull(
    plane: &Plane,
    ask: &PullAsk,
    for_node: Option<&str>,
) -> Result<StoredImage, PullError> {
    let r = ImageRef::parse(&ask.reference)?;
    let name = r.name();
    let puller = &plane.puller;
    let lock = puller.lock_of(&name);
    let _turn = lock.lock().await;
    if for_node.is_some() {
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
            return Err(PullError::OtherPlatform {
                image: name,
                held: i.platform,
                asked: matcher.platform().to_string(),
            });
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
    let from = fetch(&puller.mirrors, &http, &r, ask, &content, dir.path()).await?;
    // Held until the name is committed: no removal deletes a blob this pull references.
    let gate = content.gate.read().await;
    let stored = {
        let (store, name, platform) = (content.clone(), name.clone(), ask.platform.clone());
        let (dir, required) = (dir.path().to_path_buf(), ask.require_platform);
        tokio::task::spawn_blocking(move || {
            store.ingest_pulled(&dir, &name, platform.as_ref(), required)
        })
        .await
    };
    drop(dir);
    let image = match stored {
        Ok(Ok(i)) => StoredImage {
            source: Some(ImageSource::Pull {
                from: if from.is_empty() {
                    r.registry.clone()
                } else {
                    from.clone()
                },
                node: for_node.map(str::to_string),
            }),
            ..i
        },
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

/// Writes the image `r` names into the OCI layout directory `dir` from the first of its
/// sources (`mirrors` of its registry in order, then the registry) that gives it whole: each
/// blob of the right size and digest, else the next source is tried. Answers the source it
/// came from (`mirror URL`; empty for the registry).
///
/// # Errors
/// [`PullError::Registry`] naming each source with what was wrong with it.
async fn fetch(
    mirrors: &registry::RegistryMirrors,
    http: &registry::HttpClient,
    r: &ImageRef,
    ask: &PullAsk,
    content: &Arc<ContentStore>,
    dir: &Path,
) -> Result<String, PullError> {
    let name = r.name();
    let mut said = Vec::new();
    for source in registry::pull_sources(mirrors, &r.registry) {
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
        let _ = std::fs::remove_dir_all(dir.join("blobs"));
        match write_layout(&client, r, content, dir, ask).await {
            Ok(()) => return Ok(who),
            Err(e) => {
                let failure = match &e {
                    Fault::Registry(e) => e.failure(),
                    Fault::Image(_) | Fault::Short { .. } => None,
                };
                // A registry's error names it; what its content is wrong in is said here.
                let text = match &e {
                    Fault::Image(_) | Fault::Short { .. } if who.is_empty() => {
                        format!("registry {}: {e}", r.registry)
                    }
                    // With its causes: "error sending request" alone says nothing of a
                    // refused connection, a failed name lookup or a TLS handshake with a
                    // plain-HTTP server.
                    e => flotilla_api::errors::chain(e),
                };
                tracing::info!(image = %name, source = %if who.is_empty() { r.registry.as_str() } else { who.as_str() }, "pull: {text}");
                said.push((who, text, failure));
            }
        }
    }
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
    let origin_unreachable = said.last().is_some_and(|(who, _, _)| who.is_empty())
        && failure == Some(Failure::Unreachable);
    let detail = if origin_unreachable && !ask.insecure {
        format!(
            "{detail} (a registry served over plain HTTP is pulled from with `--insecure`: \
             `flotilla image push REF --insecure`)"
        )
    } else {
        detail
    };
    Err(PullError::Registry {
        image: name,
        detail,
        failure,
    })
}

/// Why one source did not give the image.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Image(String),
    /// A layer's answer ended, without error, short of its descriptor's size: fetched again
    /// from there.
    #[error("blob {digest}: the answer ended after {held} of its {size} bytes")]
    Short {
        /// The layer.
        digest: Digest,
        /// Bytes of it held.
        held: u64,
        /// Its descriptor's size.
        size: u64,
    },
}

/// Checks the download of `layer` at `path` against its descriptor: [`Fault::Short`] when it
/// holds less than its size, [`Fault::Image`] naming the blob when its content hashes to
/// another digest (the file is removed: it is fetched whole again from the next source).
async fn check_blob(path: &Path, layer: &Descriptor) -> Result<(), Fault> {
    let (p, d) = (path.to_path_buf(), layer.digest.clone());
    let hashed = tokio::task::spawn_blocking(move || {
        // A descriptor of size 0 is not fetched: its file is the empty one.
        if !p.exists() {
            std::fs::write(&p, b"")?;
        }
        flotilla_oci::digest::digest_file(&p)
    })
    .await
    .map_err(|e| Fault::Image(format!("blob {d}: hashing it: {e}")))?;
    let (actual, size) = hashed
        .map_err(|e| Fault::Image(format!("blob {}: {}: {e}", layer.digest, path.display())))?;
    if size < layer.size {
        return Err(Fault::Short {
            digest: layer.digest.clone(),
            held: size,
            size: layer.size,
        });
    }
    if actual != layer.digest {
        let _ = tokio::fs::remove_file(path).await;
        return Err(Fault::Image(format!(
            "blob {} is corrupt: content hashes to {actual}",
            layer.digest
        )));
    }
    Ok(())
}

/// Fetches the image `r` names from `client` into the OCI layout directory `dir`: its image
/// manifest (picked from an index by `platform`), config and layers, and an `index.json`
/// listing the manifest. A layer `store` holds whole is linked, not fetched.
async fn write_layout(
    client: &RegistryClient,
    r: &ImageRef,
    store: &Arc<ContentStore>,
    dir: &Path,
    ask: &PullAsk,
) -> Result<(), Fault> {
    let platform = ask.platform.as_ref();
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
    let total = std::iter::once(&m.config)
        .chain(&m.layers)
        .try_fold(0u64, |sum, d| sum.checked_add(d.size))
        .filter(|t| *t <= MAX_PULL_BYTES);
    if total.is_none() {
        return Err(Fault::Image(format!(
            "manifest {}: its config and layers add up to more than {MAX_PULL_BYTES} bytes",
            desc.digest
        )));
    }
    write(&desc.digest, body).await?;
    let config = client
        .small_blob(&m.config.digest, MAX_CONFIG_BYTES)
        .await?;
    let actual = Digest::of(&config);
    if actual != m.config.digest {
        return Err(Fault::Image(format!(
            "blob {} (the config) is corrupt: content hashes to {actual}",
            m.config.digest
        )));
    }
    // A platform asked for by name is a requirement of a single image too (the store refuses
    // it as well): said before any layer is fetched.
    if let Some(want) = platform.filter(|_| ask.require_platform) {
        let c: manifest::ImageConfig = serde_json::from_slice(&config)
            .map_err(|e| Fault::Image(format!("blob {} (the config): {e}", m.config.digest)))?;
        let have = Platform {
            os: c.os,
            architecture: c.architecture,
            variant: c.variant,
        };
        let matcher = manifest::PlatformMatcher::new(want, false);
        if matcher.rank(&have).is_none() {
            return Err(Fault::Image(format!(
                "it is an image for {have}, not for {} (--platform)",
                matcher.platform()
            )));
        }
    }
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
            let got = client
                .download_blob(&layer.digest, layer.size, &path, &|_| {})
                .await;
            let got = match got {
                Ok(()) => check_blob(&path, layer).await,
                Err(e) => Err(e.into()),
            };
            match got {
                Ok(()) => break,
                Err(Fault::Registry(e)) if e.is_transient() && tries < LAYER_TRIES => {
                    tracing::info!(blob = %layer.digest, tries, "pull: {e}: going on from what arrived");
                    tokio::time::sleep(std::time::Duration::from_secs(tries as u64)).await;
                }
                Err(e @ Fault::Short { .. }) if tries < LAYER_TRIES => {
                    tracing::info!(tries, "pull: {e}: going on from there");
                    tokio::time::sleep(std::time::Duration::from_secs(tries as u64)).await;
                }
                Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A registry on 127.0.0.1 serving `files` (path → content type, body) and answering 404 to
    /// anything else; its port and the count of blob requests it had. Its thread lives as long
    /// as the test process.
    fn serve(files: HashMap<String, (String, Vec<u8>)>) -> (u16, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let port = listener.local_addr().expect("its address").port();
        let (files, blobs) = (Arc::new(files), Arc::new(AtomicUsize::new(0)));
        let counted = blobs.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (files, counted) = (files.clone(), counted.clone());
                std::thread::spawn(move || {
                    let Ok(read) = conn.try_clone() else { return };
                    let mut lines = BufReader::new(read);
                    let mut first = String::new();
                    if lines.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        match lines.read_line(&mut l) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if l == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let path = first.split(' ').nth(1).unwrap_or_default();
                    if path.contains("/blobs/") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, ctype, body) = match files.get(path) {
                        Some((t, b)) => ("200 OK", t.as_str(), b.as_slice()),
                        None => ("404 Not Found", "text/plain", &b"no such thing"[..]),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(body);
                });
            }
        });
        (port, blobs)
    }

    /// An image `team/app:v1` of one layer, as a registry serves it: its files, with the
    /// layer's bytes changed by `spoil`, and the layer's digest. `layer_size` is what the
    /// manifest says of the layer (its real length when `None`).
    fn image(
        spoil: impl Fn(&mut Vec<u8>),
        layer_size: Option<u64>,
    ) -> (HashMap<String, (String, Vec<u8>)>, Digest) {
        let layer = b"a layer's bytes, any will do".to_vec();
        let ld = Digest::of(&layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        )
        .into_bytes();
        let cd = Digest::of(&config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layer_size.unwrap_or(layer.len() as u64),
        )
        .into_bytes();
        let mut served = layer.clone();
        spoil(&mut served);
        let blob = |d: &Digest| format!("/v2/team/app/blobs/{d}");
        let files = HashMap::from([
            (
                "/v2/team/app/manifests/v1".to_string(),
                (manifest::OCI_MANIFEST.to_string(), manifest),
            ),
            (blob(&cd), ("application/octet-stream".into(), config)),
            (blob(&ld), ("application/octet-stream".into(), served)),
        ]);
        (files, ld)
    }

    fn ask(registry: u16) -> PullAsk {
        PullAsk {
            reference: format!("127.0.0.1:{registry}/team/app:v1"),
            platform: None,
            insecure: true,
            require_platform: false,
        }
    }

    /// `fetch` of `a` into `dir` with no mirrors, as [`pull`] runs it.
    fn fetch_plain(
        store: &Arc<ContentStore>,
        a: &PullAsk,
        dir: &Path,
    ) -> Result<String, PullError> {
        let r = ImageRef::parse(&a.reference).expect("a reference");
        let http = registry::http_client().expect("a client");
        rt().block_on(fetch(&Default::default(), &http, &r, a, store, dir))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_manifest_whose_layers_add_up_past_the_limit_is_refused_before_any_layer_is_fetched() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
        let (files, _) = image(|_| {}, Some(u64::MAX / 2));
        let (port, blobs) = serve(files);
        let a = ask(port);
        let e = fetch_plain(&store, &a, dir.path()).expect_err("terabytes are refused");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "pulling image '127.0.0.1:{port}/team/app:v1': registry 127.0.0.1:{port}: manifest sha256:"
            )) && text.ends_with(&format!("add up to more than {MAX_PULL_BYTES} bytes")),
            "{text}"
        );
        // The config is fetched after the check too: nothing but the manifest was asked for.
        assert_eq!(blobs.load(Ordering::SeqCst), 0, "blobs fetched");
    }

    #[test]
    fn what_a_hostile_registry_sends_fails_the_pull_naming_the_registry_and_the_blob() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let run = |files: HashMap<String, (String, Vec<u8>)>| {
            let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
            let (port, _) = serve(files);
            let mut a = ask(port);
            a.platform = Some("linux/amd64".parse().expect("a platform"));
            let e = fetch_plain(&store, &a, dir.path()).expect_err("refused");
            (port, e.to_string())
        };
        let index_type = "application/vnd.oci.image.index.v1+json";
        // An index whose entry for the platform is an index again (which could name the first).
        let inner = format!(r#"{{"schemaVersion":2,"mediaType":"{index_type}","manifests":[]}}"#);
        let inner_digest = Digest::of(inner.as_bytes());
        let outer = format!(
            r#"{{"schemaVersion":2,"mediaType":"{index_type}","manifests":[{{"mediaType":"{index_type}","digest":"{inner_digest}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            inner.len()
        );
        let (port, text) = run(HashMap::from([
            (
                "/v2/team/app/manifests/v1".to_string(),
                (index_type.to_string(), outer.into_bytes()),
            ),
            (
                format!("/v2/team/app/manifests/{inner_digest}"),
                (index_type.to_string(), inner.into_bytes()),
            ),
        ]));
        assert!(
            text.ends_with(&format!(
                "registry 127.0.0.1:{port}: index entry {inner_digest} is an index again (one level is read)"
            )),
            "{text}"
        );
        // A layer longer than its descriptor says.
        let (mut files, layer) = image(|b| b.extend_from_slice(b"more"), None);
        let (port, text) = run(files.clone());
        assert!(
            text.ends_with(&format!(
                "registry 127.0.0.1:{port}, blob {layer}: response larger than 28 bytes refused"
            )),
            "{text}"
        );
        // A config larger than any config may be.
        let config = files
            .keys()
            .find(|k| k.contains("/blobs/") && !k.ends_with(layer.hex()))
            .cloned()
            .expect("the config's path");
        let huge = vec![b' '; MAX_CONFIG_BYTES as usize + 1];
        files.insert(config.clone(), ("application/json".into(), huge));
        let (port, text) = run(files);
        let digest = config.rsplit('/').next().expect("its digest");
        assert!(
            text.ends_with(&format!(
                "registry 127.0.0.1:{port}, blob {digest}: response larger than {MAX_CONFIG_BYTES} bytes refused"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_mirror_that_serves_a_corrupt_layer_is_passed_over_for_the_registry() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let flip = |b: &mut Vec<u8>| b[0] ^= 1;
        let (bad, layer) = image(flip, None);
        let (mirror, _) = serve(bad.clone());
        let (bad_origin, _) = serve(bad);
        let (good, _) = image(|_| {}, None);
        let (origin, _) = serve(good);
        let http = registry::http_client().expect("a client");
        let run = |origin: u16| {
            let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
            let m = vec![format!("http://127.0.0.1:{mirror}")];
            let key = format!("127.0.0.1:{origin}");
            let mirrors =
                registry::RegistryMirrors::new([(key.as_str(), m.as_slice())]).expect("mirrors");
            let a = ask(origin);
            let r = ImageRef::parse(&a.reference).expect("a reference");
            let from = rt().block_on(fetch(&mirrors, &http, &r, &a, &store, dir.path()));
            let stored = from
                .as_ref()
                .ok()
                .map(|_| store.ingest_pulled(dir.path(), &r.name(), None, false));
            (from, stored)
        };
        // Both corrupt: each is named with the blob it spoiled.
        let (from, _) = run(bad_origin);
        let text = from.expect_err("no source gave it whole").to_string();
        assert!(
            text.contains(&format!(
                "mirror http://127.0.0.1:{mirror}: blob {layer} is corrupt: content hashes to"
            )) && text.contains(&format!(
                "; then registry 127.0.0.1:{bad_origin}: blob {layer} is corrupt"
            )),
            "{text}"
        );
        // The registry's good copy after the mirror's bad one: stored.
        let (from, stored) = run(origin);
        assert_eq!(
            from.expect("the registry gives it"),
            "",
            "came from the registry"
        );
        let stored = stored.expect("ingested").expect("stored");
        assert_eq!(stored.layers[0].digest, layer.to_string());
        assert!(store.holds_intact(&layer), "the layer is in the store");
    }

    #[test]
    fn a_pulled_layer_is_moved_into_the_store_not_written_again() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let (files, layer) = image(|_| {}, None);
        let (port, _) = serve(files);
        let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
        let a = ask(port);
        let r = ImageRef::parse(&a.reference).expect("a reference");
        fetch_plain(&store, &a, dir.path()).expect("pulled");
        let pulled = dir.path().join("blobs/sha256").join(layer.hex());
        let inode = std::fs::metadata(&pulled).expect("the pulled layer").ino();
        store
            .ingest_pulled(dir.path(), &r.name(), None, false)
            .expect("stored");
        let kept = std::fs::metadata(store.blob_path(&layer)).expect("the stored layer");
        assert_eq!(kept.ino(), inode, "the same file, renamed");
        assert_eq!(kept.permissions().mode() & 0o777, 0o600);
        assert!(!pulled.exists());
        assert!(store.holds_intact(&layer));
    }

    /// An image `team/app:v1` whose manifest lists one layer once per size in `sizes` (old
    /// Docker images repeat their empty layer), as a registry serves it; the layer's digest.
    fn repeated_layer(sizes: &[u64]) -> (HashMap<String, (String, Vec<u8>)>, Digest) {
        let layer = b"a layer listed more than once".to_vec();
        let ld = Digest::of(&layer);
        let diff_ids = vec![format!("\"{ld}\""); sizes.len()].join(",");
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{diff_ids}]}}}}"#
        )
        .into_bytes();
        let cd = Digest::of(&config);
        let layers: Vec<String> = sizes
            .iter()
            .map(|n| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{n}}}"#
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layers.join(",")
        )
        .into_bytes();
        let blob = |d: &Digest| format!("/v2/team/app/blobs/{d}");
        let files = HashMap::from([
            (
                "/v2/team/app/manifests/v1".to_string(),
                (manifest::OCI_MANIFEST.to_string(), manifest),
            ),
            (blob(&cd), ("application/octet-stream".into(), config)),
            (blob(&ld), ("application/octet-stream".into(), layer)),
        ]);
        (files, ld)
    }

    #[test]
    fn a_layer_its_manifest_lists_twice_is_fetched_and_stored_once() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let len = b"a layer listed more than once".len() as u64;
        let (files, layer) = repeated_layer(&[len, len]);
        let (port, blobs) = serve(files);
        let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
        let a = ask(port);
        let r = ImageRef::parse(&a.reference).expect("a reference");
        fetch_plain(&store, &a, dir.path()).expect("pulled");
        assert_eq!(
            blobs.load(Ordering::SeqCst),
            2,
            "the config and the layer, once"
        );
        let stored = store
            .ingest_pulled(dir.path(), &r.name(), None, false)
            .expect("stored, though its layer is listed twice");
        assert_eq!(stored.layers.len(), 2, "as its manifest lists them");
        assert!(stored.layers.iter().all(|l| l.digest == layer.to_string()));
        assert!(store.holds_intact(&layer), "the layer is in the store");
    }

    #[test]
    fn a_layer_listed_with_two_sizes_is_refused_naming_both() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let len = b"a layer listed more than once".len() as u64;
        let (files, layer) = repeated_layer(&[len, len + 1]);
        let (port, _) = serve(files);
        let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
        let a = ask(port);
        let r = ImageRef::parse(&a.reference).expect("a reference");
        // The registry's client fetches the digest once, at its first size.
        fetch_plain(&store, &a, dir.path()).expect("pulled");
        let e = store
            .ingest_pulled(dir.path(), &r.name(), None, false)
            .expect_err("two sizes of one blob");
        assert!(
            e.to_string().ends_with(&format!(
                "blob {layer}: its manifest lists it with {len} bytes and with {} bytes",
                len + 1
            )),
            "{e}"
        );
        assert!(!store.blob_path(&layer).exists(), "nothing of it is kept");
    }

    #[test]
    fn a_single_image_of_another_platform_than_asked_is_refused_before_its_layers() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let (files, _) = image(|_| {}, None);
        let (port, blobs) = serve(files);
        let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
        let mut a = ask(port);
        a.platform = Some("linux/riscv64".parse().expect("a platform"));
        a.require_platform = true;
        let e = fetch_plain(&store, &a, dir.path()).expect_err("another platform");
        assert!(
            e.to_string().contains("not for linux/riscv64 (--platform)"),
            "{e}"
        );
        assert_eq!(
            blobs.load(Ordering::SeqCst),
            1,
            "only the config was fetched"
        );
    }

    #[test]
    fn an_unreachable_registry_is_named_with_the_cause_and_plain_http_is_hinted() {
        let data = tempfile::tempdir().expect("a data directory");
        let store = Arc::new(ContentStore::open(data.path(), 0).expect("the store"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let (plain, _) = serve(HashMap::new());
        for (port, insecure, cause) in [(closed, true, "Connection refused"), (plain, false, "tls")]
        {
            let dir = tempfile::tempdir_in(store.tmp()).expect("a pull directory");
            let mut a = ask(port);
            a.insecure = insecure;
            let e = fetch_plain(&store, &a, dir.path()).expect_err("unreachable");
            let text = e.to_string();
            assert!(
                text.to_lowercase().contains(&cause.to_lowercase()),
                "{port}: {text}"
            );
            assert_eq!(
                text.contains("`flotilla image push REF --insecure`"),
                !insecure,
                "{text}"
            );
        }
    }
}
