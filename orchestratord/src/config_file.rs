//! The daemon's configuration file: its shape and keys, read by `flotilla_api::config::parse`.
//! The fuzz harness (`fuzz/harness`) compiles this file in by its path, since the daemon is a
//! binary: it uses only `std`, `serde`, `ipnet` and `flotilla_api`.

use std::net::SocketAddr;
use std::path::PathBuf;

use flotilla_api::logging::LogFormat;

/// `/etc/flotilla/orchestratord.toml`: the same settings as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) node_cert_lifetime: Option<u64>,
    pub(crate) session_rate: Option<u32>,
    pub(crate) scaling_period: Option<u64>,
    pub(crate) image_rate_limit: Option<u64>,
    #[serde(default)]
    pub(crate) registry_mirrors: std::collections::BTreeMap<String, Vec<String>>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) bridge_pool: Option<ipnet::Ipv4Net>,
    pub(crate) bridge_prefix: Option<u8>,
    pub(crate) awsvpc_subnet: Option<ipnet::Ipv4Net>,
    pub(crate) awsvpc_range: Option<String>,
    pub(crate) awsvpc_gateway: Option<std::net::Ipv4Addr>,
    pub(crate) vip_pool: Option<ipnet::Ipv4Net>,
}

/// The keys of [`FileConfig`].
pub(crate) const FILE_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "metrics_listen",
    "node_cert_lifetime",
    "session_rate",
    "scaling_period",
    "image_rate_limit",
    "registry_mirrors",
    "log_format",
    "bridge_pool",
    "bridge_prefix",
    "awsvpc_subnet",
    "awsvpc_range",
    "awsvpc_gateway",
    "vip_pool",
];
