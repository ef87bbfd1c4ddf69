//! `flotilla-shim`: the per-container supervisor, and the helper that runs a command or a
//! network probe inside a running container. nodeagent launches it (already isolated: see
//! `flotilla_runtime::container::isolate`); nobody runs it by hand.
//!
//! It is its own small binary, not a mode of `nodeagent`, because one runs per container for
//! the container's whole life and each container start executes it: a binary holding only the
//! container runtime is mapped, relocated and forked (the container's init is a fork of it) at
//! a fraction of the agent's cost — see BENCHMARKS.md, *Container start to exit* and *Node
//! footprint*.
//!
//! ```text
//! flotilla-shim --data-dir DIR --id ID                          supervise container ID (its
//!                                                               secret material on stdin)
//! flotilla-shim --data-dir DIR --id ID [--timeout MS] [--console-socket PATH] -- CMD…
//!                                                               run CMD inside it (on a
//!                                                               terminal sent to PATH)
//! flotilla-shim --data-dir DIR --id ID --timeout MS --probe P   probe tcp:PORT | http:PORT/PATH
//! ```
//!
//! Exit codes: the shim 0 once the container's exit is recorded, 1 when it could not start it;
//! exec the command's code, 124 on timeout, 126 when it could not run; a probe 0 (passed),
//! 1 (failed) or 126; 2 for a usage error. Diagnostics go to stderr (the container's
//! `shim.log`), filtered by `NODEAGENT_LOG` as the agent's are (`tracing_subscriber`'s
//! target syntax, e.g. `warn,libcontainer=error`).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flotilla_runtime::container::{exec, shim};

/// Exit code for a command line the shim does not understand.
const USAGE: u8 = 2;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    data_dir: PathBuf,
    id: String,
    timeout: Option<Duration>,
    probe: Option<String>,
    console: Option<PathBuf>,
    exec: Vec<String>,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut data_dir = None;
    let mut id = None;
    let mut timeout = None;
    let mut probe = None;
    let mut console = None;
    let mut exec = Vec::new();
    fn text(flag: &str, v: Option<OsString>) -> Result<String, String> {
        v.ok_or_else(|| format!("{flag} needs a value"))?
            .into_string()
            .map_err(|v| format!("{flag}: not UTF-8: {v:?}"))
    }
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--data-dir") => {
                data_dir = Some(PathBuf::from(
                    args.next().ok_or("--data-dir needs a value")?,
                ))
            }
            Some("--id") => id = Some(text("--id", args.next())?),
            Some("--timeout") => {
                let ms = text("--timeout", args.next())?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("--timeout: '{ms}' is not a number of milliseconds"))?;
                timeout = Some(Duration::from_millis(ms));
            }
            Some("--probe") => probe = Some(text("--probe", args.next())?),
            Some("--console-socket") => {
                console = Some(PathBuf::from(
                    args.next().ok_or("--console-socket needs a value")?,
                ))
            }
            Some("--") => {
                for a in args.by_ref() {
                    exec.push(
                        a.into_string()
                            .map_err(|a| format!("the command's argument {a:?} is not UTF-8"))?,
                    );
                }
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let data_dir = data_dir.ok_or("--data-dir is required")?;
    let id = id.ok_or("--id is required")?;
    if probe.is_some() && !exec.is_empty() {
        return Err("--probe and a command are exclusive".into());
    }
    if console.is_some() && exec.is_empty() {
        return Err("--console-socket goes with a command".into());
    }
    Ok(Args {
        data_dir,
        id,
        timeout,
        probe,
        console,
        exec,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            // Never a panic, with standard error gone too.
            let _ = writeln!(
                std::io::stderr(),
                "flotilla-shim: {e} (it is launched by nodeagent, not by hand)"
            );
            return ExitCode::from(USAGE);
        }
    };
    // An exec helper or probe reports its own failure in one line; libcontainer's would
    // repeat it.
    let quiet = args.probe.is_some() || !args.exec.is_empty();
    let default_filter = if quiet {
        "warn,libcgroups=off,libcontainer=off"
    } else {
        "warn,libcgroups=error,libcontainer=error"
    };
    let filter: tracing_subscriber::filter::Targets = std::env::var("NODEAGENT_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| default_filter.parse().unwrap_or_default());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .try_init();
    // No async runtime and no other thread here: the shim forks containers (and exec joins
    // them) and must stay single-threaded until they exist.
    let code = if let Some(p) = &args.probe {
        let timeout = args.timeout.unwrap_or(Duration::from_secs(5));
        exec::probe_main(&args.data_dir, &args.id, p, timeout)
    } else if args.exec.is_empty() {
        shim::main(&args.data_dir, &args.id)
    } else {
        exec::main(
            &args.data_dir,
            &args.id,
            args.exec,
            args.timeout,
            args.console.as_deref(),
        )
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split(' ').map(OsString::from))
    }

    #[test]
    fn the_three_modes_parse_as_the_agent_launches_them() {
        let shim = args("--data-dir /d --id c1").expect("shim");
        assert_eq!((shim.data_dir, shim.id), (PathBuf::from("/d"), "c1".into()));
        assert!(shim.exec.is_empty() && shim.probe.is_none() && shim.timeout.is_none());
        let exec = args("--data-dir /d --id c1 --timeout 1500 -- sh -c --id").expect("exec");
        assert_eq!(exec.exec, ["sh", "-c", "--id"]);
        assert_eq!(exec.timeout, Some(Duration::from_millis(1500)));
        let probe = args("--data-dir /d --id c1 --timeout 5 --probe http:80/x").expect("probe");
        assert_eq!(probe.probe.as_deref(), Some("http:80/x"));
    }

    #[test]
    fn a_bad_command_line_names_what_is_wrong() {
        for (line, says) in [
            ("--id c1", "--data-dir is required"),
            ("--data-dir /d", "--id is required"),
            ("--data-dir /d --id", "--id needs a value"),
            (
                "--data-dir /d --id c --timeout soon",
                "'soon' is not a number",
            ),
            ("--data-dir /d --id c --exec", "unexpected argument"),
            ("--data-dir /d --id c --probe tcp:1 -- true", "exclusive"),
        ] {
            let e = args(line).expect_err(line);
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
