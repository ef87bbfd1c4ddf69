//! Images in the control plane's content store (`POST /v1/images` takes an image archive;
//! [`StoredImage`] is what it holds of each image), and images pulled onto nodes ahead of a
//! deployment: `POST /v1/images/prefetch` (an operator's
//! request, answered as newline-delimited [`PrefetchUpdate`]s), and [`crate::ServerPush::Pull`]
//! (the control plane asking one node over its session, answered with [`PullFrame`]s).
//!
//! A node pulls as it pulls for a task (its registry mirrors, anonymously), so a deployment
//! that comes later finds the image in the node's store and starts without a pull.

use serde::{Deserialize, Serialize};

/// Longest image reference taken (the distribution spec bounds a repository name to 255
/// characters; with a registry host, a tag of 128 and a digest this is ample).
pub const MAX_REFERENCE: usize = 1024;

/// Most nodes one request names, and most constraints it has.
pub const MAX_SELECTORS: usize = 1000;

/// `POST /v1/images/prefetch`: which image, onto which nodes. Nodes are those named in
/// `nodes`, or every node when none is named, kept when they match every expression of
/// `constraints` (the `memberOf` language of placement: `attribute:site == store-12`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefetchRequest {
    /// The image reference, as a task definition names it.
    pub image: String,
    /// `memberOf` expressions every node must satisfy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Node ids (all nodes when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl PrefetchRequest {
    /// What is wrong with it, each naming its field; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut out = reference_problems("image", &self.image);
        for (field, n) in [
            ("constraints", self.constraints.len()),
            ("nodes", self.nodes.len()),
        ] {
            if n > MAX_SELECTORS {
                out.push(format!("{field}: more than {MAX_SELECTORS}"));
            }
        }
        out
    }
}

/// `POST /v1/images/pull`: the control plane pulls `image` from its registry (or one of the
/// control plane's `registry_mirrors`) into its content store, as a push of an archive would
/// store it (`flotilla image push REF`). Answered with the [`StoredImage`] once it is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePullRequest {
    /// The image reference, as a task definition names it (a tag or a digest).
    pub image: String,
    /// The platform to pick from an index, `OS/ARCH[/VARIANT]`; the control plane's own when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Reach the registry over plain HTTP instead of HTTPS (a registry on a LAN without TLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl ImagePullRequest {
    /// What is wrong with it, each naming its field; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        reference_problems("image", &self.image)
    }
}

/// What is wrong with an image reference in `field`: empty, too long, a space or a control
/// character.
fn reference_problems(field: &str, image: &str) -> Vec<String> {
    if image.trim().is_empty() {
        vec![format!("{field}: empty")]
    } else if image.len() > MAX_REFERENCE {
        vec![format!("{field}: longer than {MAX_REFERENCE} bytes")]
    } else if image.chars().any(|c| c.is_control() || c.is_whitespace()) {
        vec![format!("{field}: holds a space or a control character")]
    } else {
        Vec::new()
    }
}

/// Asks a node to pull an image into its store ([`crate::ServerPush::Pull`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequest {
    /// The image reference.
    pub image: String,
}

/// What a node sends back for [`crate::ServerPush::Pull`], frame after frame: progress, then
/// one of the others, which ends the stream. Tagged `result` like [`crate::PushReply`], so the
/// refusal of an agent that does not know the push (`bad push: …`) reads as
/// [`PullFrame::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PullFrame {
    /// Bytes of the image's layers held so far, of their total (compressed sizes, from the
    /// manifest); sent at most about once a second.
    Progress {
        /// Held, bytes.
        done_bytes: u64,
        /// Of, bytes.
        total_bytes: u64,
    },
    /// The image was already in the node's store: nothing was fetched.
    Present {
        /// Its manifest digest.
        digest: String,
    },
    /// Pulled and stored.
    Pulled {
        /// Its manifest digest.
        digest: String,
        /// Bytes of its layers (compressed).
        size_bytes: u64,
    },
    /// The pull failed; the reason says why and what to do.
    Failed {
        /// Why.
        reason: String,
    },
    /// The node refused the request (an agent too old to know it says `bad push`).
    Refused {
        /// Why.
        reason: String,
    },
}

/// Where one node is in a prefetch, as `POST /v1/images/prefetch` streams it: a line per
/// change, a last one per node with a final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchUpdate {
    /// Node id.
    pub node: String,
    /// Its state.
    pub state: PrefetchState,
    /// Bytes held so far (`pulling`), or the image's size (`pulled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_bytes: Option<u64>,
    /// Bytes of the image's layers (`pulling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// The manifest digest (`present`, `pulled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why (`failed`, `unreachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A node's state in a prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PrefetchState {
    /// Asked; pulling.
    Pulling,
    /// Final: it had the image already.
    Present,
    /// Final: pulled.
    Pulled,
    /// Final: the pull failed or the node refused it.
    Failed,
    /// Final: not connected, or its session failed mid-way; nothing is known of its store.
    Unreachable,
}

impl PrefetchState {
    /// Whether the node has the image.
    pub fn holds(self) -> bool {
        matches!(self, Self::Present | Self::Pulled)
    }

    /// Whether this is the node's last update.
    pub fn is_final(self) -> bool {
        self != Self::Pulling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_agents_refusal_reads_as_a_refused_frame() {
        let old = crate::PushReply::Refused {
            reason: "bad push: unknown variant `pull`".into(),
        };
        let frame: PullFrame =
            serde_json::from_value(serde_json::to_value(&old).expect("json")).expect("frame");
        assert_eq!(
            frame,
            PullFrame::Refused {
                reason: "bad push: unknown variant `pull`".into()
            }
        );
    }

    #[test]
    fn an_image_source_is_an_object_of_its_kind() {
        let pulled = ImageSource::Pull {
            from: "mirror http://10.0.0.2:5000".into(),
            node: Some("n-1".into()),
        };
        assert_eq!(
            serde_json::to_value(&pulled).expect("json"),
            serde_json::json!({"kind": "pull", "from": "mirror http://10.0.0.2:5000", "node": "n-1"})
        );
        assert_eq!(
            serde_json::to_value(ImageSource::Archive).expect("json"),
            serde_json::json!({"kind": "archive"})
        );
        let back: ImageSource =
            serde_json::from_str(r#"{"kind": "pull", "from": "docker.io"}"#).expect("parses");
        assert_eq!(
            back,
            ImageSource::Pull {
                from: "docker.io".into(),
                node: None
            }
        );
    }

    #[test]
    fn a_layer_listed_twice_is_sized_once() {
        let blob = |n: u8, size: u64| StoredBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size,
        };
        let image = StoredImage {
            name: "docker.io/library/old:1".into(),
            manifest: blob(1, 1),
            config: blob(2, 10),
            layers: vec![blob(3, 100), blob(4, 1000), blob(3, 100), blob(3, 100)],
            platform: "linux/amd64".into(),
            pushed_at: 0,
            source: None,
        };
        assert_eq!(image.size(), 1111);
    }

    #[test]
    fn problems_name_their_field() {
        let ok = PrefetchRequest {
            image: "registry.example/app:1".into(),
            ..Default::default()
        };
        assert!(ok.problems().is_empty());
        let bad = PrefetchRequest {
            image: "app 1".into(),
            nodes: vec![String::new(); MAX_SELECTORS + 1],
            ..Default::default()
        };
        assert_eq!(
            bad.problems(),
            [
                "image: holds a space or a control character",
                "nodes: more than 1000"
            ]
        );
        assert_eq!(
            PrefetchRequest::default().problems(),
            ["image: empty"],
            "an empty image"
        );
        let unknown = serde_json::from_str::<PrefetchRequest>(r#"{"image":"a","node":["x"]}"#);
        assert!(unknown
            .expect_err("unknown field")
            .to_string()
            .contains("unknown field `node`"));
    }
}

/// A blob an image stored in the control plane consists of: an OCI descriptor's content
/// (image-spec `descriptor.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredBlob {
    /// Its media type (a layer's: `application/vnd.oci.image.layer.v1.tar+gzip` …).
    pub media_type: String,
    /// `sha256:<64 hex>`, the digest the content store checked it against.
    pub digest: String,
    /// Its length, bytes.
    pub size: u64,
}

/// An image in the control plane's content store (`GET /v1/images`, `GET /v1/images/{name}`):
/// a name bound to one image manifest, whose blobs the store holds, shared with every other
/// image that has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The canonical reference, `registry/repository:tag` (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The image manifest: its media type (OCI or Docker v2 schema 2), digest and size.
    pub manifest: StoredBlob,
    /// The image configuration blob.
    pub config: StoredBlob,
    /// The layers, lowest first.
    pub layers: Vec<StoredBlob>,
    /// `os/architecture[/variant]`, from the image configuration.
    pub platform: String,
    /// When it was pushed (or pulled), seconds since the epoch.
    pub pushed_at: u64,
    /// Where the control plane got it; absent in records of releases that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
}

/// Where the control plane got an image of its content store (`StoredImage::source`): the
/// `image.pushed` and `image.pulled` events name it.
///
/// JSON: `{"kind": "archive"}`, `{"kind": "pull", "from": "docker.io", "node": "n-1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ImageSource {
    /// An archive an operator pushed (`flotilla image push FILE`).
    Archive,
    /// Pulled by the control plane (`flotilla image push REF`, or a node's pull-through).
    #[serde(rename_all = "camelCase")]
    Pull {
        /// The source that gave it: the registry's host (`docker.io`), or
        /// `mirror URL` for one of its mirrors.
        from: String,
        /// The node whose pull-through asked for it; absent for an operator's pull.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
}

impl std::fmt::Display for ImageSource {
    /// `an archive`, `docker.io`, `mirror http://10.0.0.2:5000 for node n-1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Archive => f.write_str("an archive"),
            Self::Pull { from, node: None } => f.write_str(from),
            Self::Pull {
                from,
                node: Some(n),
            } => write!(f, "{from} for node {n}"),
        }
    }
}

impl StoredImage {
    /// Bytes of its manifest, configuration and layers, each distinct blob once (a layer its
    /// manifest lists twice is stored once); blobs shared with other images are counted in
    /// each image.
    pub fn size(&self) -> u64 {
        let mut seen = std::collections::BTreeSet::new();
        [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
            .filter(|b| seen.insert(b.digest.as_str()))
            .map(|b| b.size)
            .sum()
    }

    /// Every blob's digest: manifest, configuration, layers.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
            .map(|b| b.digest.as_str())
    }
}

/// `DELETE /v1/images/{name}`'s answer: the image removed, and the blobs no other image
/// references, removed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRemoved {
    /// The canonical reference removed.
    pub name: String,
    /// Digests of the blobs deleted from the content store.
    pub blobs_removed: Vec<String>,
}
