#!/usr/bin/env bash
# Sets everything up on a fresh machine, starts a node on 127.0.0.1:8080 (data in
# ./tensorlet-data) and deploys examples/hello to it. Ctrl-C stops the node.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR="${TENSORLET_LISTEN:-127.0.0.1:8080}"

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
scripts/build-guests.sh
cargo build --release --bin tensorlet
BIN=target/release/tensorlet

$BIN serve --listen "$ADDR" --data-dir ./tensorlet-data > target/demo-node.out &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE' EXIT INT TERM
# Wait for the node's "listening on" line (it prints it once it accepts connections).
for _ in $(seq 1 300); do
  grep -q '^listening on' target/demo-node.out 2>/dev/null && break
  kill -0 $NODE 2>/dev/null || { echo "the node failed to start" >&2; exit 1; }
  sleep 0.1
done
URL=$(sed -n 's/^listening on //p' target/demo-node.out)
echo "node: $URL"
VERSION=$($BIN deploy hello target/wasm/wasm32-wasip2/release/hello.wasm --node "$URL")
echo "deployed hello, version $VERSION"
echo
echo "try:  curl $URL/fn/hello/world"
echo "      $BIN versions hello --node $URL"
echo "      curl $URL/metrics"
echo "Ctrl-C stops the node."
wait $NODE
