//! Images pushed to the control plane's content store with `flotilla image push`: an OCI
//! archive and a `docker save` archive of the same image share every blob, `ls` and `inspect`
//! show them, `rm` deletes only what no other image has, a blob whose content is not its
//! digest is refused naming it, and what is kept survives a restart of the control plane.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use flotilla_api::images::StoredImage;
use flotilla_tests::cluster::ControlPlane;
use flotilla_tests::host_arch;
use flotilla_tests::image::{busybox_image, tar_dir, write_docker_save, write_layout};

/// The blob files of the content store.
fn blobs(cp: &ControlPlane) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cp.data.join("images/blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn has_blob(cp: &ControlPlane, digest: &str) -> bool {
    cp.data
        .join("images/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .is_file()
}

#[test]
fn pushed_images_share_blobs_and_removal_keeps_what_another_image_has() {
    let mut cp = ControlPlane::start(&[]);
    let work = tempfile::tempdir().expect("work");
    let spec = busybox_image(host_arch());
    let layout = work.path().join("layout");
    let built = write_layout(&layout, "1.0", &spec).expect("layout");
    let oci = work.path().join("app.tar");
    tar_dir(&layout, &oci).expect("oci archive");
    let saved = work.path().join("saved.tar");
    write_docker_save(&saved, "shop/app:saved", &spec, &built).expect("docker save");

    // The OCI archive names its image by podman's rule; --name renames it.
    let pushed: Vec<StoredImage> =
        cp.flotilla_json(&["image", "push", &path(&oci), "--name", "shop/app:1.0"]);
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    let app = &pushed[0];
    assert_eq!(app.name, "docker.io/shop/app:1.0");
    assert_eq!(app.manifest.digest, built.manifest);
    assert_eq!(
        app.layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        built.layers
    );
    for d in app.digests() {
        assert!(has_blob(&cp, d), "{d}");
        let mode = std::fs::metadata(cp.data.join("images/blobs/sha256").join(&d[7..]))
            .expect("blob")
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{d}");
    }
    let after_oci = blobs(&cp);

    // docker-save's layers are the uncompressed tars: new blobs where the OCI image's are
    // compressed, the same where they are not; its config is the same blob.
    let saved_images: Vec<StoredImage> = cp.flotilla_json(&["image", "push", &path(&saved)]);
    let saved_image = &saved_images[0];
    assert_eq!(saved_image.name, "docker.io/shop/app:saved");
    assert_eq!(saved_image.config.digest, app.config.digest);
    let both = blobs(&cp);
    let mut want: Vec<String> = after_oci
        .iter()
        .cloned()
        .chain(saved_image.digests().map(|d| d[7..].to_string()))
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(both, want);
    assert!(
        both.len() < after_oci.len() + 2 + spec.layers.len(),
        "nothing shared: {both:?}"
    );

    let ls = cp.flotilla_ok(&["image", "ls"]);
    assert!(
        ls.contains("docker.io/shop/app:1.0") && ls.contains("docker.io/shop/app:saved"),
        "{ls}"
    );
    let inspected: StoredImage = cp.flotilla_json(&["image", "inspect", "shop/app:1.0"]);
    assert_eq!(inspected.manifest, app.manifest);

    // A restart keeps the references and the blobs.
    cp.restart();
    let listed: Vec<StoredImage> = cp.flotilla_json(&["image", "ls"]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(blobs(&cp), both);

    // Removing the OCI image keeps the config the docker-save image shares.
    let out = cp.flotilla_ok(&["image", "rm", "shop/app:1.0"]);
    assert!(out.contains("docker.io/shop/app:1.0 removed"), "{out}");
    assert!(has_blob(&cp, &app.config.digest));
    assert!(!has_blob(&cp, &app.manifest.digest));
    for l in &app.layers {
        let shared = saved_image.digests().any(|d| d == l.digest);
        assert_eq!(has_blob(&cp, &l.digest), shared, "{}", l.digest);
    }
    let o = cp.flotilla(&["image", "inspect", "shop/app:1.0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no image docker.io/shop/app:1.0"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    cp.flotilla_ok(&["image", "rm", "shop/app:saved"]);
    assert!(blobs(&cp).is_empty(), "{:?}", blobs(&cp));
}

#[test]
fn an_archive_with_a_corrupted_blob_is_refused_naming_it() {
    let cp = ControlPlane::start(&[]);
    let work = tempfile::tempdir().expect("work");
    let layout = work.path().join("layout");
    let built = write_layout(&layout, "1.0", &busybox_image(host_arch())).expect("layout");
    // One byte of the top layer's blob flipped: its digest no longer matches.
    let top = layout
        .join("blobs/sha256")
        .join(&built.layers[built.layers.len() - 1][7..]);
    let mut bytes = std::fs::read(&top).expect("layer");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&top, &bytes).expect("corrupt");
    let oci = work.path().join("bad.tar");
    tar_dir(&layout, &oci).expect("archive");
    let o = cp.flotilla(&["image", "push", &path(&oci)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&built.layers[built.layers.len() - 1]) && err.contains("content hashes to"),
        "{err}"
    );
    let listed: Vec<StoredImage> = cp.flotilla_json(&["image", "ls"]);
    assert!(listed.is_empty(), "{listed:?}");
    // A file that is no archive at all is refused too.
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar archive, not at all").expect("junk");
    let o = cp.flotilla(&["image", "push", &path(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    // Nothing of either push is left in the store (the blobs stored before the corrupted one
    // are swept with the failure) or its scratch directory.
    assert!(blobs(&cp).is_empty(), "{:?}", blobs(&cp));
    assert_eq!(
        std::fs::read_dir(cp.data.join("images/tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[test]
fn an_image_replaced_by_a_push_leaves_no_blob_of_its_own_behind() {
    let cp = ControlPlane::start(&[]);
    let work = tempfile::tempdir().expect("work");
    let spec = busybox_image(host_arch());
    let layout = work.path().join("layout");
    let built = write_layout(&layout, "1.0", &spec).expect("layout");
    let oci = work.path().join("app.tar");
    tar_dir(&layout, &oci).expect("oci archive");
    let saved = work.path().join("saved.tar");
    write_docker_save(&saved, "shop/app:1.0", &spec, &built).expect("docker save");
    cp.flotilla_ok(&["image", "push", &path(&oci), "--name", "shop/app:1.0"]);
    let now: Vec<StoredImage> = cp.flotilla_json(&["image", "push", &path(&saved)]);
    let mut want: Vec<String> = now[0].digests().map(|d| d[7..].to_string()).collect();
    want.sort();
    want.dedup();
    // The sweep runs right after the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while blobs(&cp) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?} != {want:?}",
            blobs(&cp)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let events = cp.api().events(0, 1000).expect("events");
    assert!(
        events.iter().any(|e| e.kind == "image.pushed"
            && e.subject == "docker.io/shop/app:1.0"
            && e.message
                .ends_with(&format!("replacing {}", built.manifest))),
        "{events:?}"
    );
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
