//! Every committed fuzz input through its target, on stable: the seeds of
//! `fuzz/corpus/TARGET/` and the inputs that once crashed, `fuzz/regressions/TARGET/`. A
//! decoder that panics, or an invariant a target checks that breaks, fails this test.

use std::path::{Path, PathBuf};

use flotilla_fuzz_harness::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_goes_through_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, target) in TARGETS {
        let seeds = inputs(&fuzz.join("corpus").join(name));
        assert!(!seeds.is_empty(), "{name}: no seed corpus");
        for input in seeds
            .iter()
            .chain(&inputs(&fuzz.join("regressions").join(name)))
        {
            let data = std::fs::read(input).expect("a committed input");
            let caught = std::panic::catch_unwind(|| target(&data));
            assert!(caught.is_ok(), "{name}: {} failed", input.display());
        }
    }
}

#[test]
fn every_target_has_its_cargo_fuzz_binary() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let body = std::fs::read_to_string(fuzz.join("fuzz_targets").join(format!("{name}.rs")))
            .expect("the target's file");
        assert!(
            body.contains(&format!("flotilla_fuzz_harness::{name}")),
            "fuzz_targets/{name}.rs calls another body"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

/// The committed rejoin is one the control plane accepts, so the fuzzer starts from a
/// certificate, proof and CSR that reach every check of a rejoin and the signing of a CSR.
#[test]
fn the_committed_rejoin_passes_every_check() -> Result<(), Box<dyn std::error::Error>> {
    use flotilla_fuzz_harness::{fuzz_ca, join_request_parts, JOIN_TOKEN_ID};
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seed = std::fs::read(fuzz.join("corpus/join_request/rejoin-with-proof"))?;
    let (cert, proof, csr) = join_request_parts(&seed);
    let ca = fuzz_ca();
    assert_eq!(ca.verify_rejoin(&cert, &proof, JOIN_TOKEN_ID, &csr)?, "n-1");
    ca.issue_node(&csr, "n-1", std::time::Duration::from_secs(3600))?;
    // The same certificate with a proof of another CSR is refused.
    assert!(ca
        .verify_rejoin(&cert, &proof, JOIN_TOKEN_ID, &csr.replace('A', "B"))
        .is_err());
    Ok(())
}
