//! Cluster identity. Only this crate handles private keys. For now: creating the cluster CA and
//! storing it (certificate world-readable, key 0600); node enrollment and mTLS build on it.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// File name of the CA certificate in a control plane's data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a control plane's data directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Key or certificate generation failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The library error.
        source: rcgen::Error,
    },
    /// A file already exists where a new CA would be written.
    #[error("{0} already exists; refusing to overwrite a cluster CA")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A freshly created cluster CA: its certificate and key in PEM.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a CA (ECDSA P-256, 10 years, backdated a day for boards with slow clocks) named
    /// after the cluster.
    pub fn generate(cluster: &str) -> Result<Self, CertError> {
        let gen = |what| move |source| CertError::Generate { what, source };
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen("CA key"))?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen("CA parameters"))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("flotilla cluster CA {cluster}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
        params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
        let cert = params.self_signed(&key).map_err(gen("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// `sha256:<hex>` of the certificate's DER: what join tokens pin.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.cert_der)))
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`, never overwriting either.
    pub fn write_to(&self, dir: &Path) -> Result<(), CertError> {
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        for p in [&cert, &key] {
            if p.exists() {
                return Err(CertError::Exists(p.clone()));
            }
        }
        write_new(&key, self.key_pem.as_bytes(), 0o600)?;
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)
    }
}

/// Creates `path` with `mode` from the start (no window with wider permissions) and writes it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_files_have_strict_modes_and_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("test").expect("generate");
        ca.write_to(dir.path()).expect("write");
        let mode = |f| {
            fs::metadata(dir.path().join(f))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        let pem = fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("read");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = ClusterCa::generate("test").expect("generate");
        assert_ne!(again.digest(), ca.digest());
        assert!(matches!(
            again.write_to(dir.path()),
            Err(CertError::Exists(_))
        ));
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("read"),
            pem
        );
    }
}
