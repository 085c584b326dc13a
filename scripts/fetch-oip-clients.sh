#!/usr/bin/env bash
# Installs the Open Inference Protocol's real clients for the protocol's tests and benchmark into
# a virtual environment under .cache/oip: tritonclient[http,grpc] (PyPI), numpy, and Python
# onnxruntime (the same version as the node's library; its wheel is reused from .cache/wheels
# when scripts/fetch-onnxruntime.sh already downloaded it), whose answers the tests compare with.
# Progress goes to stderr; the last line, on stdout, is the venv's python:
#   export TENSORLET_OIP_PYTHON="$(scripts/fetch-oip-clients.sh)"
# Idempotent.
set -euo pipefail

TRITONCLIENT_VERSION=2.73.0
ORT_VERSION=1.31.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.cache/oip/venv
STAMP=$VENV/.tensorlet-$TRITONCLIENT_VERSION-$ORT_VERSION
log() { echo "fetch-oip-clients: $*" >&2; }

if [[ ! -f $STAMP ]]; then
    log "installing tritonclient[http,grpc]==$TRITONCLIENT_VERSION and onnxruntime==$ORT_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --find-links "$ROOT/.cache/wheels" \
        "tritonclient[http,grpc]==$TRITONCLIENT_VERSION" "onnxruntime==$ORT_VERSION" numpy >&2
    touch "$STAMP"
fi
"$VENV/bin/python" -c 'import tritonclient.http, tritonclient.grpc, onnxruntime, numpy' >&2
echo "$VENV/bin/python"
