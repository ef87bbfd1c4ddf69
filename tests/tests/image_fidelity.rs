//! Images as registries, builders and archive tools really make them, run as containers: many
//! layers, a long data directory path, the same layer more than once, platform variants,
//! archives' names, a caller's umask that must not reach the container, and the image
//! configuration's `Volumes`.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use flotilla_api::tasks::TaskState;
use flotilla_runtime::image::manifest::amd64_level;
use flotilla_runtime::image::{ImageDetails, ImageRecord};
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::image::{
    busybox, digest, tar_dir, write_docker_save, write_image, write_layout, write_layout_with,
    write_platform_layout, Compression, ImageSpec, Layer,
};
use flotilla_tests::node::{Node, IMAGE};
use flotilla_tests::{bin, host_arch};

/// A layer with busybox and the applets the tests use.
fn shell_layer() -> Layer {
    let mut l = Layer::new();
    l.dir("bin", 0o755).file("bin/busybox", &busybox(), 0o755);
    for applet in ["sh", "cat", "ls", "echo", "id", "stat", "sleep", "mkdir"] {
        l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777);
    l
}

fn spec(layers: Vec<Vec<u8>>) -> ImageSpec {
    ImageSpec {
        layers: layers.into_iter().map(|l| (l, Compression::Gzip)).collect(),
        arch: host_arch().to_string(),
        cmd: vec!["/bin/sh".into()],
    }
}

/// The shell layer with `/first`, then `count - 2` layers adding `/layers/<n>`, then one
/// adding `/last`.
fn deep_image(count: usize) -> ImageSpec {
    let mut first = shell_layer();
    first.file("first", b"first layer\n", 0o644);
    let mut layers = vec![first.finish()];
    for n in 1..count - 1 {
        let mut l = Layer::new();
        l.dir("layers", 0o755)
            .file(&format!("layers/{n}"), format!("{n}\n").as_bytes(), 0o644);
        layers.push(l.finish());
    }
    let mut last = Layer::new();
    last.file("last", b"last layer\n", 0o644);
    layers.push(last.finish());
    spec(layers)
}

fn import(node: &Node, name: &str, spec: &ImageSpec) -> std::process::Output {
    let layout = node
        .scratch()
        .join(format!("layout-{}", flotilla_tests::unique()));
    write_layout(&layout, "latest", spec).expect("layout");
    node.ctr(&[
        "image",
        "import",
        layout.to_str().expect("utf8"),
        "--name",
        name,
    ])
}

fn import_ok(node: &Node, name: &str, spec: &ImageSpec) {
    let out = import(node, name, spec);
    assert!(
        out.status.success(),
        "import of {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ctr run --rm IMAGE ARGS…`, which must exit 0; its stdout.
fn run_ok(node: &Node, image: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", image];
    all.extend_from_slice(args);
    let out = node.ctr(&all);
    assert!(
        out.status.success(),
        "run {image} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_image_of_100_layers_runs_with_its_first_and_last_layer() {
    let node = Node::bare();
    import_ok(&node, "deep/image:100", &deep_image(100));
    let out = run_ok(
        &node,
        "deep/image:100",
        &["cat", "/first", "/layers/1", "/layers/98", "/last"],
    );
    assert_eq!(out, "first layer\n1\n98\nlast layer\n");
    node.assert_clean();
}

#[test]
fn the_data_directory_path_length_does_not_limit_the_layers() {
    // 3 × 250 characters: with each layer named by its full path the options of 100 layers
    // would be 80 KB.
    let long = ["a", "b", "c"].map(|c| c.repeat(250)).join("/");
    let node = Node::bare_at(&long);
    import_ok(&node, "deep/image:100", &deep_image(100));
    let out = run_ok(&node, "deep/image:100", &["cat", "/first", "/last"]);
    assert_eq!(out, "first layer\nlast layer\n");
    node.assert_clean();
}

#[test]
fn the_most_layers_overlayfs_stacks_run_and_more_are_refused_at_import() {
    let node = Node::bare();
    import_ok(&node, "deep/image:500", &deep_image(500));
    let out = run_ok(&node, "deep/image:500", &["cat", "/first", "/last"]);
    assert_eq!(out, "first layer\nlast layer\n");
    let out = import(&node, "deep/image:501", &deep_image(501));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an image of 501 layers was stored");
    assert!(
        err.contains("501 distinct layers") && err.contains("at most 500"),
        "{err}"
    );
    node.assert_clean();
}

#[test]
fn a_repeated_empty_layer_runs() {
    // BuildKit's shape: base, empty, x, empty (the same digest twice).
    let node = Node::bare();
    let empty = Layer::new().finish();
    let mut x = Layer::new();
    x.file("x", b"x\n", 0o644);
    let image = spec(vec![
        shell_layer().finish(),
        empty.clone(),
        x.finish(),
        empty,
    ]);
    import_ok(&node, "repeat/empty:1", &image);
    assert_eq!(run_ok(&node, "repeat/empty:1", &["cat", "/x"]), "x\n");
    node.assert_clean();
}

#[test]
fn a_repeated_layer_applies_again_at_its_higher_place() {
    // base, a, x, a: as with Docker, the second `a` lies above `x` — its file wins over
    // x's, and the file x deleted is back.
    let node = Node::bare();
    let mut a = Layer::new();
    a.file("f", b"from a\n", 0o644)
        .file("g", b"g from a\n", 0o644);
    let a = a.finish();
    let mut x = Layer::new();
    x.file("f", b"from x\n", 0o644)
        .file(".wh.g", b"", 0o644)
        .file("only-x", b"only x\n", 0o644);
    let image = spec(vec![shell_layer().finish(), a.clone(), x.finish(), a]);
    import_ok(&node, "repeat/layer:1", &image);
    let out = run_ok(&node, "repeat/layer:1", &["cat", "/f", "/g", "/only-x"]);
    assert_eq!(out, "from a\ng from a\nonly x\n");
    node.assert_clean();
}

fn images(node: &Node) -> Vec<ImageRecord> {
    let out = node.ctr(&["image", "ls", "-o", "json"]);
    serde_json::from_slice(&out.stdout).expect("image ls json")
}

fn inspect(node: &Node, name: &str) -> ImageDetails {
    let out = node.ctr(&["image", "inspect", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("image inspect json")
}

/// An image whose file `/which` says which one it is.
fn marked(which: &str, arch: &str) -> ImageSpec {
    let mut l = shell_layer();
    l.file("which", format!("{which}\n").as_bytes(), 0o644);
    ImageSpec {
        layers: vec![(l.finish(), Compression::Gzip)],
        arch: arch.to_string(),
        cmd: vec!["/bin/sh".into()],
    }
}

#[test]
fn amd64_levels_resolve_to_the_best_the_cpu_runs_and_are_recorded() {
    if host_arch() != "amd64" {
        return;
    }
    let level = amd64_level(&std::fs::read_to_string("/proc/cpuinfo").expect("cpuinfo"))
        .expect("flags in /proc/cpuinfo");
    let node = Node::bare();
    let layout = node.scratch().join("levels");
    write_platform_layout(
        &layout,
        "levels",
        &[
            (marked("v2", "amd64"), "linux/amd64/v2"),
            (marked("v3", "amd64"), "linux/amd64/v3"),
            (marked("arm64", "arm64"), "linux/arm64"),
        ],
    )
    .expect("layout");
    let path = layout.to_str().expect("utf8");
    let out = node.ctr(&["image", "import", path, "--name", "plat/levels:1"]);
    if level < 2 {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("linux/amd64/v2"),
            "{err}"
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let best = if level >= 3 { "v3" } else { "v2" };
    let record = inspect(&node, "plat/levels:1").record;
    assert_eq!(record.platform.to_string(), format!("linux/amd64/{best}"));
    assert_eq!(
        run_ok(&node, "plat/levels:1", &["cat", "/which"]),
        format!("{best}\n")
    );

    // Asked for a lower level: that one, recorded with its variant.
    let out = node.ctr(&[
        "image",
        "import",
        path,
        "--name",
        "plat/levels:2",
        "--platform",
        "linux/amd64/v2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = images(&node);
    let v2 = listed
        .iter()
        .find(|r| r.name.ends_with("plat/levels:2"))
        .expect("listed");
    assert_eq!(v2.platform.to_string(), "linux/amd64/v2");
    let table = node.ctr(&["image", "ls"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("linux/amd64/v2"),
        "image ls shows the variant"
    );
    node.assert_clean();
}

#[test]
fn a_baseline_amd64_image_still_runs_on_a_higher_level_node() {
    if host_arch() != "amd64" {
        return;
    }
    let node = Node::bare();
    let layout = node.scratch().join("plain");
    write_platform_layout(
        &layout,
        "plain",
        &[
            (marked("baseline", "amd64"), "linux/amd64"),
            (marked("arm", "arm"), "linux/arm/v7"),
        ],
    )
    .expect("layout");
    let path = layout.to_str().expect("utf8");
    let out = node.ctr(&["image", "import", path, "--name", "plat/plain:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        inspect(&node, "plat/plain:1").record.platform.to_string(),
        "linux/amd64"
    );
    // An index without the node's architecture names what it has.
    let layout = node.scratch().join("foreign");
    write_platform_layout(
        &layout,
        "foreign",
        &[(marked("arm", "arm"), "linux/arm/v7")],
    )
    .expect("layout");
    let out = node.ctr(&[
        "image",
        "import",
        layout.to_str().expect("utf8"),
        "--name",
        "plat/f:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux/arm/v7"),
        "{err}"
    );
    node.assert_clean();
}

/// An oci-archive (tar) whose one image has the ref name `ref_name`, as `skopeo copy …
/// oci-archive:FILE:REF` writes it.
fn oci_archive(node: &Node, ref_name: &str, which: &str) -> String {
    let n = flotilla_tests::unique();
    let layout = node.scratch().join(format!("named-{n}"));
    write_layout(&layout, ref_name, &marked(which, host_arch())).expect("layout");
    let tar = node.scratch().join(format!("named-{n}.tar"));
    tar_dir(&layout, &tar).expect("tar");
    tar.display().to_string()
}

#[test]
fn oci_archives_import_with_the_names_skopeo_and_podman_give_them() {
    let node = Node::bare();
    let bb = oci_archive(&node, "bb", "bb");
    let out = node.ctr(&["image", "import", &bb]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = images(&node).into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["localhost/bb:latest"]);
    // Found by the short name too, as podman finds local images.
    assert_eq!(run_ok(&node, "bb", &["cat", "/which"]), "bb\n");
    assert_eq!(run_ok(&node, "localhost/bb", &["cat", "/which"]), "bb\n");

    for (ref_name, want) in [
        ("bb:v1", "localhost/bb:v1"),
        ("team/bb", "localhost/team/bb:latest"),
        (
            "registry.example.org/team/bb:2",
            "registry.example.org/team/bb:2",
        ),
        ("localhost:5000/bb", "localhost:5000/bb:latest"),
    ] {
        let tar = oci_archive(&node, ref_name, ref_name);
        let out = node.ctr(&["image", "import", &tar, "-o", "json"]);
        assert!(
            out.status.success(),
            "{ref_name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs: Vec<ImageRecord> = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(recs[0].name, want, "{ref_name}");
    }

    // A digest reference names the archive's own manifest, or it is refused.
    let layout = node.scratch().join("pinned");
    let manifest = write_image(&layout, &marked("pinned", host_arch()))
        .expect("image")
        .manifest;
    write_layout(
        &layout,
        &format!("pin@{manifest}"),
        &marked("pinned", host_arch()),
    )
    .expect("layout");
    let out = node.ctr(&["image", "import", layout.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(images(&node)
        .iter()
        .any(|r| r.name == format!("localhost/pin@{manifest}")));
    let other = digest(b"another manifest");
    let layout = node.scratch().join("mispinned");
    write_layout(&layout, &format!("pin@{other}"), &marked("x", host_arch())).expect("layout");
    let out = node.ctr(&["image", "import", layout.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--name"), "{err}");

    // Not an image name: said, with the annotation, and --name asked for.
    for bad in [":v1", "BB"] {
        let tar = oci_archive(&node, bad, "bad");
        let out = node.ctr(&["image", "import", &tar]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!("'{bad}'"))
                && err.contains("org.opencontainers.image.ref.name")
                && err.contains("--name"),
            "{bad}: {err}"
        );
    }
    node.assert_clean();
}

#[test]
fn docker_save_archives_keep_dockers_names() {
    let node = Node::bare();
    let spec = marked("saved", host_arch());
    let scratch = node.scratch().join("blobs");
    let built = write_image(&scratch, &spec).expect("image");
    for (tag, want) in [
        ("bb:v1", "docker.io/library/bb:v1"),
        ("team/bb", "docker.io/team/bb:latest"),
        ("localhost/bb:v2", "localhost/bb:v2"),
    ] {
        let tar = node
            .scratch()
            .join(format!("save-{}.tar", flotilla_tests::unique()));
        write_docker_save(&tar, tag, &spec, &built).expect("docker save");
        let out = node.ctr(&["image", "import", tar.to_str().expect("utf8"), "-o", "json"]);
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs: Vec<ImageRecord> = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(recs[0].name, want, "{tag}");
    }
    assert_eq!(run_ok(&node, "bb:v1", &["cat", "/which"]), "saved\n");
    node.assert_clean();
}

/// `nodeagent ctr ARGS` for `node`, run from a shell whose umask is 027.
fn ctr_with_umask_027(node: &Node, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 027; exec \"$@\"")
        .arg("sh")
        .arg(bin("nodeagent"))
        .arg("--data-dir")
        .arg(&node.data)
        .arg("--cgroup-parent")
        .arg(&node.cgroup_parent)
        .arg("ctr")
        .args(args)
        .stdin(Stdio::null());
    c.output().expect("run nodeagent")
}

fn ok_027(node: &Node, args: &[&str]) -> String {
    let out = ctr_with_umask_027(node, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn the_callers_umask_does_not_reach_the_container() {
    let node = Node::bare();
    // Parent directories the layer does not list (`deep`, `deep/er`) are made while unpacking.
    let mut app = Layer::new();
    app.file("deep/er/file", b"deep\n", 0o644);
    let spec = spec(vec![shell_layer().finish(), app.finish()]);
    let layout = node.scratch().join("umask");
    write_layout(&layout, "", &spec).expect("layout");
    ok_027(
        &node,
        &[
            "image",
            "import",
            layout.to_str().expect("utf8"),
            "--name",
            "umask/app:1",
        ],
    );
    for dir in inspect(&node, "umask/app:1").layer_dirs {
        assert_eq!(mode(&dir), 0o755, "{}", dir.display());
        if dir.join("deep").exists() {
            assert_eq!(mode(&dir.join("deep/er")), 0o755, "implied parent");
        }
    }
    let out = ok_027(
        &node,
        &[
            "run",
            "--rm",
            "-u",
            "65532:65532",
            "-v",
            "umaskvol:/vol",
            "-w",
            "/made/by/run",
            "umask/app:1",
            "sh",
            "-c",
            "ls / >/dev/null && cat /deep/er/file && stat -c '%a' / /vol /made/by/run && umask",
        ],
    );
    assert_eq!(out, "deep\n755\n755\n755\n0022\n");
    node.assert_clean();
}

#[test]
fn a_task_of_another_user_runs_from_an_agent_started_under_umask_027() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node)
        .with_umask(0o027)
        .with_run_args(&["--heartbeat", "5"]);
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_in_service(&cp);
    // A bridge task: its resolv.conf is written by the agent and bind-mounted read-only. Each
    // check has its exit code (a stopped task's logs are not the point here).
    let script = "cat /etc/resolv.conf >/dev/null || exit 2; ls / >/dev/null || exit 3; \
                  case \"$(ls -ld /)\" in drwxr-xr-x*) ;; *) exit 4;; esac; \
                  [ \"$(umask)\" = 0022 ] || exit 5";
    let def = serde_json::json!({
        "family": "umask",
        "networkMode": "bridge",
        "containerDefinitions": [{
            "name": "main", "image": IMAGE, "memory": 32, "user": "65532:65532",
            "command": ["sh", "-c", script]
        }]
    });
    let f = cp.scratch().join("umask.json");
    std::fs::write(&f, def.to_string()).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let id = cp.run_one("umask");
    flotilla_tests::wait(
        "the task to stop",
        std::time::Duration::from_secs(60),
        || cp.task(&id).state == TaskState::Stopped,
    );
    let task = cp.task(&id);
    assert_eq!(
        task.containers.first().and_then(|c| c.exit_code),
        Some(0),
        "{task:?}"
    );
    node.wait_removed(std::time::Duration::from_secs(20));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn exec_gets_the_containers_umask_not_the_callers() {
    let node = Node::bare();
    let layout = node.scratch().join("exec");
    write_layout(&layout, "", &spec(vec![shell_layer().finish()])).expect("layout");
    ok_027(
        &node,
        &[
            "image",
            "import",
            layout.to_str().expect("utf8"),
            "--name",
            "umask/exec:1",
        ],
    );
    ok_027(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "umask-exec",
            "umask/exec:1",
            "sh",
            "-c",
            "sleep 60",
        ],
    );
    let out = ok_027(
        &node,
        &[
            "exec",
            "umask-exec",
            "sh",
            "-c",
            "umask; mkdir /d && stat -c %a /d",
        ],
    );
    assert_eq!(out, "0022\n755\n");
    ok_027(&node, &["rm", "-f", "umask-exec"]);
    node.assert_clean();
}

#[test]
fn image_volumes_get_an_anonymous_volume_with_the_images_content() {
    let node = Node::bare();
    let mut data = Layer::new();
    data.dir("data", 0o750)
        .file_owned("data/seed", b"from the image\n", 0o640, 65532, 65532)
        .symlink("data/link", "seed")
        .dir("cache", 0o755);
    let spec = spec(vec![shell_layer().finish(), data.finish()]);
    let layout = node.scratch().join("volumes");
    write_layout_with(
        &layout,
        "",
        &spec,
        &serde_json::json!({"Volumes": {"/data": {}, "/cache": {}, "/fresh": {}, "relative": {}}}),
    )
    .expect("layout");
    let path = layout.to_str().expect("utf8");
    let out = node.ctr(&["image", "import", path, "--name", "vol/image:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each path is a mount of its own, filled from the image (owner, mode, links kept), and
    // written data lands in the volume, not in the container's layer.
    let script = "for p in /data /cache /fresh; do grep -c \" $p \" /proc/self/mounts; done; \
                  cat /data/link; stat -c '%a %u' /data /data/seed; echo new > /data/new";
    let out = node.ctr(&[
        "run",
        "-d",
        "--name",
        "vols",
        "vol/image:1",
        "sh",
        "-c",
        script,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Volumes path 'relative'") && err.contains("must be an absolute path"),
        "the path without a volume is warned about: {err}"
    );
    node.wait_for(
        "the container to exit",
        std::time::Duration::from_secs(20),
        || node.inspect("vols").exit.is_some(),
    );
    let logs = node.ctr(&["logs", "vols"]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "1\n1\n1\nfrom the image\n750 0\n640 65532\n"
    );
    // Volumes are made in the order of their sorted paths: /cache, /data, /fresh.
    let id = node.inspect("vols").record.id;
    let container_dir = node.data.join("containers").join(&id);
    assert_eq!(
        std::fs::read_to_string(container_dir.join("volumes/1/new")).expect("in the volume"),
        "new\n"
    );
    assert!(!container_dir.join("upper/data/new").exists());
    // A mount the run asks for at the path wins over the image's volume.
    let out = node.ctr(&[
        "run",
        "--rm",
        "-v",
        "named:/data",
        "vol/image:1",
        "ls",
        "-A",
        "/data",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "the named volume starts empty"
    );
    node.ctr_ok(&["rm", "vols"]);
    assert!(
        !container_dir.exists(),
        "anonymous volumes go with their container"
    );
    node.assert_clean();
}
