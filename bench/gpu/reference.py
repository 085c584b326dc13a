"""Reference side of bench/gpu.sh: the same model on ONNX Runtime's own Python API (the
onnxruntime-gpu wheel the node loads, same library), with the node's session settings (one
intra-op thread, no spinning).

  reference.py MODEL INPUT.npy OUT_PREFIX [BATCH]
writes OUT_PREFIX.cpu.npy and OUT_PREFIX.cuda.npy (the CPU and CUDA providers' outputs for INPUT)
and prints JSON lines: the providers in use, then CUDA throughput for batch 1 back to back, 32
threads of batch 1 on one session, and batch BATCH (default 32) back to back.
"""
import json
import sys
import threading
import time

import numpy as np
import onnxruntime as ort


def session(path, providers):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=providers)


def timed(fn, seconds):
    for _ in range(5):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main():
    path, input_path, prefix = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    x = np.load(input_path)
    cpu = session(path, ["CPUExecutionProvider"])
    gpu = session(path, ["CUDAExecutionProvider"])
    name = gpu.get_inputs()[0].name
    print(json.dumps({"model": path, "ort": ort.__version__, "providers": gpu.get_providers()}),
          flush=True)
    if gpu.get_providers()[0] != "CUDAExecutionProvider":
        sys.exit("the CUDA provider did not load")
    np.save(prefix + ".cpu.npy", cpu.run(None, {name: x})[0])
    np.save(prefix + ".cuda.npy", gpu.run(None, {name: x})[0])

    one = timed(lambda: gpu.run(None, {name: x}), 3)
    xb = np.repeat(x, batch, axis=0)
    batched = batch * timed(lambda: gpu.run(None, {name: xb}), 3)
    count, stop = [0], time.perf_counter() + 3

    def work():
        while time.perf_counter() < stop:
            gpu.run(None, {name: x})
            count[0] += 1
    threads = [threading.Thread(target=work) for _ in range(32)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent = count[0] / (time.perf_counter() - t0)
    print(json.dumps({"model": path, "cuda_batch1_per_s": round(one, 1),
                      "cuda_32_threads_batch1_per_s": round(concurrent, 1),
                      f"cuda_batch{batch}_rows_per_s": round(batched, 1)}), flush=True)


if __name__ == "__main__":
    main()
