//! Images from the control plane's content store (`flotilla image push`), over the node's own
//! session: no inbound port, no registry credentials, nothing but the node's certificate.
//!
//! Before it pulls a task's image from a registry, the agent asks the control plane whether
//! it holds the image (`AgentRequest::Image`); if so, the image comes from there, blob by blob
//! (`AgentRequest::Blob`, from the length of what the node already has of it), each verified
//! against its digest by the image store ([`flotilla_runtime::image::remote`]). The control
//! plane paces each node's transfers (`image_rate_limit`). A transfer cut by a lost session
//! waits for the next session (up to [`SESSION_WAIT`]) and goes on from where it stopped.
//!
//! A node whose own pull cannot reach an image's registry asks the control plane to pull it
//! (pull-through, [`ControlPlane::pull_through`]: `AgentRequest::Image { pull: true }`), then
//! fetches it from there as above: a site whose nodes have no route beyond the LAN runs
//! images from any registry the control plane reaches.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::images::StoredImage;
use flotilla_api::{read_frame, write_frame, AgentReply, AgentRequest};
use flotilla_runtime::image::digest::Digest;
use flotilla_runtime::image::manifest::{Descriptor, Platform};
use flotilla_runtime::image::remote::{BlobSink, BlobSource, FetchError, FetchFuture};
use flotilla_runtime::image::ImageRef;
use tokio::io::AsyncWriteExt;

use crate::session::Session;

/// How long a transfer cut by a lost session waits for the next one before the pull fails
/// (and the task's start is tried again later, resuming).
pub const SESSION_WAIT: Duration = Duration::from_secs(90);

/// How long the control plane has to answer a request's head (not the transfer).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a blob's stream may bring nothing before the transfer is given up (and asked
/// for again from what arrived): the session's keep-alives hold the connection open through
/// a stall, so its idle timeout would never end one. Longer than the pause before each
/// 64 KiB a paced transfer sends at any `image_rate_limit` above about 1.1 kB/s.
const BLOB_IDLE: Duration = Duration::from_secs(60);

/// Bytes read from the stream at a time.
const CHUNK: usize = 64 << 10;

/// How long a node waits for the control plane's pull of an image it asked for (pull-through);
/// the control plane's own requests to a registry time out well before it.
pub const PULL_THROUGH_WAIT: Duration = Duration::from_secs(30 * 60);

/// Why an image request gave no image.
enum Asked {
    /// The control plane said no, and why.
    Refused(String),
    /// No session, a lost stream, a bad answer, no answer in time.
    Failed(String),
}

/// The control plane's content store, reached over the node's session.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    session: Arc<Session>,
}

impl ControlPlane {
    /// The content store behind `session`.
    pub fn new(session: Arc<Session>) -> Self {
        Self { session }
    }

    /// The image the control plane holds under `image`'s lookup names
    /// (`ImageRef::lookup_names`: `bb:v1` may be its `localhost/bb:v1`): `None` when there is
    /// no session now, or the control plane does not hold it (or refuses, or is of a release
    /// without a content store), logged at debug.
    pub async fn held(&self, image: &str) -> Option<Held> {
        match self.ask(image, false, ANSWER_TIMEOUT).await {
            Ok(d) => Some(d),
            Err(Asked::Refused(reason)) => {
                tracing::debug!(image, "not from the control plane: {reason}");
                None
            }
            Err(Asked::Failed(e)) => {
                tracing::debug!(image, "asking the control plane for the image: {e}");
                None
            }
        }
    }

    /// Asks the control plane to pull `image` for this node's platform (pull-through, for a
    /// node that could not reach the image's registry) and answers its manifest once the
    /// control plane holds it, waiting up to [`PULL_THROUGH_WAIT`].
    ///
    /// # Errors
    /// Why not: no session, the control plane's refusal (naming why its pull failed), a lost
    /// stream, or no answer in time.
    pub async fn pull_through(&self, image: &str) -> Result<Held, String> {
        self.ask(image, true, PULL_THROUGH_WAIT)
            .await
            .map_err(|e| match e {
                Asked::Refused(reason) | Asked::Failed(reason) => reason,
            })
    }

    async fn ask(&self, image: &str, pull: bool, within: Duration) -> Result<Held, Asked> {
        let conn = self
            .session
            .current()
            .ok_or_else(|| Asked::Failed("no session with the control plane".into()))?;
        let request = AgentRequest::Image {
            image: image.to_string(),
            pull,
            platform: pull.then(|| Platform::host().to_string()),
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &request).await?;
            let _ = send.finish();
            anyhow::Ok(read_frame::<_, AgentReply>(&mut recv).await?)
        };
        match tokio::time::timeout(within, ask).await {
            Ok(Ok(AgentReply::Image(stored))) => held(image, &stored).map_err(|e| {
                tracing::warn!(image, "the control plane's answer for the image: {e}");
                Asked::Failed(format!("the control plane's answer: {e}"))
            }),
            Ok(Ok(AgentReply::Refused { reason })) => Err(Asked::Refused(reason)),
            Ok(Ok(other)) => {
                tracing::warn!(image, "unexpected answer to an image request: {other:?}");
                Err(Asked::Failed(format!("unexpected answer {other:?}")))
            }
            Ok(Err(e)) => Err(Asked::Failed(format!("{e:#}"))),
            Err(_) => {
                tracing::warn!(
                    image,
                    pull,
                    "the control plane did not answer for the image within {within:?}"
                );
                Err(Asked::Failed(format!(
                    "the control plane did not answer within {within:?}"
                )))
            }
        }
    }

    async fn fetch_blob(
        &self,
        digest: &Digest,
        offset: u64,
        size: u64,
        out: BlobSink<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, FetchError> {
        let conn = self.session.wait(SESSION_WAIT).await.ok_or_else(|| {
            FetchError::transient(format!(
                "blob {digest}: no session with the control plane for {SESSION_WAIT:?}"
            ))
        })?;
        let cut = |e: &dyn std::fmt::Display| {
            FetchError::transient(format!("blob {digest} from byte {offset}: {e}"))
        };
        let ask = AgentRequest::Blob {
            digest: digest.to_string(),
            offset,
        };
        let (mut send, mut recv) = tokio::time::timeout(ANSWER_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| cut(&format!("no stream within {ANSWER_TIMEOUT:?}")))?
            .map_err(|e| cut(&e))?;
        let head = tokio::time::timeout(ANSWER_TIMEOUT, async {
            write_frame(&mut send, &ask).await?;
            let _ = send.finish();
            anyhow::Ok(read_frame::<_, AgentReply>(&mut recv).await?)
        })
        .await
        .map_err(|_| cut(&format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(|e| cut(&e))?;
        match head {
            AgentReply::Blob { size: whole } if whole == size => {}
            AgentReply::Blob { size: whole } => {
                return Err(FetchError::permanent(format!(
                    "blob {digest}: the control plane holds {whole} bytes, the manifest says \
                     {size}"
                )))
            }
            AgentReply::Refused { reason } => {
                return Err(FetchError::permanent(format!(
                    "blob {digest}: refused: {reason}"
                )))
            }
            other => {
                return Err(FetchError::permanent(format!(
                    "blob {digest}: unexpected answer {other:?}"
                )))
            }
        }
        let want = size.saturating_sub(offset);
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            let n = match tokio::time::timeout(BLOB_IDLE, recv.read(&mut buf)).await {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Err(FetchError::transient(format!(
                        "blob {digest}: the transfer was cut after {} of its {size} bytes: {e}",
                        offset + got
                    )))
                }
                // The connection lives (keep-alives) but the stream stalled: given up, to go
                // on from here in a new one.
                Err(_) => {
                    return Err(FetchError::transient(format!(
                        "blob {digest}: nothing arrived for {} s after {} of its {size} bytes",
                        BLOB_IDLE.as_secs(),
                        offset + got
                    )))
                }
            };
            if got + n as u64 > want {
                return Err(FetchError::permanent(format!(
                    "blob {digest}: the control plane sent more than its {size} bytes"
                )));
            }
            out.write_all(&buf[..n]).await.map_err(|e| {
                FetchError::permanent(format!("blob {digest}: writing this node's copy: {e}"))
            })?;
            got += n as u64;
            progress(got);
        }
        Ok(got)
    }
}

impl BlobSource for ControlPlane {
    fn name(&self) -> &str {
        "the control plane"
    }

    fn tag(&self) -> &str {
        "control-plane"
    }

    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        size: u64,
        out: BlobSink<'a>,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> FetchFuture<'a> {
        Box::pin(self.fetch_blob(digest, offset, size, out, progress))
    }
}

/// The manifest descriptor of an image the control plane holds.
/// An image the control plane holds for a node's reference.
#[derive(Debug, Clone)]
pub struct Held {
    /// The name the control plane holds it under, one of the reference's lookup names: the
    /// name the node files it under too.
    pub name: String,
    /// Its manifest.
    pub manifest: Descriptor,
}

/// The control plane's answer `stored` for reference `image`, checked: its name must be one
/// of `image`'s lookup names (a control plane cannot have a node file an image under a name
/// it did not ask for).
fn held(image: &str, stored: &StoredImage) -> Result<Held, String> {
    let names = ImageRef::lookup_names(image).map_err(|e| e.to_string())?;
    if !names.contains(&stored.name) {
        return Err(format!(
            "it answered image {} for {image}, which is none of {}",
            stored.name,
            names.join(", ")
        ));
    }
    Ok(Held {
        name: stored.name.clone(),
        manifest: descriptor(stored)?,
    })
}

fn descriptor(stored: &StoredImage) -> Result<Descriptor, String> {
    Ok(Descriptor {
        media_type: stored.manifest.media_type.clone(),
        digest: stored
            .manifest
            .digest
            .parse()
            .map_err(|e| format!("manifest digest: {e}"))?,
        size: stored.manifest.size,
        platform: None,
        annotations: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::images::StoredBlob;

    #[test]
    fn a_stored_image_is_fetched_by_its_manifest_and_a_bad_digest_is_refused() {
        let blob = |digest: &str| StoredBlob {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 7,
        };
        let good = format!("sha256:{}", "a".repeat(64));
        let mut stored = StoredImage {
            name: "docker.io/shop/app:1".into(),
            manifest: blob(&good),
            config: blob(&good),
            layers: vec![],
            platform: "linux/amd64".into(),
            pushed_at: 0,
            source: None,
        };
        let d = descriptor(&stored).expect("descriptor");
        assert_eq!(d.digest.to_string(), good);
        assert_eq!(d.size, 7);
        // Filed under the name the control plane holds it by, when it is one the node asked
        // for; any other answer is refused.
        assert_eq!(held("shop/app:1", &stored).expect("held").name, stored.name);
        stored.name = "localhost/shop/app:1".into();
        assert_eq!(
            held("shop/app:1", &stored).expect("local").name,
            stored.name
        );
        assert_eq!(
            held("docker.io/shop/app:1", &stored).expect_err("not asked for"),
            "it answered image localhost/shop/app:1 for docker.io/shop/app:1, which is none of \
             docker.io/shop/app:1"
        );
        stored.name = "docker.io/library/sshd:1".into();
        assert!(held("shop/app:1", &stored).is_err());
        stored.manifest.digest = "sha256:../../x".into();
        assert!(descriptor(&stored)
            .expect_err("bad digest")
            .starts_with("manifest digest:"));
    }
}
