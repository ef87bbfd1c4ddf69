//! The core's thread: the one writer. [`Core::start`] moves the [`Cluster`] onto a dedicated
//! thread that executes commands one at a time, in the order they arrive, each at the wall
//! clock's time when it starts; [`Core::call`] sends one and awaits its outcome. Fsynced
//! commits happen there, never on the async runtime's workers.

use orchestratord::cluster::{Cluster, ClusterError, Command, Now, Outcome};

struct Job {
    command: Command,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, ClusterError>>,
}

/// A handle on the core's thread (cheap to clone).
#[derive(Debug, Clone)]
pub struct Core {
    tx: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("command", &self.command)
            .finish()
    }
}

/// The wall clock now.
pub fn now() -> Now {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Now { unix_ms: ms }
}

impl Core {
    /// Starts the core's thread with `cluster`.
    pub fn start(mut cluster: Cluster) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cluster-core".into())
            .spawn(move || {
                for job in rx {
                    let command = job.command;
                    let run = std::panic::AssertUnwindSafe(|| cluster.execute(command, now()));
                    let Ok(outcome) = std::panic::catch_unwind(run) else {
                        // The store holds every committed command; memory may not. Start over
                        // from the store (systemd restarts the service). The panic hook has
                        // printed where.
                        tracing::error!("the core panicked; exiting to restart from its store");
                        std::process::exit(70);
                    };
                    if let Err(ClusterError::Store(e)) = &outcome {
                        tracing::error!("{e}");
                    }
                    // The caller may have gone (a closed connection): nothing to answer.
                    let _ = job.reply.send(outcome);
                }
            })?;
        Ok(Self { tx })
    }

    /// Executes `command` on the core and returns its outcome.
    pub async fn call(&self, command: Command) -> Result<Outcome, ClusterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || ClusterError::Internal("the control plane's core stopped".into());
        self.tx
            .send(Job { command, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
