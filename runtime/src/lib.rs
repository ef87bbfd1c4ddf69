//! Node-side runtime of Flotilla: the content-addressed image store (registry pull, OCI and
//! docker-save import, safe layer unpack) and containers run through youki's libcontainer
//! (one shim per container, cgroups, hardening, volumes, logs). Only this crate talks to the
//! kernel.

pub mod container;
pub mod image;
pub mod network;
pub mod preflight;

pub use container::{ContainerError, ContainerStore};
pub use image::{ImageStore, ImageStoreError};
