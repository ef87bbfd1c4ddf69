//! The control plane's content store over the operator API: `POST /v1/images` (an image
//! archive, streamed into the store — see `content.rs`) and `DELETE /v1/images/{name}` (the
//! reference removed by the core, then the blobs no image references). Listing and inspecting
//! are plain core commands (`Operator::ListImages`, `Operator::GetImage`).

use flotilla_api::images::{ImagePullRequest, ImageRemoved, ImageSource};
use flotilla_oci::manifest::Platform;
use flotilla_oci::registry::Failure;
use hyper::body::Incoming;
use hyper::StatusCode;
use orchestratord::cluster::{Command, Operator, Reply as CoreReply};

use super::{error, json, query_pairs, refusal, respond, Reply};
use crate::content::{PushError, MAX_PUSH_BYTES};
use crate::plane::Plane;
use crate::pull::{PullAsk, PullError};

/// `POST /v1/images?name=REF&platform=OS/ARCH[/VARIANT]`: the body is an OCI image layout
/// archive (tar, optionally gzip or zstd compressed) or a `docker save` archive, at most
/// [`MAX_PUSH_BYTES`]. 201 with the images stored; 400 naming what is wrong with the archive
/// (an entry leaving it, bad JSON, a blob whose content is not its digest …), 413 past the
/// limit.
pub async fn push(body: Incoming, query: Option<&str>, plane: &Plane) -> Reply {
    let usage = "name=REF or platform=OS/ARCH[/VARIANT]";
    let mut name = None;
    let mut platform = None;
    let pairs = match query_pairs(query, usage) {
        Ok(p) => p,
        Err((status, why)) => return error(status, why),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "name" if !v.is_empty() => name = Some(v),
            "platform" => match v.parse::<Platform>() {
                Ok(p) => platform = Some(p),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("platform: {e}")),
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("query '{k}': {usage}")),
        }
    }
    let content = plane.content.clone();
    // The upload touches no blob: a removal need not wait for a slow link.
    let archive = match content.receive(body, MAX_PUSH_BYTES).await {
        Ok(a) => a,
        Err(e) => return push_refused(&e),
    };
    // Once uploaded, the archive is stored on a task of its own: a client that leaves (its
    // request dropped) would otherwise release the gate while the blocking ingest goes on
    // writing blobs, and skip the sweep of what it stored.
    let plane = plane.clone();
    tokio::spawn(async move { store(archive, name, platform, &plane).await })
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("push: {e}")))
}

/// Stores the uploaded `archive` (`push`'s second half): blobs under the gate, names
/// committed, unreferenced blobs swept.
async fn store(
    archive: tempfile::TempPath,
    name: Option<String>,
    platform: Option<Platform>,
    plane: &Plane,
) -> Reply {
    let content = plane.content.clone();
    // Held until the names are committed: no removal deletes a blob this push references.
    let gate = content.gate.read().await;
    let ingested = {
        let store = content.clone();
        tokio::task::spawn_blocking(move || {
            let r = store.ingest(&archive, name.as_deref(), platform.as_ref());
            drop(archive);
            r
        })
        .await
    };
    let mut images = match ingested {
        Ok(Ok(images)) => images,
        Ok(Err(e)) => {
            // The blobs it stored before the fault are referenced by nothing.
            drop(gate);
            plane.sweep_content().await;
            return push_refused(&e);
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("push: {e}")),
    };
    for i in &mut images {
        i.source = Some(ImageSource::Archive);
        tracing::info!(image = %i.name, digest = %i.manifest.digest, "image pushed");
    }
    let answer = match plane
        .run(Command::Operator(Operator::PutImages(images)))
        .await
    {
        Ok(reply) => respond(reply),
        Err(e) => refusal(&e),
    };
    drop(gate);
    // An image the push replaced may leave blobs no image references: they go once no
    // push is under way, after the answer.
    let plane = plane.clone();
    tokio::spawn(async move { plane.sweep_content().await });
    answer
}

/// `POST /v1/images/pull`: the control plane pulls the image (`pull.rs`); 201 with the image
/// stored (as a one-element list, as a push answers); 400 naming the field or what is wrong with
/// what the registry sent, 404 when the registry has no such image, 502 when no source could
/// give it (each mirror and the registry named with what it answered).
pub async fn pull(req: ImagePullRequest, plane: &Plane) -> Reply {
    let problems = req.problems();
    if !problems.is_empty() {
        return error(StatusCode::BAD_REQUEST, problems.join("; "));
    }
    let platform = match req.platform.as_deref().map(str::parse::<Platform>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("platform: {e}")),
    };
    let ask = PullAsk {
        reference: req.image,
        require_platform: platform.is_some(),
        platform,
        insecure: req.insecure,
    };
    // On a task of its own, as a push's ingest: a client that leaves does not cut the pull
    // between its blobs and its record (the layout deleted under the ingest, the gate
    // released, no sweep).
    let pulled = {
        let plane = plane.clone();
        tokio::spawn(async move { crate::pull::pull(&plane, &ask, None).await }).await
    };
    let pulled = match pulled {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("pull: {e}")),
    };
    match pulled {
        Ok(image) => json(StatusCode::CREATED, &vec![image]),
        Err(e) => {
            let status = match &e {
                PullError::Reference(_) => StatusCode::BAD_REQUEST,
                // Only a node's pull-through keeps a held image of another platform.
                PullError::OtherPlatform { .. } => StatusCode::CONFLICT,
                PullError::Registry { failure, .. } => match failure {
                    Some(Failure::NotFound) => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_GATEWAY,
                },
                PullError::Store { source, .. } if !source.is_internal() => StatusCode::BAD_REQUEST,
                PullError::Store { .. } | PullError::Record { .. } => {
                    tracing::error!("image pull: {e}");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, e.to_string())
        }
    }
}

fn push_refused(e: &PushError) -> Reply {
    let status = match e {
        PushError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        e if e.is_internal() => {
            tracing::error!("image push: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

/// `DELETE /v1/images/{name}`: the core removes the reference and names the blobs no other
/// image has; they are deleted before the answer, with no push in between.
pub async fn remove(name: String, plane: &Plane) -> Reply {
    let content = plane.content.clone();
    let _gate = content.gate.write().await;
    let removed: ImageRemoved = match plane
        .run(Command::Operator(Operator::RemoveImage(name)))
        .await
    {
        Ok(CoreReply::ImageRemoved(r)) => r,
        Ok(other) => return respond(other),
        Err(e) => return refusal(&e),
    };
    let blobs = removed.blobs_removed.clone();
    let store = content.clone();
    let failed = tokio::task::spawn_blocking(move || store.remove(&blobs))
        .await
        .unwrap_or_else(|e| vec![e.to_string()]);
    for f in &failed {
        // The reference is gone; the start-up sweep removes what is left.
        tracing::warn!(image = %removed.name, "removing blob {f}");
    }
    json(StatusCode::OK, &removed)
}
