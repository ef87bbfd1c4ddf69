//! The JSON documents of an image: descriptors, manifests, indexes, platforms, and the parts of
//! the image configuration the store needs. Docker v2 schema 2 and OCI shapes are the same JSON
//! with different media types, so one set of types serves both.
//!
//! Shapes from the OCI image-spec (`manifest.md`, `image-index.md`, `config.md`) and Docker's
//! image manifest v2 schema 2.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

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
    /// The platform of this node, with the variant its CPU really is: the amd64
    /// micro-architecture level (`v2`–`v4`) or the 32-bit ARM version, read from
    /// `/proc/cpuinfo` as containerd reads it. A node whose cpuinfo cannot be read gets the
    /// baseline of its architecture.
    pub fn host() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::host_from(std::env::consts::ARCH, &cpuinfo)
    }

    /// The platform of a machine whose Rust architecture is `arch` and whose `/proc/cpuinfo`
    /// reads `cpuinfo`.
    pub fn host_from(arch: &str, cpuinfo: &str) -> Self {
        let (architecture, variant) = match arch {
            "x86_64" => (
                "amd64",
                amd64_level(cpuinfo)
                    .filter(|l| *l > 1)
                    .map(|l| format!("v{l}")),
            ),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some(format!("v{}", arm_version(cpuinfo)))),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant,
        }
    }

    /// The same platform in its canonical spelling: architecture aliases resolved
    /// (`x86_64` is `amd64`, `aarch64` is `arm64`), the baseline variants dropped (`amd64/v1`
    /// and `arm64/v8` are `amd64` and `arm64`), and 32-bit ARM without a variant taken as
    /// `arm/v7`, as containerd normalizes them.
    pub fn normalized(&self) -> Platform {
        let architecture = match self.architecture.as_str() {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "armhf" => "arm",
            "armel" => "arm",
            "i386" | "i686" => "386",
            other => other,
        };
        let variant = self.variant.as_deref().filter(|v| !v.is_empty());
        let variant = match (architecture, variant) {
            ("amd64", Some("v1")) | ("arm64", Some("v8" | "v8.0")) => None,
            ("arm", None) if self.architecture == "armel" => Some("v6"),
            ("arm", None) => Some("v7"),
            (_, v) => v,
        };
        Platform {
            os: self.os.clone(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

/// The amd64 micro-architecture level (1–4) a CPU supports, from the `flags` line of
/// `/proc/cpuinfo`, with the features Go's `GOAMD64` and the x86-64 psABI define per level
/// (cpuinfo spells SSE3 `pni` and LZCNT `abm`); `None` without a flags line.
pub fn amd64_level(cpuinfo: &str) -> Option<u8> {
    let flags: HashSet<&str> = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })?
        .split_whitespace()
        .collect();
    const V2: &[&str] = &[
        "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
    ];
    const V3: &[&str] = &[
        "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
    ];
    const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
    let has = |set: &[&str]| set.iter().all(|f| flags.contains(f));
    let mut level = 1;
    for set in [V2, V3, V4] {
        if !has(set) {
            break;
        }
        level += 1;
    }
    Some(level)
}

/// The version of a 32-bit ARM CPU (5–8) from `/proc/cpuinfo`: its `CPU architecture`
/// field, except that ARMv6 boards (the first Raspberry Pis) report 7 and say
/// `ARMv6-compatible` in their model name; 7 when nothing says.
pub fn arm_version(cpuinfo: &str) -> u8 {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    };
    let version = match field("CPU architecture")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("8" | "aarch64") => 8,
        Some("6" | "6tej") => 6,
        Some("5" | "5t" | "5te" | "5tej") => 5,
        _ => 7,
    };
    let v6_model =
        field("model name").is_some_and(|m| m.to_ascii_lowercase().starts_with("armv6-compatible"));
    if version == 7 && v6_model {
        6
    } else {
        version
    }
}

/// The platforms a node runs, best first, as containerd's `platforms.Only` orders them: an
/// amd64 level runs every lower level (`amd64/v3` runs v3, v2, then baseline images), 32-bit
/// ARM runs older versions down to v5, and arm64 runs 32-bit ARM images only on a CPU and
/// kernel that run 32-bit code. Unlike containerd, an amd64 node never takes a `386` image:
/// its seccomp filter refuses 32-bit x86 system calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformMatcher {
    order: Vec<Platform>,
}

impl PlatformMatcher {
    /// What a node of platform `want` runs; `arm32` says whether it also runs 32-bit ARM
    /// code (only asked of arm64 nodes).
    pub fn new(want: &Platform, arm32: bool) -> Self {
        let want = want.normalized();
        let with = |arch: &str, variant: Option<String>| Platform {
            os: want.os.clone(),
            architecture: arch.to_string(),
            variant,
        };
        let version = |v: Option<&str>| -> Option<u8> { v?.strip_prefix('v')?.parse().ok() };
        let mut order = vec![want.clone()];
        match want.architecture.as_str() {
            "amd64" => {
                let level = version(want.variant.as_deref()).unwrap_or(1);
                for l in (1..level).rev() {
                    order.push(with("amd64", (l > 1).then(|| format!("v{l}"))));
                }
            }
            "arm" => {
                let v = version(want.variant.as_deref()).unwrap_or(7);
                for older in (5..v).rev() {
                    order.push(with("arm", Some(format!("v{older}"))));
                }
            }
            "arm64" => {
                let parsed = match want.variant.as_deref() {
                    None => Some((8, 0)),
                    Some(v) => v.strip_prefix('v').and_then(|v| {
                        let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
                        Some((major.parse::<u8>().ok()?, minor.parse::<u8>().ok()?))
                    }),
                };
                if let Some((major, minor)) = parsed {
                    // arm64/v8.x runs v8.(x-1) … v8; v9.x also runs v8.(x+5) … v8.
                    let mut chain = Vec::new();
                    for m in (0..minor).rev() {
                        chain.push((major, m));
                    }
                    if major == 9 {
                        for m in (0..=(minor + 5).min(9)).rev() {
                            chain.push((8, m));
                        }
                    }
                    for (a, b) in chain {
                        let v = if b == 0 {
                            format!("v{a}")
                        } else {
                            format!("v{a}.{b}")
                        };
                        let p = with("arm64", Some(v)).normalized();
                        if !order.contains(&p) {
                            order.push(p);
                        }
                    }
                }
                if arm32 {
                    for v in (5..=8).rev() {
                        order.push(with("arm", Some(format!("v{v}"))));
                    }
                }
            }
            _ => {}
        }
        Self { order }
    }

    /// What this node runs, as [`PlatformMatcher::new`] made it: the node's own platform, then
    /// the stated variants of the kind this node also runs (with the current platform first).
    pub fn host() -> Self {
        let host = Platform::host();
        let arm32 = host.architecture == "arm64" && runs_arm32();
        Self::new(&host, arm32)
    }

    /// The platform asked for (the best one).
    pub fn platform(&self) -> &Platform {
        &self.order[0]
    }

    /// Where an image for `image` ranks here (0 is best); `None` when it does not run here.
    pub fn rank(&self, image: &Platform) -> Option<usize> {
        let image = image.normalized();
        self.order.iter().position(|p| *p == image)
    }
}

/// Whether this arm64 kernel and CPU run 32-bit ARM programs: the kernel refuses the 32-bit
/// personality when they do not (Graviton 3, Apple M1, many recent cores have no AArch32).
fn runs_arm32() -> bool {
    use nix::sys::personality::{self, Persona};
    // PER_LINUX32 (0x0008); `set` answers the previous persona, which is put back at once.
    match personality::set(Persona::from_bits_retain(0x0008)) {
        Ok(old) => {
            let _ = personality::set(old);
            true
        }
        Err(_) => false,
    }
}

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b))
        };
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

/// Picks the index entry that best fits the node `matcher` describes; on failure, lists what
/// the index offers.
pub fn select_platform<'a>(
    index: &'a Index,
    matcher: &PlatformMatcher,
) -> Result<&'a Descriptor, String> {
    let best = index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .and_then(|p| matcher.rank(p))
                .map(|rank| (rank, d))
        })
        .min_by_key(|(rank, _)| *rank);
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

    fn index(platforms: &[&str]) -> Index {
        Index {
            schema_version: 2,
            media_type: None,
            manifests: platforms.iter().map(|p| entry(p)).collect(),
        }
    }

    fn node(p: &str, arm32: bool) -> PlatformMatcher {
        PlatformMatcher::new(&p.parse().expect("platform"), arm32)
    }

    fn pick(index: &Index, node: &PlatformMatcher) -> Result<String, String> {
        select_platform(index, node).map(|d| {
            d.platform
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        })
    }

    const BASELINE: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat \
        clflush mmx fxsr sse sse2 syscall nx lm";
    const V2: &str = "cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3";
    const V3: &str = "avx avx2 bmi1 bmi2 f16c fma abm movbe xsave";
    const V4: &str = "avx512f avx512bw avx512cd avx512dq avx512vl";

    #[test]
    fn amd64_levels_come_from_the_cpu_flags() {
        let cpuinfo = |flags: &[&str]| {
            format!(
                "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {}\nbugs\t\t: spectre\n",
                flags.join(" ")
            )
        };
        let without = |set: &str, flag: &str| set.replace(flag, "");
        let cases: &[(&[&str], Option<u8>, &str)] = &[
            (&[BASELINE], Some(1), "baseline x86-64 (QEMU's qemu64)"),
            (&[BASELINE, V2], Some(2), "Nehalem"),
            (&[BASELINE, V2, V3], Some(3), "Haswell"),
            (&[BASELINE, V2, V3, V4], Some(4), "Skylake-X, Zen 4"),
            (&[BASELINE, V2, &without(V3, "abm")], Some(2), "no LZCNT"),
            (&[BASELINE, V2, &without(V3, "movbe")], Some(2), "no MOVBE"),
            (
                &[BASELINE, &without(V2, "lahf_lm"), V3, V4],
                Some(1),
                "no LAHF: levels are cumulative",
            ),
            (&[BASELINE, &without(V2, "cx16")], Some(1), "no CMPXCHG16B"),
            (
                &[BASELINE, V2, V3, &without(V4, "avx512vl")],
                Some(3),
                "AVX-512 without VL",
            ),
        ];
        for (flags, level, what) in cases {
            assert_eq!(amd64_level(&cpuinfo(flags)), *level, "{what}");
        }
        assert_eq!(amd64_level("processor\t: 0\n"), None, "no flags line");
        assert_eq!(
            Platform::host_from("x86_64", &cpuinfo(&[BASELINE, V2, V3])).to_string(),
            "linux/amd64/v3"
        );
        assert_eq!(
            Platform::host_from("x86_64", &cpuinfo(&[BASELINE])).to_string(),
            "linux/amd64"
        );
        assert_eq!(Platform::host_from("x86_64", "").to_string(), "linux/amd64");
    }

    #[test]
    fn arm_versions_come_from_what_the_board_is() {
        let cases = [
            (
                "model name\t: ARMv7 Processor rev 4 (v7l)\nCPU architecture: 7\n",
                7,
                "Pi 2, v7",
            ),
            (
                "model name\t: ARMv6-compatible processor rev 7 (v6l)\nCPU architecture: 7\n",
                6,
                "Pi Zero / Pi 1 report 7",
            ),
            (
                "model name\t: ARMv7 Processor rev 3 (v7l)\nCPU architecture: 8\n",
                8,
                "Pi 4 with a 32-bit OS",
            ),
            (
                "model name\t: Feroceon 88FR131 rev 1 (v5l)\nCPU architecture: 5TE\n",
                5,
                "Kirkwood",
            ),
            ("processor\t: 0\n", 7, "nothing said"),
        ];
        for (cpuinfo, version, what) in cases {
            assert_eq!(arm_version(cpuinfo), version, "{what}");
        }
        assert_eq!(
            Platform::host_from("arm", cases[1].0).to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            Platform::host_from("aarch64", "").to_string(),
            "linux/arm64"
        );
    }

    #[test]
    fn indexes_resolve_as_containerd_orders_platforms() {
        let amd64_levels = index(&["linux/amd64/v2", "linux/amd64/v3", "linux/arm64"]);
        let plain = index(&[
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v6",
            "linux/arm/v7",
        ]);
        let everything = index(&[
            "linux/amd64",
            "linux/amd64/v2",
            "linux/amd64/v3",
            "linux/amd64/v4",
            "linux/386",
        ]);
        let arm = index(&["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"]);
        let cases: &[(&Index, &str, bool, Result<&str, &str>)] = &[
            // the issue's index on a v4 CPU: the best level it offers
            (&amd64_levels, "linux/amd64/v4", false, Ok("linux/amd64/v3")),
            (&amd64_levels, "linux/amd64/v3", false, Ok("linux/amd64/v3")),
            (&amd64_levels, "linux/amd64/v2", false, Ok("linux/amd64/v2")),
            (
                &amd64_levels,
                "linux/amd64",
                false,
                Err("linux/amd64/v2, linux/amd64/v3, linux/arm64"),
            ),
            (&amd64_levels, "linux/arm64", false, Ok("linux/arm64")),
            (&everything, "linux/amd64/v4", false, Ok("linux/amd64/v4")),
            (&everything, "linux/amd64/v1", false, Ok("linux/amd64")),
            (&everything, "linux/amd64", false, Ok("linux/amd64")),
            (
                &index(&["linux/386"]),
                "linux/amd64",
                false,
                Err("linux/386"),
            ),
            (&plain, "linux/amd64/v3", false, Ok("linux/amd64")),
            (&plain, "linux/arm64", false, Ok("linux/arm64/v8")),
            (&plain, "linux/arm/v7", false, Ok("linux/arm/v7")),
            (&plain, "linux/arm/v6", false, Ok("linux/arm/v6")),
            (&plain, "linux/arm", false, Ok("linux/arm/v7")),
            (&arm, "linux/arm/v8", false, Ok("linux/arm/v7")),
            (&arm, "linux/arm/v6", false, Ok("linux/arm/v6")),
            (&arm, "linux/arm/v5", false, Ok("linux/arm/v5")),
            (&arm, "linux/arm64", true, Ok("linux/arm/v7")),
            (
                &arm,
                "linux/arm64",
                false,
                Err("linux/arm/v5, linux/arm/v6, linux/arm/v7"),
            ),
            (
                &index(&["linux/arm64/v8.1", "linux/arm64"]),
                "linux/arm64/v8.2",
                false,
                Ok("linux/arm64/v8.1"),
            ),
            (
                &index(&["linux/arm64/v8.2"]),
                "linux/arm64/v8.1",
                false,
                Err("linux/arm64/v8.2"),
            ),
            (
                &index(&["linux/arm64/v8.4"]),
                "linux/arm64/v9",
                false,
                Ok("linux/arm64/v8.4"),
            ),
            (
                &index(&["linux/x86_64"]),
                "linux/amd64",
                false,
                Ok("linux/x86_64"),
            ),
            (
                &plain,
                "linux/riscv64",
                false,
                Err("linux/amd64, linux/arm64/v8, linux/arm/v6, linux/arm/v7"),
            ),
        ];
        for (index, want, arm32, expect) in cases {
            let got = pick(index, &node(want, *arm32));
            assert_eq!(
                got,
                expect.map(str::to_string).map_err(str::to_string),
                "{want} (arm32: {arm32})"
            );
        }
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
