#!/usr/bin/env bash
# Hello-world throughput of this tree's node against the node at an earlier commit, same run,
# loopback: did a change cost the request path anything? Both run tests/fixtures/hello-plain with a
# fresh instance per request; load: wrk -t1 -c${CONNS} -d${DUR} --latency, ${ROUNDS} interleaved
# rounds. Prints each round, the medians and the ratio this/base.
#
#   BASE=97128fd bench/regression.sh          # the base is built once in $BENCH_DIR/base-<rev>
#   ROUNDS=3 DUR=10s BASE=HEAD~10 bench/regression.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
ROUNDS="${ROUNDS:-3}"; DUR="${DUR:-10s}"; CONNS="${CONNS:-32}"
BASE="${BASE:?set BASE to the commit to compare against}"
unset RUST_BACKTRACE
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }
mkdir -p "$BENCH_DIR"

rev=$(git rev-parse --short "$BASE")
base_tree="$BENCH_DIR/base-$rev"
[ -d "$base_tree" ] || git worktree add -f "$base_tree" "$rev" >&2
(cd "$base_tree" && cargo build --release --bin tensorlet >&2)
cargo build --release --bin tensorlet >&2
scripts/build-guests.sh >/dev/null
WASM="$ROOT/target/wasm/wasm32-wasip2/release/hello_plain.wasm"

PORT=18091
PID=
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap stop EXIT

run() { # label binary
  rm -rf "$BENCH_DIR/data"
  "$2" serve --listen 127.0.0.1:$PORT --data-dir "$BENCH_DIR/data" > "$BENCH_DIR/server.out" 2>&1 &
  PID=$!
  until grep -q "listening on" "$BENCH_DIR/server.out" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { cat "$BENCH_DIR/server.out" >&2; exit 1; }
    sleep 0.05
  done
  curl -sf -o /dev/null --data-binary @"$WASM" \
    "http://127.0.0.1:$PORT/admin/v1/functions/hello/versions?max_concurrency=1000"
  local out rps p50 p99
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$PORT/fn/hello/")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  stop
  printf '%-6s %10s req/s  p50 %-9s p99 %s\n' "$1" "$rps" "$p50" "$p99"
  echo "$1 $rps" >> "$BENCH_DIR/regression.tsv"
}

rm -f "$BENCH_DIR/regression.tsv"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run base "$base_tree/target/release/tensorlet"
  run this "$ROOT/target/release/tensorlet"
done
median() { grep "^$1 " "$BENCH_DIR/regression.tsv" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median base); t=$(median this)
echo "median req/s: base ($rev) $b, this $t, this/base $(awk -v t="$t" -v b="$b" 'BEGIN {printf "%.3f", t/b}')"
