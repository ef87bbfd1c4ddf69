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

#[test]
fn a_wrong_autoscale_flag_is_named_before_the_control_plane_is_reached() {
    let dir = std::env::temp_dir().join(format!("flotilla-nocred-as-{}", std::process::id()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "--config",
                dir.to_str().expect("utf-8"),
                "service",
                "autoscale",
                "web",
            ])
            .args(args)
            .output()
            .expect("flotilla")
    };
    let out = run(&["--min", "3", "--max", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --min 3 is above --max 2\n"
    );
    let out = run(&["--min", "1", "--max", "2", "--target-cpu", "150"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --target-cpu 150: not a percentage above 0 and at most 100\n"
    );
    // --off with bounds is a wrong command line.
    let out = run(&["--off", "--max", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'--off' cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Valid flags go on to read the credential.
    let out = run(&["--min", "1", "--max", "2", "--target-cpu", "60"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: no admin credential"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
