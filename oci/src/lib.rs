//! `flotilla-oci`: the OCI image formats Flotilla reads, with no I/O beyond reading a file (and, with the `registry` feature, pulling from a registry) —
//! shared by the node's image store (`flotilla-runtime`) and the control plane's content store
//! (`orchestratord`), which must not carry the container runtime.
//!
//! `auth` (what a registry's answers carry besides documents: `WWW-Authenticate`
//! challenges, token answers, `Content-Range`), `digest` (strict `sha256:` digests, a hashing
//! reader), `manifest` (OCI and Docker v2 schema 2 documents, platform matching), `reference`
//! (image references with Docker's defaulting rules) and `layout` (OCI image layouts, OCI
//! archives and docker-save archives, staged safely); with the `registry` feature, `registry`
//! (a client of the OCI distribution API: manifests and blobs, auth, mirrors, resumable
//! downloads).

#![forbid(unsafe_code)]

pub mod auth;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod reference;
#[cfg(feature = "registry")]
pub mod registry;

pub use digest::Digest;
pub use reference::{ImageRef, ReferenceError};
