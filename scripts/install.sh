#!/bin/sh
# Installs Flotilla on this machine: the binaries (orchestratord, nodeagent and its flotilla-shim, flotilla) in
# $PREFIX/bin, the systemd units in /etc/systemd/system, commented default configurations in
# /etc/flotilla (never overwriting existing ones), shell completions for flotilla (bash, zsh, fish)
# and the data directories (mode 0700).
# Nothing is enabled or started: the end says what to run for a control plane and for a node.
#
#   scripts/install.sh                     install (as root)
#   scripts/install.sh --uninstall         stop the services, remove every container of the
#                                          node, remove binaries and units (data and config stay)
#   scripts/install.sh --uninstall --purge also remove /etc/flotilla and /var/lib/flotilla
#
# DESTDIR installs into a staging root (packaging, tests): nothing is started or stopped then.
# BIN_DIR is where the built binaries are (default: target/release; build with
# `cargo build --release --workspace --bins`). PREFIX defaults to /usr/local.
set -eu
cd "$(dirname "$0")/.."
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
BIN_DIR="${BIN_DIR:-target/release}"
UNIT_DIR="$DESTDIR/etc/systemd/system"
CONF_DIR="$DESTDIR/etc/flotilla"
DATA_DIR="$DESTDIR/var/lib/flotilla"
DOC_DIR="$DESTDIR$PREFIX/share/doc/flotilla"
# Where bash-completion, zsh and fish look for completions of commands under $PREFIX.
COMPLETIONS="bash:share/bash-completion/completions/flotilla zsh:share/zsh/site-functions/_flotilla fish:share/fish/vendor_completions.d/flotilla.fish"
BINARIES="orchestratord nodeagent flotilla-shim flotilla"

live() { [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; }

uninstall() {
  purge="$1"
  if live; then
    systemctl disable --now orchestratord.service nodeagent.service >/dev/null 2>&1 || true
  fi
  # The agent leaves containers running when it stops (they belong to their shims): remove them.
  agent="$DESTDIR$PREFIX/bin/nodeagent"
  if [ -z "$DESTDIR" ] && [ -x "$agent" ]; then
    for id in $("$agent" ctr ps -a -q 2>/dev/null); do
      "$agent" ctr rm -f "$id" >/dev/null || true
    done
    # Then their networks: namespaces, veths, the bridge, the nftables table.
    "$agent" ctr network prune >/dev/null || true
  fi
  for b in $BINARIES; do rm -f "$DESTDIR$PREFIX/bin/$b"; done
  rm -f "$UNIT_DIR/orchestratord.service" "$UNIT_DIR/nodeagent.service"
  rm -rf "$DOC_DIR"
  for c in $COMPLETIONS; do rm -f "$DESTDIR$PREFIX/${c#*:}"; done
  if live; then systemctl daemon-reload; fi
  if [ "$purge" = yes ]; then
    rm -rf "$CONF_DIR" "$DATA_DIR"
    echo "Flotilla removed, with its configuration and data."
  else
    echo "Flotilla removed; configuration in /etc/flotilla and data in /var/lib/flotilla kept (--purge removes them)."
  fi
}

case "${1:-}" in
  --uninstall)
    if [ "${2:-}" = --purge ]; then uninstall yes; else uninstall no; fi
    exit 0
    ;;
  "") ;;
  *) echo "usage: $0 [--uninstall [--purge]]" >&2; exit 2 ;;
esac

for b in $BINARIES; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "$BIN_DIR/$b is missing: run cargo build --release --workspace --bins (or set BIN_DIR)" >&2
    exit 1
  fi
done
install -d -m 0755 "$DESTDIR$PREFIX/bin" "$UNIT_DIR" "$CONF_DIR" "$DOC_DIR"
for b in $BINARIES; do install -m 0755 "$BIN_DIR/$b" "$DESTDIR$PREFIX/bin/$b"; done
for u in orchestratord nodeagent; do
  sed "s|/usr/local/|$PREFIX/|g" "systemd/$u.service" > "$UNIT_DIR/$u.service"
  chmod 0644 "$UNIT_DIR/$u.service"
  if [ ! -e "$CONF_DIR/$u.toml" ]; then install -m 0644 "config/$u.toml" "$CONF_DIR/$u.toml"; fi
done
install -m 0644 README.md "$DOC_DIR/README.md"
for c in $COMPLETIONS; do
  target="$DESTDIR$PREFIX/${c#*:}"
  install -d -m 0755 "$(dirname "$target")"
  "$BIN_DIR/flotilla" completion "${c%%:*}" > "$target"
  chmod 0644 "$target"
done
install -d -m 0755 "$DATA_DIR"
install -d -m 0700 "$DATA_DIR/orchestratord" "$DATA_DIR/nodeagent"
if live; then systemctl daemon-reload; fi

cat <<EOF
Flotilla installed in $DESTDIR$PREFIX/bin, units in $UNIT_DIR, configuration in $CONF_DIR.

Control plane machine:
  orchestratord --data-dir /var/lib/flotilla/orchestratord init --advertise HOST
  systemctl enable --now orchestratord
  flotilla token create --label site=SITE        # prints FLT1-...

Each node:
  nodeagent --data-dir /var/lib/flotilla/nodeagent join HOST --token FLT1-...
  systemctl enable --now nodeagent
EOF
