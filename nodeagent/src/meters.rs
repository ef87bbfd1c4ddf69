//! What the agent measures of its own work as it goes — reconcile rounds, its session, image
//! pulls — for its metrics (`metrics.rs` encodes them at each scrape).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_runtime::image::{Phase, ProgressFn};
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the reconcile round buckets: a quiet round takes milliseconds, one
/// that starts containers up to seconds.
const ROUND_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What the agent measures of its own work as it goes (shared; cheap to update).
#[derive(Debug)]
pub struct Meters {
    pub(crate) rounds: Histogram,
    pub(crate) connected: AtomicBool,
    pub(crate) pulls_ok: AtomicU64,
    pub(crate) pulls_failed: AtomicU64,
    pub(crate) pull_bytes: Arc<AtomicU64>,
}

impl Default for Meters {
    fn default() -> Self {
        Self {
            rounds: Histogram::new(ROUND_BUCKETS),
            connected: AtomicBool::new(false),
            pulls_ok: AtomicU64::new(0),
            pulls_failed: AtomicU64::new(0),
            pull_bytes: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Meters {
    /// A reconcile round took `took`.
    pub fn round(&self, took: Duration) {
        self.rounds.observe(took.as_secs_f64());
    }

    /// The session with the control plane came up (`true`) or went (`false`).
    pub fn connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// A pull for a task ended, `ok` or not.
    pub fn pulled(&self, ok: bool) {
        let n = if ok {
            &self.pulls_ok
        } else {
            &self.pulls_failed
        };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// A pull's progress callback that counts the layer bytes it fetches: a layer's size once
    /// it is downloaded (it then unpacks); layers the store held report `Cached` instead.
    pub fn pull_progress(&self) -> ProgressFn {
        let bytes = self.pull_bytes.clone();
        Arc::new(move |e| {
            if e.phase == Phase::Unpacking {
                bytes.fetch_add(e.size, Ordering::Relaxed);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_layers_count_once_downloaded() {
        let meters = Meters::default();
        let progress = meters.pull_progress();
        let digest: flotilla_runtime::image::Digest = format!("sha256:{}", "a".repeat(64))
            .parse()
            .expect("digest");
        for phase in [
            Phase::Cached,
            Phase::Downloading(10),
            Phase::Unpacking,
            Phase::Done,
        ] {
            progress(flotilla_runtime::image::ProgressEvent {
                layer: digest.clone(),
                size: 1000,
                phase,
            });
        }
        assert_eq!(meters.pull_bytes.load(Ordering::Relaxed), 1000);
    }
}
