#!/usr/bin/env bash
# Hello-world throughput: Tensorlet vs `wasmtime serve` 48.0.8 vs native hyper, one run, loopback.
# Every server answers "200 hello"; both wasm servers run the same component (tests/fixtures/hello-plain)
# with a fresh instance per request. Load: wrk -t1 -c32 -d${DUR} --latency, ${ROUNDS} interleaved rounds.
# Also reports server CPU time per request (utime+stime of the server process over the run / requests).
#
#   bench/http-hello.sh                 # builds what is missing under $BENCH_DIR (wasmtime-cli: ~25 min once)
#   ROUNDS=3 DUR=10s bench/http-hello.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
ROUNDS="${ROUNDS:-3}"; DUR="${DUR:-10s}"; CONNS="${CONNS:-32}"
unset RUST_BACKTRACE
mkdir -p "$BENCH_DIR"
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }

scripts/build-guests.sh >/dev/null
cargo build --release --bin tensorlet
(cd bench/native-hello && CARGO_TARGET_DIR="$BENCH_DIR/target-native" cargo build --release)
WASMTIME="$BENCH_DIR/wasmtime/bin/wasmtime"
[ -x "$WASMTIME" ] || CARGO_TARGET_DIR="$BENCH_DIR/target-wasmtime" \
  cargo install wasmtime-cli --version 48.0.8 --locked --root "$BENCH_DIR/wasmtime"
WASM="$ROOT/target/wasm/wasm32-wasip2/release/hello_plain.wasm"
TL="$ROOT/target/release/tensorlet"
NATIVE="$BENCH_DIR/target-native/release/native-hello"

PORT=18090
start() { # name -> sets PID and URL
  case "$1" in
    native)  "$NATIVE" 127.0.0.1:$PORT > "$BENCH_DIR/server.out" 2>&1 & PID=$!; URL="http://127.0.0.1:$PORT/" ;;
    wasmtime) "$WASMTIME" serve -Scli -O pooling-allocator=y --addr 127.0.0.1:$PORT "$WASM" > "$BENCH_DIR/server.out" 2>&1 & PID=$!; URL="http://127.0.0.1:$PORT/" ;;
    tensorlet)
      rm -rf "$BENCH_DIR/data"
      "$TL" serve --listen 127.0.0.1:$PORT --data-dir "$BENCH_DIR/data" > "$BENCH_DIR/server.out" 2>&1 & PID=$!
      URL="http://127.0.0.1:$PORT/fn/hello/" ;;
  esac
  for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
    curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break; sleep 0.05; done
  if [ "$1" = tensorlet ]; then
    "$TL" deploy hello "$WASM" --max-concurrency 1000 --node "http://127.0.0.1:$PORT" >/dev/null
  fi
  curl -sf "$URL" | grep -q hello
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

printf "%-10s %5s %10s %9s %9s %12s\n" server round req/s p50 p99 cpu/req
RESULTS="$BENCH_DIR/results.tsv"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for s in native wasmtime tensorlet; do
    start "$s"
    wrk -t1 -c"$CONNS" -d2s "$URL" > /dev/null   # warm-up
    t0=$(cpu_ticks $PID)
    out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "$URL")
    t1=$(cpu_ticks $PID)
    kill -TERM $PID; wait $PID 2>/dev/null || true
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" 'BEGIN{printf "%.1fus", (b-a)/hz/n*1e6}')
    printf "%-10s %5s %10s %9s %9s %12s %s\n" "$s" "$round" "$rps" "$p50" "$p99" "$cpu" "$errs"
    printf "%s\t%s\t%s\n" "$s" "$round" "$rps" >> "$RESULTS"
  done
done
echo
median() { awk -F'\t' -v s="$1" '$1==s {print $3}' "$RESULTS" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
N=$(median native); WT=$(median wasmtime); T=$(median tensorlet)
echo "median req/s: native $N, wasmtime serve $WT, tensorlet $T"
awk -v n="$N" -v w="$WT" -v t="$T" 'BEGIN {printf "tensorlet / wasmtime serve = %.2fx, tensorlet / native = %.2f\n", t/w, t/n}'
