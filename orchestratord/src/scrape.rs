//! The metrics listener's adapter: a scrape asks the core for its read-only
//! [`Command::Metrics`] and answers it encoded by [`crate::metrics`]; `--metrics-listen` serves
//! it in plain HTTP at `GET /metrics` only, and the operator API at `GET /v1/metrics`.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics;
use crate::plane::Plane;
use orchestratord::cluster::{Command, Reply};

type Reply_ = Response<Full<Bytes>>;

/// How long a scrape waits for the core before answering 503.
const CORE_TIMEOUT: Duration = Duration::from_secs(10);

fn plain(status: StatusCode, text: &str) -> Reply_ {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap_or_default()
}

/// A scrape: the core's snapshot and the API's histograms, in the format `accept` asks for;
/// or why not (the core did not answer), which each listener answers in its own way.
pub async fn scrape(plane: &Plane, accept: Option<&str>) -> Result<Reply_, (StatusCode, String)> {
    let answer = tokio::time::timeout(CORE_TIMEOUT, plane.core.call(Command::Metrics)).await;
    let snapshot = match answer {
        Ok(Ok(o)) => match o.reply {
            Reply::Metrics(s) => *s,
            other => {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer {other:?}"),
                ))
            }
        },
        Ok(Err(e)) => return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(_) => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the control plane's core did not answer in time".into(),
            ))
        }
    };
    let (kind, text) =
        metrics::encode(snapshot, &plane.metrics, metrics::wants_openmetrics(accept));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default())
}

/// One request on the metrics listener: `GET /metrics`, 404 elsewhere, 405 for another method.
async fn handle(req: Request<Incoming>, plane: &Plane) -> Reply_ {
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
    scrape(plane, accept.as_deref())
        .await
        .unwrap_or_else(|(status, why)| plain(status, &format!("{why}\n")))
}

/// Serves `GET /metrics` in plain HTTP on `listener` until the process ends: each connection
/// on its own task, request heads read within the operator API's header timeout.
pub async fn serve(listener: TcpListener, plane: Plane) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let plane = plane.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let plane = plane.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &plane).await) }
            });
            if let Err(e) = crate::http::http1(crate::http::HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}
