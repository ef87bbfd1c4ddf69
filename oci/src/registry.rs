//! A client for the OCI distribution v2 API: manifests and blobs, anonymous, basic and
//! bearer-token auth, resumable blob downloads.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

pub use crate::auth::parse_challenge;
use crate::auth::{content_range_start, parse_token};
use crate::digest::Digest;
use crate::manifest::{manifest_accept, MAX_MANIFEST_BYTES};

/// Credentials for one registry. The password never appears in `Debug` output or logs.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credentials: anonymous pulls (a bearer challenge still gets an anonymous token).
    #[default]
    Anonymous,
    /// User name and password, sent as HTTP basic auth or to the token service.
    Basic {
        /// User name.
        user: String,
        /// Password or access token.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { user, .. } => write!(f, "Basic({user}:***)"),
        }
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Credentials to present when challenged.
    pub credentials: Credentials,
    /// Plain HTTP instead of HTTPS. Only for registries the operator marked insecure.
    pub insecure: bool,
}

/// A registry mirror: a host that serves a registry's repositories under the same names and
/// is tried before the registry itself, as a `[host."URL"]` of containerd's `hosts.toml` with
/// `capabilities = ["pull", "resolve"]` is before its `server`
/// (<https://github.com/containerd/containerd/blob/main/docs/hosts.md>). A mirror is not
/// trusted: what it serves is verified by digest as anything from a registry, and it is never
/// sent the registry's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mirror {
    /// The `host[:port]` dialled.
    pub host: String,
    /// Plain HTTP: only when the operator wrote `http://`.
    pub plain_http: bool,
}

impl Mirror {
    /// Parses `https://host[:port]`, `http://host[:port]` or `host[:port]` (HTTPS, as in
    /// containerd). Paths, queries, credentials and other schemes are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty mirror".into());
        }
        let url = if s.contains("://") {
            s.to_string()
        } else {
            format!("https://{s}")
        };
        let u = reqwest::Url::parse(&url)
            .map_err(|e| format!("'{s}' is not a URL or host[:port]: {e}"))?;
        let plain_http = match u.scheme() {
            "https" => false,
            "http" => true,
            other => {
                return Err(format!(
                    "'{s}': scheme {other} (a mirror is https:// or, when stated, http://)"
                ))
            }
        };
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!(
                "'{s}': credentials in a mirror's URL are refused (mirrors are pulled from \
                 anonymously)"
            ));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
            return Err(format!(
                "'{s}': a mirror is scheme://host[:port]; a path, query or fragment is not \
                 supported"
            ));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("'{s}' names no host"))?;
        let host = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(Self { host, plain_http })
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}", self.host)
    }
}

/// The mirrors of each registry, in the order they are tried (`registry_mirrors` in the
/// agent's configuration). A registry is named as image names have it: `docker.io` for
/// Docker Hub, `host[:port]` for any other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryMirrors(std::collections::BTreeMap<String, Vec<Mirror>>);

/// A `registry_mirrors` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry {registry}: {reason}")]
pub struct MirrorConfigError {
    /// The registry key as written.
    pub registry: String,
    /// What is wrong.
    pub reason: String,
}

impl RegistryMirrors {
    /// Checks and parses `registry → mirror URLs`; every problem names the registry and the
    /// mirror.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<Self, MirrorConfigError> {
        let mut out = std::collections::BTreeMap::new();
        for (registry, urls) in entries {
            let bad = |reason: String| MirrorConfigError {
                registry: registry.to_string(),
                reason,
            };
            if registry.contains("://") || registry.contains('/') {
                return Err(bad(
                    "a registry is host[:port] as image names have it (docker.io for Docker \
                     Hub), not a URL"
                        .into(),
                ));
            }
            if registry.is_empty()
                || !registry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return Err(bad("not a registry host[:port]".into()));
            }
            if registry.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad(
                    "write the registry in lower case, as image names have it".into(),
                ));
            }
            if matches!(registry, "index.docker.io" | "registry-1.docker.io") {
                return Err(bad(
                    "Docker Hub's images are named docker.io/…: give its mirrors under docker.io"
                        .into(),
                ));
            }
            if urls.is_empty() {
                return Err(bad("no mirror listed".into()));
            }
            let mut mirrors: Vec<Mirror> = Vec::new();
            for u in urls {
                let m = Mirror::parse(u).map_err(|e| bad(format!("mirror {e}")))?;
                if mirrors.contains(&m) {
                    return Err(bad(format!("mirror {m} is listed twice")));
                }
                mirrors.push(m);
            }
            if out.insert(registry.to_string(), mirrors).is_some() {
                return Err(bad("given twice".into()));
            }
        }
        Ok(Self(out))
    }

    /// The mirrors `--registry-mirror REGISTRY=URL` flags give (in their order; they replace the
    /// file's when there are any), else those of a configuration file's `registry_mirrors`.
    ///
    /// # Errors
    /// What is wrong, prefixed by `registry_mirrors: ` or `--registry-mirror: `.
    pub fn from_config(
        file: &std::collections::BTreeMap<String, Vec<String>>,
        flags: &[String],
    ) -> Result<Self, String> {
        if flags.is_empty() {
            return Self::new(file.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| format!("registry_mirrors: {e}"));
        }
        let mut by_registry: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for f in flags {
            let (registry, url) = f
            .split_once('=')
            .filter(|(r, u)| !r.is_empty() && !u.is_empty())
            .ok_or_else(|| {
                format!("--registry-mirror: '{f}' is not REGISTRY=URL (e.g. docker.io=https://mirror.example)")
            })?;
            by_registry
                .entry(registry.to_string())
                .or_default()
                .push(url.to_string());
        }
        Self::new(by_registry.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| format!("--registry-mirror: {e}"))
    }

    /// No mirror for any registry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mirrors of `registry` (as an image's name has it), in order.
    pub fn of(&self, registry: &str) -> &[Mirror] {
        self.0.get(registry).map(Vec::as_slice).unwrap_or_default()
    }

    /// Each registry with its mirrors.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Mirror])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// Where a pull is tried: a mirror, or the registry the image's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullSource {
    /// A mirror of the registry (anonymous; plain HTTP only when its URL says `http://`).
    Mirror(Mirror),
    /// The registry itself, with the pull's own credentials and transport.
    Origin,
}

/// The order a pull of an image of `registry` tries its sources in: each of its mirrors as
/// listed, then the registry itself (containerd's: "the hosts will be tried first in the order
/// listed … then server will be used as a fallback").
pub fn pull_sources(mirrors: &RegistryMirrors, registry: &str) -> Vec<PullSource> {
    mirrors
        .of(registry)
        .iter()
        .cloned()
        .map(PullSource::Mirror)
        .chain([PullSource::Origin])
        .collect()
}

/// Why a registry request failed. A message names the registry and, for a blob, its digest
/// (see [`at`]) — not the repository and tag, which the image's name above it already says;
/// the URL is kept for `Debug`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Transport failure (connection refused, reset, TLS).
    #[error("{}: {source}", at(url))]
    Http {
        /// The request URL.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{}: answered {status}{detail}", at(url))]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// A short excerpt of the body, when it explains.
        detail: String,
    },
    /// The registry wants credentials and none were given.
    #[error("{}: authentication required", at(url))]
    NeedsCredentials {
        /// The request URL.
        url: String,
    },
    /// Credentials were given and refused.
    #[error("{}: the credentials were refused", at(url))]
    Unauthorized {
        /// The request URL.
        url: String,
    },
    /// The auth challenge could not be followed.
    #[error("{}: unusable auth challenge: {reason}", at(url))]
    Challenge {
        /// The request URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A document or blob was larger than allowed or than its descriptor says.
    #[error("{}: response larger than {limit} bytes refused", at(url))]
    TooLarge {
        /// The request URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest's or a config's request did not end within the client's deadline
    /// ([`DOCUMENT_DEADLINE`]).
    #[error("{}: no whole answer within {secs} s", at(url))]
    Slow {
        /// The request URL.
        url: String,
        /// The deadline, seconds.
        secs: u64,
    },
    /// Writing the download to disk failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The partial file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a request to `url` went, as a message says it: `registry HOST` for a manifest,
/// `registry HOST, blob DIGEST` for a blob, the whole URL for anything else (a token service).
fn at(url: &str) -> String {
    let Some((host, path)) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once("/v2/"))
    else {
        return url.to_string();
    };
    if path.contains("/manifests/") {
        format!("registry {host}")
    } else if let Some((_, digest)) = path.rsplit_once("/blobs/") {
        format!("registry {host}, blob {digest}")
    } else {
        url.to_string()
    }
}

/// What a failed request comes down to for the person who asked for the image: what they
/// can do about it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The registry has no such manifest: the repository or the tag does not exist there.
    NotFound,
    /// The registry could not be reached: its name does not resolve, nothing answers, the
    /// connection or its TLS handshake failed, or it timed out.
    Unreachable,
    /// The registry wants credentials (some, Docker Hub among them, answer so for a
    /// repository they do not have), or refused the ones given.
    Unauthorized,
}

impl RegistryError {
    /// What this failure comes down to, when it is one of the [`Failure`]s.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Http { source, .. } if source.is_connect() || source.is_timeout() => {
                Some(Failure::Unreachable)
            }
            Self::Slow { .. } => Some(Failure::Unreachable),
            Self::Status { url, status, .. }
                if *status == StatusCode::NOT_FOUND && url.contains("/manifests/") =>
            {
                Some(Failure::NotFound)
            }
            Self::Status { status, .. }
                if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN =>
            {
                Some(Failure::Unauthorized)
            }
            Self::NeedsCredentials { .. } | Self::Unauthorized { .. } => {
                Some(Failure::Unauthorized)
            }
            _ => None,
        }
    }

    /// A transport failure of a request to `url`; the client's own copy of the URL is dropped
    /// from its message, which would otherwise say it twice.
    fn http(url: &str, source: reqwest::Error) -> Self {
        RegistryError::Http {
            url: url.to_string(),
            source: source.without_url(),
        }
    }

    /// Whether trying again (resuming) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http { .. } | Self::Slow { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The raw document: its sha256 is its digest.
    pub body: Vec<u8>,
    /// The `Content-Type` the registry gave.
    pub content_type: Option<String>,
}

/// A client bound to one registry host and repository.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repository: String,
    opts: RegistryOptions,
    /// The `Authorization` value that worked last, reused for later requests.
    auth: Arc<Mutex<Option<String>>>,
    /// The mirror this client pulls from, if it is one.
    mirror: Option<Mirror>,
    /// How long a manifest's or a config's request may take whole ([`DOCUMENT_DEADLINE`]).
    deadline: Duration,
}

/// How long the request of a manifest, an index or a config (at most a few MiB) may take
/// whole, its auth challenge included: a registry that answers a byte a minute (each read
/// within the client's read timeout) does not hold a pull for ever.
pub const DOCUMENT_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// The host[:port] a pull from `registry` (as an image's name has it) dials: Docker Hub's
/// registry for `docker.io`.
pub fn host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The HTTP client a [`RegistryClient`] sends with (one per process, shared by its pulls).
pub type HttpClient = reqwest::Client;

/// The HTTP client pulls use (the node's image store, the control plane's content store): rustls with the ring provider and the system's trust roots.
pub fn http_client() -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

impl RegistryClient {
    /// A client for `repository` on `registry` (host[:port]).
    pub fn new(
        http: reqwest::Client,
        registry: &str,
        repository: &str,
        opts: RegistryOptions,
    ) -> Self {
        let host = host(registry);
        let scheme = if opts.insecure { "http" } else { "https" };
        Self {
            http,
            base: format!("{scheme}://{host}/v2/{repository}"),
            repository: repository.to_string(),
            opts,
            auth: Arc::new(Mutex::new(None)),
            mirror: None,
            deadline: DOCUMENT_DEADLINE,
        }
    }

    /// A client for `repository` on `mirror`: anonymous (a mirror is never sent a registry's
    /// credentials), plain HTTP only when the mirror's URL says so.
    pub fn for_mirror(http: reqwest::Client, mirror: &Mirror, repository: &str) -> Self {
        let opts = RegistryOptions {
            credentials: Credentials::Anonymous,
            insecure: mirror.plain_http,
        };
        Self {
            http,
            base: format!("{mirror}/v2/{repository}"),
            repository: repository.to_string(),
            opts,
            auth: Arc::new(Mutex::new(None)),
            mirror: Some(mirror.clone()),
            deadline: DOCUMENT_DEADLINE,
        }
    }

    /// This client with `deadline` for a manifest's or a config's whole request instead of
    /// [`DOCUMENT_DEADLINE`].
    pub fn with_document_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs `request` (of `url`) within this client's document deadline.
    async fn within_deadline<T>(
        &self,
        url: &str,
        request: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.deadline, request)
            .await
            .map_err(|_| RegistryError::Slow {
                url: url.to_string(),
                secs: self.deadline.as_secs(),
            })?
    }

    /// The mirror this client pulls from, when it is one.
    pub fn mirror(&self) -> Option<&Mirror> {
        self.mirror.as_ref()
    }

    /// The file name of a partial download of `digest` from this client's source: a download
    /// resumes only from where it came from, so bytes a mirror sent are never completed by
    /// another source (a bad mirror cannot spoil the registry's download).
    pub fn partial_name(&self, digest: &Digest) -> String {
        match &self.mirror {
            None => format!("{}.partial", digest.hex()),
            Some(m) => {
                use sha2::Digest as _;
                let tag = hex::encode(&sha2::Sha256::digest(m.to_string().as_bytes())[..6]);
                format!("{}.mirror-{tag}.partial", digest.hex())
            }
        }
    }

    /// Sends a request, answering one auth challenge if the registry raises it.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, RegistryError> {
        let http_err = |source| RegistryError::http(url, source);
        let cached = self.auth.lock().ok().and_then(|a| a.clone());
        let mut req = self
            .http
            .request(method.clone(), url)
            .headers(headers.clone());
        if let Some(a) = &cached {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(http_err)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let authorization = self.answer(url, &challenge).await?;
        let resp = self
            .http
            .request(method, url)
            .headers(headers)
            .header(AUTHORIZATION, &authorization)
            .send()
            .await
            .map_err(http_err)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(match self.opts.credentials {
                Credentials::Anonymous => RegistryError::NeedsCredentials {
                    url: url.to_string(),
                },
                Credentials::Basic { .. } => RegistryError::Unauthorized {
                    url: url.to_string(),
                },
            });
        }
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(authorization);
        }
        Ok(resp)
    }

    /// Turns a `WWW-Authenticate` challenge into an `Authorization` header value.
    async fn answer(&self, url: &str, challenge: &str) -> Result<String, RegistryError> {
        let bad = |reason: &str| RegistryError::Challenge {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| bad("missing or malformed WWW-Authenticate"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match &self.opts.credentials {
                Credentials::Anonymous => Err(RegistryError::NeedsCredentials {
                    url: url.to_string(),
                }),
                Credentials::Basic { user, password } => Ok(basic_header(user, password)),
            },
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| bad("bearer challenge without realm"))?;
                let mut realm_url =
                    reqwest::Url::parse(realm).map_err(|_| bad("realm is not a URL"))?;
                if realm_url.scheme() != "https"
                    && !(self.opts.insecure && realm_url.scheme() == "http")
                {
                    return Err(bad(
                        "token realm is not https and the registry is not marked insecure",
                    ));
                }
                let mut q: Vec<(&str, String)> = Vec::new();
                if let Some(s) = params.get("service") {
                    q.push(("service", s.clone()));
                }
                q.push((
                    "scope",
                    params
                        .get("scope")
                        .cloned()
                        .unwrap_or_else(|| format!("repository:{}:pull", self.repository)),
                ));
                {
                    let mut pairs = realm_url.query_pairs_mut();
                    for (k, v) in &q {
                        pairs.append_pair(k, v);
                    }
                }
                let mut treq = self.http.get(realm_url);
                if let Credentials::Basic { user, password } = &self.opts.credentials {
                    treq = treq.basic_auth(user, Some(password));
                }
                let tresp = treq
                    .send()
                    .await
                    .map_err(|source| RegistryError::http(realm, source))?;
                match tresp.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(match self.opts.credentials {
                            Credentials::Anonymous => RegistryError::NeedsCredentials {
                                url: url.to_string(),
                            },
                            Credentials::Basic { .. } => RegistryError::Unauthorized {
                                url: url.to_string(),
                            },
                        })
                    }
                    status => {
                        return Err(RegistryError::Status {
                            url: realm.clone(),
                            status,
                            detail: String::new(),
                        })
                    }
                }
                let body = read_limited(tresp, realm, 1 << 20).await?;
                let token = parse_token(&body).map_err(bad)?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(bad("unknown auth scheme")),
        }
    }

    async fn check(resp: reqwest::Response, url: &str) -> Result<reqwest::Response, RegistryError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = error_excerpt(resp).await;
        let detail: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
        Err(RegistryError::Status {
            url: url.to_string(),
            status,
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
        })
    }

    /// Fetches a manifest or index by tag or digest.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base, reference);
        let mut headers = HeaderMap::new();
        if let Ok(v) = manifest_accept().parse() {
            headers.insert(ACCEPT, v);
        }
        self.within_deadline(&url, async {
            let resp = Self::check(self.send(Method::GET, &url, headers).await?, &url).await?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = read_limited(resp, &url, MAX_MANIFEST_BYTES).await?;
            Ok(FetchedManifest { body, content_type })
        })
        .await
    }

    /// Fetches a small blob (an image config) into memory.
    pub async fn small_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/blobs/{}", self.base, digest);
        self.within_deadline(&url, async {
            let resp =
                Self::check(self.send(Method::GET, &url, HeaderMap::new()).await?, &url).await?;
            read_limited(resp, &url, limit).await
        })
        .await
    }

    /// Downloads a blob into `partial`, continuing from the bytes already there (HTTP range).
    /// `progress` is called with the bytes held so far. The caller verifies the digest.
    pub async fn download_blob(
        &self,
        digest: &Digest,
        size: u64,
        partial: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let url = format!("{}/blobs/{}", self.base, digest);
        let werr = |source| RegistryError::Write {
            path: partial.display().to_string(),
            source,
        };
        let have = tokio::fs::metadata(partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have == size {
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        let resuming = have > 0 && have < size;
        if resuming {
            if let Ok(v) = format!("bytes={have}-").parse() {
                headers.insert(RANGE, v);
            }
        }
        let resp = self.send(Method::GET, &url, headers).await?;
        let mut start = 0;
        if resp.status() == StatusCode::PARTIAL_CONTENT && resuming {
            let from = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if from == Some(have) {
                start = have;
            } else {
                return Err(RegistryError::Status {
                    url,
                    status: StatusCode::PARTIAL_CONTENT,
                    detail: ": Content-Range does not continue the partial download".into(),
                });
            }
        }
        let mut resp = Self::check(resp, &url).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(start == 0)
            .append(start > 0)
            .open(partial)
            .await
            .map_err(werr)?;
        let mut held = start;
        progress(held);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| RegistryError::http(&url, source))?
        {
            held += chunk.len() as u64;
            if held > size {
                return Err(RegistryError::TooLarge { url, limit: size });
            }
            file.write_all(&chunk).await.map_err(werr)?;
            progress(held);
        }
        file.flush().await.map_err(werr)?;
        file.sync_data().await.map_err(werr)?;
        Ok(())
    }
}

/// Most bytes of an error answer's body read for its message: a registry's body of any length
/// (or one that never ends) is not read whole.
const ERROR_BODY_BYTES: usize = 4 << 10;

/// The first [`ERROR_BODY_BYTES`] of an error answer's body (less if reading it fails), as text.
async fn error_excerpt(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while out.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    out.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::http(url, source))?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_failure_names_the_url_once() {
        // A port nothing listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = RegistryClient::new(
            http_client().expect("client"),
            &format!("127.0.0.1:{port}"),
            "team/app",
            RegistryOptions {
                credentials: Credentials::default(),
                insecure: true,
            },
        );
        let e = rt
            .block_on(client.manifest("v1"))
            .expect_err("nothing listens");
        assert_eq!(e.failure(), Some(Failure::Unreachable));
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        // The registry once; the repository and tag are the image's name, said above it.
        assert_eq!(text.matches("127.0.0.1").count(), 1, "{text}");
        assert!(
            text.starts_with(&format!("registry 127.0.0.1:{port}: ")),
            "{text}"
        );
        assert!(!text.contains("team/app"), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn a_failure_is_told_by_what_the_registry_answered() {
        let url = |path: &str| format!("https://r.example:5000/v2/team/app/{path}");
        let status = |path: &str, status| RegistryError::Status {
            url: url(path),
            status,
            detail: String::new(),
        };
        let not_found = status("manifests/v1", StatusCode::NOT_FOUND);
        assert_eq!(not_found.failure(), Some(Failure::NotFound));
        assert_eq!(
            not_found.to_string(),
            "registry r.example:5000: answered 404 Not Found"
        );
        // A blob the manifest names and the registry lacks is the registry's fault.
        let blob = status("blobs/sha256:ab", StatusCode::NOT_FOUND);
        assert_eq!(blob.failure(), None);
        assert_eq!(
            blob.to_string(),
            "registry r.example:5000, blob sha256:ab: answered 404 Not Found"
        );
        assert_eq!(
            status("manifests/v1", StatusCode::FORBIDDEN).failure(),
            Some(Failure::Unauthorized)
        );
        let anonymous = RegistryError::NeedsCredentials {
            url: url("manifests/v1"),
        };
        assert_eq!(anonymous.failure(), Some(Failure::Unauthorized));
        assert_eq!(
            anonymous.to_string(),
            "registry r.example:5000: authentication required"
        );
        assert_eq!(
            status("manifests/v1", StatusCode::INTERNAL_SERVER_ERROR).failure(),
            None
        );
        // A token service is named by its whole URL: it is another place.
        let token = RegistryError::Status {
            url: "https://auth.example/token?scope=x".into(),
            status: StatusCode::BAD_GATEWAY,
            detail: String::new(),
        };
        assert_eq!(
            token.to_string(),
            "https://auth.example/token?scope=x: answered 502 Bad Gateway"
        );
    }

    /// A registry on 127.0.0.1 that answers each request by `respond(path, stream)` (writing a
    /// whole HTTP/1.1 answer); its port. Its thread lives as long as the test process.
    pub(crate) fn hostile_registry(
        respond: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> u16 {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let port = listener.local_addr().expect("its address").port();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let Ok(read) = conn.try_clone() else { return };
                    let mut lines = BufReader::new(read);
                    let mut first = String::new();
                    if lines.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        match lines.read_line(&mut l) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if l == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let path = first.split(' ').nth(1).unwrap_or_default().to_string();
                    respond(&path, &mut conn);
                });
            }
        });
        port
    }

    #[test]
    fn an_error_answer_whose_body_never_ends_is_not_read_whole() {
        use std::io::Write as _;
        // 500 with a chunked body that goes on until the client hangs up.
        let port = hostile_registry(|_, conn| {
            let head = "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            while conn.write_all(chunk.as_bytes()).is_ok() {}
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = RegistryClient::new(
            http_client().expect("client"),
            &format!("127.0.0.1:{port}"),
            "team/app",
            RegistryOptions {
                credentials: Credentials::default(),
                insecure: true,
            },
        );
        let e = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.manifest("v1")).await
            })
            .expect("the answer within 20 s, its body not read to its (absent) end")
            .expect_err("a 500");
        assert!(
            matches!(e, RegistryError::Status { status, .. } if status == StatusCode::INTERNAL_SERVER_ERROR),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("registry 127.0.0.1:{port}: answered 500")),
            "{text}"
        );
        assert!(
            text.len() < 400,
            "an excerpt, not the body: {} bytes",
            text.len()
        );
    }

    #[test]
    fn a_manifest_sent_a_byte_at_a_time_ends_at_the_deadline() {
        use std::io::Write as _;
        // Each byte well within the client's read timeout; the whole never.
        let port = hostile_registry(|_, conn| {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            while conn.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = RegistryClient::new(
            http_client().expect("client"),
            &format!("127.0.0.1:{port}"),
            "team/app",
            RegistryOptions {
                credentials: Credentials::default(),
                insecure: true,
            },
        )
        .with_document_deadline(Duration::from_secs(1));
        let e = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.manifest("v1")).await
            })
            .expect("given up at its deadline")
            .expect_err("never whole");
        assert_eq!(
            e.to_string(),
            format!("registry 127.0.0.1:{port}: no whole answer within 1 s")
        );
        assert_eq!(e.failure(), Some(Failure::Unreachable));
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials::Basic {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
