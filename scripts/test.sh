#!/bin/bash
# The test command: installs what the tests need, builds the binaries the system tests run,
# then runs every test of the workspace and prints the totals, then runs every fuzz target for a
# few seconds (scripts/fuzz.sh, on the nightly toolchain). Run as root (tests create device
# nodes, mounts and registries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
scripts/fuzz.sh
