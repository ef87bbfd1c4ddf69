//! The content store's references: which image names the control plane holds, and the blobs
//! each consists of. The blobs themselves are files the adapter writes (`content.rs`, digest
//! verified, before it sends [`Operator::PutImages`](super::command::Operator::PutImages)) and
//! removes (the digests [`remove`] answers, after the removal is committed); references are
//! records like any other, written in the command's one transaction with their event.

use std::collections::BTreeSet;

use flotilla_api::images::{ImageRemoved, StoredImage};

use super::command::{ClusterError, Reply};
use super::ctx::Ctx;

/// Records the images of one push, each replacing the image of its name; one `image.pushed`
/// event each, naming its manifest digest.
pub fn put(cx: &mut Ctx<'_, '_>, images: Vec<StoredImage>) -> Result<Reply, ClusterError> {
    if images.is_empty() {
        return Err(ClusterError::invalid("the archive holds no image"));
    }
    let mut out = Vec::new();
    for mut i in images {
        i.pushed_at = cx.now.secs();
        let before = cx.txn.image(&i.name).map(|b| b.manifest.digest.clone());
        let message = match before {
            Some(b) if b == i.manifest.digest => format!("{} pushed again", i.manifest.digest),
            Some(b) => format!("{} pushed, replacing {b}", i.manifest.digest),
            None => format!("{} pushed", i.manifest.digest),
        };
        cx.event("image.pushed", &i.name, message);
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
pub fn get(cx: &Ctx<'_, '_>, name: &str) -> Result<Reply, ClusterError> {
    cx.txn
        .image(name)
        .map(|i| Reply::Image(i.clone()))
        .ok_or_else(|| not_found(name))
}

/// Removes an image; answers the digests of its blobs no remaining image references, which
/// the adapter deletes once this is committed. An `image.removed` event.
pub fn remove(cx: &mut Ctx<'_, '_>, name: &str) -> Result<Reply, ClusterError> {
    let image = cx.txn.image(name).cloned().ok_or_else(|| not_found(name))?;
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

fn not_found(name: &str) -> ClusterError {
    ClusterError::NotFound(format!(
        "no image {name} in the control plane's content store"
    ))
}

#[cfg(test)]
mod tests {
    use flotilla_api::images::{StoredBlob, StoredImage};

    use super::super::command::{Operator, Reply};
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
    fn a_push_of_nothing_and_an_unknown_image_are_refused() {
        let mut h = Harness::new();
        assert!(h.op(Operator::PutImages(Vec::new())).is_err());
        let e = h
            .op(Operator::RemoveImage("docker.io/library/x:1".into()))
            .expect_err("unknown");
        assert!(e.to_string().contains("docker.io/library/x:1"), "{e}");
    }
}
