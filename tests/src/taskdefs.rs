//! Task definitions more than one test file runs.

/// A one-shot task on no network: prints `ran on schedule` and exits 0 (what a scheduled
/// action starts).
pub const ONCE: &str = r#"{
  "family": "once",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16,
    "command": ["sh", "-c", "echo ran on schedule"]
  }]
}"#;

/// A task whose one container sleeps until stopped (SIGTERM ends it at once), on the task's
/// own network: what runs on while a disk fills (`full_disk.rs`, `soak-disk`).
pub const STEADY: &str = r#"{
  "family": "steady",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"]
  }]
}"#;
