//! HTTP/1.1 server settings shared by the operator API and the metrics listener: the metrics
//! crate's, so both listeners read request heads the same way.

pub use flotilla_metrics::{http1, HEADER_TIMEOUT};
