//! The agent's image settings: the registry mirrors pulls try first (`registry_mirrors`,
//! `--registry-mirror`), shared by the agent's pulls and `nodeagent ctr image pull`, and the
//! watermarks of image garbage collection by disk pressure (`image_gc_*`), which the agent runs
//! every [`GC_PERIOD`] and after each pull, and `nodeagent ctr image prune --disk-pressure` on
//! demand.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use flotilla_runtime::image::gc::GcPolicy;
use flotilla_runtime::image::{ImageStore, PressureReport, RegistryMirrors};

/// How often the agent checks its image store's filesystem: kubelet's image GC period, 5 min.
pub const GC_PERIOD: Duration = Duration::from_secs(300);

/// What the configuration and flags say about images.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// Mirrors per registry, tried in order before the registry itself.
    pub mirrors: RegistryMirrors,
    /// When unused images are collected.
    pub gc: GcPolicy,
}

/// The collection policy from the configuration's or flags' values (kubelet's defaults for
/// what neither gives).
pub fn gc_policy(high: Option<u8>, low: Option<u8>, minimum_age: Option<u64>) -> Result<GcPolicy> {
    let d = GcPolicy::default();
    GcPolicy::new(
        high.unwrap_or(d.high_percent),
        low.unwrap_or(d.low_percent),
        minimum_age.map_or(d.minimum_age, Duration::from_secs),
    )
    .map_err(anyhow::Error::msg)
}

/// Collects `store` by disk pressure now and logs what it did (the agent's rounds).
pub fn collect(store: &ImageStore, policy: &GcPolicy) {
    match store.collect_by_pressure(policy, SystemTime::now()) {
        Ok(r) => log(&r, policy),
        Err(e) => tracing::warn!("image garbage collection: {e}"),
    }
}

fn log(r: &PressureReport, policy: &GcPolicy) {
    let used = |u: Option<flotilla_runtime::image::gc::FsUsage>| u.map_or(0, |u| u.used_percent());
    if r.busy {
        tracing::debug!("image garbage collection: a pull holds the store; next round");
        return;
    }
    if !r.removed.is_empty() {
        tracing::info!(
            removed = %r.removed.join(", "),
            freed_bytes = r.freed.bytes,
            layers = r.freed.layers,
            used_before = used(r.before),
            used_after = used(r.after),
            high = policy.high_percent,
            low = policy.low_percent,
            "image garbage collection removed {} image name(s), freed {} bytes",
            r.removed.len(),
            r.freed.bytes
        );
    }
    let now = used(r.after.or(r.before));
    if r.wanted_bytes > 0 && now >= policy.high_percent {
        tracing::warn!(
            used = now,
            high = policy.high_percent,
            "the image store's filesystem stays above the high watermark: what is left is used by \
             containers, younger than image_gc_minimum_age, or not images"
        );
    }
}

/// The mirrors `--registry-mirror REGISTRY=URL` flags give (in their order; they replace the
/// file's when there are any), else those of the file's `registry_mirrors`
/// ([`RegistryMirrors::from_config`]).
pub fn mirrors(file: &BTreeMap<String, Vec<String>>, flags: &[String]) -> Result<RegistryMirrors> {
    RegistryMirrors::from_config(file, flags).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_watermarks_default_to_kubelets_and_are_checked() {
        let p = gc_policy(None, None, None).expect("defaults");
        assert_eq!((p.high_percent, p.low_percent), (85, 80));
        assert_eq!(p.minimum_age, Duration::from_secs(120));
        let p = gc_policy(Some(60), Some(40), Some(0)).expect("set");
        assert_eq!(
            (p.high_percent, p.low_percent, p.minimum_age),
            (60, 40, Duration::ZERO)
        );
        let e = gc_policy(Some(70), None, None).expect_err("low above high");
        assert!(
            e.to_string().contains(
                "image_gc_low_threshold_percent (80) must be below \
                 image_gc_high_threshold_percent (70)"
            ),
            "{e}"
        );
        assert!(gc_policy(Some(101), Some(90), None).is_err());
    }
    use flotilla_runtime::image::registry::{pull_sources, PullSource};
    use flotilla_runtime::image::Mirror;

    fn file(text: &str) -> Result<RegistryMirrors> {
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(default)]
            registry_mirrors: BTreeMap<String, Vec<String>>,
        }
        let f: F = flotilla_api::config::parse("t.toml", text, &["registry_mirrors"])
            .map_err(anyhow::Error::msg)?;
        mirrors(&f.registry_mirrors, &[])
    }

    #[test]
    fn mirrors_are_read_per_registry_in_order_with_http_only_when_written() {
        let m = file(
            r#"registry_mirrors = { "docker.io" = ["https://a.example", "http://10.0.0.5:5000", "b.example:5443"] }"#,
        )
        .expect("parses");
        assert_eq!(
            m.of("docker.io"),
            [
                Mirror {
                    host: "a.example".into(),
                    plain_http: false
                },
                Mirror {
                    host: "10.0.0.5:5000".into(),
                    plain_http: true
                },
                Mirror {
                    host: "b.example:5443".into(),
                    plain_http: false
                },
            ]
        );
        assert!(m.of("quay.io").is_empty());
        // The order a pull tries: the mirrors as listed, then the registry.
        let order = pull_sources(&m, "docker.io");
        assert_eq!(order.len(), 4);
        assert_eq!(
            order[1],
            PullSource::Mirror(Mirror::parse("http://10.0.0.5:5000").expect("mirror"))
        );
        assert_eq!(order[3], PullSource::Origin);
        assert_eq!(pull_sources(&m, "quay.io"), [PullSource::Origin]);
        assert!(file("").expect("no mirrors").is_empty());
        // A table as containerd's hosts.toml directories are laid out reads the same.
        let t = file("[registry_mirrors]\n\"registry.example:5000\" = [\"https://m.example\"]\n")
            .expect("table");
        assert_eq!(
            t.of("registry.example:5000")[0].to_string(),
            "https://m.example"
        );
    }

    #[test]
    fn a_bad_mirror_entry_is_refused_naming_the_registry_and_the_mirror() {
        for (text, says) in [
            (
                r#"registry_mirrors = { "docker.io" = ["ftp://m.example"] }"#,
                "registry_mirrors: registry docker.io: mirror 'ftp://m.example': scheme ftp",
            ),
            (
                r#"registry_mirrors = { "docker.io" = ["https://m.example/v2/proxy"] }"#,
                "registry_mirrors: registry docker.io: mirror 'https://m.example/v2/proxy': a mirror is scheme://host[:port]",
            ),
            (
                r#"registry_mirrors = { "docker.io" = ["https://u:p@m.example"] }"#,
                "credentials in a mirror's URL are refused",
            ),
            (
                r#"registry_mirrors = { "https://docker.io" = ["https://m.example"] }"#,
                "registry_mirrors: registry https://docker.io: a registry is host[:port]",
            ),
            (
                r#"registry_mirrors = { "index.docker.io" = ["https://m.example"] }"#,
                "give its mirrors under docker.io",
            ),
            (
                r#"registry_mirrors = { "docker.io" = [] }"#,
                "registry_mirrors: registry docker.io: no mirror listed",
            ),
            (
                r#"registry_mirrors = { "docker.io" = ["m.example", "https://m.example"] }"#,
                "mirror https://m.example is listed twice",
            ),
            (r#"registry_mirrors = ["https://m.example"]"#, "registry_mirrors"),
            (r#"registry_mirror = {}"#, "did you mean 'registry_mirrors'"),
        ] {
            let e = file(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn flags_give_mirrors_in_their_order_and_replace_the_file() {
        let from_file: BTreeMap<String, Vec<String>> =
            [("quay.io".to_string(), vec!["https://q.example".to_string()])].into();
        let m = mirrors(
            &from_file,
            &[
                "docker.io=http://127.0.0.1:5001".into(),
                "docker.io=https://b.example".into(),
            ],
        )
        .expect("flags");
        assert_eq!(
            m.of("docker.io")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:5001", "https://b.example"]
        );
        assert!(m.of("quay.io").is_empty());
        let e = mirrors(&from_file, &["docker.io".into()]).expect_err("no =");
        assert!(
            e.to_string()
                .starts_with("--registry-mirror: 'docker.io' is not REGISTRY=URL"),
            "{e}"
        );
    }
}
