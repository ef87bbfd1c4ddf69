//! `flotilla completion SHELL` prints a script the shell loads, which completes the CLI's real
//! subcommands and flags (bash is driven for real; zsh and fish are checked for their shape).

use std::process::Command;

fn script(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["completion", shell])
        .output()
        .expect("flotilla");
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// What bash's completion offers for the words of `line` (the last one being completed).
fn bash_complete(script_path: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _flotilla flotilla '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script_path.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flotilla.bash");
    std::fs::write(&path, script("bash")).expect("write");
    let top = bash_complete(&path, &["flotilla", "ta"]);
    assert_eq!(top, ["taskdef", "task"]);
    let task = bash_complete(&path, &["flotilla", "task", ""]);
    for want in ["run", "ls", "inspect", "stop", "--output"] {
        assert!(task.iter().any(|w| w == want), "{want} not in {task:?}");
    }
    let output = bash_complete(&path, &["flotilla", "node", "ls", "-o", ""]);
    assert_eq!(output, ["table", "json", "yaml", "wide"]);
    let scaling = bash_complete(&path, &["flotilla", "scaling", ""]);
    for want in ["policy", "schedule", "activity"] {
        assert!(
            scaling.iter().any(|w| w == want),
            "{want} not in {scaling:?}"
        );
    }
    let policy = bash_complete(&path, &["flotilla", "scaling", "policy", ""]);
    for want in ["put", "ls", "rm"] {
        assert!(policy.iter().any(|w| w == want), "{want} not in {policy:?}");
    }
    let autoscale = bash_complete(&path, &["flotilla", "service", "autoscale", "--"]);
    for want in ["--min", "--max", "--target-cpu", "--target-memory", "--off"] {
        assert!(
            autoscale.iter().any(|w| w == want),
            "{want} not in {autoscale:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    let zsh = script("zsh");
    assert!(zsh.starts_with("#compdef flotilla"), "{}", &zsh[..80]);
    let fish = script("fish");
    assert!(fish.contains("complete -c flotilla"), "{}", &fish[..200]);
    for s in [&zsh, &fish] {
        assert!(s.contains("taskdef") && s.contains("completion"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["completion", "tcsh"])
        .output()
        .expect("flotilla");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values: bash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
