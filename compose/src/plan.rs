//! Mapping a loaded project onto Flotilla's task definitions and services.

use crate::Loaded;

/// What a project becomes on the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The project (the discovery namespace of its services).
    pub project: String,
    /// Keys that do not map, each with its path.
    pub warnings: Vec<String>,
}

/// Maps a loaded project.
///
/// # Errors
/// Every problem found, each naming its key path.
pub fn plan(loaded: &Loaded) -> Result<Plan, Vec<String>> {
    Err(vec![format!(
        "compose: project {}: mapping is not built yet",
        loaded.name
    )])
}
