//! Images as registries and builders really make them, run as containers: many layers, a
//! long data directory path, the same layer more than once, platform variants.

#![forbid(unsafe_code)]

use flotilla_runtime::image::manifest::amd64_level;
use flotilla_runtime::image::{ImageDetails, ImageRecord};
use flotilla_tests::host_arch;
use flotilla_tests::image::{
    busybox, write_layout, write_platform_layout, Compression, ImageSpec, Layer,
};
use flotilla_tests::node::Node;

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
