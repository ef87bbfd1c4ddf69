#!/bin/bash
# The test command: installs what the tests need, builds the binaries the system tests run,
# then runs every test of the workspace (the cgroup v2 guests beside the others) and prints the
# totals, then runs every fuzz target for a few seconds (scripts/fuzz.sh, on the nightly
# toolchain). Run as root (tests create device nodes, mounts and registries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
log=$(mktemp)
fuzz_log=$(mktemp)
vm_log=$(mktemp)
fuzz_build=""
vm=""
shown=""
held=""
# Each background job is its own process group, stopped whole when the script ends first (a
# failing build or test, Ctrl-C); the tail that shows the tests' log is one process.
trap 'for g in $fuzz_build $vm; do kill -- -"$g" 2>/dev/null || true; done; for p in $shown $held; do kill "$p" 2>/dev/null || true; done; rm -f "$log" "$fuzz_log" "$vm_log"' EXIT
# The fuzz targets build on nightly at the lowest priority while the tests run (they mostly
# wait), then each runs briefly after them (scripts/fuzz.sh). Its own session is its own
# autogroup when the kernel groups by session (sched_autogroup_enabled): a nice value then
# weighs only inside the group, and the group would get as much CPU as the tests' own, so the
# group's nice is set too (sched(7), "The autogroup feature").
setsid sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null || true; exec nice -n 19 scripts/fuzz.sh --quick --build-only' >"$fuzz_log" 2>&1 &
fuzz_build=$!
# Every test executable first (the cgroup v2 tests run the container suite's in their guests).
cargo test --workspace --no-run
# (Its path, as cargo names it: the runtime crate has a tests/cgroup_v2.rs of its own.)
guests=$(cargo test -p flotilla-tests --test cgroup_v2 --no-run 2>&1 |
  sed -n 's|^ *Executable tests/cgroup_v2.rs (\(.*\))$|\1|p')
if [ "$(printf '%s\n' "$guests" | wc -l)" != 1 ] || [ ! -x "$guests" ]; then
  echo "test.sh: not one cgroup_v2 test executable of flotilla-tests: '$guests'" >&2
  exit 1
fi
# The cgroup v2 and power-cut tests boot guests under QEMU's TCG, which needs CPU and little
# else, while the host's system tests mostly wait on their daemons: the guests run beside them
# (at most two at a time: tests/src/vm.rs), at a lower priority so that the host tests' timing
# is as when they run alone, in their own session (autogroup, as above). The executable runs
# directly, as cargo runs it (from its package's directory), so that the two never wait for
# each other's lock on target/.
(cd tests && exec setsid sh -c 'echo 10 > /proc/self/autogroup 2>/dev/null || true; exec nice -n 10 "$0" under_qemu::' "$PWD/../$guests") >"$vm_log" 2>&1 &
vm=$!
# As many tests at a time per binary as cores (RUST_TEST_THREADS overrides it).
host=0
# Every test binary runs, also after one fails: CI shows every failure at once. The tests
# write to a file that a tail shows as it grows, not to a pipe: a process a failing test leaves
# behind (a daemon it started) holds whatever the test's output went to, and a pipe's reader
# would wait for it forever. cargo runs in the foreground, so Ctrl-C stops it (background jobs
# of a script ignore SIGINT); the tail follows a placeholder process and, once that is gone,
# shows the rest of the file and ends.
sleep infinity &
held=$!
tail -n +1 -f --pid="$held" "$log" &
shown=$!
cargo test --workspace --no-fail-fast -- --skip under_qemu:: >"$log" 2>&1 || host=$?
kill "$held"
wait "$shown" || true
held=""
shown=""
guests_rc=0
wait "$vm" || guests_rc=$?
vm=""
echo
echo "--- the cgroup v2 guests (run beside the tests above) ---"
cat "$vm_log"
cat "$vm_log" >> "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
if [ "$host" != 0 ] || [ "$guests_rc" != 0 ]; then
  exit 1
fi
if ! wait "$fuzz_build"; then
  cat "$fuzz_log"
  echo "fuzz: the build failed" >&2
  exit 1
fi
fuzz_build=""
tail -n 1 "$fuzz_log"
scripts/fuzz.sh --quick --no-build --jobs "$(nproc)"
