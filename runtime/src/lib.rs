//! Node-side runtime of Flotilla: the content-addressed image store (registry pull, OCI and
//! docker-save import, safe layer unpack). Containers arrive in a later module.

pub mod image;

pub use image::{ImageStore, ImageStoreError};
