#!/bin/bash
# The test command: installs what the tests need, builds the binaries the system tests run,
# then runs every test of the workspace and prints the totals. Run as root (tests create device
# nodes, mounts and registries).
#
# The tests in QEMU guests (tests/tests/cgroup_v2.rs: minutes of emulated CPU, little waiting)
# run beside the rest (mostly waiting on timers, links and minutes), one guest at a time and at
# a lower CPU priority, so neither track waits for the other; both tracks' results count.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-run
log=$(mktemp)
vm_log=$(mktemp)
trap 'rm -f "$log" "$vm_log"' EXIT
vm_tests=(the_container_suite_passes_on_v2 on_the_unified_hierarchy_only_task_limits_hold
    after_a_power_cut_the_node_runs_its_tasks_again)
vm_bin=$(cargo test -p flotilla-tests --test cgroup_v2 --no-run 2>&1 |
    grep -Eo '\([^()]*/cgroup_v2-[0-9a-f]+\)' | tr -d '()' | tail -1)
vm_bin=$(readlink -f "$vm_bin")
[ -x "$vm_bin" ] || { echo "cgroup_v2 test binary not found" >&2; exit 1; }
(cd tests && nice -n 5 "$vm_bin" --exact --test-threads=1 "${vm_tests[@]}" >"$vm_log" 2>&1) &
vm_pid=$!
skips=()
for t in "${vm_tests[@]}"; do skips+=(--skip "$t"); done
status=0
cargo test --workspace -- --exact "${skips[@]}" 2>&1 | tee "$log" || status=$?
vm_status=0
wait "$vm_pid" || vm_status=$?
echo
echo "== the tests in QEMU guests (tests/tests/cgroup_v2.rs) =="
cat "$vm_log"
cat "$vm_log" >>"$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$vm_status" -eq 0 ]
