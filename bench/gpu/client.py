"""HTTP side of bench/gpu.sh: talks to a running node with the standard library and numpy only
(the GPU machine has no tritonclient and cannot install one).

  client.py infer URL MODEL INPUT.npy OUT.npy [NAME]  one Open Inference Protocol request (binary
                                                  tensor extension both ways); writes the output
  client.py compare A.npy B.npy LABEL            max abs / rel difference; exits 1 past tolerance
  client.py load URL BODY CLIENTS SECONDS [OIP_INPUT_NAME]
      closed-loop load: CLIENTS processes, each with one keep-alive connection, POST the same
      body back to back for SECONDS; prints one JSON line {ok, errors, per_s, p50_ms, p99_ms}.
      With OIP_INPUT_NAME, BODY is a .npy tensor sent as an inference request for that input.
"""
import http.client
import json
import multiprocessing as mp
import sys
import time
import urllib.parse

import numpy as np

DATATYPES = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}


def oip_body(name, x):
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": DATATYPES[x.dtype],
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def post(url, body, headers):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", u.path, body=body, headers=headers)
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def infer(url, model, input_path, out_path, name="x"):
    x = np.load(input_path)
    body, headers = oip_body(name, x)
    status, h, raw = post(f"{url}/v2/models/{model}/infer", body, headers)
    if status != 200:
        sys.exit(f"{model}: HTTP {status}: {raw[:300]!r}")
    n = int({k.lower(): v for k, v in h.items()}["inference-header-content-length"])
    reply = json.loads(raw[:n])
    out = reply["outputs"][0]
    assert out["datatype"] == "FP32", out
    y = np.frombuffer(raw[n:n + out["parameters"]["binary_data_size"]], dtype=np.float32)
    np.save(out_path, y.reshape(out["shape"]))


def compare(a_path, b_path, label):
    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    if a.shape != b.shape:
        sys.exit(f"{label}: shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    scale = max(np.abs(a).max(), 1e-12)
    rel = diff.max() / scale
    ok = bool(np.allclose(a, b, rtol=1e-3, atol=1e-3 * scale))
    print(json.dumps({"compare": label, "max_abs": float(diff.max()), "max_rel_to_max": float(rel),
                      "argmax_equal": bool((a.reshape(a.shape[0], -1).argmax(1)
                                            == b.reshape(b.shape[0], -1).argmax(1)).all()),
                      "within_tolerance": ok}), flush=True)
    if not ok:
        sys.exit(1)


def worker(args):
    url, body, headers, seconds = args
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    lat, errors = [], 0
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        c.request("POST", u.path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        if r.status == 200:
            lat.append(time.perf_counter() - t0)
        else:
            errors += 1
    return lat, errors


def load(url, body_path, clients, seconds, input_name=None):
    if input_name:
        body, headers = oip_body(input_name, np.load(body_path))
    else:
        body, headers = open(body_path, "rb").read(), {"Content-Type": "application/octet-stream"}
    # A short warm-up (sessions, CUDA kernels and batches of every size seen once).
    with mp.Pool(clients) as pool:
        pool.map(worker, [(url, body, headers, 1.0)] * clients)
        t0 = time.perf_counter()
        results = pool.map(worker, [(url, body, headers, seconds)] * clients)
        wall = time.perf_counter() - t0
    lat = np.array(sorted(x for r in results for x in r[0]))
    errors = sum(r[1] for r in results)
    print(json.dumps({"url": url, "clients": clients, "ok": int(lat.size), "errors": errors,
                      "per_s": round(lat.size / wall, 1),
                      "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2) if lat.size else None,
                      "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2) if lat.size else None}),
          flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "infer":
        infer(*sys.argv[2:7])
    elif cmd == "compare":
        compare(*sys.argv[2:5])
    elif cmd == "load":
        a = sys.argv[2:]
        load(a[0], a[1], int(a[2]), float(a[3]), a[4] if len(a) > 4 else None)
    else:
        sys.exit(__doc__)
