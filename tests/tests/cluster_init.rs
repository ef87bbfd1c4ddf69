//! `orchestratord init` through the real binary: the CA key is 0600 and never overwritten.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use flotilla_tests::bin;

#[test]
fn init_creates_a_private_ca_and_refuses_to_replace_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cp");
    let run = || {
        Command::new(bin("orchestratord"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run orchestratord")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("CA digest: sha256:"));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&data), 0o700);
    let key = std::fs::read(data.join("ca-key.pem")).expect("key");

    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(data.join("ca-key.pem")).expect("key"),
        key,
        "CA key replaced"
    );
}
