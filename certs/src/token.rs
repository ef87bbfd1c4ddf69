//! Join tokens: `FLT1-<sha256 of the CA certificate, hex>-<token id>-<secret>`.
//!
//! The CA digest lets a joining node check it talks to the right cluster before it sends
//! anything (as Swarm's `SWMTKN-1-<digest>-<secret>` and k3s's `K10<hash>::…` do); the id
//! names the token for listing and revocation; the secret proves the holder got it from an
//! operator. The control plane stores only a hash of the secret.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "FLT1";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 20;

/// A join token. `Display` gives the full token (secret included); `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: [u8; 32],
    id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("ca", &hex::encode(&self.ca_digest[..8]))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{}-{}-{}",
            hex::encode(self.ca_digest),
            self.id,
            self.secret
        )
    }
}

/// Why a token string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed join token: {0} (expected FLT1-<64 hex>-<12 hex>-<40 hex>)")]
pub struct TokenError(&'static str);

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [prefix, ca, id, secret] = parts.as_slice() else {
            return Err(TokenError("wrong number of parts"));
        };
        if *prefix != PREFIX {
            return Err(TokenError("unknown prefix"));
        }
        let hex_of = |v: &str, len: usize| {
            v.len() == len
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex_of(ca, 64) {
            return Err(TokenError("bad CA digest"));
        }
        if !hex_of(id, ID_BYTES * 2) {
            return Err(TokenError("bad token id"));
        }
        if !hex_of(secret, SECRET_BYTES * 2) {
            return Err(TokenError("bad secret"));
        }
        let mut ca_digest = [0u8; 32];
        hex::decode_to_slice(ca, &mut ca_digest).map_err(|_| TokenError("bad CA digest"))?;
        Ok(Self {
            ca_digest,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl JoinToken {
    /// A new token for the cluster whose CA certificate (DER) is `ca_der`.
    pub fn generate(ca_der: &[u8]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill(&mut id)
            .and_then(|_| rng.fill(&mut secret))
            .map_err(|_| TokenError("no randomness available"))?;
        Ok(Self {
            ca_digest: Sha256::digest(ca_der).into(),
            id: hex::encode(id),
            secret: hex::encode(secret),
        })
    }

    /// The token id (safe to show and log).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the CA certificate the token pins.
    pub fn ca_digest(&self) -> &[u8; 32] {
        &self.ca_digest
    }

    /// The secret, to send once the server proved its CA.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// What the control plane stores: hex SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// Hex SHA-256 of a token secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks a presented secret against a stored hash without an early exit.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    let got = hash_secret(secret);
    got.len() == stored_hash.len()
        && got
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_secret_kept_out_of_debug() {
        let t = JoinToken::generate(b"ca").expect("token");
        let s = t.to_string();
        assert!(s.starts_with("FLT1-"));
        assert_eq!(s.parse::<JoinToken>().expect("parse"), t);
        assert!(!format!("{t:?}").contains(t.secret()));
        assert!(secret_matches(t.secret(), &t.secret_hash()));
        assert!(!secret_matches("0".repeat(40).as_str(), &t.secret_hash()));
        assert_ne!(JoinToken::generate(b"ca").expect("token"), t);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate(b"ca").expect("token").to_string();
        for bad in [
            "",
            "FLT1",
            &good.replacen("FLT1", "FLT2", 1),
            &good[..good.len() - 1],
            &format!("{good}-x"),
            &good.to_uppercase(),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }
}
