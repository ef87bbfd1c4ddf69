//! `flotilla image`: images in the control plane's content store (`push`, `ls`, `inspect`,
//! `rm`), and `prefetch`: an image pulled onto nodes ahead of a deployment (at night, over a
//! site's slow link), so that the deployment's tasks start without waiting for a pull.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use flotilla_api::images::{
    ImagePullRequest, PrefetchRequest, PrefetchState, PrefetchUpdate, StoredImage,
};
use flotilla_client::Client;

use crate::{cell, print, print_document, table, when, Output};

/// `flotilla image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Store images in the control plane's content store, from an archive or a registry.
    /// FILE: an OCI image layout as a tar (`skopeo copy … oci-archive:FILE`, plain, gzip or
    /// zstd) or a `docker save` archive, at most 4 GiB, sent as it is read. REF (an argument
    /// that is no file here and does not look like a path): the control plane pulls the image
    /// from its registry (or its `registry_mirrors`). Every blob is checked against its digest;
    /// blobs are shared between images. Prints the images stored.
    Push {
        /// The archive, or an image reference (`busybox`, `registry.example/app:1.4`).
        #[arg(value_name = "FILE|REF")]
        source: String,
        /// Name the image (an archive with one image) instead of by the archive's annotations.
        #[arg(long, value_name = "REF")]
        name: Option<String>,
        /// From an image index, store the manifest for this platform (`linux/arm64`)
        /// [default: the control plane's].
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// With REF: reach the registry over plain HTTP instead of HTTPS.
        #[arg(long)]
        insecure: bool,
    },
    /// List the images of the control plane's content store.
    #[command(alias = "list")]
    Ls,
    /// Show an image of the content store (its manifest, config and layers) as JSON.
    Inspect {
        /// The image reference (`busybox` is docker.io/library/busybox:latest).
        image: String,
    },
    /// Remove images from the content store, and the blobs no other image has.
    #[command(alias = "remove")]
    Rm {
        /// Image references.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Pull IMAGE onto the nodes now, each as it pulls a task's image (its registry mirrors,
    /// anonymously), printing each node's progress; a node that has it already fetches nothing.
    /// Exits 1 when a node failed or was not connected (run it again for those: the others
    /// answer `present` at once).
    Prefetch {
        /// The image reference, as task definitions name it.
        image: String,
        /// Only nodes matching this memberOf expression, e.g. "attribute:site == store-12"
        /// (repeatable: all must match).
        #[arg(long = "constraint", value_name = "EXPRESSION")]
        constraints: Vec<String>,
        /// Only this node (repeatable) [default: every node].
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
    },
}

/// Runs `flotilla image …`.
pub async fn run(api: &Client, cmd: ImageCommand, output: Output) -> Result<()> {
    match cmd {
        ImageCommand::Push {
            source,
            name,
            platform,
            insecure,
        } => {
            let pushed = match PushSource::of(&source) {
                PushSource::File(file) => {
                    if insecure {
                        bail!("--insecure is for a reference the control plane pulls; {source} is a file");
                    }
                    api.push_image(&file, name.as_deref(), platform.as_deref())
                        .await
                        .with_context(|| format!("pushing {}", file.display()))?
                }
                PushSource::Reference(image) => {
                    if name.is_some() {
                        bail!(
                            "--name names an archive's image; a reference ({image}) names itself"
                        );
                    }
                    crate::errln!("the control plane is pulling {image} …");
                    let req = ImagePullRequest {
                        image,
                        platform,
                        insecure,
                    };
                    let pulled = api.pull_image(&req).await?;
                    for i in &pulled {
                        if let Some(source) = &i.source {
                            crate::errln!("{}: pulled from {source}", i.name);
                        }
                    }
                    pulled
                }
            };
            print(output, &pushed, || list(&pushed))
        }
        ImageCommand::Ls => {
            let images = api.images().await?;
            print(output, &images, || list(&images))
        }
        ImageCommand::Inspect { image } => print_document(output, &api.image(&image).await?),
        ImageCommand::Rm { images } => {
            crate::each(&images, "image", "not removed", async |image| {
                let removed = api.remove_image(image).await?;
                crate::outln!(
                    "{} removed ({} blobs deleted)",
                    removed.name,
                    removed.blobs_removed.len()
                );
                Ok(())
            })
            .await
            .1
        }
        ImageCommand::Prefetch {
            image,
            constraints,
            nodes,
        } => {
            let req = PrefetchRequest {
                image,
                constraints,
                nodes,
            };
            prefetch(api, &req, output).await
        }
    }
}

/// What `image push` sends: an archive, or a reference for the control plane to pull.
#[derive(Debug, PartialEq, Eq)]
enum PushSource {
    File(PathBuf),
    Reference(String),
}

impl PushSource {
    /// A file when it is one here, or when it looks like a path (it starts with `/`, `./`,
    /// `../` or `~`, or ends as an archive's name does) — a missing archive is named as a
    /// missing file, never pulled as an image of that name; otherwise a reference.
    fn of(arg: &str) -> Self {
        let path = std::path::Path::new(arg);
        let looks_like_path = ["/", "./", "../", "~"].iter().any(|p| arg.starts_with(p))
            || [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"]
                .iter()
                .any(|e| arg.ends_with(e));
        if looks_like_path || path.symlink_metadata().is_ok() {
            Self::File(path.to_path_buf())
        } else {
            Self::Reference(arg.to_string())
        }
    }
}

/// The images as a table: name, manifest digest, platform, layers, size, when pushed.
fn list(images: &[StoredImage]) {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                cell(flotilla_oci::ImageRef::familiar(&i.name)),
                cell(short_digest(&i.manifest.digest)),
                cell(&i.platform),
                i.layers.len().to_string(),
                flotilla_api::human_bytes(i.size()),
                when(i.pushed_at),
            ]
        })
        .collect();
    table(
        &["NAME", "DIGEST", "PLATFORM", "LAYERS", "SIZE", "PUSHED"],
        &rows,
    );
}

/// The first 12 hex digits of a `sha256:` digest, as `docker images` and `nodeagent ctr image
/// ls` show an image's.
fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

async fn prefetch(api: &Client, req: &PrefetchRequest, output: Output) -> Result<()> {
    let mut stream = api.prefetch(req).await?;
    let mut tally = Tally::default();
    while let Some(u) = stream.next().await? {
        match output {
            Output::Json | Output::Yaml => crate::outln!("{}", serde_json::to_string(&u)?),
            Output::Table | Output::Wide => crate::outln!("{}", said(&u)),
        }
        tally.see(&u);
    }
    if matches!(output, Output::Table | Output::Wide) {
        crate::outln!("{}", tally.summary(&req.image));
    }
    if tally.failed + tally.unreachable > 0 {
        bail!(
            "{} of {} did not get {}",
            flotilla_api::count(tally.failed + tally.unreachable, "node"),
            tally.total(),
            req.image
        );
    }
    Ok(())
}

/// One update as a line for people.
fn said(u: &PrefetchUpdate) -> String {
    let reason = u.reason.as_deref().unwrap_or("no reason given");
    match u.state {
        PrefetchState::Pulling => match (u.done_bytes, u.total_bytes) {
            (Some(done), Some(total)) => {
                format!(
                    "{}: pulling, {} of {}",
                    u.node,
                    flotilla_api::human_bytes(done),
                    flotilla_api::human_bytes(total)
                )
            }
            _ => format!("{}: pulling", u.node),
        },
        PrefetchState::Present => format!(
            "{}: present ({}), nothing fetched",
            u.node,
            u.digest.as_deref().unwrap_or("?")
        ),
        PrefetchState::Pulled => format!(
            "{}: pulled {} ({})",
            u.node,
            u.digest.as_deref().unwrap_or("?"),
            flotilla_api::human_bytes(u.done_bytes.unwrap_or(0))
        ),
        PrefetchState::Failed => format!("{}: failed: {reason}", u.node),
        PrefetchState::Unreachable => format!("{}: unreachable: {reason}", u.node),
    }
}

/// Final states counted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    present: usize,
    pulled: usize,
    failed: usize,
    unreachable: usize,
}

impl Tally {
    fn see(&mut self, u: &PrefetchUpdate) {
        match u.state {
            PrefetchState::Pulling => {}
            PrefetchState::Present => self.present += 1,
            PrefetchState::Pulled => self.pulled += 1,
            PrefetchState::Failed => self.failed += 1,
            PrefetchState::Unreachable => self.unreachable += 1,
        }
    }

    fn total(&self) -> usize {
        self.present + self.pulled + self.failed + self.unreachable
    }

    fn summary(&self, image: &str) -> String {
        let mut text = format!(
            "{} of {} {} {image} ({} pulled, {} had it)",
            self.present + self.pulled,
            flotilla_api::count(self.total(), "node"),
            if self.present + self.pulled == 1 {
                "holds"
            } else {
                "hold"
            },
            self.pulled,
            self.present
        );
        if self.failed > 0 {
            text.push_str(&format!("; {} failed", self.failed));
        }
        if self.unreachable > 0 {
            text.push_str(&format!("; {} unreachable", self.unreachable));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(node: &str, state: PrefetchState) -> PrefetchUpdate {
        PrefetchUpdate {
            node: node.into(),
            state,
            done_bytes: None,
            total_bytes: None,
            digest: None,
            reason: None,
        }
    }

    #[test]
    fn lines_and_summary_say_what_each_node_did() {
        let mut pulling = u("n1", PrefetchState::Pulling);
        pulling.done_bytes = Some(3 << 20);
        pulling.total_bytes = Some(12 << 20);
        assert_eq!(said(&pulling), "n1: pulling, 3.0 MiB of 12.0 MiB");
        let mut gone = u("n2", PrefetchState::Unreachable);
        gone.reason = Some("not connected".into());
        assert_eq!(said(&gone), "n2: unreachable: not connected");
        let mut t = Tally::default();
        for s in [
            PrefetchState::Pulling,
            PrefetchState::Pulled,
            PrefetchState::Present,
            PrefetchState::Unreachable,
        ] {
            t.see(&u("n", s));
        }
        assert_eq!(
            t.summary("app:1"),
            "2 of 3 nodes hold app:1 (1 pulled, 1 had it); 1 unreachable"
        );
    }
}
