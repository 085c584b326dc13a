#!/usr/bin/env bash
# Fleet mode, three nodes on loopback (one NATS server with JetStream, one OCI registry, nodes
# edge-1..3; edge-3 reaches NATS through bench/tcp_proxy.py so its link can be cut). Measures:
#   a. ack -> every node serving: ${N} deploys (hello.wasm and echo.wasm alternately to function
#      `hello`: re-deploying known bytes makes that version live again) and ${N} rollbacks
#      (--to the other version), each timed from the CLI returning until all three nodes answer
#      with the new x-tensorlet-version (each polled every 5 ms); p50/p99 (nearest rank);
#   b. catch-up: cut edge-3's link, deploy a version it has never seen through edge-1, keep the
#      link cut ${CUT}s, heal, time from heal until edge-3 serves it (its pull from the registry,
#      which is not behind the proxy, and its compile included);
#   c. request-path cost: hello req/s, wrk -t1 -c${CONNS} -d${DUR}, on a node without [fleet]
#      and on edge-2, ${ROUNDS} interleaved rounds, medians and their ratio.
#
#   bench/fleet.sh
#   N=20 CUT=5 ROUNDS=1 BIN=target/debug/tensorlet bench/fleet.sh    # a quick try, no build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N="${N:-50}"; CUT="${CUT:-10}"; ROUNDS="${ROUNDS:-3}"; DUR="${DUR:-5s}"; CONNS="${CONNS:-16}"
unset RUST_BACKTRACE   # a captured backtrace on every error response would skew the numbers
command -v wrk >/dev/null || { echo "install wrk (apt-get install -y wrk)" >&2; exit 1; }

PATH="$(scripts/fetch-fleet-tools.sh):$PATH"
if [ -z "${BIN:-}" ]; then
  scripts/build-guests.sh >/dev/null
  cargo build --release --bin tensorlet >&2
  BIN=target/release/tensorlet
else
  [ -f target/wasm/wasm32-wasip2/release/greet_v1.wasm ] || scripts/build-guests.sh >/dev/null
fi
BIN=$(realpath "$BIN")
W=$ROOT/target/wasm/wasm32-wasip2/release

# The temp dir, the traps that stop everything on exit, and the fleet's parts.
source scripts/fleet-lib.sh
fleet_init tensorlet-fleet-bench
start_nats
# No access log: a line per blob pull is noise here.
start_registry '{level: warn, accesslog: {disabled: true}}'

PROXY_PORT=$(free_port)
python3 bench/tcp_proxy.py "$PROXY_PORT" "$NATS_PORT" > "$DIR/proxy.log" 2>&1 &
PROXY=$!
PIDS+=($PROXY)
wait_for "$DIR/proxy.log" '^ready' $PROXY tcp_proxy

URLS=()
for i in 1 2 3; do
  port=$NATS_PORT; [ $i = 3 ] && port=$PROXY_PORT
  fleet_toml "edge-$i" "$port"
  start_node "edge-$i" "$DIR/edge-$i.toml"
  URLS+=("$URL")
done
printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n' "$(free_port)" "$DIR/plain" > "$DIR/plain.toml"
start_node plain "$DIR/plain.toml"
PLAIN=$URL
wait_connected "${URLS[@]}"   # every node in the fleet before the first deploy
echo "nodes: ${URLS[*]} (edge-3 via proxy :$PROXY_PORT), plain: $PLAIN" >&2

# a and b: Python, for millisecond timing and keep-alive polling.
BIN=$BIN W=$W N=$N CUT=$CUT PROXY=$PROXY NODES="${URLS[*]}" python3 - > "$DIR/results.env" <<'EOF'
import http.client, os, signal, subprocess, sys, time
from urllib.parse import urlsplit
BIN, W, N, CUT = os.environ["BIN"], os.environ["W"], int(os.environ["N"]), float(os.environ["CUT"])
NODES = [urlsplit(u) for u in os.environ["NODES"].split()]
conns = {}
def log(*a): print(*a, file=sys.stderr, flush=True)
def get(i, path):
    try:
        c = conns.get(i) or http.client.HTTPConnection(NODES[i].hostname, NODES[i].port, timeout=2)
        c.request("GET", path); r = c.getresponse(); body = r.read()
        conns[i] = c
        return r, body
    except (OSError, http.client.HTTPException):
        conns.pop(i, None)
        return None, b""
def version(i):
    r, _ = get(i, "/fn/hello/")
    return r.getheader("x-tensorlet-version") if r is not None else None
def engine_connected(i):
    _, body = get(i, "/metrics")
    return b"\ntensorlet_fleet_engine_connected 1" in body
def until(pred, what, timeout=60):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout: sys.exit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic()
def all_serve(v, nodes=(0, 1, 2)):  # poll every node every 5 ms until each has served v once
    pending = set(nodes)
    def done():
        pending.difference_update([i for i in list(pending) if version(i) == v])
        return not pending
    return until(done, f"{v} on nodes {sorted(pending)}")
def cli(*args):
    out = subprocess.run([BIN, *args, "--node", os.environ["NODES"].split()[0]],
                         check=True, capture_output=True, text=True).stdout.strip()
    return out, time.monotonic()   # the ack: the command has returned
def pct(xs, p): xs = sorted(xs); return xs[max(0, -(-len(xs) * p // 100) - 1)]

# Warm-up: both components are fetched and compiled on every node once, outside the timings.
v = {}
for f in ("hello", "echo"):
    v[f], _ = cli("deploy", "hello", f"{W}/{f}.wasm", "--wait=60s")
log(f"versions: hello.wasm {v['hello']}, echo.wasm {v['echo']}")
res = {}
for kind in ("deploy", "rollback"):
    ms = []
    for n in range(N):
        f = "hello" if n % 2 == 0 else "echo"
        if kind == "deploy":
            got, ack = cli("deploy", "hello", f"{W}/{f}.wasm")
            assert got == v[f], f"deploy answered {got}, expected {v[f]}"
        else:
            _, ack = cli("rollback", "hello", "--to", v[f])
        ms.append((all_serve(v[f]) - ack) * 1000)
    res[kind] = ms
    log(f"{kind}s: p50 {pct(ms, 50):.0f} ms, p99 {pct(ms, 99):.0f} ms, max {max(ms):.0f} ms")
    print(f"{kind.upper()}_P50={pct(ms, 50):.0f}\n{kind.upper()}_P99={pct(ms, 99):.0f}")

# b. Cut edge-3's link to the engine, change the live version, heal after CUT seconds.
old = version(2)
os.kill(int(os.environ["PROXY"]), signal.SIGUSR1)
cut = time.monotonic()
noticed = until(lambda: not engine_connected(2), "edge-3 to notice the cut", 10)
new, _ = cli("deploy", "hello", f"{W}/greet_v1.wasm")
all_serve(new, (0, 1))
assert version(2) == old, "edge-3 got the change while cut off"
time.sleep(max(0, cut + CUT - time.monotonic()))
assert version(2) == old, "edge-3 got the change while cut off"
os.kill(int(os.environ["PROXY"]), signal.SIGUSR2)
heal = time.monotonic()
served = all_serve(new, (2,))
log(f"cut: edge-3 noticed it after {(noticed - cut) * 1000:.0f} ms; healed after {heal - cut:.1f} s; "
    f"edge-3 served {new} {(served - heal) * 1000:.0f} ms after the heal")
print(f"CATCHUP_MS={(served - heal) * 1000:.0f}\nNOTICE_MS={(noticed - cut) * 1000:.0f}")
EOF
. "$DIR/results.env"

# c. Same component and settings on both; edge-2 (direct link to NATS) stands for fleet mode.
"$BIN" deploy hello "$W/hello.wasm" --node "$PLAIN" > /dev/null
"$BIN" deploy hello "$W/hello.wasm" --node "${URLS[0]}" --wait=30s > /dev/null
: > "$DIR/rps.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for label in plain fleet; do
    u=$PLAIN; [ $label = fleet ] && u=${URLS[1]}
    wrk -t1 -c"$CONNS" -d1s "$u/fn/hello/" > /dev/null   # warm-up
    out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "$u/fn/hello/")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')
    printf 'round %s %-6s %10s req/s  p99 %s %s\n' "$round" "$label" "$rps" \
      "$(awk '$1=="99%" {print $2}' <<<"$out")" "$errs" >&2
    echo "$label $rps" >> "$DIR/rps.tsv"
  done
done
median() { awk -v l="$1" '$1==l {print $2}' "$DIR/rps.tsv" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
RPS_PLAIN=$(median plain); RPS_FLEET=$(median fleet)
RATIO=$(awk -v f="$RPS_FLEET" -v p="$RPS_PLAIN" 'BEGIN {printf "%.3f", f/p}')

rev=$(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- host)" ] || echo "+dirty")
cat <<EOF

### Fleet: propagation, catch-up, request-path cost ($(date -u +%Y-%m-%d), $rev, $(nproc) cores)
\`N=$N CUT=$CUT ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS bench/fleet.sh\` ($(basename "$(dirname "$BIN")") binary)
3 nodes + nats-server $(nats-server --version | awk '{print $NF}') (JetStream, sync_interval always) + registry, loopback, ping_interval 500ms.

| measure | result | goal |
|---|---|---|
| ack -> all 3 nodes serve, deploy ($N) | p50 ${DEPLOY_P50} ms, p99 ${DEPLOY_P99} ms | p99 < 1 s |
| ack -> all 3 nodes serve, rollback ($N) | p50 ${ROLLBACK_P50} ms, p99 ${ROLLBACK_P99} ms | p99 < 1 s |
| catch-up after a ${CUT} s cut (heal -> edge-3 serves a new version) | ${CATCHUP_MS} ms (cut noticed in ${NOTICE_MS} ms) | |
| hello req/s, wrk -t1 -c$CONNS -d$DUR, median of $ROUNDS | no fleet ${RPS_PLAIN}, fleet ${RPS_FLEET}, ratio ${RATIO} | no measurable cost |
EOF
