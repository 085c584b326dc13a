#!/usr/bin/env bash
# The request-path cost of watching a node: anomaly detection (and model-output sampling),
# persistent guest logs, and OpenTelemetry tracing, each off and on, and all together, in one
# run. One node per configuration, all up at once, measured in interleaved rounds:
#   off     [anomalies] enabled = false, [logs] persist = false, no otlp_endpoint
#   detect  anomaly detection on (every 1 s here, so its pass runs often)
#   logs    guest output persisted to the data directory
#   traces  otlp_endpoint = a loopback sink (bench/otlp_sink.py) that accepts every batch
#   all     the three together
#   all10   the three together, with otlp_sample_ratio = 0.1 (one new trace in ten recorded)
# Functions: hello (tests/fixtures/hello-plain, GET), logger (tests/fixtures/logger: prints a
# line per request, so persistence has work to do), and, when the models are fetched, embed-text
# (POST one ~25-token sentence; minilm-int8). Load: wrk -t1 -c${CONNS} -d${DUR}, ${ROUNDS} rounds;
# prints each round, the medians and each configuration's ratio to `off`.
#
#   bench/watch.sh                          # builds the release binary and the guests
#   NO_BUILD=1 ROUNDS=3 DUR=5s bench/watch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS="${ROUNDS:-3}"; DUR="${DUR:-5s}"; CONNS="${CONNS:-16}"
unset RUST_BACKTRACE
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
  scripts/build-guests.sh >/dev/null
  cargo build --release --bin tensorlet >&2
fi
TL="$ROOT/target/release/tensorlet"
WASMDIR="$ROOT/target/wasm/wasm32-wasip2/release"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/libonnxruntime.so.1.31.1}"
MODEL="$ROOT/.cache/models/minilm-int8.onnx"

DIR=$(mktemp -d -t tensorlet-watch-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
python3 bench/otlp_sink.py > "$DIR/sink.port" &
PIDS+=($!)
until [ -s "$DIR/sink.port" ]; do sleep 0.05; done
SINK="http://127.0.0.1:$(head -1 "$DIR/sink.port")"

CONFIGS="off detect logs traces all all10"
config() { # name -> TOML
  local detect=false persist=false otlp="" ratio=1.0
  case $1 in detect) detect=true;; logs) persist=true;; traces) otlp=$SINK;;
    all) detect=true persist=true otlp=$SINK;; all10) detect=true persist=true otlp=$SINK ratio=0.1;; esac
  [ -n "$otlp" ] && printf 'otlp_endpoint = "%s"\notlp_sample_ratio = %s\n' "$otlp" "$ratio"
  printf '[anomalies]\nenabled = %s\ninterval = "1s"\nwindow = "10s"\n[logs]\npersist = %s\n' "$detect" "$persist"
}
declare -A NODE
for c in $CONFIGS; do
  config "$c" > "$DIR/$c.toml"
  "$TL" serve --listen 127.0.0.1:0 --data-dir "$DIR/$c" --config "$DIR/$c.toml" > "$DIR/$c.out" 2> "$DIR/$c.log" &
  PIDS+=($!)
  until grep -q '^listening on' "$DIR/$c.out" 2>/dev/null; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$DIR/$c.log" >&2; exit 1; }
    sleep 0.05
  done
  NODE[$c]=$(sed -n 's/^listening on //p' "$DIR/$c.out")
  export TENSORLET_NODE=${NODE[$c]}
  "$TL" deploy hello "$WASMDIR/hello_plain.wasm" --max-concurrency 256 >/dev/null
  "$TL" deploy logger "$WASMDIR/logger.wasm" --max-concurrency 256 >/dev/null
  if [ -f "$MODEL" ]; then
    "$TL" model add minilm "$MODEL" >/dev/null
    "$TL" deploy embed "$WASMDIR/embed_text.wasm" --model minilm --max-concurrency 256 >/dev/null
  fi
done
KINDS="${KINDS:-hello logger embed}"
[ -f "$MODEL" ] || KINDS="${KINDS/embed/}"
printf '%s\n' '{"texts": ["Tensorlet runs WebAssembly functions at the edge and keeps neural networks on the host for speed."]}' > "$DIR/embed.json"

run() { # kind config -> req/s
  local url="${NODE[$2]}/fn/$1/" out
  if [ "$1" = embed ]; then
    out=$(BODY="$DIR/embed.json" CT=application/json wrk -t1 -c"$CONNS" -d"$DUR" -s bench/post.lua "$url")
  else
    out=$(wrk -t1 -c"$CONNS" -d"$DUR" "$url")
  fi
  echo "$out" | awk '/Requests\/sec/ {print $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "### Watching: request-path cost of detection, persistent logs and tracing ($(date -u +%F), $(git rev-parse --short HEAD))"
echo "\`ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS bench/watch.sh\`"
for kind in $KINDS; do
  for c in $CONFIGS; do : > "$DIR/$kind.$c"; run "$kind" "$c" > /dev/null; done   # warm-up
  for r in $(seq 1 "$ROUNDS"); do
    line="$kind round $r:"
    for c in $CONFIGS; do
      rps=$(run "$kind" "$c"); echo "$rps" >> "$DIR/$kind.$c"; line="$line $c $rps"
    done
    echo "$line"
  done
  off=$(median < "$DIR/$kind.off")
  line="$kind medians: off $off req/s"
  for c in detect logs traces all all10; do
    m=$(median < "$DIR/$kind.$c")
    line="$line, $c $m ($(awk -v a="$m" -v b="$off" 'BEGIN {printf "%.3f", a/b}'))"
  done
  echo "$line"
done
# The features were on where they should be: spans exported, lines kept, detector running.
for c in traces all all10; do curl -s "${NODE[$c]}/metrics" | grep -E '^tensorlet_trace_spans_(exported|dropped)_total' | sed "s/^/$c: /"; done
for c in logs all; do echo "$c: $(du -sk "$DIR/$c/logs" 2>/dev/null | cut -f1) KiB of guest logs on disk"; done
