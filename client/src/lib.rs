//! A typed client of Flotilla's operator API (`api/openapi.yaml`): HTTPS (TLS 1.3, ring) with
//! an admin client certificate of the cluster, one method per operation, answers decoded into
//! the [`flotilla_api`] types. The control plane is reached by the cluster's server name
//! ([`flotilla_certs::SERVER_NAME`]) whatever address it is dialled at.
//!
//! A refusal by the control plane is [`ClientError::Api`], with the HTTP status and the
//! [`ApiError`] body (message and every problem), apart from transport and decoding errors, so
//! callers can match on the status. [`blocking::Client`] is the same API for synchronous
//! callers.

#![forbid(unsafe_code)]

pub mod blocking;

/// The connection of an exec after its upgrade ([`Client::exec`]).
pub use reqwest::Upgraded;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::images::{ImageRemoved, PrefetchRequest, PrefetchUpdate, StoredImage};
use flotilla_api::ops::{
    AdminCredential, AdminIssue, ApiError, Event, EventFilter, NodeInfo, NodeLabels,
    TaskDefRegistered, TaskDefRevision, TaskInfo, TaskRun, TokenCreate, TokenCreated, TokenInfo,
};
pub use flotilla_api::page::{NodeFilter, TaskFilter};
use flotilla_api::page::{MAX_RESULTS_PARAM, NEXT_TOKEN_PARAM};
use flotilla_api::project::{ProjectApplied, ProjectApply, ProjectInfo, ProjectSummary};
use flotilla_api::scaling::{Autoscale, ScalingPut, ServiceScaling};
use flotilla_api::schedule::{ScheduleInfo, ScheduleSpec};
use flotilla_api::secrets::{SecretInfo, SecretPut, SecretValue};
use flotilla_api::service::{ServiceCreated, ServiceInfo, ServiceUpdate};
use flotilla_api::LogLine;
use flotilla_certs::credential::Credential;
use flotilla_certs::{CertError, SERVER_NAME};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take, answer included (log streams excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The credential directory could not be read. (How to name another directory is the
    /// caller's to say: the CLI says it only when it read its default one.)
    #[error(
        "no admin credential in {} (`flotilla dev` makes one for a cluster on this machine; \
         `orchestratord init` or `flotilla admin issue` for a cluster's)",
        dir.display()
    )]
    Credential {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: CertError,
    },
    /// The credential's server name did not resolve.
    #[error("resolving {server}")]
    Resolve {
        /// `host:port` from the credential.
        server: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The credential's server name resolved to nothing.
    #[error("{server} resolves to no address")]
    NoAddress {
        /// `host:port` from the credential.
        server: String,
    },
    /// The credential's certificates or key do not make a TLS configuration.
    #[error("the admin credential's TLS settings")]
    Tls(#[source] CertError),
    /// The HTTPS client could not be built.
    #[error("building the HTTPS client")]
    Build(#[source] reqwest::Error),
    /// The runtime of the blocking client could not be started.
    #[error("starting the blocking client's runtime")]
    Runtime(#[source] std::io::Error),
    /// A file to send could not be opened.
    #[error("reading {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The request got no answer: connection, TLS, timeout, or the answer broke off.
    #[error("{method} {path} on {server}")]
    Transport {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// The server as the credential names it.
        server: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The control plane refused the request.
    #[error("{}", refusal(error, *status))]
    Api {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// HTTP status (400, 404, 409 …).
        status: u16,
        /// What the control plane said: its message and every problem of an invalid input.
        error: ApiError,
    },
    /// A name that cannot be a path segment: empty, `.` or `..` (URLs remove those
    /// segments, RFC 3986 §5.2.4: the request would name another resource).
    #[error("'{0}' is not a name the control plane can hold (empty, '.' or '..')")]
    Name(String),
    /// The request's body could not be encoded.
    #[error("encoding the body of {method} {path}")]
    Encode {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A page's `Link` header names a next page that is not on this control plane's API.
    #[error("the next page of {path}: its link '{link}' is not a path of the API")]
    Link {
        /// Path and query of the page that named it.
        path: String,
        /// The link's target.
        link: String,
    },
    /// The answer is not the JSON its operation documents.
    #[error("the reply to {method} {path}")]
    Decode {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// How it failed to decode.
        #[source]
        source: serde_json::Error,
    },
    /// An exec's stream broke off or said something out of order.
    #[error("exec in task {task}: {reason}")]
    Exec {
        /// Task id.
        task: String,
        /// What went wrong.
        reason: String,
    },
    /// The node serving a task's logs failed after the stream began.
    #[error("logs of task {task}: {reason}")]
    Logs {
        /// Task id.
        task: String,
        /// What the control plane or node said.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of a refusal by the control plane.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The control plane's error body of a refusal.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// `message (404 Not Found)`, each problem on its own line.
fn refusal(e: &ApiError, status: u16) -> String {
    let status = match reqwest::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    };
    if e.problems.is_empty() {
        format!("{} ({status})", e.error)
    } else {
        format!("{}:\n  {} ({status})", e.error, e.problems.join("\n  "))
    }
}

/// Which log records [`Client::logs`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// One container by its name in the task definition (all of them otherwise).
    pub container: Option<String>,
    /// Keep the stream open for new records until the containers exit.
    pub follow: bool,
    /// Only the last N records of each container.
    pub tail: Option<u32>,
}

/// Which of the control plane's named values a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Secrets (`/v1/secrets`): sealed, never shown.
    Secret,
    /// Configs (`/v1/configs`): files kept as they are.
    Config,
}

impl ValueKind {
    /// The API's collection: `secrets` or `configs`.
    pub fn collection(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Config => "configs",
        }
    }
}

/// A client of one control plane, with one admin credential. Cheap to clone (the connection
/// pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `https://<server name>:<port>`.
    origin: String,
    server: String,
}

impl Client {
    /// The client of the credential in `dir` (as `orchestratord init` or `flotilla admin issue`
    /// write it), at the address its server name resolves to.
    pub async fn open(dir: &Path) -> Result<Self, ClientError> {
        let cred = Credential::load(dir).map_err(|source| ClientError::Credential {
            dir: dir.to_path_buf(),
            source,
        })?;
        Self::connect(&cred).await
    }

    /// The client of `cred`, at the address its server name resolves to.
    pub async fn connect(cred: &Credential) -> Result<Self, ClientError> {
        let server = flotilla_api::with_default_port(&cred.server);
        let addr = tokio::net::lookup_host(server.as_str())
            .await
            .map_err(|source| ClientError::Resolve {
                server: server.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ClientError::NoAddress {
                server: server.clone(),
            })?;
        Self::at(cred, addr)
    }

    /// The client of `cred`, dialling `addr` (the server is still verified by its cluster
    /// name).
    pub fn at(cred: &Credential, addr: SocketAddr) -> Result<Self, ClientError> {
        let tls = flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, b"http/1.1")
            .map_err(ClientError::Tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve(SERVER_NAME, addr)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            origin: format!("https://{SERVER_NAME}:{}", addr.port()),
            server: cred.server.clone(),
        })
    }

    /// The server as the credential names it (`host` or `host:port`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `POST /v1/tokens`: a join token; its secret is in the answer only.
    pub async fn create_token(&self, req: &TokenCreate) -> Result<TokenCreated, ClientError> {
        self.json(Method::POST, &["tokens"], &[], Some(req)).await
    }

    /// `GET /v1/tokens`: every token, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get(&["tokens"], &[]).await
    }

    /// `DELETE /v1/tokens/{id}`: revokes a token.
    pub async fn remove_token(&self, id: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &["tokens", id], &[]).await
    }

    /// `GET /v1/nodes`: every node with its state, resources and labels.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get(&["nodes"], &[]).await
    }

    /// `GET /v1/nodes?…`: every node `filter` matches, in one answer, by id.
    pub async fn nodes_where(&self, filter: &NodeFilter) -> Result<Vec<NodeInfo>, ClientError> {
        let query = filter.query();
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.get(&["nodes"], &pairs).await
    }

    /// `GET /v1/nodes?…&maxResults=N`: the nodes `filter` matches, by id, `max_results`
    /// (1 to [`flotilla_api::page::MAX_RESULTS`]) at a time, each page asked for when
    /// [`Pages::next_page`] is called.
    pub fn node_pages(
        &self,
        filter: &NodeFilter,
        max_results: u32,
    ) -> Result<Pages<NodeInfo>, ClientError> {
        self.pages(&["nodes"], filter.query(), max_results)
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.get(&["nodes", id], &[]).await
    }

    /// `DELETE /v1/nodes/{id}`: refused (409) while it has tasks not stopped, unless `force`.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<(), ClientError> {
        let force = force.to_string();
        self.empty(Method::DELETE, &["nodes", id], &[("force", &force)])
            .await
    }

    /// `POST /v1/nodes/{id}/revoke`: its live session ends at once.
    pub async fn revoke_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.json(Method::POST, &["nodes", id, "revoke"], &[], None::<&()>)
            .await
    }

    /// `PUT /v1/nodes/{id}/labels`: labels set, then labels removed.
    pub async fn label_node(&self, id: &str, change: &NodeLabels) -> Result<NodeInfo, ClientError> {
        self.json(Method::PUT, &["nodes", id, "labels"], &[], Some(change))
            .await
    }

    /// `POST /v1/nodes/{id}/drain`: nothing new is placed on it and its tasks are stopped.
    pub async fn drain_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.json(Method::POST, &["nodes", id, "drain"], &[], None::<&()>)
            .await
    }

    /// `POST /v1/nodes/{id}/activate`: a drained node takes tasks again.
    pub async fn activate_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.json(Method::POST, &["nodes", id, "activate"], &[], None::<&()>)
            .await
    }

    /// `POST /v1/admins`: certifies another operator's CSR.
    pub async fn issue_admin(&self, req: &AdminIssue) -> Result<AdminCredential, ClientError> {
        self.json(Method::POST, &["admins"], &[], Some(req)).await
    }

    /// `POST /v1/taskdefs`: registers a task definition given as JSON or YAML (the ECS
    /// RegisterTaskDefinition shape) as the next revision of its family.
    pub async fn register_taskdef(
        &self,
        document: &[u8],
    ) -> Result<TaskDefRegistered, ClientError> {
        self.document(&["taskdefs"], document).await
    }

    /// `GET /v1/taskdefs`: every revision of every family.
    pub async fn taskdefs(&self) -> Result<Vec<TaskDefRevision>, ClientError> {
        self.get(&["taskdefs"], &[]).await
    }

    /// `GET /v1/taskdefs/{taskdef}`: `FAMILY` (its newest active revision) or
    /// `FAMILY:REVISION`.
    pub async fn taskdef(&self, taskdef: &str) -> Result<TaskDefRevision, ClientError> {
        self.get(&["taskdefs", taskdef], &[]).await
    }

    /// `POST /v1/taskdefs/{taskdef}/deregister`: `FAMILY:REVISION` starts no new tasks.
    pub async fn deregister_taskdef(&self, taskdef: &str) -> Result<TaskDefRevision, ClientError> {
        self.json(
            Method::POST,
            &["taskdefs", taskdef, "deregister"],
            &[],
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/tasks`: creates and places tasks (all or none: 409 with the reasons).
    pub async fn run_task(&self, req: &TaskRun) -> Result<Vec<TaskInfo>, ClientError> {
        self.json(Method::POST, &["tasks"], &[], Some(req)).await
    }

    /// `GET /v1/tasks`.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        self.get(&["tasks"], &[]).await
    }

    /// `GET /v1/tasks?…`: every task `filter` matches, in one answer, oldest first.
    pub async fn tasks_where(&self, filter: &TaskFilter) -> Result<Vec<TaskInfo>, ClientError> {
        let query = filter.query();
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.get(&["tasks"], &pairs).await
    }

    /// `GET /v1/tasks?…&maxResults=N`: the tasks `filter` matches, oldest first,
    /// `max_results` (1 to [`flotilla_api::page::MAX_RESULTS`]) at a time, each page asked
    /// for when [`Pages::next_page`] is called.
    pub fn task_pages(
        &self,
        filter: &TaskFilter,
        max_results: u32,
    ) -> Result<Pages<TaskInfo>, ClientError> {
        self.pages(&["tasks"], filter.query(), max_results)
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn task(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.get(&["tasks", id], &[]).await
    }

    /// `POST /v1/tasks/{id}/stop`.
    pub async fn stop_task(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.json(Method::POST, &["tasks", id, "stop"], &[], None::<&()>)
            .await
    }

    /// `GET /v1/tasks/{id}/logs`: the task's log records as they come from its node.
    pub async fn logs(&self, task: &str, query: &LogQuery) -> Result<LogStream, ClientError> {
        let follow = query.follow.to_string();
        let tail = query.tail.map(|t| t.to_string());
        let mut pairs = vec![("follow", follow.as_str())];
        if let Some(c) = &query.container {
            pairs.push(("container", c));
        }
        if let Some(t) = &tail {
            pairs.push(("tail", t));
        }
        let path = path(&["tasks", task, "logs"], &pairs)?;
        // No overall time limit: a followed stream lasts as long as the containers.
        let req = self
            .http
            .get(self.url(&path))
            .timeout(Duration::from_secs(100 * 365 * 86_400));
        let resp = self.answer(Method::GET, &path, req).await?;
        Ok(LogStream {
            records: Ndjson::new(resp, Method::GET, path, self.server.clone()),
            task: task.to_string(),
        })
    }

    /// `POST /v1/images`: pushes the image archive at `file` (an OCI layout tar, plain or
    /// compressed, or a `docker save` archive) into the control plane's content store,
    /// streamed from the file as it is sent. `name` names the image of a one-image archive;
    /// `platform` (`linux/arm64`) picks from an image index.
    pub async fn push_image(
        &self,
        file: &Path,
        name: Option<&str>,
        platform: Option<&str>,
    ) -> Result<Vec<StoredImage>, ClientError> {
        let mut pairs = Vec::new();
        pairs.extend(name.map(|n| ("name", n)));
        pairs.extend(platform.map(|p| ("platform", p)));
        let path = path(&["images"], &pairs)?;
        let std_file = std::fs::File::open(file).map_err(|source| ClientError::File {
            path: file.to_path_buf(),
            source,
        })?;
        let meta = std_file.metadata().map_err(|source| ClientError::File {
            path: file.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            // An OCI layout directory: the control plane takes its archive.
            return Err(ClientError::File {
                path: file.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "a directory, not an archive: an OCI layout directory becomes one with \
                     `tar -C DIR -cf FILE.tar .` (or `skopeo copy oci:DIR oci-archive:FILE.tar`)",
                ),
            });
        }
        let len = meta.len();
        let body = FileBody {
            file: tokio::fs::File::from_std(std_file),
            left: len,
            buf: vec![0; 256 << 10],
        };
        // No overall time limit: gigabytes over a site's slow link take what they take.
        let req = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap(body))
            .timeout(Duration::from_secs(100 * 365 * 86_400));
        let bytes = self.body(Method::POST, &path, req).await?;
        decode(&Method::POST, &path, &bytes)
    }

    /// `POST /v1/images/pull`: the control plane pulls an image into its content store;
    /// answers it once stored. No overall time limit: a large image over a slow uplink takes
    /// what it takes.
    pub async fn pull_image(
        &self,
        req: &flotilla_api::images::ImagePullRequest,
    ) -> Result<Vec<StoredImage>, ClientError> {
        let path = "/v1/images/pull".to_string();
        let body = serde_json::to_vec(req).map_err(|source| ClientError::Encode {
            method: Method::POST,
            path: path.clone(),
            source,
        })?;
        let request = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(Duration::from_secs(100 * 365 * 86_400));
        let bytes = self.body(Method::POST, &path, request).await?;
        decode(&Method::POST, &path, &bytes)
    }

    /// `GET /v1/images`: the images of the control plane's content store.
    pub async fn images(&self) -> Result<Vec<StoredImage>, ClientError> {
        self.get(&["images"], &[]).await
    }

    /// `GET /v1/images/{name}`: one image of the content store (`busybox` is
    /// `docker.io/library/busybox:latest`).
    pub async fn image(&self, name: &str) -> Result<StoredImage, ClientError> {
        self.get(&["images", &image_segment(name)], &[]).await
    }

    /// `DELETE /v1/images/{name}`: removes an image, and the blobs no other image has.
    pub async fn remove_image(&self, name: &str) -> Result<ImageRemoved, ClientError> {
        self.json(
            Method::DELETE,
            &["images", &image_segment(name)],
            &[],
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/images/prefetch`: asks the nodes `req` selects to pull its image now; their
    /// progress streams back until each has a final state (see
    /// [`flotilla_api::images::PrefetchState`]).
    pub async fn prefetch(&self, req: &PrefetchRequest) -> Result<PrefetchStream, ClientError> {
        let path = "/v1/images/prefetch".to_string();
        let body = serde_json::to_vec(req).map_err(|source| ClientError::Encode {
            method: Method::POST,
            path: path.clone(),
            source,
        })?;
        // No overall time limit: a big image over a site's slow link takes what it takes.
        let http = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(Duration::from_secs(100 * 365 * 86_400));
        let resp = self.answer(Method::POST, &path, http).await?;
        Ok(PrefetchStream {
            records: Ndjson::new(resp, Method::POST, path, self.server.clone()),
        })
    }

    /// `POST /v1/tasks/{id}/exec`: runs `req.command` in one of the task's containers and
    /// returns the connection, which now carries [`flotilla_api::exec::ExecFrame`]s both ways
    /// (read with [`flotilla_api::exec::read`], written with [`flotilla_api::exec::write`]);
    /// the first the node sent, `Started`, has been read. `req.task` and `req.admin` are
    /// ignored (the admin is the credential's).
    pub async fn exec(
        &self,
        task: &str,
        req: &flotilla_api::exec::ExecRequest,
    ) -> Result<ExecStream, ClientError> {
        use flotilla_api::exec::{self as wire, ExecFrame};
        let (tty, stdin) = (req.tty.to_string(), req.stdin.to_string());
        let mut pairs: Vec<(&str, &str)> = req
            .command
            .iter()
            .map(|a| ("command", a.as_str()))
            .collect();
        pairs.push(("tty", &tty));
        pairs.push(("stdin", &stdin));
        if let Some(c) = &req.container {
            pairs.push(("container", c));
        }
        let size = req.size.map(|s| (s.rows.to_string(), s.cols.to_string()));
        if let Some((rows, cols)) = &size {
            pairs.push(("rows", rows));
            pairs.push(("cols", cols));
        }
        let path = path(&["tasks", task, "exec"], &pairs)?;
        let resp = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, wire::UPGRADE)
            // The answer comes once the node started the command (an image's exec is quick;
            // the node answers within 10 s or the control plane says it did not).
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|source| self.transport(Method::POST, &path, source))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|source| self.transport(Method::POST, &path, source))?;
            let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
                error: String::from_utf8_lossy(&bytes).trim().to_string(),
                problems: Vec::new(),
            });
            return Err(ClientError::Api {
                method: Method::POST,
                path,
                status,
                error,
            });
        }
        let mut io = resp
            .upgrade()
            .await
            .map_err(|source| self.transport(Method::POST, &path, source))?;
        let broken = |reason: String| ClientError::Exec {
            task: task.to_string(),
            reason,
        };
        match wire::read(&mut io).await {
            Ok(Some(ExecFrame::Started(container))) => Ok(ExecStream { io, container }),
            Ok(Some(ExecFrame::Error(why))) => Err(broken(why)),
            Ok(other) => Err(broken(format!("unexpected first frame {other:?}"))),
            Err(e) => Err(broken(e.to_string())),
        }
    }

    /// `POST /v1/services`: creates a service from a JSON or YAML document (the ECS
    /// CreateService shape).
    pub async fn create_service(&self, document: &[u8]) -> Result<ServiceCreated, ClientError> {
        self.document(&["services"], document).await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.get(&["services"], &[]).await
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        self.get(&["services", name], &[]).await
    }

    /// `PUT /v1/services/{name}`: another revision, another count, or a forced deployment.
    pub async fn update_service(
        &self,
        name: &str,
        update: &ServiceUpdate,
    ) -> Result<ServiceInfo, ClientError> {
        self.json(Method::PUT, &["services", name], &[], Some(update))
            .await
    }

    /// `DELETE /v1/services/{name}`: its tasks are stopped.
    pub async fn remove_service(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &["services", name], &[]).await
    }

    /// `PUT /v1/projects/{name}`: applies the project's services in one transaction (see
    /// [`ProjectApply`]): what happened to each, and the ignored fields. A refusal (400 with
    /// every problem by its path in the body, 409 for a service that exists outside the
    /// project) changed nothing.
    pub async fn apply_project(
        &self,
        name: &str,
        apply: &ProjectApply,
    ) -> Result<ProjectApplied, ClientError> {
        self.json(Method::PUT, &["projects", name], &[], Some(apply))
            .await
    }

    /// `GET /v1/projects`: every project, by name, with its services' counts.
    pub async fn projects(&self) -> Result<Vec<ProjectSummary>, ClientError> {
        self.get(&["projects"], &[]).await
    }

    /// `GET /v1/projects/{name}`: the project's services (404 when it has none).
    pub async fn project(&self, name: &str) -> Result<ProjectInfo, ClientError> {
        self.get(&["projects", name], &[]).await
    }

    /// `DELETE /v1/projects/{name}`: deletes its services (their tasks are stopped) and
    /// deregisters their families' revisions nothing uses any more (404 for a project without
    /// services).
    pub async fn remove_project(&self, name: &str) -> Result<ProjectApplied, ClientError> {
        self.json(Method::DELETE, &["projects", name], &[], None::<&()>)
            .await
    }

    /// `GET /v1/services/{name}/endpoints`: what DNS answers for a service with discovery.
    pub async fn service_endpoints(&self, name: &str) -> Result<DiscoveredService, ClientError> {
        self.get(&["services", name, "endpoints"], &[]).await
    }

    /// `GET /v1/services/{name}/scaling`: its scalable target, policies, scheduled actions and
    /// latest scaling activity (404 when the service has no scalable target).
    pub async fn service_scaling(&self, name: &str) -> Result<ServiceScaling, ClientError> {
        self.get(&["services", name, "scaling"], &[]).await
    }

    /// `PUT /v1/services/{name}/scaling`: registers (or changes) the service's scalable target
    /// and puts the given policies, replacing those of the same names.
    pub async fn autoscale_service(
        &self,
        name: &str,
        autoscale: &Autoscale,
    ) -> Result<ScalingPut, ClientError> {
        self.json(
            Method::PUT,
            &["services", name, "scaling"],
            &[],
            Some(autoscale),
        )
        .await
    }

    /// `DELETE /v1/services/{name}/scaling`: deregisters the scalable target with its policies
    /// and scheduled actions; the desired count stays as it is.
    pub async fn remove_service_scaling(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &["services", name, "scaling"], &[])
            .await
    }

    /// `POST /v1/services/{name}/scaling/policies`: puts a scaling policy given as JSON or
    /// YAML (the Application Auto Scaling PutScalingPolicy shape), replacing the one of the
    /// same name.
    pub async fn put_scaling_policy(
        &self,
        name: &str,
        document: &[u8],
    ) -> Result<ScalingPut, ClientError> {
        self.document(&["services", name, "scaling", "policies"], document)
            .await
    }

    /// `DELETE /v1/services/{name}/scaling/policies/{policy}`.
    pub async fn remove_scaling_policy(&self, name: &str, policy: &str) -> Result<(), ClientError> {
        self.empty(
            Method::DELETE,
            &["services", name, "scaling", "policies", policy],
            &[],
        )
        .await
    }

    /// `POST /v1/services/{name}/scaling/scheduled-actions`: puts a scheduled action given as
    /// JSON or YAML (the PutScheduledAction shape), replacing the one of the same name.
    pub async fn put_scheduled_action(
        &self,
        name: &str,
        document: &[u8],
    ) -> Result<ScalingPut, ClientError> {
        self.document(
            &["services", name, "scaling", "scheduled-actions"],
            document,
        )
        .await
    }

    /// `DELETE /v1/services/{name}/scaling/scheduled-actions/{action}`.
    pub async fn remove_scheduled_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<(), ClientError> {
        self.empty(
            Method::DELETE,
            &["services", name, "scaling", "scheduled-actions", action],
            &[],
        )
        .await
    }

    /// `POST /v1/schedules`.
    pub async fn create_schedule(&self, spec: &ScheduleSpec) -> Result<ScheduleInfo, ClientError> {
        self.json(Method::POST, &["schedules"], &[], Some(spec))
            .await
    }

    /// `GET /v1/schedules`.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, ClientError> {
        self.get(&["schedules"], &[]).await
    }

    /// `GET /v1/schedules/{name}`: with its latest runs.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleInfo, ClientError> {
        self.get(&["schedules", name], &[]).await
    }

    /// `DELETE /v1/schedules/{name}`: runs already started keep running.
    pub async fn remove_schedule(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &["schedules", name], &[]).await
    }

    /// `POST /v1/secrets` or `/v1/configs`: a new secret or config (version 1); its metadata.
    pub async fn create_value(
        &self,
        kind: ValueKind,
        put: &SecretPut,
    ) -> Result<SecretInfo, ClientError> {
        self.json(Method::POST, &[kind.collection()], &[], Some(put))
            .await
    }

    /// `POST /v1/secrets/{name}/versions` (a rotation) or `/v1/configs/{name}/versions`: a
    /// new version; its metadata.
    pub async fn new_version(
        &self,
        kind: ValueKind,
        name: &str,
        value: &SecretValue,
    ) -> Result<SecretInfo, ClientError> {
        let put = SecretPut {
            name: String::new(),
            value: value.clone(),
        };
        self.json(
            Method::POST,
            &[kind.collection(), name, "versions"],
            &[],
            Some(&put),
        )
        .await
    }

    /// `GET /v1/secrets` or `/v1/configs`: every one's metadata (never a value).
    pub async fn values(&self, kind: ValueKind) -> Result<Vec<SecretInfo>, ClientError> {
        self.get(&[kind.collection()], &[]).await
    }

    /// `GET /v1/secrets/{name}` or `/v1/configs/{name}`: its metadata (never its value).
    pub async fn value_info(&self, kind: ValueKind, name: &str) -> Result<SecretInfo, ClientError> {
        self.get(&[kind.collection(), name], &[]).await
    }

    /// `DELETE /v1/secrets/{name}[?force=true]` or `/v1/configs/{name}`: refused while in
    /// use, unless `force`.
    pub async fn remove_value(
        &self,
        kind: ValueKind,
        name: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        let query: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
        self.empty(Method::DELETE, &[kind.collection(), name], query)
            .await
    }

    /// `GET /v1/events`: at most `limit` (1 to 1000) events with a sequence number above
    /// `since`, oldest first.
    pub async fn events(&self, since: u64, limit: u32) -> Result<Vec<Event>, ClientError> {
        self.events_matching(since, limit, &EventFilter::default())
            .await
    }

    /// `GET /v1/events` of the events `filter` matches: at most `limit` after sequence
    /// number `since`.
    pub async fn events_matching(
        &self,
        since: u64,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<Vec<Event>, ClientError> {
        let (since, limit) = (since.to_string(), limit.to_string());
        let mut query = vec![("since", since.as_str()), ("limit", limit.as_str())];
        query.extend(filter.kind.as_deref().map(|k| ("kind", k)));
        query.extend(filter.subject.as_deref().map(|s| ("subject", s)));
        self.get(&["events"], &query).await
    }

    /// `GET /v1/metrics`: the control plane's Prometheus metrics, in the Prometheus text
    /// format 0.0.4.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let path = path(&["metrics"], &[])?;
        let req = self.http.get(self.url(&path));
        let bytes = self.body(Method::GET, &path, req).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The pages of a listing, the first not asked for yet.
    fn pages<T>(
        &self,
        segments: &[&str],
        mut query: Vec<(&'static str, String)>,
        max_results: u32,
    ) -> Result<Pages<T>, ClientError> {
        query.push((MAX_RESULTS_PARAM, max_results.to_string()));
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Ok(Pages {
            client: self.clone(),
            next: Some(path(segments, &pairs)?),
            item: std::marker::PhantomData,
        })
    }

    /// `GET path` of a listing's page: its items, and the path of the next page when its
    /// `Link` header names one (only a path of this API is followed).
    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        let req = self.http.get(self.url(path));
        let resp = self.answer(Method::GET, path, req).await?;
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(flotilla_api::page::next_link)
            .map(str::to_string);
        if let Some(link) = &next {
            // Only what this client would ask itself: a path of the API with a token.
            let ours = link.starts_with("/v1/")
                && !link.contains("//")
                && link.contains(&format!("{NEXT_TOKEN_PARAM}="));
            if !ours {
                return Err(ClientError::Link {
                    path: path.to_string(),
                    link: link.clone(),
                });
            }
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| self.transport(Method::GET, path, source))?;
        Ok((decode(&Method::GET, path, &bytes)?, next))
    }

    /// The URL of `path` on the control plane.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        pairs: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        self.json(Method::GET, segments, pairs, None::<&()>).await
    }

    /// A request with an optional JSON body whose answer is a JSON body.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        pairs: &[(&str, &str)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let path = path(segments, pairs)?;
        let mut req = self.http.request(method.clone(), self.url(&path));
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|source| ClientError::Encode {
                method: method.clone(),
                path: path.clone(),
                source,
            })?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let bytes = self.body(method.clone(), &path, req).await?;
        decode(&method, &path, &bytes)
    }

    /// A request whose answer has no body.
    async fn empty(
        &self,
        method: Method,
        segments: &[&str],
        pairs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let path = path(segments, pairs)?;
        let req = self.http.request(method.clone(), self.url(&path));
        self.body(method, &path, req).await.map(drop)
    }

    /// A POST of a JSON or YAML document as given.
    async fn document<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        document: &[u8],
    ) -> Result<T, ClientError> {
        let path = path(segments, &[])?;
        let json = document
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        let kind = if json {
            "application/json"
        } else {
            "application/yaml"
        };
        let req = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONTENT_TYPE, kind)
            .body(document.to_vec());
        let bytes = self.body(Method::POST, &path, req).await?;
        decode(&Method::POST, &path, &bytes)
    }

    /// Sends `req`; a successful answer's whole body.
    async fn body(
        &self,
        method: Method,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, ClientError> {
        let resp = self.answer(method.clone(), path, req).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|source| self.transport(method, path, source))
    }

    /// Sends `req`; the answer if it is a success, else the refusal.
    async fn answer(
        &self,
        method: Method,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|source| self.transport(method.clone(), path, source))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| self.transport(method.clone(), path, source))?;
        let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
            error: String::from_utf8_lossy(&bytes).trim().to_string(),
            problems: Vec::new(),
        });
        Err(ClientError::Api {
            method,
            path: path.to_string(),
            status: status.as_u16(),
            error,
        })
    }

    fn transport(&self, method: Method, path: &str, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            method,
            path: path.to_string(),
            server: self.server.clone(),
            // The request is named above, by the server the credential names; the client's
            // URL (with the TLS name it dials) would say it again.
            source: source.without_url(),
        }
    }
}

/// A listing read a page at a time ([`Client::task_pages`], [`Client::node_pages`]): each page
/// is asked for where the last one's `Link: <…>; rel="next"` header said, until a page has
/// none. Items created or removed meanwhile move no other item across pages (the API's page
/// token is a place in the listing's order, not an offset).
#[derive(Debug)]
pub struct Pages<T> {
    client: Client,
    /// The next page's path and query; `None` once the last page was read.
    next: Option<String>,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Pages<T> {
    /// The next page (`None` after the last one; the first may be empty).
    pub async fn next_page(&mut self) -> Result<Option<Vec<T>>, ClientError> {
        let Some(path) = self.next.take() else {
            return Ok(None);
        };
        let (items, next) = self.client.page(&path).await?;
        self.next = next;
        Ok(Some(items))
    }

    /// Every page left, together.
    pub async fn all(mut self) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        while let Some(page) = self.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }
}

/// `/v1/<segments…>?<pairs…>`, every segment, key and value percent-encoded (so an id can
/// never reach another path or add a parameter).
fn path(segments: &[&str], pairs: &[(&str, &str)]) -> Result<String, ClientError> {
    let mut out = String::from("/v1");
    for s in segments {
        if s.is_empty() || *s == "." || *s == ".." {
            return Err(ClientError::Name(s.to_string()));
        }
        out.push('/');
        escape(s, b":@", &mut out);
    }
    for (i, (k, v)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        escape(k, b"", &mut out);
        out.push('=');
        escape(v, b"", &mut out);
    }
    Ok(out)
}

/// Appends `s` with every byte but unreserved ones (RFC 3986) and `keep` percent-encoded.
fn escape(s: &str, keep: &[u8], out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn decode<T: DeserializeOwned>(
    method: &Method,
    path: &str,
    bytes: &[u8],
) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
        method: method.clone(),
        path: path.to_string(),
        source,
    })
}

/// An exec's connection after the upgrade, from [`Client::exec`].
#[derive(Debug)]
pub struct ExecStream {
    /// The connection: [`flotilla_api::exec::ExecFrame`]s both ways.
    pub io: reqwest::Upgraded,
    /// The container the command runs in (its name in the task definition).
    pub container: String,
}

/// One record of a log stream: a line, or the last record when the node failed mid-way.
#[derive(Deserialize)]
#[serde(untagged)]
enum LogRecord {
    Line(LogLine),
    Error { error: String },
}

/// Records of a streamed answer (newline-delimited JSON) as they arrive.
#[derive(Debug)]
struct Ndjson {
    resp: reqwest::Response,
    /// Bytes received after the last complete record.
    pending: Vec<u8>,
    method: Method,
    path: String,
    server: String,
    ended: bool,
}

impl Ndjson {
    fn new(resp: reqwest::Response, method: Method, path: String, server: String) -> Self {
        Self {
            resp,
            pending: Vec::new(),
            method,
            path,
            server,
            ended: false,
        }
    }

    /// The next record that is not blank, decoded; `None` once the answer ended.
    async fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            let record = if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                self.pending.drain(..=nl).collect()
            } else if self.ended {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                std::mem::take(&mut self.pending)
            } else {
                match self.resp.chunk().await {
                    Ok(Some(chunk)) => self.pending.extend_from_slice(&chunk),
                    Ok(None) => self.ended = true,
                    Err(source) => {
                        return Err(ClientError::Transport {
                            method: self.method.clone(),
                            path: self.path.clone(),
                            server: self.server.clone(),
                            source: source.without_url(),
                        })
                    }
                }
                continue;
            };
            if record.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&record).map(Some).map_err(|source| {
                ClientError::Decode {
                    method: self.method.clone(),
                    path: self.path.clone(),
                    source,
                }
            });
        }
    }
}

/// A task's log records as they arrive (newline-delimited JSON), from [`Client::logs`].
#[derive(Debug)]
pub struct LogStream {
    records: Ndjson,
    task: String,
}

impl LogStream {
    /// The next record; `None` once the stream ended (a followed stream ends when the task's
    /// containers exit). A node that fails mid-way ends it with [`ClientError::Logs`].
    pub async fn next(&mut self) -> Result<Option<LogLine>, ClientError> {
        match self.records.next::<LogRecord>().await? {
            Some(LogRecord::Line(l)) => Ok(Some(l)),
            Some(LogRecord::Error { error }) => Err(ClientError::Logs {
                task: self.task.clone(),
                reason: error,
            }),
            None => Ok(None),
        }
    }
}

/// The nodes' progress in a prefetch as it arrives, from [`Client::prefetch`].
#[derive(Debug)]
pub struct PrefetchStream {
    records: Ndjson,
}

impl PrefetchStream {
    /// The next update; `None` once every node has a final state.
    pub async fn next(&mut self) -> Result<Option<PrefetchUpdate>, ClientError> {
        self.records.next().await
    }
}

/// A file as a request body, read as it is sent ([`Client::push_image`]).
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: Vec<u8>,
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut rb = tokio::io::ReadBuf::new(&mut this.buf);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut this.file), cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was sent",
                    ))));
                }
                let data = bytes::Bytes::copy_from_slice(rb.filled());
                this.left = this.left.saturating_sub(n as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The path segment of image reference `name` in `/v1/images/{name}`: as given, but for the
/// short names `pull` and `prefetch`, whose segments are routes of their own (`POST`); they
/// are sent with their default tag (`pull:latest`), which the control plane looks up alike
/// (`ImageRef::lookup_names`).
fn image_segment(name: &str) -> std::borrow::Cow<'_, str> {
    match name {
        "pull" | "prefetch" => format!("{name}:latest").into(),
        _ => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_named_as_a_route_is_sent_with_its_tag() {
        assert_eq!(image_segment("pull"), "pull:latest");
        assert_eq!(image_segment("prefetch"), "prefetch:latest");
        for as_given in ["pull:v1", "team/pull", "busybox", "pulls"] {
            assert_eq!(image_segment(as_given), as_given);
        }
    }

    #[test]
    fn refusals_read_as_before_and_carry_their_status() {
        let e = ClientError::Api {
            method: Method::POST,
            path: "/v1/taskdefs".into(),
            status: 400,
            error: ApiError {
                error: "invalid task definition".into(),
                problems: vec!["$.family: required".into(), "$.cpu: bad".into()],
            },
        };
        assert_eq!(
            e.to_string(),
            "invalid task definition:\n  $.family: required\n  $.cpu: bad (400 Bad Request)"
        );
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.api_error().map(|a| a.problems.len()), Some(2));
    }

    #[test]
    fn path_segments_and_parameters_are_escaped() {
        assert_eq!(
            path(&["taskdefs", "web:2", "deregister"], &[]).expect("path"),
            "/v1/taskdefs/web:2/deregister"
        );
        assert_eq!(
            path(
                &["tasks", "a/../b?c d"],
                &[("follow", "true"), ("container", "x&y=z")]
            )
            .expect("path"),
            "/v1/tasks/a%2F..%2Fb%3Fc%20d?follow=true&container=x%26y%3Dz"
        );
        assert_eq!(
            path(
                &["services", "web", "scaling", "scheduled-actions", "a/b"],
                &[]
            )
            .expect("path"),
            "/v1/services/web/scaling/scheduled-actions/a%2Fb"
        );
        // A dot segment would name another resource once the URL is normalized:
        // `scaling policy rm web ..` was `DELETE /v1/services/web/scaling`.
        for name in ["..", ".", ""] {
            let e = path(&["services", "web", "scaling", "policies", name], &[])
                .expect_err("dot segment");
            assert!(matches!(e, ClientError::Name(n) if n == name));
        }
    }
}
