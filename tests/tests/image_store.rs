//! The node's image store through the real `nodeagent ctr image` binary: pulls from a real
//! `docker-registry` (anonymous, basic, token), imports (OCI archive, docker-save), hostile
//! layers, corruption, resume, platforms, and the unpacked trees under a real overlayfs mount.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use anyhow::Result;
use flotilla_runtime::image::{ImageDetails, ImageRecord, PressureReport, PruneReport};
use flotilla_tests::disk::Tmpfs;
use flotilla_tests::image::{self, busybox_image, tree_listing, Compression, ImageSpec, Layer};
use flotilla_tests::registry::{Auth, Proxy, Registry, TokenServer};
use flotilla_tests::{bin, host_arch, require_root};

/// One node's store, driven through `nodeagent ctr`.
struct Node {
    dir: tempfile::TempDir,
    /// The data directory, when not `dir` itself.
    data: Option<PathBuf>,
}

impl Node {
    fn new() -> Self {
        require_root();
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            data: None,
        }
    }

    /// A node whose data directory is `data` (on a filesystem of the test's own).
    fn at(data: PathBuf) -> Self {
        Self {
            data: Some(data),
            ..Self::new()
        }
    }

    fn data(&self) -> &Path {
        self.data.as_deref().unwrap_or(self.dir.path())
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_stdin(args, None)
    }

    fn ctr_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("nodeagent"));
        cmd.arg("--data-dir").arg(self.data()).arg("ctr").args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nodeagent");
        if let Some(s) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(s.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait nodeagent")
    }

    /// Runs a ctr command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "nodeagent ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a ctr command that must fail; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            !out.status.success(),
            "nodeagent ctr {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn images(&self) -> Vec<ImageRecord> {
        serde_json::from_str(&self.ok(&["image", "ls", "-o", "json"])).expect("ls json")
    }

    fn inspect(&self, name: &str) -> ImageDetails {
        serde_json::from_str(&self.ok(&["image", "inspect", name])).expect("inspect json")
    }

    /// Every unpacked layer of `name`, lowest first, as canonical listings.
    fn trees(&self, name: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        self.inspect(name)
            .layer_dirs
            .iter()
            .map(|d| tree_listing(d).expect("listing"))
            .collect()
    }

    fn layer_count(&self) -> usize {
        std::fs::read_dir(self.data().join("images/layers"))
            .expect("layers dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
            .count()
    }

    fn tmp_is_empty(&self) -> bool {
        std::fs::read_dir(self.data().join("images/tmp"))
            .expect("tmp dir")
            .next()
            .is_none()
    }
}

/// A layout of the standard busybox image, pushed to a fresh anonymous registry.
struct Published {
    layout: tempfile::TempDir,
    storage: tempfile::TempDir,
    registry: Registry,
    spec: ImageSpec,
    built: image::BuiltImage,
}

fn publish(spec: ImageSpec) -> Result<Published> {
    let layout = tempfile::tempdir()?;
    let built = image::write_layout(layout.path(), "1.0", &spec)?;
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(storage.path(), Auth::None)?;
    registry.push(layout.path(), "1.0", "test/busybox")?;
    Ok(Published {
        layout,
        storage,
        registry,
        spec,
        built,
    })
}

#[test]
fn pull_and_both_imports_yield_the_same_unpacked_tree() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;

    let pulled = Node::new();
    let out = pulled.ok(&[
        "image",
        "pull",
        "--insecure",
        &format!("{}/test/busybox:1.0", p.registry.addr),
    ]);
    assert!(out.contains("pulled"), "{out}");
    let name = format!("{}/test/busybox:1.0", p.registry.addr);

    let archive_dir = tempfile::tempdir()?;
    let oci_archive = archive_dir.path().join("busybox-oci.tar");
    image::tar_dir(p.layout.path(), &oci_archive)?;
    let from_oci = Node::new();
    from_oci.ok(&[
        "image",
        "import",
        oci_archive.to_str().expect("utf8"),
        "--name",
        "local/busybox:1.0",
    ]);

    let docker_save = archive_dir.path().join("busybox-save.tar");
    image::write_docker_save(&docker_save, "local/busybox:1.0", &p.spec, &p.built)?;
    let from_save = Node::new();
    from_save.ok(&["image", "import", docker_save.to_str().expect("utf8")]);

    let reference = pulled.trees(&name);
    assert_eq!(reference.len(), 3);
    assert_eq!(
        from_oci.trees("local/busybox:1.0"),
        reference,
        "oci-archive import differs from pull"
    );
    assert_eq!(
        from_save.trees("local/busybox:1.0"),
        reference,
        "docker-save import differs from pull"
    );

    // The contents a container relies on.
    let [base, upper, top] = [&reference[0], &reference[1], &reference[2]];
    assert!(
        base["bin/sh"].starts_with("symlink->busybox"),
        "{}",
        base["bin/sh"]
    );
    assert!(base["bin/busybox"].contains("nlink=2") && base["bin/busybox"].contains("mode=755"));
    assert!(
        base["data/owned"].contains("mode=4755 uid=1000 gid=1000"),
        "{}",
        base["data/owned"]
    );
    assert!(base["tmp"].contains("mode=1777"));
    assert!(
        upper["data/old"].starts_with("chardev 0:0"),
        "whiteout: {}",
        upper["data/old"]
    );
    assert!(
        upper["data/dir"].contains("trusted.overlay.opaque=y"),
        "opaque: {}",
        upper["data/dir"]
    );
    assert!(!upper.contains_key("data/.wh.old") && !upper.contains_key("dev-null-from-image"));
    assert!(
        top["etc/motd"].contains("user.flotilla=yes"),
        "{}",
        top["etc/motd"]
    );

    // Listing and inspect show what an operator needs.
    let ls = pulled.ok(&["image", "ls"]);
    assert!(
        ls.contains(&name) && ls.contains(&format!("linux/{}", host_arch())),
        "{ls}"
    );
    let imgs = pulled.images();
    assert_eq!(imgs[0].digest.to_string(), p.built.manifest);
    assert_eq!(imgs[0].config.to_string(), p.built.config);
    Ok(())
}

#[test]
fn layers_are_shared_and_rm_and_prune_free_only_unreferenced_content() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;
    let node = Node::new();
    let name = format!("{}/test/busybox:1.0", p.registry.addr);
    node.ok(&["image", "pull", "--insecure", &name]);
    assert_eq!(node.layer_count(), 3);
    // Same image under a second name, and again through import: no new layer.
    node.ok(&["image", "tag", &name, "local/alias:2"]);
    let oci_archive = p.layout.path().with_extension("tar");
    image::tar_dir(p.layout.path(), &oci_archive)?;
    let out = node.ok(&[
        "image",
        "import",
        oci_archive.to_str().expect("utf8"),
        "--name",
        "local/again:3",
    ]);
    let _ = std::fs::remove_file(&oci_archive);
    assert!(
        out.contains("exists") && !out.contains("unpacking"),
        "import re-unpacked shared layers: {out}"
    );
    assert_eq!(node.layer_count(), 3);
    assert_eq!(node.images().len(), 3);

    node.ok(&["image", "rm", &name, "local/alias:2"]);
    assert_eq!(
        node.layer_count(),
        3,
        "layers still used by local/again:3 were freed"
    );
    let out = node.ok(&["image", "rm", "local/again:3"]);
    assert!(out.contains("freed 3 layers"), "{out}");
    assert_eq!(node.layer_count(), 0);
    let blobs = std::fs::read_dir(node.data().join("images/blobs/sha256"))?.count();
    assert_eq!(blobs, 0, "manifest/config blobs left behind");
    let err = node.fails(&["image", "inspect", "local/again:3"]);
    assert!(err.contains("not found"), "{err}");
    let pruned: PruneReport = serde_json::from_str(&node.ok(&["image", "prune", "-o", "json"]))?;
    assert_eq!(pruned.layers, 0);
    Ok(())
}

#[test]
fn a_mirror_serves_first_and_the_registry_when_the_mirror_fails() -> Result<()> {
    let layout = tempfile::tempdir()?;
    let built = image::write_layout(layout.path(), "1.0", &busybox_image(host_arch()))?;
    let (origin_storage, mirror_storage) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let origin = Registry::start(origin_storage.path(), Auth::None)?;
    let mirror = Registry::start(mirror_storage.path(), Auth::None)?;
    // `only-mirrored` is on the mirror alone, `only-origin` on the registry alone; `both` on
    // both (its mirror copy is made corrupt below).
    mirror.push(layout.path(), "1.0", "test/only-mirrored")?;
    origin.push(layout.path(), "1.0", "test/only-origin")?;
    mirror.push(layout.path(), "1.0", "test/both")?;
    origin.push(layout.path(), "1.0", "test/both")?;
    let mirror_url = format!("http://{}", mirror.addr);
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!(
            "registry_mirrors = {{ \"{}\" = [\"{mirror_url}\"] }}\n",
            origin.addr
        ),
    )?;
    let config = config.path().to_str().expect("utf8");
    let node = Node::new();
    let pull_on = |node: &Node, name: &str, through: &[&str]| {
        let mut args = vec!["image", "pull", "--insecure", "-o", "json"];
        args.extend_from_slice(through);
        args.push(name);
        node.ctr(&args)
    };
    let pull = |name: &str, through: &[&str]| pull_on(&node, name, through);
    let record = |out: &Output| -> ImageRecord {
        assert!(
            out.status.success(),
            "pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut recs: Vec<ImageRecord> = serde_json::from_slice(&out.stdout).expect("pull -o json");
        recs.pop().expect("one record")
    };

    // The name says the registry; the image comes from the mirror, the only place it is.
    let name = format!("{}/test/only-mirrored:1.0", origin.addr);
    let rec = record(&pull(&name, &["--config", config]));
    assert_eq!(rec.name, name);
    assert_eq!(rec.mirror.as_deref(), Some(mirror_url.as_str()));
    assert_eq!(
        node.images()[0].mirror.as_deref(),
        Some(mirror_url.as_str())
    );
    // Without the mirror configured, the registry does not have it.
    node.ok(&["image", "rm", &name]);
    let err = String::from_utf8_lossy(&pull(&name, &[]).stderr).into_owned();
    assert!(err.contains("404 Not Found"), "{err}");

    // The mirror lacks it: the registry serves it, and the mirror's answer is logged.
    let name = format!("{}/test/only-origin:1.0", origin.addr);
    let out = pull(&name, &["--config", config]);
    let rec = record(&out);
    assert_eq!(rec.mirror, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mirror failed")
            && err.contains(&mirror_url)
            && err.contains(&format!("registry={}", origin.addr))
            && err.contains("404 Not Found"),
        "{err}"
    );

    // A corrupt copy on the mirror is refused by digest and the registry's is stored.
    let blob = mirror.blob_file(&built.layers[1]);
    let mut data = std::fs::read(&blob)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data)?;
    let name = format!("{}/test/both:1.0", origin.addr);
    let mirror_flag = format!("{}={mirror_url}", origin.addr);
    // (A node that holds none of its layers yet: a layer held is not fetched again.)
    let fresh = Node::new();
    let out = pull_on(&fresh, &name, &["--registry-mirror", &mirror_flag]);
    let rec = record(&out);
    assert_eq!(rec.mirror, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt") && err.contains(&built.layers[1]),
        "{err}"
    );
    assert_eq!(fresh.inspect(&name).record.digest, rec.digest);
    assert_eq!(
        fresh.trees(&name),
        node.trees(&format!("{}/test/only-origin:1.0", origin.addr))
    );

    // The mirror down: the registry serves what it has; what it lacks names both.
    let mirror_addr = mirror.addr.clone();
    drop(mirror);
    node.ok(&[
        "image",
        "rm",
        &format!("{}/test/only-origin:1.0", origin.addr),
    ]);
    let out = pull(
        &format!("{}/test/only-origin:1.0", origin.addr),
        &["--config", config],
    );
    let rec = record(&out);
    assert_eq!(rec.mirror, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mirror failed") && err.contains(&mirror_url),
        "{err}"
    );
    let out = pull(
        &format!("{}/test/nowhere:1.0", origin.addr),
        &["--config", config],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "mirror {mirror_url} failed (registry {mirror_addr}:"
        )) && last.contains(&format!(
            "then registry {}: answered 404 Not Found",
            origin.addr
        )) && last.contains("check the image's name and tag"),
        "{err}"
    );
    assert!(node.tmp_is_empty());
    Ok(())
}

#[test]
fn basic_auth_pulls_with_credentials_and_refuses_without() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;
    let secured = Registry::start(
        p.storage.path(),
        Auth::Basic {
            user: "edge".into(),
            password: "s3cret-pass".into(),
        },
    )?;
    let name = format!("{}/test/busybox:1.0", secured.addr);
    let node = Node::new();
    let err = node.fails(&["image", "pull", "--insecure", &name]);
    assert!(
        err.contains("authentication required; pass `--user"),
        "{err}"
    );
    let err = node.fails(&["image", "pull", "--insecure", "--user", "edge:wrong", &name]);
    assert!(
        err.contains("the credentials were refused; check the user and password"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "password echoed in error: {err}");
    let out = node.ctr_stdin(
        &[
            "image",
            "pull",
            "--insecure",
            "--user",
            "edge",
            "--password-stdin",
            &name,
        ],
        Some("s3cret-pass\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.images()[0].name, name);
    Ok(())
}

#[test]
fn token_auth_pulls_through_the_bearer_challenge() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;
    let tokens = TokenServer::start("robot", "tok-pass")?;
    let secured = Registry::start(
        p.storage.path(),
        Auth::Token {
            realm: tokens.realm.clone(),
            cert: tokens.cert.clone(),
        },
    )?;
    let name = format!("{}/test/busybox:1.0", secured.addr);
    let node = Node::new();
    let err = node.fails(&["image", "pull", "--insecure", &name]);
    assert!(
        err.contains("authentication required; pass `--user"),
        "{err}"
    );
    node.ok(&[
        "image",
        "pull",
        "--insecure",
        "--user",
        "robot:tok-pass",
        &name,
    ]);
    assert!(tokens.issued.load(Ordering::SeqCst) >= 1);
    assert_eq!(node.layer_count(), 3);
    Ok(())
}

#[test]
fn corrupt_blob_is_refused_and_nothing_is_stored() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;
    // Flip bytes of the middle (uncompressed) layer in the registry's storage.
    let blob = p.registry.blob_file(&p.built.layers[1]);
    let mut data = std::fs::read(&blob)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data)?;
    let node = Node::new();
    let err = node.fails(&[
        "image",
        "pull",
        "--insecure",
        &format!("{}/test/busybox:1.0", p.registry.addr),
    ]);
    assert!(
        err.contains("corrupt") && err.contains(&p.built.layers[1]),
        "{err}"
    );
    assert_eq!(node.images().len(), 0);
    assert_eq!(node.layer_count(), 0, "layers of a failed pull left behind");
    assert!(node.tmp_is_empty());

    // The same corruption in an OCI layout import.
    let layout_blob = p
        .layout
        .path()
        .join("blobs/sha256")
        .join(&p.built.layers[1][7..]);
    let mut data = std::fs::read(&layout_blob)?;
    data[10] ^= 0xff;
    std::fs::write(&layout_blob, data)?;
    let err = node.fails(&[
        "image",
        "import",
        p.layout.path().to_str().expect("utf8"),
        "--name",
        "x/y:z",
    ]);
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(node.layer_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_resumes_with_a_range_request() -> Result<()> {
    // One big layer so the cut lands inside its body.
    let mut big = Layer::new();
    let noise: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    big.file("noise", &noise, 0o644);
    let spec = ImageSpec {
        layers: vec![(big.finish(), Compression::None)],
        arch: host_arch().into(),
        cmd: vec![],
    };
    let p = publish(spec)?;
    let proxy = Proxy::start(&p.registry.addr).await?;
    let name = format!("{}/test/busybox:1.0", proxy.addr);
    let node = Node::new();

    // Every connection is cut after 1 MiB: the pull retries a few times, fails, and keeps what
    // it got.
    proxy.cut_after.store(1 << 20, Ordering::SeqCst);
    let out = tokio::task::spawn_blocking({
        let (d, n) = (node.data().to_path_buf(), name.clone());
        move || {
            Command::new(bin("nodeagent"))
                .arg("--data-dir")
                .arg(d)
                .args(["ctr", "image", "pull", "--insecure", &n])
                .output()
        }
    })
    .await??;
    assert!(!out.status.success());
    let partial: PathBuf = node
        .data()
        .join("images/ingest")
        .join(format!("{}.partial", &p.built.layers[0][7..]));
    let held = std::fs::metadata(&partial)?.len();
    assert!(held > 0, "nothing kept from the interrupted download");

    // The link is back: the next pull asks only for the rest.
    proxy.cut_after.store(0, Ordering::SeqCst);
    let before = proxy.log.lock().expect("log").bytes_down;
    let out = tokio::task::spawn_blocking({
        let (d, n) = (node.data().to_path_buf(), name.clone());
        move || {
            Command::new(bin("nodeagent"))
                .arg("--data-dir")
                .arg(d)
                .args(["ctr", "image", "pull", "--insecure", &n])
                .output()
        }
    })
    .await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = proxy.log.lock().expect("log").clone();
    let blob_path = format!("/blobs/{}", p.built.layers[0]);
    let ranged: Vec<&String> = log
        .requests
        .iter()
        .filter(|r| r.contains(&blob_path) && r.contains("range=bytes="))
        .collect();
    assert!(!ranged.is_empty(), "no range request: {:?}", log.requests);
    let last = ranged.last().expect("ranged");
    let from: u64 = last
        .rsplit("bytes=")
        .next()
        .and_then(|s| s.trim_end_matches('-').parse().ok())
        .expect("range start");
    assert!(from >= held, "resumed from {from}, had {held}");
    let second_pull_bytes = log.bytes_down - before;
    assert!(
        second_pull_bytes < noise.len() as u64,
        "second pull transferred {second_pull_bytes} bytes: it started over"
    );
    assert!(!partial.exists(), "partial download not cleaned up");
    let tree = node.trees(&name);
    assert_eq!(
        tree[0]["noise"].split_whitespace().nth(1),
        Some(image::digest(&noise).as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_fetch_each_layer_once() -> Result<()> {
    let p = publish(busybox_image(host_arch()))?;
    let proxy = Proxy::start(&p.registry.addr).await?;
    let name = format!("{}/test/busybox:1.0", proxy.addr);
    let node = Node::new();
    let spawn = || {
        Command::new(bin("nodeagent"))
            .arg("--data-dir")
            .arg(node.data())
            .args(["ctr", "image", "pull", "--insecure", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    let (a, b) = (spawn()?, spawn()?);
    for c in [a, b] {
        let out = c.wait_with_output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = proxy.log.lock().expect("log").clone();
    for layer in &p.built.layers {
        let gets = log
            .requests
            .iter()
            .filter(|r| r.contains(&format!("/blobs/{layer}")))
            .count();
        assert_eq!(
            gets, 1,
            "layer {layer} fetched {gets} times: {:?}",
            log.requests
        );
    }
    assert_eq!(node.layer_count(), 3);
    Ok(())
}

#[test]
fn index_pull_picks_the_node_platform_and_names_what_it_has() -> Result<()> {
    let layout = tempfile::tempdir()?;
    let imgs = image::write_multiarch_layout(
        layout.path(),
        "multi",
        &[busybox_image("amd64"), busybox_image("arm64")],
    )?;
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(storage.path(), Auth::None)?;
    registry.push(layout.path(), "multi", "test/multi")?;
    let name = format!("{}/test/multi:multi", registry.addr);

    let node = Node::new();
    node.ok(&["image", "pull", "--insecure", &name]);
    let want = imgs
        .iter()
        .find(|i| i.arch == host_arch())
        .expect("host arch in fixture");
    assert_eq!(node.images()[0].digest.to_string(), want.manifest);
    let arch_file = &node.trees(&name)[0]["arch"];
    assert!(
        arch_file.contains(&image::digest(host_arch().as_bytes())),
        "{arch_file}"
    );

    let other = Node::new();
    other.ok(&[
        "image",
        "pull",
        "--insecure",
        "--platform",
        "linux/arm64",
        &name,
    ]);
    assert_eq!(other.images()[0].platform.architecture, "arm64");

    let err = Node::new().fails(&[
        "image",
        "pull",
        "--insecure",
        "--platform",
        "linux/riscv64",
        &name,
    ]);
    assert!(
        err.contains("linux/riscv64")
            && err.contains("linux/amd64")
            && err.contains("linux/arm64/v8"),
        "{err}"
    );
    Ok(())
}

/// A directory outside the store that hostile layers aim at; must stay untouched.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("victim dir");
        std::fs::write(dir.path().join("secret"), b"do not touch").expect("secret");
        Self { dir }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn assert_untouched(&self, case: &str) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("victim")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["secret".to_string()],
            "{case}: something was written outside the layer"
        );
        let secret = std::fs::read(self.dir.path().join("secret")).expect("secret");
        assert_eq!(secret, b"do not touch", "{case}: secret changed");
        let meta = std::fs::metadata(self.dir.path().join("secret")).expect("secret");
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&meta),
            1,
            "{case}: secret was hardlinked"
        );
    }
}

/// One entry of a hostile layer.
enum Op {
    File(String),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() -> Result<()> {
    let victim = Victim::new();
    let v = victim.path();
    let up = "../".repeat(20);
    let rel_victim = format!("{up}{}", v.trim_start_matches('/'));
    use Op::*;
    let cases: Vec<(&str, Vec<Op>, &str)> = vec![
        (
            "dotdot file",
            vec![File(format!("{rel_victim}/pwned"))],
            "'..'",
        ),
        (
            "absolute file",
            vec![File(format!("{v}/pwned"))],
            "absolute",
        ),
        (
            "symlink then write",
            vec![Symlink("evil".into(), v.clone()), File("evil/pwned".into())],
            "symlink",
        ),
        (
            "relative symlink then write",
            vec![
                Symlink("evil".into(), rel_victim.clone()),
                File("evil/pwned".into()),
            ],
            "symlink",
        ),
        (
            "symlinked parent directory",
            vec![
                Dir("a".into()),
                Symlink("a/b".into(), v.clone()),
                Dir("a/b/c".into()),
                File("a/b/c/pwned".into()),
            ],
            "symlink",
        ),
        (
            "symlink then directory",
            vec![Symlink("evil".into(), v.clone()), Dir("evil/newdir".into())],
            "symlink",
        ),
        (
            "hardlink absolute",
            vec![
                Hardlink("hl".into(), format!("{v}/secret")),
                File("hl".into()),
            ],
            "hardlink",
        ),
        (
            "hardlink dotdot",
            vec![Hardlink("hl".into(), format!("{rel_victim}/secret"))],
            "hardlink",
        ),
        (
            "hardlink through symlink",
            vec![
                Symlink("s".into(), v.clone()),
                Hardlink("hl".into(), "s/secret".into()),
            ],
            "hardlink",
        ),
        (
            "whiteout escape",
            vec![File(format!("{rel_victim}/.wh.secret"))],
            "'..'",
        ),
        (
            "opaque through symlink",
            vec![
                Symlink("evil".into(), v.clone()),
                File("evil/.wh..wh..opq".into()),
            ],
            "symlink",
        ),
    ];
    for (case, ops, expect) in cases {
        let mut layer = Layer::new();
        layer.dir("ok", 0o755).file("ok/file", b"fine", 0o644);
        for op in ops {
            match op {
                File(p) => layer.file(&p, b"x", 0o644),
                Dir(p) => layer.dir(&p, 0o755),
                Symlink(p, t) => layer.symlink(&p, &t),
                Hardlink(p, t) => layer.hardlink(&p, &t),
            };
        }
        let spec = ImageSpec {
            layers: vec![(layer.finish(), Compression::Gzip)],
            arch: host_arch().into(),
            cmd: vec![],
        };
        let layout = tempfile::tempdir()?;
        let built = image::write_layout(layout.path(), "evil", &spec)?;
        let node = Node::new();
        let err = node.fails(&[
            "image",
            "import",
            layout.path().to_str().expect("utf8"),
            "--name",
            "evil/image:1",
        ]);
        assert!(
            err.contains(expect),
            "{case}: error does not say why: {err}"
        );
        assert!(
            err.contains(&built.layers[0]) && err.contains("evil/image:1"),
            "{case}: error lacks image/layer: {err}"
        );
        assert!(
            err.contains("entry '"),
            "{case}: error lacks the entry: {err}"
        );
        victim.assert_untouched(case);
        assert_eq!(node.images().len(), 0, "{case}: image recorded");
        assert_eq!(node.layer_count(), 0, "{case}: layer stored");
        assert!(node.tmp_is_empty(), "{case}: temporary unpack left behind");
    }
    Ok(())
}

#[test]
fn replacing_a_symlink_with_a_file_writes_inside_the_layer() -> Result<()> {
    let victim = Victim::new();
    let mut layer = Layer::new();
    layer
        .symlink("link", &format!("{}/secret", victim.path()))
        .file("link", b"inside", 0o644)
        .char_device("dev/sda", 8, 0);
    let spec = ImageSpec {
        layers: vec![(layer.finish(), Compression::None)],
        arch: host_arch().into(),
        cmd: vec![],
    };
    let layout = tempfile::tempdir()?;
    image::write_layout(layout.path(), "x", &spec)?;
    let node = Node::new();
    node.ok(&[
        "image",
        "import",
        layout.path().to_str().expect("utf8"),
        "--name",
        "ok/image:1",
    ]);
    victim.assert_untouched("symlink replaced by file");
    let tree = &node.trees("ok/image:1")[0];
    assert!(
        tree["link"].starts_with(&format!("file {}", image::digest(b"inside"))),
        "{}",
        tree["link"]
    );
    assert!(
        !tree.contains_key("dev/sda"),
        "device node from the image was created"
    );
    Ok(())
}

#[test]
fn archive_without_a_name_asks_for_one_and_bad_input_is_named() -> Result<()> {
    let layout = tempfile::tempdir()?;
    image::write_layout(layout.path(), "", &busybox_image(host_arch()))?;
    let node = Node::new();
    let err = node.fails(&["image", "import", layout.path().to_str().expect("utf8")]);
    assert!(err.contains("--name"), "{err}");
    let err = node.fails(&["image", "import", "/nonexistent/archive.tar"]);
    assert!(err.contains("/nonexistent/archive.tar"), "{err}");
    let junk = layout.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all")?;
    let err = node.fails(&["image", "import", junk.to_str().expect("utf8")]);
    assert!(err.contains("junk.tar"), "{err}");
    let err = node.fails(&["image", "pull", "Not A Reference"]);
    assert!(err.contains("invalid image reference"), "{err}");
    assert!(node.tmp_is_empty());
    Ok(())
}

/// Unmounts on drop, also when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn unpacked_layers_stack_correctly_under_overlayfs() -> Result<()> {
    let layout = tempfile::tempdir()?;
    image::write_layout(layout.path(), "latest", &busybox_image(host_arch()))?;
    let node = Node::new();
    node.ok(&[
        "image",
        "import",
        layout.path().to_str().expect("utf8"),
        "--name",
        "ovl/busybox:1",
    ]);
    let mut lower: Vec<String> = node
        .inspect("ovl/busybox:1")
        .layer_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    lower.reverse();
    let work = tempfile::tempdir()?;
    let (upper, wd, merged) = (
        work.path().join("upper"),
        work.path().join("work"),
        work.path().join("merged"),
    );
    for d in [&upper, &wd, &merged] {
        std::fs::create_dir(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        wd.display()
    );
    let opts = std::ffi::CString::new(opts)?;
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )?;
    let _guard = Mount(merged.clone());
    assert!(
        !merged.join("data/old").exists(),
        "whiteout did not hide data/old"
    );
    assert!(merged.join("data/keep").exists());
    let mut dir: Vec<String> = std::fs::read_dir(merged.join("data/dir"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::result::Result<_, _>>()?;
    dir.sort();
    assert_eq!(
        dir,
        vec!["new".to_string()],
        "opaque directory still shows lower entries"
    );
    assert_eq!(
        std::fs::read_to_string(merged.join("etc/motd"))?,
        "hello from flotilla\n"
    );
    assert_eq!(
        std::fs::read_link(merged.join("bin/sh"))?,
        PathBuf::from("busybox")
    );
    Ok(())
}

/// The busybox image with one more layer: `mib` MiB of bytes no other image has (`seed`), stored
/// uncompressed so the layer costs what it says.
fn filled_image(seed: u64, mib: usize) -> ImageSpec {
    let mut spec = busybox_image(host_arch());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut fill = Layer::new();
    fill.file("fill", &data, 0o644);
    spec.layers.push((fill.finish(), Compression::None));
    spec
}

#[test]
fn disk_pressure_removes_the_least_recently_used_unused_images_and_keeps_used_ones() -> Result<()> {
    require_root();
    // 64 MiB of its own: the busybox base (about 2 MiB, shared) and four images of 10 MiB
    // each fill it to about 66 %.
    let fs = Tmpfs::mount("64m")?;
    let node = Node::at(fs.path().join("node"));
    let config = fs.path().join("nodeagent.toml");
    std::fs::write(
        &config,
        "image_gc_high_threshold_percent = 60\nimage_gc_low_threshold_percent = 45\n\
         image_gc_minimum_age = 0\n",
    )?;
    let config = config.to_str().expect("utf8");
    let layouts = tempfile::tempdir()?;
    let import = |seed: u64, name: &str| -> Result<()> {
        let layout = layouts.path().join(name.replace(['/', ':'], "-"));
        image::write_layout(&layout, "1.0", &filled_image(seed, 10))?;
        node.ok(&[
            "image",
            "import",
            layout.to_str().expect("utf8"),
            "--name",
            name,
        ]);
        Ok(())
    };
    let cgroup_parent = format!("flotilla-test-gc-{}", std::process::id());
    import(1, "local/used:1")?;
    // A container of local/used ends and stays: its image is in use, and the least recently
    // used of all.
    let out = node.ctr(&[
        "--cgroup-parent",
        &cgroup_parent,
        "run",
        "--name",
        "user",
        "local/used:1",
        "true",
    ]);
    let ran = out.status.success();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    import(2, "local/old-1:1")?;
    import(3, "local/old-2:1")?;
    import(4, "local/new:1")?;

    // Below the high watermark: the agent's defaults (85 %) remove nothing.
    let report: PressureReport =
        serde_json::from_str(&node.ok(&["image", "prune", "--disk-pressure", "-o", "json"]))?;
    let before = report.before.expect("measured");
    let collected: Result<PressureReport> = (|| {
        anyhow::ensure!(ran, "ctr run failed: {stderr}");
        assert!(report.removed.is_empty(), "{report:?}");
        let used = before.used_percent();
        assert!(
            (60..85).contains(&used),
            "the store fills {used} %: {before:?}"
        );
        Ok(serde_json::from_str(&node.ok(&[
            "--config",
            config,
            "image",
            "prune",
            "--disk-pressure",
            "-o",
            "json",
        ]))?)
    })();
    node.ctr(&["--cgroup-parent", &cgroup_parent, "rm", "-f", "user"]);
    let report = collected?;

    // The two least recently used unused images went, and no more than what brought the
    // filesystem under the low watermark; the used one and the newest stayed.
    assert_eq!(
        report.removed,
        ["docker.io/local/old-1:1", "docker.io/local/old-2:1"],
        "{report:?}"
    );
    let after = report.after.expect("measured after");
    assert!(after.used_percent() < 45, "{report:?}");
    assert!(report.freed.bytes >= 20 << 20, "{report:?}");
    assert_eq!(report.freed.layers, 2, "{report:?}");
    let left: Vec<String> = node.images().into_iter().map(|r| r.name).collect();
    assert_eq!(left, ["docker.io/local/new:1", "docker.io/local/used:1"]);
    assert_eq!(node.layer_count(), 5, "base, upper, top and two fillers");
    // Under the low watermark now: another round removes nothing.
    let again: PressureReport = serde_json::from_str(&node.ok(&[
        "--config",
        config,
        "image",
        "prune",
        "--disk-pressure",
        "-o",
        "json",
    ]))?;
    assert!(
        again.removed.is_empty() && again.after.is_none(),
        "{again:?}"
    );
    Ok(())
}
