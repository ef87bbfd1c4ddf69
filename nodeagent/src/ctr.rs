//! `nodeagent ctr`: images, containers and volumes on this node, in the spirit of containerd's
//! `ctr`.

use flotilla_api::outln;
use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use crate::ctr_container::{container, volume, ContainerCommand, VolumeCommand};
use crate::images::ImageSettings;
use crate::output::{human, table};
use crate::pull::{PullFailed, Puller};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_runtime::container::{ContainerStore, StoreOptions};
use flotilla_runtime::image::{
    Credentials, ImageRecord, ImageRef, ImageStore, Phase, Platform, ProgressEvent, ProgressFn,
    PullOptions, RegistryOptions,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct CtrArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: CtrCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum CtrCommand {
    /// Images in the node's store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Named local volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Task networks the agent made (with the agent stopped).
    #[command(subcommand)]
    Network(NetworkCommand),
    #[command(flatten)]
    Container(ContainerCommand),
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// List task networks: task, mode, address, published ports.
    Ls,
    /// Remove every task network: namespaces, veths, the bridge, the nftables table (after
    /// the node's containers are gone; the agent must be stopped).
    Prune,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Pull an image from an OCI distribution registry (through its mirrors first, when the
    /// configuration's registry_mirrors or --registry-mirror give it some).
    Pull {
        /// Image reference, e.g. registry.example:5000/app:1.2 or busybox.
        reference: String,
        /// Use plain HTTP with the registry (only for registries you trust on a trusted
        /// network; a mirror's own URL says whether it is plain HTTP).
        #[arg(long)]
        insecure: bool,
        /// Registry credentials USER:PASSWORD (or USER with --password-stdin).
        #[arg(long, value_name = "USER[:PASSWORD]")]
        user: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Platform to pick from a multi-platform image (default: this node's), e.g. linux/arm64.
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The archive or layout directory.
        file: PathBuf,
        /// Name for the image when the archive does not carry one.
        #[arg(long)]
        name: Option<String>,
        /// Platform to pick from a multi-platform archive (default: this node's).
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// Build a small image from this machine's static busybox (Debian's busybox-static) and
    /// import it: no registry needed.
    ImportBusybox {
        /// The static busybox binary.
        #[arg(long, default_value = flotilla_runtime::image::busybox::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// Name of the image.
        #[arg(long, default_value = "demo/busybox:latest")]
        name: String,
    },
    /// List stored images.
    #[command(alias = "list")]
    Ls,
    /// Show an image: digest, size, platform, config, layer directories.
    Inspect {
        /// Image name or manifest digest.
        reference: String,
    },
    /// File an image under another name as well.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Remove image names and the content no other image uses.
    #[command(alias = "remove")]
    Rm {
        /// Image names or manifest digests.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove unreferenced content, partial downloads and leftovers.
    Prune {
        /// Instead, collect by disk pressure as the agent does: at or above
        /// image_gc_high_threshold_percent of the store's filesystem used, remove the least
        /// recently used images no container uses until it is down to
        /// image_gc_low_threshold_percent.
        #[arg(long)]
        disk_pressure: bool,
    },
}

/// Whether `cmd` brings something new onto the node (an image, a container, a volume), and so
/// may make the data directory; every other command reads or changes what is already there.
fn adds_to_node(cmd: &CtrCommand) -> bool {
    matches!(
        cmd,
        CtrCommand::Image(
            ImageCommand::Pull { .. }
                | ImageCommand::Import { .. }
                | ImageCommand::ImportBusybox { .. }
        ) | CtrCommand::Container(ContainerCommand::Run(_))
            | CtrCommand::Volume(VolumeCommand::Create { .. })
    )
}

pub async fn run(
    data_dir: &Path,
    node: StoreOptions,
    images: &ImageSettings,
    args: CtrArgs,
) -> Result<ExitCode> {
    let json = args.output == Output::Json;
    // A mistyped --data-dir must not leave an empty store behind, nor list "nothing" as if the
    // node had no containers.
    if !adds_to_node(&args.command) && !data_dir.is_dir() {
        bail!(
            "no data directory at {}: pass the node's --data-dir (the agent's default is {})",
            data_dir.display(),
            crate::DEFAULT_DATA_DIR
        );
    }
    if let CtrCommand::Image(cmd) = args.command {
        let store = ImageStore::open(data_dir)
            .with_context(|| format!("opening the image store in {}", data_dir.display()))?;
        image(&store, images, cmd, json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let CtrCommand::Network(cmd) = args.command {
        network(data_dir, cmd, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if matches!(
        &args.command,
        CtrCommand::Container(ContainerCommand::Run(_))
    ) && crate::host_fit(data_dir, &node, flotilla_runtime::preflight::CTR_RUN).is_none()
    {
        return Ok(ExitCode::from(crate::ctr_container::START_FAILED));
    }
    let store = ContainerStore::open(data_dir, node)
        .with_context(|| format!("opening the container store in {}", data_dir.display()))?;
    match args.command {
        CtrCommand::Image(_) | CtrCommand::Network(_) => Ok(ExitCode::SUCCESS),
        CtrCommand::Volume(cmd) => {
            volume(&store, cmd, json)?;
            Ok(ExitCode::SUCCESS)
        }
        CtrCommand::Container(cmd) => container(&store, cmd, json).await,
    }
}

fn network(data_dir: &Path, cmd: NetworkCommand, json: bool) -> Result<()> {
    let path = data_dir.join("agent.redb");
    if !path.exists() {
        if !json {
            outln!(
                "no task networks (no agent state in {})",
                data_dir.display()
            );
        } else {
            outln!("[]");
        }
        return Ok(());
    }
    let db = crate::db::AgentDb::open(&path).with_context(|| {
        format!(
            "opening {} (is the agent running? stop it first)",
            path.display()
        )
    })?;
    let nets = crate::network::Networks::open(
        std::sync::Arc::new(db),
        data_dir,
        crate::network::Settings::default(),
        None,
        "",
    )?;
    match cmd {
        NetworkCommand::Ls => {
            let list = nets.list();
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(t, n, ready)| serde_json::json!({"task": t, "network": n, "complete": ready}))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|(t, n, ready)| {
                        vec![
                            t.clone(),
                            serde_json::to_value(n.mode)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default(),
                            n.address.map(|a| a.to_string()).unwrap_or_default(),
                            n.bindings
                                .iter()
                                .map(|b| {
                                    format!(
                                        "{}->{}/{:?}",
                                        b.host_port, b.container_port, b.protocol
                                    )
                                    .to_lowercase()
                                })
                                .collect::<Vec<_>>()
                                .join(","),
                            if *ready { "yes" } else { "no" }.to_string(),
                        ]
                    })
                    .collect();
                table(&["TASK", "MODE", "ADDRESS", "PORTS", "COMPLETE"], &rows);
            }
        }
        NetworkCommand::Prune => {
            let n = nets.prune()?;
            if !json {
                outln!("removed {n} task network(s)");
            }
        }
    }
    Ok(())
}

async fn image(
    store: &ImageStore,
    settings: &ImageSettings,
    cmd: ImageCommand,
    json: bool,
) -> Result<()> {
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure,
            user,
            password_stdin,
            platform,
        } => {
            let by = Puller::Ctr {
                credentials: user.is_some(),
                insecure,
            };
            let credentials = credentials(user, password_stdin)?;
            let opts = PullOptions {
                registry: RegistryOptions {
                    credentials,
                    insecure,
                },
                platform,
                mirrors: settings.mirrors.clone(),
            };
            let (progress, done) = progress_reporter(json);
            let rec = store.pull(&reference, &opts, progress).await;
            done();
            let rec = rec.map_err(|e| PullFailed::new(&e, &reference, by))?;
            let verb = match &rec.mirror {
                Some(m) => format!("pulled (from mirror {m})"),
                None => "pulled".to_string(),
            };
            print_records(&[rec], json, &verb);
        }
        ImageCommand::Import {
            file,
            name,
            platform,
        } => {
            let (progress, done) = progress_reporter(json);
            let recs = store
                .import(&file, name.as_deref(), platform, progress)
                .await;
            done();
            let by = Puller::Ctr {
                credentials: false,
                insecure: false,
            };
            let recs = recs.map_err(|e| PullFailed::new(&e, &file.display().to_string(), by))?;
            print_records(&recs, json, "imported");
        }
        ImageCommand::ImportBusybox { busybox, name } => {
            let staging =
                std::env::temp_dir().join(format!("flotilla-busybox-{}", std::process::id()));
            let layout = staging.clone();
            let built = tokio::task::spawn_blocking(move || {
                flotilla_runtime::image::busybox::write_layout(&busybox, &layout, "latest")
            })
            .await?;
            let recs = match built {
                Ok(()) => {
                    store
                        .import(&staging, Some(&name), None, Arc::new(|_| {}))
                        .await
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e.into());
                }
            };
            let _ = std::fs::remove_dir_all(&staging);
            print_records(&recs?, json, "imported");
        }
        ImageCommand::Ls => {
            let recs = store.list()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&recs)?);
            } else {
                print_table(&recs);
            }
        }
        ImageCommand::Inspect { reference } => {
            let d = store.inspect(&reference)?;
            outln!("{}", serde_json::to_string_pretty(&d)?);
        }
        ImageCommand::Tag { source, target } => {
            let rec = store.tag(&source, &target)?;
            print_records(&[rec], json, "tagged");
        }
        ImageCommand::Rm { references } => {
            let mut freed = Vec::new();
            for r in &references {
                let report = store.remove(r)?;
                if !json {
                    outln!(
                        "removed {r} (freed {} layers, {})",
                        report.layers,
                        human(report.bytes)
                    );
                }
                freed.push(serde_json::json!({ "removed": r, "freed": report }));
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&freed)?);
            }
        }
        ImageCommand::Prune { disk_pressure } => {
            if disk_pressure {
                let policy = settings.gc;
                let s = store.clone();
                let r = tokio::task::spawn_blocking(move || {
                    s.collect_by_pressure(&policy, std::time::SystemTime::now())
                        .map_err(anyhow::Error::from)
                })
                .await??;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                let used = |u: Option<flotilla_runtime::image::gc::FsUsage>| {
                    u.map_or(0, |u| u.used_percent())
                };
                if r.busy {
                    bail!("a pull holds the image store: try again when it is done");
                }
                for name in &r.removed {
                    outln!("removed {}", ImageRef::familiar(name));
                }
                outln!(
                    "image store filesystem {} % used (high {} %, low {} %){}",
                    used(r.before),
                    policy.high_percent,
                    policy.low_percent,
                    match r.after {
                        Some(_) => format!(
                            "; freed {} in {} layers, now {} %",
                            human(r.freed.bytes),
                            r.freed.layers,
                            used(r.after)
                        ),
                        None => String::new(),
                    }
                );
                return Ok(());
            }
            let report = store.prune()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                outln!(
                    "removed {} blobs, {} layers, {} partial downloads; freed {}",
                    report.blobs,
                    report.layers,
                    report.partials,
                    human(report.bytes)
                );
            }
        }
    }
    Ok(())
}

fn credentials(user: Option<String>, password_stdin: bool) -> Result<Credentials> {
    let Some(user) = user else {
        if password_stdin {
            bail!("--password-stdin needs --user");
        }
        return Ok(Credentials::Anonymous);
    };
    let (user, password) = match user.split_once(':') {
        Some((u, p)) if !password_stdin => (u.to_string(), p.to_string()),
        Some(_) => bail!("give the password either in --user or on standard input, not both"),
        None if password_stdin => {
            let mut p = String::new();
            std::io::stdin()
                .read_to_string(&mut p)
                .context("reading the password from standard input")?;
            (user, p.trim_end_matches(['\n', '\r']).to_string())
        }
        None => bail!("--user needs USER:PASSWORD, or USER with --password-stdin"),
    };
    Ok(Credentials::Basic { user, password })
}

/// A progress callback: bars on a terminal, one line per layer phase otherwise (nothing with
/// `-o json`). The returned closure finishes the display.
fn progress_reporter(json: bool) -> (ProgressFn, Box<dyn FnOnce()>) {
    if json {
        return (Arc::new(|_| {}), Box::new(|| {}));
    }
    if std::io::stdout().is_terminal() {
        let multi = MultiProgress::new();
        let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
        let style =
            ProgressStyle::with_template("{prefix} {msg:12} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let b = bars.clone();
        let cb: ProgressFn = Arc::new(move |ev: ProgressEvent| {
            let mut bars = b.lock().unwrap_or_else(|p| p.into_inner());
            let bar = bars.entry(ev.layer.to_string()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(ev.size));
                bar.set_style(style.clone());
                bar.set_prefix(ev.layer.short().to_string());
                bar
            });
            match ev.phase {
                Phase::Cached => bar.finish_with_message("exists"),
                Phase::Downloading(n) => {
                    bar.set_message("downloading");
                    bar.set_position(n);
                }
                Phase::Unpacking => {
                    bar.set_position(ev.size);
                    bar.set_message("unpacking");
                }
                Phase::Done => bar.finish_with_message("done"),
            }
        });
        let done = Box::new(move || {
            for bar in bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        });
        return (cb, done);
    }
    let last: Arc<Mutex<HashMap<String, &'static str>>> = Arc::default();
    let cb: ProgressFn = Arc::new(move |ev: ProgressEvent| {
        let phase = match ev.phase {
            Phase::Cached => "exists",
            Phase::Downloading(_) => "downloading",
            Phase::Unpacking => "unpacking",
            Phase::Done => "done",
        };
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.insert(ev.layer.to_string(), phase) != Some(phase) {
            outln!("layer {} ({}): {phase}", ev.layer.short(), human(ev.size));
        }
    });
    (cb, Box::new(|| {}))
}

fn print_records(recs: &[ImageRecord], json: bool, verb: &str) {
    if json {
        outln!("{}", serde_json::to_string_pretty(recs).unwrap_or_default());
        return;
    }
    for r in recs {
        outln!(
            "{verb} {} {} ({}, {})",
            ImageRef::familiar(&r.name),
            r.digest,
            r.platform,
            human(r.size())
        );
    }
}

fn print_table(recs: &[ImageRecord]) {
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            vec![
                ImageRef::familiar(&r.name).to_string(),
                r.digest.short().to_string(),
                r.platform.to_string(),
                human(r.size()),
                human(r.unpacked_size()),
            ]
        })
        .collect();
    table(&["NAME", "DIGEST", "PLATFORM", "SIZE", "UNPACKED"], &rows);
}
