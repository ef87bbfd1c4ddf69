//! Images as registries and builders really make them, run as containers: many layers, a
//! long data directory path, the same layer more than once.

#![forbid(unsafe_code)]

use flotilla_tests::host_arch;
use flotilla_tests::image::{busybox, write_layout, Compression, ImageSpec, Layer};
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
