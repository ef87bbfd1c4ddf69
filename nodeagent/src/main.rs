//! `nodeagent`: the Flotilla node agent (`nodeagent join`, `nodeagent run`) and `nodeagent ctr`,
//! the low-level tool an operator on site uses against the node's own store, with no control
//! plane involved. Each container is supervised by its own `flotilla-shim` process, a separate
//! small binary found next to this one ([`SHIM`]).

#![forbid(unsafe_code)]

mod agent;
mod claim;
mod config_file;
mod cp_images;
mod ctr;
mod ctr_container;
mod db;
mod dns;
mod exec;
mod health;
mod host;
mod images;
mod kept_logs;
mod logs;
mod meters;
mod metrics;
mod network;
mod node;
mod output;
mod prefetch;
mod pull;
mod reconcile;
mod runner;
mod runtime;
mod schedule;
mod secrets;
mod session;

use flotilla_api::stdout::{closed_pipe, EXIT_CLOSED_PIPE};
use flotilla_api::{errln, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use config_file::{FileConfig, FILE_KEYS};
use flotilla_api::logging::LogFormat;
use flotilla_runtime::container::StoreOptions;

/// Default data directory of the agent.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/flotilla/nodeagent";

/// Exit code of `nodeagent run` on a host that cannot run containers (`EX_CONFIG`): the unit
/// does not restart it (`RestartPreventExitStatus`), since only the operator can fix the host.
pub const EXIT_HOST_UNFIT: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "nodeagent",
    version,
    about = "Flotilla node agent",
    after_help = "Logs go to standard error. NODEAGENT_LOG chooses what is logged: a filter \
                  such as info, debug or warn,nodeagent=debug (default: \
                  warn,libcgroups=error,libcontainer=error); --log-format how."
)]
struct Cli {
    /// Configuration file (TOML; keys as the flags: data_dir, cgroup_parent, bind_roots,
    /// registry_mirrors, image_gc_high_threshold_percent, image_gc_low_threshold_percent,
    /// image_gc_minimum_age, heartbeat, log_format, uplink, bridge, dynamic_ports, address,
    /// dns_upstreams, metrics_listen).
    /// Default: /etc/flotilla/nodeagent.toml when it exists. Flags override it.
    #[arg(long, global = true, env = "NODEAGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: auto (journald under systemd, text otherwise), text, json or journald.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    /// The agent's data directory (image store, state) [default: /var/lib/flotilla/nodeagent].
    #[arg(long, global = true, env = "NODEAGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// cgroup parent of the containers (default: flotilla/<hostname>).
    #[arg(long, global = true, env = "NODEAGENT_CGROUP_PARENT")]
    cgroup_parent: Option<String>,
    /// Host directory bind mounts may come from (repeatable; none by default).
    #[arg(
        long = "bind-root",
        global = true,
        env = "NODEAGENT_BIND_ROOTS",
        value_delimiter = ':'
    )]
    bind_roots: Vec<PathBuf>,
    /// A mirror tried before a registry, REGISTRY=URL (repeatable, in order; e.g.
    /// docker.io=https://mirror.site.example, or http://… for plain HTTP). Given, it replaces
    /// the configuration's registry_mirrors.
    #[arg(long = "registry-mirror", global = true, value_name = "REGISTRY=URL")]
    registry_mirrors: Vec<String>,
    /// Percent of the image store's filesystem used at which unused images are collected,
    /// least recently used first (100: never) [default: 85, as kubelet's].
    #[arg(long, global = true, value_name = "PERCENT")]
    image_gc_high_threshold_percent: Option<u8>,
    /// Percent used down to which they are collected [default: 80].
    #[arg(long, global = true, value_name = "PERCENT")]
    image_gc_low_threshold_percent: Option<u8>,
    /// Seconds an image stored or used is kept from collection [default: 120].
    #[arg(long, global = true, value_name = "SECS")]
    image_gc_minimum_age: Option<u64>,
    /// The image settings the configuration and flags make (filled by `settle`).
    #[arg(skip)]
    images: images::ImageSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Low-level tools for this node: images, containers, volumes.
    Ctr(ctr::CtrArgs),
    /// Enroll this node with a control plane (once per node).
    Join {
        /// The control plane, HOST[:PORT] (default port 7443).
        server: String,
        /// Join token from `flotilla token create`.
        #[arg(long, env = "NODEAGENT_TOKEN", hide_env_values = true)]
        token: String,
        /// Node attribute KEY=VALUE (repeatable), added to the token's labels.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Run the agent: keep the session with the control plane.
    Run {
        /// Seconds between heartbeats (node resources and container usage) [default: 30].
        #[arg(long, value_name = "SECS")]
        heartbeat: Option<u64>,
        /// LAN interface awsvpc tasks get their address on [default: that of the default route].
        #[arg(long, value_name = "IFACE")]
        uplink: Option<String>,
        /// Name of the bridge of bridge-mode tasks [default: flotilla0].
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
        /// Host ports given to port mappings without one [default: 49153-65535].
        #[arg(long, value_name = "FIRST-LAST")]
        dynamic_ports: Option<String>,
        /// The node's address in the cluster, where its host ports are reached [default: the
        /// address it reaches the control plane from].
        #[arg(long, value_name = "IPV4")]
        address: Option<std::net::Ipv4Addr>,
        /// Resolver for tasks' names outside the cluster domain, IP[:PORT] (repeatable)
        /// [default: the node's /etc/resolv.conf].
        #[arg(long = "dns-upstream", value_name = "IP[:PORT]")]
        dns_upstreams: Vec<String>,
        /// Serve the node's metrics for Prometheus in plain HTTP at `GET /metrics` on
        /// ADDR:PORT (e.g. 127.0.0.1:9101) [default: off].
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/flotilla/nodeagent.toml";

/// Reads the configuration file and lets the flags override it.
fn settle(mut cli: Cli) -> anyhow::Result<Cli> {
    let path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let file: FileConfig = match &path {
        None => FileConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            flotilla_api::config::parse(&p.display().to_string(), &text, FILE_KEYS)
                .map_err(anyhow::Error::msg)?
        }
    };
    cli.data_dir = Some(
        cli.data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
    );
    cli.cgroup_parent = cli.cgroup_parent.or(file.cgroup_parent);
    cli.log_format = cli.log_format.or(file.log_format);
    if cli.bind_roots.is_empty() {
        cli.bind_roots = file.bind_roots;
    }
    cli.images.mirrors = images::mirrors(&file.registry_mirrors, &cli.registry_mirrors)?;
    cli.images.gc = images::gc_policy(
        cli.image_gc_high_threshold_percent
            .or(file.image_gc_high_threshold_percent),
        cli.image_gc_low_threshold_percent
            .or(file.image_gc_low_threshold_percent),
        cli.image_gc_minimum_age.or(file.image_gc_minimum_age),
    )?;
    if let Command::Run {
        heartbeat,
        uplink,
        bridge,
        dynamic_ports,
        address,
        dns_upstreams,
        metrics_listen,
    } = &mut cli.command
    {
        *address = address.take().or(file.address);
        *metrics_listen = metrics_listen.take().or(file.metrics_listen);
        if dns_upstreams.is_empty() {
            *dns_upstreams = file.dns_upstreams;
        }
        for u in dns_upstreams.iter() {
            upstream(u)?;
        }
        *heartbeat = heartbeat.take().or(file.heartbeat);
        *uplink = uplink.take().or(file.uplink);
        *bridge = bridge.take().or(file.bridge);
        *dynamic_ports = dynamic_ports.take().or(file.dynamic_ports);
        if let Some(b) = bridge.as_deref() {
            if b.is_empty() || b.len() > 15 || b.contains(['/', ' ']) {
                anyhow::bail!(
                    "bridge: '{b}' is not an interface name (1 to 15 characters, no '/' or space)"
                );
            }
        }
        if let Some(r) = dynamic_ports.as_deref() {
            port_range(r)?;
        }
        if heartbeat.is_some_and(|h| !(5..=3600).contains(&h)) {
            anyhow::bail!("heartbeat: from 5 to 3600 seconds");
        }
    }
    Ok(cli)
}

fn main() -> ExitCode {
    let cli = match settle(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {}", flotilla_api::errors::chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let default_filter = "warn,libcgroups=error,libcontainer=error";
    flotilla_api::logging::init(
        "NODEAGENT_LOG",
        default_filter,
        cli.log_format.unwrap_or_default(),
    );
    let node = match node_options(&cli) {
        Ok(n) => n,
        Err(e) => {
            errln!("error: {}", flotilla_api::errors::chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    // The overlay probe's cleanup goes on in the background; joined before exiting.
    let mut checked = None;
    if matches!(cli.command, Command::Run { .. }) {
        match host_fit(&data_dir, &node, flotilla_runtime::preflight::AGENT) {
            Some(report) => checked = Some(report),
            None => return ExitCode::from(EXIT_HOST_UNFIT),
        }
    }
    // `ctr` is one command at a time: one thread (blocking work goes to tokio's pool) saves
    // the workers' start and the cgroup reads that size them on every `ctr run`.
    let mut builder = if matches!(cli.command, Command::Ctr(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Ctr(args) => ctr::run(&data_dir, node, &cli.images, args).await,
            Command::Join {
                server,
                token,
                labels,
            } => {
                let id = agent::join(&data_dir, &server, &token, &labels).await?;
                outln!("joined as {id}");
                outln!("next: nodeagent --data-dir {} run", data_dir.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Run {
                heartbeat,
                uplink,
                bridge,
                dynamic_ports,
                address,
                dns_upstreams,
                metrics_listen,
            } => {
                let heartbeat = Duration::from_secs(heartbeat.unwrap_or(30));
                let mut net = network::Settings {
                    uplink,
                    address,
                    dns_upstreams: dns_upstreams
                        .iter()
                        .map(|u| upstream(u))
                        .collect::<anyhow::Result<_>>()?,
                    ..Default::default()
                };
                if let Some(b) = bridge {
                    net.bridge = b;
                }
                if let Some(r) = dynamic_ports {
                    net.dynamic_ports = port_range(&r)?;
                }
                agent::run(&data_dir, node, cli.images, heartbeat, net, metrics_listen)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
        }
    });
    if let Some(mut report) = checked {
        report.finish_cleanup();
    }
    match result {
        Ok(code) => code,
        Err(e) if closed_pipe(&*e) => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(e) => {
            errln!("error: {}", flotilla_api::errors::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Checks that this host can run containers (see `flotilla_runtime::preflight`): logs what
/// will not work; when the host cannot, prints every problem with its fix and answers `None`.
pub fn host_fit(
    data_dir: &std::path::Path,
    node: &StoreOptions,
    checks: flotilla_runtime::preflight::Checks,
) -> Option<flotilla_runtime::preflight::Report> {
    let started = std::time::Instant::now();
    let mut report = flotilla_runtime::preflight::check(data_dir, checks);
    report
        .problems
        .extend(flotilla_runtime::preflight::shim_problem(&node.shim));
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if report.ok() {
        tracing::info!(
            took_us = started.elapsed().as_micros() as u64,
            overlay_probe_us = report.probe.map(|p| p.as_micros() as u64),
            "host checks passed"
        );
        return Some(report);
    }
    // The process exits next: let the probe remove its scratch directory first.
    report.finish_cleanup();
    let n = report.problems.len();
    errln!(
        "error: this host cannot run containers ({n} problem{}):",
        if n == 1 { "" } else { "s" }
    );
    for p in &report.problems {
        errln!("  - {p}");
    }
    None
}

/// A resolver `IP` or `IP:PORT` (IPv6 with a port as `[IP]:PORT`).
fn upstream(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse()
        .map_err(|_| anyhow::anyhow!("dns_upstreams: '{s}' is not IP or IP:PORT"))
}

/// `FIRST-LAST`, both ports, FIRST <= LAST.
fn port_range(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let bad = || anyhow::anyhow!("dynamic_ports: '{s}' is not FIRST-LAST (ports 1 to 65535)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// File name of the shim binary, which is looked for next to the `nodeagent` binary.
pub const SHIM: &str = "flotilla-shim";

/// Node-level container settings from the flags and environment.
fn node_options(cli: &Cli) -> anyhow::Result<StoreOptions> {
    let program = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("locating the nodeagent binary: {e}"))?
        .with_file_name(SHIM);
    Ok(StoreOptions {
        cgroup_parent: cli
            .cgroup_parent
            .clone()
            .unwrap_or_else(StoreOptions::default_cgroup_parent),
        bind_roots: ctr_container::bind_roots(&cli.bind_roots),
        shim: program,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_every_key() {
        let example = include_str!("../../config/nodeagent.toml");
        let live = flotilla_api::config::uncomment(example, FILE_KEYS);
        for k in FILE_KEYS {
            assert!(
                live.lines().any(|l| l.starts_with(&format!("{k} = "))),
                "{k} is not in config/nodeagent.toml"
            );
        }
        let c: FileConfig =
            flotilla_api::config::parse("example", &live, FILE_KEYS).expect("example parses");
        assert_eq!(c.data_dir, Some(PathBuf::from(DEFAULT_DATA_DIR)));
        assert_eq!(c.heartbeat, Some(30));
    }

    #[test]
    fn the_help_of_config_names_every_key() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "config")
            .and_then(|a| a.get_long_help().or(a.get_help()))
            .map(|h| h.to_string().replace('\n', " "))
            .expect("--config has help");
        for k in FILE_KEYS {
            assert!(
                help.contains(k),
                "--config's help does not name {k}: {help}"
            );
        }
    }
}
