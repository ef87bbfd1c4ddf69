//! A failed image pull as a person reads it: the error and its causes, the image named once,
//! then what to do — which depends on who pulled: the agent pulls a task's image anonymously
//! over HTTPS, `nodeagent ctr image pull` with the flags it was given.

use flotilla_runtime::image::registry::{self, Failure};
use flotilla_runtime::image::{ImageRef, ImageStoreError};

/// Who pulled, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Puller {
    /// The agent, for a task: anonymous, HTTPS, no flags to change that.
    Agent,
    /// `nodeagent ctr image pull`.
    Ctr {
        /// `--user` was given.
        credentials: bool,
        /// `--insecure` was given (plain HTTP).
        insecure: bool,
    },
}

/// A failed pull with the advice that fits its cause. It has no source: its message is the
/// whole chain already, so each cause is said once.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct PullFailed {
    text: String,
}

impl PullFailed {
    /// `error`, from pulling `image` as `by` did, with what to do about it when its cause is
    /// known.
    pub fn new(error: &ImageStoreError, image: &str, by: Puller) -> Self {
        let mut text = flotilla_api::errors::chain(error);
        if let Some(a) = advice(error, image, by) {
            text.push_str("; ");
            text.push_str(&a);
        }
        Self { text }
    }
}

/// What to do about `error`, from pulling `image` as `by` did.
pub fn advice(error: &ImageStoreError, image: &str, by: Puller) -> Option<String> {
    let failure = error.pull_failure()?;
    // The host the pull dialled, as the error names it.
    let host = ImageRef::parse(image)
        .map(|r| registry::host(&r.registry).to_string())
        .unwrap_or_else(|_| "the registry".into());
    const IMPORT: &str = "import the image on the node with `nodeagent ctr image import FILE`";
    const NO_SUCH_REPOSITORY: &str =
        "or check the image's name: some registries ask for credentials for a repository they \
         do not have";
    Some(match (failure, by) {
        (Failure::NotFound, _) => {
            format!("check the image's name and tag ({host} has no such manifest), or {IMPORT}")
        }
        (Failure::Unreachable, Puller::Agent) => format!(
            "check that this node resolves and reaches {host} over HTTPS (DNS, routes, \
             firewall, trust of its certificate); or pull the image on the node with `nodeagent \
             ctr image pull` (`--insecure` for a registry served over plain HTTP), or {IMPORT}"
        ),
        (
            Failure::Unreachable,
            Puller::Ctr {
                insecure: false, ..
            },
        ) => format!(
            "check that this node resolves and reaches {host} over HTTPS (DNS, routes, \
             firewall, trust of its certificate); `--insecure` for a registry served over plain \
             HTTP"
        ),
        (Failure::Unreachable, Puller::Ctr { insecure: true, .. }) => format!(
            "check that this node resolves and reaches {host} over plain HTTP (DNS, routes, \
             firewall)"
        ),
        (Failure::Unauthorized, Puller::Agent) => format!(
            "the agent pulls anonymously: pull the image on the node with `nodeagent ctr image \
             pull --user USER --password-stdin {image}` (a task uses the copy in the node's \
             store), {NO_SUCH_REPOSITORY}"
        ),
        (
            Failure::Unauthorized,
            Puller::Ctr {
                credentials: false, ..
            },
        ) => format!(
            "pass `--user USER:PASSWORD` (or `--user USER --password-stdin`), {NO_SUCH_REPOSITORY}"
        ),
        (
            Failure::Unauthorized,
            Puller::Ctr {
                credentials: true, ..
            },
        ) => format!("check the user and password given with `--user` for {host}"),
    })
}

/// Answers a prefetch ([`flotilla_api::ServerPush::Pull`]) on `send`: `Present` when the
/// node's store has the image, otherwise `Progress` about once a second while the agent pulls
/// it as it pulls a task's image (its mirrors, anonymously), then `Pulled` or `Failed` with the advice of [`PullFailed`].
/// A prefetch that arrives while a task's start pulls the same image waits for the same layers
/// (the store locks each layer), so nothing is fetched twice.
pub async fn serve(
    runner: std::sync::Arc<crate::runner::Runner>,
    req: flotilla_api::images::PullRequest,
    mut send: quinn::SendStream,
) {
    use flotilla_api::images::PullFrame;
    let images = runner.store().images().clone();
    let last = if let Ok(held) = images.get(&req.image) {
        PullFrame::Present {
            digest: held.digest.to_string(),
        }
    } else {
        tracing::info!(image = %req.image, "prefetching");
        let layers = std::sync::Arc::new(std::sync::Mutex::new(Layers::default()));
        let seen = layers.clone();
        let counted = runner.meters().pull_progress();
        let progress: flotilla_runtime::image::ProgressFn = std::sync::Arc::new(move |e| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).see(&e);
            counted(e);
        });
        let pull = runner.pull(&req.image, progress);
        tokio::pin!(pull);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = (0, 0);
        let pulled = loop {
            tokio::select! {
                r = &mut pull => break r,
                _ = tick.tick() => {
                    let now = layers.lock().unwrap_or_else(|p| p.into_inner()).bytes();
                    if now != sent && now.1 > 0 {
                        sent = now;
                        let frame = PullFrame::Progress { done_bytes: now.0, total_bytes: now.1 };
                        // The control plane went away: the pull goes on for the node's sake.
                        let _ = flotilla_api::write_frame(&mut send, &frame).await;
                    }
                }
            }
        };
        match pulled {
            Ok(record) => {
                tracing::info!(image = %req.image, digest = %record.digest, "prefetched");
                PullFrame::Pulled {
                    digest: record.digest.to_string(),
                    size_bytes: record.size(),
                }
            }
            Err(e) => {
                let failed = PullFailed::new(&e, &req.image, Puller::Agent);
                tracing::warn!(image = %req.image, "prefetch: {failed}");
                PullFrame::Failed {
                    reason: failed.to_string(),
                }
            }
        }
    };
    let _ = flotilla_api::write_frame(&mut send, &last).await;
    let _ = send.finish();
}

/// The layers of a pull as its progress events tell them: each one's size and the bytes held.
#[derive(Debug, Default)]
struct Layers(std::collections::BTreeMap<String, (u64, u64)>);

impl Layers {
    fn see(&mut self, e: &flotilla_runtime::image::ProgressEvent) {
        use flotilla_runtime::image::Phase;
        let held = match e.phase {
            Phase::Downloading(n) => n.min(e.size),
            Phase::Cached | Phase::Unpacking | Phase::Done => e.size,
        };
        self.0.insert(e.layer.to_string(), (e.size, held));
    }

    /// Bytes held, of the total.
    fn bytes(&self) -> (u64, u64) {
        self.0
            .values()
            .fold((0, 0), |(h, t), (size, held)| (h + held, t + size))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_counts_each_layer_once_at_its_latest() {
        use flotilla_runtime::image::{Phase, ProgressEvent};
        let digest = |c: char| -> flotilla_runtime::image::Digest {
            format!("sha256:{}", c.to_string().repeat(64))
                .parse()
                .expect("digest")
        };
        let mut l = super::Layers::default();
        for (layer, size, phase) in [
            ('a', 100, Phase::Cached),
            ('b', 1000, Phase::Downloading(10)),
            ('b', 1000, Phase::Downloading(600)),
            ('c', 50, Phase::Downloading(5000)),
        ] {
            l.see(&ProgressEvent {
                layer: digest(layer),
                size,
                phase,
            });
        }
        assert_eq!(l.bytes(), (100 + 600 + 50, 1150));
        l.see(&ProgressEvent {
            layer: digest('b'),
            size: 1000,
            phase: Phase::Done,
        });
        assert_eq!(l.bytes(), (1150, 1150));
    }

    use super::*;
    use flotilla_runtime::image::registry::RegistryError;
    use reqwest::StatusCode;

    const IMAGE: &str = "r.example:5000/team/app:1";

    fn registry(source: RegistryError) -> ImageStoreError {
        ImageStoreError::Registry {
            image: IMAGE.into(),
            source,
        }
    }

    fn status(path: &str, status: StatusCode) -> ImageStoreError {
        registry(RegistryError::Status {
            url: format!("https://r.example:5000/v2/team/app/{path}"),
            status,
            detail: String::new(),
        })
    }

    /// A transport error to a port nothing listens on.
    fn refused() -> ImageStoreError {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let image = format!("127.0.0.1:{port}/team/app:1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = flotilla_runtime::image::ImageStore::open(dir.path()).expect("store");
        rt.block_on(store.pull(
            &image,
            &flotilla_runtime::image::PullOptions::default(),
            std::sync::Arc::new(|_| {}),
        ))
        .expect_err("nothing listens")
    }

    #[test]
    fn a_pull_names_the_image_once_and_ends_with_what_to_do_about_its_cause() {
        let e = status("manifests/1", StatusCode::NOT_FOUND);
        let text = PullFailed::new(&e, IMAGE, Puller::Agent).to_string();
        assert_eq!(
            text,
            "pulling image 'r.example:5000/team/app:1': registry r.example:5000: answered 404 \
             Not Found; check the image's name and tag (r.example:5000 has no such manifest), \
             or import the image on the node with `nodeagent ctr image import FILE`"
        );

        let e = refused();
        let text = PullFailed::new(&e, IMAGE, Puller::Agent).to_string();
        assert_eq!(text.matches("team/app").count(), 1, "{text}");
        assert!(text.contains("Connection refused"), "{text}");
        assert!(
            text.contains("; check that this node resolves and reaches"),
            "{text}"
        );
        assert!(text.contains("`--insecure`"), "{text}");
        let plain = Puller::Ctr {
            credentials: false,
            insecure: true,
        };
        assert!(!advice(&e, IMAGE, plain)
            .expect("advice")
            .contains("--insecure"));

        let e = registry(RegistryError::NeedsCredentials {
            url: "https://r.example:5000/v2/team/app/manifests/1".into(),
        });
        let text = PullFailed::new(&e, IMAGE, Puller::Agent).to_string();
        assert!(
            text.starts_with(
                "pulling image 'r.example:5000/team/app:1': registry r.example:5000: \
                 authentication required; the agent pulls anonymously: pull the image on the \
                 node with `nodeagent ctr image pull --user USER --password-stdin \
                 r.example:5000/team/app:1`"
            ),
            "{text}"
        );
        let anonymous = Puller::Ctr {
            credentials: false,
            insecure: false,
        };
        assert!(advice(&e, IMAGE, anonymous)
            .expect("advice")
            .starts_with("pass `--user USER:PASSWORD`"));
        let e = status("manifests/1", StatusCode::FORBIDDEN);
        let with_user = Puller::Ctr {
            credentials: true,
            insecure: false,
        };
        assert_eq!(
            advice(&e, IMAGE, with_user).as_deref(),
            Some("check the user and password given with `--user` for r.example:5000")
        );

        // Docker Hub is named by the host a pull dials, as the error names it.
        let hub = ImageStoreError::Registry {
            image: "docker.io/library/nosuch:1".into(),
            source: RegistryError::NeedsCredentials {
                url: "https://registry-1.docker.io/v2/library/nosuch/manifests/1".into(),
            },
        };
        let with_user = Puller::Ctr {
            credentials: true,
            insecure: false,
        };
        assert_eq!(
            advice(&hub, "nosuch:1", with_user).as_deref(),
            Some("check the user and password given with `--user` for registry-1.docker.io")
        );

        // A cause nothing can be advised about is said alone.
        let e = status("blobs/sha256:ab", StatusCode::NOT_FOUND);
        assert_eq!(
            PullFailed::new(&e, IMAGE, Puller::Agent).to_string(),
            "pulling image 'r.example:5000/team/app:1': registry r.example:5000, blob \
             sha256:ab: answered 404 Not Found"
        );
    }
}
