//! The same client for synchronous callers (scripts, tests): each call runs on the client's
//! own one-thread runtime, which also keeps its pooled connections serviced between calls. Do
//! not call it from inside an async runtime.

use std::net::SocketAddr;
use std::path::Path;

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::ops::{
    AdminCredential, AdminIssue, Event, NodeInfo, NodeLabels, TaskDefRegistered, TaskDefRevision,
    TaskInfo, TaskRun, TokenCreate, TokenCreated, TokenInfo,
};
use flotilla_api::project::{ProjectApplied, ProjectApply, ProjectInfo, ProjectSummary};
use flotilla_api::scaling::{Autoscale, ScalingPut, ServiceScaling};
use flotilla_api::schedule::{ScheduleInfo, ScheduleSpec};
use flotilla_api::service::{ServiceCreated, ServiceInfo, ServiceUpdate};
use flotilla_api::LogLine;
use flotilla_certs::credential::Credential;

use crate::{ClientError, LogQuery, LogStream, NodeFilter, TaskFilter};

/// The pages of a listing, each asked for as the iteration reaches it ([`crate::Pages`]); an
/// error ends the iteration.
#[derive(Debug)]
pub struct Pages<'a, T> {
    client: &'a Client,
    inner: crate::Pages<T>,
}

impl<T: serde::de::DeserializeOwned> Iterator for Pages<'_, T> {
    type Item = Result<Vec<T>, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.client.run(self.inner.next_page()).transpose()
    }
}

/// A blocking [`crate::Client`]; see the methods of the same names there.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("flotilla-client")
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
}

impl Client {
    /// The client of the credential in `dir`, at the address its server name resolves to.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::open(dir))?;
        Ok(Self {
            inner,
            rt: Some(rt),
        })
    }

    /// The client of `cred`, dialling `addr`.
    pub fn at(cred: &Credential, addr: SocketAddr) -> Result<Self, ClientError> {
        let rt = runtime()?;
        let inner = crate::Client::at(cred, addr)?;
        Ok(Self {
            inner,
            rt: Some(rt),
        })
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            // Only while dropping.
            None => unreachable!("the runtime lives as long as the client"),
        }
    }

    /// The asynchronous client underneath.
    pub fn asynchronous(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::create_token`].
    pub fn create_token(&self, req: &TokenCreate) -> Result<TokenCreated, ClientError> {
        self.run(self.inner.create_token(req))
    }

    /// See [`crate::Client::tokens`].
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.run(self.inner.tokens())
    }

    /// See [`crate::Client::remove_token`].
    pub fn remove_token(&self, id: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_token(id))
    }

    /// See [`crate::Client::nodes`].
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.run(self.inner.nodes())
    }

    /// See [`crate::Client::nodes_where`].
    pub fn nodes_where(&self, filter: &NodeFilter) -> Result<Vec<NodeInfo>, ClientError> {
        self.run(self.inner.nodes_where(filter))
    }

    /// See [`crate::Client::node_pages`]: an iterator of the pages.
    pub fn node_pages(
        &self,
        filter: &NodeFilter,
        max_results: u32,
    ) -> Result<Pages<'_, NodeInfo>, ClientError> {
        Ok(Pages {
            client: self,
            inner: self.inner.node_pages(filter, max_results)?,
        })
    }

    /// See [`crate::Client::node`].
    pub fn node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.run(self.inner.node(id))
    }

    /// See [`crate::Client::remove_node`].
    pub fn remove_node(&self, id: &str, force: bool) -> Result<(), ClientError> {
        self.run(self.inner.remove_node(id, force))
    }

    /// See [`crate::Client::revoke_node`].
    pub fn revoke_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.run(self.inner.revoke_node(id))
    }

    /// See [`crate::Client::label_node`].
    pub fn label_node(&self, id: &str, change: &NodeLabels) -> Result<NodeInfo, ClientError> {
        self.run(self.inner.label_node(id, change))
    }

    /// See [`crate::Client::drain_node`].
    pub fn drain_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.run(self.inner.drain_node(id))
    }

    /// See [`crate::Client::activate_node`].
    pub fn activate_node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.run(self.inner.activate_node(id))
    }

    /// See [`crate::Client::issue_admin`].
    pub fn issue_admin(&self, req: &AdminIssue) -> Result<AdminCredential, ClientError> {
        self.run(self.inner.issue_admin(req))
    }

    /// See [`crate::Client::register_taskdef`].
    pub fn register_taskdef(&self, document: &[u8]) -> Result<TaskDefRegistered, ClientError> {
        self.run(self.inner.register_taskdef(document))
    }

    /// See [`crate::Client::taskdefs`].
    pub fn taskdefs(&self) -> Result<Vec<TaskDefRevision>, ClientError> {
        self.run(self.inner.taskdefs())
    }

    /// See [`crate::Client::taskdef`].
    pub fn taskdef(&self, taskdef: &str) -> Result<TaskDefRevision, ClientError> {
        self.run(self.inner.taskdef(taskdef))
    }

    /// See [`crate::Client::deregister_taskdef`].
    pub fn deregister_taskdef(&self, taskdef: &str) -> Result<TaskDefRevision, ClientError> {
        self.run(self.inner.deregister_taskdef(taskdef))
    }

    /// See [`crate::Client::run_task`].
    pub fn run_task(&self, req: &TaskRun) -> Result<Vec<TaskInfo>, ClientError> {
        self.run(self.inner.run_task(req))
    }

    /// See [`crate::Client::tasks`].
    pub fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        self.run(self.inner.tasks())
    }

    /// See [`crate::Client::tasks_where`].
    pub fn tasks_where(&self, filter: &TaskFilter) -> Result<Vec<TaskInfo>, ClientError> {
        self.run(self.inner.tasks_where(filter))
    }

    /// See [`crate::Client::task_pages`]: an iterator of the pages.
    pub fn task_pages(
        &self,
        filter: &TaskFilter,
        max_results: u32,
    ) -> Result<Pages<'_, TaskInfo>, ClientError> {
        Ok(Pages {
            client: self,
            inner: self.inner.task_pages(filter, max_results)?,
        })
    }

    /// See [`crate::Client::task`].
    pub fn task(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.run(self.inner.task(id))
    }

    /// See [`crate::Client::stop_task`].
    pub fn stop_task(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.run(self.inner.stop_task(id))
    }

    /// See [`crate::Client::logs`]: the records as an iterator, each read when asked for.
    pub fn logs(&self, task: &str, query: &LogQuery) -> Result<LogLines<'_>, ClientError> {
        let stream = self.run(self.inner.logs(task, query))?;
        Ok(LogLines {
            client: self,
            stream,
        })
    }

    /// See [`crate::Client::push_image`].
    pub fn push_image(
        &self,
        file: &std::path::Path,
        name: Option<&str>,
        platform: Option<&str>,
    ) -> Result<Vec<flotilla_api::images::StoredImage>, ClientError> {
        self.run(self.inner.push_image(file, name, platform))
    }

    /// See [`crate::Client::pull_image`].
    pub fn pull_image(
        &self,
        req: &flotilla_api::images::ImagePullRequest,
    ) -> Result<Vec<flotilla_api::images::StoredImage>, ClientError> {
        self.run(self.inner.pull_image(req))
    }

    /// See [`crate::Client::images`].
    pub fn images(&self) -> Result<Vec<flotilla_api::images::StoredImage>, ClientError> {
        self.run(self.inner.images())
    }

    /// See [`crate::Client::image`].
    pub fn image(&self, name: &str) -> Result<flotilla_api::images::StoredImage, ClientError> {
        self.run(self.inner.image(name))
    }

    /// See [`crate::Client::remove_image`].
    pub fn remove_image(
        &self,
        name: &str,
    ) -> Result<flotilla_api::images::ImageRemoved, ClientError> {
        self.run(self.inner.remove_image(name))
    }

    /// See [`crate::Client::prefetch`]: the updates as an iterator, each read when asked for.
    pub fn prefetch(
        &self,
        req: &flotilla_api::images::PrefetchRequest,
    ) -> Result<PrefetchUpdates<'_>, ClientError> {
        let stream = self.run(self.inner.prefetch(req))?;
        Ok(PrefetchUpdates {
            client: self,
            stream,
        })
    }

    /// See [`crate::Client::create_service`].
    pub fn create_service(&self, document: &[u8]) -> Result<ServiceCreated, ClientError> {
        self.run(self.inner.create_service(document))
    }

    /// See [`crate::Client::services`].
    pub fn services(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.run(self.inner.services())
    }

    /// See [`crate::Client::service`].
    pub fn service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        self.run(self.inner.service(name))
    }

    /// See [`crate::Client::update_service`].
    pub fn update_service(
        &self,
        name: &str,
        update: &ServiceUpdate,
    ) -> Result<ServiceInfo, ClientError> {
        self.run(self.inner.update_service(name, update))
    }

    /// See [`crate::Client::remove_service`].
    pub fn remove_service(&self, name: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_service(name))
    }

    /// See [`crate::Client::apply_project`].
    pub fn apply_project(
        &self,
        name: &str,
        apply: &ProjectApply,
    ) -> Result<ProjectApplied, ClientError> {
        self.run(self.inner.apply_project(name, apply))
    }

    /// See [`crate::Client::projects`].
    pub fn projects(&self) -> Result<Vec<ProjectSummary>, ClientError> {
        self.run(self.inner.projects())
    }

    /// See [`crate::Client::project`].
    pub fn project(&self, name: &str) -> Result<ProjectInfo, ClientError> {
        self.run(self.inner.project(name))
    }

    /// See [`crate::Client::remove_project`].
    pub fn remove_project(&self, name: &str) -> Result<ProjectApplied, ClientError> {
        self.run(self.inner.remove_project(name))
    }

    /// See [`crate::Client::service_endpoints`].
    pub fn service_endpoints(&self, name: &str) -> Result<DiscoveredService, ClientError> {
        self.run(self.inner.service_endpoints(name))
    }

    /// See [`crate::Client::service_scaling`].
    pub fn service_scaling(&self, name: &str) -> Result<ServiceScaling, ClientError> {
        self.run(self.inner.service_scaling(name))
    }

    /// See [`crate::Client::autoscale_service`].
    pub fn autoscale_service(
        &self,
        name: &str,
        autoscale: &Autoscale,
    ) -> Result<ScalingPut, ClientError> {
        self.run(self.inner.autoscale_service(name, autoscale))
    }

    /// See [`crate::Client::remove_service_scaling`].
    pub fn remove_service_scaling(&self, name: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_service_scaling(name))
    }

    /// See [`crate::Client::put_scaling_policy`].
    pub fn put_scaling_policy(
        &self,
        name: &str,
        document: &[u8],
    ) -> Result<ScalingPut, ClientError> {
        self.run(self.inner.put_scaling_policy(name, document))
    }

    /// See [`crate::Client::remove_scaling_policy`].
    pub fn remove_scaling_policy(&self, name: &str, policy: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_scaling_policy(name, policy))
    }

    /// See [`crate::Client::put_scheduled_action`].
    pub fn put_scheduled_action(
        &self,
        name: &str,
        document: &[u8],
    ) -> Result<ScalingPut, ClientError> {
        self.run(self.inner.put_scheduled_action(name, document))
    }

    /// See [`crate::Client::remove_scheduled_action`].
    pub fn remove_scheduled_action(&self, name: &str, action: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_scheduled_action(name, action))
    }

    /// See [`crate::Client::create_schedule`].
    pub fn create_schedule(&self, spec: &ScheduleSpec) -> Result<ScheduleInfo, ClientError> {
        self.run(self.inner.create_schedule(spec))
    }

    /// See [`crate::Client::schedules`].
    pub fn schedules(&self) -> Result<Vec<ScheduleInfo>, ClientError> {
        self.run(self.inner.schedules())
    }

    /// See [`crate::Client::schedule`].
    pub fn schedule(&self, name: &str) -> Result<ScheduleInfo, ClientError> {
        self.run(self.inner.schedule(name))
    }

    /// See [`crate::Client::remove_schedule`].
    pub fn remove_schedule(&self, name: &str) -> Result<(), ClientError> {
        self.run(self.inner.remove_schedule(name))
    }

    /// See [`crate::Client::events`].
    pub fn events(&self, since: u64, limit: u32) -> Result<Vec<Event>, ClientError> {
        self.run(self.inner.events(since, limit))
    }

    /// See [`crate::Client::metrics`].
    pub fn metrics(&self) -> Result<String, ClientError> {
        self.run(self.inner.metrics())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Without waiting for the worker: the client may be dropped on an async thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A task's log records, read as iterated (a followed stream blocks until the next one).
#[derive(Debug)]
pub struct LogLines<'a> {
    client: &'a Client,
    stream: LogStream,
}

impl Iterator for LogLines<'_> {
    type Item = Result<LogLine, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.client.run(self.stream.next()).transpose()
    }
}

/// A prefetch's updates, read as iterated (see [`Client::prefetch`]).
#[derive(Debug)]
pub struct PrefetchUpdates<'a> {
    client: &'a Client,
    stream: crate::PrefetchStream,
}

impl Iterator for PrefetchUpdates<'_> {
    type Item = Result<flotilla_api::images::PrefetchUpdate, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.client.run(self.stream.next()).transpose()
    }
}
