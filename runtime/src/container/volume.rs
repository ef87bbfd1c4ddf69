//! Named local volumes: directories under `<data>/volumes/<name>/_data` that outlive the
//! containers using them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::config::validate_name;

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Where its data lives on the node (not in its record: the store fills it in).
    #[serde(default)]
    pub mountpoint: PathBuf,
}

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Bad name.
    #[error("{0}")]
    Name(String),
    /// No such volume.
    #[error("volume '{0}' not found")]
    NotFound(String),
    /// Still used.
    #[error("volume '{name}' is in use by container(s) {containers}")]
    InUse {
        /// The volume.
        name: String,
        /// Who uses it.
        containers: String,
    },
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node's volumes.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    /// Opens the store under `data_dir/volumes`.
    pub fn open(data_dir: &Path) -> Result<Self, VolumeError> {
        let root = data_dir.join("volumes");
        fs::create_dir_all(&root).map_err(io_at(&root))?;
        Ok(Self { root })
    }

    fn dir(&self, name: &str) -> Result<PathBuf, VolumeError> {
        validate_name("volume", name).map_err(VolumeError::Name)?;
        Ok(self.root.join(name))
    }

    /// Creates a volume; an existing one is returned unchanged.
    pub fn create(&self, name: &str) -> Result<Volume, VolumeError> {
        let dir = self.dir(name)?;
        if let Ok(v) = self.get(name) {
            return Ok(v);
        }
        // Build it aside and rename, so a half-made volume is never seen.
        let tmp = self
            .root
            .join(format!(".new-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("_data")).map_err(io_at(&tmp))?;
        // Docker's mode for a new volume, whatever the caller's umask: a container running
        // as another user than root must reach it.
        fs::set_permissions(
            tmp.join("_data"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(io_at(&tmp))?;
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let meta = serde_json::json!({ "name": name, "created_at": created_at });
        fs::write(tmp.join("volume.json"), meta.to_string()).map_err(io_at(&tmp))?;
        match fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Created concurrently by someone else: theirs stands.
            Err(_) if dir.join("volume.json").exists() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(io_at(&dir)(e));
            }
        }
        self.get(name)
    }

    /// A volume by name.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        let dir = self.dir(name)?;
        let meta = dir.join("volume.json");
        let bytes = match fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_at(&meta)(e)),
        };
        let mut v: Volume = serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
            path: meta.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        v.mountpoint = dir.join("_data");
        Ok(v)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_at(&self.root))? {
            let entry = entry.map_err(io_at(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.get(&name) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!("skipping volume directory '{name}': {e}"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a volume and its data; `users` are the containers that reference it.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                containers: users.join(", "),
            });
        }
        let dir = self.dir(name)?;
        // Rename first so a crash mid-removal never leaves a half-empty volume in use.
        let doomed = self.root.join(format!(".rm-{name}-{}", std::process::id()));
        fs::rename(&dir, &doomed).map_err(io_at(&dir))?;
        fs::remove_dir_all(&doomed).map_err(io_at(&doomed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_remove() {
        let d = tempfile::tempdir().expect("tmp");
        let s = VolumeStore::open(d.path()).expect("open");
        let v = s.create("data").expect("create");
        fs::write(v.mountpoint.join("f"), "x").expect("write");
        assert_eq!(s.create("data").expect("again"), v);
        assert_eq!(s.list().expect("ls").len(), 1);
        assert!(matches!(
            s.remove("data", &["web".into()]),
            Err(VolumeError::InUse { .. })
        ));
        s.remove("data", &[]).expect("rm");
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
        assert!(matches!(s.create("../etc"), Err(VolumeError::Name(_))));
        assert_eq!(
            fs::read_dir(d.path().join("volumes")).expect("ls").count(),
            0
        );
    }
}
