#!/bin/sh
# The test command: installs what the tests need, builds the binaries the system tests run,
# then runs every test of the workspace. Run as root (tests create devices, mounts, cgroups).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
