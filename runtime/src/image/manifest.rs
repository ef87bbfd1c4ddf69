//! The JSON documents of an image: descriptors, manifests, indexes, platforms, and the parts of
//! the image configuration the store needs. Docker v2 schema 2 and OCI shapes are the same JSON
//! with different media types, so one set of types serves both.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Largest manifest or index the store reads; a bigger one is refused as hostile.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config the store reads.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// The `Accept` header value for manifest requests.
pub fn manifest_accept() -> String {
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ]
    .join(", ")
}

/// A pointer to content: media type, digest and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    #[serde(default)]
    pub media_type: String,
    /// Its sha256 digest.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// For index entries: the platform the manifest is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations (OCI layouts name images here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image configuration.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One entry per platform (or per tagged image, in an OCI layout).
    pub manifests: Vec<Descriptor>,
}

/// What a fetched manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// A single-platform image manifest.
    Image(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// Why a manifest document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON of the expected shape.
    #[error("invalid {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// A media type the store does not handle (e.g. Docker schema 1).
    #[error("unsupported manifest media type '{0}' (want OCI or Docker v2 schema 2)")]
    MediaType(String),
    /// A schemaVersion other than 2.
    #[error("unsupported manifest schemaVersion {0} (want 2)")]
    SchemaVersion(u32),
}

/// Parses a manifest or index, deciding by the transport's content type, then the document's
/// own `mediaType`, then its shape.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ManifestKind, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: u32,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|source| ManifestError::Json {
        what: "manifest",
        source,
    })?;
    if probe.schema_version != 2 {
        return Err(ManifestError::SchemaVersion(probe.schema_version));
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media = ct.map(str::to_string).or(probe.media_type);
    let is_index = match media.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::MediaType(other.to_string())),
        None => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(body)
            .map(ManifestKind::Index)
            .map_err(|source| ManifestError::Json {
                what: "image index",
                source,
            })
    } else {
        serde_json::from_slice(body)
            .map(ManifestKind::Image)
            .map_err(|source| ManifestError::Json {
                what: "image manifest",
                source,
            })
    }
}

/// The parts of an image configuration the store reads; the whole document is kept as a blob.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Operating system, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// CPU architecture in Go's naming, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// CPU variant, e.g. `v7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Creation time as written by the builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The runtime defaults (entrypoint, cmd, env …), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The uncompressed layer digests.
    pub rootfs: RootFs,
}

/// `rootfs` of an image configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layer tars, lowest first.
    pub diff_ids: Vec<Digest>,
}

/// An os/architecture/variant triple in the OCI (Go) naming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// Variant, e.g. `v7` for 32-bit ARM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Why a platform string is malformed.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform '{0}' (want os/arch[/variant], e.g. linux/arm64 or linux/arm/v7)")]
pub struct PlatformParseError(String);

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", Some("v8")) | (_, Some("")) => None,
            (_, v) => v,
        }
    }

    /// How well an image built for `self` fits a node of platform `want`: `None` when it cannot
    /// run there, lower is better.
    pub fn fit(&self, want: &Platform) -> Option<u8> {
        if self.os != want.os || self.architecture != want.architecture {
            return None;
        }
        match (self.normalized_variant(), want.normalized_variant()) {
            (a, b) if a == b => Some(0),
            (None, _) => Some(1),
            // 32-bit ARM runs older variants: a v7 node runs v6 and v5 images.
            (Some(have), Some(w)) if self.architecture == "arm" && have < w => Some(2),
            _ => None,
        }
    }
}

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(PlatformParseError(s.to_string()));
        }
        Ok(Self {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the index entry that best fits `want`; on failure, lists what the index offers.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor, String> {
    let best = index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.fit(want))
                .map(|f| (f, d))
        })
        .min_by_key(|(f, _)| *f);
    match best {
        Some((_, d)) => Ok(d),
        None => {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(ToString::to_string)
                .collect();
            Err(if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(p.as_bytes()),
            size: 1,
            platform: Some(p.parse().expect("platform")),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn picks_exact_platform_then_compatible_variant() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("linux/amd64"),
                entry("linux/arm64/v8"),
                entry("linux/arm/v6"),
            ],
        };
        let pick = |p: &str| {
            select_platform(&index, &p.parse().expect("platform")).map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64"), Ok(Digest::of(b"linux/amd64")));
        assert_eq!(pick("linux/arm64"), Ok(Digest::of(b"linux/arm64/v8")));
        assert_eq!(pick("linux/arm/v7"), Ok(Digest::of(b"linux/arm/v6")));
        assert_eq!(
            pick("linux/riscv64"),
            Err("linux/amd64, linux/arm64/v8, linux/arm/v6".to_string())
        );
    }

    #[test]
    fn refuses_schema1_and_unknown_media_types() {
        let s1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse_manifest(None, s1),
            Err(ManifestError::SchemaVersion(1))
        ));
        let odd = br#"{"schemaVersion":2,"mediaType":"application/vnd.example","config":{}}"#;
        assert!(matches!(
            parse_manifest(None, odd),
            Err(ManifestError::MediaType(_))
        ));
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(None, idx),
            Ok(ManifestKind::Index(_))
        ));
    }
}
