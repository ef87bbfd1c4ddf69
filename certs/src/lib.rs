//! Cluster identity. Only this crate handles private keys: the cluster CA, the control plane's
//! server certificate, node certificates issued from CSRs (only the CSR's public key is used),
//! admin client certificates, join tokens ([`token`]) and the rustls configurations of the
//! mutually authenticated channel ([`tls`]).
//!
//! Every certificate says who it is for in one URI SAN — `flotilla://server`,
//! `flotilla://node/<id>`, `flotilla://admin/<name>` — and what it may do in its extended key
//! usage (server certificates: server auth only; node and admin: client auth only).

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

pub mod credential;
pub mod sealing;
pub mod tls;
pub mod token;

/// The name every control plane certificate carries and every client asks for (SNI), whatever
/// address it dials: nodes verify the cluster's server, not an address.
pub const SERVER_NAME: &str = "orchestratord.flotilla.internal";
/// How far back certificates are dated, for boards whose clock lags a little.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Default lifetime of node certificates (renewed at 50–80 % of it).
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Default lifetime of the server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Default lifetime of admin certificates.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

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
    /// A certificate, key or CSR does not parse or verify.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was read.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A key file is there but damaged (of the wrong length): its holder may set it aside.
    #[error("{what}: {reason}")]
    Damaged {
        /// What was read.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The keys of the control plane's QUIC endpoint that are the same after a restart, so that a
/// restarted control plane can tell a node that the session it still holds is gone: the
/// node's next packet (a keep-alive comes every 5 s) is answered with a stateless reset (RFC
/// 9000 §10.3) and the node redials then, rather than after its idle timeout. They last as
/// long as the CA's key; control planes that shared them would each reset the others'
/// sessions (RFC 9000 §21.11), so one that runs beside another must mix in its own identity.
pub struct EndpointKeys {
    /// The stateless reset key: a reset's token is HMAC-SHA256(key, connection ID).
    pub reset_key: ring::hmac::Key,
    /// The key that tags the connection IDs the control plane issues (HMAC-SHA256 of their
    /// random part): a packet for an ID without its tag was never the control plane's and is
    /// dropped without a reset.
    pub cid_key: ring::hmac::Key,
}

impl std::fmt::Debug for EndpointKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointKeys").finish_non_exhaustive()
    }
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

    /// The certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The key that seals what the control plane keeps secret at rest (secrets' values),
    /// derived from the CA's private key with HKDF-SHA256 for `purpose` (see [`sealing`]).
    pub fn sealing_key(&self, purpose: &[u8]) -> Result<sealing::SealingKey, CertError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| invalid("CA key", e))?;
        Ok(sealing::SealingKey::derive(&key.serialize_der(), purpose))
    }

    /// The keys of the control plane's QUIC endpoint that must outlive a restart, derived from
    /// the CA's private key with HKDF-SHA256 (see [`EndpointKeys`]).
    pub fn endpoint_keys(&self) -> Result<EndpointKeys, CertError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| invalid("CA key", e))?;
        let der = key.serialize_der();
        let hmac = |purpose: &[u8]| {
            ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &sealing::derive_bytes(&der, purpose),
            )
        };
        Ok(EndpointKeys {
            reset_key: hmac(b"flotilla quic stateless reset"),
            cid_key: hmac(b"flotilla quic connection id"),
        })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(|source| CertError::Io { path: p, source })
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key_pem = read(CA_KEY_FILE)?;
        let cert_der = pem_der(&cert_pem, "CA certificate")?;
        KeyPair::from_pem(&key_pem).map_err(|e| invalid("CA key", e))?;
        Ok(Self {
            cert_pem,
            cert_der,
            key_pem,
        })
    }

    fn issue(
        &self,
        params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, CertError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| invalid("CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| invalid("CA certificate", e))?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|source| CertError::Generate {
                what: "certificate",
                source,
            })?;
        Ok(cert.pem())
    }

    /// Issues the control plane's server certificate (and its key) for `names` (host names or
    /// IP addresses it is reached by) plus [`SERVER_NAME`].
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<CertifiedKey, CertError> {
        let key = new_key()?;
        let mut params = leaf_params(Role::Server, "orchestratord", lifetime)?;
        params
            .subject_alt_names
            .push(SanType::DnsName(ia5(SERVER_NAME)?));
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(ia5(n)?),
                });
        }
        let cert_pem = self.issue(params, &key)?;
        Ok(CertifiedKey {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node certificate for `node_id` from a CSR: only the CSR's public key is used
    /// (its subject, names and extensions are ignored), after its signature is checked.
    pub fn issue_node(
        &self,
        csr_pem: &str,
        node_id: &str,
        lifetime: Duration,
    ) -> Result<String, CertError> {
        validate_name(node_id)?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid("certificate signing request", e))?;
        let params = leaf_params(Role::Node, node_id, lifetime)?;
        self.issue(params, &csr.public_key)
    }

    /// Issues an admin client certificate and its key for operator `name`.
    pub fn issue_admin(&self, name: &str, lifetime: Duration) -> Result<CertifiedKey, CertError> {
        validate_name(name)?;
        let key = new_key()?;
        let params = leaf_params(Role::Admin, name, lifetime)?;
        let cert_pem = self.issue(params, &key)?;
        Ok(CertifiedKey {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues an admin client certificate for operator `name` from a CSR (only its public
    /// key is used): the operator's key stays where it was made.
    pub fn issue_admin_from_csr(
        &self,
        csr_pem: &str,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, CertError> {
        validate_name(name)?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid("certificate signing request", e))?;
        let params = leaf_params(Role::Admin, name, lifetime)?;
        self.issue(params, &csr.public_key)
    }

    /// Checks a rejoin: `old_cert_pem` must be a node certificate this CA issued (checked at a
    /// moment it was valid: it may have expired while the node was offline) and `proof` a
    /// signature by its key over the request ([`rejoin_proof`]). Returns the node id to keep.
    pub fn verify_rejoin(
        &self,
        old_cert_pem: &str,
        proof: &str,
        token_id: &str,
        csr_pem: &str,
    ) -> Result<String, CertError> {
        use base64::Engine as _;
        use rustls_pki_types::CertificateDer;
        let refused = |reason: String| CertError::Invalid {
            what: "rejoin",
            reason,
        };
        let der = pem_der(old_cert_pem, "previous certificate")?;
        let (identity, _) = identity_of(&der)?;
        if identity.role != Role::Node {
            return Err(refused(
                "the previous certificate is not a node certificate".into(),
            ));
        }
        let (not_before, _) = validity_of(&der)?;
        let at = not_before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(1);
        let ca_der = CertificateDer::from(self.cert_der.clone());
        let anchor = webpki::anchor_from_trusted_cert(&ca_der)
            .map_err(|e| refused(format!("the cluster CA: {e}")))?;
        let leaf = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| refused(format!("previous certificate: {e}")))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(at),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            refused(format!(
                "the previous certificate was not issued by this cluster: {e}"
            ))
        })?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(proof)
            .map_err(|e| refused(format!("proof: {e}")))?;
        ee.verify_signature(
            webpki::ring::ECDSA_P256_SHA256,
            &rejoin_transcript(token_id, csr_pem),
            &sig,
        )
        .map_err(|_| refused("the proof is not signed by the previous certificate's key".into()))?;
        Ok(identity.name)
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

/// A certificate with its private key, both PEM. The key is never printed.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The control plane.
    Server,
    /// A node agent.
    Node,
    /// An operator.
    Admin,
}

/// Who a certificate names: role and name (node id, admin name; `orchestratord` for the
/// server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The role.
    pub role: Role,
    /// The name within the role.
    pub name: String,
}

impl Identity {
    fn uri(role: Role, name: &str) -> String {
        match role {
            Role::Server => "flotilla://server".to_string(),
            Role::Node => format!("flotilla://node/{name}"),
            Role::Admin => format!("flotilla://admin/{name}"),
        }
    }
}

/// The identity a (verified) certificate carries in its `flotilla://` URI SAN, and its
/// validity end. Exactly one such name must be present.
pub fn identity_of(cert_der: &[u8]) -> Result<(Identity, SystemTime), CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| invalid("certificate", e))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| invalid("certificate", e))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("flotilla://") => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(CertError::Invalid {
            what: "certificate",
            reason: format!("expected one flotilla:// name, found {}", uris.len()),
        });
    };
    let rest = &uri["flotilla://".len()..];
    let identity = match rest.split_once('/') {
        None if rest == "server" => Identity {
            role: Role::Server,
            name: "orchestratord".into(),
        },
        Some(("node", n)) if validate_name(n).is_ok() => Identity {
            role: Role::Node,
            name: n.into(),
        },
        Some(("admin", n)) if validate_name(n).is_ok() => Identity {
            role: Role::Admin,
            name: n.into(),
        },
        _ => {
            return Err(CertError::Invalid {
                what: "certificate",
                reason: format!("unknown identity {uri}"),
            })
        }
    };
    let not_after = cert.validity().not_after.timestamp();
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    Ok((identity, until))
}

fn rejoin_transcript(token_id: &str, csr_pem: &str) -> Vec<u8> {
    let mut t = b"flotilla-rejoin/1\0".to_vec();
    t.extend_from_slice(token_id.as_bytes());
    t.push(0);
    t.extend_from_slice(csr_pem.as_bytes());
    t
}

/// A node's proof, for a rejoin, that it holds the key of its previous certificate: its
/// signature (base64) over the token id and the new CSR.
pub fn rejoin_proof(old_key_pem: &str, token_id: &str, csr_pem: &str) -> Result<String, CertError> {
    use base64::Engine as _;
    use rcgen::SigningKey as _;
    let key = KeyPair::from_pem(old_key_pem).map_err(|e| invalid("previous key", e))?;
    let sig = key
        .sign(&rejoin_transcript(token_id, csr_pem))
        .map_err(|source| CertError::Generate {
            what: "rejoin proof",
            source,
        })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig))
}

/// Validity period (`notBefore`, `notAfter`) of a certificate.
pub fn validity_of(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| invalid("certificate", e))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// Node ids and admin names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CertError::Invalid {
            what: "name",
            reason: format!("'{name}': use letters, digits, '_', '.', '-' (at most 64)"),
        })
    }
}

/// A new node id: `n-` and 12 random hex digits. The server assigns it at enrollment.
pub fn new_node_id() -> Result<String, CertError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 6];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| invalid("node id", "no randomness available"))?;
    Ok(format!("n-{}", hex::encode(b)))
}

/// A new key and the CSR carrying its public key (for a node, or an operator): the key stays
/// where it is made. `cert_pem` holds the CSR.
pub fn key_and_csr(node_name: &str) -> Result<CertifiedKey, CertError> {
    let key = new_key()?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| CertError::Generate {
            what: "CSR parameters",
            source,
        })?;
    params
        .distinguished_name
        .push(DnType::CommonName, node_name.to_string());
    let csr = params
        .serialize_request(&key)
        .map_err(|source| CertError::Generate {
            what: "CSR",
            source,
        })?;
    Ok(CertifiedKey {
        cert_pem: csr.pem().map_err(|source| CertError::Generate {
            what: "CSR",
            source,
        })?,
        key_pem: key.serialize_pem(),
    })
}

fn new_key() -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate {
        what: "key",
        source,
    })
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CertError> {
    rcgen::string::Ia5String::try_from(s).map_err(|e| invalid("name", e))
}

fn invalid(what: &'static str, e: impl std::fmt::Display) -> CertError {
    CertError::Invalid {
        what,
        reason: e.to_string(),
    }
}

fn pem_der(pem_text: &str, what: &'static str) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| invalid(what, format!("{e:?}")))
}

/// Parameters of a leaf certificate: identity URI, key and extended key usage per role,
/// validity from [`BACKDATE`] ago for `lifetime`.
fn leaf_params(role: Role, name: &str, lifetime: Duration) -> Result<CertificateParams, CertError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| CertError::Generate {
            what: "certificate parameters",
            source,
        })?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_string());
    params
        .subject_alt_names
        .push(SanType::URI(ia5(&Identity::uri(role, name))?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Node | Role::Admin => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    Ok(params)
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

    #[test]
    fn endpoint_keys_are_the_same_after_a_restart_and_the_cluster_s_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("test").expect("generate");
        ca.write_to(dir.path()).expect("write");
        let tag = |k: &EndpointKeys| ring::hmac::sign(&k.reset_key, b"a connection id");
        let cid_tag = |k: &EndpointKeys| ring::hmac::sign(&k.cid_key, b"nonce");
        let first = ca.endpoint_keys().expect("keys");
        // Loaded again from its files, as a restarted control plane does.
        let again = ClusterCa::load(dir.path())
            .expect("load")
            .endpoint_keys()
            .expect("keys");
        assert_eq!(tag(&first).as_ref(), tag(&again).as_ref());
        assert_eq!(cid_tag(&first).as_ref(), cid_tag(&again).as_ref());
        let other = ClusterCa::generate("test")
            .expect("generate")
            .endpoint_keys()
            .expect("keys");
        assert_ne!(tag(&first).as_ref(), tag(&other).as_ref());
        assert_ne!(cid_tag(&first).as_ref(), cid_tag(&other).as_ref());
        // Not the key that seals secrets, nor each other.
        let der = KeyPair::from_pem(&ca.key_pem).expect("key").serialize_der();
        let reset = sealing::derive_bytes(&der, b"flotilla quic stateless reset");
        let cid = sealing::derive_bytes(&der, b"flotilla quic connection id");
        assert_ne!(reset, cid);
        assert_ne!(reset, sealing::derive_bytes(&der, b"flotilla secrets v1"));
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};
    use rustls_pki_types::ServerName;
    use std::sync::Arc;

    /// Runs a TLS handshake in memory; returns the client certificate the server saw.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<Option<Vec<u8>>, rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let mut c = ClientConnection::new(Arc::new(client), name)?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("write");
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).expect("read");
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("write");
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).expect("read");
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .and_then(|p| p.first())
                    .map(|c| c.to_vec()));
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn der(pem_text: &str) -> Vec<u8> {
        pem_der(pem_text, "test").expect("der")
    }

    #[test]
    fn roles_come_from_the_issuer_not_the_csr() {
        let ca = ClusterCa::generate("t").expect("ca");
        let server = ca
            .issue_server(
                &["10.0.0.1".into(), "cp.example".into()],
                SERVER_CERT_LIFETIME,
            )
            .expect("server");
        let (id, _) = identity_of(&der(&server.cert_pem)).expect("identity");
        assert_eq!(id.role, Role::Server);

        // a CSR asking for an admin identity and another name gets a node certificate
        let key = new_key().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(ia5("flotilla://admin/root").expect("uri")));
        params.distinguished_name.push(DnType::CommonName, "root");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert = ca
            .issue_node(&csr, "n-1234", NODE_CERT_LIFETIME)
            .expect("node");
        let (id, until) = identity_of(&der(&cert)).expect("identity");
        assert_eq!(
            id,
            Identity {
                role: Role::Node,
                name: "n-1234".into()
            }
        );
        assert!(until > SystemTime::now() + Duration::from_secs(29 * 86_400));
        let text = String::from_utf8_lossy(&der(&cert)).into_owned();
        assert!(!text.contains("evil.example") && !text.contains("admin"));

        let admin = ca.issue_admin("alice", ADMIN_CERT_LIFETIME).expect("admin");
        assert_eq!(
            identity_of(&der(&admin.cert_pem)).expect("id").0.role,
            Role::Admin
        );
        assert!(ca.issue_node("garbage", "n-1", NODE_CERT_LIFETIME).is_err());
        assert!(ca.issue_admin("../x", ADMIN_CERT_LIFETIME).is_err());
    }

    #[test]
    fn a_rejoin_needs_the_old_key_and_a_certificate_of_this_ca() {
        let ca = ClusterCa::generate("t").expect("ca");
        let old = key_and_csr("n-1").expect("csr");
        // a certificate that expired long ago still proves the identity
        let old_cert = ca
            .issue_node(&old.cert_pem, "n-1", Duration::from_secs(1))
            .expect("cert");
        let new = key_and_csr("n-1").expect("csr");
        let proof = rejoin_proof(&old.key_pem, "tok", &new.cert_pem).expect("proof");
        assert_eq!(
            ca.verify_rejoin(&old_cert, &proof, "tok", &new.cert_pem)
                .expect("verify"),
            "n-1"
        );
        // bound to the token and the CSR
        assert!(ca
            .verify_rejoin(&old_cert, &proof, "other", &new.cert_pem)
            .is_err());
        let other_csr = key_and_csr("n-1").expect("csr");
        assert!(ca
            .verify_rejoin(&old_cert, &proof, "tok", &other_csr.cert_pem)
            .is_err());
        // someone else's key
        let thief = key_and_csr("x").expect("csr");
        let forged = rejoin_proof(&thief.key_pem, "tok", &new.cert_pem).expect("proof");
        assert!(ca
            .verify_rejoin(&old_cert, &forged, "tok", &new.cert_pem)
            .is_err());
        // a certificate of another cluster
        let other = ClusterCa::generate("o").expect("ca");
        let foreign = other
            .issue_node(&old.cert_pem, "n-1", NODE_CERT_LIFETIME)
            .expect("cert");
        assert!(ca
            .verify_rejoin(&foreign, &proof, "tok", &new.cert_pem)
            .is_err());
        // an admin certificate
        let admin = ca.issue_admin("n-1", ADMIN_CERT_LIFETIME).expect("admin");
        let p = rejoin_proof(&admin.key_pem, "tok", &new.cert_pem).expect("proof");
        assert!(ca
            .verify_rejoin(&admin.cert_pem, &p, "tok", &new.cert_pem)
            .is_err());
    }

    #[test]
    fn mutual_tls_accepts_the_cluster_and_refuses_strangers() {
        let ca = ClusterCa::generate("t").expect("ca");
        let server = ca.issue_server(&[], SERVER_CERT_LIFETIME).expect("server");
        let node_csr = key_and_csr("n-1").expect("csr");
        let node = CertifiedKey {
            cert_pem: ca
                .issue_node(&node_csr.cert_pem, "n-1", NODE_CERT_LIFETIME)
                .expect("node"),
            key_pem: node_csr.key_pem.clone(),
        };
        let srv = || tls::server(ca.cert_pem(), &server, &[tls::ALPN_AGENT]).expect("server cfg");
        let seen = handshake(
            tls::client(ca.cert_pem(), &node, tls::ALPN_AGENT).expect("client"),
            srv(),
        )
        .expect("handshake");
        let (id, _) = identity_of(&seen.expect("client cert")).expect("identity");
        assert_eq!(id.name, "n-1");

        // a client certificate from another CA fails the handshake
        let other = ClusterCa::generate("other").expect("ca");
        let stranger = other
            .issue_admin("mallory", ADMIN_CERT_LIFETIME)
            .expect("admin");
        let cfg = tls::client(ca.cert_pem(), &stranger, tls::ALPN_AGENT).expect("client");
        assert!(handshake(cfg, srv()).is_err());

        // a node certificate presented as a server is refused by clients (key usage)
        let fake_server = tls::server(ca.cert_pem(), &node, &[tls::ALPN_AGENT]).expect("cfg");
        let cfg = tls::client(ca.cert_pem(), &node, tls::ALPN_AGENT).expect("client");
        let err = handshake(cfg, fake_server).expect_err("node cert accepted as server");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{err:?}"
        );

        // enrollment: only the server of the CA the token pins
        let digest: [u8; 32] = Sha256::digest(ca.cert_der()).into();
        let join_srv = || tls::server(ca.cert_pem(), &server, &[tls::ALPN_JOIN]).expect("cfg");
        assert!(handshake(tls::enrollment_client(digest).expect("cfg"), join_srv()).is_ok());
        let wrong: [u8; 32] = Sha256::digest(other.cert_der()).into();
        let err = handshake(tls::enrollment_client(wrong).expect("cfg"), join_srv())
            .expect_err("wrong CA");
        assert!(
            err.to_string().contains("does not match the join token"),
            "{err}"
        );
    }
}
