//! The claim on a network namespace's node-level networking: its task bridge and its nftables
//! table `ip flotilla` exist once per namespace, so one node agent at a time may make, render or
//! remove them there.
//!
//! The claim is an exclusive `flock(2)` on `/run/flotilla/netns-<dev>-<inode>.lock`, named by the
//! device and inode of the namespace (`/proc/self/ns/net`; namespaces(7) identifies one by both),
//! holding the holder's pid and data directory so that a
//! refusal can name them. The kernel drops it with the process, so a killed agent leaves nothing
//! to clean up. An agent takes it before it makes the bridge or renders a table and lets it go
//! once it has neither; another agent in the namespace (a second `flotilla dev`, or a dev cluster
//! beside the node's systemd agent) is then refused bridge tasks with the holder named, and never
//! removes what the holder made.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flotilla_api::lockfile::Lock;

/// Where claims live: tmpfs, emptied at boot like the namespaces they name.
const DIR: &str = "/run/flotilla";

/// The claim file of the network namespace this process is in.
pub fn path_for_this_namespace() -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net (the agent's network namespace)")?;
    Ok(path_in(Path::new(DIR), ns.dev(), ns.ino()))
}

/// `DIR/netns-<dev>-<inode>.lock`.
fn path_in(dir: &Path, dev: u64, ino: u64) -> PathBuf {
    dir.join(format!("netns-{dev}-{ino}.lock"))
}

/// A held claim; dropping it lets it go.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

/// Why a claim was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Another process holds it.
    #[error(
        "this network namespace's task bridge and nftables table belong to another node agent \
         ({holder}): one node agent per network namespace — stop the other one, or run this one \
         in a network namespace of its own"
    )]
    Held {
        /// `pid N, data dir D`, as the holder wrote it.
        holder: String,
    },
    /// The claim file could not be used.
    #[error("{0:#}")]
    Io(anyhow::Error),
}

impl Claim {
    /// Takes the claim at `path` without waiting, writing `data_dir` and this process's id in
    /// it.
    pub fn take(path: &Path, data_dir: &Path) -> Result<Self, Refused> {
        let me = format!(
            "pid {}, data dir {}",
            std::process::id(),
            data_dir.display()
        );
        match flotilla_api::lockfile::try_lock(path, &me) {
            Ok(Lock::Taken(file)) => Ok(Self { _file: file }),
            Ok(Lock::Busy { holder }) => Err(Refused::Held {
                holder: holder.unwrap_or_else(|| "which did not say its pid".to_string()),
            }),
            Err(e) => Err(Refused::Io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holder_named_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(&dir.path().join("run"), 4, 4026531840);
        assert!(path.ends_with("run/netns-4-4026531840.lock"));
        let first = Claim::take(&path, Path::new("/var/lib/a")).expect("first");
        let err = Claim::take(&path, Path::new("/var/lib/b")).expect_err("second");
        let said = err.to_string();
        assert!(
            said.contains(&format!("pid {}, data dir /var/lib/a", std::process::id()))
                && said.contains("one node agent per network namespace"),
            "{said}"
        );
        drop(first);
        Claim::take(&path, Path::new("/var/lib/b")).expect("taken once let go");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("pid {}, data dir /var/lib/b\n", std::process::id())
        );
    }
}
