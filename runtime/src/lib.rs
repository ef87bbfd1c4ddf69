//! Node-side runtime of Flotilla: the content-addressed image store (registry pull, OCI and
//! docker-save import, safe layer unpack) and containers run through youki's libcontainer
//! (one shim per container, cgroups, hardening, volumes, logs). Only this crate talks to the
//! kernel.

pub mod container;
pub mod image;
pub mod network;
pub mod preflight;

pub use container::{ContainerError, ContainerStore};

/// `e` and its causes on one line, each cause once (a cause its error's message already ends
/// with is left out): what the runtime says of a library's error, whose own message may leave
/// the cause out (oci-spec's `io operation failed`, libcontainer's `failed to write container
/// state file …`, both without the `No space left on device` behind them).
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
pub use image::{ImageStore, ImageStoreError};
