//! Images pushed to the control plane's content store with `flotilla image push`: an OCI
//! archive and a `docker save` archive of the same image share every blob, `ls` and `inspect`
//! show them, `rm` deletes only what no other image has, a blob whose content is not its
//! digest is refused naming it, and what is kept survives a restart of the control plane;
//! a push whose client leaves once its upload is done is stored all the same, leaving no blob
//! no image has.
//! A node with no route beyond its LAN runs tasks of a pushed image, fetched over its own
//! session: a transfer cut by a lost link goes on from where it stopped, and content that is
//! not what its digest says is refused. A prefetch brings a pushed image the same way to the
//! node it asks, and to no other; a short name finds a `localhost/` image as podman finds it.
//! The control plane pulls an image from a registry itself
//! (`flotilla image push REF`), and for a node that cannot reach the registry (pull-through).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::time::Duration;

use flotilla_api::images::{ImageSource, StoredImage};
use flotilla_api::ops::TaskRun;
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{ControlPlane, Fleet};
use flotilla_tests::image::{
    busybox_image, tar_dir, write_docker_save, write_layout, Compression, Layer,
};
use flotilla_tests::registry::{Auth, Registry};
use flotilla_tests::{host_arch, wait};

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

    // Named, sized and digested as `nodeagent ctr image ls` and `docker images` show them.
    let ls = cp.flotilla_ok(&["image", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.starts_with("shop/app:1.0 "))
        .unwrap_or_else(|| panic!("no row of shop/app:1.0 in:\n{ls}"));
    let digest = &app.manifest.digest["sha256:".len()..][..12];
    assert!(row.contains(&format!(" {digest} ")), "{row}");
    assert!(row.contains(" KiB ") || row.contains(" MiB "), "{row}");
    assert!(ls.contains("\nshop/app:saved "), "{ls}");
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
        String::from_utf8_lossy(&o.stderr).contains(
            "no image shop/app:1.0 (neither docker.io/shop/app:1.0 nor localhost/shop/app:1.0)"
        ),
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
        err.contains(&built.layers[built.layers.len() - 1])
            && err.contains("content hashes to")
            && err.contains(&format!("pushing {}: ", path(&oci))),
        "{err}"
    );
    let listed: Vec<StoredImage> = cp.flotilla_json(&["image", "ls"]);
    assert!(listed.is_empty(), "{listed:?}");
    // A file that is no archive at all is refused too.
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar archive, not at all").expect("junk");
    let o = cp.flotilla(&["image", "push", &path(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    // A layout directory is no archive: named, with how to make one, nothing sent.
    let o = cp.flotilla(&["image", "push", &path(&layout)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "reading {}: a directory, not an archive",
            path(&layout)
        )) && err.contains("tar -C DIR -cf FILE.tar ."),
        "{err}"
    );
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

#[test]
fn a_push_whose_client_leaves_after_its_upload_is_stored_whole() {
    let cp = ControlPlane::start(&[]);
    let work = tempfile::tempdir().expect("work");
    // Large enough that storing it takes a while after the upload.
    let (archive, layer, _) = image_with_noise(work.path(), 256 << 20);
    let mut push = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["image", "push", &path(&archive), "--name", "shop/left:1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flotilla image push");
    // The upload is done once the archive is staged; the client then leaves (Ctrl-C).
    let tmp = cp.data.join("images/tmp");
    let staging = || {
        std::fs::read_dir(&tmp)
            .expect("the content store's tmp")
            .any(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("import-")
            })
    };
    let start = std::time::Instant::now();
    while !staging() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the archive was never staged:\n{}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    push.kill().expect("the client leaves");
    let _ = push.wait();
    // The push goes on without it, to its record, and the store holds what its images have.
    // The staged archive goes before the names are committed, so the record is what ends it.
    let mut images: Vec<StoredImage> = Vec::new();
    let recorded =
        |images: &[StoredImage]| images.iter().any(|i| i.name == "docker.io/shop/left:1");
    let start = std::time::Instant::now();
    while !recorded(&images) {
        assert!(
            start.elapsed() < flotilla_tests::patient(Duration::from_secs(240)),
            "not recorded: {images:?}\n{}",
            cp.log()
        );
        std::thread::sleep(Duration::from_millis(200));
        images = cp.flotilla_json(&["image", "ls"]);
    }
    let left = images
        .iter()
        .find(|i| i.name == "docker.io/shop/left:1")
        .expect("recorded");
    wait(
        "the staged archive removed",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&tmp)
                .expect("the content store's tmp")
                .next()
                .is_none()
        },
    );
    assert!(left.digests().any(|d| d == layer), "{left:?}");
    let mut want: Vec<String> = images
        .iter()
        .flat_map(|i| i.digests().map(|d| d[7..].to_string()).collect::<Vec<_>>())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(blobs(&cp), want, "every blob is one of an image's");
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// An OCI archive of busybox with a layer of its own: `bytes` that do not compress (so the
/// node has all but that layer already: its test image is busybox). The archive, and the own
/// layer's digest and size.
fn image_with_noise(dir: &Path, bytes: u64) -> (std::path::PathBuf, String, u64) {
    let mut spec = busybox_image(host_arch());
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").expect("urandom"), bytes),
        &mut noise,
    )
    .expect("noise");
    let mut own = Layer::new();
    own.dir("app", 0o755).file("app/data", &noise, 0o644);
    spec.layers.push((own.finish(), Compression::Gzip));
    let layout = dir.join("layout");
    let built = write_layout(&layout, "1", &spec).expect("layout");
    let archive = dir.join("app.tar");
    tar_dir(&layout, &archive).expect("archive");
    let layer = built.layers.last().expect("own layer").clone();
    let size = std::fs::metadata(layout.join("blobs/sha256").join(&layer[7..]))
        .expect("layer blob")
        .len();
    (archive, layer, size)
}

/// A task definition of `image`, a container that runs until stopped.
fn serving(family: &str, image: &str) -> String {
    format!(
        r#"{{"family": "{family}", "networkMode": "none", "containerDefinitions": [{{
            "name": "main", "image": "{image}", "memory": 16, "stopTimeout": 2,
            "command": ["sh", "-c", "test -s /app/data; trap 'exit 0' TERM; sleep 600 & wait"]}}]}}"#
    )
}

/// The control plane's `flotilla_image_sent_bytes_total`.
fn sent_bytes(cp: &ControlPlane) -> u64 {
    let text = cp.api().metrics().expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("flotilla_image_sent_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no flotilla_image_sent_bytes_total in:\n{text}"))
}

/// Bytes of the partial file of `layer` fetched from the control plane, if there is one.
fn partial(fleet: &Fleet, layer: &str) -> Option<u64> {
    let path = fleet.nodes[0]
        .data
        .join("images/ingest")
        .join(format!("{}.control-plane.partial", &layer[7..]));
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[test]
fn a_node_with_no_route_to_a_registry_runs_a_pushed_image_resuming_a_cut_transfer() {
    // 1 MiB/s per node: the 4 MiB layer takes four seconds, long enough to cut.
    let fleet = Fleet::start_with(&[&[]], |_| {
        (vec!["--image-rate-limit".into(), "1048576".into()], vec![])
    });
    fleet.hosts[0].lan_only();
    let work = tempfile::tempdir().expect("work");
    let (archive, layer, size) = image_with_noise(work.path(), 4 << 20);
    fleet
        .cp
        .flotilla_ok(&["image", "push", &path(&archive), "--name", "shop/app:1"]);
    fleet.register(&serving("app", "shop/app:1"));
    let id = fleet.cp.run_one("app");

    wait(
        "a quarter of the layer fetched",
        Duration::from_secs(30),
        || partial(&fleet, &layer).is_some_and(|n| n >= size / 4),
    );
    let sessions_lost = |log: &str| log.matches("reconnecting in").count();
    let before = sessions_lost(&fleet.agents[0].log());
    fleet.hosts[0].cut();
    // The session ends (QUIC's idle timeout) and the transfer with it.
    wait("the session lost", Duration::from_secs(60), || {
        sessions_lost(&fleet.agents[0].log()) > before
    });
    let held = partial(&fleet, &layer).expect("the partial layer is kept");
    assert!(held > 0 && held < size, "{held} of {size}");
    let sent_before = sent_bytes(&fleet.cp);
    fleet.hosts[0].restore();
    wait("the task running", Duration::from_secs(90), || {
        let t = fleet.cp.task(&id);
        assert_ne!(t.state, TaskState::Stopped, "{t:#?}");
        t.state == TaskState::Running
    });
    let resumed = sent_bytes(&fleet.cp) - sent_before;
    eprintln!("layer of {size} bytes: {held} held at the cut, {resumed} sent after it");
    assert!(
        resumed <= size - held,
        "after the cut, the control plane sent more than the node lacked: {resumed} bytes, \
         held {held} of {size}"
    );
    let log = fleet.agents[0].log();
    assert!(
        log.contains("layer transfer interrupted; resuming"),
        "{log}"
    );
    assert!(log.contains("fetched from the control plane"), "{log}");
    assert!(partial(&fleet, &layer).is_none(), "the partial file stays");
    // Its task's image, over the second session too: nothing was refused.
    assert_eq!(refusals(&fleet.cp), Vec::<String>::new());
}

/// The messages of the control plane's `image.refused` events.
fn refusals(cp: &ControlPlane) -> Vec<String> {
    let events = cp.api().events(0, 1000).expect("events");
    events
        .into_iter()
        .filter(|e| e.kind == "image.refused")
        .map(|e| e.message)
        .collect()
}

#[test]
fn a_prefetch_brings_a_pushed_image_to_the_node_it_asks_and_to_no_other() {
    let fleet = Fleet::start(&[&[], &[]]);
    for h in &fleet.hosts {
        h.lan_only();
    }
    let work = tempfile::tempdir().expect("work");
    let (archive, _, _) = image_with_noise(work.path(), 256 << 10);
    fleet
        .cp
        .flotilla_ok(&["image", "push", &path(&archive), "--name", "shop/early:1"]);
    let (asked, other) = (&fleet.ids[0], &fleet.ids[1]);
    let out = fleet
        .cp
        .flotilla_ok(&["image", "prefetch", "shop/early:1", "--node", asked]);
    assert!(out.contains(&format!("{asked}: pulled sha256:")), "{out}");
    assert!(!out.contains(other.as_str()), "{out}");
    let log = fleet.agents[0].log();
    assert!(log.contains("fetched from the control plane"), "{log}");
    assert!(fleet.nodes[0]
        .ctr_ok(&["image", "ls"])
        .contains("shop/early"));
    let images = fleet.nodes[1].ctr_ok(&["image", "ls"]);
    assert!(!images.contains("shop/early"), "{images}");

    // A local image (as skopeo and podman name one: `localhost/`), found by its short name as
    // podman finds it: by `image inspect`, and by a task whose container names it, on a node
    // that cannot reach any registry.
    fleet.cp.flotilla_ok(&[
        "image",
        "push",
        &path(&archive),
        "--name",
        "localhost/shop/local:1",
    ]);
    let local: StoredImage = fleet
        .cp
        .flotilla_json(&["image", "inspect", "shop/local:1"]);
    assert_eq!(local.name, "localhost/shop/local:1");
    fleet.register(&serving("local", "shop/local:1"));
    let id = fleet.cp.run_task(&TaskRun {
        node: Some(other.clone()),
        ..TaskRun::new("local")
    })[0]
        .id
        .clone();
    wait(
        "the local image's task running",
        Duration::from_secs(60),
        || {
            let t = fleet.cp.task(&id);
            assert_ne!(t.state, TaskState::Stopped, "{t:#?}");
            t.state == TaskState::Running
        },
    );
    let images = fleet.nodes[1].ctr_ok(&["image", "ls"]);
    assert!(images.contains("localhost/shop/local:1"), "{images}");
    fleet.cp.flotilla_ok(&["task", "stop", &id]);
    let out = fleet.cp.flotilla_ok(&["image", "rm", "shop/local:1"]);
    assert!(out.contains("localhost/shop/local:1"), "{out}");
    assert_eq!(refusals(&fleet.cp), Vec::<String>::new());
    fleet.finish();
}

#[test]
fn a_blob_the_control_plane_serves_corrupt_is_refused_naming_it() {
    let fleet = Fleet::start(&[&[]]);
    fleet.hosts[0].lan_only();
    let work = tempfile::tempdir().expect("work");
    let (archive, layer, size) = image_with_noise(work.path(), 256 << 10);
    fleet
        .cp
        .flotilla_ok(&["image", "push", &path(&archive), "--name", "shop/bad:1"]);
    // Bit rot in the control plane's store: one byte of the layer, same length.
    let blob = fleet.cp.data.join("images/blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&blob).expect("blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("rot");
    assert_eq!(bytes.len() as u64, size);

    fleet.register(&serving("bad", "shop/bad:1"));
    let id = fleet.cp.run_one("bad");
    wait("the task stopped", Duration::from_secs(60), || {
        fleet.cp.task(&id).state == TaskState::Stopped
    });
    let reason = fleet.cp.task(&id).stop_reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "container main could not start: pulling image 'docker.io/shop/bad:1' from the \
             control plane: layer {layer} is corrupt: content hashes to sha256:"
        )),
        "{reason}"
    );
    let log = fleet.agents[0].log();
    assert!(
        log.contains("fetching from the control plane failed, trying its registry"),
        "{log}"
    );
    assert!(
        partial(&fleet, &layer).is_none(),
        "the corrupt bytes are kept"
    );
    let images = fleet.nodes[0].ctr_ok(&["image", "ls"]);
    assert!(!images.contains("shop/bad"), "{images}");
}

#[test]
fn the_control_plane_pulls_a_reference_and_for_a_node_that_cannot_reach_the_registry() {
    // A registry the control plane reaches (on its loopback) and the node does not (its own
    // loopback has nothing there, and it has no route beyond its LAN).
    let work = tempfile::tempdir().expect("work");
    let storage = tempfile::tempdir().expect("registry storage");
    let registry = Registry::start(storage.path(), Auth::None).expect("registry");
    let (_, layer, _) = image_with_noise(work.path(), 64 << 10);
    let layout = work.path().join("layout");
    registry.push(&layout, "1", "shop/app").expect("push tag 1");
    registry
        .push(&layout, "1", "shop/web")
        .expect("push shop/web");
    // An image of another architecture than the node's.
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let foreign = work.path().join("foreign");
    write_layout(&foreign, "1", &busybox_image(other_arch)).expect("foreign layout");
    registry
        .push(&foreign, "1", "shop/foreign")
        .expect("push shop/foreign");
    let addr = registry.addr.clone();
    let fleet = Fleet::start_with(&[&[]], |_| {
        (
            vec!["--registry-mirror".into(), format!("{addr}=http://{addr}")],
            vec![],
        )
    });
    fleet.hosts[0].lan_only();

    // An operator's pull: `image push REF` (the control plane's mirror is tried first; here
    // it is the registry itself, which --insecure would reach over plain HTTP too).
    let one = format!("{addr}/shop/app:1");
    let pushed: Vec<StoredImage> = fleet
        .cp
        .flotilla_json(&["image", "push", &one, "--insecure"]);
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0].name, one);
    assert!(
        pushed[0].layers.iter().any(|l| l.digest == layer),
        "{pushed:?}"
    );
    // Where it came from: the mirror, and it says so.
    let mirror = format!("mirror http://{addr}");
    assert_eq!(
        pushed[0].source,
        Some(ImageSource::Pull {
            from: mirror.clone(),
            node: None
        })
    );
    assert!(
        has_blob(&fleet.cp, &layer),
        "the layer is in the content store"
    );
    // A reference that is not in the registry, named with what the registry answered.
    let failed = fleet.cp.flotilla(&[
        "image",
        "push",
        &format!("{addr}/shop/none:1"),
        "--insecure",
    ]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains(&format!("pulling image '{addr}/shop/none:1'")),
        "{err}"
    );
    assert!(err.contains("404"), "{err}");

    // Pull-through: the task's image (shop/web) is in neither store; the node's own pull cannot
    // reach the registry, so the control plane pulls it (through its mirror) and the node
    // fetches it over its session.
    let two = format!("{addr}/shop/web:1");
    fleet.register(&serving("app", &two));
    let id = fleet.cp.run_one("app");
    wait("the task running", Duration::from_secs(60), || {
        let t = fleet.cp.task(&id);
        assert_ne!(t.state, TaskState::Stopped, "{t:#?}");
        t.state == TaskState::Running
    });
    let log = fleet.agents[0].log();
    assert!(
        log.contains("the control plane pulled it for this node: fetched from there"),
        "{log}"
    );
    let cp_log = fleet.cp.log();
    assert!(
        cp_log.contains(&format!("source=mirror http://{addr}")) && cp_log.contains("image pulled"),
        "{cp_log}"
    );
    let images: Vec<StoredImage> = fleet.cp.flotilla_json(&["image", "ls"]);
    assert!(images.iter().any(|i| i.name == two), "{images:?}");
    // Each pull is an `image.pulled` event naming its source, and the node it was for.
    let events = fleet.cp.api().events(0, 1000).expect("events");
    let mut pulled: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.kind == "image.pulled")
        .map(|e| (e.subject.clone(), e.message.clone()))
        .collect();
    pulled.sort();
    let digest_of = |name: &str| {
        images
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.manifest.digest.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        pulled,
        [
            (
                one.clone(),
                format!("{} pulled from {mirror}", digest_of(&one))
            ),
            (
                two.clone(),
                format!(
                    "{} pulled from {mirror} for node {}",
                    digest_of(&two),
                    fleet.ids[0]
                )
            ),
        ]
    );
    // The node's task's image: the pull for it and its blobs were its to have.
    assert_eq!(refusals(&fleet.cp), Vec::<String>::new());

    // A name the control plane holds for another platform is not replaced by a node's
    // pull-through: refused, saying so, and the operator's image is kept.
    let foreign = format!("{addr}/shop/foreign:1");
    let held: Vec<StoredImage> = fleet.cp.flotilla_json(&[
        "image",
        "push",
        &foreign,
        "--platform",
        &format!("linux/{other_arch}"),
    ]);
    fleet.register(&serving("foreign", &foreign));
    let id = fleet.cp.run_one("foreign");
    wait("the foreign task stopped", Duration::from_secs(60), || {
        fleet.cp.task(&id).state == TaskState::Stopped
    });
    let log = fleet.agents[0].log();
    assert!(
        log.contains(&format!(
            "the control plane did not pull it: image '{foreign}': the control plane holds it \
             for linux/{other_arch}, not for linux/{}",
            host_arch()
        )),
        "{log}"
    );
    let after: StoredImage = fleet.cp.flotilla_json(&["image", "inspect", &foreign]);
    assert_eq!(
        after.manifest, held[0].manifest,
        "the held image was replaced"
    );
}
