//! The metrics listener's adapter: a scrape asks the core for its read-only
//! [`Command::Metrics`] and answers it encoded by [`crate::metrics`]; `--metrics-listen` serves
//! it in plain HTTP at `GET /metrics` only (`flotilla_metrics::serve`), and the operator API at
//! `GET /v1/metrics`.

use std::time::Duration;

use flotilla_metrics::Scrape;
use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::metrics;
use crate::plane::Plane;
use orchestratord::cluster::{Command, Reply};

/// How long a scrape waits for the core before answering 503.
const CORE_TIMEOUT: Duration = Duration::from_secs(10);

/// A scrape: the core's snapshot and the API's histograms, in the format `accept` asks for;
/// or why not (the core did not answer), which each listener answers in its own way.
pub async fn scrape(plane: &Plane, accept: Option<&str>) -> Scrape {
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
    Ok(metrics::encode(
        snapshot,
        &plane.metrics,
        flotilla_metrics::wants_openmetrics(accept),
    ))
}

/// Serves `GET /metrics` in plain HTTP on `listener` until the process ends.
pub async fn serve(listener: TcpListener, plane: Plane) {
    flotilla_metrics::serve(listener, move |accept| {
        let plane = plane.clone();
        async move { scrape(&plane, accept.as_deref()).await }
    })
    .await
}
