//! Prometheus exposition shared by the control plane (`orchestratord`) and the node agent
//! (`nodeagent`): the two text formats, chosen by the scraper's `Accept` header, helpers to
//! encode a family of samples computed at scrape time, and the plain-HTTP listener that serves
//! `GET /metrics` (`metrics_listen` of both daemons); `dashboard` checks the fleet's Grafana
//! dashboard against what they emit.
//!
//! Encoding is `prometheus-client`'s; formats: OpenMetrics 1.0
//! (<https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md>)
//! when asked for, else the Prometheus text format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>).

#![forbid(unsafe_code)]

pub mod dashboard;

use std::future::Future;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
pub use hyper::StatusCode;
use hyper::{Method, Request, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The OpenMetrics text format's content type (what Prometheus asks for first).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client has to send a request's head, also the next one on a kept-alive
/// connection: a connection that sends nothing does not hold its socket and task for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a client's `Accept` header asks for OpenMetrics (Prometheus does); otherwise the
/// Prometheus text format 0.0.4 is served.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.unwrap_or_default().split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// A gauge of a count (clamped to `i64::MAX`).
pub fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Encodes one metric family: `name` with `help`, and a sample per label set.
pub fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `registry` encoded: OpenMetrics or the Prometheus text format. The content type and the
/// text.
pub fn encode(registry: &Registry, openmetrics: bool) -> (&'static str, String) {
    let mut out = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
    };
    if let Err(e) = encoded {
        // Writing into a String fails only if an encoder refuses a value.
        tracing::error!("encoding the metrics: {e}");
    }
    let kind = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (kind, out)
}

/// A scrape's outcome: the content type and the text, or the status to answer and why.
pub type Scrape = Result<(&'static str, String), (StatusCode, String)>;

/// The HTTP/1.1 server of a connection, request heads read within `header_timeout`.
pub fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap_or_default()
}

/// The answer to a scrape: 200 with the text, or the failure's status with why.
pub fn response(scrape: Scrape) -> Response<Full<Bytes>> {
    match scrape {
        Ok((kind, text)) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(text)))
            .unwrap_or_default(),
        Err((status, why)) => plain(status, &format!("{why}\n")),
    }
}

/// One request on a metrics listener: `GET /metrics` answered by `scrape` (given the
/// `Accept` header), 404 elsewhere, 405 for another method.
async fn handle<F, Fut>(req: Request<Incoming>, scrape: F) -> Response<Full<Bytes>>
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: Future<Output = Scrape>,
{
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        r.headers_mut()
            .insert("allow", hyper::header::HeaderValue::from_static("GET"));
        return r;
    }
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    response(scrape(accept).await)
}

/// Serves `GET /metrics` in plain HTTP on `listener` until the process ends, each connection
/// on its own task, request heads read within [`HEADER_TIMEOUT`]; `scrape` makes each answer.
pub async fn serve<F, Fut>(listener: TcpListener, scrape: F)
where
    F: Fn(Option<String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Scrape> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, scrape).await) }
            });
            if let Err(e) = http1(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}
