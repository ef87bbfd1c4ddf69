#!/bin/bash
# Fuzzes every decoder that reads the network or a file (fuzz/; RELIABILITY.md lists the
# targets). Builds all cargo-fuzz targets once on nightly with libFuzzer's coverage
# instrumentation — the flags `cargo fuzz build -O -a -s none` passes, so cargo-fuzz itself is
# not needed (`cargo fuzz run TARGET` works on the same build when it is installed) — then runs
# each for SECONDS from its committed seeds (fuzz/corpus/TARGET) and the inputs that once
# crashed (fuzz/regressions/TARGET). Inputs the run finds go to fuzz/corpus-run/TARGET (not
# committed). A panic, an input that takes over a second (--timeout) or a process over 2 GiB
# fails the run; the input is kept in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh                       CI: 8 s per target
#   scripts/fuzz.sh --seconds 600         the longer run (RELIABILITY.md)
#   scripts/fuzz.sh --seconds 60 cron     some targets only
#   scripts/fuzz.sh --timeout 5           a slower limit per input, on a busy machine
#   scripts/fuzz.sh --build-only          only the build (scripts/test.sh runs it during the tests)
#   scripts/fuzz.sh --no-build            only the runs, of the last build
#   scripts/fuzz.sh --quick               fuzz/Cargo.toml's `quick` profile (opt-level 1: built
#                                         with a fifth less CPU, runs as fast): scripts/test.sh
#   scripts/fuzz.sh --jobs 2              two targets at a time (each fuzzer uses one core):
#                                         scripts/test.sh, with one per core
#
# Reproduce a crash: fuzz/target/x86_64-unknown-linux-gnu/release/TARGET ARTIFACT (quick/ for
# a --quick build)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=8
timeout=1
jobs=1
build=1
run=1
profile=release
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    --timeout=*) timeout="${1#*=}"; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --jobs=*) jobs="${1#*=}"; shift ;;
    --build-only) build=1; run=0; shift ;;
    --no-build) build=0; run=1; shift ;;
    --quick) profile=quick; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 1
fi

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
# cargo-fuzz's instrumentation (`cargo fuzz build -O -a -s none`: src/project.rs), flag for
# flag so the two share one build. No sanitizer: the decoders are safe Rust, and
# AddressSanitizer would halve the speed for nothing. Debug assertions (and overflow checks) on.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1"
# The fuzz targets are built on nightly by its own rustc: not through a wrapper of the stable
# toolchain (.ci/run builds the workspace with clippy-driver).
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# Debian's libzstd (libzstd-dev) when it is installed, instead of compiling zstd's C sources
# with the build (a minute of CPU); the same library, linked statically either way.
if pkg-config --exists libzstd 2>/dev/null; then
  export ZSTD_SYS_USE_PKG_CONFIG=1
fi
started=$(date +%s)
if [ "$build" = 1 ]; then
  # --target: the flags go to the targets only, not to build scripts and proc macros.
  cargo +nightly build --manifest-path fuzz/Cargo.toml --profile "$profile" --bins --locked --target "$triple"
  echo "fuzz: built in $(($(date +%s) - started)) s"
fi
[ "$run" = 1 ] || exit 0

case "$jobs" in
  ''|*[!0-9]*|0) echo "fuzz.sh: --jobs takes a number of targets at a time, 1 or more: '$jobs'" >&2; exit 2 ;;
esac
bin="fuzz/target/$triple/$profile"
# One target: its fuzzer's output in fuzz/artifacts/TARGET.log, its exit status in
# fuzz/artifacts/TARGET.rc (read back in the targets' order once all have run).
fuzz_one() {
  local t=$1 rc=0
  # stdin from /dev/null: no input may read the fuzzer's terminal.
  "$bin/$t" -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
    "fuzz/corpus-run/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" \
    </dev/null 2>"fuzz/artifacts/$t.log" || rc=$?
  echo "$rc" >"fuzz/artifacts/$t.rc"
}
running=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-run/$t" "fuzz/artifacts/$t" "fuzz/regressions/$t"
  rm -f "fuzz/artifacts/$t.rc"
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  echo "fuzz: $t for $seconds s"
  fuzz_one "$t" &
  running=$((running + 1))
done
wait
failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "fuzz/artifacts/$t.rc" 2>/dev/null)" != 0 ]; then
    failed+=("$t")
    tail -n 40 "fuzz/artifacts/$t.log"
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "fuzz/artifacts/$t.log" | sed "s/^/fuzz: $t /" || true
  rm -f "fuzz/artifacts/$t.rc"
done
echo "fuzz: ${#targets[@]} targets in $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
