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
fuzz_log=$(mktemp)
# The fuzz targets build on nightly at the lowest priority while the tests run (they mostly
# wait), then each runs briefly after them (scripts/fuzz.sh). Its own session is its own
# autogroup when the kernel groups by session (sched_autogroup_enabled): a nice value then
# weighs only inside the group, and the group would get as much CPU as the tests' own, so the
# group's nice is set too (sched(7), "The autogroup feature").
setsid sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null || true; exec nice -n 19 scripts/fuzz.sh --build-only' >"$fuzz_log" 2>&1 &
fuzz_build=$!
# Its own process group, stopped whole when the tests fail first.
trap 'kill -- -"$fuzz_build" 2>/dev/null || true; rm -f "$log" "$fuzz_log"' EXIT
# As many tests at a time per binary as cores (RUST_TEST_THREADS overrides it; the guests of
# the cgroup v2 tests run at most two at a time whatever it says: tests/src/vm.rs).
cargo test --workspace 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
if ! wait "$fuzz_build"; then
  cat "$fuzz_log"
  echo "fuzz: the build failed" >&2
  exit 1
fi
tail -n 1 "$fuzz_log"
scripts/fuzz.sh --no-build
