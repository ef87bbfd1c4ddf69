//! `orchestratord`: the Flotilla control plane. For now it creates the cluster identity
//! (`init`); serving agents and operators builds on it.

#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flotilla_certs::ClusterCa;

/// Default data directory of the control plane.
const DEFAULT_DATA_DIR: &str = "/var/lib/flotilla/orchestratord";

#[derive(Debug, Parser)]
#[command(name = "orchestratord", version, about = "Flotilla control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster CA in the data directory (the key never leaves this host).
    Init {
        /// The control plane's data directory.
        #[arg(long, env = "ORCHESTRATORD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Cluster name, written into the CA's subject.
        #[arg(long, default_value = "default")]
        cluster: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Init { data_dir, cluster } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("securing {}", data_dir.display()))?;
            let ca = ClusterCa::generate(&cluster)?;
            ca.write_to(&data_dir)?;
            println!("cluster CA created in {}", data_dir.display());
            println!("CA digest: {}", ca.digest());
            Ok(())
        }
    }
}
