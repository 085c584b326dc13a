#!/usr/bin/env bash
# Two start-up latencies of a Tensorlet node, median of ${RUNS} runs, loopback only:
#  1. deploy -> first response: time from `tensorlet deploy` returning to the first 200 from the function
#     (compilation happens during deploy, so this is one request);
#  2. restart -> first response: process spawn on a data dir with hello deployed (compiled code cached)
#     to the first 200 from the function.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-10}"; PORT=18095; BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
unset RUST_BACKTRACE
scripts/build-guests.sh >/dev/null
cargo build --release --bin tensorlet
TL=target/release/tensorlet; WASM=target/wasm/wasm32-wasip2/release/hello_plain.wasm
URL="http://127.0.0.1:$PORT"
now() { date +%s%N; }
wait_ok() { until curl -sf -o /dev/null "$1"; do :; done; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

DATA="$BENCH_DIR/coldstart-data"
deploy_ms=(); restart_ms=(); floor_ms=()
for i in $(seq 1 "$RUNS"); do
  rm -rf "$DATA"
  $TL serve --listen 127.0.0.1:$PORT --data-dir "$DATA" > /dev/null 2>&1 & PID=$!
  wait_ok "$URL/healthz"
  $TL deploy hello "$WASM" --node "$URL" > /dev/null
  t0=$(now); wait_ok "$URL/fn/hello"; t1=$(now)
  deploy_ms+=("$(( (t1 - t0) / 1000 ))")
  # The floor of this method: one curl (process start included) to a running node.
  t0=$(now); wait_ok "$URL/healthz"; t1=$(now)
  floor_ms+=("$(( (t1 - t0) / 1000 ))")
  kill -TERM $PID; wait $PID
  t0=$(now)
  $TL serve --listen 127.0.0.1:$PORT --data-dir "$DATA" > /dev/null 2>&1 & PID=$!
  wait_ok "$URL/fn/hello"; t1=$(now)
  restart_ms+=("$(( (t1 - t0) / 1000 ))")
  kill -TERM $PID; wait $PID
done
echo "deploy returned -> first response: median $(printf '%s\n' "${deploy_ms[@]}" | median) us over $RUNS runs"
echo "one curl to a warm node (the floor):  median $(printf '%s\n' "${floor_ms[@]}" | median) us over $RUNS runs"
echo "restart -> first response:         median $(printf '%s\n' "${restart_ms[@]}" | median) us over $RUNS runs"
