# shellcheck shell=bash
# Shared setup for the scripts that run a fleet on loopback (scripts/fleet-demo.sh, bench/fleet.sh):
# a temp dir whose processes are stopped by PID and which is removed on exit, Ctrl-C or failure,
# and the parts of a fleet: nats-server with JetStream (the engine), the OCI registry, nodes.
#
# Contract: the caller runs under `set -euo pipefail` from the repo root, with nats-server and
# docker-registry on PATH, and then
#   source scripts/fleet-lib.sh
#   fleet_init NAME            # DIR=$(mktemp -d -t NAME.XXXXXX), PIDS=(), the EXIT/INT/TERM traps
#   start_nats                 # sets NATS_PORT
#   start_registry [LOG]       # sets REG_PORT; LOG is the registry's `log:` value
#   fleet_toml NODE PORT       # writes $DIR/NODE.toml: a node in the fleet on NATS port PORT
#   start_node NODE CONFIG     # needs BIN (the tensorlet binary, an absolute path); sets URL
#   wait_connected URL...      # until each node reports it reaches the engine (10 s each at most)
# Every process started goes into PIDS; add your own (`PIDS+=($!)`) to have them stopped too.
# A part that fails to start ends the script (status 1, the tail of its log on stderr), and the
# EXIT trap stops everything. Globals, not `$(...)`, carry results, because `exit` inside a command
# substitution would end only the subshell.

# fleet_init NAME: the temp dir and the traps that stop every PID and remove it, however we exit.
fleet_init() {
  DIR=$(mktemp -d -t "$1.XXXXXX")
  PIDS=()
  trap fleet_cleanup EXIT
  trap 'exit 130' INT TERM   # the EXIT trap does the stopping
}
fleet_cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}

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

# The engine. sync_interval always: an acknowledged change is on disk, not in the page cache
# (what production runs).
start_nats() {
  NATS_PORT=$(free_port)
  cat > "$DIR/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$DIR/jetstream", sync_interval: always }
EOF
  nats-server -c "$DIR/nats.conf" > "$DIR/nats.log" 2>&1 &
  PIDS+=($!)
  wait_for "$DIR/nats.log" "Server is ready" $! nats-server
}

# start_registry [LOG]: the registry, ready once /v2/ answers. LOG defaults to warnings plus the
# access log (the demo shows its pulls); the bench turns the access log off.
start_registry() {
  local log=${1:-'{level: warn}'}
  REG_PORT=$(free_port)
  cat > "$DIR/registry.yml" <<EOF
version: 0.1
log: $log
storage:
  filesystem: {rootdirectory: $DIR/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$REG_PORT}
EOF
  docker-registry serve "$DIR/registry.yml" > "$DIR/registry.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" || { echo "the registry failed to start" >&2; cat "$DIR/registry.log" >&2; exit 1; }
}

# fleet_toml NODE PORT: a node named NODE in the fleet, reaching NATS on PORT (a proxy's port for
# a node whose link is to be cut), with its data in $DIR/NODE. Pings every 500ms, so a cut link
# is noticed quickly.
fleet_toml() {
  cat > "$DIR/$1.toml" <<EOF
listen = "127.0.0.1:$(free_port)"
data_dir = "$DIR/$1"
[fleet]
nats = ["nats://127.0.0.1:$2"]
registry = "http://127.0.0.1:$REG_PORT"
node_id = "$1"
ping_interval = "500ms"
EOF
}

# start_node NODE CONFIG: the node, its URL (from its `listening on` line) in URL.
start_node() {
  "$BIN" serve --config "$2" > "$DIR/$1.out" 2> "$DIR/$1.log" &
  PIDS+=($!)
  wait_for "$DIR/$1.out" '^listening on' $! "$1"
  URL=$(sed -n 's/^listening on //p' "$DIR/$1.out")
}

# wait_connected URL...: a node is in the fleet once it reaches the engine; before that a
# `deploy --wait` would not count it. Gives up quietly after 10 s per node (the deploy then says).
wait_connected() {
  local u
  for u in "$@"; do
    for _ in $(seq 1 100); do
      curl -s "$u/metrics" | grep -q '^tensorlet_fleet_engine_connected 1' && break
      sleep 0.1
    done
  done
}
