//! `orchestratord`: the Flotilla control plane. `init` creates the cluster identity (CA, server
//! certificate, first admin credential); `run` serves agents over QUIC (UDP) and operators over
//! HTTPS (TCP) on the same port number.

#![forbid(unsafe_code)]

mod agents;
mod api;
mod config_file;
mod content;
mod core;
mod http;
mod metrics;
mod plane;
mod pull;
mod scrape;
mod timers;

use cluster::network;
use flotilla_api::{errln, outln};
use orchestratord::cluster;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config_file::{FileConfig, FILE_KEYS};
use flotilla_certs::credential::{write_replace, Credential};
use flotilla_certs::{
    identity_of, CertifiedKey, ClusterCa, ADMIN_CERT_LIFETIME, SERVER_CERT_LIFETIME,
};

/// Default data directory of the control plane.
const DEFAULT_DATA_DIR: &str = "/var/lib/flotilla/orchestratord";
use flotilla_api::logging::LogFormat;
use flotilla_api::DEFAULT_PORT;
/// A server certificate closer than this to its expiry is replaced when `run` starts.
const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Parser)]
#[command(
    name = "orchestratord",
    version,
    about = "Flotilla control plane",
    after_help = "Logs go to standard error. ORCHESTRATORD_LOG chooses what is logged: a filter \
                  such as info, debug or info,orchestratord=debug (default: info); \
                  --log-format how."
)]
struct Cli {
    /// Configuration file (TOML; keys as the flags: data_dir, listen, metrics_listen,
    /// node_cert_lifetime, session_rate, scaling_period, image_rate_limit, registry_mirrors, log_format, bridge_pool, bridge_prefix, awsvpc_subnet,
    /// awsvpc_range, awsvpc_gateway, vip_pool).
    /// Default: /etc/flotilla/orchestratord.toml when it exists. Flags override it.
    #[arg(long, global = true, env = "ORCHESTRATORD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: auto (journald under systemd, text otherwise), text, json or journald.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    /// The control plane's data directory [default: /var/lib/flotilla/orchestratord].
    #[arg(long, global = true, env = "ORCHESTRATORD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster: CA (its key never leaves this host), server certificate, and the
    /// first admin credential.
    Init {
        /// Cluster name, written into the CA's subject.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Host name or IP address nodes and operators reach this server by (repeatable);
        /// the first one, with the port, goes into the admin credential.
        #[arg(long)]
        advertise: Vec<String>,
        /// Port the server will listen on (for the admin credential).
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// Where the admin credential goes (default ~/.config/flotilla).
        #[arg(long, env = "FLOTILLA_CONFIG")]
        admin_config: Option<PathBuf>,
        /// Name of the first admin.
        #[arg(long, default_value = "admin")]
        admin_name: String,
    },
    /// Serve agents (QUIC) and operators (HTTPS).
    Run {
        /// Address to listen on, for UDP (agents) and TCP (operators) [default: 0.0.0.0:7443].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address to serve Prometheus metrics on, plain HTTP `GET /metrics` (TCP)
        /// [default: off]. Over TLS they are at `GET /v1/metrics` of the operator API.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<SocketAddr>,
        /// Lifetime of node certificates in seconds, renewed at 50–80 % of it [default: 30 days].
        #[arg(long)]
        node_cert_lifetime: Option<u64>,
        /// Agent sessions admitted per second; agents beyond it are told when to come back,
        /// each at its own slot [default: 1000].
        #[arg(long)]
        session_rate: Option<u32>,
        /// Seconds between auto scaling decisions: each service with a scalable target gets
        /// one datapoint of its utilization per period, from 1 to 300 [default: 30].
        #[arg(long, value_name = "SECS")]
        scaling_period: Option<u64>,
        /// Bytes per second each node may fetch from the content store over its session, all
        /// its blob transfers together; 0 is no limit [default: 0].
        #[arg(long, value_name = "BYTES")]
        image_rate_limit: Option<u64>,
        /// A mirror the control plane's own pulls (`flotilla image push REF`, and pulls for
        /// nodes that cannot reach a registry) try before the registry, as REGISTRY=URL
        /// (`docker.io=https://mirror.example`); repeat it for more, tried in order. Replaces
        /// the file's `registry_mirrors` when given.
        #[arg(long = "registry-mirror", value_name = "REGISTRY=URL")]
        registry_mirrors: Vec<String>,
        #[command(flatten)]
        network: NetworkArgs,
    },
}

/// Cluster network pools (flags of `run`).
#[derive(Debug, Default, clap::Args)]
struct NetworkArgs {
    /// Pool the nodes' bridge subnets are carved from [default: 10.42.0.0/16].
    #[arg(long, value_name = "CIDR")]
    bridge_pool: Option<ipnet::Ipv4Net>,
    /// Prefix length of each node's bridge subnet [default: 24].
    #[arg(long, value_name = "BITS")]
    bridge_prefix: Option<u8>,
    /// The LAN awsvpc tasks get their addresses on (none: awsvpc tasks cannot start).
    #[arg(long, value_name = "CIDR")]
    awsvpc_subnet: Option<ipnet::Ipv4Net>,
    /// Addresses of that LAN handed out to tasks [default: all but the first and last].
    #[arg(long, value_name = "FIRST-LAST")]
    awsvpc_range: Option<String>,
    /// The LAN's default gateway, given to awsvpc tasks (and never handed out).
    #[arg(long, value_name = "ADDRESS")]
    awsvpc_gateway: Option<std::net::Ipv4Addr>,
    /// Pool of service virtual addresses [default: 10.43.0.0/16].
    #[arg(long, value_name = "CIDR")]
    vip_pool: Option<ipnet::Ipv4Net>,
}

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/flotilla/orchestratord.toml";

fn file_config(given: Option<&Path>) -> Result<FileConfig> {
    let path = match given {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    match path {
        None => Ok(FileConfig::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            flotilla_api::config::parse(&p.display().to_string(), &text, FILE_KEYS)
                .map_err(anyhow::Error::msg)
        }
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if flotilla_api::stdout::closed_pipe(&*e) => {
            std::process::ExitCode::from(flotilla_api::stdout::EXIT_CLOSED_PIPE)
        }
        Err(e) => {
            errln!("error: {}", flotilla_api::errors::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let file = file_config(cli.config.as_deref())?;
    let data_dir = cli
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    flotilla_api::logging::init(
        "ORCHESTRATORD_LOG",
        "info",
        cli.log_format.or(file.log_format).unwrap_or_default(),
    );
    match cli.command {
        Command::Init {
            cluster,
            advertise,
            port,
            admin_config,
            admin_name,
        } => init(
            &data_dir,
            &cluster,
            &advertise,
            port,
            admin_config,
            &admin_name,
        ),
        Command::Run {
            listen,
            metrics_listen,
            node_cert_lifetime,
            session_rate,
            scaling_period,
            image_rate_limit,
            registry_mirrors,
            network,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let listen = listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
            let lifetime = node_cert_lifetime
                .or(file.node_cert_lifetime)
                .unwrap_or(flotilla_certs::NODE_CERT_LIFETIME.as_secs());
            let settings = Settings {
                listen,
                metrics_listen: metrics_listen.or(file.metrics_listen),
                node_cert_lifetime: Duration::from_secs(lifetime),
                session_rate: session_rate.or(file.session_rate).unwrap_or(1000),
                scaling_period: Duration::from_secs(
                    scaling_period
                        .or(file.scaling_period)
                        .unwrap_or(cluster::DEFAULT_SCALING_PERIOD.as_secs()),
                ),
                image_rate_limit: image_rate_limit.or(file.image_rate_limit).unwrap_or(0),
                registry_mirrors: flotilla_oci::registry::RegistryMirrors::from_config(
                    &file.registry_mirrors,
                    &registry_mirrors,
                )
                .map_err(anyhow::Error::msg)?,
                network: network_settings(network, &file)?,
            };
            rt.block_on(run(&data_dir, &settings))
        }
    }
}

fn default_admin_config() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; give --admin-config")?;
    Ok(PathBuf::from(home).join(".config/flotilla"))
}

/// Names the server certificate carries: the advertised ones plus this host's.
fn server_names(advertise: &[String]) -> Vec<String> {
    let mut names: Vec<String> = advertise
        .iter()
        .map(|a| match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h.to_string(),
            _ => a.trim_matches(['[', ']']).to_string(),
        })
        .collect();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    if let Ok(h) = rustix_hostname() {
        names.push(h);
    }
    names.sort();
    names.dedup();
    names
}

fn rustix_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(h.trim().to_string())
}

fn init(
    data_dir: &Path,
    cluster: &str,
    advertise: &[String],
    port: u16,
    admin_config: Option<PathBuf>,
    admin_name: &str,
) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", data_dir.display()))?;
    let ca = ClusterCa::generate(cluster)?;
    ca.write_to(data_dir)?;
    let names = server_names(advertise);
    write_server_cert(data_dir, &ca.issue_server(&names, SERVER_CERT_LIFETIME)?)?;
    write_replace(
        &data_dir.join("server-names.json"),
        &serde_json::to_vec(&names)?,
        0o644,
    )?;
    let host = advertise
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let server = if host.parse::<SocketAddr>().is_ok()
        || host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host
    } else {
        format!("{host}:{port}")
    };
    let admin_dir = match admin_config {
        Some(d) => d,
        None => default_admin_config()?,
    };
    let admin = ca.issue_admin(admin_name, ADMIN_CERT_LIFETIME)?;
    Credential {
        server: server.clone(),
        name: admin_name.to_string(),
        ca_pem: ca.cert_pem().to_string(),
        identity: admin,
    }
    .write(&admin_dir)?;
    outln!("cluster CA created in {}", data_dir.display());
    outln!("CA digest: {}", ca.digest());
    outln!("server certificate for: {}", names.join(", "));
    outln!(
        "admin credential '{admin_name}' for {server} in {}",
        admin_dir.display()
    );
    // `run` listens on the default port unless told: the credential names `port`.
    let listen = if port == flotilla_api::DEFAULT_PORT {
        String::new()
    } else {
        format!(" --listen 0.0.0.0:{port}")
    };
    outln!(
        "next: orchestratord --data-dir {} run{listen}",
        data_dir.display()
    );
    Ok(())
}

fn write_server_cert(data_dir: &Path, cert: &CertifiedKey) -> Result<()> {
    write_replace(
        &data_dir.join("server-key.pem"),
        cert.key_pem.as_bytes(),
        0o600,
    )?;
    write_replace(
        &data_dir.join("server.pem"),
        cert.cert_pem.as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The server certificate, made anew when it is missing or close to expiry (nodes trust the
/// CA, so a new one reaches them without any step on their side).
fn server_cert(data_dir: &Path, ca: &ClusterCa) -> Result<CertifiedKey> {
    let read = |n: &str| std::fs::read_to_string(data_dir.join(n));
    if let (Ok(cert_pem), Ok(key_pem)) = (read("server.pem"), read("server-key.pem")) {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(|e| anyhow::anyhow!("server.pem: {e:?}"))?;
        let (_, not_after) = identity_of(&der)?;
        if not_after > std::time::SystemTime::now() + SERVER_CERT_RENEW_BEFORE {
            return Ok(CertifiedKey { cert_pem, key_pem });
        }
    }
    let names: Vec<String> = std::fs::read(data_dir.join("server-names.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| server_names(&[]));
    let fresh = ca.issue_server(&names, SERVER_CERT_LIFETIME)?;
    write_server_cert(data_dir, &fresh)?;
    tracing::info!("server certificate renewed");
    Ok(fresh)
}

/// What `orchestratord run` serves with, from flags over the configuration file.
#[derive(Clone)]
struct Settings {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    node_cert_lifetime: Duration,
    session_rate: u32,
    scaling_period: Duration,
    /// Bytes per second per node from the content store (0: no limit).
    image_rate_limit: u64,
    /// Mirrors the control plane's own pulls try first.
    registry_mirrors: flotilla_oci::registry::RegistryMirrors,
    network: network::Settings,
}

/// The network pools from the flags, then the file, then the defaults; checked.
fn network_settings(a: NetworkArgs, file: &FileConfig) -> Result<network::Settings> {
    let mut s = network::Settings::default();
    if let Some(p) = a.bridge_pool.or(file.bridge_pool) {
        s.bridge_pool = p.trunc();
    }
    if let Some(p) = a.bridge_prefix.or(file.bridge_prefix) {
        s.bridge_prefix = p;
    }
    if let Some(p) = a.vip_pool.or(file.vip_pool) {
        s.vip_pool = p.trunc();
    }
    let range = a.awsvpc_range.or(file.awsvpc_range.clone());
    let gateway = a.awsvpc_gateway.or(file.awsvpc_gateway);
    match a.awsvpc_subnet.or(file.awsvpc_subnet) {
        Some(subnet) => {
            let subnet = subnet.trunc();
            let (first, last) = match range {
                Some(r) => {
                    let bad = || {
                        anyhow::anyhow!(
                            "awsvpc_range: '{r}' is not FIRST-LAST (two IPv4 addresses)"
                        )
                    };
                    let (a, b) = r.split_once('-').ok_or_else(bad)?;
                    (
                        a.trim().parse().map_err(|_| bad())?,
                        b.trim().parse().map_err(|_| bad())?,
                    )
                }
                None => {
                    let hosts: Vec<std::net::Ipv4Addr> = subnet.hosts().collect();
                    match (hosts.first(), hosts.last()) {
                        (Some(f), Some(l)) => (*f, *l),
                        _ => bail!("awsvpc_subnet: {subnet} has no host addresses"),
                    }
                }
            };
            s.awsvpc = Some(network::AwsvpcPool {
                subnet,
                first,
                last,
                gateway,
            });
        }
        None if range.is_some() || gateway.is_some() => {
            bail!("awsvpc_range and awsvpc_gateway need awsvpc_subnet")
        }
        None => {}
    }
    s.check().map_err(anyhow::Error::msg)?;
    Ok(s)
}

async fn run(data_dir: &Path, settings: &Settings) -> Result<()> {
    let Settings {
        listen,
        metrics_listen,
        node_cert_lifetime,
        session_rate,
        scaling_period,
        image_rate_limit,
        ref registry_mirrors,
        ref network,
    } = *settings;
    if node_cert_lifetime < Duration::from_secs(30) {
        bail!("--node-cert-lifetime: at least 30 seconds");
    }
    if session_rate == 0 {
        bail!("--session-rate: at least 1 session per second");
    }
    if !(1..=300).contains(&scaling_period.as_secs()) {
        bail!("--scaling-period: from 1 to 300 seconds");
    }
    let ca = ClusterCa::load(data_dir).with_context(|| {
        format!(
            "loading the cluster CA from {} (run `orchestratord init` first)",
            data_dir.display()
        )
    })?;
    let server = server_cert(data_dir, &ca)?;
    let quic_tls = flotilla_certs::tls::server(
        ca.cert_pem(),
        &server,
        &[
            flotilla_certs::tls::ALPN_AGENT,
            flotilla_certs::tls::ALPN_JOIN,
        ],
    )?;
    let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls)
        .map_err(|e| anyhow::anyhow!("QUIC TLS configuration: {e}"))?;
    let mut quic = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(agents::IDLE_TIMEOUT).map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    // An agent opens bidirectional streams only (one per request, a blob's download): quinn
    // sets aside room in every session for each stream the peer may open, and its default
    // 100 unidirectional ones were half of the 3.2 KiB that took per session.
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    quic.transport_config(Arc::new(transport));
    // A node sent a Retry (admission under pressure, `agents::serve`) resends its Initial with
    // the token at each probe timeout, doubling, until its handshake is done or its own 30 s
    // handshake timeout passes. quinn checks the token's age when a copy opens a connection
    // (the first that arrives, or a later one when the first was dropped at a full socket
    // buffer), so it must outlive that resending, not quinn's 15 s, or the node is refused
    // with INVALID_TOKEN (414 of 10,000 dials in a cold admission): 40 s.
    quic.retry_token_lifetime(agents::ADMISSION_WAIT + agents::HANDSHAKE_WITHIN);
    let (socket, buffers) = orchestratord::udp::bind(listen, orchestratord::udp::BUFFER_BYTES)
        .with_context(|| format!("listening on udp {listen}"))?;
    if buffers.capped() {
        tracing::warn!(
            recv = buffers.recv,
            send = buffers.send,
            asked = buffers.asked,
            "the kernel capped the QUIC socket's buffers (raise net.core.rmem_max and wmem_max): \
             handshakes dropped in a reconnect storm are resent only after QUIC's probe timeout"
        );
    } else {
        tracing::info!(
            recv = buffers.recv,
            send = buffers.send,
            "QUIC socket buffers"
        );
    }
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = orchestratord::udp::FewSegments::wrap(socket, runtime.as_ref())
        .with_context(|| format!("listening on udp {listen}"))?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        orchestratord::udp::endpoint_config(ca.endpoint_keys()?),
        Some(quic),
        socket,
        runtime,
    )
    .with_context(|| format!("listening on udp {listen}"))?;
    let https_tls = flotilla_certs::tls::server(ca.cert_pem(), &server, &[b"http/1.1"])?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on tcp {listen}"))?;
    let metrics_tcp = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on tcp {addr}"))?,
        ),
        None => None,
    };

    let store = cluster::RedbStore::open(&data_dir.join("orchestratord.redb"))?;
    let cluster = cluster::Cluster::open(
        Box::new(store),
        ca,
        cluster::Config {
            node_cert_lifetime,
            session_rate,
            network: network.clone(),
            scaling_period,
        },
        Box::new(cluster::RandomIds),
        core::now(),
    )?;
    let plane = plane::Plane {
        core: core::Core::start(cluster).context("starting the core's thread")?,
        sessions: Default::default(),
        wake: Default::default(),
        metrics: Default::default(),
        content: Arc::new(
            content::ContentStore::open(data_dir, image_rate_limit)
                .with_context(|| format!("opening the content store in {}", data_dir.display()))?,
        ),
        puller: Arc::new(content::Puller::new(registry_mirrors.clone())),
        prefetches: Default::default(),
    };
    plane.sweep_content().await;
    if let Some(tcp) = metrics_tcp {
        let addr = tcp.local_addr().ok();
        tracing::info!(?addr, "serving metrics (HTTP GET /metrics)");
        tokio::spawn(scrape::serve(tcp, plane.clone()));
    }

    tokio::spawn(timers::run(plane.clone(), scaling_period));
    tracing::info!(%listen, "serving agents (QUIC) and operators (HTTPS)");
    // Under systemd: ready now that both listeners and the store are up; the watchdog is fed
    // only while the core and its store answer.
    flotilla_api::systemd::ready(&format!("serving agents and operators on {listen}"));
    if let Some(every) = flotilla_api::systemd::watchdog_interval() {
        let core = plane.core.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let answer = tokio::time::timeout(every, core.call(cluster::Command::Health));
                match answer.await {
                    Ok(Ok(o)) if o.reply == cluster::Reply::Health(true) => {
                        flotilla_api::systemd::ping()
                    }
                    _ => tracing::error!(
                        "the core or its store does not answer; withholding the watchdog ping"
                    ),
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = agents::serve(plane.clone(), endpoint.clone()) => {}
        _ = api::serve(tcp, Arc::new(https_tls), plane) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    flotilla_api::systemd::stopping();
    endpoint.close(quinn::VarInt::from_u32(0), b"control plane stopping");
    endpoint.wait_idle().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_every_key() {
        let example = include_str!("../../config/orchestratord.toml");
        let live = flotilla_api::config::uncomment(example, FILE_KEYS);
        for k in FILE_KEYS {
            assert!(
                live.lines().any(|l| l.starts_with(&format!("{k} = "))),
                "{k} is not in config/orchestratord.toml"
            );
        }
        let c: FileConfig =
            flotilla_api::config::parse("example", &live, FILE_KEYS).expect("example parses");
        assert_eq!(
            c.listen,
            Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))
        );
        assert_eq!(c.session_rate, Some(1000));
        // Off by default: the example shows a loopback address, commented out.
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert!(!example.lines().any(|l| l.starts_with("metrics_listen")));
    }

    #[test]
    fn the_help_of_config_names_every_key() {
        use clap::CommandFactory;
        let help = Cli::command()
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
