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

# The temp dir, the traps that stop everything on exit, and the fleet's parts.
source scripts/fleet-lib.sh
fleet_init tensorlet-fleet-demo
start_nats
start_registry

URLS=()
for i in 1 2 3; do
  fleet_toml "edge-$i" "$NATS_PORT"
  start_node "edge-$i" "$DIR/edge-$i.toml"
  URLS+=("$URL")
done
wait_connected "${URLS[@]}"

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
