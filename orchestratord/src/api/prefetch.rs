//! `POST /v1/images/prefetch`: the nodes a request selects each asked over its session to pull
//! the image ([`ServerPush::Pull`]), their progress merged into one newline-delimited JSON
//! stream of [`PrefetchUpdate`]s, in the order it happens.

use std::collections::BTreeMap;

use flotilla_api::images::{
    PrefetchRequest, PrefetchState, PrefetchUpdate, PullFrame, PullRequest,
};
use flotilla_api::ops::NodeInfo;
use flotilla_api::{read_frame, write_frame, ServerPush};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use orchestratord::cluster::{Command, Operator, Reply as CoreReply};

use super::{error, refusal, respond, Body, ChannelBody};
use crate::plane::Plane;

/// Answers a prefetch: 400 naming the field or constraint at fault, 404 naming a node that is
/// not in the cluster or saying that no node matches; otherwise 200 and the stream, which ends
/// once every node has a final state. A node not connected is `unreachable` at once; one whose
/// session fails mid-way, `unreachable` with why. The pulls go on on the nodes when the reader
/// goes away.
pub async fn prefetch(req: PrefetchRequest, plane: &Plane) -> Response<Body> {
    let boxed = |r: super::Reply| r.map(BodyExt::boxed);
    let problems = req.problems();
    if !problems.is_empty() {
        return boxed(error(StatusCode::BAD_REQUEST, problems.join("; ")));
    }
    let mut constraints = Vec::new();
    for (i, c) in req.constraints.iter().enumerate() {
        match flotilla_scheduler::expr::parse(c) {
            Ok(e) => constraints.push(e),
            Err(e) => {
                return boxed(error(
                    StatusCode::BAD_REQUEST,
                    format!("constraints[{i}] ({c}): {e}"),
                ))
            }
        }
    }
    let all = Operator::ListNodes(Default::default());
    let nodes = match plane.run(Command::Operator(all)).await {
        Ok(CoreReply::Nodes(n)) => n.items,
        Ok(other) => return boxed(respond(other)),
        Err(e) => return boxed(refusal(&e)),
    };
    let targets = match select(nodes, &req.nodes, &constraints) {
        Ok(t) => t,
        Err(why) => return boxed(error(StatusCode::NOT_FOUND, why)),
    };
    tracing::info!(image = %req.image, nodes = targets.len(), "prefetch");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut unreachable = Vec::new();
    for node in targets {
        let Some(conn) = plane.sessions.get(&node) else {
            unreachable.push(line(&update(
                &node,
                PrefetchState::Unreachable,
                Some("not connected".into()),
            )));
            continue;
        };
        let (tx, image) = (tx.clone(), req.image.clone());
        // Granted before the node is asked, so its first request finds it; ended with this
        // node's part of the prefetch, however it ends.
        let grant = plane.prefetches.grant(&node, &req.image);
        tokio::spawn(async move {
            let _grant = grant;
            let _ = tx
                .send(line(&update(&node, PrefetchState::Pulling, None)))
                .await;
            let mut recv = match ask(&conn, image).await {
                Ok(r) => r,
                Err(why) => {
                    let u = update(&node, PrefetchState::Unreachable, Some(why));
                    let _ = tx.send(line(&u)).await;
                    return;
                }
            };
            let mut told = true;
            loop {
                let u = match read_frame::<_, PullFrame>(&mut recv).await {
                    Ok(f) => of_frame(&node, f),
                    Err(e) => update(
                        &node,
                        PrefetchState::Unreachable,
                        Some(format!("its session: {e}")),
                    ),
                };
                // A reader that went away: the node pulls on, nobody is told; its frames are
                // still read to the end, which ends the grant of its blobs.
                told = told && tx.send(line(&u)).await.is_ok();
                if u.state.is_final() {
                    return;
                }
            }
        });
    }
    tokio::spawn(async move {
        for l in unreachable {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(ChannelBody(rx).boxed())
        .unwrap_or_else(|_| boxed(error(StatusCode::INTERNAL_SERVER_ERROR, "response")))
}

/// One line of the stream.
fn line(u: &PrefetchUpdate) -> Bytes {
    let mut out = serde_json::to_vec(u).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Opens the node's stream and sends the request.
async fn ask(conn: &quinn::Connection, image: String) -> Result<quinn::RecvStream, String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &ServerPush::Pull(PullRequest { image }))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(recv)
}

fn update(node: &str, state: PrefetchState, reason: Option<String>) -> PrefetchUpdate {
    PrefetchUpdate {
        node: node.to_string(),
        state,
        done_bytes: None,
        total_bytes: None,
        digest: None,
        reason,
    }
}

/// A node's frame as its update.
fn of_frame(node: &str, f: PullFrame) -> PrefetchUpdate {
    let mut u = update(node, PrefetchState::Pulling, None);
    match f {
        PullFrame::Progress {
            done_bytes,
            total_bytes,
        } => {
            u.done_bytes = Some(done_bytes);
            u.total_bytes = Some(total_bytes);
        }
        PullFrame::Present { digest } => {
            u.state = PrefetchState::Present;
            u.digest = Some(digest);
        }
        PullFrame::Pulled { digest, size_bytes } => {
            u.state = PrefetchState::Pulled;
            u.digest = Some(digest);
            u.done_bytes = Some(size_bytes);
        }
        PullFrame::Failed { reason } => {
            u.state = PrefetchState::Failed;
            u.reason = Some(reason);
        }
        PullFrame::Refused { reason } => {
            u.state = PrefetchState::Failed;
            u.reason = Some(format!("the node refused: {reason}"));
        }
    }
    u
}

/// The nodes a request selects, by id: those named (each must be in the cluster), or all; then
/// those matching every constraint against their labels, as placement matches them. Revoked
/// nodes never. Refused when a named node is unknown or nothing is left.
fn select(
    nodes: Vec<NodeInfo>,
    named: &[String],
    constraints: &[flotilla_scheduler::expr::Expr],
) -> Result<Vec<String>, String> {
    let by_id: BTreeMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let chosen: Vec<&NodeInfo> = if named.is_empty() {
        nodes.iter().collect()
    } else {
        let mut out = Vec::new();
        for id in named {
            match by_id.get(id.as_str()) {
                Some(n) if !out.iter().any(|o: &&NodeInfo| o.id == n.id) => out.push(*n),
                Some(_) => {}
                None => return Err(format!("node {id} is not in the cluster")),
            }
        }
        out
    };
    let picked: Vec<String> = chosen
        .into_iter()
        .filter(|n| !n.revoked && constraints.iter().all(|c| c.eval(&n.labels)))
        .map(|n| n.id.clone())
        .collect();
    if picked.is_empty() {
        return Err("no node matches: nothing to prefetch onto".to_string());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, labels: &[(&str, &str)], revoked: bool) -> NodeInfo {
        let mut n: NodeInfo = serde_json::from_value(serde_json::json!({
            "id": id, "hostname": id, "labels": {}, "joinedAt": 0, "tokenId": "t",
            "certNotAfter": 0, "revoked": revoked, "connected": true, "draining": false,
            "state": "READY"
        }))
        .expect("node");
        for (k, v) in labels {
            n.labels.insert(k.to_string(), v.to_string());
        }
        n
    }

    #[test]
    fn selection_names_what_it_cannot_find_and_matches_labels_as_placement_does() {
        let nodes = || {
            vec![
                node("a", &[("site", "s1")], false),
                node("b", &[("site", "s2")], false),
                node("c", &[("site", "s1")], true),
            ]
        };
        let site1 = flotilla_scheduler::expr::parse("attribute:site == s1").expect("expr");
        assert_eq!(
            select(nodes(), &[], std::slice::from_ref(&site1)),
            Ok(vec!["a".into()])
        );
        assert_eq!(
            select(nodes(), &[], &[]),
            Ok(vec!["a".into(), "b".into()]),
            "all but the revoked one"
        );
        assert_eq!(
            select(nodes(), &["b".into(), "b".into()], &[]),
            Ok(vec!["b".into()])
        );
        assert_eq!(
            select(nodes(), &["x".into()], &[]),
            Err("node x is not in the cluster".into())
        );
        assert_eq!(
            select(nodes(), &["b".into()], &[site1]),
            Err("no node matches: nothing to prefetch onto".into())
        );
    }
}
