//! Prefetches on the node: a [`flotilla_api::ServerPush::Pull`] answered with the agent's own
//! pull (`Runner::pull`) and its progress, frame after frame.

use crate::pull::{PullFailed, Puller};

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
}
