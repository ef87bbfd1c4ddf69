//! Compose files for Flotilla.
//!
//! Two steps, as `docker compose` has them:
//!
//! 1. [`load`] reads the files (`-f`, merged in order), the `.env` file, interpolates
//!    variables, applies YAML merge keys, resolves `extends`, applies profiles, makes relative
//!    paths absolute and inlines `env_file`: one canonical document ([`Loaded`]), what
//!    `flotilla compose config` prints.
//! 2. [`plan`] maps that document onto Flotilla: a task definition (ECS shape) and a service
//!    per Compose service, the project as their discovery namespace, with a warning naming
//!    every key that does not map.
//!
//! Rules follow the Compose specification (<https://github.com/compose-spec/compose-spec>:
//! `spec.md`, `interpolation.md`, `merge.md`, `profiles.md`, `extends.md`) and what
//! `docker compose config` does where the specification is silent.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

mod dotenv;
pub mod files;
mod interpolate;
pub mod load;
mod merge;
pub mod plan;
mod yaml;

pub use load::{load, LoadOptions};
pub use plan::{
    plan, stages, Condition, Dependency, Plan, ServicePlan, ValueKind, ValueOrigin, ValueSource,
};

/// A project's files loaded into one canonical document.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The project's name: `-p`, else the top-level `name:`, else `COMPOSE_PROJECT_NAME`, else
    /// the project directory's name, normalized to a DNS label.
    pub name: String,
    /// The project directory (the first file's directory unless told otherwise): relative
    /// paths were resolved against the directory of the file that held them.
    pub project_dir: PathBuf,
    /// The merged document: variables interpolated, merge keys applied, `extends` resolved,
    /// services outside the active profiles removed, paths absolute, `env_file` inlined into
    /// `environment`.
    pub document: yaml_serde::Value,
    /// What the loader noticed that does not stop it (an unset variable, an obsolete key),
    /// each naming its file and key path. An unset variable is warned once, at the first
    /// place it was used, with how many more places used it.
    pub warnings: Vec<String>,
    /// Bind sources the loader made absolute from `~` (the `HOME` of the machine that loaded
    /// the files), as they are now, with what was written (`~/data`): the plan warns that
    /// they are paths of this machine, as it does for relative ones.
    pub home_paths: BTreeMap<String, String>,
}
