//! The key that seals secrets at rest, and sealing with it: ChaCha20-Poly1305 (RFC 8439) from
//! ring, a fresh random 96-bit nonce per value, and associated data naming what the value is
//! (a secret's name and version), so a sealed value moved to another record does not open.
//!
//! Where the key comes from:
//! - **Control plane**: derived from the cluster CA's private key with HKDF-SHA256 (RFC 5869;
//!   [`crate::ClusterCa::sealing_key`]). The store's file alone opens nothing; the key is as
//!   safe as the cluster's identity, needs no file of its own to back up or lose, and every
//!   control plane holding the CA derives the same one.
//! - **Node**: a random 256-bit key in its own file, mode 0600 ([`SealingKey::load_or_create`]),
//!   so the agent's database alone opens nothing, and the node's certificate key can be renewed
//!   without its sealed secrets being lost.
//!
//! A sealed value is `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::CertError;

/// Length of a key, bytes.
pub const KEY_LEN: usize = 32;

/// A key that seals and opens values. Its `Debug` shows nothing of it.
pub struct SealingKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

fn invalid(reason: impl Into<String>) -> CertError {
    CertError::Invalid {
        what: "sealed value",
        reason: reason.into(),
    }
}

/// 32 bytes derived from `secret` (key material of at least 32 bytes) for `purpose`, with
/// HKDF-SHA256 (RFC 5869): different purposes give unrelated keys.
pub(crate) fn derive_bytes(secret: &[u8], purpose: &[u8]) -> [u8; KEY_LEN] {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let prk =
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"flotilla sealing key").extract(secret);
    let mut bytes = [0u8; KEY_LEN];
    prk.expand(&[purpose], Len)
        .and_then(|okm| okm.fill(&mut bytes))
        .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF-SHA256's output"));
    bytes
}

impl SealingKey {
    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is ChaCha20-Poly1305's length"));
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// The node's key in `path`: read when it is there (it must be 32 bytes and not readable
    /// by others), made when it is not — written whole to a temporary file (0600, synced),
    /// renamed into place and the directory synced, so a power cut leaves the old state or the
    /// whole key. A file of another length is refused ([`CertError::Damaged`] naming it): the
    /// caller decides whether to set it aside and make a new key.
    pub fn load_or_create(path: &Path) -> Result<Self, CertError> {
        let io = |source| CertError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::File::open(path) {
            Ok(mut f) => {
                let meta = f.metadata().map_err(io)?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(CertError::Invalid {
                        what: "sealing key",
                        reason: format!(
                            "{} is readable by others (mode {:o}): `chmod 600` it",
                            path.display(),
                            meta.permissions().mode() & 0o777
                        ),
                    });
                }
                let mut bytes = Vec::new();
                f.by_ref()
                    .take(KEY_LEN as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io)?;
                let bytes: [u8; KEY_LEN] =
                    bytes.try_into().map_err(|b: Vec<u8>| CertError::Damaged {
                        what: "sealing key",
                        reason: format!(
                            "{} holds {} bytes, not {KEY_LEN}",
                            path.display(),
                            b.len()
                        ),
                    })?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| invalid("the system's random source failed"))?;
                let tmp = path.with_extension("new");
                let _ = fs::remove_file(&tmp);
                crate::write_new(&tmp, &bytes, 0o600)?;
                fs::rename(&tmp, path).map_err(io)?;
                if let Some(dir) = path.parent() {
                    fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|source| CertError::Io {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                }
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Derives a key from `secret` (key material of at least 32 bytes) for `purpose`, with
    /// HKDF-SHA256: different purposes give unrelated keys.
    pub fn derive(secret: &[u8], purpose: &[u8]) -> Self {
        Self::from_bytes(&derive_bytes(secret, purpose))
    }

    /// `plaintext` sealed, bound to `context` (which [`SealingKey::open`] must be given again).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CertError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| invalid("the system's random source failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| invalid("sealing failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plaintext of `sealed`, which must have been sealed with this key and `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CertError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(invalid("too short"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| invalid("too short"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| {
                invalid("it does not open with this key (another key, another record, or damaged)")
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_key_and_context() {
        let key = SealingKey::derive(&[7u8; 64], b"secrets");
        let sealed = key.seal(b"db\x001", b"hunter2").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open(b"db\x001", &sealed).expect("open"), b"hunter2");
        assert!(key.open(b"db\x002", &sealed).is_err(), "another record");
        let other = SealingKey::derive(&[7u8; 64], b"other");
        assert!(other.open(b"db\x001", &sealed).is_err(), "another key");
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(key.open(b"db\x001", &damaged).is_err(), "damaged");
        assert!(key.open(b"db\x001", &sealed[..10]).is_err(), "short");
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, key.seal(b"db\x001", b"hunter2").expect("seal"));
        assert_eq!(format!("{key:?}"), "SealingKey(..)");
    }

    #[test]
    fn a_node_key_file_is_made_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let a = SealingKey::load_or_create(&path).expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = a.seal(b"x", b"v").expect("seal");
        let b = SealingKey::load_or_create(&path).expect("load");
        assert_eq!(b.open(b"x", &sealed).expect("open"), b"v");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = SealingKey::load_or_create(&path).expect_err("readable by others");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, b"short").expect("write");
        assert!(matches!(
            SealingKey::load_or_create(&path),
            Err(CertError::Damaged { .. })
        ));
    }
}
