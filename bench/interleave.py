"""Interleaved A/B latency: the same request to several paths of one server, in a shuffled order
each round, one keep-alive connection per path, one client; the first 50 rounds are warm-up.
Interleaving cancels the drift between back-to-back runs that makes two wrk runs on a 2-core
machine differ by up to 8%.

  python3 bench/interleave.py PORT BODY_FILE ROUNDS PATH [PATH ...]
prints per path: median, p10, p90 and mean latency of POST PATH with BODY_FILE, in ms.
"""
import http.client
import random
import statistics
import sys
import time

port, body_path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
paths = sys.argv[4:]
body = open(body_path, "rb").read()
conns = {p: http.client.HTTPConnection("127.0.0.1", port) for p in paths}
latency = {p: [] for p in paths}
for i in range(rounds + 50):
    order = paths[:]
    random.shuffle(order)
    for p in order:
        t0 = time.perf_counter()
        conns[p].request("POST", p, body=body)
        r = conns[p].getresponse()
        r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            sys.exit(f"{p}: HTTP {r.status}")
        if i >= 50:
            latency[p].append(dt)
for p in paths:
    v = sorted(latency[p])
    print(f"{p}: median {statistics.median(v) * 1e3:.3f} ms  p10 {v[len(v) // 10] * 1e3:.3f}  "
          f"p90 {v[len(v) * 9 // 10] * 1e3:.3f}  mean {statistics.mean(v) * 1e3:.3f}")
