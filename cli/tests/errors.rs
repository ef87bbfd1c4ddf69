//! What a person sees when the CLI cannot do what was asked: one line naming what is missing and
//! what to do, each cause said once.

use std::process::Command;

#[test]
fn without_a_credential_the_cli_names_the_directory_and_how_to_get_one_saying_each_cause_once() {
    let dir = std::env::temp_dir().join(format!("flotilla-nocred-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--config", dir.to_str().expect("utf-8"), "task", "ls"])
        .output()
        .expect("flotilla");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: no admin credential in {}", dir.display())),
        "{err}"
    );
    assert!(err.contains("`flotilla dev`"), "{err}");
    assert!(err.contains("credential.json"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // The directory was named: how to name another is no news.
    assert!(!err.contains("--config DIR"), "{err}");
    assert!(!dir.exists(), "a failed command made {}", dir.display());
}

#[test]
fn without_a_credential_in_the_default_directory_the_cli_says_how_to_read_another() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .env("HOME", home.path())
        .env_remove("FLOTILLA_CONFIG")
        .args(["task", "ls"])
        .output()
        .expect("flotilla");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    let dir = home.path().join(".config/flotilla");
    assert!(
        err.starts_with(&format!("error: no admin credential in {}", dir.display())),
        "{err}"
    );
    assert!(err.contains("`--config DIR` reads another"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
