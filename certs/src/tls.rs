//! rustls configurations of the cluster's channel: TLS 1.3 only, ring as the crypto provider,
//! the cluster CA as the only trust anchor.
//!
//! - The server presents `[server certificate, CA certificate]` and asks clients for a
//!   certificate without requiring one at the TLS layer: enrollment connections have none. The
//!   application decides per ALPN: agent sessions ([`ALPN_AGENT`]) need a node certificate,
//!   which the server reads with [`crate::identity_of`]. A certificate that is offered must
//!   chain to the cluster CA, or the handshake fails.
//! - Agents and admins verify the server against the CA and [`crate::SERVER_NAME`]; the
//!   extended key usage check refuses a node or admin certificate presented as a server.
//! - A joining node has no CA yet, only the digest in its token: [`enrollment_client`]
//!   accepts a server only if the chain it sends contains a CA certificate with that digest and
//!   the server certificate verifies against it — before anything is sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};

use crate::{CertError, CertifiedKey};

/// ALPN of agent sessions (mTLS with a node certificate).
pub const ALPN_AGENT: &[u8] = b"flotilla/1";
/// ALPN of enrollment (no client certificate; the join token is the credential).
pub const ALPN_JOIN: &[u8] = b"flotilla-join/1";

/// The crypto provider everything here uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(e: impl std::fmt::Display) -> CertError {
    CertError::Invalid {
        what: "TLS configuration",
        reason: e.to_string(),
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let list: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Invalid {
            what,
            reason: format!("{e:?}"),
        })?;
    if list.is_empty() {
        return Err(CertError::Invalid {
            what,
            reason: "no certificate in PEM".into(),
        });
    }
    Ok(list)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Invalid {
        what: "private key",
        reason: format!("{e:?}"),
    })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(tls)?;
    }
    Ok(roots)
}

/// The control plane's server configuration for `alpn` protocols.
pub fn server(
    ca_pem: &str,
    server: &CertifiedKey,
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(tls)?;
    let mut chain = certs(&server.cert_pem, "server certificate")?;
    chain.extend(certs(ca_pem, "CA certificate")?);
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(&server.key_pem)?)
        .map_err(tls)?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// A client with a certificate (node or admin) that trusts only the cluster CA.
pub fn client(
    ca_pem: &str,
    identity: &CertifiedKey,
    alpn: &[u8],
) -> Result<ClientConfig, CertError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            certs(&identity.cert_pem, "client certificate")?,
            key(&identity.key_pem)?,
        )
        .map_err(tls)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A client without a certificate that accepts only a server whose chain carries the CA
/// certificate with SHA-256 `ca_digest` (from a join token).
pub fn enrollment_client(ca_digest: [u8; 32]) -> Result<ClientConfig, CertError> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            digest: ca_digest,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(cfg)
}

/// The CA certificate (PEM) a server sent during an enrollment handshake, found by digest in
/// the peer's chain.
pub fn pinned_ca_pem(chain: &[CertificateDer<'_>], ca_digest: &[u8; 32]) -> Option<String> {
    chain
        .iter()
        .find(|c| Sha256::digest(c.as_ref()).as_slice() == ca_digest)
        .map(|c| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
            let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
            pem
        })
}

#[derive(Debug)]
struct PinnedCa {
    digest: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.digest)
        else {
            return Err(rustls::Error::General(format!(
                "the server's CA does not match the join token (the token pins sha256:{}…): \
                 wrong server or wrong cluster",
                hex::encode(&self.digest[..8])
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
