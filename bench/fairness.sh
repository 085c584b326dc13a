#!/usr/bin/env bash
# Fairness between tenants: the latency one tenant sees while another floods the node.
# A node with tenants = true and the default quotas; tenant `quiet` has a public hello function
# (tests/fixtures/hello-plain), tenant `noisy` has two public functions: hello, and spin (a guest
# that loops until its 100 ms timeout, tests/fixtures/spin-loop).
# For each case: quiet's latency with `wrk -t1 -c1 -d$DUR --latency` alone (unloaded), then again
# while `wrk -t1 -c$FLOOD` hammers one of noisy's functions:
#   cheap: noisy floods hello far past its requests_per_second quota (most answers are 429);
#   cpu:   noisy floods spin (each request burns 100 ms of CPU; at most max_concurrency at once).
#   hogs:  a control, no tenant floods: one `yes > /dev/null` per core runs outside the node, to
#          show what any full CPU does to quiet's latency on this machine.
# Each case runs RUNS times, unloaded and flooded back to back (a small VM's latency drifts from
# minute to minute). Prints quiet's p50/p99 in each phase, the loaded/unloaded p99 ratio
# (goal: <= 2x) of each run and their median, and what noisy got (req/s and non-2xx answers).
# QUIET_PACE=1: quiet sends a request every 2 ms (bench/paced.lua) instead of as fast as it can.
#
#   bench/fairness.sh                 # DUR=10s FLOOD=64 RUNS=3
#   QUIET_PACE=1 bench/fairness.sh
#   DUR=5s RUNS=1 CASES="cheap" bench/fairness.sh
#   QUIET_PACE=1 CASES="cpu hogs" bench/fairness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR="${BENCH_DIR:-/tmp/tensorlet-bench}"
DUR="${DUR:-10s}"; FLOOD="${FLOOD:-64}"; CASES="${CASES:-cheap cpu}"; RUNS="${RUNS:-3}"
unset RUST_BACKTRACE
mkdir -p "$BENCH_DIR"
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
  scripts/build-guests.sh >/dev/null
  cargo build --release --bin tensorlet
fi
TL="$ROOT/target/release/tensorlet"
WASM="$ROOT/target/wasm/wasm32-wasip2/release"
W="$BENCH_DIR/fairness"; rm -rf "$W"; mkdir -p "$W"
PORT=18120
printf 'tenants = true\n' > "$W/node.toml"
"$TL" serve --listen 127.0.0.1:$PORT --data-dir "$W/data" --config "$W/node.toml" > "$W/node.out" 2>&1 &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.05; done
export TENSORLET_NODE="http://127.0.0.1:$PORT"
OP=$(cat "$W/data/operator-token")
token() { TENSORLET_TOKEN=$OP "$TL" tenant create "$@" 2>/dev/null; }
# quiet's one connection sends more than the default 1000 requests/s: its quota is raised so that
# every request it measures is served (its non-2xx count is printed and must stay 0).
QUIET=$(token quiet --requests-per-second 1000000); NOISY=$(token noisy)
TENSORLET_TOKEN=$QUIET "$TL" deploy hello "$WASM/hello_plain.wasm" --public >/dev/null
TENSORLET_TOKEN=$NOISY "$TL" deploy hello "$WASM/hello_plain.wasm" --public >/dev/null
TENSORLET_TOKEN=$NOISY "$TL" deploy spin "$WASM/spin_loop.wasm" --public --timeout 100ms >/dev/null
curl -sf "http://127.0.0.1:$PORT/fn/quiet/hello/" >/dev/null

ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
quiet() { # -> "p50 p99 req/s non-2xx"
  local out; out=$(wrk -t1 -c1 -d"$DUR" --latency ${QUIET_PACE:+-s bench/paced.lua} "http://127.0.0.1:$PORT/fn/quiet/hello/")
  echo "$(echo "$out" | awk '$1=="50%" {print $2}' | ms) $(echo "$out" | awk '$1=="99%" {print $2}' | ms) $(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '/Non-2xx/ {n=$NF} END {print n+0}')"
}
wrk -t1 -c1 -d1s "http://127.0.0.1:$PORT/fn/quiet/hello/" >/dev/null   # warm-up
printf "%-8s %-10s %10s %10s %10s %8s   %s\n" case phase p50_ms p99_ms req/s non-2xx "noisy tenant"
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
for c in $CASES; do
  ratios=""
  for _ in $(seq 1 "$RUNS"); do
    read -r u50 u99 urps ufail < <(quiet)
    printf "%-8s %-10s %10s %10s %10s %8s\n" "$c" unloaded "$u50" "$u99" "$urps" "$ufail"
    if [ "$c" = hogs ]; then
      HOGS=""
      for _ in $(seq 1 "$(nproc)"); do yes > /dev/null & HOGS="$HOGS $!"; done
      read -r l50 l99 lrps lfail < <(quiet)
      kill $HOGS
      noisy="(no flood: $(nproc) CPU hogs outside the node)"
    else
      case $c in cheap) target=hello ;; cpu) target=spin ;; esac
      wrk -t1 -c"$FLOOD" -d"$(( ${DUR%s} + 2 ))s" "http://127.0.0.1:$PORT/fn/noisy/$target/" > "$W/flood.out" 2>&1 &
      FLOODER=$!
      sleep 1   # let the flood ramp up before measuring
      read -r l50 l99 lrps lfail < <(quiet)
      wait $FLOODER || true
      noisy="$(awk '/Requests\/sec/ {r=$2} /Non-2xx/ {n=$NF} END {printf "%s req/s, %s non-2xx", r, (n == "" ? 0 : n)}' "$W/flood.out")"
    fi
    printf "%-8s %-10s %10s %10s %10s %8s   %s\n" "$c" flooded "$l50" "$l99" "$lrps" "$lfail" "$noisy"
    ratio=$(awk -v a="$l99" -v b="$u99" 'BEGIN {printf "%.2f", a/b}')
    printf "%-8s p99 flooded/unloaded = %sx\n" "$c" "$ratio"
    ratios="$ratios $ratio"
  done
  printf "%-8s median p99 ratio over %s runs = %sx (goal <= 2x)\n" "$c" "$RUNS" "$(echo $ratios | tr ' ' '\n' | median)"
done
