//! Image garbage collection by disk pressure, as kubelet's: when the image store's filesystem is
//! used above a high watermark, the least recently used images no container uses are removed
//! until it is down to a low one
//! (<https://kubernetes.io/docs/concepts/architecture/garbage-collection/#containers-images>;
//! the settings `imageGCHighThresholdPercent`, 85, `imageGCLowThresholdPercent`, 80, and
//! `imageMinimumGCAge`, 2 min, of
//! <https://kubernetes.io/docs/reference/config-api/kubelet-config.v1beta1/>).
//!
//! [`plan`] decides, with no I/O and no clock; `ImageStore::collect_by_pressure` measures the
//! filesystem, reads the records and leases, and carries the plan out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Digest;

/// When images are collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Percent of the filesystem used at or above which images are collected (kubelet's
    /// `imageGCHighThresholdPercent`); 100 turns collection off, as in kubelet.
    pub high_percent: u8,
    /// Percent used down to which they are collected (kubelet's `imageGCLowThresholdPercent`).
    pub low_percent: u8,
    /// An image stored or used more recently than this is kept (kubelet's `imageMinimumGCAge`):
    /// a task's image between its pull and its container's lease.
    pub minimum_age: Duration,
}

/// kubelet's defaults: 85 %, 80 %, 2 minutes.
impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
            minimum_age: Duration::from_secs(120),
        }
    }
}

impl GcPolicy {
    /// A policy with `low < high <= 100`, else what is wrong.
    pub fn new(high_percent: u8, low_percent: u8, minimum_age: Duration) -> Result<Self, String> {
        if high_percent > 100 {
            return Err(format!(
                "image_gc_high_threshold_percent: {high_percent} is above 100"
            ));
        }
        if low_percent >= high_percent {
            return Err(format!(
                "image_gc_low_threshold_percent ({low_percent}) must be below \
                 image_gc_high_threshold_percent ({high_percent})"
            ));
        }
        Ok(Self {
            high_percent,
            low_percent,
            minimum_age,
        })
    }

    /// Whether collection is off (a high watermark of 100 %).
    pub fn is_off(&self) -> bool {
        self.high_percent >= 100
    }
}

/// A filesystem's size and room, in bytes, as `statvfs` gives them (`f_blocks` and `f_bavail`
/// times `f_frsize`: blocks reserved for root count as used, as `df` and kubelet count them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsUsage {
    /// Size.
    pub capacity: u64,
    /// What an unprivileged writer may still use.
    pub available: u64,
}

impl FsUsage {
    /// Percent used, as kubelet computes it: `100 - available * 100 / capacity`.
    pub fn used_percent(&self) -> u8 {
        if self.capacity == 0 {
            return 0;
        }
        let free =
            (u128::from(self.available.min(self.capacity)) * 100 / u128::from(self.capacity)) as u8;
        100 - free
    }

    /// Bytes to free to be down to `low_percent` used (kubelet's
    /// `capacity * (100 - low) / 100 - available`).
    pub fn to_free(&self, low_percent: u8) -> u64 {
        let want_available =
            (u128::from(self.capacity) * u128::from(100 - low_percent.min(100)) / 100) as u64;
        want_available.saturating_sub(self.available)
    }
}

/// An image as the collection weighs it: one manifest digest with every name it is stored
/// under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcImage {
    /// The manifest digest.
    pub digest: Digest,
    /// Its names in the store.
    pub names: Vec<String>,
    /// When it was last stored or used by a container.
    pub last_used: SystemTime,
    /// Its layers (diffIDs) with their unpacked bytes.
    pub layers: Vec<(Digest, u64)>,
}

/// What the collection decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// The images to remove (every name of each), least recently used first.
    pub remove: Vec<GcImage>,
    /// Bytes their removal is expected to free (layers no image left and no lease holds).
    pub expected_bytes: u64,
    /// Bytes it wanted to free to reach the low watermark (0: below the high one).
    pub wanted_bytes: u64,
}

/// Which images to remove from a store on a filesystem `usage` describes, at `now`: none
/// below the high watermark; above it, the least recently used first until the layers they
/// alone hold add up to what brings the filesystem down to the low watermark. An image a
/// lease holds (its manifest in `leased_images`: a container uses it) or used within the
/// policy's minimum age is never chosen; a layer in `leased_layers` is never counted as freed.
pub fn plan(
    policy: &GcPolicy,
    usage: FsUsage,
    images: &[GcImage],
    leased_images: &HashSet<Digest>,
    leased_layers: &HashSet<Digest>,
    now: SystemTime,
) -> GcPlan {
    if policy.is_off() || usage.used_percent() < policy.high_percent {
        return GcPlan::default();
    }
    let wanted = usage.to_free(policy.low_percent);
    let mut holders: HashMap<&Digest, usize> = HashMap::new();
    for i in images {
        for d in distinct_layers(i) {
            *holders.entry(d).or_default() += 1;
        }
    }
    let mut candidates: Vec<&GcImage> = images
        .iter()
        .filter(|i| !leased_images.contains(&i.digest))
        .filter(|i| {
            now.duration_since(i.last_used)
                .is_ok_and(|age| age >= policy.minimum_age)
        })
        .collect();
    candidates.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then_with(|| a.names.cmp(&b.names))
    });
    let mut out = GcPlan {
        wanted_bytes: wanted,
        ..GcPlan::default()
    };
    for image in candidates {
        if out.expected_bytes >= wanted {
            break;
        }
        let sizes: HashMap<&Digest, u64> = image.layers.iter().map(|(d, n)| (d, *n)).collect();
        for d in distinct_layers(image) {
            let left = holders.get_mut(d).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) && !leased_layers.contains(d) {
                out.expected_bytes += sizes.get(d).copied().unwrap_or(0);
            }
        }
        out.remove.push(image.clone());
    }
    out
}

fn distinct_layers(image: &GcImage) -> impl Iterator<Item = &Digest> {
    let mut seen = HashSet::new();
    image
        .layers
        .iter()
        .map(|(d, _)| d)
        .filter(move |d| seen.insert(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32]))
            .parse()
            .expect("digest")
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Image `n`, last used at `used`, with its own layer of `mib` MiB and the shared base.
    fn image(n: u8, used: u64, mib: u64) -> GcImage {
        GcImage {
            digest: digest(n),
            names: vec![format!("r.example/img{n}:1")],
            last_used: at(used),
            layers: vec![(digest(200), 2 * MIB), (digest(100 + n), mib * MIB)],
        }
    }

    fn names(p: &GcPlan) -> Vec<String> {
        p.remove.iter().flat_map(|i| i.names.clone()).collect()
    }

    /// A 100 MiB filesystem with `used` MiB used.
    fn fs(used: u64) -> FsUsage {
        FsUsage {
            capacity: 100 * MIB,
            available: (100 - used) * MIB,
        }
    }

    const NOW: u64 = 10_000;

    fn policy() -> GcPolicy {
        GcPolicy::new(85, 80, Duration::from_secs(120)).expect("policy")
    }

    #[test]
    fn nothing_goes_below_the_high_watermark() {
        let images = [image(1, 10, 10), image(2, 20, 10)];
        let none = HashSet::new();
        let p = plan(&policy(), fs(84), &images, &none, &none, at(NOW));
        assert_eq!(p, GcPlan::default());
        // At the watermark itself it runs, as kubelet's `usagePercent >= high`.
        let p = plan(&policy(), fs(85), &images, &none, &none, at(NOW));
        assert_eq!(names(&p), ["r.example/img1:1"]);
        assert_eq!(p.wanted_bytes, 5 * MIB);
        // 100 % turns it off, even on a full filesystem.
        let off = GcPolicy::new(100, 80, Duration::ZERO).expect("policy");
        assert!(plan(&off, fs(100), &images, &none, &none, at(NOW))
            .remove
            .is_empty());
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_low_watermark() {
        let images = [
            image(3, 300, 6),
            image(1, 100, 6),
            image(2, 200, 6),
            image(4, 400, 6),
        ];
        let none = HashSet::new();
        // 92 % used: 12 MiB to free to reach 80 %; two images' own layers make it.
        let p = plan(&policy(), fs(92), &images, &none, &none, at(NOW));
        assert_eq!(names(&p), ["r.example/img1:1", "r.example/img2:1"]);
        assert_eq!(p.expected_bytes, 12 * MIB);
        assert_eq!(p.wanted_bytes, 12 * MIB);
    }

    #[test]
    fn an_image_in_use_or_too_young_is_never_chosen() {
        let images = [image(1, 100, 6), image(2, 200, 6), image(3, NOW - 60, 6)];
        let leased: HashSet<Digest> = [digest(1)].into();
        let layers: HashSet<Digest> = [digest(200), digest(101)].into();
        let p = plan(&policy(), fs(99), &images, &leased, &layers, at(NOW));
        // img1 is used, img3 was used a minute ago: only img2 goes, and the shared base stays
        // (a lease holds it).
        assert_eq!(names(&p), ["r.example/img2:1"]);
        assert_eq!(p.expected_bytes, 6 * MIB);
        assert!(
            p.expected_bytes < p.wanted_bytes,
            "it cannot reach the low mark"
        );
        // With no minimum age the young one goes too.
        let eager = GcPolicy::new(85, 80, Duration::ZERO).expect("policy");
        let p = plan(&eager, fs(99), &images, &leased, &layers, at(NOW));
        assert_eq!(names(&p), ["r.example/img2:1", "r.example/img3:1"]);
        // A clock behind the images' use keeps them all.
        let p = plan(
            &policy(),
            fs(99),
            &images,
            &HashSet::new(),
            &HashSet::new(),
            at(50),
        );
        assert!(p.remove.is_empty());
    }

    #[test]
    fn a_shared_layer_counts_only_when_its_last_image_goes() {
        let mut a = image(1, 100, 1);
        let mut b = image(2, 200, 1);
        // Both hold a 30 MiB layer besides the base (a twice: it counts once).
        a.layers.push((digest(50), 30 * MIB));
        a.layers.push((digest(50), 30 * MIB));
        b.layers.push((digest(50), 30 * MIB));
        let none = HashSet::new();
        let p = plan(
            &policy(),
            fs(90),
            &[a, b, image(3, 300, 1)],
            &none,
            &none,
            at(NOW),
        );
        // img1 alone frees 1 MiB; with img2 the shared 30 MiB goes too: 32 >= 10.
        assert_eq!(names(&p), ["r.example/img1:1", "r.example/img2:1"]);
        assert_eq!(p.expected_bytes, 32 * MIB);
    }

    #[test]
    fn watermarks_are_checked() {
        assert!(GcPolicy::new(85, 80, Duration::ZERO).is_ok());
        assert!(GcPolicy::new(100, 99, Duration::ZERO).is_ok());
        let e = GcPolicy::new(80, 80, Duration::ZERO).expect_err("equal");
        assert!(e.contains("must be below"), "{e}");
        assert!(GcPolicy::new(101, 80, Duration::ZERO)
            .expect_err("over 100")
            .contains("above 100"));
        assert_eq!(
            GcPolicy::default(),
            GcPolicy::new(85, 80, Duration::from_secs(120)).expect("ok")
        );
    }

    #[test]
    fn usage_is_counted_as_kubelet_counts_it() {
        assert_eq!(fs(85).used_percent(), 85);
        let odd = FsUsage {
            capacity: 1000,
            available: 151,
        };
        // 15.1 % available is 15 %: 85 % used.
        assert_eq!(odd.used_percent(), 85);
        assert_eq!(odd.to_free(80), 49);
        let empty = FsUsage {
            capacity: 0,
            available: 0,
        };
        assert_eq!(empty.used_percent(), 0);
        assert_eq!(fs(50).to_free(80), 0);
    }
}
