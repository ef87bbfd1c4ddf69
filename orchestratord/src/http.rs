//! HTTP/1.1 server settings shared by the operator API and the metrics listener.

use std::time::Duration;

/// How long a client has to send a request's head, also the next one on a kept-alive
/// connection: a connection that sends nothing (no certificate is needed to open one) does not
/// hold its socket and task for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/1.1 server of every connection (operator API, metrics listener), heads read
/// within `header_timeout`.
pub fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}
