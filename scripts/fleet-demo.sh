#!/usr/bin/env bash
# A three-node fleet on one machine: one NATS server (JetStream: the engine that holds the desired
# state), one OCI registry (holds the components) and three nodes edge-1..3, all on 127.0.0.1 with
# free ports and their data in a temp dir. Deploys examples/hello through edge-1 and waits until
# every node serves it. Ctrl-C stops everything and removes the temp dir.
#
#   scripts/fleet-demo.sh
#   BIN=target/debug/tensorlet scripts/fleet-demo.sh     # skips the release build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PATH="$(scripts/fetch-fleet-tools.sh):$PATH"
if [ -z "${BIN:-}" ]; then
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
  scripts/build-guests.sh
  cargo build --release --bin tensorlet
  BIN=target/release/tensorlet
else
  # A given binary (e.g. a debug build) is used as is; only the guests must exist.
  [ -f target/wasm/wasm32-wasip2/release/hello.wasm ] || scripts/build-guests.sh
fi
BIN=$(realpath "$BIN")
WASM=$ROOT/target/wasm/wasm32-wasip2/release/hello.wasm

DIR=$(mktemp -d -t tensorlet-fleet-demo.XXXXXX)
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # the EXIT trap does the stopping

# Free ports, asked of the kernel (closed again at once; nothing else here grabs them meanwhile).
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# wait_for FILE PATTERN PID WHAT: until FILE holds PATTERN, or the process died.
wait_for() {
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "$4 failed to start:" >&2; tail -20 "$1" >&2; exit 1; }
    sleep 0.1
  done
  echo "$4 did not start in 30s:" >&2; tail -20 "$1" >&2; exit 1
}

# The engine. sync_interval always: an acknowledged deploy is on disk, not in the page cache.
NATS_PORT=$(free_port)
cat > "$DIR/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$DIR/jetstream", sync_interval: always }
EOF
nats-server -c "$DIR/nats.conf" > "$DIR/nats.log" 2>&1 &
PIDS+=($!)
wait_for "$DIR/nats.log" "Server is ready" $! nats-server

REG_PORT=$(free_port)
cat > "$DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$REG_PORT}
EOF
docker-registry serve "$DIR/registry.yml" > "$DIR/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" || { echo "the registry failed to start" >&2; cat "$DIR/registry.log" >&2; exit 1; }

URLS=()
for i in 1 2 3; do
  cat > "$DIR/edge-$i.toml" <<EOF
listen = "127.0.0.1:$(free_port)"
data_dir = "$DIR/edge-$i"
[fleet]
nats = ["nats://127.0.0.1:$NATS_PORT"]
registry = "http://127.0.0.1:$REG_PORT"
node_id = "edge-$i"
ping_interval = "500ms"
EOF
  "$BIN" serve --config "$DIR/edge-$i.toml" > "$DIR/edge-$i.out" 2> "$DIR/edge-$i.log" &
  PIDS+=($!)
  wait_for "$DIR/edge-$i.out" '^listening on' $! "edge-$i"
  URLS+=("$(sed -n 's/^listening on //p' "$DIR/edge-$i.out")")
done
# A node is in the fleet once it reaches the engine; before that `--wait` would not count it.
for i in 0 1 2; do
  for _ in $(seq 1 100); do
    curl -s "${URLS[$i]}/metrics" | grep -q '^tensorlet_fleet_engine_connected 1' && break
    sleep 0.1
  done
done

echo "engine:   nats://127.0.0.1:$NATS_PORT (JetStream in $DIR/jetstream)"
echo "registry: http://127.0.0.1:$REG_PORT"
for i in 0 1 2; do echo "edge-$((i + 1)):   ${URLS[$i]}"; done
echo
# --wait: the deploy returns once every live node serves the new version, not just edge-1.
VERSION=$("$BIN" deploy hello "$WASM" --node "${URLS[0]}" --wait=30s)
echo "deployed hello through edge-1, version $VERSION, served by every node"
echo
"$BIN" fleet status --node "${URLS[0]}"
echo
echo "try (each answer names its node in x-tensorlet-node):"
for u in "${URLS[@]}"; do echo "  curl -i $u/fn/hello/world"; done
echo "  $BIN deploy hello $ROOT/target/wasm/wasm32-wasip2/release/echo.wasm --node ${URLS[1]} --wait"
echo "  $BIN fleet status --node ${URLS[2]}"
echo "logs: $DIR/*.log"
echo "Ctrl-C stops the fleet."
wait "${PIDS[@]}"
