//! `flotilla secret create|rotate|ls|inspect|rm` and `flotilla config create|update|ls|inspect|rm`:
//! configs are files kept as they are and mounted where a container definition's `configs`
//! say. Secrets are kept sealed by the control plane and
//! given to the containers that reference them (`valueFrom: flotilla:NAME[:JSON-KEY][:VERSION]`).
//! A value is read from a file, standard input or `--from-literal` pairs, sent once, and never
//! shown again: every command prints metadata only.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;
use flotilla_api::outln;
use flotilla_api::secrets::{SecretInfo, SecretPut, SecretValue, MAX_VALUE};
use flotilla_client::{Client, ValueKind};

use crate::{cell, print, print_document, read_input, table, when, Output};

/// Where a value comes from: exactly one of these.
#[derive(Debug, Clone, clap::Args)]
pub struct ValueArgs {
    /// The value is this file's bytes, as they are (a trailing newline is kept: write it with
    /// `printf`, not `echo`). `-` reads standard input.
    #[arg(value_name = "FILE|-", conflicts_with_all = ["from_file", "from_literal"])]
    source: Option<PathBuf>,
    /// The value is this file's bytes (as FILE).
    #[arg(long, value_name = "FILE", conflicts_with = "from_literal")]
    from_file: Option<PathBuf>,
    /// The value is a JSON object of these pairs (repeatable); a secret's keys are what a task
    /// definition picks with `flotilla:NAME:KEY`. Arguments are visible to other users of this
    /// machine (`ps`) while the command runs: prefer a file or standard input for secrets.
    #[arg(long, value_name = "KEY=VALUE")]
    from_literal: Vec<String>,
}

impl ValueArgs {
    /// The value asked for.
    fn value(&self) -> Result<SecretValue> {
        let bytes = match (&self.source, &self.from_file, self.from_literal.as_slice()) {
            (Some(f), None, []) | (None, Some(f), []) => read_input(f)?,
            (None, None, pairs) if !pairs.is_empty() => {
                let mut object = serde_json::Map::new();
                for (i, pair) in pairs.iter().enumerate() {
                    // Never shown: a mistyped pair may be the value itself.
                    let Some((k, v)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                        bail!(
                            "--from-literal number {}: not KEY=VALUE (a key, '=', the value)",
                            i + 1
                        );
                    };
                    if object
                        .insert(k.to_string(), serde_json::Value::String(v.to_string()))
                        .is_some()
                    {
                        bail!("--from-literal: key '{k}' is given twice");
                    }
                }
                serde_json::to_vec(&object)?
            }
            _ => bail!("give the value: FILE, - (standard input), --from-file FILE or --from-literal KEY=VALUE"),
        };
        if let Some(why) = flotilla_api::secrets::value_problem(&bytes) {
            bail!("{}", why.replace("a secret's value", "the value"));
        }
        debug_assert!(bytes.len() <= MAX_VALUE);
        Ok(SecretValue(bytes))
    }
}

/// `flotilla secret …`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret from a file, standard input or KEY=VALUE pairs (at most 65,536 bytes):
    /// its first version (the number after the last one, for a name that was removed).
    Create {
        /// Secret name: 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit.
        name: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Give a secret a new version. Tasks placed from now on get it; running tasks keep
    /// theirs (`flotilla service update --force-new-deployment` rolls a service).
    Rotate {
        /// Secret name.
        name: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List secrets (never their values).
    #[command(alias = "list")]
    Ls,
    /// Show a secret's versions and the task definitions that use it (never its value).
    Inspect {
        /// Secret name.
        name: String,
    },
    /// Remove secrets with all their versions; refused while in use, unless --force.
    #[command(alias = "remove")]
    Rm {
        /// Remove even while active task definition revisions or running tasks reference
        /// it: their containers then cannot start anew.
        #[arg(long)]
        force: bool,
        /// Secret names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn summary(s: &SecretInfo) -> String {
    let v = s.versions.last();
    format!(
        "{}: version {} ({} bytes)",
        s.name,
        s.latest(),
        v.map_or(0, |v| v.size)
    )
}

/// The metadata list `ls` prints.
fn print_list(output: Output, list: &[SecretInfo]) -> Result<()> {
    print(output, &list, || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|s| {
                vec![
                    cell(&s.name),
                    s.latest().to_string(),
                    s.versions.last().map_or(0, |v| v.size).to_string(),
                    when(s.versions.last().map_or(s.created_at, |v| v.created_at)),
                    if s.used_by.is_empty() {
                        "-".to_string()
                    } else {
                        cell(&s.used_by.join(","))
                    },
                ]
            })
            .collect();
        table(&["NAME", "VERSION", "BYTES", "UPDATED", "USED BY"], &rows);
    })
}

/// What a `secret` or `config` command does.
enum Op {
    Create(String, ValueArgs),
    NewVersion(String, ValueArgs),
    Ls,
    Inspect(String),
    Rm(bool, Vec<String>),
}

/// Runs `op` on the secrets or configs.
async fn run_op(api: &Client, kind: ValueKind, op: Op, output: Output) -> Result<()> {
    match op {
        Op::Create(name, value) => {
            let put = SecretPut {
                name,
                value: value.value()?,
            };
            let s = api.create_value(kind, &put).await?;
            print(output, &s, || outln!("{}", summary(&s)))?;
        }
        Op::NewVersion(name, value) => {
            let s = api.new_version(kind, &name, &value.value()?).await?;
            print(output, &s, || outln!("{}", summary(&s)))?;
        }
        Op::Ls => print_list(output, &api.values(kind).await?)?,
        Op::Inspect(name) => print_document(output, &api.value_info(kind, &name).await?)?,
        Op::Rm(force, names) => {
            let noun = match kind {
                ValueKind::Secret => "secret",
                ValueKind::Config => "config",
            };
            crate::each(&names, noun, "not removed", async |name| {
                api.remove_value(kind, name, force).await?;
                outln!("{name} removed");
                Ok(())
            })
            .await
            .1?;
        }
    }
    Ok(())
}

/// Runs `cmd`.
pub async fn run(api: &Client, cmd: SecretCommand, output: Output) -> Result<()> {
    let op = match cmd {
        SecretCommand::Create { name, value } => Op::Create(name, value),
        SecretCommand::Rotate { name, value } => Op::NewVersion(name, value),
        SecretCommand::Ls => Op::Ls,
        SecretCommand::Inspect { name } => Op::Inspect(name),
        SecretCommand::Rm { force, names } => Op::Rm(force, names),
    };
    run_op(api, ValueKind::Secret, op, output).await
}

/// `flotilla config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create a config from a file or standard input (at most 65,536 bytes): its first
    /// version (the number after the last one, for a name that was removed).
    Create {
        /// Config name: 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit.
        name: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Give a config a new version. Tasks placed from now on get it; running tasks keep
    /// theirs (`flotilla service update --force-new-deployment` rolls a service).
    Update {
        /// Config name.
        name: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List configs.
    #[command(alias = "list")]
    Ls,
    /// Show a config's versions and the task definitions that use it.
    Inspect {
        /// Config name.
        name: String,
    },
    /// Remove configs with all their versions; refused while in use, unless --force.
    #[command(alias = "remove")]
    Rm {
        /// Remove even while task definitions or running tasks use it: their containers then
        /// cannot start anew.
        #[arg(long)]
        force: bool,
        /// Config names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs `cmd`.
pub async fn run_config(api: &Client, cmd: ConfigCommand, output: Output) -> Result<()> {
    let op = match cmd {
        ConfigCommand::Create { name, value } => Op::Create(name, value),
        ConfigCommand::Update { name, value } => Op::NewVersion(name, value),
        ConfigCommand::Ls => Op::Ls,
        ConfigCommand::Inspect { name } => Op::Inspect(name),
        ConfigCommand::Rm { force, names } => Op::Rm(force, names),
    };
    run_op(api, ValueKind::Config, op, output).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: Option<&str>, file: Option<&str>, literal: &[&str]) -> ValueArgs {
        ValueArgs {
            source: source.map(PathBuf::from),
            from_file: file.map(PathBuf::from),
            from_literal: literal.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn literals_make_a_json_object_and_errors_never_show_a_value() {
        let v = args(None, None, &["user=app", "password=a=b"])
            .value()
            .expect("value");
        let object: serde_json::Value = serde_json::from_slice(&v.0).expect("json");
        assert_eq!(
            object,
            serde_json::json!({"user": "app", "password": "a=b"})
        );
        let e = args(None, None, &["user=app", "user=hunter2"])
            .value()
            .expect_err("an error");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for bad in ["=hunter2", "hunter2"] {
            let e = args(None, None, &[bad]).value().expect_err("an error");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert!(args(None, None, &[]).value().is_err(), "no value");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("v");
        std::fs::write(&f, b"s3cret\n").expect("write");
        let v = args(None, f.to_str(), &[]).value().expect("file");
        assert_eq!(v.0, b"s3cret\n", "a file's bytes as they are");
        std::fs::write(&f, b"").expect("write");
        assert!(args(f.to_str(), None, &[]).value().is_err(), "empty");
    }
}
