//! Power cuts for real, the short form of `power-cuts` (RELIABILITY.md, "Power cuts"): a
//! control plane and a node agent on one guest's virtual disk under a write load, the guest
//! killed twice at random moments, each boot checked against every acknowledged write.

/// Two cuts and the boot after the second, with a new seed each run (named on failure; repeat
/// it with `power-cuts --cuts 2 --seed N`).
#[test]
fn after_power_cuts_under_load_no_acknowledged_write_is_lost_and_no_task_runs_twice() {
    flotilla_tests::require_root();
    let harness = flotilla_tests::bin("power-cuts");
    let bin_dir = harness.parent().expect("bin dir").to_path_buf();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let report = flotilla_tests::power::run(&flotilla_tests::power::Options {
        cuts: 2,
        seed,
        harness,
        bin_dir,
        keep: None,
        label: String::new(),
    })
    .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    assert_eq!(report.cuts, 2, "seed {seed}: {report:?}");
    // The boot after the last cut is always checked, so every cut's writes were.
    assert!(report.checks >= 1, "seed {seed}: {report:?}");
}
