//! The daemon's configuration file: its shape and keys, read by `flotilla_api::config::parse`.
//! The fuzz harness (`fuzz/harness`) compiles this file in by its path, since the daemon is a
//! binary: it uses only `std`, `serde`, `ipnet` and `flotilla_api`.

use std::path::PathBuf;

use flotilla_api::logging::LogFormat;

/// `/etc/flotilla/nodeagent.toml`: the same settings as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) cgroup_parent: Option<String>,
    #[serde(default)]
    pub(crate) bind_roots: Vec<PathBuf>,
    #[serde(default)]
    pub(crate) registry_mirrors: std::collections::BTreeMap<String, Vec<String>>,
    pub(crate) image_gc_high_threshold_percent: Option<u8>,
    pub(crate) image_gc_low_threshold_percent: Option<u8>,
    pub(crate) image_gc_minimum_age: Option<u64>,
    pub(crate) heartbeat: Option<u64>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) uplink: Option<String>,
    pub(crate) bridge: Option<String>,
    pub(crate) dynamic_ports: Option<String>,
    pub(crate) address: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub(crate) dns_upstreams: Vec<String>,
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

/// The keys of [`FileConfig`].
pub(crate) const FILE_KEYS: &[&str] = &[
    "data_dir",
    "cgroup_parent",
    "bind_roots",
    "registry_mirrors",
    "image_gc_high_threshold_percent",
    "image_gc_low_threshold_percent",
    "image_gc_minimum_age",
    "heartbeat",
    "log_format",
    "uplink",
    "bridge",
    "dynamic_ports",
    "address",
    "dns_upstreams",
    "metrics_listen",
];
