//! A credential directory: who we are to the cluster and where it is. Used for a node's
//! identity (`<data-dir>/identity/`) and an operator's (`~/.config/flotilla/`):
//!
//! - `credential.json` — server address and the name the certificate carries;
//! - `ca.pem` — the cluster CA (the only trust anchor);
//! - `cert.pem` — our certificate;
//! - `key.pem` — our private key, mode 0600, written with that mode from the start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{CertError, CertifiedKey};

/// The parts of a credential directory.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `host:port` of the control plane.
    pub server: String,
    /// Node id or admin name.
    pub name: String,
    /// Cluster CA (PEM).
    pub ca_pem: String,
    /// Certificate and key (PEM).
    pub identity: CertifiedKey,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    server: String,
    name: String,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file created with `mode`, then renames it:
/// readers see the old or the new file, never a mix, and never wider permissions.
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    f.write_all(bytes).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}

impl Credential {
    /// Writes the directory (created 0700), replacing what is there.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir))?;
        let meta = serde_json::to_vec_pretty(&Meta {
            server: self.server.clone(),
            name: self.name.clone(),
        })
        .map_err(|e| CertError::Invalid {
            what: "credential",
            reason: e.to_string(),
        })?;
        // Key first: a certificate is never on disk without its key.
        write_replace(
            &dir.join("key.pem"),
            self.identity.key_pem.as_bytes(),
            0o600,
        )?;
        write_replace(
            &dir.join("cert.pem"),
            self.identity.cert_pem.as_bytes(),
            0o644,
        )?;
        write_replace(&dir.join("ca.pem"), self.ca_pem.as_bytes(), 0o644)?;
        write_replace(&dir.join("credential.json"), &meta, 0o644)
    }

    /// Reads a credential directory.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| -> Result<String, CertError> {
            let p: PathBuf = dir.join(name);
            fs::read_to_string(&p).map_err(|source| CertError::Io { path: p, source })
        };
        let meta: Meta =
            serde_json::from_str(&read("credential.json")?).map_err(|e| CertError::Invalid {
                what: "credential.json",
                reason: e.to_string(),
            })?;
        Ok(Self {
            server: meta.server,
            name: meta.name,
            ca_pem: read("ca.pem")?,
            identity: CertifiedKey {
                cert_pem: read("cert.pem")?,
                key_pem: read("key.pem")?,
            },
        })
    }

    /// Replaces certificate and key (after a renewal).
    pub fn replace_identity(
        &mut self,
        dir: &Path,
        identity: CertifiedKey,
    ) -> Result<(), CertError> {
        write_replace(&dir.join("key.pem.new"), identity.key_pem.as_bytes(), 0o600)?;
        write_replace(
            &dir.join("cert.pem.new"),
            identity.cert_pem.as_bytes(),
            0o644,
        )?;
        // Both new files exist before either replaces its predecessor.
        fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).map_err(io_at(dir))?;
        fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).map_err(io_at(dir))?;
        self.identity = identity;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_private_and_the_directory_round_trips() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("cred");
        let c = Credential {
            server: "127.0.0.1:7443".into(),
            name: "alice".into(),
            ca_pem: "CA".into(),
            identity: CertifiedKey {
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            },
        };
        c.write(&dir).expect("write");
        let mode = |p: &str| {
            fs::metadata(dir.join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(
            fs::metadata(&dir).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        let mut back = Credential::load(&dir).expect("load");
        assert_eq!(
            (back.server.as_str(), back.identity.key_pem.as_str()),
            ("127.0.0.1:7443", "KEY")
        );
        back.replace_identity(
            &dir,
            CertifiedKey {
                cert_pem: "CERT2".into(),
                key_pem: "KEY2".into(),
            },
        )
        .expect("replace");
        assert_eq!(
            fs::read_to_string(dir.join("key.pem")).expect("read"),
            "KEY2"
        );
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(
            fs::read_dir(&dir).expect("ls").count(),
            4,
            "no temporary files left"
        );
    }
}
