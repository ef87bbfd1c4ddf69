#!/bin/sh
# Installs the Debian packages Flotilla's build and tests need. Run as root on Debian 12+.
set -eu
PACKAGES="build-essential pkg-config libseccomp-dev libzstd-dev busybox-static docker-registry skopeo umoci runc apache2-utils nftables iproute2 faketime systemd util-linux tzdata dnsmasq-base musl-tools golang-go conntrack tmux qemu-system-x86 linux-image-amd64 e2fsprogs prometheus"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# docker-registry's package starts a service on :5000; the tests run their own instances.
# prometheus' does the same on :9090 (the metrics test runs its own, on a free port).
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true; fi
