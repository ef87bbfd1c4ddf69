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
