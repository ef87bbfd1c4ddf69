//! The agent's image settings: the registry mirrors pulls try first (`registry_mirrors`,
//! `--registry-mirror`), shared by the agent's pulls and `nodeagent ctr image pull`.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use flotilla_runtime::image::RegistryMirrors;

/// What the configuration and flags say about images.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// Mirrors per registry, tried in order before the registry itself.
    pub mirrors: RegistryMirrors,
}

/// The mirrors `--registry-mirror REGISTRY=URL` flags give (in their order; they replace the
/// file's when there are any), else those of the file's `registry_mirrors`.
pub fn mirrors(file: &BTreeMap<String, Vec<String>>, flags: &[String]) -> Result<RegistryMirrors> {
    if flags.is_empty() {
        return RegistryMirrors::new(file.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| anyhow!("registry_mirrors: {e}"));
    }
    let mut by_registry: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in flags {
        let (registry, url) = f
            .split_once('=')
            .filter(|(r, u)| !r.is_empty() && !u.is_empty())
            .ok_or_else(|| {
                anyhow!("--registry-mirror: '{f}' is not REGISTRY=URL (e.g. docker.io=https://mirror.example)")
            })?;
        by_registry
            .entry(registry.to_string())
            .or_default()
            .push(url.to_string());
    }
    RegistryMirrors::new(by_registry.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| anyhow!("--registry-mirror: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
