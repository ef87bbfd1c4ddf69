//! `nodeagent ctr run|ps|inspect|stop|kill|rm|logs|stats|volume`: containers on this node.

use flotilla_api::{errln, outln};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_runtime::container::config::parse_size;
use flotilla_runtime::container::logs::{self, LogEntry, LogLimits, Stream};
use flotilla_runtime::container::{
    ContainerConfig, ContainerInfo, ContainerStore, MountRequest, NetworkMode, Resources, Status,
    Ulimit,
};
use rustix::process::Signal;

use crate::output::{human, table};

/// `ctr run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Start it in the background and print its id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Name for the container.
    #[arg(long)]
    name: Option<String>,
    /// Hard CPU limit in cores, e.g. 0.5 (cgroup quota): from 0.01 to this machine's CPUs,
    /// as `docker run --cpus`.
    #[arg(long, value_name = "CORES", value_parser = cores, allow_negative_numbers = true)]
    cpu: Option<f64>,
    /// Relative CPU weight in CPU units, 1024 per core (cgroup shares).
    #[arg(long, value_name = "UNITS", value_parser = count, allow_negative_numbers = true)]
    cpu_units: Option<u64>,
    /// Memory limit, e.g. 64M; past it the kernel OOM-kills the container.
    #[arg(long, value_name = "SIZE", value_parser = size, allow_negative_numbers = true)]
    memory: Option<u64>,
    /// Memory reservation (soft limit), e.g. 32M.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    memory_reservation: Option<u64>,
    /// Maximum processes and threads.
    #[arg(long, value_name = "N", value_parser = count, allow_negative_numbers = true)]
    pids: Option<u64>,
    /// Environment variable KEY=VALUE (KEY alone takes this shell's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Volume NAME:/path or bind /host/path:/path, optionally :ro.
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:TARGET[:ro]")]
    volumes: Vec<String>,
    /// tmpfs at /path, optionally :size=64m.
    #[arg(long, value_name = "PATH[:size=SIZE]")]
    tmpfs: Vec<String>,
    /// Resource limit NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]", value_parser = ulimit)]
    ulimits: Vec<Ulimit>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Network: none (own namespace, loopback only) or host.
    #[arg(long, value_enum, default_value_t = Net::None)]
    net: Net,
    /// Run as user[:group], by name or number.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory in the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname (default: the short id).
    #[arg(long)]
    hostname: Option<String>,
    /// Add a capability (e.g. NET_ADMIN, or ALL).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability (e.g. NET_RAW, or ALL).
    #[arg(long)]
    cap_drop: Vec<String>,
    /// All capabilities, no seccomp, no masked paths, every device. Only for trusted images.
    #[arg(long)]
    privileged: bool,
    /// Run an init as PID 1 that reaps orphaned processes and passes signals on to the
    /// command (as `docker run --init`).
    #[arg(long)]
    init: bool,
    /// Log file size before rotation.
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "10M")]
    log_max_size: u64,
    /// Log files kept.
    #[arg(long, value_name = "N", default_value_t = 3)]
    log_max_files: u32,
    /// Image name or digest.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Net {
    None,
    Host,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// A number of cores written plainly (`2`, `0.5`; not `+0.5`, `5e-1`, `inf`), from 0.01 (a
/// quota of 1 ms per 100 ms period, the kernel's least) to the CPUs this machine has online,
/// as Docker bounds `--cpus`.
fn cores(s: &str) -> Result<f64, String> {
    let online = online_cpus();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let plain = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (s.contains('.') <= !frac.is_empty());
    let c: f64 = s
        .parse()
        .ok()
        .filter(|_| plain)
        .ok_or_else(|| format!("'{s}' is not a number of cores: write it as 2 or 0.5"))?;
    if !(0.01..=online as f64).contains(&c) {
        return Err(format!(
            "{s} cores: give from 0.01 to {online} (the CPUs this machine has)"
        ));
    }
    Ok(c)
}

/// The CPUs this machine has online (`/sys/devices/system/cpu/online`, a list such as `0-3`
/// or `0,2-3`), whatever the affinity or CPU quota of the process asking — as Docker bounds
/// `--cpus` by the machine's; this process's share when that cannot be read.
fn online_cpus() -> usize {
    let counted = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| cpu_list_len(list.trim()));
    counted.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How many CPUs a kernel CPU list (`0-3`, `0,2-3`) names; `None` when it is not one.
fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// A count written plainly (`5`, not `+5` or `05`), as `--ulimit` takes its values.
fn count(s: &str) -> Result<u64, String> {
    flotilla_api::taskdef::parse_count(s)
}

/// Container and volume commands.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create and start a container; attached, its exit code becomes this command's.
    Run(Box<RunArgs>),
    /// List containers (running ones; -a for all).
    Ps {
        /// Include created and exited containers.
        #[arg(short, long)]
        all: bool,
        /// Only the ids, one per line.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a container: settings, state, pid, exit.
    Inspect {
        /// Name or id.
        container: String,
    },
    /// Stop containers: the image's StopSignal (else SIGTERM), then SIGKILL after the timeout.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Names or ids.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Names or ids.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        /// Names or ids.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command inside a running container (its namespaces, cgroup, user, capabilities
    /// and seccomp profile); exits with the command's code.
    Exec {
        /// Kill the command after this long, e.g. 30s (exit code 124).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Name or id.
        container: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        /// Keep printing new output until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Prefix each line with its time.
        #[arg(short, long)]
        timestamps: bool,
        /// Name or id.
        container: String,
    },
    /// CPU, memory and pids of running containers.
    Stats {
        /// Names or ids (default: every running container).
        containers: Vec<String>,
    },
}

/// `ctr volume`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume.
    Create {
        /// Volume name.
        name: String,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls,
    /// Show a volume and who uses it.
    Inspect {
        /// Volume name.
        name: String,
    },
    /// Remove volumes (refused while a container uses them).
    #[command(alias = "remove")]
    Rm {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn container(
    store: &ContainerStore,
    cmd: ContainerCommand,
    json: bool,
) -> Result<ExitCode> {
    match cmd {
        ContainerCommand::Run(args) => return run(store, *args).await,
        ContainerCommand::Ps { all, quiet } => {
            let list: Vec<ContainerInfo> = store
                .list()?
                .into_iter()
                .filter(|c| all || c.status == Status::Running)
                .collect();
            if quiet {
                for c in &list {
                    outln!("{}", c.record.id);
                }
            } else if json {
                let mut out = Vec::new();
                for c in &list {
                    let mut v = serde_json::to_value(c)?;
                    v["pid"] = serde_json::json!(c.pid());
                    out.push(v);
                }
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(ps_row).collect();
                table(
                    &[
                        "CONTAINER ID",
                        "NAME",
                        "IMAGE",
                        "COMMAND",
                        "STATUS",
                        "RESTARTS",
                        "PID",
                        "CREATED",
                    ],
                    &rows,
                );
            }
        }
        ContainerCommand::Inspect { container } => {
            let info = store.get(&container)?;
            let mut v = serde_json::to_value(&info)?;
            v["pid"] = serde_json::json!(info.pid());
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        ContainerCommand::Stop { time, containers } => {
            for c in containers {
                let s = store.clone();
                let key = c.clone();
                let exit =
                    tokio::task::spawn_blocking(move || s.stop(&key, Duration::from_secs(time)))
                        .await??;
                match exit {
                    Some(e) => outln!(
                        "{c}: exited {}{}",
                        e.exit_code,
                        if e.oom_killed { " (OOM killed)" } else { "" }
                    ),
                    None => outln!("{c}: stopped (exit code unknown)"),
                }
            }
        }
        ContainerCommand::Kill { signal, containers } => {
            let sig = parse_signal(&signal)?;
            for c in containers {
                store.kill(&c, sig)?;
                outln!("{c}");
            }
        }
        ContainerCommand::Rm { force, containers } => {
            for c in containers {
                let s = store.clone();
                let key = c.clone();
                tokio::task::spawn_blocking(move || s.remove(&key, force)).await??;
                outln!("{c}");
            }
        }
        ContainerCommand::Exec {
            timeout,
            container,
            command,
        } => {
            let mut cmd = store.exec_command(&container, &command, timeout, None)?;
            let code = tokio::task::spawn_blocking(move || -> Result<i32> {
                let status = cmd
                    .stdin(std::process::Stdio::inherit())
                    .status()
                    .context("starting the exec helper")?;
                Ok(status.code().unwrap_or(125))
            })
            .await??;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(125)));
        }
        ContainerCommand::Logs {
            follow,
            tail,
            timestamps,
            container,
        } => {
            let info = store.get(&container)?;
            let dir = store.paths(&info.record.id).logs();
            let (entries, mut follower) = logs::read(&dir, tail)?;
            // A removal takes the logs before the record: a container whose logs directory is
            // gone is going, and "no lines" would be a false answer.
            if !dir.exists() {
                bail!(
                    "container {}: removed while its logs were read",
                    info.record.display_name()
                );
            }
            print_entries(&entries, timestamps, json)?;
            if follow {
                loop {
                    let running = store.get(&info.record.id)?.status != Status::Exited;
                    let new = follower.poll()?;
                    print_entries(&new, timestamps, json)?;
                    if !running {
                        break;
                    }
                    // A quiet container writes nothing: end once the reader has gone.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = flotilla_api::stdout::closed() => {
                            return Ok(ExitCode::from(flotilla_api::stdout::EXIT_CLOSED_PIPE));
                        }
                    }
                }
            }
        }
        ContainerCommand::Stats { containers } => stats(store, containers, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn volume(store: &ContainerStore, cmd: VolumeCommand, json: bool) -> Result<()> {
    let volumes = store.volumes();
    match cmd {
        VolumeCommand::Create { name } => {
            let v = volumes.create(&name)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!("{}", v.name);
            }
        }
        VolumeCommand::Ls => {
            let list = volumes.list()?;
            let used = store.volumes_in_use()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            if used.contains(&v.name) { "yes" } else { "no" }.to_string(),
                            v.mountpoint.display().to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "IN USE", "MOUNTPOINT"], &rows);
            }
        }
        VolumeCommand::Inspect { name } => {
            let v = volumes.get(&name)?;
            let mut out = serde_json::to_value(&v)?;
            out["used_by"] = serde_json::json!(store.volume_users(&name)?);
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { names } => {
            for n in names {
                store.remove_volume(&n)?;
                outln!("{n}");
            }
        }
    }
    Ok(())
}

fn run_config(args: &RunArgs) -> Result<ContainerConfig> {
    let mut mounts = Vec::new();
    for v in &args.volumes {
        mounts.push(MountRequest::parse_volume(v).map_err(anyhow::Error::msg)?);
    }
    for t in &args.tmpfs {
        mounts.push(MountRequest::parse_tmpfs(t).map_err(anyhow::Error::msg)?);
    }
    let env = args
        .env
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect();
    // (bounded by `cores`)
    let cpu_limit_millis = args.cpu.map(|c| (c * 1000.0).round().max(10.0) as u64);
    Ok(ContainerConfig {
        resolv_conf: None,
        addresses: Vec::new(),
        name: args.name.clone(),
        image: args.image.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| vec![e.clone()]),
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        resources: Resources {
            cpu_units: args.cpu_units,
            cpu_limit_millis,
            memory: args.memory,
            memory_reservation: args.memory_reservation,
            pids: args.pids,
        },
        read_only: args.read_only,
        network: match args.net {
            Net::None => NetworkMode::None,
            Net::Host => NetworkMode::Host,
        },
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        mounts,
        log: LogLimits {
            max_size: args.log_max_size,
            max_files: args.log_max_files,
        },
        ulimits: args.ulimits.clone(),
        init: args.init,
        task_cgroup: None,
        secrets: Vec::new(),
        configs: Vec::new(),
    })
}

/// `NAME=SOFT[:HARD]` (HARD defaults to SOFT); `-1` or `unlimited` for no limit, as Docker's
/// `--ulimit memlock=-1:-1` takes it. A value is a count written plainly
/// ([`flotilla_api::taskdef::parse_count`]: not `+5`, `05`), and values that would keep the
/// container from running are refused here with the reason
/// ([`flotilla_api::taskdef::ulimit_problem`]: `cpu=0`), naming the limit and the value.
fn ulimit(s: &str) -> Result<Ulimit, String> {
    let (name, limits) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected NAME=SOFT[:HARD]"))?;
    if flotilla_runtime::container::spec::rlimit_type(name).is_none() {
        return Err(format!(
            "'{s}': unknown limit '{name}' (as, core, cpu, data, fsize, locks, memlock, \
             msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)"
        ));
    }
    let num = |x: &str| match x {
        "-1" | "unlimited" => Ok(flotilla_api::taskdef::UNLIMITED),
        _ => flotilla_api::taskdef::parse_count(x)
            .map_err(|e| format!("ulimit {name}: {e}; give a count, -1 or unlimited")),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(limits)?, num(limits)?),
    };
    if let Some(why) = flotilla_api::taskdef::ulimit_problem(name, soft, hard) {
        return Err(format!("ulimit {name}={limits}: {why}"));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// Exit code when the container could not be started at all (as Docker's 125).
pub const START_FAILED: u8 = 125;

async fn run(store: &ContainerStore, args: RunArgs) -> Result<ExitCode> {
    if args.rm && args.detach {
        bail!("--rm and -d together: a detached container is removed with `ctr rm`");
    }
    let config = run_config(&args)?;
    let s = store.clone();
    let created = tokio::task::spawn_blocking(move || {
        let record = s.create(config)?;
        let id = record.id.clone();
        Ok::<_, flotilla_runtime::container::ContainerError>((record, s.start(&id)))
    })
    .await?;
    // Settings the store refuses are a container that could not start, as `docker run` exits
    // 125 for them too.
    let (record, started) = match created {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {e}");
            return Ok(ExitCode::from(START_FAILED));
        }
    };
    let started = match started {
        Ok(st) => st,
        // As `docker run`: 127 for a command not found, 126 for one that cannot be run.
        Err(e @ flotilla_runtime::container::ContainerError::CannotRun { code, .. }) => {
            errln!("error: {e}");
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(START_FAILED)));
        }
        Err(e) => {
            errln!("error: {e}");
            return Ok(ExitCode::from(START_FAILED));
        }
    };
    let id = record.id.clone();
    if args.detach {
        started.detach();
        outln!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let log_dir = store.paths(&id).logs();
    let (entries, mut follower) = logs::read(&log_dir, None)?;
    print_entries(&entries, false, false)?;
    let mut waiter = tokio::task::spawn_blocking(move || started.wait());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut interrupts = 0;
    // Once the reader of this output has gone (`ctr run … | head -1`), the container is
    // stopped, as a pipeline's writer ends by SIGPIPE, and its output no longer printed.
    let mut reader_gone = false;
    let code = loop {
        let printed = tokio::select! {
            r = &mut waiter => break r.ok().flatten(),
            _ = tick.tick(), if !reader_gone => print_entries(&follower.poll()?, false, false),
            () = flotilla_api::stdout::closed(), if !reader_gone => {
                Err(flotilla_api::stdout::closed_error().into())
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                let s = store.clone();
                let key = id.clone();
                if interrupts == 1 {
                    errln!("stopping {} (Ctrl-C again to kill)", record.display_name());
                    tokio::task::spawn_blocking(move || s.stop(&key, Duration::from_secs(10)));
                } else {
                    let _ = s.kill(&key, Signal::KILL);
                }
                Ok(())
            }
        };
        match printed {
            Err(e) if flotilla_api::stdout::closed_pipe(&*e) => {
                reader_gone = true;
                let s = store.clone();
                let key = id.clone();
                tokio::task::spawn_blocking(move || s.stop(&key, Duration::from_secs(10)));
            }
            r => r?,
        }
    };
    if !reader_gone {
        print_entries(&follower.poll()?, false, false)?;
    }
    let info = store.get(&id)?;
    let code = info.exit.as_ref().map(|e| e.exit_code).or(code);
    if let Some(e) = &info.exit {
        if e.oom_killed {
            errln!(
                "{}: OOM killed (memory limit reached)",
                record.display_name()
            );
        }
    }
    if args.rm {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.remove(&id, true)).await??;
    }
    if reader_gone {
        return Ok(ExitCode::from(flotilla_api::stdout::EXIT_CLOSED_PIPE));
    }
    Ok(match code {
        Some(c) => ExitCode::from((c & 0xff) as u8),
        None => {
            errln!(
                "{}: exit code unknown (its shim ended without recording it)",
                record.display_name()
            );
            ExitCode::from(255)
        }
    })
}

fn print_entries(entries: &[LogEntry], timestamps: bool, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for e in entries {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
            continue;
        }
        let w: &mut dyn Write = match e.stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        if timestamps {
            write!(w, "{} ", e.time)?;
        }
        w.write_all(&e.content)?;
        if !e.partial {
            w.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn ps_row(c: &ContainerInfo) -> Vec<String> {
    let r = &c.record;
    let mut cmd = c
        .record
        .config
        .entrypoint
        .clone()
        .unwrap_or_else(|| r.image_process.entrypoint.clone());
    cmd.extend(r.config.command.clone().unwrap_or_else(|| {
        if r.config.entrypoint.is_some() {
            Vec::new()
        } else {
            r.image_process.cmd.clone()
        }
    }));
    let mut cmd = cmd.join(" ");
    if cmd.chars().count() > 30 {
        cmd = cmd.chars().take(29).collect::<String>() + "…";
    }
    let status = match (c.status, &c.exit) {
        (Status::Created, _) => "created".to_string(),
        (Status::Running, _) => "running".to_string(),
        (Status::Exited, Some(e)) if e.unknown => "exited (unknown)".to_string(),
        (Status::Exited, Some(e)) if e.error.is_some() => {
            format!("exited ({}, restart failed)", e.exit_code)
        }
        (Status::Exited, Some(e)) if e.oom_killed => {
            format!("exited ({}, OOM killed)", e.exit_code)
        }
        (Status::Exited, Some(e)) => format!("exited ({})", e.exit_code),
        (Status::Exited, None) => "exited (unknown)".to_string(),
    };
    vec![
        r.id.chars().take(12).collect(),
        r.config.name.clone().unwrap_or_default(),
        flotilla_runtime::image::ImageRef::familiar(&r.image.name).to_string(),
        cmd,
        status,
        c.restart_count.to_string(),
        c.pid().map(|p| p.to_string()).unwrap_or_default(),
        ago(r.created_at),
    ]
}

fn ago(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let d = now.saturating_sub(secs);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

async fn stats(store: &ContainerStore, keys: Vec<String>, json: bool) -> Result<()> {
    let targets: Vec<ContainerInfo> = if keys.is_empty() {
        store
            .list()?
            .into_iter()
            .filter(|c| c.status == Status::Running)
            .collect()
    } else {
        keys.iter()
            .map(|k| store.get(k))
            .collect::<Result<_, _>>()?
    };
    // CPU % needs two samples.
    let window = Duration::from_millis(500);
    let first: Vec<_> = targets.iter().map(|c| store.stats(&c.record.id)).collect();
    tokio::time::sleep(window).await;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (c, a) in targets.iter().zip(first) {
        let a = a.with_context(|| format!("container {}", c.record.display_name()))?;
        let b = store.stats(&c.record.id)?;
        let cpu = (b.cpu_ns.saturating_sub(a.cpu_ns)) as f64 / window.as_nanos() as f64 * 100.0;
        rows.push(vec![
            c.record.id.chars().take(12).collect(),
            c.record.config.name.clone().unwrap_or_default(),
            format!("{cpu:.1}%"),
            format!(
                "{} / {}",
                human(b.memory_bytes),
                b.memory_limit
                    .map(human)
                    .unwrap_or_else(|| "no limit".into())
            ),
            match b.pids_limit {
                Some(l) => format!("{} / {l}", b.pids),
                None => b.pids.to_string(),
            },
            b.oom_kills.to_string(),
        ]);
        out.push(flotilla_runtime::container::ContainerStats {
            id: c.record.id.clone(),
            name: c.record.config.name.clone(),
            cpu_percent: cpu,
            usage: b,
        });
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        table(
            &["CONTAINER ID", "NAME", "CPU", "MEMORY", "PIDS", "OOM KILLS"],
            &rows,
        );
    }
    Ok(())
}

fn parse_signal(s: &str) -> Result<Signal> {
    Ok(flotilla_runtime::container::parse_signal(s)?)
}

/// Paths a bind mount may come from, from `--bind-root` / `NODEAGENT_BIND_ROOTS`.
pub fn bind_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{cores, cpu_list_len, online_cpus, ulimit};

    #[test]
    fn the_machines_cpus_are_read_from_the_kernels_list() {
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-3"), Some(4));
        assert_eq!(cpu_list_len("0,2-3"), Some(3));
        for bad in ["", "x", "3-1", "0-", "-1"] {
            assert_eq!(cpu_list_len(bad), None, "{bad:?}");
        }
        // Not this process's share: the machine's.
        assert!(online_cpus() >= std::thread::available_parallelism().map_or(1, |n| n.get()));
    }

    #[test]
    fn cores_are_plain_numbers_from_a_hundredth_to_the_machines_cpus() {
        assert_eq!(cores("0.5"), Ok(0.5));
        assert_eq!(cores("1"), Ok(1.0));
        assert_eq!(cores("0.01"), Ok(0.01));
        let online = online_cpus();
        assert_eq!(cores(&online.to_string()), Ok(online as f64));
        for bad in [
            "+0.5", "-1", "5e-1", "inf", "NaN", ".5", "1.", "0x1", " 1", "", "1,5",
        ] {
            let e = cores(bad).expect_err(bad);
            assert!(e.contains("is not a number of cores"), "{bad}: {e}");
        }
        for out in ["0", "0.001", "0.009", &format!("{}", online + 1), "1000000"] {
            let e = cores(out).expect_err(out);
            assert!(e.contains("give from 0.01 to"), "{out}: {e}");
        }
    }

    #[test]
    fn ulimits_name_the_limit_the_value_and_why() {
        let u = ulimit("nofile=1024:4096").expect("valid");
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 4096));
        let u = ulimit("memlock=-1").expect("unlimited");
        assert_eq!(u.soft, flotilla_api::taskdef::UNLIMITED);
        ulimit("cpu=1:unlimited").expect("a second of CPU");
        for (arg, want) in [
            ("cpu=0", "ulimit cpu=0: a CPU-time limit of 0 seconds kills"),
            ("cpu=0:10", "ulimit cpu=0:10: a CPU-time limit of 0 seconds"),
            ("nofile=+5", "ulimit nofile: '+5' is not a count"),
            ("nofile=5:+6", "ulimit nofile: '+6' is not a count"),
            (
                "nofile=05",
                "ulimit nofile: '05' has a leading zero (write 5)",
            ),
            ("nofile= 5", "ulimit nofile: ' 5' is not a count"),
            ("nofile=1e3", "ulimit nofile: '1e3' is not a count"),
            (
                "nofile=10:5",
                "ulimit nofile=10:5: the soft limit (10) is above",
            ),
            ("bogus=1", "'bogus=1': unknown limit 'bogus'"),
            ("nofile", "'nofile': expected NAME=SOFT[:HARD]"),
        ] {
            let e = ulimit(arg).expect_err(arg);
            assert!(e.starts_with(want), "{arg}: {e}");
        }
    }

    #[test]
    fn counts_are_plain() {
        assert_eq!(super::count("5"), Ok(5));
        assert!(super::count("+5").is_err());
        assert!(super::count("05").is_err());
    }
}
