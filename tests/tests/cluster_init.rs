//! `orchestratord init` through the real binary: the CA key is 0600 and never overwritten; the
//! daemons' configuration files.

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
            .arg("--admin-config")
            .arg(dir.path().join("admin"))
            .output()
            .expect("run orchestratord")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("CA digest: sha256:"), "{said}");
    // The default port: `run` needs no --listen.
    assert!(
        said.contains(&format!(
            "next: orchestratord --data-dir {} run\n",
            data.display()
        )),
        "{said}"
    );
    // Another port, which the admin credential names: the next command listens on it.
    let other = dir.path().join("cp-7450");
    let o = Command::new(bin("orchestratord"))
        .args(["init", "--port", "7450", "--data-dir"])
        .arg(&other)
        .arg("--admin-config")
        .arg(dir.path().join("admin-7450"))
        .output()
        .expect("run orchestratord");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "next: orchestratord --data-dir {} run --listen 0.0.0.0:7450\n",
            other.display()
        )),
        "{said}"
    );
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

#[test]
fn config_files_give_settings_flags_override_them_and_typos_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nodeagent.toml");
    let data = dir.path().join("from-config");
    std::fs::write(&conf, format!("data_dir = \"{}\"\n", data.display())).expect("write");
    // (a command that adds to the node: read-only ones refuse a data directory that is not there)
    let out = Command::new(bin("nodeagent"))
        .arg("--config")
        .arg(&conf)
        .args(["ctr", "volume", "create", "v"])
        .output()
        .expect("nodeagent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("images").is_dir(),
        "the configured data_dir was not used"
    );
    let flag = dir.path().join("from-flag");
    let out = Command::new(bin("nodeagent"))
        .arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(&flag)
        .args(["ctr", "volume", "create", "v"])
        .output()
        .expect("nodeagent");
    assert!(out.status.success());
    assert!(
        flag.join("images").is_dir(),
        "the flag did not override the file"
    );

    std::fs::write(&conf, "data_dri = \"/x\"\n").expect("write");
    let out = Command::new(bin("nodeagent"))
        .arg("--config")
        .arg(&conf)
        .args(["ctr", "image", "ls"])
        .output()
        .expect("nodeagent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nodeagent.toml: unknown key 'data_dri' (did you mean 'data_dir'?)"),
        "{err}"
    );

    let conf = dir.path().join("orchestratord.toml");
    std::fs::write(&conf, "listn = \"127.0.0.1:1\"\n").expect("write");
    let out = Command::new(bin("orchestratord"))
        .arg("--config")
        .arg(&conf)
        .arg("run")
        .output()
        .expect("orchestratord");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown key 'listn' (did you mean 'listen'?)"),
        "{err}"
    );

    let bad = Command::new(bin("orchestratord"))
        .args(["--log-format", "xml", "run"])
        .output()
        .expect("orchestratord");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'xml': auto, text, json or journald"));
}

#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let cp = flotilla_tests::cluster::ControlPlane::start(&["--log-format", "json"]);
    let token = cp.token(&[]);
    let log = cp.log();
    /// A record of tracing-subscriber's JSON format, as far as read here.
    #[derive(serde::Deserialize)]
    struct Record {
        level: String,
        fields: Fields,
    }
    #[derive(serde::Deserialize)]
    struct Fields {
        message: Option<String>,
    }
    let lines: Vec<Record> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a record ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| {
            l.fields.message.as_deref() == Some("join token created") && l.level == "INFO"
        }),
        "{log}"
    );
    let secret = token.rsplit('-').next().expect("secret");
    assert!(!log.contains(secret), "the token secret was logged");
}

#[test]
fn init_with_its_reader_gone_ends_quietly_as_sigpipe_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin("orchestratord"));
    cmd.args(["init", "--data-dir"])
        .arg(dir.path().join("cp"))
        .arg("--admin-config")
        .arg(dir.path().join("admin"));
    // `orchestratord init | true`: no panic, no message, 141; the CA is made all the same.
    let (code, err) = flotilla_tests::with_reader_gone(cmd, 0, std::time::Duration::from_secs(30));
    assert!(err.is_empty(), "init said: {err}");
    assert_eq!(code, Some(141));
    assert!(dir.path().join("cp/ca-key.pem").exists());
}
