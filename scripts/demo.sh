#!/bin/sh
# The first set-up command: installs the Debian packages a cluster needs, builds its four
# binaries (the control plane, the agent, its shim and the CLI; not the tests' tools), and runs a
# whole cluster on this machine in the foreground (`flotilla dev`): a control plane, this node
# enrolled with a join token, a demo image built from busybox-static and a demo task. It prints
# what to type next; Ctrl-C (or closing the terminal) stops everything and removes its containers,
# a second Ctrl-C without waiting for them. Run as root. Arguments go to `flotilla dev`.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh --demo
cargo build --release -p orchestratord -p nodeagent -p flotilla-shim -p flotilla
exec "${CARGO_TARGET_DIR:-target}/release/flotilla" dev "$@"
