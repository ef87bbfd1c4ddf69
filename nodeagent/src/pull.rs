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

    /// As [`PullFailed::new`] for a task's image the agent failed to pull, told which image
    /// of the node's store (`stored`, canonical names) it likely meant ([`stored_near`]):
    /// a mistyped name is pulled from a registry first, whose error alone (a name it cannot
    /// resolve offline, a repository it has not) does not say that the name is wrong.
    /// Only for a failure a wrong name can cause (the registry has no such manifest, asks for
    /// credentials, as Docker Hub does for a repository it has not, or cannot be reached): not
    /// for an image that was found (of another platform, damaged, too big for the disk).
    pub fn for_task(error: &ImageStoreError, image: &str, stored: &[String]) -> Self {
        let mut failed = Self::new(error, image, Puller::Agent);
        let near = error
            .pull_failure()
            .and_then(|_| stored_near(image, stored));
        if let Some(near) = near {
            failed.text.push_str(&format!(
                "; did you mean '{}', which this node's store holds?",
                ImageRef::familiar(&near)
            ));
        }
        failed
    }
}

/// The image of `stored` (canonical names) that `image`, which none of them is, most likely
/// meant: one of the same repository under another tag, else the one nearest to a name
/// `image` is looked up under (its canonical and local names, [`ImageRef::lookup_names`]) as
/// people write them ([`ImageRef::familiar`]), by at most two edits (Damerau–Levenshtein: a
/// letter missing, added, changed or two swapped) and at most one in four letters of `image`
/// as written. None for a reference by digest, which names its one image (no tag of it is the
/// same image), nor for a name longer than [`MAX_NEAR_NAME`] bytes.
pub fn stored_near(image: &str, stored: &[String]) -> Option<String> {
    if image.contains('@') || image.len() > MAX_NEAR_NAME {
        return None;
    }
    let wanted = ImageRef::lookup_names(image).ok()?;
    // A canonical name's repository: all before its tag (a `:` after the last `/`).
    fn repository(name: &str) -> &str {
        match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => name,
        }
    }
    if let Some(same) = stored.iter().find(|s| {
        wanted
            .iter()
            .any(|w| repository(w) == repository(s) && w != *s)
    }) {
        return Some(same.clone());
    }
    stored
        .iter()
        .filter(|s| s.len() <= MAX_NEAR_NAME)
        .filter_map(|s| {
            let theirs = ImageRef::familiar(s);
            let d = wanted
                .iter()
                .map(|w| ImageRef::familiar(w))
                // Two edits change the length by two at most: the rest are not measured.
                .filter(|w| w.len().abs_diff(theirs.len()) <= 2)
                .map(|w| strsim::damerau_levenshtein(w, theirs))
                .filter(|&d| (1..=2).contains(&d) && d * 4 <= image.len())
                .min()?;
            Some((d, s))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| s.clone())
}

/// The longest image name [`stored_near`] compares (a file name's limit): matching costs the
/// product of two names' lengths.
pub const MAX_NEAR_NAME: usize = 255;

/// What to do about `error`, from pulling `image` as `by` did.
pub fn advice(error: &ImageStoreError, image: &str, by: Puller) -> Option<String> {
    if let ImageStoreError::OtherPlatform { platform, node, .. } = error {
        return Some(match by {
            Puller::Agent => format!(
                "push an image for {node} too (an index holds one image per platform), or \
                 place the task on nodes of {platform} (a memberOf constraint on an attribute \
                 they carry)"
            ),
            Puller::Ctr { .. } => format!("pass `--platform {platform}` to store it anyway"),
        });
    }
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

#[cfg(test)]
mod tests {
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
    fn a_task_image_missing_from_the_store_is_matched_to_what_the_store_holds() {
        let stored: Vec<String> = [
            "docker.io/library/busybox:latest",
            "localhost/web:v1",
            "r.example:5000/team/app:2",
        ]
        .map(String::from)
        .to_vec();
        let near = |image: &str| stored_near(image, &stored);
        // A letter missing, swapped, added; a local image's short name mistyped.
        assert_eq!(
            near("busybx").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            near("bsuybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(near("webb:v1").as_deref(), Some("localhost/web:v1"));
        // The same repository under another tag.
        assert_eq!(near(IMAGE).as_deref(), Some("r.example:5000/team/app:2"));
        assert_eq!(
            near("busybox:1.36").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        // Nothing close, or not a name at all; short names two edits apart are not close.
        assert_eq!(near("nginx"), None);
        assert_eq!(near("Not A Name"), None);
        assert_eq!(near("wxy:v1"), None);
        // A digest names its one image: no tag of its repository is it.
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(near(&pinned), None);
        // A long name is not measured.
        assert_eq!(near(&format!("busybox{}", "x".repeat(300))), None);
        // The advice goes after the pull's own, the name as people write it.
        let e = ImageStoreError::Registry {
            image: "docker.io/library/busybx:latest".into(),
            source: RegistryError::Status {
                url: "https://registry-1.docker.io/v2/library/busybx/manifests/latest".into(),
                status: StatusCode::NOT_FOUND,
                detail: String::new(),
            },
        };
        let text = PullFailed::for_task(&e, "busybx", &stored).to_string();
        assert!(
            text.ends_with("; did you mean 'busybox:latest', which this node's store holds?"),
            "{text}"
        );
        assert_eq!(
            PullFailed::for_task(&e, "nginx", &stored).to_string(),
            PullFailed::new(&e, "nginx", Puller::Agent).to_string()
        );
        // An image that was found is not taken for a wrong name.
        let found = ImageStoreError::OtherPlatform {
            image: "docker.io/library/busybx:latest".into(),
            platform: "linux/arm64".into(),
            node: "linux/amd64".into(),
        };
        assert!(!PullFailed::for_task(&found, "busybx", &stored)
            .to_string()
            .contains("did you mean"));
    }

    #[test]
    fn an_image_of_another_platform_is_advised_on_as_its_puller_can_act() {
        let e = ImageStoreError::OtherPlatform {
            image: IMAGE.into(),
            platform: "linux/arm64".into(),
            node: "linux/amd64".into(),
        };
        // A task's pull: nothing a node's flag can change.
        assert_eq!(
            PullFailed::new(&e, IMAGE, Puller::Agent).to_string(),
            "image 'r.example:5000/team/app:1' is for linux/arm64, this node is linux/amd64; \
             push an image for linux/amd64 too (an index holds one image per platform), or \
             place the task on nodes of linux/arm64 (a memberOf constraint on an attribute \
             they carry)"
        );
        let ctr = Puller::Ctr {
            credentials: false,
            insecure: false,
        };
        assert!(PullFailed::new(&e, IMAGE, ctr)
            .to_string()
            .ends_with("; pass `--platform linux/arm64` to store it anyway"));
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
