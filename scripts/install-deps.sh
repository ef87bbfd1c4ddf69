#!/bin/sh
# Installs the Debian packages Flotilla needs. Run as root on Debian 12+.
#   scripts/install-deps.sh         what the build and the tests need (scripts/test.sh, CI)
#   scripts/install-deps.sh --demo  what building and running a cluster needs (scripts/demo.sh)
set -eu
# Building: a C toolchain and libseccomp (youki's seccomp filters), zstd (image layers). Running
# a node: nftables (bridge NAT, published ports, service VIPs), conntrack, iproute2;
# busybox-static for the demo's image.
DEMO="build-essential pkg-config libseccomp-dev libzstd-dev busybox-static nftables conntrack iproute2"
# The tests' anchors, fixtures and guests on top of that.
TESTS="docker-registry skopeo umoci runc apache2-utils faketime systemd util-linux tzdata dnsmasq-base musl-tools golang-go tmux qemu-system-x86 linux-image-amd64 e2fsprogs prometheus"
case "${1:-}" in
  --demo) PACKAGES=$DEMO ;;
  "") PACKAGES="$DEMO $TESTS" ;;
  *)
    echo "usage: scripts/install-deps.sh [--demo]" >&2
    exit 2
    ;;
esac
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ "${1:-}" = --demo ] && exit 0
# docker-registry's package starts a service on :5000; the tests run their own instances.
# prometheus' does the same on :9090 (the metrics test runs its own, on a free port).
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true; fi
