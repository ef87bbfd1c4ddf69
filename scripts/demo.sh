#!/bin/sh
# The first set-up command: builds Flotilla, writes a busybox OCI image from Debian's
# busybox-static, imports it into a node's image store, lists it and runs a container from it.
# Run as root.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace --bins
DATA="${FLOTILLA_DEMO_DIR:-/tmp/flotilla-demo}"
rm -rf "$DATA/busybox-layout"
target/release/fixture-image "$DATA/busybox-layout" demo
target/release/nodeagent --data-dir "$DATA/node" ctr image import "$DATA/busybox-layout" --name demo/busybox:latest
target/release/nodeagent --data-dir "$DATA/node" ctr image ls
echo
target/release/nodeagent --data-dir "$DATA/node" ctr run --rm demo/busybox:latest \
  sh -c 'echo "hello from flotilla container $(hostname), running as uid $(id -u)"'
echo
echo "next: target/release/nodeagent --data-dir $DATA/node ctr run -d --name web --memory 32M demo/busybox:latest httpd -f -p 8080"
echo "      target/release/nodeagent --data-dir $DATA/node ctr ps"
