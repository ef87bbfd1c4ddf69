//! `scripts/install.sh` into a staging root (`DESTDIR`): the expected files with the expected
//! modes, units that `systemd-analyze verify` accepts and that name the binaries and
//! configuration files the script wrote, configurations never overwritten, and an uninstall
//! that removes what it installed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install(root: &Path, args: &[&str]) -> String {
    let bin_dir = flotilla_tests::bin("nodeagent")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let out = Command::new("sh")
        .arg(repo().join("scripts/install.sh"))
        .args(args)
        .env("DESTDIR", root)
        .env("BIN_DIR", bin_dir)
        .output()
        .expect("install.sh");
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_lays_out_verified_units_and_uninstall_removes_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let said = install(r, &[]);
    assert!(said.contains("systemctl enable --now nodeagent"), "{said}");

    let expected = [
        ("usr/local/bin/orchestratord", 0o755),
        ("usr/local/bin/nodeagent", 0o755),
        ("usr/local/bin/flotilla-shim", 0o755),
        ("usr/local/bin/flotilla", 0o755),
        ("etc/systemd/system/orchestratord.service", 0o644),
        ("etc/systemd/system/nodeagent.service", 0o644),
        ("etc/flotilla/orchestratord.toml", 0o644),
        ("etc/flotilla/nodeagent.toml", 0o644),
        ("usr/local/share/doc/flotilla/README.md", 0o644),
        (
            "usr/local/share/bash-completion/completions/flotilla",
            0o644,
        ),
        ("usr/local/share/zsh/site-functions/_flotilla", 0o644),
        (
            "usr/local/share/fish/vendor_completions.d/flotilla.fish",
            0o644,
        ),
        ("var/lib/flotilla/orchestratord", 0o700),
        ("var/lib/flotilla/nodeagent", 0o700),
    ];
    for (path, want) in expected {
        assert_eq!(mode(&r.join(path)), want, "{path}");
    }

    // The bash completion is the CLI's own and loads.
    let bash = r.join("usr/local/share/bash-completion/completions/flotilla");
    let loaded = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(format!("source {} && complete -p flotilla", bash.display()))
        .output()
        .expect("bash");
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("-F _flotilla flotilla"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    // Each unit runs an installed binary with an installed configuration file.
    for unit in ["orchestratord", "nodeagent"] {
        let text = std::fs::read_to_string(r.join(format!("etc/systemd/system/{unit}.service")))
            .expect("unit");
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert!(r.join(&words[0][1..]).is_file(), "{exec}");
        let config = words
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1])
            .expect("--config");
        assert!(r.join(&config[1..]).is_file(), "{exec}");
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{unit}"
        );
    }
    let agent =
        std::fs::read_to_string(r.join("etc/systemd/system/nodeagent.service")).expect("unit");
    assert!(agent.contains("KillMode=process") && agent.contains("Delegate=yes"));

    // systemd-analyze checks them against the staged root (with the host's own units, for the
    // targets they refer to).
    let units = r.join("lib/systemd");
    std::fs::create_dir_all(&units).expect("dir");
    let cp = Command::new("cp")
        .arg("-a")
        .arg("/lib/systemd/system")
        .arg(&units)
        .status()
        .expect("cp");
    assert!(cp.success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(["orchestratord.service", "nodeagent.service"])
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    // A configuration an operator changed is kept by a reinstall.
    let conf = r.join("etc/flotilla/nodeagent.toml");
    std::fs::write(&conf, "heartbeat = 10\n").expect("write");
    install(r, &[]);
    assert_eq!(
        std::fs::read_to_string(&conf).expect("conf"),
        "heartbeat = 10\n"
    );

    install(r, &["--uninstall"]);
    for gone in [
        "usr/local/bin/orchestratord",
        "usr/local/bin/nodeagent",
        "usr/local/bin/flotilla-shim",
        "usr/local/bin/flotilla",
        "etc/systemd/system/orchestratord.service",
        "etc/systemd/system/nodeagent.service",
        "usr/local/share/doc/flotilla",
        "usr/local/share/bash-completion/completions/flotilla",
        "usr/local/share/zsh/site-functions/_flotilla",
        "usr/local/share/fish/vendor_completions.d/flotilla.fish",
    ] {
        assert!(!r.join(gone).exists(), "{gone} is still there");
    }
    assert!(conf.exists() && r.join("var/lib/flotilla/nodeagent").is_dir());
    install(r, &["--uninstall", "--purge"]);
    assert!(!r.join("etc/flotilla").exists() && !r.join("var/lib/flotilla").exists());
}
