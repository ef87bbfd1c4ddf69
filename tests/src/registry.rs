//! A real registry for tests: Debian's `docker-registry` on a free loopback port (anonymous,
//! htpasswd basic auth, or token auth backed by [`TokenServer`]), `skopeo` to push into it, and
//! [`Proxy`], a TCP relay that records requests and can cut connections mid-transfer.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// How the registry authenticates pulls.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone may push and pull.
    None,
    /// htpasswd (bcrypt) with one user.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Bearer tokens from a token service whose signing certificate is at `cert`.
    Token {
        /// The token endpoint.
        realm: String,
        /// PEM certificate that signs tokens.
        cert: PathBuf,
    },
}

/// A running `docker-registry`, stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The storage root, shareable between registries.
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry over `storage` with the given auth and waits until it answers.
    pub fn start(storage: &Path, auth: Auth) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("htpasswd (Debian's apache2-utils) is needed for basic-auth tests")?;
                if !out.status.success() {
                    bail!("htpasswd failed");
                }
                let p = dir.path().join("htpasswd");
                std::fs::write(&p, out.stdout)?;
                format!("auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n", p.display())
            }
            Auth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: flotilla-test\n    issuer: flotilla-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            storage.display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry (Debian's docker-registry package) is needed")?;
        let mut reg = Self {
            child,
            addr,
            storage: storage.to_path_buf(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&reg.addr).is_err() {
            if Instant::now() > deadline || reg.child.try_wait()?.is_some() {
                let log = std::fs::read_to_string(reg._dir.path().join("registry.log"))
                    .unwrap_or_default();
                bail!("docker-registry did not start on {}: {log}", reg.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(reg)
    }

    /// Pushes an OCI layout (`dir:tag`) to `repo:tag` with skopeo (all platforms).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--quiet",
                "--format",
                "oci",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .context("skopeo (Debian's skopeo package) is needed")?;
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The file holding a blob in this registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token service for `docker-registry`'s token auth: checks basic credentials and signs ES256
/// JWTs with a self-signed certificate the registry trusts. Runs on its own thread.
#[derive(Debug)]
pub struct TokenServer {
    /// The realm URL to configure in the registry.
    pub realm: String,
    /// The signing certificate (PEM) for the registry's rootcertbundle.
    pub cert: PathBuf,
    /// Token requests served.
    pub issued: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Starts a token service that accepts `user`/`password`.
    pub fn start(user: &str, password: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = rcgen::CertificateParams::new(vec!["flotilla-test-token".to_string()])?;
        let cert = params.self_signed(&key)?;
        let cert_path = dir.path().join("token.pem");
        std::fs::write(&cert_path, cert.pem())?;
        let der = cert.der().to_vec();
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let realm = format!("http://{}/token", listener.local_addr()?);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let issued = Arc::new(AtomicU64::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { break };
                let Ok(req) = read_head(&mut s) else { continue };
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim() == expected
                });
                let scope = req
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|target| target.split('?').nth(1))
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("scope=")))
                    .map(percent_decode)
                    .unwrap_or_default();
                let resp = if authorized {
                    count.fetch_add(1, Ordering::SeqCst);
                    let token = sign_token(&signer, &rng, &der, &scope);
                    let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        Ok(Self {
            realm,
            cert: cert_path,
            issued,
            _dir: dir,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sign_token(
    signer: &ring::signature::EcdsaKeyPair,
    rng: &ring::rand::SystemRandom,
    der: &[u8],
    scope: &str,
) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut p = s.splitn(3, ':');
            let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [base64::engine::general_purpose::STANDARD.encode(der)]});
    let claims = serde_json::json!({
        "iss": "flotilla-test-issuer", "sub": "tester", "aud": "flotilla-test",
        "exp": now + 300, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", scope.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = signer
        .sign(rng, signing_input.as_bytes())
        .expect("sign token");
    format!("{signing_input}.{}", b64(sig.as_ref()))
}

fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 64 << 10 {
        if s.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What a [`Proxy`] saw.
#[derive(Debug, Default, Clone)]
pub struct ProxyLog {
    /// Request lines and `Range` headers, in order (`GET /v2/... | range=bytes=N-`).
    pub requests: Vec<String>,
    /// Bytes relayed from the registry to the client.
    pub bytes_down: u64,
}

/// A TCP relay to a registry. While `cut_after` is set, each connection is cut once it has
/// relayed that many response bytes.
#[derive(Debug)]
pub struct Proxy {
    /// `IP:PORT` to pull through.
    pub addr: String,
    /// What went through.
    pub log: Arc<Mutex<ProxyLog>>,
    /// Cut connections after this many downstream bytes (0: never).
    pub cut_after: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: &str) -> Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST, upstream).await
    }

    /// Starts relaying to `upstream`, listening on `ip` (a test LAN's gateway, for its hosts).
    pub async fn start_on(ip: std::net::Ipv4Addr, upstream: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?.to_string();
        let log: Arc<Mutex<ProxyLog>> = Arc::default();
        let cut_after = Arc::new(AtomicU64::new(0));
        let upstream: SocketAddr = upstream.parse()?;
        let (l, c) = (log.clone(), cut_after.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (l, c) = (l.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = relay(client, upstream, l, c).await;
                });
            }
        });
        Ok(Self {
            addr,
            log,
            cut_after,
        })
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<ProxyLog>>,
    cut: Arc<AtomicU64>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let l = log.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(first) = text
                .lines()
                .next()
                .filter(|f| f.starts_with("GET ") || f.starts_with("HEAD "))
            {
                let range = text
                    .lines()
                    .find(|h| h.to_ascii_lowercase().starts_with("range:"))
                    .map(|h| format!(" | range={}", h[6..].trim()))
                    .unwrap_or_default();
                l.lock()
                    .expect("log")
                    .requests
                    .push(format!("{first}{range}"));
            }
            sw.write_all(&buf[..n]).await?;
        }
        sw.shutdown().await
    });
    let mut relayed = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = sr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let limit = cut.load(Ordering::SeqCst);
        let n = if limit > 0 && relayed + n as u64 > limit {
            (limit - relayed) as usize
        } else {
            n
        };
        cw.write_all(&buf[..n]).await?;
        relayed += n as u64;
        log.lock().expect("log").bytes_down += n as u64;
        if limit > 0 && relayed >= limit {
            // Cut: drop both directions without a clean shutdown.
            up.abort();
            return Ok(());
        }
    }
    let _ = cw.shutdown().await;
    let _ = up.await;
    Ok(())
}
