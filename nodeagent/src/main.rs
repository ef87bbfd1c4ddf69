//! `nodeagent`: the Flotilla node agent. For now it offers `nodeagent ctr`, the low-level tool an
//! operator on site uses against the node's own store, with no control plane involved.

mod ctr;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default data directory of the agent.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/flotilla/nodeagent";

#[derive(Debug, Parser)]
#[command(name = "nodeagent", version, about = "Flotilla node agent")]
struct Cli {
    /// The agent's data directory (image store, state).
    #[arg(long, global = true, env = "NODEAGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Low-level tools for this node (images now; containers next).
    Ctr(ctr::CtrArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODEAGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Ctr(args) => ctr::run(&cli.data_dir, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
