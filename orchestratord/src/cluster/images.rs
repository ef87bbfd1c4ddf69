//! The content store's references: which image names the control plane holds, and the blobs
//! each consists of. The blobs themselves are files the adapter writes (`content.rs`, digest
//! verified, before it sends [`Operator::PutImages`](super::command::Operator::PutImages)) and
//! removes (the digests [`remove`] answers, after the removal is committed); references are
//! records like any other, written in the command's one transaction with their event.
//!
//! Which node may have what (ARCHITECTURE.md, the `flotilla image push` data flow and the
//! invariants): a node gets an image only when a task placed on it and not `STOPPED` has a
//! container whose image resolves to that name, or a prefetch in progress asked it for that
//! image (the adapter's record, passed in: a prefetch is not in the core); it gets a blob
//! only when the digest is the manifest, config or a layer of such an image. Anything else
//! is refused alike whether the image or blob exists or not, logged, and recorded as an
//! `image.refused` event at most once a minute per node — as secrets are (`secrets::fetch`).

use std::collections::BTreeSet;

use flotilla_api::images::{ImageRemoved, ImageSource, StoredImage};
use flotilla_api::AgentReply;
use flotilla_oci::ImageRef;

use super::command::{ClusterError, Reply};
use super::ctx::Ctx;
use super::live::REFUSAL_EVENT_EVERY_SECS;
use super::state::Txn;

/// Records the images of one push or pull, each replacing the image of its name; one event
/// each naming its manifest digest: `image.pulled` naming the source for an image the control
/// plane pulled (`ImageSource::Pull`), else `image.pushed`.
pub fn put(cx: &mut Ctx<'_, '_>, images: Vec<StoredImage>) -> Result<Reply, ClusterError> {
    if images.is_empty() {
        return Err(ClusterError::invalid("the archive holds no image"));
    }
    let mut out = Vec::new();
    for mut i in images {
        i.pushed_at = cx.now.secs();
        let (kind, verb, from) = match &i.source {
            Some(s @ ImageSource::Pull { .. }) => ("image.pulled", "pulled", format!(" from {s}")),
            _ => ("image.pushed", "pushed", String::new()),
        };
        let digest = &i.manifest.digest;
        let message = match cx.txn.image(&i.name).map(|b| &b.manifest.digest) {
            Some(b) if b == digest => format!("{digest} {verb} again{from}"),
            Some(b) => format!("{digest} {verb}{from}, replacing {b}"),
            None => format!("{digest} {verb}{from}"),
        };
        cx.event(kind, &i.name, message);
        cx.txn.put_image(i.clone());
        out.push(i);
    }
    Ok(Reply::ImagesPushed(out))
}

/// Every image, by name.
pub fn list(cx: &Ctx<'_, '_>) -> Reply {
    Reply::Images(cx.txn.images().into_iter().cloned().collect())
}

/// One image by canonical name.
pub fn get(cx: &Ctx<'_, '_>, reference: &str) -> Result<Reply, ClusterError> {
    held(cx.txn, reference).map(|i| Reply::Image(i.clone()))
}

/// The image the store holds under the first of `reference`'s lookup names
/// (`ImageRef::lookup_names`: a short name also finds its `localhost/` image).
///
/// # Errors
/// [`ClusterError::Invalid`] for a reference that does not parse, [`ClusterError::NotFound`]
/// naming `reference` when no lookup name is held.
fn held<'t>(txn: &'t Txn<'_>, reference: &str) -> Result<&'t StoredImage, ClusterError> {
    let names =
        ImageRef::lookup_names(reference).map_err(|e| ClusterError::invalid(e.to_string()))?;
    names
        .iter()
        .find_map(|n| txn.image(n))
        .ok_or_else(|| not_found_as(reference, &names))
}

/// [`not_found`] for `reference`, naming the names it was looked up under when they are not
/// just the reference itself.
fn not_found_as(reference: &str, names: &[String]) -> ClusterError {
    match names {
        [one] if one == reference => not_found(reference),
        [one] => not_found(&format!("{reference} ({one})")),
        many => not_found(&format!("{reference} (neither {})", many.join(" nor "))),
    }
}

/// Removes an image; answers the digests of its blobs no remaining image references, which
/// the adapter deletes once this is committed. An `image.removed` event.
pub fn remove(cx: &mut Ctx<'_, '_>, reference: &str) -> Result<Reply, ClusterError> {
    let image = held(cx.txn, reference)?.clone();
    let name = image.name.as_str();
    cx.txn.remove_image(name);
    let still: BTreeSet<String> = cx
        .txn
        .images()
        .iter()
        .flat_map(|i| i.digests().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut blobs_removed: Vec<String> = image
        .digests()
        .filter(|d| !still.contains(*d))
        .map(str::to_string)
        .collect();
    blobs_removed.sort();
    blobs_removed.dedup();
    cx.event(
        "image.removed",
        name,
        format!(
            "{} removed ({} blobs no other image has)",
            image.manifest.digest,
            blobs_removed.len()
        ),
    );
    Ok(Reply::ImageRemoved(ImageRemoved {
        name: name.to_string(),
        blobs_removed,
    }))
}

/// The digests of every blob an image references (what a start-up sweep keeps).
pub fn referenced(cx: &Ctx<'_, '_>) -> Reply {
    Reply::Blobs(
        cx.txn
            .images()
            .iter()
            .flat_map(|i| i.digests().map(str::to_string).collect::<Vec<_>>())
            .collect(),
    )
}

/// How many characters of a digest a node sent are quoted back, logged or recorded: a sha256
/// digest has 71; a longer string is cut, as the content store cuts it.
const DIGEST_SHOWN: usize = 80;

/// How many characters of an image name are quoted likewise: a parsed reference's repository
/// has at most 255, its tag 128, its digest 71; its registry is not bounded by the parser.
const NAME_SHOWN: usize = 512;

/// `s` as a refusal, a log line or an event quotes it: at most `max` characters, `…` marking
/// a cut.
fn shown(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The names of the images the containers of the tasks placed on `node` and not `STOPPED`
/// run, each image reference under its lookup names (`ImageRef::lookup_names`). A reference
/// that does not parse names nothing: the node could not pull it.
fn used_on(txn: &Txn<'_>, node: &str) -> BTreeSet<String> {
    txn.live_tasks_on(node)
        .into_iter()
        .flat_map(|t| t.definition.container_definitions.iter())
        .flat_map(|c| ImageRef::lookup_names(&c.image).unwrap_or_default())
        .collect()
}

/// The names of the images `node` may get from the content store: those of its tasks
/// ([`used_on`]) and those a prefetch in progress asked it for, under their lookup names.
fn allowed(txn: &Txn<'_>, node: &str, prefetching: &[String]) -> BTreeSet<String> {
    let mut names = used_on(txn, node);
    names.extend(
        prefetching
            .iter()
            .flat_map(|r| ImageRef::lookup_names(r).unwrap_or_default()),
    );
    names
}

/// Refuses `node` `what` (`image NAME`, `blob DIGEST`) because `why`: logged at info, and an
/// `image.refused` event about `subject` at most once every [`REFUSAL_EVENT_EVERY_SECS`] per
/// node, so a node that keeps asking cannot push the event log's older events out.
fn refuse(cx: &mut Ctx<'_, '_>, node: &str, subject: &str, what: &str, why: &str) -> Reply {
    tracing::info!(node = %node, "{what} refused: {why}");
    if cx
        .live
        .refusal_event_due(node, cx.now, |l| &mut l.image_refused_at)
    {
        cx.event(
            "image.refused",
            subject,
            format!(
                "node {node} asked for {what}: {why} (further refusals of this node within \
                 {REFUSAL_EVENT_EVERY_SECS} s are only logged)"
            ),
        );
    }
    Reply::Agent(AgentReply::Refused {
        reason: format!("node {node} may not have {what}: {why}"),
    })
}

/// A node asks for the image the content store holds under reference `image`'s lookup names
/// (`AgentRequest::Image`, to fetch it or to have the control plane pull it first):
/// `AgentReply::Image` with the first lookup name that the node may get (see the module's
/// rule) and the store holds; otherwise refused as [`refuse`] does, whether the image exists
/// or not.
///
/// # Errors
/// [`ClusterError::NotFound`] when the node may get it but the store holds it under none of
/// its names (a pull-through may then pull it).
pub fn for_node(
    cx: &mut Ctx<'_, '_>,
    node: &str,
    image: &str,
    prefetching: &[String],
) -> Result<Reply, ClusterError> {
    let allowed = allowed(cx.txn, node, prefetching);
    let names: Vec<String> = ImageRef::lookup_names(image)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| allowed.contains(n))
        .collect();
    if names.is_empty() {
        let name = shown(image, NAME_SHOWN);
        return Ok(refuse(
            cx,
            node,
            &name,
            &format!("image {name}"),
            "no task placed on it uses it and no prefetch asked it for it",
        ));
    }
    match names.iter().find_map(|n| cx.txn.image(n)) {
        Some(i) => Ok(Reply::Agent(AgentReply::Image(Box::new(i.clone())))),
        None => Err(not_found_as(image, &names)),
    }
}

/// A node asks for blob `digest` (`AgentRequest::Blob`): `Reply::Done` when it is the
/// manifest, config or a layer of an image the node may get (as [`for_node`]) — the adapter
/// then sends it —; otherwise refused as [`refuse`] does, whether the blob exists or not.
pub fn blob_for_node(
    cx: &mut Ctx<'_, '_>,
    node: &str,
    digest: &str,
    prefetching: &[String],
) -> Reply {
    let part_of_one = allowed(cx.txn, node, prefetching)
        .iter()
        .filter_map(|name| cx.txn.image(name))
        .any(|i| i.digests().any(|d| d == digest));
    if part_of_one {
        return Reply::Done;
    }
    let digest = shown(digest, DIGEST_SHOWN);
    refuse(
        cx,
        node,
        &digest,
        &format!("blob {digest}"),
        "it is no part of an image a task placed on it uses or a prefetch asked it for",
    )
}

fn not_found(name: &str) -> ClusterError {
    ClusterError::NotFound(format!(
        "no image {name} in the control plane's content store"
    ))
}

#[cfg(test)]
mod tests {
    use flotilla_api::images::{ImageSource, StoredBlob, StoredImage};

    use flotilla_api::ops::TaskRun;
    use flotilla_api::AgentReply;

    use super::super::command::{Agent, ClusterError, Command, Operator, Reply};
    use super::super::harness::Harness;

    fn blob(n: u8) -> StoredBlob {
        StoredBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: u64::from(n) * 100,
        }
    }

    fn image(name: &str, manifest: u8, layers: &[u8]) -> StoredImage {
        StoredImage {
            name: name.into(),
            manifest: blob(manifest),
            config: blob(manifest + 100),
            layers: layers.iter().map(|l| blob(*l)).collect(),
            platform: "linux/amd64".into(),
            pushed_at: 0,
            source: None,
        }
    }

    #[test]
    fn a_removal_deletes_only_the_blobs_no_other_image_has() {
        let mut h = Harness::new();
        h.op(Operator::PutImages(vec![
            image("docker.io/library/a:1", 1, &[10, 11]),
            image("docker.io/library/b:1", 2, &[11, 12]),
        ]))
        .expect("push");
        let Reply::Images(all) = h.op(Operator::ListImages).expect("list") else {
            panic!("not a list");
        };
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|i| i.pushed_at > 0), "{all:?}");
        let Reply::ImageRemoved(r) = h
            .op(Operator::RemoveImage("docker.io/library/a:1".into()))
            .expect("rm")
        else {
            panic!("not a removal");
        };
        // Layer 11 stays: b has it.
        let mut want = vec![blob(1).digest, blob(101).digest, blob(10).digest];
        want.sort();
        assert_eq!(r.blobs_removed, want);
        assert!(h
            .op(Operator::GetImage("docker.io/library/a:1".into()))
            .is_err());
        let Reply::Blobs(kept) = h.op(Operator::ReferencedBlobs).expect("kept") else {
            panic!("not blobs");
        };
        assert!(kept.contains(&blob(11).digest) && !kept.contains(&blob(10).digest));
        assert_eq!(h.events("image.removed").len(), 1);
        assert_eq!(h.events("image.pushed").len(), 2);
    }

    #[test]
    fn a_pulled_image_is_an_event_naming_its_source_and_node() {
        let mut h = Harness::new();
        let pulled = |node: Option<&str>| StoredImage {
            source: Some(ImageSource::Pull {
                from: "mirror http://10.0.0.2:5000".into(),
                node: node.map(str::to_string),
            }),
            ..image("docker.io/library/a:1", 1, &[10])
        };
        h.op(Operator::PutImages(vec![pulled(None)])).expect("pull");
        h.op(Operator::PutImages(vec![pulled(Some("n-1"))]))
            .expect("pull-through");
        let d = blob(1).digest;
        assert_eq!(
            h.events("image.pulled")
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>(),
            [
                format!("{d} pulled from mirror http://10.0.0.2:5000"),
                format!("{d} pulled again from mirror http://10.0.0.2:5000 for node n-1"),
            ]
        );
        assert!(h.events("image.pushed").is_empty());
    }

    #[test]
    fn a_short_name_finds_a_local_image_as_a_node_store_does() {
        let mut h = Harness::new();
        let (a, b) = (h.join(&[], 2048, 4), h.join(&[], 2048, 4));
        // As `flotilla image push` files a skopeo archive whose ref name is `bb:v1`.
        h.op(Operator::PutImages(vec![image(
            "localhost/bb:v1",
            1,
            &[10],
        )]))
        .expect("push");
        let name_of = |r: Result<Reply, ClusterError>| match r {
            Ok(Reply::Image(i)) => Ok(i.name),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            name_of(h.op(Operator::GetImage("bb:v1".into()))),
            Ok("localhost/bb:v1".to_string())
        );
        // A registry given is the only place looked in.
        assert_eq!(
            name_of(h.op(Operator::GetImage("docker.io/library/bb:v1".into()))),
            Err("no image docker.io/library/bb:v1 in the control plane's content store".into())
        );
        // A task whose container names the short name: its node gets the local image, and
        // may ask by either name; another node may not.
        h.register(
            r#"{"family":"bb","containerDefinitions":[{"name":"main","image":"bb:v1","memory":64}]}"#,
        );
        h.op(Operator::RunTask(TaskRun {
            node: Some(a.clone()),
            ..TaskRun::new("bb")
        }))
        .expect("run");
        h.converge_all();
        for asked in ["bb:v1", "localhost/bb:v1"] {
            assert_eq!(
                ask_image(&mut h, &a, asked, &[]),
                Ok("localhost/bb:v1".to_string()),
                "{asked}"
            );
        }
        assert!(ask_image(&mut h, &b, "bb:v1", &[]).is_err());
        // A prefetch by the short name grants the local image likewise.
        assert_eq!(
            ask_image(&mut h, &b, "bb:v1", &["bb:v1"]),
            Ok("localhost/bb:v1".to_string())
        );
        // Docker Hub's image is found first once the store holds it too.
        h.op(Operator::PutImages(vec![image(
            "docker.io/library/bb:v1",
            2,
            &[11],
        )]))
        .expect("push");
        assert_eq!(
            ask_image(&mut h, &a, "bb:v1", &[]),
            Ok("docker.io/library/bb:v1".to_string())
        );
        // A removal by the short name removes the first found, then the next.
        for want in ["docker.io/library/bb:v1", "localhost/bb:v1"] {
            let Ok(Reply::ImageRemoved(r)) = h.op(Operator::RemoveImage("bb:v1".into())) else {
                panic!("not removed");
            };
            assert_eq!(r.name, want);
        }
        assert!(h.op(Operator::RemoveImage("bb:v1".into())).is_err());
        // A task naming the canonical name does not grant the local image.
        h.register(
            r#"{"family":"hub","containerDefinitions":[{"name":"main","image":"docker.io/library/cc:1","memory":64}]}"#,
        );
        h.op(Operator::PutImages(vec![image("localhost/cc:1", 3, &[12])]))
            .expect("push");
        h.op(Operator::RunTask(TaskRun {
            node: Some(b.clone()),
            ..TaskRun::new("hub")
        }))
        .expect("run");
        h.converge_all();
        assert!(ask_image(&mut h, &b, "localhost/cc:1", &[]).is_err());
        assert_eq!(
            ask_image(&mut h, &b, "cc:1", &[]),
            Err(
                "no image cc:1 (docker.io/library/cc:1) in the control plane's content store"
                    .to_string()
            )
        );
    }

    /// What a node's request for an image comes to: the image's name, or the refusal's reason.
    fn ask_image(
        h: &mut Harness,
        node: &str,
        image: &str,
        prefetching: &[&str],
    ) -> Result<String, String> {
        let asked = Command::Agent(Agent::Image {
            node: node.into(),
            image: image.into(),
            prefetching: prefetching.iter().map(|p| p.to_string()).collect(),
        });
        match h.exec(asked) {
            Ok(Reply::Agent(AgentReply::Image(i))) => Ok(i.name),
            Ok(Reply::Agent(AgentReply::Refused { reason })) => Err(reason),
            Err(ClusterError::NotFound(why)) => Err(why),
            other => panic!("{other:?}"),
        }
    }

    /// What a node's request for a blob comes to: sent (`Ok`), or the refusal's reason.
    fn ask_blob(
        h: &mut Harness,
        node: &str,
        digest: &str,
        prefetching: &[&str],
    ) -> Result<(), String> {
        let asked = Command::Agent(Agent::Blob {
            node: node.into(),
            digest: digest.into(),
            prefetching: prefetching.iter().map(|p| p.to_string()).collect(),
        });
        match h.exec(asked) {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Agent(AgentReply::Refused { reason })) => Err(reason),
            other => panic!("{other:?}"),
        }
    }

    const APP: &str = "docker.io/library/app:1";
    const OTHER: &str = "docker.io/library/other:1";

    /// Two nodes, two images pushed, and a task on the first node whose container names the
    /// first image as a task definition would (Docker's defaults make it `APP`).
    fn cluster() -> (Harness, String, String, String) {
        let mut h = Harness::new();
        let a = h.join(&[], 2048, 4);
        let b = h.join(&[], 2048, 4);
        h.op(Operator::PutImages(vec![
            image(APP, 1, &[10, 11]),
            image(OTHER, 2, &[11, 12]),
        ]))
        .expect("push");
        h.register(
            r#"{"family":"app","containerDefinitions":[{"name":"main","image":"app:1","memory":64}]}"#,
        );
        let Reply::TasksCreated(t) = h
            .op(Operator::RunTask(TaskRun {
                node: Some(a.clone()),
                ..TaskRun::new("app")
            }))
            .expect("run")
        else {
            panic!("no task")
        };
        h.converge_all();
        (h, a, b, t[0].id.clone())
    }

    #[test]
    fn a_node_gets_an_image_and_its_blobs_only_while_a_task_on_it_uses_the_image() {
        let (mut h, a, b, task) = cluster();
        assert_eq!(ask_image(&mut h, &a, APP, &[]), Ok(APP.to_string()));
        for d in [blob(1), blob(101), blob(10), blob(11)] {
            assert_eq!(ask_blob(&mut h, &a, &d.digest, &[]), Ok(()), "{}", d.digest);
        }
        // Not its task's: refused alike whether the image exists or not, naming the node.
        let other = ask_image(&mut h, &a, OTHER, &[]).expect_err("another image");
        let missing = ask_image(&mut h, &a, "docker.io/library/nope:1", &[])
            .expect_err("an image nobody pushed");
        assert_eq!(
            other,
            format!(
                "node {a} may not have image {OTHER}: no task placed on it uses it and no \
                 prefetch asked it for it"
            )
        );
        assert_eq!(missing, other.replace(OTHER, "docker.io/library/nope:1"));
        // A blob of another image only (12), or of none, is refused naming the node and the
        // digest; one that is no digest is cut.
        let theirs = ask_blob(&mut h, &a, &blob(12).digest, &[]).expect_err("another's blob");
        let nobodys = ask_blob(&mut h, &a, &blob(99).digest, &[]).expect_err("nobody's blob");
        assert_eq!(
            theirs,
            format!(
                "node {a} may not have blob {}: it is no part of an image a task placed on it \
                 uses or a prefetch asked it for",
                blob(12).digest
            )
        );
        assert_eq!(nobodys, theirs.replace(&blob(12).digest, &blob(99).digest));
        let long = ask_blob(&mut h, &a, &"sha256:ab".repeat(100_000), &[]).expect_err("long");
        assert!(long.len() < 300 && long.contains(&a), "{long}");
        // The other node has no task using it: refused too.
        assert!(ask_image(&mut h, &b, APP, &[]).is_err());
        assert!(ask_blob(&mut h, &b, &blob(10).digest, &[]).is_err());
        // One event per node a minute, naming the node; every refusal is logged.
        let events = h.events("image.refused");
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0]
            .message
            .starts_with(&format!("node {a} asked for image {OTHER}")));
        assert!(events[1]
            .message
            .starts_with(&format!("node {b} asked for image {APP}")));
        h.advance(61);
        assert!(ask_blob(&mut h, &a, &blob(12).digest, &[]).is_err());
        assert_eq!(h.events("image.refused").len(), 3);
        // Stopping, it still holds it; STOPPED, it grants nothing more.
        h.op(Operator::StopTask(task)).expect("stop");
        assert_eq!(ask_image(&mut h, &a, APP, &[]), Ok(APP.to_string()));
        h.converge_all();
        assert!(ask_image(&mut h, &a, APP, &[]).is_err());
        assert!(ask_blob(&mut h, &a, &blob(10).digest, &[]).is_err());
    }

    #[test]
    fn a_prefetch_in_progress_grants_its_image_and_only_its_blobs() {
        let (mut h, a, b, _) = cluster();
        // b runs nothing; a prefetch asks it for OTHER.
        assert_eq!(
            ask_image(&mut h, &b, OTHER, &[OTHER]),
            Ok(OTHER.to_string())
        );
        for d in [blob(2), blob(102), blob(11), blob(12)] {
            assert_eq!(
                ask_blob(&mut h, &b, &d.digest, &[OTHER]),
                Ok(()),
                "{}",
                d.digest
            );
        }
        assert!(ask_image(&mut h, &b, APP, &[OTHER]).is_err());
        assert!(
            ask_blob(&mut h, &b, &blob(10).digest, &[OTHER]).is_err(),
            "APP's own layer"
        );
        // a keeps its task's image besides the prefetch's.
        assert!(ask_blob(&mut h, &a, &blob(10).digest, &[OTHER]).is_ok());
        assert!(ask_blob(&mut h, &a, &blob(12).digest, &[OTHER]).is_ok());
        // Ended: nothing more.
        assert!(ask_image(&mut h, &b, OTHER, &[]).is_err());
        assert!(ask_blob(&mut h, &b, &blob(12).digest, &[]).is_err());
        // Granted but not held: said so (the node may know which images it may have).
        assert_eq!(
            ask_image(
                &mut h,
                &b,
                "docker.io/library/nope:1",
                &["docker.io/library/nope:1"]
            ),
            Err("no image docker.io/library/nope:1 in the control plane's content store".into())
        );
    }

    #[test]
    fn a_push_of_nothing_and_an_unknown_image_are_refused() {
        let mut h = Harness::new();
        assert!(h.op(Operator::PutImages(Vec::new())).is_err());
        let e = h
            .op(Operator::RemoveImage("docker.io/library/x:1".into()))
            .expect_err("unknown");
        assert!(e.to_string().contains("docker.io/library/x:1"), "{e}");
    }
}
